"""Orders end to end on the real dev server and embedded PostgreSQL, with real workers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from temporalio.client import WorkflowFailureError

from app.orders.messages import SIGNAL_APPROVE, ApproveRequest, order_workflow_id
from app.platform.tables import Event, Order
from app.service.errors import OrderConflict
from devstack.chaos.checks import STATE_EVENT
from tests.helpers import (
    ADDRESS,
    HAPPY_PATH_EVENTS,
    NEW_ADDRESS,
    HungOrder,
    Running,
    eventually,
    order_events,
    payments,
    wait_for_step,
)

pytestmark = pytest.mark.integration


def new_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


async def _order(r: Running, order_id: str) -> Order | None:
    async with r.sessions() as s:
        return await s.get(Order, order_id)


async def _payload(r: Running, order_id: str, event_type: str) -> Any:
    """The payload of the order's one event of that type."""
    async with r.sessions() as s:
        rows = await s.execute(
            select(Event.payload_json).where(Event.order_id == order_id, Event.type == event_type)
        )
        return rows.scalar_one()


async def _result(r: Running, order_id: str) -> Any:
    return await r.client.get_workflow_handle(order_workflow_id(order_id)).result()


async def test_order_completes_end_to_end(running: Running) -> None:
    order_id = new_id()
    started = await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    assert started.workflow_id == f"order-{order_id}" and started.run_id
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice", note="checked by phone")
    result = await _result(running, order_id)
    assert result["state"] == "COMPLETED"
    approved = await _payload(running, order_id, "APPROVED")
    assert (approved["by"], approved["note"]) == ("alice", "checked by phone")

    order = await _order(running, order_id)
    assert order is not None and order.state == "COMPLETED" and order.tracking_number
    assert order.address_json == ADDRESS
    paid = await payments(running, order_id)
    assert [(p.payment_id, p.status) for p in paid] == [(f"pmt-{order_id}", "charged")]
    assert await order_events(running, order_id) == HAPPY_PATH_EVENTS
    status = await running.reader.status(order_id)
    assert status.state == "COMPLETED" and status.source == "database"
    assert status.attempts == {"RECEIVE": 1, "VALIDATE": 1, "PAY": 1, "SHIP": 1}


async def test_charge_failing_after_db_write_is_not_charged_twice(running: Running) -> None:
    order_id = new_id()
    await running.service.start_order(
        order_id, f"pmt-{order_id}", ADDRESS, fault_profile="lost_first=1"
    )
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    assert (await _result(running, order_id))["state"] == "COMPLETED"
    paid = await payments(running, order_id)
    assert len(paid) == 1 and paid[0].status == "charged"
    events = await order_events(running, order_id)
    assert events.count("PAYMENT_CHARGED") == 1
    status = await running.reader.status(order_id)
    assert status.attempts["PAY"] == 2
    assert any(e.step == "PAY" and e.attempt == 1 for e in status.errors)


async def test_duplicate_start_creates_no_second_run(running: Running) -> None:
    order_id = new_id()
    first = await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    with pytest.raises(OrderConflict) as info:
        await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    assert info.value.extra["run_id"] == first.run_id
    await running.service.cancel(order_id)
    await _result(running, order_id)
    with pytest.raises(OrderConflict):
        await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    runs = [wf async for wf in running.client.list_workflows(f"WorkflowId = 'order-{order_id}'")]
    assert len(runs) == 1


async def test_cancel_after_payment_refunds(running: Running) -> None:
    order_id = new_id()
    # Slow services (1 s a call) leave time to cancel between payment and dispatch.
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS, fault_profile="delay=1")
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")

    async def paid_or_done() -> bool:
        o = await _order(running, order_id)
        return o is not None and o.state in ("PAID", "COMPLETED")

    await eventually(paid_or_done)
    status = await running.service.cancel(order_id)
    assert status.cancel_requested
    result = await _result(running, order_id)
    assert (result["state"], result["payment_status"]) == ("CANCELLED", "refunded")
    paid = await payments(running, order_id)
    assert [p.status for p in paid] == ["refunded"]
    events = await order_events(running, order_id)
    # Closed first (within the deadline), then compensated; never dispatched. (A package
    # preparation cut short by the cancel may still record itself in between.)
    assert events.index("CANCELLED") < events.index("PAYMENT_REFUNDED")
    assert events.count("PAYMENT_REFUNDED") == 1 and "DISPATCHED" not in events


async def test_address_change_before_dispatch_is_what_ships(running: Running) -> None:
    order_id = new_id()
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    status = await running.service.update_address(order_id, NEW_ADDRESS)
    assert status.address.street == NEW_ADDRESS["street"]
    await running.service.approve(order_id, reviewer="alice")
    assert (await _result(running, order_id))["state"] == "COMPLETED"
    order = await _order(running, order_id)
    assert order is not None and order.address_json == NEW_ADDRESS
    dispatched = await _payload(running, order_id, "DISPATCHED")
    assert dispatched["address"] == NEW_ADDRESS
    # After dispatch: refused, and the caller is told.
    with pytest.raises(OrderConflict):
        await running.service.update_address(order_id, ADDRESS)
    with pytest.raises(OrderConflict):
        await running.service.cancel(order_id)


async def test_review_timeout_and_state_agree_with_workflow(running: Running) -> None:
    order_id = new_id()
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS, review_timeout_s=1)
    result = await _result(running, order_id)
    assert (result["state"], result["reason"]) == ("CANCELLED", "review_timeout")
    order = await _order(running, order_id)
    assert order is not None and order.state == "CANCELLED" and order.reason == "review_timeout"
    assert await payments(running, order_id) == []


async def test_invalid_order_fails_fast(running: Running) -> None:
    order_id = new_id()
    await running.service.start_order(order_id, f"pmt-{order_id}", {**ADDRESS, "country": "ZZ"})
    with pytest.raises(WorkflowFailureError):
        await _result(running, order_id)
    order = await _order(running, order_id)
    assert order is not None and (order.state, order.reason) == ("FAILED", "invalid_order")
    events = await order_events(running, order_id)
    assert events == ["RECEIVED", "VALIDATION_FAILED", "STEP_ATTEMPT_FAILED", "FAILED"]


async def test_every_state_change_has_its_event(running: Running) -> None:
    """Across the orders this module ran, each state an order reached has its event row,
    and the database agrees with the workflow on where each order ended."""
    async with running.sessions() as s:
        # This module's orders (other modules run workers of their own that are gone now).
        orders = list((await s.execute(select(Order).where(Order.id.like("it-%")))).scalars())
        counts = dict(
            (await s.execute(select(Event.order_id, func.count()).group_by(Event.order_id))).all()
        )
    assert orders
    for order in orders:
        events = await order_events(running, order.id)
        assert STATE_EVENT[order.state] in events, (order.id, order.state, events)
        assert counts[order.id] == len(events)
        # The states it passed through on the way are recorded too.
        if order.state in ("PAID", "COMPLETED"):
            assert {"RECEIVED", "VALIDATED", "PAYMENT_CHARGED"} <= set(events)
        handle = running.client.get_workflow_handle(order.workflow_id or "")
        wf_status = await handle.query("status")
        assert wf_status["state"] == order.state, order.id


async def test_approve_order_as_a_plain_temporal_signal(running: Running) -> None:
    """approve_order as a plain Temporal signal (what `temporal workflow signal` sends)."""
    order_id = new_id()
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    handle = running.client.get_workflow_handle(order_workflow_id(order_id))
    await handle.signal(SIGNAL_APPROVE, ApproveRequest(reviewer="cli"))
    assert (await handle.result())["state"] == "COMPLETED"


async def test_hanging_service_times_out_and_every_attempt_is_recorded(
    running: Running, hung_order: HungOrder
) -> None:
    """flaky_call's 300 s hang is cut by the 3 s start-to-close timeout, three times."""
    order_id = hung_order.order_id
    order = await _order(running, order_id)
    assert order is not None and (order.state, order.reason) == ("FAILED", "receive_failed")

    async def failures() -> list[tuple[str, int, str]]:
        async with running.sessions() as s:
            rows = await s.execute(
                select(Event.payload_json)
                .where(Event.order_id == order_id, Event.type == "STEP_ATTEMPT_FAILED")
                .order_by(Event.id)
            )
            found = [(f["step"], f["attempt"], f["kind"]) for f in rows.scalars()]
        # The worker notices the last timeout itself a moment after the server does.
        return found if len(found) >= 3 else []

    assert await eventually(failures) == [
        ("RECEIVE", 1, "timeout"),
        ("RECEIVE", 2, "timeout"),
        ("RECEIVE", 3, "timeout"),
    ]
    status = await running.reader.status(order_id)
    assert status.attempts == {"RECEIVE": 3}
    assert status.payment_status == "none"
