"""Order statistics for the dashboard (`GET /stats`, `cli.py stats`), over a window.

The figures are not computed from history on each call: triggers on orders, payments and
events (migration 0006) append a delta per figure they change, and `stats_fold` sums the
deltas into per-bucket rows of `stats_rollup` at four grains (5 minutes, hour, day, all
time). A read folds what arrived since the last one (bounded, one folder at a time) and
sums the buckets of its window: a few hundred rows whatever the tables' size. `StatsCache`
(the API's `/stats`) answers from the last figures while the tables' version (the newest
event and the newest order, two index reads) is unchanged, computes at most once a second
per window while they change, and lets concurrent callers share one run.

Windows: `1h` (5-minute buckets), `24h` (hour buckets), `30d` (day buckets), `all` (the
default, what the dashboard has always shown). A window starts at the start of the bucket
that holds "now minus its length", so it covers at most one bucket more than its name.
Orders (states, outcomes) count by when they were created, payments by when they were made,
execution times by when the order closed, attempts by when they were recorded (a retry by
its failed attempt). Deleting old events (the retention) leaves the figures as they were.

Definitions (also in docs/console.md):

- execution time of a closed order: its first `RECEIVED` event to its first terminal event
  (`COMPLETED`, `CANCELLED`, `FAILED`). Orders that closed before `ReceiveOrder` wrote a
  row have no `RECEIVED` event and are left out (`without_start` counts them). Mean, max
  and the coarse buckets are exact; percentiles are exact while the window holds up to
  STATS_EXACT_SPANS closed orders, beyond that they come from log buckets 5% wide, within
  2.5% of the exact value (`percentile_error` says which: 0 or 0.0247).
- completion rate: `COMPLETED` / closed orders (running orders have no outcome yet).
- per step, an attempt is one finished activity attempt: a success event (`RECEIVED`,
  `VALIDATED`, `PAYMENT_CHARGED`, `PACKAGE_PREPARED`, `DISPATCHED`) or a
  `STEP_ATTEMPT_FAILED` event. Error rate = failed / attempts. Retries = failed attempts
  after which the order went on (a later event of the same step, or any step's success).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import Float, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.orders.messages import TERMINAL_STATES, OrderState, Step
from app.service.errors import InvalidInput
from app.service.single_flight import SingleFlight

# Upper bounds (seconds) of the execution-time buckets; the last bucket is open-ended.
# Chosen around the business timers: review waits 30 s, an order must end within 60 s.
# Migration 0006's stats_coarse_bucket holds the same edges.
BUCKET_EDGES: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 45, 60, 90)
PERCENTILES: tuple[float, ...] = (0.5, 0.95, 0.99)
# The percentile histogram (migration 0006, stats_fine_bucket): bucket i >= 1 holds
# [FINE_BASE * FINE_RATIO^(i-1), FINE_BASE * FINE_RATIO^i); bucket 0 is below FINE_BASE.
FINE_BASE = 0.01
FINE_RATIO = 1.05
# A bucket's geometric middle is within this fraction of any value in it.
PERCENTILE_ERROR = round(math.sqrt(FINE_RATIO) - 1, 4)

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


@dataclass(frozen=True)
class Window:
    name: str
    grain: str  # stats_rollup.grain
    length: timedelta | None  # None: all time
    bucket: timedelta | None  # the grain's bucket width
    resolution: str

    def since(self, now: datetime) -> datetime | None:
        if self.length is None or self.bucket is None:
            return None
        start = now - self.length
        epoch = datetime(2000, 1, 1)  # stats_bin's origin; hours and days align with it
        return start - (start - epoch) % self.bucket


WINDOWS = {
    w.name: w
    for w in (
        Window("1h", "5m", timedelta(hours=1), timedelta(minutes=5), "5 minutes"),
        Window("24h", "hour", timedelta(hours=24), timedelta(hours=1), "1 hour"),
        Window("30d", "day", timedelta(days=30), timedelta(days=1), "1 day"),
        Window("all", "all", None, None, "all time"),
    )
}
DEFAULT_WINDOW = "all"
# Deltas folded per read at most: a backlog (after a bulk load) is worked off over reads.
FOLD_BATCH = 200_000


def window_named(name: str | None) -> Window:
    window = WINDOWS.get(name or DEFAULT_WINDOW)
    if window is None:
        raise InvalidInput(f"window must be one of {', '.join(WINDOWS)}", field="window")
    return window


# Up to this many closed orders in the window, percentiles are exact (read from
# stats_spans, migration 0009); beyond, they come from the 5% buckets.
STATS_EXACT_SPANS = 10_000
_EXACT_PERCENTILES = text(
    "SELECT count(*) AS n, percentile_cont(CAST(:percentiles AS float8[])) "
    "WITHIN GROUP (ORDER BY seconds) AS pct FROM stats_spans WHERE at >= :since"
).bindparams(bindparam("percentiles", type_=ARRAY(Float)))
_FOLD = text("SELECT stats_fold(:batch)")
_ROLLUP = text(
    "SELECT metric, k1, k2, sum(n)::bigint AS n, sum(total) AS total, max(peak) AS peak "
    "FROM stats_rollup WHERE grain = :grain AND bucket >= :since GROUP BY metric, k1, k2"
)


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


async def order_stats(
    sessions: async_sessionmaker[AsyncSession], window: str | None = None
) -> dict[str, Any]:
    """Counts per state, completion rate, execution times, per-step retries and errors."""
    chosen = window_named(window)
    now = datetime.now(UTC).replace(tzinfo=None)
    since = chosen.since(now)
    async with sessions() as s, s.begin():
        await s.execute(_FOLD, {"batch": FOLD_BATCH})
    figures = _Figures()
    async with sessions() as s, s.begin():
        await s.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        start = {"since": since or datetime(1970, 1, 1)}
        for metric, k1, k2, n, total, peak in await s.execute(
            _ROLLUP, {"grain": chosen.grain, **start}
        ):
            figures.add(str(metric), str(k1), str(k2), int(n), float(total), peak)
        if 0 < figures.spans <= STATS_EXACT_SPANS:
            exact = (
                await s.execute(_EXACT_PERCENTILES, {"percentiles": list(PERCENTILES), **start})
            ).one()
            # Trimmed rows (older than the housekeeping keeps) leave the buckets' figures.
            if int(exact.n) == figures.spans:
                figures.exact = list(exact.pct or [])
    by_state = _by_state(figures.orders)
    total = sum(by_state.values())
    closed = sum(by_state.get(s, 0) for s in _TERMINAL)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "window": {
            "name": chosen.name,
            "since": None if since is None else since.replace(tzinfo=UTC).isoformat(),
            "resolution": chosen.resolution,
        },
        "orders": {"total": total, "open": total - closed, "closed": closed, "by_state": by_state},
        "completion_rate": _rate(by_state.get(OrderState.COMPLETED, 0), closed),
        "outcomes": _outcomes(figures.orders),
        "payments": {k: n for k, n in figures.payments.items() if n},
        "execution_time": _execution_time(figures),
        "steps": _steps(figures),
    }


@dataclass
class _Figures:
    """The window's rollup rows, sorted by figure."""

    orders: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, reason)
    payments: dict[str, int] = field(default_factory=dict)
    fine: dict[int, int] = field(default_factory=dict)  # percentile bucket -> orders
    coarse: dict[tuple[int, str], int] = field(default_factory=dict)  # (bucket, outcome)
    spans: int = 0
    span_seconds: float = 0.0
    span_max: float | None = None
    without_start: int = 0
    # step -> {"attempt"|"retry"|"order_retried": n}; failed per (step, kind)
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[tuple[str, str], int] = field(default_factory=dict)
    exact: list[float] | None = None  # exact percentiles, when the window is small

    def add(self, metric: str, k1: str, k2: str, n: int, total: float, peak: Any) -> None:
        if metric == "order":
            self.orders[(k1, k2)] = n
        elif metric == "payment":
            self.payments[k1] = n
        elif metric == "span":
            self.fine[int(k2)] = self.fine.get(int(k2), 0) + n
            self.spans += n
            self.span_seconds += total
            if peak is not None:
                self.span_max = max(self.span_max or 0.0, float(peak))
        elif metric == "span_edge":
            self.coarse[(int(k2), k1)] = n
        elif metric == "no_start":
            self.without_start += n
        elif metric == "failed":
            self.failed[(k1, k2)] = n
        else:  # attempt, retry, order_retried
            self.steps.setdefault(k1, {})[metric] = n


# What every change the statistics see writes: an event (state changes, attempts,
# payments and refunds come with theirs) or a new order row (recorded as it starts).
_VERSION = text(
    "SELECT (SELECT max(id) FROM events) AS event, (SELECT max(created_at) FROM orders) AS made"
)
# While the tables change, the figures are recomputed at most this often.
STATS_MIN_AGE_S = 1.0


class StatsCache:
    """`order_stats` for one database and window, computed once per change of its tables."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._figures: dict[str, tuple[float, Any, dict[str, Any]]] = {}
        # One computation per window at a time: callers arriving meanwhile wait for it.
        self._computing: SingleFlight[str, dict[str, Any]] = SingleFlight()

    async def get(self, window: str | None = None) -> dict[str, Any]:
        name = window_named(window).name
        async with self.sessions() as s:
            version = tuple((await s.execute(_VERSION)).one())
        kept = self._figures.get(name)
        if kept is not None and (
            kept[1] == version or time.monotonic() - kept[0] < STATS_MIN_AGE_S
        ):
            return kept[2]
        return await self._computing.run(name, lambda: self._compute(name, version))

    async def _compute(self, window: str, version: Any) -> dict[str, Any]:
        figures = await order_stats(self.sessions, window)
        self._figures[window] = (time.monotonic(), version, figures)
        return figures


def _by_state(orders: dict[tuple[str, str], int]) -> dict[str, int]:
    by_state = {str(state): 0 for state in STATE_ORDER}
    for (state, _reason), n in orders.items():
        if n:  # a state every order has left keeps a row of zero
            by_state[state] = by_state.get(state, 0) + n
    return by_state


def _outcomes(orders: dict[tuple[str, str], int]) -> dict[str, dict[str, Any]]:
    """Per terminal state: how many, and why (most frequent reason first)."""
    outcomes: dict[str, dict[str, Any]] = {s: {"total": 0, "reasons": {}} for s in _TERMINAL}
    for (state, reason), n in orders.items():
        if state not in outcomes or not n:
            continue
        entry = outcomes[state]
        entry["total"] += n
        # A completed order has no reason; other outcomes without one are shown as such.
        label = reason or ("none" if state == OrderState.COMPLETED else "unknown")
        entry["reasons"][label] = entry["reasons"].get(label, 0) + n
    for entry in outcomes.values():
        entry["reasons"] = dict(sorted(entry["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    return outcomes


def _fine_value(bucket: int) -> float:
    """The geometric middle of a percentile bucket."""
    if bucket <= 0:
        return FINE_BASE / 2
    return float(FINE_BASE * FINE_RATIO ** (bucket - 0.5))


def _percentile(ranked: list[tuple[float, int]], count: int, p: float) -> float:
    """percentile_cont over the histogram: each order stands at its bucket's middle."""
    rank = p * (count - 1)

    def at(k: int) -> float:
        seen = 0
        for value, n in ranked:
            seen += n
            if k < seen:
                return value
        return ranked[-1][0]

    low, high = math.floor(rank), math.ceil(rank)
    return at(low) + (at(high) - at(low)) * (rank - low)


def _percentiles(fine: dict[int, int], count: int, peak: float | None) -> dict[str, Any]:
    ranked = [(_fine_value(b), n) for b, n in sorted(fine.items()) if n > 0]
    if not ranked or not count:
        return {f"p{round(p * 100)}": None for p in PERCENTILES}
    top = peak if peak is not None else math.inf
    return {
        f"p{round(p * 100)}": _seconds(min(_percentile(ranked, count, p), top)) for p in PERCENTILES
    }


def _execution_time(figures: _Figures) -> dict[str, Any]:
    buckets: list[dict[str, Any]] = [
        {"lower_s": lo, "upper_s": hi, "label": label, "count": 0, "by_outcome": {}}
        for lo, hi, label in _bucket_labels()
    ]
    for (bucket, outcome), n in figures.coarse.items():
        if not n:
            continue
        b = buckets[min(max(bucket, 0), len(buckets) - 1)]
        b["count"] += n
        b["by_outcome"][outcome] = b["by_outcome"].get(outcome, 0) + n
    count = figures.spans
    return {
        "count": count,
        "without_start": figures.without_start,
        "mean_s": _seconds(figures.span_seconds / count) if count else None,
        "max_s": _seconds(figures.span_max) if count else None,
        "percentiles": (
            {
                f"p{round(p * 100)}": _seconds(v)
                for p, v in zip(PERCENTILES, figures.exact, strict=True)
            }
            if figures.exact is not None
            else _percentiles(figures.fine, count, figures.span_max)
        ),
        "percentile_error": 0.0 if figures.exact is not None else PERCENTILE_ERROR,
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


def _steps(figures: _Figures) -> list[dict[str, Any]]:
    """The five steps in workflow order (zeros for a step without attempts)."""
    kinds: dict[str, dict[str, int]] = {}
    for (step, kind), n in figures.failed.items():
        if n:
            kinds.setdefault(step, {})[kind or "unknown"] = n
    named: Iterable[str] = set(figures.steps) | set(kinds)
    steps = {
        step: _step_figures(
            figures.steps.get(step, {}).get("attempt", 0),
            sum(kinds.get(step, {}).values()),
            figures.steps.get(step, {}).get("retry", 0),
            figures.steps.get(step, {}).get("order_retried", 0),
            kinds.get(step, {}),
        )
        for step in named
        if figures.steps.get(step, {}).get("attempt", 0)
    }
    per_step = [
        {"step": name, **(steps.pop(name) if name in steps else _step_figures(0, 0, 0, 0, {}))}
        for name in STEP_ORDER
    ]
    # Steps named by failure events that are not among the five (should not happen).
    per_step += [{"step": name, **v} for name, v in sorted(steps.items())]
    return per_step
