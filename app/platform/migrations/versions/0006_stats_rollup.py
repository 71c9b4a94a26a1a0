"""Statistics rolled up as orders change: `/stats` reads a few hundred rows, not history.

Triggers on orders, payments and events append one small delta row per figure they change
to `stats_deltas` (insert only: concurrent orders never wait on each other's counters).
`stats_fold(limit)` moves deltas into `stats_rollup`, summed per time bucket at four
grains (5 minutes, hour, day, all time); the statistics reader folds before it reads, one
folder at a time. Deleting events (the retention) leaves the figures as they were.

`stats_rebuild()` recomputes everything from the tables (the backfill below; the data-scale
benchmark calls it after seeding with triggers off). Execution times are kept per outcome
in log buckets 5% wide (for percentiles) and in the dashboard's coarse buckets (exact).

Revision ID: 0006
"""

import re

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE stats_deltas (
    at timestamp NOT NULL,
    metric text NOT NULL,
    k1 text NOT NULL DEFAULT '',
    k2 text NOT NULL DEFAULT '',
    n bigint NOT NULL,
    total float8 NOT NULL DEFAULT 0,
    peak float8
);
CREATE TABLE stats_rollup (
    grain text NOT NULL,
    bucket timestamp NOT NULL,
    metric text NOT NULL,
    k1 text NOT NULL,
    k2 text NOT NULL,
    n bigint NOT NULL,
    total float8 NOT NULL,
    peak float8,
    PRIMARY KEY (grain, bucket, metric, k1, k2)
);
"""

# Log buckets 5% wide from 10 ms: bucket i >= 1 holds [0.01 * 1.05^(i-1), 0.01 * 1.05^i).
# Coarse buckets: the dashboard's edges (app/service/stats.py BUCKET_EDGES), width_bucket.
FUNCTIONS = """
CREATE FUNCTION stats_fine_bucket(seconds float8) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN seconds < 0.01 THEN '0'
                ELSE (1 + floor(ln(seconds / 0.01) / ln(1.05)))::int::text END
$$;
CREATE FUNCTION stats_coarse_bucket(seconds float8) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT width_bucket(seconds, ARRAY[1, 2, 5, 10, 20, 30, 45, 60, 90]::float8[])::text
$$;
CREATE FUNCTION stats_bin(at timestamp) RETURNS timestamp LANGUAGE sql IMMUTABLE AS $$
    SELECT date_bin('5 minutes', coalesce(at, TIMESTAMP '2000-01-01'), TIMESTAMP '2000-01-01')
$$;
CREATE FUNCTION stats_step(type text, payload jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE type
        WHEN 'STEP_ATTEMPT_FAILED' THEN coalesce(payload ->> 'step', 'unknown')
        WHEN 'RECEIVED' THEN 'RECEIVE'
        WHEN 'VALIDATED' THEN 'VALIDATE'
        WHEN 'PAYMENT_CHARGED' THEN 'PAY'
        WHEN 'PACKAGE_PREPARED' THEN 'SHIP'
        WHEN 'DISPATCHED' THEN 'SHIP'
    END
$$;

CREATE FUNCTION stats_fold(max_rows bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE moved bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('stats_fold'));
    WITH gone AS (
        DELETE FROM stats_deltas WHERE ctid IN (SELECT ctid FROM stats_deltas LIMIT max_rows)
        RETURNING *
    ), grouped AS (
        SELECT g.grain,
               CASE g.grain
                   WHEN '5m' THEN date_bin('5 minutes', d.at, TIMESTAMP '2000-01-01')
                   WHEN 'hour' THEN date_trunc('hour', d.at)
                   WHEN 'day' THEN date_trunc('day', d.at)
                   ELSE TIMESTAMP '1970-01-01'
               END AS bucket,
               d.metric, d.k1, d.k2, sum(d.n) AS n, sum(d.total) AS total, max(d.peak) AS peak
        FROM gone d CROSS JOIN (VALUES ('5m'), ('hour'), ('day'), ('all')) AS g(grain)
        GROUP BY 1, 2, 3, 4, 5
    )
    INSERT INTO stats_rollup AS r SELECT * FROM grouped
    ON CONFLICT (grain, bucket, metric, k1, k2) DO UPDATE
        SET n = r.n + excluded.n,
            total = r.total + excluded.total,
            peak = greatest(r.peak, excluded.peak);
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END $$;

CREATE FUNCTION stats_orders_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO stats_deltas (at, metric, k1, k2, n) VALUES
            (coalesce(OLD.created_at, LOCALTIMESTAMP), 'order', OLD.state, coalesce(OLD.reason, ''), -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO stats_deltas (at, metric, k1, k2, n) VALUES
            (coalesce(NEW.created_at, LOCALTIMESTAMP), 'order', NEW.state, coalesce(NEW.reason, ''), 1);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION stats_payments_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO stats_deltas (at, metric, k1, n) VALUES
            (coalesce(OLD.created_at, LOCALTIMESTAMP), 'payment', OLD.status, -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO stats_deltas (at, metric, k1, n) VALUES
            (coalesce(NEW.created_at, LOCALTIMESTAMP), 'payment', NEW.status, 1);
    END IF;
    RETURN NULL;
END $$;

-- An order's first terminal event: its execution time (from its first RECEIVED).
CREATE FUNCTION stats_span_delta(ev events) RETURNS void LANGUAGE plpgsql AS $$
DECLARE started timestamp; seconds float8;
BEGIN
    IF EXISTS (SELECT 1 FROM events e WHERE e.order_id = ev.order_id
               AND e.type IN ('COMPLETED', 'CANCELLED', 'FAILED')
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
END $$;

-- A finished attempt; and the failed attempts of the order this event shows were retried
-- (the first later event of their step, or any step's success), each counted once.
CREATE FUNCTION stats_attempt_delta(ev events, ev_step text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE ev_failed boolean := ev.type = 'STEP_ATTEMPT_FAILED';
BEGIN
    INSERT INTO stats_deltas (at, metric, k1, n) VALUES (ev.ts, 'attempt', ev_step, 1);
    IF ev_failed THEN
        INSERT INTO stats_deltas (at, metric, k1, k2, n) VALUES
            (ev.ts, 'failed', ev_step, coalesce(ev.payload_json ->> 'kind', ''), 1);
    END IF;
    WITH mine AS (
        SELECT e.id, e.ts, stats_step(e.type, e.payload_json) AS step,
               e.type = 'STEP_ATTEMPT_FAILED' AS failed
        FROM events e
        WHERE e.order_id = ev.order_id AND e.id < ev.id AND e.type IN (%(attempt_types)s)
    ), fails AS (
        SELECT f.id, f.ts, f.step, EXISTS (
            SELECT 1 FROM mine q WHERE q.id > f.id AND (q.step = f.step OR NOT q.failed)
        ) AS retried_before
        FROM mine f WHERE f.failed
    ), newly AS (
        SELECT * FROM fails WHERE NOT retried_before AND (step = ev_step OR NOT ev_failed)
    ), first_of_step AS (
        SELECT n.step, min(n.ts) AS ts FROM newly n
        WHERE NOT EXISTS (SELECT 1 FROM fails f WHERE f.step = n.step AND f.retried_before)
        GROUP BY n.step
    )
    INSERT INTO stats_deltas (at, metric, k1, n)
    SELECT ts, 'retry', step, 1 FROM newly
    UNION ALL SELECT ts, 'order_retried', step, 1 FROM first_of_step;
END $$;

CREATE FUNCTION stats_events_delta() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ev_step text;
BEGIN
    IF NEW.type IN (%(terminal)s) THEN
        PERFORM stats_span_delta(NEW);
        RETURN NULL;
    END IF;
    ev_step := stats_step(NEW.type, NEW.payload_json);
    IF ev_step IS NOT NULL THEN
        PERFORM stats_attempt_delta(NEW, ev_step);
    END IF;
    RETURN NULL;
END $$;

-- Every figure again from the tables (in 5-minute bins), then folded.
CREATE FUNCTION stats_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('stats_fold'));
    TRUNCATE stats_deltas, stats_rollup;
    INSERT INTO stats_deltas (at, metric, k1, k2, n)
    SELECT stats_bin(created_at), 'order', state, coalesce(reason, ''), count(*)
    FROM orders GROUP BY 1, 3, 4
    UNION ALL
    SELECT stats_bin(created_at), 'payment', status, '', count(*) FROM payments GROUP BY 1, 3;

    WITH marks AS (
        SELECT order_id,
               min(ts) FILTER (WHERE type = 'RECEIVED') AS started,
               min(ts) FILTER (WHERE type IN (%(terminal)s)) AS ended,
               (array_agg(type ORDER BY ts, id) FILTER (WHERE type IN (%(terminal)s)))[1]
                   AS outcome
        FROM events WHERE type = 'RECEIVED' OR type IN (%(terminal)s)
        GROUP BY order_id
    ), spans AS (
        SELECT ended, outcome, greatest(extract(epoch FROM ended - started), 0)::float8 AS s
        FROM marks WHERE started IS NOT NULL AND ended IS NOT NULL
    )
    INSERT INTO stats_deltas (at, metric, k1, k2, n, total, peak)
    SELECT stats_bin(ended), 'span', outcome, stats_fine_bucket(s), count(*), sum(s), max(s)
    FROM spans GROUP BY 1, 3, 4
    UNION ALL
    SELECT stats_bin(ended), 'span_edge', outcome, stats_coarse_bucket(s), count(*), 0, NULL
    FROM spans GROUP BY 1, 3, 4
    UNION ALL
    SELECT stats_bin(ended), 'no_start', outcome, '', count(*), 0, NULL
    FROM marks WHERE started IS NULL AND ended IS NOT NULL GROUP BY 1, 3;

    WITH tagged AS (
        SELECT id, order_id, ts, stats_step(type, payload_json) AS step,
               type = 'STEP_ATTEMPT_FAILED' AS failed,
               coalesce(payload_json ->> 'kind', '') AS kind
        FROM events WHERE type IN (%(attempt_types)s)
    ), attempts AS (
        SELECT *, failed AND (
            max(id) OVER (PARTITION BY order_id, step) > id
            OR coalesce(max(id) FILTER (WHERE NOT failed) OVER (PARTITION BY order_id), 0) > id
        ) AS retried
        FROM tagged
    ), firsts AS (
        SELECT step, min(ts) AS ts FROM attempts WHERE retried GROUP BY order_id, step
    )
    INSERT INTO stats_deltas (at, metric, k1, k2, n)
    SELECT stats_bin(ts), 'attempt', step, '', count(*) FROM attempts GROUP BY 1, 3
    UNION ALL
    SELECT stats_bin(ts), 'failed', step, kind, count(*) FROM attempts WHERE failed
    GROUP BY 1, 3, 4
    UNION ALL
    SELECT stats_bin(ts), 'retry', step, '', count(*) FROM attempts WHERE retried GROUP BY 1, 3
    UNION ALL
    SELECT stats_bin(ts), 'order_retried', step, '', count(*) FROM firsts GROUP BY 1, 3;

    PERFORM stats_fold(NULL);
END $$;
"""


TRIGGERS = """
CREATE TRIGGER stats_orders_written AFTER INSERT OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION stats_orders_delta();
CREATE TRIGGER stats_orders_changed AFTER UPDATE OF state, reason, created_at ON orders
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       OR OLD.reason IS DISTINCT FROM NEW.reason
                       OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION stats_orders_delta();
CREATE TRIGGER stats_payments_written AFTER INSERT OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION stats_payments_delta();
CREATE TRIGGER stats_payments_changed AFTER UPDATE OF status, created_at ON payments
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION stats_payments_delta();
CREATE TRIGGER stats_events_written AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION stats_events_delta();
"""

_TERMINAL = ("COMPLETED", "CANCELLED", "FAILED")
_SUCCESS = ("RECEIVED", "VALIDATED", "PAYMENT_CHARGED", "PACKAGE_PREPARED", "DISPATCHED")


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _statements(script: str) -> list[str]:
    """One statement each (the driver takes one at a time): a statement ends at a `;` that
    ends a line at the top level, i.e. before a line starting CREATE (or its comment)."""
    parts = re.split(r";[ \t]*\n(?=(?:\s*--[^\n]*\n)*\s*CREATE )", script.strip())
    return [p.strip().removesuffix(";") for p in parts if p.strip()]


def upgrade() -> None:
    names = {
        "terminal": _quoted(_TERMINAL),
        "attempt_types": _quoted(("STEP_ATTEMPT_FAILED", *_SUCCESS)),
    }
    for statement in _statements(TABLES) + _statements(FUNCTIONS % names):
        op.execute(statement)
    for statement in _statements(TRIGGERS):
        op.execute(statement)
    op.execute("SELECT stats_rebuild()")


def downgrade() -> None:
    for table in ("orders", "payments"):
        op.execute(f"DROP TRIGGER stats_{table}_written ON {table}")
        op.execute(f"DROP TRIGGER stats_{table}_changed ON {table}")
    op.execute("DROP TRIGGER stats_events_written ON events")
    for function in (
        "stats_rebuild()",
        "stats_events_delta()",
        "stats_attempt_delta(events, text)",
        "stats_span_delta(events)",
        "stats_payments_delta()",
        "stats_orders_delta()",
        "stats_fold(bigint)",
        "stats_step(text, jsonb)",
        "stats_bin(timestamp)",
        "stats_coarse_bucket(float8)",
        "stats_fine_bucket(float8)",
    ):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP TABLE stats_rollup")
    op.execute("DROP TABLE stats_deltas")
