"""The rolled-up statistics (migration 0006) against the figures computed from the tables.

Orders are written row by row the way activities do (inserts, then state changes), so the
triggers' deltas are what is checked; `stats_rebuild()` (the migration's backfill) must
then give the same figures in every window.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.platform.tables import Event, Order, Payment
from app.service.errors import InvalidInput
from app.service.stats import PERCENTILE_ERROR, WINDOWS, StatsCache, order_stats
from tests.service.stats_reference import direct_stats

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(tzinfo=None)
STEPS = [("RECEIVE", "RECEIVED"), ("VALIDATE", "VALIDATED"), ("PAY", "PAYMENT_CHARGED")]
SHIP = [("SHIP", "PACKAGE_PREPARED"), ("SHIP", "DISPATCHED")]


def _order_events(rng: random.Random, order_id: str, start: datetime) -> tuple[list[Any], str]:
    """A plausible history: steps with failed attempts, then an outcome (or none)."""
    events: list[dict[str, Any]] = []
    at = start

    def add(type_: str, **payload: Any) -> None:
        nonlocal at
        at += timedelta(seconds=rng.uniform(0.05, 12))
        events.append({"order_id": order_id, "type": type_, "payload_json": payload, "ts": at})

    for step, success in STEPS + SHIP:
        for attempt in range(rng.choice([0, 0, 0, 1, 2])):
            kind = rng.choice(["timeout", "SimulatedFailure", ""])
            add(
                "STEP_ATTEMPT_FAILED",
                step=step,
                attempt=attempt + 1,
                **({"kind": kind} if kind else {}),
            )
        if rng.random() < 0.12:
            outcome = rng.choice(["FAILED", "CANCELLED"])
            add(outcome, state=outcome)
            return events, outcome
        if rng.random() < 0.05:
            return events, "RECEIVED"  # still running
        add(success)
    add("COMPLETED", state="COMPLETED")
    return events, "COMPLETED"


async def seed_history(sessions: async_sessionmaker[AsyncSession], orders: int) -> None:
    rng = random.Random(27)
    for i in range(orders):
        order_id = f"r-{i}"
        created = NOW - timedelta(minutes=rng.choice([2, 30, 90, 600, 3000, 50_000]))
        events, outcome = _order_events(rng, order_id, created)
        if rng.random() < 0.1:  # closed before ReceiveOrder: no RECEIVED event
            events = [e for e in events if e["type"] != "RECEIVED"]
        async with sessions.begin() as s:
            await s.execute(insert(Order).values(id=order_id, state="RECEIVED", created_at=created))
            if i % 3 == 0:
                await s.execute(
                    insert(Payment).values(
                        payment_id=f"p-{i}", order_id=order_id, status="charged", created_at=created
                    )
                )
        for event in events:  # one transaction each, like the activities
            async with sessions.begin() as s:
                await s.execute(insert(Event).values(**event))
        reason = {"FAILED": "deadline_exceeded", "CANCELLED": "review_timeout"}.get(outcome)
        async with sessions.begin() as s:
            await s.execute(
                update(Order).where(Order.id == order_id).values(state=outcome, reason=reason)
            )
            if i % 3 == 0 and outcome != "COMPLETED":
                await s.execute(
                    update(Payment).where(Payment.payment_id == f"p-{i}").values(status="refunded")
                )


def _comparable(stats: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in stats.items() if k not in {"generated_at", "window"}}
    times = dict(out["execution_time"])
    times.pop("percentile_error", None)
    times.pop("percentiles")
    times["mean_s"] = pytest.approx(times["mean_s"], abs=0.002) if times["mean_s"] else None
    out["execution_time"] = times
    return out


async def test_rollup_matches_direct_computation(
    scratch: async_sessionmaker[AsyncSession],
) -> None:
    await seed_history(scratch, 60)
    rolled = await order_stats(scratch)
    direct = await direct_stats(scratch)
    assert rolled["orders"]["closed"] > 30 and rolled["execution_time"]["without_start"] > 0
    assert _comparable(direct) == _comparable(rolled)
    for name, exact in direct["execution_time"]["percentiles"].items():
        approx = rolled["execution_time"]["percentiles"][name]
        assert approx == pytest.approx(exact, rel=PERCENTILE_ERROR), name

    # The backfill (set-based) gives what the triggers gave, in every window.
    windowed = {name: await order_stats(scratch, name) for name in WINDOWS}
    async with scratch.begin() as s:
        await s.execute(text("SELECT stats_rebuild()"))
    for name, before in windowed.items():
        after = await order_stats(scratch, name)
        assert _comparable(after) == _comparable(before), name
        assert after["execution_time"]["percentiles"] == before["execution_time"]["percentiles"]


async def test_window_boundary(scratch: async_sessionmaker[AsyncSession]) -> None:
    # Now, not the module's NOW: the suite may reach this test many minutes after import.
    now = datetime.now(UTC).replace(tzinfo=None)
    async with scratch.begin() as s:
        await s.execute(
            insert(Order),
            [
                {"id": "old", "state": "COMPLETED", "created_at": now - timedelta(hours=3)},
                {"id": "new", "state": "RECEIVED", "created_at": now - timedelta(minutes=1)},
                {"id": "ancient", "state": "FAILED", "created_at": now - timedelta(days=40)},
            ],
        )
    last_hour = await order_stats(scratch, "1h")
    asked = datetime.now(UTC).replace(tzinfo=None)
    assert last_hour["orders"]["total"] == 1 and last_hour["orders"]["by_state"]["RECEIVED"] == 1
    assert last_hour["window"]["name"] == "1h" and last_hour["window"]["resolution"] == "5 minutes"
    since = datetime.fromisoformat(last_hour["window"]["since"]).replace(tzinfo=None)
    # The window starts on a 5-minute bucket at or before an hour ago.
    assert now - timedelta(minutes=66) <= since <= asked - timedelta(hours=1)
    day = await order_stats(scratch, "24h")
    assert (day["orders"]["total"], day["completion_rate"]) == (2, 1.0)
    month = await order_stats(scratch, "30d")
    assert month["orders"]["total"] == 2
    everything = await order_stats(scratch)
    assert everything["window"] == {"name": "all", "since": None, "resolution": "all time"}
    assert (everything["orders"]["total"], everything["completion_rate"]) == (3, 0.5)
    with pytest.raises(InvalidInput):
        await order_stats(scratch, "7d")


async def test_cache_keeps_one_figure_per_window(
    scratch: async_sessionmaker[AsyncSession],
) -> None:
    cache = StatsCache(scratch)
    async with scratch.begin() as s:
        await s.execute(
            insert(Order).values(id="x", state="RECEIVED", created_at=NOW - timedelta(hours=3))
        )
    assert (await cache.get("1h"))["orders"]["total"] == 0
    assert (await cache.get("all"))["orders"]["total"] == 1
    assert (await cache.get())["window"]["name"] == "all"


async def test_a_start_recorded_after_the_end_counts_from_then(
    scratch: async_sessionmaker[AsyncSession],
) -> None:
    """A run that failed before RECEIVED, then its retry's RECEIVED and outcome: the order
    counts from that RECEIVED, as the tables (and the rebuild) say, not as without start."""
    now = datetime.now(UTC).replace(tzinfo=None)
    async with scratch.begin() as s:
        await s.execute(insert(Order).values(id="late", state="RECEIVED", created_at=now))
    for type_, after in (("FAILED", 1), ("RECEIVED", 5), ("COMPLETED", 9)):
        async with scratch.begin() as s:
            event = {"order_id": "late", "type": type_, "ts": now + timedelta(seconds=after)}
            await s.execute(insert(Event).values(**event, payload_json={}))
    rolled = await order_stats(scratch)
    assert rolled["execution_time"]["without_start"] == 0
    assert rolled["execution_time"]["count"] == 1
    assert _comparable(rolled) == _comparable(await direct_stats(scratch))
    async with scratch.begin() as s:
        await s.execute(text("SELECT stats_rebuild()"))
    assert _comparable(await order_stats(scratch)) == _comparable(rolled)
