"""PruneEvents: the events retention, a batch of closed orders per short transaction.

Orders are walked by (closed_at, id) from a progress mark (`events_retention_mark`,
migration 0008) to the cut-off: EVENTS_RETENTION_DAYS ago, and never inside the
reconciliation's window (RECONCILE_LOOKBACK_S; an order closes after it was created, so
one closed before the cut-off is older than the window). Each batch deletes the prunable
events of up to EVENTS_RETENTION_BATCH orders and moves the mark in one transaction that
takes no lock on `orders`: running orders never wait for it. The statistics are not
touched (their rollups do not read events); the run also folds pending statistics deltas
and drops rollup rows finer than their windows need and execution times past 32 days.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from app.orders.activities.common import now_utc
from app.orders.housekeeping.messages import (
    KEPT_EVENT_TYPES,
    PRUNE_EVENTS_ACTIVITY,
    HousekeepingInput,
)
from app.orders.messages import TERMINAL_STATES
from app.platform.settings import Settings

MARK = "events"
# A run stops after this long (the next scheduled run goes on from the mark).
RUN_BUDGET_S = 20 * 60.0

_PRUNE_BATCH = text(
    """
WITH mark AS (
    SELECT coalesce(max(closed_at), TIMESTAMP '1970-01-01') AS at, coalesce(max(order_id), '')
        AS id FROM events_retention_mark WHERE name = :mark
), chunk AS (
    SELECT o.id, o.closed_at FROM orders o, mark m
    WHERE o.closed_at IS NOT NULL AND o.closed_at < :cutoff AND o.state IN :terminal
      AND (o.closed_at, o.id) > (m.at, m.id)
    ORDER BY o.closed_at, o.id LIMIT :batch
), gone AS (
    DELETE FROM events e USING chunk c
    WHERE e.order_id = c.id AND e.type NOT IN :kept
    RETURNING 1
), last AS (
    SELECT closed_at, id FROM chunk ORDER BY closed_at DESC, id DESC LIMIT 1
), moved AS (
    INSERT INTO events_retention_mark (name, closed_at, order_id)
    SELECT :mark, closed_at, id FROM last
    ON CONFLICT (name) DO UPDATE SET closed_at = excluded.closed_at, order_id = excluded.order_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM chunk) AS orders, (SELECT count(*) FROM gone) AS events,
       (SELECT count(*) FROM moved) AS moved
"""
).bindparams(bindparam("terminal", expanding=True), bindparam("kept", expanding=True))

# Rollup rows finer than any window reads (app/service/stats.py WINDOWS): 5-minute rows
# beyond the last hour and hour rows beyond the last day, with a margin.
_TRIM_ROLLUP = text(
    "DELETE FROM stats_rollup WHERE (grain = '5m' AND bucket < :five_minutes) "
    "OR (grain = 'hour' AND bucket < :hours)"
)
# Per-order execution times serve exact percentiles of small windows (up to 30 days).
_TRIM_SPANS = text("DELETE FROM stats_spans WHERE at < :month")
_FOLD = text("SELECT stats_fold(:batch)")
FOLD_BATCH = 200_000


def retention_cutoff(settings: Settings, days: int, now: datetime) -> datetime | None:
    """Orders closed before this lose their prunable events; None: keep everything."""
    if days <= 0:
        return None
    return now - max(timedelta(days=days), timedelta(seconds=settings.reconcile_lookback_s))


async def prune_batch(
    sessions: async_sessionmaker[AsyncSession], cutoff: datetime, batch: int
) -> tuple[int, int]:
    """(orders walked, events deleted) of one batch, in its own transaction."""
    params = {
        "mark": MARK,
        "cutoff": cutoff,
        "batch": batch,
        "terminal": [str(s) for s in TERMINAL_STATES],
        "kept": list(KEPT_EVENT_TYPES),
    }
    async with sessions() as s, s.begin():
        row = (await s.execute(_PRUNE_BATCH, params)).one()
    return int(row.orders), int(row.events)


async def tidy_statistics(sessions: async_sessionmaker[AsyncSession], now: datetime) -> None:
    async with sessions() as s, s.begin():
        await s.execute(_FOLD, {"batch": FOLD_BATCH})
        await s.execute(
            _TRIM_ROLLUP,
            {"five_minutes": now - timedelta(hours=3), "hours": now - timedelta(days=3)},
        )
        await s.execute(_TRIM_SPANS, {"month": now - timedelta(days=32)})


class HousekeepingActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    @activity.defn(name=PRUNE_EVENTS_ACTIVITY)
    async def prune_events(self, inp: HousekeepingInput) -> dict[str, Any]:
        days = (
            inp.retention_days
            if inp.retention_days is not None
            else self.settings.events_retention_days
        )
        batch = inp.batch_orders or self.settings.events_retention_batch
        now = now_utc()
        await tidy_statistics(self.sessions, now)
        cutoff = retention_cutoff(self.settings, days, now)
        report: dict[str, Any] = {
            "retention_days": days,
            "cutoff": cutoff.isoformat() if cutoff else None,
            "orders": 0,
            "events_deleted": 0,
            "batches": 0,
            "finished": True,
        }
        started = time.monotonic()
        while cutoff is not None:
            orders, deleted = await prune_batch(self.sessions, cutoff, batch)
            report["orders"] += orders
            report["events_deleted"] += deleted
            report["batches"] += 1
            activity.heartbeat(report["batches"])
            if orders < batch:
                break
            if time.monotonic() - started > RUN_BUDGET_S:
                report["finished"] = False
                break
        return report
