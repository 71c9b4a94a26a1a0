"""The statistics computed directly from the tables, as before migration 0006 (the
reference the rollups are checked against; app/service/stats.py reads the rollups).

Order statistics for the dashboard (`GET /stats`), computed from PostgreSQL.

Everything is aggregated in SQL, so the cost does not grow with what the API process holds
in memory, only with the size of the tables. That cost is paid once per change, not per
call: `StatsCache` (the API's `/stats`) answers from the last figures while the tables'
version (the newest event and the newest order, two index reads) is unchanged, computes
at most once a second while they change, and lets concurrent callers share one run.

Definitions (also in docs/console.md):

- execution time of a closed order: its first `RECEIVED` event to its first terminal event
  (`COMPLETED`, `CANCELLED`, `FAILED`). Orders that closed before `ReceiveOrder` wrote a
  row have no `RECEIVED` event and are left out (`without_start` counts them).
- completion rate: `COMPLETED` / closed orders (running orders have no outcome yet).
- per step, an attempt is one finished activity attempt: a success event (`RECEIVED`,
  `VALIDATED`, `PAYMENT_CHARGED`, `PACKAGE_PREPARED`, `DISPATCHED`) or a
  `STEP_ATTEMPT_FAILED` event. Error rate = failed / attempts. Retries = failed attempts
  after which the order went on (a later event of the same step, or any step's success).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from sqlalchemy import Float, Row, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.orders.messages import TERMINAL_STATES, EventType, OrderState, Step

# Upper bounds (seconds) of the execution-time buckets; the last bucket is open-ended.
# Chosen around the business timers: review waits 30 s, an order must end within 60 s.
BUCKET_EDGES: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 45, 60, 90)
PERCENTILES: tuple[float, ...] = (0.5, 0.95, 0.99)

STEP_ORDER = [s.value for s in Step]
# The states an orders row can have, in display order (also the console's state filter).
STATE_ORDER = [
    OrderState.RECEIVED,
    OrderState.VALIDATED,
    OrderState.PAID,
    OrderState.COMPLETED,
    OrderState.CANCELLED,
    OrderState.FAILED,
]
# The terminal states, in display order.
_TERMINAL = [s.value for s in STATE_ORDER if s in TERMINAL_STATES]

# The success event of each step; the SHIP step has two activities, hence two events.
_SUCCESS_EVENT_STEP = {
    EventType.RECEIVED: Step.RECEIVE,
    EventType.VALIDATED: Step.VALIDATE,
    EventType.PAYMENT_CHARGED: Step.PAY,
    EventType.PACKAGE_PREPARED: Step.SHIP,
    EventType.DISPATCHED: Step.SHIP,
}

_STATE_COUNTS = text("SELECT state, count(*) AS n FROM orders GROUP BY state")

_OUTCOMES = text(
    "SELECT state, coalesce(reason, '') AS reason, count(*) AS n FROM orders "
    "WHERE state IN :terminal GROUP BY state, reason"
).bindparams(bindparam("terminal", expanding=True))

_PAYMENTS = text("SELECT status, count(*) AS n FROM payments GROUP BY status")

# One row per closed order: outcome and seconds from RECEIVED to the terminal event.
_SPANS_CTE = """
WITH marks AS (
    SELECT order_id,
           min(ts) FILTER (WHERE type = 'RECEIVED') AS started,
           min(ts) FILTER (WHERE type IN :terminal) AS ended,
           (array_agg(type ORDER BY ts, id) FILTER (WHERE type IN :terminal))[1] AS outcome
    FROM events
    WHERE type = 'RECEIVED' OR type IN :terminal
    GROUP BY order_id
), spans AS (
    SELECT outcome, greatest(extract(epoch FROM ended - started), 0)::float8 AS seconds
    FROM marks WHERE started IS NOT NULL AND ended IS NOT NULL
)
"""

_DURATION_SUMMARY = text(
    _SPANS_CTE
    + """
SELECT count(*) AS n,
       avg(seconds) AS mean,
       max(seconds) AS max,
       percentile_cont(CAST(:percentiles AS float8[])) WITHIN GROUP (ORDER BY seconds) AS pct,
       (SELECT count(*) FROM marks WHERE started IS NULL AND ended IS NOT NULL)
           AS without_start
FROM spans
"""
).bindparams(
    bindparam("terminal", expanding=True),
    bindparam("percentiles", type_=ARRAY(Float)),
)

# width_bucket with sorted edges: 0 = below the first edge, len(edges) = at/above the last.
_DURATION_BUCKETS = text(
    _SPANS_CTE
    + """
SELECT width_bucket(seconds, CAST(:edges AS float8[])) AS bucket, outcome, count(*) AS n
FROM spans GROUP BY bucket, outcome
"""
).bindparams(
    bindparam("terminal", expanding=True),
    bindparam("edges", type_=ARRAY(Float)),
)

# Finished attempts per step, one row per event. A failed attempt counts as retried when
# the order went on afterwards: a later event of the same step, or a success of any step.
# (A retry that only confirms an earlier attempt's write, like a charge already recorded,
# leaves no event of its own; the order moving on is what shows it happened.) Window
# functions keep this one pass over the events, sorted per order.
_ATTEMPTS_CTE = """
WITH tagged AS (
    SELECT id,
           order_id,
           CASE type
               WHEN 'STEP_ATTEMPT_FAILED' THEN coalesce(payload_json ->> 'step', 'unknown')
               WHEN 'RECEIVED' THEN 'RECEIVE'
               WHEN 'VALIDATED' THEN 'VALIDATE'
               WHEN 'PAYMENT_CHARGED' THEN 'PAY'
               ELSE 'SHIP'
           END AS step,
           type = 'STEP_ATTEMPT_FAILED' AS failed,
           coalesce(payload_json ->> 'kind', '') AS kind
    FROM events
    WHERE type = 'STEP_ATTEMPT_FAILED' OR type IN :success
), attempts AS (
    SELECT *,
           failed AND (
               max(id) OVER (PARTITION BY order_id, step) > id
               OR coalesce(max(id) FILTER (WHERE NOT failed) OVER (PARTITION BY order_id), 0)
                  > id
           ) AS retried
    FROM tagged
)
"""

_STEP_TOTALS = text(
    _ATTEMPTS_CTE
    + """
SELECT step,
       count(*) AS attempts,
       count(*) FILTER (WHERE failed) AS failed,
       count(*) FILTER (WHERE retried) AS retries,
       count(DISTINCT order_id) FILTER (WHERE retried) AS orders_retried
FROM attempts GROUP BY step
"""
).bindparams(bindparam("success", expanding=True))

_STEP_FAILURE_KINDS = text(
    _ATTEMPTS_CTE
    + "SELECT step, kind, count(*) AS n FROM attempts WHERE failed GROUP BY step, kind"
).bindparams(bindparam("success", expanding=True))


def _bucket_labels() -> list[tuple[float | None, float | None, str]]:
    """(lower, upper, label) per width_bucket index 0..len(edges)."""
    out: list[tuple[float | None, float | None, str]] = [
        (0.0, BUCKET_EDGES[0], f"<{BUCKET_EDGES[0]:g}s")
    ]
    for lo, hi in pairwise(BUCKET_EDGES):
        out.append((lo, hi, f"{lo:g}-{hi:g}s"))
    out.append((BUCKET_EDGES[-1], None, f">={BUCKET_EDGES[-1]:g}s"))
    return out


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def direct_stats(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Counts per state, completion rate, execution times, per-step retries and errors."""
    rows = await _read_snapshot(sessions)
    by_state = _by_state(rows.states)
    total = sum(by_state.values())
    closed = sum(by_state.get(s, 0) for s in _TERMINAL)
    completed = by_state.get(OrderState.COMPLETED, 0)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "orders": {
            "total": total,
            "open": total - closed,
            "closed": closed,
            "by_state": by_state,
        },
        "completion_rate": _rate(completed, closed),
        "outcomes": _outcomes(rows.outcomes),
        "payments": {str(status): int(n) for status, n in rows.payments},
        "execution_time": _execution_time(rows.summary, rows.buckets),
        "steps": _steps(rows.steps, rows.kinds),
    }


_Row = Row[*tuple[Any, ...]]  # a result row, whatever its columns


@dataclass(frozen=True)
class _Snapshot:
    """The rows of every statistics query, read in one transaction."""

    states: Sequence[_Row]
    outcomes: Sequence[_Row]
    payments: Sequence[_Row]
    summary: _Row
    buckets: Sequence[_Row]
    steps: Sequence[_Row]
    kinds: Sequence[_Row]


async def _read_snapshot(sessions: async_sessionmaker[AsyncSession]) -> _Snapshot:
    terminal = {"terminal": _TERMINAL}
    success = {"success": list(_SUCCESS_EVENT_STEP)}
    # One read-only transaction: every figure comes from the same snapshot.
    async with sessions() as s, s.begin():
        await s.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        return _Snapshot(
            states=(await s.execute(_STATE_COUNTS)).all(),
            outcomes=(await s.execute(_OUTCOMES, terminal)).all(),
            payments=(await s.execute(_PAYMENTS)).all(),
            summary=(
                await s.execute(_DURATION_SUMMARY, {**terminal, "percentiles": list(PERCENTILES)})
            ).one(),
            buckets=(
                await s.execute(_DURATION_BUCKETS, {**terminal, "edges": list(BUCKET_EDGES)})
            ).all(),
            steps=(await s.execute(_STEP_TOTALS, success)).all(),
            kinds=(await s.execute(_STEP_FAILURE_KINDS, success)).all(),
        )


def _by_state(state_rows: Sequence[_Row]) -> dict[str, int]:
    by_state = {str(state): 0 for state in STATE_ORDER}
    for state, n in state_rows:
        by_state[str(state)] = int(n)
    return by_state


def _outcomes(outcome_rows: Sequence[_Row]) -> dict[str, dict[str, Any]]:
    """Per terminal state: how many, and why (most frequent reason first)."""
    outcomes: dict[str, dict[str, Any]] = {s: {"total": 0, "reasons": {}} for s in _TERMINAL}
    for state, reason, n in outcome_rows:
        entry = outcomes[str(state)]
        entry["total"] += int(n)
        # A completed order has no reason; other outcomes without one are shown as such.
        label = reason or ("none" if state == OrderState.COMPLETED else "unknown")
        entry["reasons"][label] = int(n)
    for entry in outcomes.values():
        entry["reasons"] = dict(sorted(entry["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    return outcomes


def _execution_time(summary: _Row, bucket_rows: Sequence[_Row]) -> dict[str, Any]:
    buckets: list[dict[str, Any]] = [
        {"lower_s": lo, "upper_s": hi, "label": label, "count": 0, "by_outcome": {}}
        for lo, hi, label in _bucket_labels()
    ]
    for bucket, outcome, n in bucket_rows:
        b = buckets[min(max(int(bucket), 0), len(buckets) - 1)]
        b["count"] += int(n)
        b["by_outcome"][str(outcome)] = b["by_outcome"].get(str(outcome), 0) + int(n)
    pct = list(summary.pct or [])
    percentiles = {
        f"p{round(p * 100)}": _seconds(pct[i]) if i < len(pct) else None
        for i, p in enumerate(PERCENTILES)
    }
    return {
        "count": int(summary.n),
        "without_start": int(summary.without_start),
        "mean_s": _seconds(summary.mean),
        "max_s": _seconds(summary.max),
        "percentiles": percentiles,
        "buckets": buckets,
    }


def _step_figures(
    attempts: int, failed: int, retries: int, orders_retried: int, kinds: dict[str, int]
) -> dict[str, Any]:
    return {
        "attempts": attempts,
        "succeeded": attempts - failed,
        "failed": failed,
        "retries": retries,
        "orders_retried": orders_retried,
        "error_rate": _rate(failed, attempts),
        "failures_by_kind": kinds,
    }


def _steps(step_rows: Sequence[_Row], kind_rows: Sequence[_Row]) -> list[dict[str, Any]]:
    """The five steps in workflow order (zeros for a step without attempts)."""
    kinds: dict[str, dict[str, int]] = {}
    for step, kind, n in kind_rows:
        kinds.setdefault(str(step), {})[kind or "unknown"] = int(n)
    steps = {
        str(step): _step_figures(
            int(attempts), int(failed), int(retries), int(orders_retried), kinds.get(str(step), {})
        )
        for step, attempts, failed, retries, orders_retried in step_rows
    }
    per_step = [
        {"step": name, **(steps.pop(name) if name in steps else _step_figures(0, 0, 0, 0, {}))}
        for name in STEP_ORDER
    ]
    # Steps named by failure events that are not among the five (should not happen).
    per_step += [{"step": name, **v} for name, v in sorted(steps.items())]
    return per_step
