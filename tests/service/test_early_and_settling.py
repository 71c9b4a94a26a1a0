"""An order is visible from the moment it starts, keeps its ids and address when its
first step fails, and reads as settled only once its compensation is done."""

from __future__ import annotations

import uuid

import pytest
from temporalio.testing import ActivityEnvironment

from app.orders.activities import CompensationActivities
from app.orders.messages import ActivityContext, CloseInput, RefundInput
from app.service.errors import OrderConflict
from app.service.inspection import Inspector
from app.service.listing import OrderFilter
from app.service.status import StatusReader
from tests.helpers import ADDRESS, Running, eventually

pytestmark = pytest.mark.integration


def new_id() -> str:
    return f"early-{uuid.uuid4().hex[:10]}"


async def test_an_order_failing_at_its_first_step_is_listed_and_shown_whole(
    running: Running,
) -> None:
    order_id = new_id()
    started = await running.service.start_order(
        order_id, f"pmt-{order_id}", ADDRESS, fault_profile="fail=1"
    )
    # Listed at once, before its first step has done anything.
    inspector = Inspector(running.client, running.sessions, running.settings)
    page = await inspector.list_orders(OrderFilter(), limit=50)
    (row,) = [o for o in page["items"] if o["order_id"] == order_id]
    assert (row["state"], row["payment_id"]) == ("PENDING", f"pmt-{order_id}")

    async def settled() -> bool | None:
        return (await running.service.reader.status(order_id)).settled or None

    await eventually(settled, timeout=30.0, what="the order to fail at RECEIVE")
    view = await running.service.reader.status(order_id)
    assert (view.state, view.reason, view.step) == ("FAILED", "receive_failed", "RECEIVE")
    assert (view.workflow_id, view.run_id) == (started.workflow_id, started.run_id)
    assert view.payment_id == f"pmt-{order_id}" and view.address.model_dump() == ADDRESS
    with pytest.raises(OrderConflict) as again:
        await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    assert again.value.extra["run_id"] == started.run_id


async def test_settled_only_once_compensation_is_done(running: Running) -> None:
    """Closed while charging, nothing recorded: the gateway still has to be asked (refund
    or void). Until it has, the order is not settled and a retry is told to wait."""
    compensation = CompensationActivities(
        running.sessions, running.providers.gateway, running.providers.carrier
    )
    order_id = new_id()
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    # Its workflow stops here; the test plays its close and compensation step by step.
    await running.client.get_workflow_handle(f"order-{order_id}").terminate()
    ctx = ActivityContext(order_id=order_id, fault_profile="off")
    close = CloseInput(
        ctx=ctx,
        payment_id=f"pmt-{order_id}",
        state="FAILED",
        reason="pay_failed",
        step="PAY",
        defer_refund=True,
    )
    closed = await ActivityEnvironment().run(compensation.close_order, close)
    assert closed.refund_pending
    view = await running.service.reader.status(order_id)
    assert (view.state, view.settled) == ("FAILED", False)
    with pytest.raises(OrderConflict) as wait:
        await running.service.retry_order(order_id)
    assert wait.value.extra["reason"] == "settling"

    refund = RefundInput(ctx=ctx, payment_id=f"pmt-{order_id}")
    await ActivityEnvironment().run(compensation.refund_payment, refund)
    fresh = StatusReader(running.client, running.sessions)  # no cache
    assert (await fresh.status(order_id)).settled
