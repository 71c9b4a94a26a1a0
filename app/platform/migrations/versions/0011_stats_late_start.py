"""An order's start that lands after its end still makes it an execution time.

A run that failed before ReceiveOrder recorded anything counts as `without_start`; when
the order's RECEIVED comes later (a retried run, or a timed-out attempt that finished
after the close), the figures computed from the tables (and `stats_rebuild()`) count the
order from its first RECEIVED to its first outcome. The events trigger now does the same:
the `without_start` is taken back and the span added, at the first outcome's time.

Revision ID: 0011
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TERMINAL = "'COMPLETED', 'CANCELLED', 'FAILED'"

LATE_START = f"""
CREATE FUNCTION stats_late_start(ev events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE ended timestamp; outcome text; seconds float8;
BEGIN
    IF EXISTS (SELECT 1 FROM events e WHERE e.order_id = ev.order_id
               AND e.type = 'RECEIVED' AND e.id <> ev.id) THEN
        RETURN;
    END IF;
    SELECT e.ts, e.type INTO ended, outcome FROM events e
        WHERE e.order_id = ev.order_id AND e.type IN ({_TERMINAL})
        ORDER BY e.ts, e.id LIMIT 1;
    IF ended IS NULL THEN
        RETURN;
    END IF;
    seconds := greatest(extract(epoch FROM ended - ev.ts), 0);
    INSERT INTO stats_deltas (at, metric, k1, k2, n, total, peak) VALUES
        (ended, 'no_start', outcome, '', -1, 0, NULL),
        (ended, 'span', outcome, stats_fine_bucket(seconds), 1, seconds, seconds),
        (ended, 'span_edge', outcome, stats_coarse_bucket(seconds), 1, 0, NULL);
    INSERT INTO stats_spans (at, outcome, seconds) VALUES (ended, outcome, seconds);
END $$
"""


def _events_delta(late_start: bool) -> str:
    received = (
        "    IF NEW.type = 'RECEIVED' THEN\n        PERFORM stats_late_start(NEW);\n    END IF;\n"
    )
    return f"""
CREATE OR REPLACE FUNCTION stats_events_delta() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ev_step text;
BEGIN
    IF NEW.type IN ({_TERMINAL}) THEN
        PERFORM stats_span_delta(NEW);
        RETURN NULL;
    END IF;
{received if late_start else ""}    ev_step := stats_step(NEW.type, NEW.payload_json);
    IF ev_step IS NOT NULL THEN
        PERFORM stats_attempt_delta(NEW, ev_step);
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute(LATE_START)
    op.execute(_events_delta(late_start=True))
    # Orders already in this state: the figures again from the tables.
    op.execute("SELECT stats_rebuild()")
    op.execute("SELECT stats_spans_rebuild()")


def downgrade() -> None:
    op.execute(_events_delta(late_start=False))
    op.execute("DROP FUNCTION stats_late_start(events)")
