"""The guide's orders, payments and events tables, plus what status and dispatch need.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("address_json", JSONB()),
        sa.Column("created_at", sa.DateTime(), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(), server_default=sa.func.now()),
        sa.Column("step", sa.String()),
        sa.Column("workflow_id", sa.String()),
        sa.Column("run_id", sa.String()),
        sa.Column("payment_id", sa.String()),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("items_json", JSONB()),
        sa.Column("reason", sa.String()),
        sa.Column("deadline_at", sa.DateTime()),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("tracking_number", sa.String()),
        sa.Column("closed_at", sa.DateTime()),
    )
    op.create_index("ix_orders_state_created", "orders", ["state", "created_at"])
    op.create_table(
        "payments",
        sa.Column("payment_id", sa.String(), primary_key=True),
        sa.Column("order_id", sa.String(), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("created_at", sa.DateTime(), server_default=sa.func.now()),
        sa.Column("gateway_ref", sa.String()),
        sa.Column("refunded_at", sa.DateTime()),
    )
    op.create_index("ix_payments_order", "payments", ["order_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("payload_json", JSONB()),
        sa.Column("ts", sa.DateTime(), server_default=sa.func.now()),
    )
    op.create_index("ix_events_order_ts", "events", ["order_id", "ts"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("payments")
    op.drop_table("orders")
