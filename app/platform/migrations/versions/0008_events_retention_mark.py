"""events_retention_mark: how far the events retention has walked the closed orders
(by closed_at, then id), so each scheduled run goes on from there instead of looking at
every order it already pruned (app/orders/housekeeping).

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events_retention_mark",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("closed_at", sa.DateTime(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events_retention_mark")
