"""The step activities against the real database: each write lands once, whatever retries.

Activities run in Temporal's ActivityEnvironment (no workflow), so an attempt can be
repeated on purpose, as a retry after a lost completion would.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from app.orders.activities import (
    CompensationActivities,
    IntakeActivities,
)
from app.orders.faults import SimulatedLostResponse
from app.orders.messages import (
    DEFAULT_ITEMS,
    ActivityContext,
    Address,
    ChargeInput,
    CloseInput,
    DispatchInput,
    LineItem,
    PrepareInput,
    ReceiveInput,
    RefundInput,
    ValidateInput,
    order_amount_cents,
)
from app.orders.providers.api import charge_key
from app.orders.providers.carrier import read_ledger as carrier_ledger
from app.orders.providers.gateway import read_ledger as gateway_ledger
from app.platform.tables import Order, Payment
from tests.helpers import (
    ADDRESS,
    HAPPY_PATH_EVENTS,
    Running,
    StackActivities,
    order_events,
    payments,
)

pytestmark = pytest.mark.integration

SHIP_TO = Address(**ADDRESS)
ITEMS = list(DEFAULT_ITEMS)


@pytest.fixture
def acts(running: Running) -> StackActivities:
    return StackActivities.of(running)


def _receive(
    order_id: str, run_id: str = "run-1", items: list[LineItem] | None = None
) -> ReceiveInput:
    now = datetime.now(UTC)
    return ReceiveInput(
        ctx=ActivityContext(order_id=order_id, fault_profile="off"),
        workflow_id=f"order-{order_id}",
        run_id=run_id,
        payment_id=f"pmt-{order_id}",
        address=SHIP_TO,
        items=ITEMS if items is None else items,
        deadline_iso=(now + timedelta(seconds=60)).isoformat(),
        started_at_iso=now.isoformat(),
    )


async def _row(running: Running, order_id: str) -> Any:
    async with running.sessions() as s:
        return await s.get(Order, order_id)


async def _refused(env: ActivityEnvironment, fn: Any, arg: Any) -> ApplicationError:
    """The error the activity refuses `arg` with, for good (not retryable)."""
    with pytest.raises(ApplicationError) as err:
        await env.run(fn, arg)
    assert err.value.non_retryable
    return err.value


async def test_every_step_recorded_once_when_each_attempt_runs_twice(
    running: Running, acts: StackActivities
) -> None:
    env = ActivityEnvironment()
    order_id = f"acts-{uuid.uuid4().hex[:10]}"
    ctx = ActivityContext(order_id=order_id, fault_profile="off")
    steps: list[tuple[Any, Any]] = [
        (acts.intake.receive_order, _receive(order_id)),
        (acts.intake.validate_order, ValidateInput(ctx=ctx, address=SHIP_TO, items=ITEMS)),
        (
            acts.payment.charge_payment,
            ChargeInput(
                ctx=ctx,
                payment_id=f"pmt-{order_id}",
                amount_cents=order_amount_cents(ITEMS),
                approved_by="alice",
                approved_at_iso=datetime.now(UTC).isoformat(),
            ),
        ),
        (acts.shipping.prepare_package, PrepareInput(ctx=ctx, shipping_attempt=1)),
        (acts.shipping.dispatch_carrier, DispatchInput(ctx=ctx, shipping_attempt=1)),
    ]
    outcomes = []
    for fn, arg in steps:
        outcomes.append(await env.run(fn, arg))
        if fn != acts.shipping.prepare_package:  # preparing twice is two packing slips
            assert await env.run(fn, arg) == outcomes[-1]

    assert await order_events(running, order_id) == HAPPY_PATH_EVENTS
    order = await _row(running, order_id)
    assert (order.state, order.step, order.run_id) == ("COMPLETED", "SHIP", "run-1")
    assert order.tracking_number == outcomes[-1].tracking_number and order.closed_at
    async with running.sessions() as s:
        payments = (await s.execute(select(Payment).where(Payment.order_id == order_id))).all()
    assert len(payments) == 1 and payments[0][0].status == "charged"


async def test_order_id_of_another_run_is_refused(running: Running, acts: StackActivities) -> None:
    env = ActivityEnvironment()
    order_id = f"acts-{uuid.uuid4().hex[:10]}"
    await env.run(acts.intake.receive_order, _receive(order_id, run_id="run-1"))
    err = await _refused(env, acts.intake.receive_order, _receive(order_id, run_id="run-2"))
    assert "another workflow run" in str(err)
    assert (await _row(running, order_id)).run_id == "run-1"
    assert await order_events(running, order_id) == ["RECEIVED", "STEP_ATTEMPT_FAILED"]


async def test_validating_an_unknown_order_is_retryable(acts: StackActivities) -> None:
    ctx = ActivityContext(order_id=f"acts-{uuid.uuid4().hex[:10]}", fault_profile="off")
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(
            acts.intake.validate_order, ValidateInput(ctx=ctx, address=SHIP_TO, items=ITEMS)
        )
    assert err.value.type == "OrderNotFound" and not err.value.non_retryable


# --- the boundary: lost answers, audited on the providers' own ledgers -------------------


def _attempt(attempt: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return env


async def _answers_lost(attempts: int, fn: Any, arg: Any) -> None:
    """Attempts 1 .. attempts take effect and lose their answer."""
    for n in range(1, attempts + 1):
        with pytest.raises(SimulatedLostResponse):
            await _attempt(n).run(fn, arg)


async def _answered_after_lost(attempts: int, fn: Any, arg: Any) -> Any:
    """Attempts 1 .. attempts-1 take effect and lose their answer; the last is answered."""
    await _answers_lost(attempts - 1, fn, arg)
    return await _attempt(attempts).run(fn, arg)


def _charge(order_id: str, profile: str, payment_id: str | None = None) -> ChargeInput:
    return ChargeInput(
        ctx=ActivityContext(order_id=order_id, fault_profile=profile),
        payment_id=payment_id or f"pmt-{order_id}",
        amount_cents=order_amount_cents(ITEMS),
        approved_by="alice",
        approved_at_iso=datetime.now(UTC).isoformat(),
    )


async def _received(intake: IntakeActivities, items: list[LineItem] | None = None) -> str:
    """A new order, received (its row and RECEIVED event written)."""
    order_id = f"acts-{uuid.uuid4().hex[:10]}"
    await ActivityEnvironment().run(intake.receive_order, _receive(order_id, items=items))
    return order_id


async def _gateway(running: Running, order_id: str) -> list[dict[str, Any]]:
    return (await gateway_ledger(running.providers.gateway.engine, [order_id]))[order_id]


def _refund(order_id: str, profile: str = "off") -> RefundInput:
    ctx = ActivityContext(order_id=order_id, fault_profile=profile)
    return RefundInput(ctx=ctx, payment_id=f"pmt-{order_id}")


def _close(order_id: str, step: str = "PAY") -> CloseInput:
    return CloseInput(
        ctx=ActivityContext(order_id=order_id, fault_profile="off"),
        payment_id=f"pmt-{order_id}",
        state="CANCELLED",
        reason="customer_request",
        step=step,
        defer_refund=True,
    )


async def _close_and_refund(
    compensation: CompensationActivities,
    order_id: str,
    step: str = "PAY",
    free: bool = False,
) -> None:
    """Close the order (its refund deferred, as the workflow does), then refund it."""
    closed = await ActivityEnvironment().run(compensation.close_order, _close(order_id, step=step))
    assert closed.refund_pending  # stopped while charging or shipping: the gateway is asked
    refund = _refund(order_id, "off")
    outcome = await ActivityEnvironment().run(compensation.refund_payment, refund)
    assert outcome.refunded != free and outcome.payment_status == (
        "not_due" if free else "refunded"
    )


@pytest.mark.parametrize("attempts", [2, 3])
async def test_lost_answers_charge_refund_and_dispatch_once_per_key(
    running: Running, acts: StackActivities, attempts: int
) -> None:
    order_id = await _received(acts.intake)
    lost = f"lost_first={attempts - 1}"  # every attempt but the last takes effect, then fails

    await _answered_after_lost(attempts, acts.payment.charge_payment, _charge(order_id, lost))
    charges = await _gateway(running, order_id)
    assert len(charges) == 1 and charges[0]["idempotency_key"] == charge_key(
        order_id, f"pmt-{order_id}"
    )
    assert [p.status for p in await payments(running, order_id)] == ["charged"]

    closed = await ActivityEnvironment().run(acts.compensation.close_order, _close(order_id))
    assert closed.refund_pending
    refund = _refund(order_id, lost)
    assert (await _answered_after_lost(attempts, acts.compensation.refund_payment, refund)).refunded
    (charge,) = await _gateway(running, order_id)
    assert len(charge["refunds"]) == 1 and charge["refunded_cents"] == charge["amount_cents"]
    assert [p.status for p in await payments(running, order_id)] == ["refunded"]

    shipped = await _received(acts.intake)
    ctx = ActivityContext(order_id=shipped, fault_profile=lost)
    dispatch = DispatchInput(ctx=ctx, shipping_attempt=1)
    outcome = await _answered_after_lost(attempts, acts.shipping.dispatch_carrier, dispatch)
    (booking,) = (await carrier_ledger(running.providers.carrier.engine, [shipped]))[shipped]
    assert booking["tracking_number"] == outcome.tracking_number
    assert (await _row(running, shipped)).tracking_number == outcome.tracking_number


async def test_charge_whose_answer_never_came_is_found_and_refunded(
    running: Running, acts: StackActivities
) -> None:
    order_id = await _received(acts.intake)
    # PAY fails three times: the gateway charged, we never heard.
    await _answers_lost(3, acts.payment.charge_payment, _charge(order_id, "lost_first=3"))
    assert await payments(running, order_id) == []

    await _close_and_refund(acts.compensation, order_id)
    (charge,) = await _gateway(running, order_id)
    assert charge["refunded_cents"] == charge["amount_cents"]
    (recorded,) = await payments(running, order_id)
    assert (recorded.status, recorded.gateway_ref) == ("refunded", charge["charge_id"])
    events = await order_events(running, order_id)
    assert events[-2:] == ["PAYMENT_CHARGED", "PAYMENT_REFUNDED"]

    # A straggling attempt of the charge gets the first charge back (no money moves) and
    # records nothing: the order is closed and its compensation is done.
    err = await _refused(_attempt(4), acts.payment.charge_payment, _charge(order_id, "off"))
    assert err.type == "OrderClosed"
    assert len(await _gateway(running, order_id)) == 1
    assert [p.status for p in await payments(running, order_id)] == ["refunded"]


async def test_voided_payment_refuses_a_late_charge(
    running: Running, acts: StackActivities
) -> None:
    order_id = await _received(acts.intake)
    await ActivityEnvironment().run(acts.compensation.close_order, _close(order_id))
    refund = _refund(order_id, "off")
    outcome = await ActivityEnvironment().run(acts.compensation.refund_payment, refund)
    assert not outcome.refunded and outcome.payment_status == "none"
    err = await _refused(
        ActivityEnvironment(), acts.payment.charge_payment, _charge(order_id, "off")
    )
    assert err.type == "PaymentVoided"
    assert await _gateway(running, order_id) == []


async def test_a_charge_refunded_since_never_counts_as_this_runs_payment(
    running: Running, acts: StackActivities
) -> None:
    """The gateway replays a charge that was refunded since (same key): it holds no money,
    so the order must not go on to ship as paid."""
    order_id = await _received(acts.intake)
    await ActivityEnvironment().run(acts.payment.charge_payment, _charge(order_id, "off"))
    async with running.sessions() as s, s.begin():
        await s.execute(
            update(Payment).where(Payment.order_id == order_id).values(status="refunded")
        )
    err = await _refused(
        ActivityEnvironment(), acts.payment.charge_payment, _charge(order_id, "off")
    )
    assert err.type == "PaymentIdInUse"
    assert [p.status for p in await payments(running, order_id)] == ["refunded"]


async def test_payment_key_reused_with_other_parameters_is_refused(
    running: Running, acts: StackActivities
) -> None:
    first, second = await _received(acts.intake), await _received(acts.intake)
    await ActivityEnvironment().run(acts.payment.charge_payment, _charge(first, "off"))
    # Another order under the same payment id, and the same order with another amount.
    other_order = _charge(second, "off", payment_id=f"pmt-{first}")
    other_amount = dataclasses.replace(_charge(first, "off"), amount_cents=1)
    for request in (other_order, other_amount):
        err = await _refused(ActivityEnvironment(), acts.payment.charge_payment, request)
        assert err.type == "PaymentIdInUse"
    assert len(await _gateway(running, first)) == 1 and await _gateway(running, second) == []
    assert [p.status for p in await payments(running, first)] == ["charged"]


@pytest.mark.parametrize("free", [False, True])
async def test_booking_whose_answer_never_came_is_cancelled_when_the_order_closes(
    running: Running, acts: StackActivities, free: bool
) -> None:
    """Paid or free (nothing to refund), an order closed while shipping cancels its
    bookings: a parcel booked for it would ship a cancelled order."""
    items = [LineItem(sku="FREE-1", qty=1, unit_price_cents=0)] if free else None
    order_id = await _received(acts.intake, items)
    charge = _charge(order_id, "off")
    if free:
        charge = dataclasses.replace(charge, amount_cents=0)
    await ActivityEnvironment().run(acts.payment.charge_payment, charge)
    ctx = ActivityContext(order_id=order_id, fault_profile="lost_first=3")
    # DISPATCH fails three times: the carrier booked, we never heard.
    await _answers_lost(
        3, acts.shipping.dispatch_carrier, DispatchInput(ctx=ctx, shipping_attempt=1)
    )
    assert (await _row(running, order_id)).tracking_number is None

    await _close_and_refund(acts.compensation, order_id, step="SHIP", free=free)
    (booking,) = (await carrier_ledger(running.providers.carrier.engine, [order_id]))[order_id]
    assert booking["cancelled"]
    # A later shipping attempt books nothing: the order is closed, and the carrier agrees.
    later = DispatchInput(ctx=dataclasses.replace(ctx, fault_profile="off"), shipping_attempt=2)
    await _refused(ActivityEnvironment(), acts.shipping.dispatch_carrier, later)
    assert len((await carrier_ledger(running.providers.carrier.engine, [order_id]))[order_id]) == 1
