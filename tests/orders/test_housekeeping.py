"""The events retention (app/orders/housekeeping) on a scratch database: only old closed
orders lose events, only the prunable ones, in batches that go on from a mark; the
statistics stay as they were."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from app.orders.activities.common import now_utc
from app.orders.housekeeping.activities import HousekeepingActivities, retention_cutoff
from app.orders.housekeeping.messages import KEPT_EVENT_TYPES, HousekeepingInput
from app.platform.settings import Settings
from app.platform.tables import Event, Order, Payment
from app.service.stats import order_stats

pytestmark = pytest.mark.integration

NOW = now_utc()
STEP_EVENTS = ["RECEIVED", "VALIDATED", "APPROVED", "STEP_ATTEMPT_FAILED", "PAYMENT_CHARGED"]
ENDING = ["PACKAGE_PREPARED", "DISPATCHED", "COMPLETED"]


def _settings() -> Settings:
    return Settings(_env_file=None, reconcile_lookback_s=86400.0)  # type: ignore[call-arg]


async def _seed(sessions: async_sessionmaker[AsyncSession]) -> None:
    # id, state, closed days ago (None: open)
    orders: list[tuple[str, str, float | None]] = [
        *[(f"old-{i}", "COMPLETED", 100 + i) for i in range(5)],
        ("recent", "COMPLETED", 10),
        ("open-old", "VALIDATED", None),
    ]
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for oid, state, closed in orders:
        created = NOW - timedelta(days=(closed or 200) + 1)
        closed_at = None if closed is None else NOW - timedelta(days=closed)
        rows.append(
            {"id": oid, "state": state, "created_at": created, "closed_at": closed_at}
            | {"payment_id": f"p-{oid}"}
        )
        types = STEP_EVENTS + (ENDING if closed is not None else [])
        events += [
            {
                "order_id": oid,
                "type": t,
                "payload_json": {"step": "PAY", "kind": "timeout"} if "FAILED" in t else {},
                "ts": created + timedelta(seconds=i),
            }
            for i, t in enumerate(types)
        ]
    async with sessions.begin() as s:
        await s.execute(insert(Order), rows)
        await s.execute(insert(Event), events)
        await s.execute(
            insert(Payment),
            [
                {"payment_id": f"p-{r['id']}", "order_id": r["id"], "status": "charged"}
                for r in rows
            ],
        )


async def _types(sessions: async_sessionmaker[AsyncSession], order_id: str) -> list[str]:
    async with sessions() as s:
        q = select(Event.type).where(Event.order_id == order_id).order_by(Event.id)
        return list((await s.execute(q)).scalars())


async def test_prunes_only_old_closed_orders_prunable_events_in_batches(
    scratch: async_sessionmaker[AsyncSession],
) -> None:
    await _seed(scratch)
    before = await order_stats(scratch)
    acts = HousekeepingActivities(scratch, _settings())
    env = ActivityEnvironment()

    report = await env.run(acts.prune_events, HousekeepingInput(retention_days=90, batch_orders=2))
    assert (report["orders"], report["batches"]) == (5, 3)
    assert report["events_deleted"] == 5 * 5 and report["finished"]
    for i in range(5):
        kept = await _types(scratch, f"old-{i}")
        assert kept == ["PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"]
        assert set(kept) <= set(KEPT_EVENT_TYPES)
    assert len(await _types(scratch, "recent")) == len(STEP_EVENTS + ENDING)
    assert len(await _types(scratch, "open-old")) == len(STEP_EVENTS)
    async with scratch() as s:
        assert (await s.execute(text("SELECT count(*) FROM orders"))).scalar_one() == 7
        assert (await s.execute(text("SELECT count(*) FROM payments"))).scalar_one() == 7
    # Statistics are rollups, not re-read from the events: unchanged (the percentiles of
    # orders closed more than 32 days ago come from the 5% buckets, no longer exact).
    after = await order_stats(scratch)

    def kept(stats: dict[str, Any]) -> dict[str, Any]:
        times = {
            k: v
            for k, v in stats["execution_time"].items()
            if k not in {"percentiles", "percentile_error"}
        }
        return {k: v for k, v in stats.items() if k != "generated_at"} | {"execution_time": times}

    assert kept(after) == kept(before)
    for name, exact in before["execution_time"]["percentiles"].items():
        assert after["execution_time"]["percentiles"][name] == pytest.approx(exact, rel=0.025)

    # The next run goes on from the mark: nothing left to walk.
    again = await env.run(acts.prune_events, HousekeepingInput(retention_days=90))
    assert (again["orders"], again["events_deleted"]) == (0, 0)


async def test_zero_days_keeps_everything(scratch: async_sessionmaker[AsyncSession]) -> None:
    await _seed(scratch)
    acts = HousekeepingActivities(scratch, _settings())
    report = await ActivityEnvironment().run(acts.prune_events, HousekeepingInput(retention_days=0))
    assert report["cutoff"] is None and report["events_deleted"] == 0


def test_cutoff_never_reaches_into_the_reconciliation_window() -> None:
    now = datetime(2026, 1, 1)
    wide = Settings(_env_file=None, reconcile_lookback_s=30 * 86400.0)  # type: ignore[call-arg]
    assert retention_cutoff(wide, 7, now) == now - timedelta(days=30)
    assert retention_cutoff(wide, 90, now) == now - timedelta(days=90)
    assert retention_cutoff(wide, 0, now) is None
