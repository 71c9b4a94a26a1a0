"""An identity belongs to exactly one order, on the real stack, judged on the providers'
ledgers: a payment id held by another order, a free order, and a run with no hard
timeout that could cut its compensation off."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from temporalio.client import WorkflowFailureError

from app.orders.messages import ORDER_WORKFLOW, OrderInput
from app.orders.providers.gateway import read_ledger
from app.service.errors import OrderConflict
from app.service.inputs import order_input
from tests.helpers import ADDRESS, Running, eventually, payments, wait_for_step

pytestmark = pytest.mark.integration


def new_id() -> str:
    return f"ident-{uuid.uuid4().hex[:10]}"


async def test_payment_id_of_another_order_is_refused_and_never_touches_its_money(
    running: Running,
) -> None:
    """Order A pays with pmt-X and is shipping (to a queue no worker serves); B comes with
    the same pmt-X. B is refused at the door and, started behind the service's back, fails
    without a gateway call. A's cancel then refunds A: nobody is left charged."""
    a, b = new_id(), new_id()
    shared = f"pmt-{a}"
    inp = dataclasses.replace(
        order_input(running.settings, a, shared, ADDRESS),
        shipping_task_queue=f"nowhere-{uuid.uuid4().hex[:6]}",
    )
    await running.client.start_workflow(
        ORDER_WORKFLOW, inp, id=f"order-{a}", task_queue=running.settings.order_task_queue
    )
    await wait_for_step(running, a, "MANUAL_REVIEW")
    await running.service.approve(a, reviewer="alice")
    await wait_for_step(running, a, "SHIP")

    with pytest.raises(OrderConflict) as refused:
        await running.service.start_order(b, shared, ADDRESS)
    assert (refused.value.status, refused.value.field) == (409, "payment_id")

    behind_the_back = await running.client.start_workflow(
        ORDER_WORKFLOW,
        order_input(running.settings, b, shared, ADDRESS),
        id=f"order-{b}",
        task_queue=running.settings.order_task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await behind_the_back.result()
    failed_b = await running.reader.status(b)
    assert (failed_b.state, failed_b.reason) == ("FAILED", "payment_id_in_use")

    await running.service.cancel(a, reason="changed my mind")
    # No shipping worker serves A's queue: its child answers the cancel only when ended.
    await running.client.get_workflow_handle(f"shipping-{a}-1").terminate(reason="no carrier")

    async def settled() -> bool | None:
        return (await running.reader.status(a)).settled or None

    await eventually(settled, what="A's refund")
    view = await running.reader.status(a)
    assert (view.state, view.payment_status) == ("CANCELLED", "refunded")
    ledger = await read_ledger(running.providers.gateway.engine, [a, b])
    assert [c["refunded_cents"] == c["amount_cents"] for c in ledger[a]] == [True]
    assert ledger[b] == []
    # Whatever an outage does, no hard timeout can cut an order's compensation off.
    desc = await running.client.get_workflow_handle(f"order-{a}").describe()
    config = desc.raw_description.execution_config
    assert not config.workflow_execution_timeout.ToSeconds()


async def test_free_order_ships_without_a_gateway_call(running: Running) -> None:
    order_id = new_id()
    free = [{"sku": "FREE-1", "qty": 2, "unit_price_cents": 0}]
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS, items=free)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    result = await running.client.get_workflow_handle(f"order-{order_id}").result()
    assert result["state"] == "COMPLETED"
    view = await running.reader.status(order_id)
    assert (view.payment_status, view.settled, view.errors) == ("not_due", True, [])
    assert [(p.status, p.amount) for p in await payments(running, order_id)] == [("not_due", 0)]
    assert (await read_ledger(running.providers.gateway.engine, [order_id]))[order_id] == []


async def _direct_run_fails(running: Running, inp: OrderInput, reason: str) -> None:
    """A run started behind the service's back (the Temporal CLI) is held to the rules."""
    handle = await running.client.start_workflow(
        ORDER_WORKFLOW,
        inp,
        id=f"order-{inp.order_id}",
        task_queue=running.settings.order_task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    view = await running.reader.status(inp.order_id)
    assert (view.state, view.reason) == ("FAILED", reason)
    assert (await read_ledger(running.providers.gateway.engine, [inp.order_id]))[inp.order_id] == []


async def test_a_direct_run_cannot_take_another_orders_references(running: Running) -> None:
    owner = new_id()
    await running.service.start_order(owner, f"pmt-{owner}", ADDRESS)
    await wait_for_step(running, owner, "MANUAL_REVIEW")
    base = order_input(running.settings, new_id(), f"pmt-{owner}", ADDRESS)
    # The owner's future retry payment, as a retry of its own (a run it never failed).
    await _direct_run_fails(
        running,
        dataclasses.replace(base, payment_id=f"pmt-{owner}#r2", retry=2, retry_of_run_id="made-up"),
        "payment_id_in_use",
    )
    # A retry number without a failed run, a reference that is not this run's, and
    # another order's name at the carrier.
    for odd in (
        {"payment_id": f"pmt-{new_id()}#r2", "retry": 2},
        {"payment_id": f"pmt-{new_id()}#r02", "retry": 2, "retry_of_run_id": "made-up"},
        {"payment_id": f"pmt-{new_id()}", "carrier_order": owner},
    ):
        inp = dataclasses.replace(base, order_id=new_id(), **odd)
        await _direct_run_fails(running, inp, "invalid_order")
    await running.service.cancel(owner)


async def test_duplicate_starts_racing_keep_the_orders_claim(running: Running) -> None:
    """Five copies of one keyed start at once: one run, and the payment id stays its own
    (a copy that lost the race must not give the winner's claim back)."""
    order_id, other = new_id(), new_id()
    payment_id = f"pmt-{order_id}"
    answers = await asyncio.gather(
        *(
            running.service.start_order(order_id, payment_id, ADDRESS, idempotency_key="k1")
            for _ in range(5)
        )
    )
    assert len({a.run_id for a in answers}) == 1
    with pytest.raises(OrderConflict) as refused:
        await running.service.start_order(other, payment_id, ADDRESS)
    assert refused.value.field == "payment_id"
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.cancel(order_id)
