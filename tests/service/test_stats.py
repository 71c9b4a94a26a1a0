"""order_stats() on real PostgreSQL, with exact expected figures.

Runs on a scratch database in the session's embedded PostgreSQL (`scratch`, migrated like
the real one), so orders from other tests cannot change the numbers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import app.service.stats as stats_module
from app.platform.tables import Event, Order, Payment
from app.service.stats import PERCENTILE_ERROR, order_stats

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, 12, 0, 0)


def ev(order_id: str, type_: str, at: float, **payload: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "type": type_,
        "payload_json": payload,
        "ts": T0 + timedelta(seconds=at),
    }


def failed(order_id: str, step: str, attempt: int, at: float, kind: str) -> dict[str, Any]:
    return ev(
        order_id, "STEP_ATTEMPT_FAILED", at, step=step, attempt=attempt, kind=kind, message="x"
    )


async def seed(sessions: async_sessionmaker[AsyncSession]) -> None:
    orders: list[dict[str, Any]] = [
        {"id": "o-done", "state": "COMPLETED", "reason": None},
        {"id": "o-timeout", "state": "CANCELLED", "reason": "review_timeout"},
        {"id": "o-late", "state": "FAILED", "reason": "deadline_exceeded"},
        {"id": "o-norecv", "state": "FAILED", "reason": "receive_failed"},
        {"id": "o-open", "state": "RECEIVED", "reason": None},
    ]
    events = [
        # Completed in 3 s, VALIDATE needed a second attempt.
        ev("o-done", "RECEIVED", 0, state="RECEIVED", attempt=1),
        failed("o-done", "VALIDATE", 1, 0.5, "SimulatedFailure"),
        ev("o-done", "VALIDATED", 1, state="VALIDATED", attempt=2),
        ev("o-done", "APPROVED", 1.5, by="alice"),
        ev("o-done", "PAYMENT_CHARGED", 2, state="PAID", payment_id="p1", attempt=1),
        # Crashed after recording the charge; attempt 2 found it and wrote no event.
        failed("o-done", "PAY", 1, 2.1, "RuntimeError"),
        ev("o-done", "PACKAGE_PREPARED", 2.5, shipping_attempt=1, attempt=1),
        ev("o-done", "DISPATCHED", 3, tracking_number="T", shipping_attempt=1, attempt=1),
        ev("o-done", "COMPLETED", 3, state="COMPLETED"),
        # Never approved: cancelled after 30.5 s.
        ev("o-timeout", "RECEIVED", 0, state="RECEIVED", attempt=1),
        ev("o-timeout", "VALIDATED", 0.2, state="VALIDATED", attempt=1),
        ev("o-timeout", "CANCELLED", 30.5, state="CANCELLED", reason="review_timeout"),
        # PAY timed out three times; the deadline ended it at 60 s.
        ev("o-late", "RECEIVED", 0, state="RECEIVED", attempt=1),
        failed("o-late", "PAY", 1, 10, "timeout"),
        failed("o-late", "PAY", 2, 20, "timeout"),
        failed("o-late", "PAY", 3, 30, "timeout"),
        ev("o-late", "FAILED", 60, state="FAILED", reason="deadline_exceeded"),
        # ReceiveOrder never succeeded: closed without a RECEIVED event (not measured).
        failed("o-norecv", "RECEIVE", 1, 0, "timeout"),
        failed("o-norecv", "RECEIVE", 2, 4, "timeout"),
        failed("o-norecv", "RECEIVE", 3, 8, "SimulatedFailure"),
        ev("o-norecv", "FAILED", 9, state="FAILED", reason="receive_failed"),
        # Still running.
        ev("o-open", "RECEIVED", 0, state="RECEIVED", attempt=1),
    ]
    async with sessions.begin() as s:
        await s.execute(insert(Order), orders)
        await s.execute(insert(Event), events)
        await s.execute(
            insert(Payment), [{"payment_id": "p1", "order_id": "o-done", "status": "charged"}]
        )


async def test_empty_database(scratch: async_sessionmaker[AsyncSession]) -> None:
    stats = await order_stats(scratch)
    assert stats["orders"] == {
        "total": 0,
        "open": 0,
        "closed": 0,
        "by_state": dict.fromkeys(
            ["RECEIVED", "VALIDATED", "PAID", "COMPLETED", "CANCELLED", "FAILED"], 0
        ),
    }
    assert stats["completion_rate"] is None
    assert stats["execution_time"]["count"] == 0
    assert stats["execution_time"]["percentiles"] == {"p50": None, "p95": None, "p99": None}
    assert all(b["count"] == 0 for b in stats["execution_time"]["buckets"])
    assert [s["step"] for s in stats["steps"]] == [
        "RECEIVE",
        "VALIDATE",
        "MANUAL_REVIEW",
        "PAY",
        "SHIP",
    ]
    assert all(s["attempts"] == 0 and s["error_rate"] is None for s in stats["steps"])


async def test_figures(scratch: async_sessionmaker[AsyncSession]) -> None:
    await seed(scratch)
    stats = await order_stats(scratch)

    assert stats["orders"]["by_state"] == {
        "RECEIVED": 1,
        "VALIDATED": 0,
        "PAID": 0,
        "COMPLETED": 1,
        "CANCELLED": 1,
        "FAILED": 2,
    }
    assert (stats["orders"]["total"], stats["orders"]["open"], stats["orders"]["closed"]) == (
        5,
        1,
        4,
    )
    assert stats["completion_rate"] == 0.25
    assert stats["outcomes"] == {
        "COMPLETED": {"total": 1, "reasons": {"none": 1}},
        "CANCELLED": {"total": 1, "reasons": {"review_timeout": 1}},
        "FAILED": {"total": 2, "reasons": {"deadline_exceeded": 1, "receive_failed": 1}},
    }
    assert stats["payments"] == {"charged": 1}

    et = stats["execution_time"]
    assert (et["count"], et["without_start"]) == (3, 1)
    assert et["max_s"] == 60.0
    assert et["mean_s"] == pytest.approx((3 + 30.5 + 60) / 3, abs=0.001)
    # Few closed orders: exact (larger windows take them from 5%-wide buckets).
    assert et["percentiles"]["p50"] == 30.5
    # Interpolated between the two slowest: 30.5 + 0.9 * 29.5 and 30.5 + 0.98 * 29.5.
    assert et["percentiles"]["p95"] == pytest.approx(57.05, abs=0.001)
    assert et["percentiles"]["p99"] == pytest.approx(59.41, abs=0.001)
    assert et["percentile_error"] == 0.0

    filled = {b["label"]: b["by_outcome"] for b in et["buckets"] if b["count"]}
    # Lower bounds are inclusive: 60 s lands in 60-90s.
    assert filled == {"2-5s": {"COMPLETED": 1}, "30-45s": {"CANCELLED": 1}, "60-90s": {"FAILED": 1}}
    assert et["buckets"][0]["label"] == "<1s" and et["buckets"][-1]["upper_s"] is None

    steps = {s["step"]: s for s in stats["steps"]}
    assert steps["RECEIVE"] | {"failures_by_kind": None} == {
        "step": "RECEIVE",
        "attempts": 7,
        "succeeded": 4,
        "failed": 3,
        "retries": 2,
        "orders_retried": 1,
        "error_rate": round(3 / 7, 4),
        "failures_by_kind": None,
    }
    assert steps["RECEIVE"]["failures_by_kind"] == {"timeout": 2, "SimulatedFailure": 1}
    assert (steps["VALIDATE"]["attempts"], steps["VALIDATE"]["failed"]) == (3, 1)
    assert (steps["VALIDATE"]["retries"], steps["VALIDATE"]["orders_retried"]) == (1, 1)
    # o-late's third timeout was the last attempt (the order failed); o-done's crash was
    # retried although the retry left no event: the order went on to SHIP.
    assert steps["PAY"] | {"failures_by_kind": None} == {
        "step": "PAY",
        "attempts": 5,
        "succeeded": 1,
        "failed": 4,
        "retries": 3,
        "orders_retried": 2,
        "error_rate": 0.8,
        "failures_by_kind": None,
    }
    assert steps["PAY"]["failures_by_kind"] == {"timeout": 3, "RuntimeError": 1}
    # SHIP counts both of its activities (prepare and dispatch).
    assert (steps["SHIP"]["attempts"], steps["SHIP"]["failed"]) == (2, 0)
    assert steps["SHIP"]["error_rate"] == 0.0
    assert steps["MANUAL_REVIEW"]["attempts"] == 0 and steps["MANUAL_REVIEW"]["error_rate"] is None


async def test_percentiles_of_a_large_window_come_from_buckets(
    scratch: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_module, "STATS_EXACT_SPANS", 0)
    await seed(scratch)
    et = (await order_stats(scratch))["execution_time"]
    assert et["percentile_error"] == PERCENTILE_ERROR
    within = pytest.approx
    assert et["percentiles"]["p50"] == within(30.5, rel=PERCENTILE_ERROR)
    assert et["percentiles"]["p95"] == within(57.05, rel=PERCENTILE_ERROR)
    assert et["percentiles"]["p99"] == within(59.41, rel=PERCENTILE_ERROR)
