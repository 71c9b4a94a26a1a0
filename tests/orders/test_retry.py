"""An operator's retry of a FAILED order, on the real stack, judged on the gateway's ledger.

The order that fails has been charged: its shipping goes to a queue no worker serves, and
each shipping attempt is terminated (the carrier never answers), so after the last one it
closes FAILED and its charge is refunded. The retry is a new run under the same order id
that charges a payment of its own; nothing is charged twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import ORDER_WORKFLOW, EventType
from app.orders.providers.api import charge_key
from app.orders.providers.carrier import read_ledger as carrier_ledger
from app.orders.providers.gateway import read_ledger
from app.orders.workflows.policies import MAX_SHIPPING_ATTEMPTS
from app.service.errors import OrderConflict, OrderNotFound
from app.service.inputs import order_input
from tests.helpers import ADDRESS, Running, eventually, order_events, payments, wait_for_step

pytestmark = pytest.mark.integration


def new_id() -> str:
    return f"retry-{uuid.uuid4().hex[:10]}"


async def failed_after_payment(
    running: Running, order_id: str | None = None, payment_id: str | None = None
) -> str:
    """An order that was charged, then failed in shipping and was refunded."""
    order_id = order_id or new_id()
    inp = dataclasses.replace(
        order_input(running.settings, order_id, payment_id or f"pmt-{order_id}", ADDRESS),
        shipping_task_queue=f"nowhere-{uuid.uuid4().hex[:6]}",
    )
    handle = await running.client.start_workflow(
        ORDER_WORKFLOW,
        inp,
        id=f"order-{order_id}",
        task_queue=running.settings.order_task_queue,
    )
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    for attempt in range(1, MAX_SHIPPING_ATTEMPTS + 1):
        child = f"shipping-{order_id}-{attempt}"
        await eventually(lambda: started(running, child), what=child)  # noqa: B023
        await running.client.get_workflow_handle(child).terminate(reason="no carrier answer")
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    return order_id


async def started(running: Running, workflow_id: str) -> bool | None:
    try:
        await running.client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return True


async def payment_states(running: Running, order_id: str) -> list[tuple[str, str]]:
    return [(p.payment_id, p.status) for p in await payments(running, order_id)]


async def test_failed_order_retried_completes_with_one_net_charge(running: Running) -> None:
    """Ids chosen to collide with retry references as they used to be made (`.r2`): an
    order named like the retry's carrier order, a payment id that already ends in `.r2`.
    The retry's references (`#r2`) are its own all the same."""
    order_id = new_id()
    neighbour = f"{order_id}.r2"  # a legal order id, once the retry's carrier order
    await running.service.start_order(neighbour, f"pmt-n-{order_id}", ADDRESS)
    await wait_for_step(running, neighbour, "MANUAL_REVIEW")
    await running.service.approve(neighbour, reviewer="alice")
    shipped = await running.client.get_workflow_handle(f"order-{neighbour}").result()
    assert shipped["state"] == "COMPLETED"
    payment_id = f"pmt-{order_id}.r2"
    await failed_after_payment(running, order_id, payment_id)
    failed = await running.reader.status(order_id)
    assert (failed.state, failed.reason, failed.payment_status) == (
        "FAILED",
        "shipping_failed",
        "refunded",
    )

    # Two operators press retry at once: one new run.
    answers = await asyncio.gather(
        running.service.retry_order(order_id),
        running.service.retry_order(order_id),
        return_exceptions=True,
    )
    started = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, OrderConflict)]
    assert (len(started), len(refused)) == (1, 1), answers
    run_id = started[0].run_id
    assert run_id and run_id != failed.run_id

    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    # Running now: a second retry is refused.
    with pytest.raises(OrderConflict):
        await running.service.retry_order(order_id)
    await running.service.approve(order_id, reviewer="alice")
    result = await running.client.get_workflow_handle(f"order-{order_id}", run_id=run_id).result()
    assert result["state"] == "COMPLETED"

    done = await running.reader.status(order_id)
    assert (done.state, done.run_id, done.payment_id, done.payment_status) == (
        "COMPLETED",
        run_id,
        f"{payment_id}#r2",
        "charged",
    )
    # The view is the new run's: one attempt per step, no errors of the failed run.
    assert done.attempts == {"RECEIVE": 1, "VALIDATE": 1, "PAY": 1, "SHIP": 1}
    assert done.errors == []
    assert await payment_states(running, order_id) == [
        (payment_id, "refunded"),
        (f"{payment_id}#r2", "charged"),
    ]
    charges = (await read_ledger(running.providers.gateway.engine, [order_id]))[order_id]
    assert [(c["payment_id"], c["refunded_cents"], c["idempotency_key"]) for c in charges] == [
        (payment_id, charges[0]["amount_cents"], charge_key(order_id, payment_id)),
        (f"{payment_id}#r2", 0, charge_key(order_id, f"{payment_id}#r2")),
    ]
    # The carrier closed the failed run's shipments; the retry ships under its own name,
    # and the order named like the old form keeps its own parcel.
    carrier_names = [order_id, f"{order_id}#r2", neighbour]
    bookings = await carrier_ledger(running.providers.carrier.engine, carrier_names)
    assert [len(bookings[name]) for name in carrier_names] == [0, 1, 1]
    assert done.tracking_number == bookings[f"{order_id}#r2"][0]["tracking_number"]
    assert done.tracking_number != bookings[neighbour][0]["tracking_number"]
    events = await order_events(running, order_id)
    assert events.count(EventType.RETRIED) == 1
    assert events[-1] == EventType.COMPLETED

    # Completed now: refused, and nothing more is charged.
    with pytest.raises(OrderConflict):
        await running.service.retry_order(order_id)
    after = (await read_ledger(running.providers.gateway.engine, [order_id]))[order_id]
    assert len(after) == 2


async def test_only_failed_orders_are_retried(running: Running) -> None:
    with pytest.raises(OrderNotFound):
        await running.service.retry_order(new_id())

    waiting = new_id()
    await running.service.start_order(waiting, f"pmt-{waiting}", ADDRESS)
    await wait_for_step(running, waiting, "MANUAL_REVIEW")
    with pytest.raises(OrderConflict) as in_review:
        await running.service.retry_order(waiting)
    assert "VALIDATED" in in_review.value.message

    await running.service.cancel(waiting, reason="changed my mind")

    async def cancelled() -> bool | None:
        return (await running.reader.status(waiting)).settled or None

    await eventually(cancelled, what="the cancelled order settled")
    with pytest.raises(OrderConflict) as closed:
        await running.service.retry_order(waiting)
    assert "CANCELLED" in closed.value.message
    assert await payments(running, waiting) == []
