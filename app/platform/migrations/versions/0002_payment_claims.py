"""payment_claims: a payment id belongs to the first order that uses it.

Claimed when an order starts (and by ReceiveOrder for a run started outside our service);
another order starting with it is refused. Existing orders and payments claim theirs,
oldest first.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_claims",
        sa.Column("payment_id", sa.String(), primary_key=True),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_payment_claims_order", "payment_claims", ["order_id"])
    op.execute(
        "INSERT INTO payment_claims (payment_id, order_id, claimed_at) "
        "SELECT payment_id, order_id, created_at FROM payments ON CONFLICT DO NOTHING"
    )
    op.execute(
        "INSERT INTO payment_claims (payment_id, order_id, claimed_at) "
        "SELECT DISTINCT ON (payment_id) payment_id, id, created_at FROM orders "
        "WHERE payment_id IS NOT NULL ORDER BY payment_id, created_at "
        "ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.drop_table("payment_claims")
