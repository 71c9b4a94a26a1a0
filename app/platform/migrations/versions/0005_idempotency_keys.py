"""idempotency_keys: an Idempotency-Key names one start request, for good.

The key, the order it started and the fingerprint of what it asked for, written before
the start: the same key sent again with another order id or another body is refused
(422), however the first request ended. Runs started before this revision keep their
key in the run's memo, which the service still reads.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
