"""orders.dispatch_requested_at: when DispatchCarrier first asked the carrier to take the
parcel, committed before the call. A dispatch whose answer was lost leaves no tracking
number; this mark is what tells an address change that the carrier may have the parcel.

Revision ID: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("dispatch_requested_at", sa.DateTime()))


def downgrade() -> None:
    op.drop_column("orders", "dispatch_requested_at")
