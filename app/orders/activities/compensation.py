"""CloseOrder and RefundPayment: the terminal state recorded once, then the charge refunded
(or the payment voided) and the bookings of an unshipped order cancelled."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from app.orders.activities.common import (
    call_info,
    event_row,
    money,
    naive_utc,
    now_utc,
    observe_end,
    record_event,
    refusals_are_final,
)
from app.orders.faults import CallInfo
from app.orders.messages import (
    TERMINAL_STATES,
    CloseInput,
    CloseOutcome,
    EventType,
    OrderState,
    PaymentStatus,
    RefundInput,
    Step,
    order_amount_cents,
)
from app.orders.providers.api import (
    CancelShipmentsRequest,
    Carrier,
    PaymentGateway,
    Refund,
    RefundRequest,
    refund_key,
)
from app.platform.db import timed_statements, timed_transaction
from app.platform.tables import Event, Order, Payment

log = logging.getLogger("app.orders.activities")


class CompensationActivities:
    """Closing an order and undoing its charge (and its bookings), once, whatever retries."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        gateway: PaymentGateway,
        carrier: Carrier,
    ) -> None:
        self.sessions = sessions
        self.gateway = gateway
        # An order that closes unshipped cancels its bookings.
        self.carrier = carrier

    @activity.defn(name="CloseOrder")
    async def close_order(self, inp: CloseInput) -> CloseOutcome:
        """Compensate (refund if charged) and record the terminal state, idempotently.

        A dispatch that already committed wins: the order stays COMPLETED.
        """
        info = activity.info()
        order_id = inp.ctx.order_id
        async with timed_transaction(self.sessions, "close_order_read") as s:
            order = await s.get(Order, order_id)
            payment = await s.get(Payment, inp.payment_id)
        if order is not None and order.state == OrderState.COMPLETED:
            status = payment.status if payment else PaymentStatus.NONE
            return CloseOutcome(state=OrderState.COMPLETED, payment_status=status, refunded=False)
        ours = payment is not None and payment.order_id == order_id
        must_refund = ours and payment is not None and payment.status == PaymentStatus.CHARGED
        # Stopped while charging with no charge recorded: the gateway may still have taken
        # the money (the answer was lost). RefundPayment asks it.
        # A free order was never due anything: the gateway is not asked.
        maybe_charged = not ours and inp.step == Step.PAY and _amount_cents(order) > 0
        refund_now = must_refund and not inp.defer_refund
        # Money to give back, or (a free order too) bookings to cancel: closed while
        # shipping, a booking whose answer was lost must not ship. RefundPayment does it,
        # and the order is settled when it is done.
        pending = (must_refund or maybe_charged or inp.step == Step.SHIP) and inp.defer_refund
        if refund_now and payment is not None:
            await self._refund(payment, call_info(inp.ctx, info.attempt))
        async with timed_transaction(self.sessions, "close_order") as s:
            refunded = refund_now and await mark_refunded(s, order_id, inp.payment_id)
            started = order.created_at if order is not None else naive_utc(inp.started_at_iso)
            final, recorded = await _record_end(s, inp, started, settled=not pending)
            status_row = await s.get(Payment, inp.payment_id)
            status = (
                status_row.status
                if status_row is not None and status_row.order_id == order_id
                else PaymentStatus.NONE
            )
        if recorded:  # this attempt recorded the end (a retry that found it closed did not)
            observe_end(final, inp.reason, started)
        log.info(
            "order closed",
            extra={
                "order_id": order_id,
                "workflow_id": info.workflow_id,
                "state": final,
                "reason": inp.reason,
                "refunded": refunded,
            },
        )
        return CloseOutcome(
            state=final,
            payment_status=status,
            refunded=refunded,
            refund_pending=pending and final != OrderState.COMPLETED,
        )

    @activity.defn(name="RefundPayment")
    async def refund_payment(self, inp: RefundInput) -> CloseOutcome:
        """Compensation after the close (see _compensate); the order is settled once it
        is done, whichever way it went."""
        outcome = await self._compensate(inp)
        async with timed_statements(self.sessions, "settle_order") as s:
            await s.execute(
                update(Order)
                .where(
                    Order.id == inp.ctx.order_id,
                    # This run's order: a late attempt of an earlier run settles nothing of
                    # the retry's (each run pays with its own payment id).
                    or_(Order.payment_id == inp.payment_id, Order.payment_id.is_(None)),
                    Order.settled_at.is_(None),
                    Order.state.in_(TERMINAL_STATES),
                )
                .values(settled_at=now_utc())
            )
        return outcome

    async def _compensate(self, inp: RefundInput) -> CloseOutcome:
        """Compensation after the order is closed: refund a kept charge, once.

        For an order closed while shipping (free or not), its carrier bookings are
        cancelled first. With
        no charge recorded, the gateway is asked to cancel or refund: it refunds a charge
        whose answer was lost (recorded here with its refund), or voids the payment so that
        no late charge attempt can take the money. Each finding is recorded as it is made,
        so a retry after a flaky call carries on from there instead of starting over."""
        info = activity.info()
        order_id = inp.ctx.order_id
        call = call_info(inp.ctx, info.attempt)
        async with timed_transaction(self.sessions, "refund_read") as s:
            order = await s.get(Order, order_id)
            payment = await s.get(Payment, inp.payment_id)
            shipments_open = (
                order is not None
                and order.step == Step.SHIP
                and order.tracking_number is None
                and not await _shipments_cancelled(s, order_id, inp.ctx.shipment_ref)
            )
        state = order.state if order is not None else OrderState.FAILED
        if payment is not None and payment.order_id != order_id:
            payment = None  # another order's payment id: never charged for this one
        if state != OrderState.COMPLETED and shipments_open:
            await self._cancel_shipments(order_id, inp.ctx.shipment_ref, call)
        if state == OrderState.COMPLETED or (
            payment is not None and payment.status != PaymentStatus.CHARGED
        ):
            status = payment.status if payment is not None else PaymentStatus.NONE
            return CloseOutcome(state=state, payment_status=status, refunded=False)
        if payment is None:
            found = await self._cancel_or_refund(inp.payment_id, order, call)
            if found is None:  # never charged, and now it cannot be
                return CloseOutcome(state=state, payment_status=PaymentStatus.NONE, refunded=False)
            async with timed_transaction(self.sessions, "refund_payment") as s:
                refunded = await record_lost_charge_refunded(s, order_id, inp.payment_id, found)
        else:
            await self._refund(payment, call)
            async with timed_transaction(self.sessions, "refund_payment") as s:
                refunded = await mark_refunded(s, order_id, inp.payment_id)
        log.info(
            "payment refunded",
            extra={"order_id": order_id, "workflow_id": info.workflow_id, "attempt": info.attempt},
        )
        return CloseOutcome(state=state, payment_status=PaymentStatus.REFUNDED, refunded=refunded)

    async def _cancel_or_refund(
        self, payment_id: str, order: Order | None, call: CallInfo
    ) -> Refund | None:
        """No charge recorded: refund one the gateway took anyway, or void the payment."""
        amount = _amount_cents(order)
        if amount == 0:
            return None  # never received, or free: nothing was ever due, nothing to ask
        order_id = call.order_id
        request = RefundRequest(refund_key(order_id, payment_id), payment_id, order_id, amount)
        with refusals_are_final():
            refund = await self.gateway.cancel_or_refund(request, call)
        if refund is not None:
            log.warning(
                "gateway had a charge we never recorded (its answer was lost); refunded it",
                extra={"order_id": order_id, "charge_id": refund.charge_id},
            )
        return refund

    async def _cancel_shipments(self, order_id: str, ref: str, call: CallInfo) -> None:
        """Closed while shipping: a booking whose answer was lost must not ship a refunded
        order, and no late dispatch may book one."""
        with refusals_are_final():
            cancelled = await self.carrier.cancel(CancelShipmentsRequest(ref), call)
        async with timed_transaction(self.sessions, "cancel_shipments") as s:
            await record_event(
                s,
                order_id,
                EventType.SHIPMENTS_CANCELLED,
                carrier_order=ref,
                bookings=[b.tracking_number for b in cancelled],
            )
        if cancelled:
            log.warning(
                "carrier had a booking we never recorded (its answer was lost); cancelled it",
                extra={"order_id": order_id, "bookings": len(cancelled)},
            )

    async def _refund(self, payment: Payment, call: CallInfo) -> None:
        """Refund a charge we recorded, in full."""
        amount = int((payment.amount or Decimal(0)) * 100)
        pid, order_id = payment.payment_id, payment.order_id
        with refusals_are_final():
            await self.gateway.refund(
                RefundRequest(refund_key(order_id, pid), pid, order_id, amount), call
            )


async def _record_end(
    s: AsyncSession, inp: CloseInput, started: datetime | None, settled: bool
) -> tuple[str, bool]:
    """The order's terminal state under its row lock: (the state it ends in, whether this
    call recorded it). A dispatch that committed first wins, and a close is recorded once.
    `settled`: nothing is left to compensate (else RefundPayment settles it)."""
    info = activity.info()
    now = now_utc()
    order_id = inp.ctx.order_id
    locked = (
        await s.execute(select(Order).where(Order.id == order_id).with_for_update())
    ).scalar_one_or_none()
    if locked is None:
        # The order never reached the database (ReceiveOrder failed, in a run not started
        # by our service): record it now, with what it was started with, so every order
        # that was started can be found and audited.
        await s.execute(
            pg_insert(Order)
            .values(
                id=order_id,
                state=inp.state,
                step=inp.step,
                reason=inp.reason,
                workflow_id=info.workflow_id,
                run_id=info.workflow_run_id,
                payment_id=inp.payment_id,
                address_json=inp.address.as_dict() if inp.address else None,
                amount=money(order_amount_cents(inp.items)) if inp.items else None,
                items_json=[vars(i) for i in inp.items] if inp.items else None,
                deadline_at=naive_utc(inp.deadline_iso),
                closed_at=now,
                settled_at=now if settled else None,
                created_at=started or func.now(),
            )
            .on_conflict_do_nothing(index_elements=[Order.id])
        )
    elif locked.payment_id not in (None, inp.payment_id):
        # A late attempt of an earlier run (each run pays with its own payment id): the row
        # is the retry's now, and that run records its own end.
        return OrderState(inp.state), False
    elif locked.state in TERMINAL_STATES:
        return OrderState(locked.state), False
    else:
        locked.state = inp.state
        locked.reason = inp.reason
        locked.step = inp.step or locked.step
        locked.updated_at = locked.closed_at = now
        if settled:
            locked.settled_at = now
    # Stamped as closed_at says.
    await s.execute(insert(Event), [{**_terminal_event(inp), "ts": now}])
    return inp.state, True


async def record_lost_charge_refunded(
    s: AsyncSession, order_id: str, payment_id: str, refund: Refund
) -> bool:
    """A charge found only at the gateway, recorded with its refund (the money trail)."""
    inserted = (
        await s.execute(
            pg_insert(Payment)
            .values(
                payment_id=payment_id,
                order_id=order_id,
                status=PaymentStatus.REFUNDED,
                amount=money(refund.amount_cents),
                gateway_ref=refund.charge_id,
                refunded_at=now_utc(),
            )
            .on_conflict_do_nothing(index_elements=[Payment.payment_id])
            .returning(Payment.payment_id)
        )
    ).scalar_one_or_none()
    if inserted is None:
        return False
    charged = event_row(
        order_id,
        EventType.PAYMENT_CHARGED,
        payment_id=payment_id,
        amount_cents=refund.amount_cents,
        found_at_gateway=True,
    )
    refunded = event_row(order_id, EventType.PAYMENT_REFUNDED, payment_id=payment_id)
    await s.execute(insert(Event), [charged, refunded])
    return True


async def _shipments_cancelled(s: AsyncSession, order_id: str, ref: str) -> bool:
    """Whether the carrier's shipments under `ref` were cancelled (a retried order has its
    earlier run's cancellation in its events, under another reference)."""
    found = await s.execute(
        select(Event.payload_json).where(
            Event.order_id == order_id, Event.type == EventType.SHIPMENTS_CANCELLED
        )
    )
    return any((payload or {}).get("carrier_order", order_id) == ref for payload in found.scalars())


async def mark_refunded(s: AsyncSession, order_id: str, payment_id: str) -> bool:
    """charged -> refunded with its event; False when another attempt already did it."""
    done = (
        await s.execute(
            update(Payment)
            .where(Payment.payment_id == payment_id, Payment.status == PaymentStatus.CHARGED)
            .values(status=PaymentStatus.REFUNDED, refunded_at=now_utc())
            .returning(Payment.payment_id)
        )
    ).scalar_one_or_none() is not None
    if done:
        await record_event(s, order_id, EventType.PAYMENT_REFUNDED, payment_id=payment_id)
    return done


def _amount_cents(order: Order | None) -> int:
    return int(order.amount * 100) if order is not None and order.amount else 0


def _terminal_event(inp: CloseInput) -> dict[str, Any]:
    """The end state, with the workflow's final attempt counts and errors (the status of
    a closed order is read from here on)."""
    return event_row(
        inp.ctx.order_id,
        inp.state,
        state=inp.state,
        reason=inp.reason,
        attempts=inp.attempts,
        errors=[dataclasses.asdict(e) for e in inp.errors],
    )
