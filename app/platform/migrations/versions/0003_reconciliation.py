"""reconciliation_runs and reconciliation_findings: the scheduled reconciliation's reports;
an index on orders.created_at, the window each run reads.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("scoped", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("healed", sa.Integer(), nullable=False),
        sa.Column("unresolved", sa.Integer(), nullable=False),
        sa.Column("settling", sa.Integer(), nullable=False),
        sa.Column("summary_json", JSONB()),
    )
    op.create_index(
        "ix_reconciliation_runs_finished", "reconciliation_runs", ["scoped", "finished_at"]
    )
    op.create_table(
        "reconciliation_findings",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "run_id",
            sa.String(),
            sa.ForeignKey("reconciliation_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("reference", sa.String(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("safe", sa.Boolean(), nullable=False),
        sa.Column("healed", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_reconciliation_findings_run", "reconciliation_findings", ["run_id"])
    op.create_index("ix_reconciliation_findings_order", "reconciliation_findings", ["order_id"])
    # Each run reads the orders created in its window (created_at never changes, so the
    # index costs the hot path's updates nothing: they stay HOT).
    op.create_index("ix_orders_created", "orders", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_orders_created", table_name="orders")
    op.drop_table("reconciliation_findings")
    op.drop_table("reconciliation_runs")
