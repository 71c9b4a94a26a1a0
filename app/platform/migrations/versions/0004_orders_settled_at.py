"""orders.settled_at: when the order's compensation was done (a closed order's refund and
booking cancellation run after its close). Closed orders with no charge left are settled
as of their close.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("settled_at", sa.DateTime()))
    op.execute(
        "UPDATE orders o SET settled_at = coalesce(o.closed_at, o.updated_at) "
        "WHERE o.state IN ('COMPLETED', 'CANCELLED', 'FAILED') AND (o.state = 'COMPLETED' "
        "OR NOT EXISTS (SELECT 1 FROM payments p WHERE p.payment_id = o.payment_id "
        "AND p.order_id = o.id AND p.status = 'charged'))"
    )


def downgrade() -> None:
    op.drop_column("orders", "settled_at")
