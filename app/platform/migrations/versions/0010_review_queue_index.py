"""The review queue's own index: only open orders waiting in MANUAL_REVIEW, by deadline.

0007's index also held every order that ended in review (a tenth of all orders, say), which
the queue had to read past to find the few still waiting. The predicate is the literal one
app/service/listing.py REVIEW_QUEUE_ROWS writes.

Revision ID: 0010
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX ix_orders_review_queue")
    op.execute(
        "CREATE INDEX ix_orders_review_queue ON orders ((coalesce(deadline_at, created_at)), id) "
        "WHERE step = 'MANUAL_REVIEW' AND state NOT IN ('CANCELLED', 'COMPLETED', 'FAILED')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_orders_review_queue")
    op.execute(
        "CREATE INDEX ix_orders_review_queue ON orders (step, (coalesce(deadline_at, created_at)), id)"
    )
