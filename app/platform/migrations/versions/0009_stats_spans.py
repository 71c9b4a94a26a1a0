"""stats_spans: each closed order's execution time, one narrow row, so a window of up to
STATS_EXACT_SPANS closed orders gets exact percentiles (app/service/stats.py); a larger
one takes them from the rollup's 5% buckets. Written by the same trigger as the rollup's
deltas (stats_span_delta, redefined here); old rows are trimmed by the housekeeping run.

Revision ID: 0009
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TERMINAL = "'COMPLETED', 'CANCELLED', 'FAILED'"

SPAN_DELTA = f"""
CREATE OR REPLACE FUNCTION stats_span_delta(ev events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE started timestamp; seconds float8;
BEGIN
    IF EXISTS (SELECT 1 FROM events e WHERE e.order_id = ev.order_id
               AND e.type IN ({_TERMINAL})
               AND (e.ts, e.id) < (ev.ts, ev.id)) THEN
        RETURN;
    END IF;
    SELECT min(e.ts) INTO started FROM events e
        WHERE e.order_id = ev.order_id AND e.type = 'RECEIVED';
    IF started IS NULL THEN
        INSERT INTO stats_deltas (at, metric, k1, n) VALUES (ev.ts, 'no_start', ev.type, 1);
        RETURN;
    END IF;
    seconds := greatest(extract(epoch FROM ev.ts - started), 0);
    INSERT INTO stats_deltas (at, metric, k1, k2, n, total, peak) VALUES
        (ev.ts, 'span', ev.type, stats_fine_bucket(seconds), 1, seconds, seconds),
        (ev.ts, 'span_edge', ev.type, stats_coarse_bucket(seconds), 1, 0, NULL);
    INSERT INTO stats_spans (at, outcome, seconds) VALUES (ev.ts, ev.type, seconds);
END $$
"""

SPANS_REBUILD = f"""
CREATE FUNCTION stats_spans_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE stats_spans;
    WITH marks AS (
        SELECT min(ts) FILTER (WHERE type = 'RECEIVED') AS started,
               min(ts) FILTER (WHERE type IN ({_TERMINAL})) AS ended,
               (array_agg(type ORDER BY ts, id) FILTER (WHERE type IN ({_TERMINAL})))[1]
                   AS outcome
        FROM events WHERE type = 'RECEIVED' OR type IN ({_TERMINAL})
        GROUP BY order_id
    )
    INSERT INTO stats_spans (at, outcome, seconds)
    SELECT ended, outcome, greatest(extract(epoch FROM ended - started), 0)
    FROM marks WHERE started IS NOT NULL AND ended IS NOT NULL;
END $$
"""


def upgrade() -> None:
    op.execute(
        "CREATE TABLE stats_spans (at timestamp NOT NULL, outcome text NOT NULL, "
        "seconds float8 NOT NULL)"
    )
    op.execute("CREATE INDEX ix_stats_spans_at ON stats_spans (at)")
    op.execute(SPAN_DELTA)
    op.execute(SPANS_REBUILD)
    op.execute("SELECT stats_spans_rebuild()")


def downgrade() -> None:
    op.execute("DROP FUNCTION stats_spans_rebuild()")
    op.execute(
        SPAN_DELTA.replace(
            "    INSERT INTO stats_spans (at, outcome, seconds) VALUES (ev.ts, ev.type, seconds);\n",
            "",
        )
    )
    op.execute("DROP TABLE stats_spans")
