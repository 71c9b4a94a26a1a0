"""Indexes for what an operator lists at any table size, and for the events retention.

- every `GET /orders` filter is an index range read newest first: state (0001), step,
  reason, and payments per status (the payment_status filter from the payments side);
- the review queue (`step=MANUAL_REVIEW`, oldest deadline first) reads its own index;
- the retention finds orders closed before its cut-off by `closed_at`, then their events
  by `ix_events_order_ts`, a batch at a time.

Revision ID: 0007
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_orders_step_created": "orders (step, created_at)",
    "ix_orders_reason_created": "orders (reason, created_at)",
    "ix_orders_review_queue": "orders (step, (coalesce(deadline_at, created_at)), id)",
    "ix_orders_closed": "orders (closed_at) WHERE closed_at IS NOT NULL",
    "ix_payments_status": "payments (status, order_id)",
}


def upgrade() -> None:
    for name, target in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON {target}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX {name}")
