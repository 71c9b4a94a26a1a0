"""Hostile attacks on the money and identity edges, on the real PostgreSQL and Temporal.

Each test is one attack a hostile caller or an unlucky operator could make, and asserts the
product's promise (never charged twice, nothing kept for an order that did not ship, one
payment id per order, every write names its order and run, the address the customer was
told ships). Activities run in Temporal's ActivityEnvironment where an exact interleaving
matters (a straggling attempt, a lost answer), so the sequence is the one the test says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from app.orders.claims import claim_payment_id
from app.orders.faults import CallInfo, SimulatedLostResponse
from app.orders.messages import (
    DEFAULT_ITEMS,
    ORDER_WORKFLOW,
    ActivityContext,
    Address,
    AddressChangeInput,
    CancelMarkInput,
    ChargeInput,
    CloseInput,
    DispatchInput,
    LineItem,
    ReceiveInput,
    RefundInput,
    ValidateInput,
    order_amount_cents,
    order_workflow_id,
)
from app.orders.providers.api import ChargeRequest, charge_key
from app.orders.providers.carrier import read_ledger as carrier_ledger
from app.orders.providers.gateway import read_ledger as gateway_ledger
from app.platform.sql import on_session
from app.platform.tables import Order, Payment
from app.service.errors import OrderConflict, ServiceError
from app.service.inputs import order_input
from app.service.reconciliation import reconcile_now
from app.service.retry import reopen, retried_event
from tests.helpers import (
    ADDRESS,
    NEW_ADDRESS,
    Running,
    StackActivities,
    eventually,
    payments,
    wait_for_step,
)

pytestmark = pytest.mark.integration

SHIP_TO = Address(**ADDRESS)
ITEMS = list(DEFAULT_ITEMS)
AMOUNT = order_amount_cents(ITEMS)


@pytest.fixture
def acts(running: Running) -> StackActivities:
    return StackActivities.of(running)


def new_id(kind: str) -> str:
    # Dots, dashes and underscores: every character a client id may hold.
    return f"hm2.{kind}_{uuid.uuid4().hex[:8]}"


def attempt(n: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=n)
    return env


def ctx_of(order_id: str, profile: str = "off", retry: int = 1) -> ActivityContext:
    carrier_order = None if retry <= 1 else f"{order_id}#r{retry}"
    return ActivityContext(
        order_id=order_id, fault_profile=profile, carrier_order=carrier_order, retry=retry
    )


def receive_input(
    order_id: str,
    payment_id: str,
    *,
    run_id: str = "run-1",
    retry: int = 1,
    items: list[LineItem] | None = None,
) -> ReceiveInput:
    now = datetime.now(UTC)
    return ReceiveInput(
        ctx=ctx_of(order_id, retry=retry),
        workflow_id=order_workflow_id(order_id),
        run_id=run_id,
        payment_id=payment_id,
        address=SHIP_TO,
        items=ITEMS if items is None else items,
        deadline_iso=(now + timedelta(seconds=60)).isoformat(),
        started_at_iso=now.isoformat(),
        retry_of_run_id="run-1" if retry > 1 else None,
    )


def charge_input(
    order_id: str,
    payment_id: str,
    profile: str = "off",
    retry: int = 1,
    amount_cents: int = AMOUNT,
) -> ChargeInput:
    return ChargeInput(
        ctx=ctx_of(order_id, profile, retry),
        payment_id=payment_id,
        amount_cents=amount_cents,
        approved_by="alice",
        approved_at_iso=datetime.now(UTC).isoformat(),
    )


def close_input(
    order_id: str, payment_id: str, state: str, reason: str, step: str, retry: int = 1
) -> CloseInput:
    return CloseInput(
        ctx=ctx_of(order_id, retry=retry),
        payment_id=payment_id,
        state=state,
        reason=reason,
        step=step,
        defer_refund=True,
    )


async def receive_validate(
    acts: StackActivities,
    order_id: str,
    payment_id: str,
    *,
    run_id: str = "run-1",
    retry: int = 1,
    items: list[LineItem] | None = None,
) -> None:
    env = ActivityEnvironment()
    inp = receive_input(order_id, payment_id, run_id=run_id, retry=retry, items=items)
    await env.run(acts.intake.receive_order, inp)
    validate = ValidateInput(ctx=inp.ctx, address=SHIP_TO, items=inp.items)
    await env.run(acts.intake.validate_order, validate)


async def row(running: Running, order_id: str) -> Order:
    async with running.sessions() as s:
        order = await s.get(Order, order_id)
        assert order is not None
        return order


async def gateway_of(running: Running, order_id: str) -> list[dict[str, Any]]:
    return (await gateway_ledger(running.providers.gateway.engine, [order_id]))[order_id]


def kept(charges: list[dict[str, Any]]) -> int:
    return sum(c["amount_cents"] - c["refunded_cents"] for c in charges)


async def close_and_compensate(
    acts: StackActivities, order_id: str, payment_id: str, state: str, reason: str, step: str
) -> None:
    """What the workflow does once it decided to end: CloseOrder, then RefundPayment."""
    env = ActivityEnvironment()
    closed = await env.run(
        acts.compensation.close_order, close_input(order_id, payment_id, state, reason, step)
    )
    if closed.refund_pending:
        refund = RefundInput(ctx=ctx_of(order_id), payment_id=payment_id)
        await env.run(acts.compensation.refund_payment, refund)


async def retry_reopens(running: Running, order_id: str, run_id: str, retry: int) -> str:
    """What OrderService.retry_order writes (under the row lock) once Temporal started the
    retry's run: the retry's payment claimed, the row reopened for it, RETRIED recorded."""
    async with running.sessions() as s, s.begin():
        order = (
            await s.execute(select(Order).where(Order.id == order_id).with_for_update())
        ).scalar_one()
        assert order.state == "FAILED" and order.settled_at is not None
        new_payment = f"{order.payment_id}#r{retry}"
        claim = await claim_payment_id(on_session(s), new_payment, order_id)
        assert claim.owner == order_id
        failed_run = order.run_id or "run-1"
        reopen(order, run_id, new_payment)
        s.add(retried_event(order_id, failed_run, run_id, new_payment))
    return new_payment


# --- address change vs dispatch ------------------------------------------------------------


# --- a straggling attempt of a failed run, after the operator's retry ------------------------


async def test_straggling_close_of_the_failed_run_leaves_its_retry_alone(
    running: Running, acts: StackActivities
) -> None:
    """Run 1 fails at PAY (its charge refunded) and settles; the operator retries; run 2
    receives, validates and pays under `<pid>#r2`. An attempt of run 1's CloseOrder that
    was cut off (its timeout; Temporal already ran a second attempt that succeeded) now
    reaches the database: `_record_end` locks the row, finds it not terminal (run 2's PAID)
    and records run 1's end over run 2's row.

    Promise: every write names its order and run: run 2 stays PAID and ships."""
    order_id = new_id("straggle")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    await ActivityEnvironment().run(acts.payment.charge_payment, charge_input(order_id, pid))
    await close_and_compensate(acts, order_id, pid, "FAILED", "payment_failed", "PAY")
    assert (await row(running, order_id)).settled_at is not None

    pid2 = await retry_reopens(running, order_id, "run-2", 2)
    await receive_validate(acts, order_id, pid2, run_id="run-2", retry=2)
    await ActivityEnvironment().run(
        acts.payment.charge_payment, charge_input(order_id, pid2, retry=2)
    )
    assert (await row(running, order_id)).state == "PAID"

    # Run 1's cut-off CloseOrder attempt lands now.
    await attempt(1).run(
        acts.compensation.close_order,
        close_input(order_id, pid, "FAILED", "payment_failed", "PAY"),
    )
    after = await row(running, order_id)
    assert (after.state, after.run_id, after.closed_at) == ("PAID", "run-2", None), (
        f"run 1's straggling close recorded {after.state}/{after.reason} over run 2's row "
        f"(settled_at={after.settled_at})"
    )
    shipped = await ActivityEnvironment().run(
        acts.shipping.dispatch_carrier, DispatchInput(ctx_of(order_id, retry=2), 1)
    )
    assert shipped.tracking_number


async def test_straggling_charge_of_the_failed_run_takes_nothing_from_its_retry(
    running: Running, acts: StackActivities
) -> None:
    """Run 1's charge answers are all lost (the gateway charged), it fails at PAY, its
    compensation refunds the charge it finds. Retried. A straggling run-1 charge attempt
    (the old payment id, retry 1) then runs against run 2's reopened row."""
    order_id = new_id("straggle_pay")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    for n in (1, 2, 3):
        with pytest.raises(SimulatedLostResponse):
            await attempt(n).run(
                acts.payment.charge_payment, charge_input(order_id, pid, "lost_first=3")
            )
    await close_and_compensate(acts, order_id, pid, "FAILED", "payment_failed", "PAY")
    pid2 = await retry_reopens(running, order_id, "run-2", 2)
    await receive_validate(acts, order_id, pid2, run_id="run-2", retry=2)

    with pytest.raises(ApplicationError) as refused:
        await attempt(4).run(acts.payment.charge_payment, charge_input(order_id, pid))
    assert refused.value.non_retryable
    ledger = await gateway_of(running, order_id)
    assert len(ledger) == 1 and kept(ledger) == 0
    after = await row(running, order_id)
    assert (after.state, after.payment_id) == ("VALIDATED", pid2)
    assert {p.payment_id: p.status for p in await payments(running, order_id)} == {pid: "refunded"}


# --- races on the charge ---------------------------------------------------------------------


async def test_cancel_racing_the_charge_never_keeps_money(
    running: Running, acts: StackActivities
) -> None:
    """ChargePayment and the workflow's close (CloseOrder, then RefundPayment) at once, for
    several orders (different interleavings): nothing stays kept, and no row says charged."""
    orders = [new_id(f"race{i}") for i in range(6)]
    for oid in orders:
        await receive_validate(acts, oid, f"pmt.{oid}")

    async def charge(oid: str) -> None:
        try:
            await ActivityEnvironment().run(
                acts.payment.charge_payment, charge_input(oid, f"pmt.{oid}")
            )
        except ApplicationError as refused:
            assert refused.type in ("OrderClosed", "PaymentVoided", "PaymentIdInUse")

    await asyncio.gather(
        *(charge(oid) for oid in orders),
        *(
            close_and_compensate(acts, oid, f"pmt.{oid}", "CANCELLED", "customer", "PAY")
            for oid in orders
        ),
    )
    for oid in orders:
        ledger = await gateway_of(running, oid)
        assert len(ledger) <= 1 and kept(ledger) == 0, (oid, ledger)
        assert all(p.status != "charged" for p in await payments(running, oid))
        assert (await row(running, oid)).state == "CANCELLED"


async def test_two_attempts_of_one_charge_at_once_charge_once(
    running: Running, acts: StackActivities
) -> None:
    """A timed-out attempt still running beside its retry (Core cancels it only 5 s past
    its timeout): both reach the gateway and our ledger together."""
    order_id = new_id("twice")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    outcomes = await asyncio.gather(
        *(
            attempt(n).run(acts.payment.charge_payment, charge_input(order_id, pid))
            for n in (1, 2, 3)
        ),
        return_exceptions=True,
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    ledger = await gateway_of(running, order_id)
    assert len(ledger) == 1 and ledger[0]["refunded_cents"] == 0
    assert [p.status for p in await payments(running, order_id)] == ["charged"]


async def test_free_order_closed_while_paying_never_reaches_the_gateway(
    running: Running, acts: StackActivities
) -> None:
    order_id = new_id("free")
    pid = f"pmt.{order_id}"
    free = [LineItem(sku="FREE-1", qty=1, unit_price_cents=0)]
    await receive_validate(acts, order_id, pid, items=free)
    await asyncio.gather(
        ActivityEnvironment().run(
            acts.payment.charge_payment, charge_input(order_id, pid, amount_cents=0)
        ),
        close_and_compensate(acts, order_id, pid, "CANCELLED", "customer", "PAY"),
        return_exceptions=True,
    )
    assert await gateway_of(running, order_id) == []
    async with running.providers.gateway.engine.connect() as conn:
        voids = (
            await conn.execute(
                text("SELECT count(*) FROM voided_payments WHERE order_id = :o"), {"o": order_id}
            )
        ).scalar_one()
    assert voids == 0
    assert (await row(running, order_id)).state == "CANCELLED"


# --- identity: one payment id, one order -----------------------------------------------------


async def test_two_orders_racing_for_one_payment_id_one_wins(running: Running) -> None:
    """Four orders (ids differing only in '.', '-', '_') start at once with the same
    payment id: exactly one is accepted; the others get 409 naming payment_id."""
    base = uuid.uuid4().hex[:8]
    ids = [f"race.{base}", f"race-{base}", f"race_{base}", f"race.{base}.x"]
    shared = f"pmt.{base}"
    answers = await asyncio.gather(
        *(running.service.start_order(oid, shared, ADDRESS) for oid in ids),
        return_exceptions=True,
    )
    won = [oid for oid, a in zip(ids, answers, strict=True) if not isinstance(a, BaseException)]
    lost = [a for a in answers if isinstance(a, BaseException)]
    assert len(won) == 1, answers
    assert all(isinstance(e, OrderConflict) and e.field == "payment_id" for e in lost), lost
    async with running.sessions() as s:
        owner = (
            await s.execute(
                text("SELECT order_id FROM payment_claims WHERE payment_id = :p"), {"p": shared}
            )
        ).scalar_one()
    assert owner == won[0]
    await wait_for_step(running, won[0], "MANUAL_REVIEW")
    await running.service.cancel(won[0])


async def test_64_char_ids_fail_retry_and_pay_under_the_retrys_own_key(running: Running) -> None:
    """An order and a payment id of 64 characters with dots fail (deadline before approval),
    settle, are retried (`#r2` makes them 67) and the retry completes: one charge, under
    the retry's payment and a key naming the order and retry 2."""
    tag = uuid.uuid4().hex
    order_id = f"o.{tag}{tag}"[:64]
    pid = f"p.{tag}{tag}"[:64]
    assert len(order_id) == len(pid) == 64
    await running.service.start_order(order_id, pid, ADDRESS, deadline_s=2)
    handle = running.client.get_workflow_handle(order_workflow_id(order_id))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    await running.service.retry_order(order_id)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    result = await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    assert result["state"] == "COMPLETED"
    ledger = await gateway_of(running, order_id)
    assert [(c["payment_id"], c["idempotency_key"]) for c in ledger] == [
        (f"{pid}#r2", charge_key(order_id, f"{pid}#r2"))
    ]
    assert charge_key(order_id, f"{pid}#r2").endswith(":2")
    assert kept(ledger) == AMOUNT


# --- the reconciliation beside the order's own compensation ----------------------------------


async def _seed_failed_charged(running: Running, order_id: str, pid: str) -> None:
    """A FAILED order whose compensation never ran (no workflow: cut off): our row says
    charged, the gateway keeps the charge (made through its client, as ChargePayment does)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    gateway = running.providers.gateway
    charge = await gateway.charge(
        ChargeRequest(charge_key(order_id, pid), pid, order_id, AMOUNT),
        CallInfo(order_id, 1, "off"),
    )
    async with running.sessions() as s, s.begin():
        s.add(
            Order(
                id=order_id,
                state="FAILED",
                step="SHIP",
                payment_id=pid,
                amount=Decimal(AMOUNT) / 100,
                address_json=ADDRESS,
                created_at=now,
                updated_at=now,
                closed_at=now,
            )
        )
        await s.flush()
        s.add(
            Payment(
                payment_id=pid,
                order_id=order_id,
                status="charged",
                amount=Decimal(AMOUNT) / 100,
                gateway_ref=charge.charge_id,
            )
        )


async def test_heal_and_the_orders_compensation_at_once_refund_once(
    running: Running, acts: StackActivities
) -> None:
    """The reconciliation heals a FAILED order's kept charge while the order's own
    RefundPayment (a straggling attempt, or a resumed one) refunds it too; two
    reconciliation runs join in."""
    order_id = new_id("heal")
    pid = f"pmt.{order_id}"
    await _seed_failed_charged(running, order_id, pid)
    refund = RefundInput(ctx=ctx_of(order_id), payment_id=pid)
    results = await asyncio.gather(
        reconcile_now(running.client, running.settings, order_ids=[order_id]),
        ActivityEnvironment().run(acts.compensation.refund_payment, refund),
        reconcile_now(running.client, running.settings, order_ids=[order_id]),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    (charge,) = await gateway_of(running, order_id)
    assert len(charge["refunds"]) == 1 and charge["refunded_cents"] == AMOUNT
    assert [p.status for p in await payments(running, order_id)] == ["refunded"]


async def test_heal_never_refunds_an_order_that_goes_on_to_complete(
    running: Running,
) -> None:
    """The reconciliation runs while an order is paid and shipping, then after it
    completed: nothing is healed, the completed order keeps its one charge."""
    order_id = new_id("live")
    pid = f"pmt.{order_id}"
    await running.service.start_order(order_id, pid, ADDRESS)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    await wait_for_step(running, order_id, "SHIP")
    report = await reconcile_now(running.client, running.settings, order_ids=[order_id])
    assert report["healed"] == 0
    result = await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    assert result["state"] == "COMPLETED"
    report = await reconcile_now(running.client, running.settings, order_ids=[order_id])
    assert report["findings"] == [] and report["healed"] == 0
    ledger = await gateway_of(running, order_id)
    assert len(ledger) == 1 and kept(ledger) == AMOUNT

    async def settled() -> bool | None:
        return (await running.reader.status(order_id)).settled or None

    await eventually(settled, what="completed order settled")


async def test_cancel_after_a_lost_dispatch_answer_cancels_the_booking_and_refunds(
    running: Running, acts: StackActivities
) -> None:
    """The sibling of the address change: the carrier booked (answer lost), the cancel is
    accepted, the next dispatch attempt refuses, the close cancels the carrier's booking
    and refunds: nothing ships, nothing is kept."""
    order_id = new_id("cancel_lost")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    await ActivityEnvironment().run(acts.payment.charge_payment, charge_input(order_id, pid))
    lost = ctx_of(order_id, "lost_first=1")
    with pytest.raises(SimulatedLostResponse):
        await attempt(1).run(acts.shipping.dispatch_carrier, DispatchInput(lost, 1))
    mark = CancelMarkInput(ctx=ctx_of(order_id), reason="customer", requested_by="customer")
    await ActivityEnvironment().run(acts.changes.mark_cancel_requested, mark)
    with pytest.raises(ApplicationError) as refused:
        await attempt(2).run(acts.shipping.dispatch_carrier, DispatchInput(lost, 1))
    assert refused.value.type == "OrderCancelled"
    await close_and_compensate(acts, order_id, pid, "CANCELLED", "customer", "SHIP")
    bookings = (await carrier_ledger(running.providers.carrier.engine, [order_id]))[order_id]
    assert bookings and all(b["cancelled"] for b in bookings)
    assert kept(await gateway_of(running, order_id)) == 0


# --- the operator's retry --------------------------------------------------------------------


async def _failed_order(running: Running, order_id: str, pid: str, **options: Any) -> None:
    await running.service.start_order(order_id, pid, ADDRESS, **options)
    handle = running.client.get_workflow_handle(order_workflow_id(order_id))
    with pytest.raises(WorkflowFailureError):
        await handle.result()


async def test_two_retries_at_once_start_one_run(running: Running) -> None:
    order_id = new_id("retry2")
    pid = f"pmt.{order_id}"
    await _failed_order(running, order_id, pid, deadline_s=1)
    answers = await asyncio.gather(
        *(running.service.retry_order(order_id) for _ in range(3)), return_exceptions=True
    )
    started = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, BaseException)]
    assert len(started) == 1, answers
    assert all(isinstance(e, OrderConflict) for e in refused), refused
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    result = await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    assert result["state"] == "COMPLETED"
    ledger = await gateway_of(running, order_id)
    assert [c["payment_id"] for c in ledger] == [f"{pid}#r2"] and kept(ledger) == AMOUNT


async def _failed_at_pay_refund_in_flight(running: Running, order_id: str, faults: str) -> str:
    """An order approved, PAY failed with the gateway's answers lost (it charged), closed
    FAILED and its compensation still retrying. Its payment id."""
    pid = f"pmt.{order_id}"
    await running.service.start_order(order_id, pid, ADDRESS, fault_profile=faults)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")

    async def refund_in_flight() -> bool | None:
        order = await row(running, order_id)
        return (order.state == "FAILED" and order.settled_at is None) or None

    await eventually(refund_in_flight, timeout=30, what="FAILED, refund in flight")
    return pid


async def test_retry_and_reconciliation_while_the_failed_runs_refund_is_in_flight(
    running: Running,
) -> None:
    """Every answer of the gateway is lost for the first five attempts: PAY fails after
    three (the gateway charged), and the compensation's cancel_or_refund is retried for
    seconds with the order FAILED in our row. Meanwhile an operator retries (refused:
    settling) and the reconciliation runs (the order is settling: nothing healed). Once
    settled, the retry pays under its own payment: one refund, one charge kept."""
    order_id = new_id("inflight")
    pid = await _failed_at_pay_refund_in_flight(running, order_id, "lost_first=5")
    with pytest.raises(OrderConflict) as refused:
        await running.service.retry_order(order_id, fault_profile="off")
    assert refused.value.extra.get("reason") == "settling", refused.value.message
    report = await reconcile_now(running.client, running.settings, order_ids=[order_id])
    assert report["healed"] == 0 and order_id in report["settling_orders"], report

    handle = running.client.get_workflow_handle(order_workflow_id(order_id))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    await running.service.retry_order(order_id, fault_profile="off")
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    result = await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    assert result["state"] == "COMPLETED"
    ledger = {c["payment_id"]: c for c in await gateway_of(running, order_id)}
    assert set(ledger) == {pid, f"{pid}#r2"}
    assert len(ledger[pid]["refunds"]) == 1 and ledger[pid]["refunded_cents"] == AMOUNT
    assert ledger[f"{pid}#r2"]["refunded_cents"] == 0
    report = await reconcile_now(running.client, running.settings, order_ids=[order_id])
    assert report["findings"] == [], report["findings"]


async def test_a_run_with_another_orders_payment_id_cannot_take_its_retry_reference(
    running: Running,
) -> None:
    """B is started behind the service's back (the Temporal CLI) with A's payment id: it
    fails at RECEIVE (payment_id_in_use) and its close writes B's row, naming A's payment
    id. An operator then retries B through the service: the retry claims `<A's pid>#r2`
    for B before its run fails again. A fails later and its operator retries it.

    Promise: one payment id (and each retry reference made from it) belongs to one order:
    B's retry is refused at the door, and A's retry pays under its own `#r2`."""
    a, b = new_id("owner"), new_id("intruder")
    shared = f"pmt.{a}"
    await running.service.start_order(a, shared, ADDRESS, review_timeout_s=30, deadline_s=4)
    await wait_for_step(running, a, "MANUAL_REVIEW")
    intruder = await running.client.start_workflow(
        ORDER_WORKFLOW,
        order_input(running.settings, b, shared, ADDRESS),
        id=order_workflow_id(b),
        task_queue=running.settings.order_task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await intruder.result()
    assert (await running.reader.status(b)).reason == "payment_id_in_use"

    b_retry: OrderConflict | None = None
    try:
        await running.service.retry_order(b)
    except OrderConflict as refused:
        b_retry = refused
    if b_retry is None:  # its run fails again, before any gateway call
        with pytest.raises(WorkflowFailureError):
            await running.client.get_workflow_handle(order_workflow_id(b)).result()
    async with running.sessions() as s:
        owner = (
            await s.execute(
                text("SELECT order_id FROM payment_claims WHERE payment_id = :p"),
                {"p": f"{shared}#r2"},
            )
        ).scalar_one_or_none()
    with pytest.raises(WorkflowFailureError):  # A: its deadline, before approval
        await running.client.get_workflow_handle(order_workflow_id(a)).result()
    a_retry: OrderConflict | None = None
    try:
        await running.service.retry_order(a)
    except OrderConflict as refused:
        a_retry = refused
    assert owner in (None, a) and a_retry is None and b_retry is not None, (
        f"B's retry {'was refused' if b_retry else 'started'}; {shared}#r2 is claimed by "
        f"{owner!r} (A is {a}); A's retry: {a_retry and a_retry.message}"
    )
    await wait_for_step(running, a, "MANUAL_REVIEW")
    await running.service.cancel(a)


@pytest.mark.parametrize(
    "variant",
    [
        "pmt-\uff11",  # a fullwidth digit (NFKC: "pmt-1")
        "pmt-1 ",
        " pmt-1",
        "pmt-1\n",
        "pmt\u200b-1",  # a zero-width space
        "pmt-1#r2",
        "pmt:1",
        "p" * 65,
    ],
)
async def test_payment_ids_that_normalise_to_another_are_refused_at_the_door(
    running: Running, variant: str
) -> None:
    order_id = new_id("variant")
    with pytest.raises(ServiceError) as refused:
        await running.service.start_order(order_id, variant, ADDRESS)
    assert refused.value.status == 422 and refused.value.field == "payment_id"
    async with running.sessions() as s:
        claimed = (
            await s.execute(
                text("SELECT count(*) FROM payment_claims WHERE order_id = :o"), {"o": order_id}
            )
        ).scalar_one()
    assert claimed == 0


# --- the database under the hot path: a statement cut off, a connection killed -------------


async def _waiting_on_lock(running: Running, fragment: str) -> list[int]:
    """Backends of the order database blocked on a lock, running `fragment`."""
    async with running.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE :q AND datname = current_database()"
            ),
            {"q": f"%{fragment}%"},
        )
        return [r.pid for r in rows]


async def _holding_row(running: Running, order_id: str) -> Any:
    conn = await running.engine.connect()
    await conn.execute(text("SELECT 1 FROM orders WHERE id = :o FOR UPDATE"), {"o": order_id})
    return conn


@pytest.mark.parametrize("how", ["cancelled", "backend_killed"])
async def test_charge_cut_off_while_recording_then_retried_records_once(
    running: Running, acts: StackActivities, how: str
) -> None:
    """ChargePayment's attempt 1 has the gateway's charge and waits for the order row (a
    cancel holds it). It is then cancelled (its timeout) or its connection killed (a
    PostgreSQL restart). Attempt 2 runs after the row is free: one charge, one row, and the
    pool hands out working connections afterwards."""
    order_id = new_id(f"cut_{how}")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    holder = await _holding_row(running, order_id)
    env = attempt(1)
    first = asyncio.ensure_future(env.run(acts.payment.charge_payment, charge_input(order_id, pid)))
    try:
        blocked = await eventually(
            lambda: _waiting_on_lock(running, "FROM orders WHERE id = $1 FOR UPDATE"),
            what="attempt 1 waiting for the row",
        )
        if how == "cancelled":
            env.cancel()
        else:
            async with running.engine.connect() as conn:
                for backend in blocked:
                    await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
        outcome = await asyncio.gather(first, return_exceptions=True)
        assert isinstance(outcome[0], BaseException), outcome
    finally:
        await holder.rollback()
        await holder.close()
    assert await payments(running, order_id) == []
    await attempt(2).run(acts.payment.charge_payment, charge_input(order_id, pid))
    ledger = await gateway_of(running, order_id)
    assert len(ledger) == 1 and kept(ledger) == AMOUNT
    assert [p.status for p in await payments(running, order_id)] == ["charged"]
    # The pool is healthy: a burst of hot-path statements on it all succeed.
    others = [new_id(f"after_{how}{i}") for i in range(8)]
    await asyncio.gather(*(receive_validate(acts, o, f"pmt.{o}") for o in others))


async def test_straggling_refund_of_the_failed_run_does_not_settle_its_retry(
    running: Running, acts: StackActivities
) -> None:
    """Run 1 fails at PAY and settles; retried; run 2's charge answers are lost (the
    gateway charged `<pid>#r2`), it fails at PAY and its refund is still to come. A cut-off
    RefundPayment attempt of run 1 lands now: nothing to refund for run 1, but it records
    the order settled, over run 2's row.

    Promise: `settled` means the order's compensation is done (the retry gate, the status
    view and the reconciliation trust it): run 2's row stays unsettled until its refund."""
    order_id = new_id("straggle_refund")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    await ActivityEnvironment().run(acts.payment.charge_payment, charge_input(order_id, pid))
    await close_and_compensate(acts, order_id, pid, "FAILED", "payment_failed", "PAY")
    pid2 = await retry_reopens(running, order_id, "run-2", 2)
    await receive_validate(acts, order_id, pid2, run_id="run-2", retry=2)
    for n in (1, 2, 3):
        with pytest.raises(SimulatedLostResponse):
            await attempt(n).run(
                acts.payment.charge_payment,
                charge_input(order_id, pid2, "lost_first=3", retry=2),
            )
    closed = await ActivityEnvironment().run(
        acts.compensation.close_order,
        close_input(order_id, pid2, "FAILED", "payment_failed", "PAY", retry=2),
    )
    assert closed.refund_pending and (await row(running, order_id)).settled_at is None

    stale = RefundInput(ctx=ctx_of(order_id), payment_id=pid)
    await attempt(3).run(acts.compensation.refund_payment, stale)
    ledger = {c["payment_id"]: c for c in await gateway_of(running, order_id)}
    after = await row(running, order_id)
    assert after.settled_at is None, (
        f"run 1's straggling RefundPayment marked run 2's order settled while the gateway "
        f"keeps {ledger[pid2]['amount_cents'] - ledger[pid2]['refunded_cents']} cents of "
        f"{pid2}"
    )


async def test_straggling_dispatch_of_the_failed_run_books_nothing_for_its_retry(
    running: Running, acts: StackActivities
) -> None:
    """Run 1 fails while shipping (its bookings cancelled at the carrier), is retried, and
    a cut-off DispatchCarrier attempt of run 1 reaches the reopened row (not terminal, no
    tracking number, no cancel mark): the carrier refuses run 1's closed carrier order."""
    order_id = new_id("straggle_ship")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    await ActivityEnvironment().run(acts.payment.charge_payment, charge_input(order_id, pid))
    await close_and_compensate(acts, order_id, pid, "FAILED", "shipping_failed", "SHIP")
    pid2 = await retry_reopens(running, order_id, "run-2", 2)
    await receive_validate(acts, order_id, pid2, run_id="run-2", retry=2)
    with pytest.raises(ApplicationError) as refused:
        await attempt(2).run(acts.shipping.dispatch_carrier, DispatchInput(ctx_of(order_id), 1))
    assert refused.value.non_retryable
    after = await row(running, order_id)
    assert (after.state, after.tracking_number) == ("VALIDATED", None)
    bookings = await carrier_ledger(running.providers.carrier.engine, [order_id, f"{order_id}#r2"])
    assert not [b for refs in bookings.values() for b in refs if not b["cancelled"]]


async def test_a_temporal_cancel_during_compensation_does_not_cut_the_refund_off(
    running: Running,
) -> None:
    """PAY fails after the gateway charged (answers lost), the order is closed FAILED and
    its RefundPayment retries (the gateway's answers still lost). An operator, seeing it
    hang, cancels the workflow from the Temporal UI/CLI (`temporal workflow cancel`).

    Promise: compensation runs to the end: the charge is refunded and the order settled,
    without waiting for a reconciliation run."""
    order_id = new_id("tcancel")
    pid = await _failed_at_pay_refund_in_flight(running, order_id, "lost_first=4")
    handle = running.client.get_workflow_handle(order_workflow_id(order_id))
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    desc = await handle.describe()  # the run ends once its compensation is done
    ledger = await gateway_of(running, order_id)
    order = await row(running, order_id)
    recorded = {p.payment_id: p.status for p in await payments(running, order_id)}
    assert kept(ledger) == 0 and order.settled_at is not None and recorded == {pid: "refunded"}, (
        f"workflow ended {desc.status.name if desc.status else None}; gateway keeps "
        f"{kept(ledger)} of {sum(c['amount_cents'] for c in ledger)} cents; our payments "
        f"{recorded}; row {order.state}, settled_at={order.settled_at}"
    )


async def test_a_temporal_cancel_while_the_refund_waits_on_the_gateway_keeps_no_money(
    running: Running,
) -> None:
    """The order is paid and shipping (its child on a queue no worker serves), the customer
    cancels; the gateway is slow (the test holds its lock on the payment) so RefundPayment
    waits; the operator then cancels the workflow from Temporal. The gateway recovers.

    Promise: the cancel does not cut the refund off: the order ends CANCELLED, refunded
    and settled, with nothing kept at the gateway."""
    order_id = new_id("tcancel2")
    pid = f"pmt.{order_id}"
    handle = await _paid_and_shipping_nowhere(running, order_id, pid)
    gateway = running.providers.gateway.engine
    async with gateway.connect() as held:
        await held.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:r))"),
            {"r": f"payment:{pid}:{order_id}"},
        )
        await running.service.cancel(order_id, reason="changed my mind")
        await running.client.get_workflow_handle(f"shipping-{order_id}-1").terminate("no carrier")

        async def closed() -> bool | None:
            return (await row(running, order_id)).state == "CANCELLED" or None

        await eventually(closed, what="CANCELLED, refund waiting on the gateway")
        await handle.cancel()
        await _cancel_handled(handle)
        await held.rollback()
    result = await handle.result()
    order = await row(running, order_id)
    assert result["state"] == "CANCELLED" and result["payment_status"] == "refunded"
    assert kept(await gateway_of(running, order_id)) == 0 and order.settled_at is not None


async def _paid_and_shipping_nowhere(
    running: Running, order_id: str, pid: str, **options: Any
) -> Any:
    """An order started straight on Temporal, approved, paid and shipping through a child
    on a queue no worker serves (so it waits there)."""
    inp = dataclasses.replace(
        order_input(running.settings, order_id, pid, ADDRESS, **options),
        shipping_task_queue=f"nowhere-{uuid.uuid4().hex[:6]}",
    )
    handle = await running.client.start_workflow(
        ORDER_WORKFLOW,
        inp,
        id=order_workflow_id(order_id),
        task_queue=running.settings.order_task_queue,
    )
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    await wait_for_step(running, order_id, "SHIP")
    return handle


async def _cancel_handled(handle: Any) -> None:
    """The run has taken the Temporal cancel (a workflow task completed after it)."""

    async def handled() -> bool | None:
        seen = False
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
                seen = True
            elif seen and event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                return True
        return None

    await eventually(handled, what="the run to take the cancel")


async def test_a_temporal_cancel_while_the_close_waits_leaves_no_paid_order_behind(
    running: Running,
) -> None:
    """The order is paid and shipping (its child on a queue no worker serves) when its
    deadline fires; CloseOrder waits for the order row (a dispatch or an address change
    holds it); the operator cancels the workflow from Temporal meanwhile.

    Promise: the order still ends (FAILED, its deadline) with its money refunded: a paid
    order whose workflow is gone would be a charge nobody gives back by itself."""
    order_id = new_id("tcancel3")
    pid = f"pmt.{order_id}"
    handle = await _paid_and_shipping_nowhere(running, order_id, pid, deadline_s=6)
    holder = await _holding_row(running, order_id)
    try:
        # Past the deadline the parent cancels its child, which no worker serves: ended here.
        started = (await handle.describe()).start_time
        await asyncio.sleep(max(0.0, (started - datetime.now(UTC)).total_seconds() + 6.5))
        await running.client.get_workflow_handle(f"shipping-{order_id}-1").terminate("no carrier")
        await eventually(lambda: _waiting_on_lock(running, "FOR UPDATE"), what="CloseOrder waiting")
        await handle.cancel()
        await _cancel_handled(handle)
    finally:
        await holder.rollback()
        await holder.close()
    with pytest.raises(WorkflowFailureError):  # FAILED: deadline_exceeded
        await handle.result()
    order = await row(running, order_id)
    assert (order.state, order.reason) == ("FAILED", "deadline_exceeded")
    assert kept(await gateway_of(running, order_id)) == 0 and order.settled_at is not None


async def test_address_change_after_a_lost_dispatch_answer_ships_where_the_customer_was_told(
    running: Running, acts: StackActivities
) -> None:
    """DispatchCarrier attempt 1 books the parcel at the carrier (to the old address) and
    its answer is lost: its transaction rolls back, the row has no tracking number and the
    row lock is released. The customer's address change then takes the lock and is
    accepted. Attempt 2 asks the carrier under the same key with the new address (refused:
    the key was used with other parameters); the next shipping attempt supersedes the key
    and gets the earlier booking back, to the OLD address.

    Promise: a change either is refused, or the parcel ships to the new address."""
    order_id = new_id("addr")
    pid = f"pmt.{order_id}"
    await receive_validate(acts, order_id, pid)
    await ActivityEnvironment().run(acts.payment.charge_payment, charge_input(order_id, pid))

    lost = ctx_of(order_id, "lost_first=1")
    with pytest.raises(SimulatedLostResponse):
        await attempt(1).run(acts.shipping.dispatch_carrier, DispatchInput(lost, 1))
    assert (await row(running, order_id)).tracking_number is None

    change = AddressChangeInput(
        ctx=ctx_of(order_id), address=Address(**NEW_ADDRESS), requested_by="customer"
    )
    try:
        await ActivityEnvironment().run(acts.changes.apply_address_change, change)
        accepted = True
    except ApplicationError:
        accepted = False

    # The workflow's next tries: the same shipping attempt, then (refused) a new one.
    same_key = "answered"
    try:
        outcome = await attempt(2).run(acts.shipping.dispatch_carrier, DispatchInput(lost, 1))
    except ApplicationError as refused:
        assert refused.non_retryable
        same_key = f"refused ({refused.type})"
        outcome = await attempt(1).run(
            acts.shipping.dispatch_carrier, DispatchInput(ctx_of(order_id), 2)
        )
    bookings = (await carrier_ledger(running.providers.carrier.engine, [order_id]))[order_id]
    live = [b for b in bookings if not b["cancelled"]]
    shipped_to = {
        (json.loads(b["address"]) if isinstance(b["address"], str) else b["address"])["street"]
        for b in live
    }
    if accepted:
        assert outcome.address == Address(**NEW_ADDRESS), (
            f"address change accepted after the carrier booked; the same key's retry was "
            f"{same_key}; parcel ships to {outcome.address.street}, live bookings to "
            f"{shipped_to}; our row says {(await row(running, order_id)).address_json}"
        )
        assert shipped_to == {NEW_ADDRESS["street"]}


async def test_a_retrys_receive_waits_for_the_retrys_uncommitted_claim(
    running: Running, acts: StackActivities
) -> None:
    """The operator's retry claims the order's payment id (unclaimed: its first run failed
    before claiming it) in the transaction that starts the new run, and commits after the
    start; the new run's ReceiveOrder may run first. It waits for that claim instead of
    refusing the order's own payment id as nobody's."""
    order_id = new_id("race")
    pid = f"pmt.{order_id}"
    async with running.sessions() as s, s.begin():
        claim = await claim_payment_id(on_session(s), pid, order_id)
        assert claim.new
        receiving = asyncio.create_task(
            ActivityEnvironment().run(
                acts.intake.receive_order, receive_input(order_id, f"{pid}#r2", retry=2)
            )
        )
        await eventually(lambda: _waiting_on_lock(running, "payment_claims"), what="a wait")
    await receiving  # no PaymentIdInUse: the claim it waited for is its own order's
    async with running.sessions() as s:
        owners = (
            await s.execute(
                text("SELECT payment_id, order_id FROM payment_claims WHERE order_id = :o"),
                {"o": order_id},
            )
        ).all()
    assert sorted(tuple(r) for r in owners) == [(pid, order_id), (f"{pid}#r2", order_id)]
