"""Activities: the external calls of each step plus their database effects.

Each step's state change and event are written in the same transaction as its effect, and
every write is idempotent, so a retried or duplicated attempt changes nothing twice.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import (
    Insert,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.activities.common import (
    call_info,
    event_row,
    lock_order,
    money,
    naive_utc,
    now_utc,
    refusals_are_final,
    refuse_if_closed_or_dispatched,
    require_order,
    step_activity,
    with_events,
)
from app.orders.activities.compensation import CompensationActivities
from app.orders.claims import claim_payment_id
from app.orders.faults import OrderIntake
from app.orders.identity import first_reference, retry_reference
from app.orders.messages import (
    ERR_INVALID_ORDER,
    ERR_ORDER_CLOSED,
    ERR_PAYMENT_CONFLICT,
    TERMINAL_STATES,
    AddressChangeInput,
    CancelMarkInput,
    ChargeInput,
    EventType,
    OrderState,
    PaymentStatus,
    ReceiveInput,
    Step,
    StepOutcome,
    ValidateInput,
    order_amount_cents,
)
from app.orders.providers.api import (
    Carrier,
    Charge,
    ChargeRequest,
    PaymentGateway,
    charge_key,
)
from app.orders.rules import business_problems
from app.orders.validation import address_problems, order_id_problem, payment_id_problem
from app.platform.db import timed_statements, timed_transaction
from app.platform.tables import Event, Order, Payment, PaymentClaim

log = logging.getLogger("app.orders.activities")


class OrderActivities(CompensationActivities):
    """Activities of the orders queue (the compensation ones are inherited)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        intake: OrderIntake,
        gateway: PaymentGateway,
        carrier: Carrier,
    ) -> None:
        super().__init__(sessions, gateway, carrier)
        self.intake = intake

    @activity.defn(name="ReceiveOrder")
    @step_activity(Step.RECEIVE)
    async def receive_order(self, inp: ReceiveInput) -> StepOutcome:
        info = activity.info()
        await self.intake.receive_order(call_info(inp.ctx, info.attempt))
        _refuse_foreign_ids(inp)
        received = (
            EventType.RECEIVED,
            {
                "state": OrderState.RECEIVED,
                "attempt": info.attempt,
                "workflow_id": inp.workflow_id,
                "run_id": inp.run_id,
            },
        )
        async with timed_statements(self.sessions, "receive_order") as s:
            if inp.ctx.retry > 1:
                # A retry's reference is made from the order's own first payment id.
                await _refuse_unless_owner(s, first_reference(inp.payment_id), inp.ctx.order_id)
            await _claim_or_refuse(s, inp.payment_id, inp.ctx.order_id)
            if (await s.execute(with_events(_received(inp), received))).scalar_one_or_none():
                return StepOutcome(attempt=info.attempt)
            # Written by an earlier attempt of this run, or the id is taken.
            existing = await s.get(Order, inp.ctx.order_id)
            if existing is None or existing.run_id != inp.run_id:
                raise ApplicationError(
                    f"order id {inp.ctx.order_id} already belongs to another workflow run",
                    type=ERR_INVALID_ORDER,
                    non_retryable=True,
                )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="ValidateOrder")
    @step_activity(Step.VALIDATE)
    async def validate_order(self, inp: ValidateInput) -> StepOutcome:
        info = activity.info()
        await self.intake.validate_order(call_info(inp.ctx, info.attempt))
        problems = business_problems(inp)
        if problems:
            # Recorded with the failure; the workflow closes the order as FAILED.
            async with timed_transaction(self.sessions, "validate_order") as s:
                await lock_order(s, inp.ctx.order_id)
                await s.execute(
                    insert(Event).values(
                        **event_row(
                            inp.ctx.order_id, EventType.VALIDATION_FAILED, problems=problems
                        )
                    )
                )
        else:
            validated = (
                update(Order)
                .where(Order.id == inp.ctx.order_id, Order.state == OrderState.RECEIVED)
                .values(state=OrderState.VALIDATED, step=Step.MANUAL_REVIEW, updated_at=now_utc())
            )
            event = (EventType.VALIDATED, {"state": OrderState.VALIDATED, "attempt": info.attempt})
            async with timed_statements(self.sessions, "validate_order") as s:
                if (await s.execute(with_events(validated, event))).scalar_one_or_none() is None:
                    # Validated by an earlier attempt, or not there at all.
                    await require_order(s, inp.ctx.order_id)
        if problems:
            raise ApplicationError(
                "order is invalid: " + "; ".join(f"{k} {v}" for k, v in problems.items()),
                problems,
                type=ERR_INVALID_ORDER,
                non_retryable=True,
            )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="ChargePayment")
    @step_activity(Step.PAY)
    async def charge_payment(self, inp: ChargeInput) -> StepOutcome:
        """Idempotent on payment_id: however often it runs, at most one charge exists.

        The gateway's idempotency key names the order, its payment and the run's retry
        number, so an attempt after a lost answer gets the first charge back instead of a
        second one, and no other order's request can ever share it. A free order (total 0)
        is not charged: its payment is recorded as not due, without a gateway call."""
        info = activity.info()
        order_id = inp.ctx.order_id
        # Never ask the gateway about another order's payment id (ReceiveOrder claimed it).
        async with timed_statements(self.sessions, "charge_claim") as s:
            await _refuse_unless_owner(s, inp.payment_id, order_id)
        if inp.amount_cents == 0:
            charge = Charge(charge_id="", payment_id=inp.payment_id, amount_cents=0)
        else:
            request = ChargeRequest(
                key=charge_key(order_id, inp.payment_id),
                payment_id=inp.payment_id,
                order_id=order_id,
                amount_cents=inp.amount_cents,
            )
            # The key was sent before with another amount: refused.
            with refusals_are_final(conflict=ERR_PAYMENT_CONFLICT):
                charge = await self.gateway.charge(request, call_info(inp.ctx, info.attempt))
        async with timed_transaction(self.sessions, "charge_payment") as s:
            # A charge that happened is recorded even if a cancel raced it: the workflow
            # then refunds it. Once the order is closed, though, compensation owns the
            # money (it asks the gateway itself): a straggling attempt records nothing.
            locked = await lock_order(s, order_id)
            if locked.state in TERMINAL_STATES:
                raise ApplicationError(
                    "order is already closed", type=ERR_ORDER_CLOSED, non_retryable=True
                )
            payment = (
                pg_insert(Payment)
                .values(
                    payment_id=inp.payment_id,
                    order_id=order_id,
                    status=PaymentStatus.CHARGED if charge.amount_cents else PaymentStatus.NOT_DUE,
                    amount=money(charge.amount_cents),
                    gateway_ref=charge.charge_id or None,
                )
                .on_conflict_do_nothing(index_elements=[Payment.payment_id])
                .returning(Payment.payment_id)
                .cte("charged")
            )
            # The order is marked paid, with its events, only when this attempt recorded
            # the charge (one statement).
            paid = (
                update(Order)
                .where(Order.id == order_id, exists(select(payment.c.payment_id)))
                .values(state=OrderState.PAID, step=Step.PAY, updated_at=now_utc())
            )
            charged = (
                await s.execute(
                    with_events(
                        paid,
                        (
                            EventType.APPROVED,
                            {
                                "by": inp.approved_by,
                                "at": inp.approved_at_iso,
                                "note": inp.approval_note,
                            },
                        ),
                        (
                            EventType.PAYMENT_CHARGED,
                            {
                                "state": OrderState.PAID,
                                "payment_id": inp.payment_id,
                                "amount_cents": inp.amount_cents,
                                "attempt": info.attempt,
                            },
                        ),
                    )
                )
            ).scalar_one_or_none()
            if charged is None:
                existing = await s.get(Payment, inp.payment_id)
                # Only this run's own charge, still taken, is "already recorded": a row of
                # another order, or one refunded since (a replayed charge that no longer
                # holds any money), must never ship the order.
                if (
                    existing is None
                    or existing.order_id != order_id
                    or existing.status == PaymentStatus.REFUNDED
                    or existing.gateway_ref != (charge.charge_id or None)
                ):
                    raise ApplicationError(
                        f"payment id {inp.payment_id} already belongs to another order "
                        "or an earlier charge",
                        type=ERR_PAYMENT_CONFLICT,
                        non_retryable=True,
                    )
                log.info(
                    "charge already recorded; not charging again",
                    extra={"order_id": order_id, "attempt": info.attempt},
                )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="ApplyAddressChange")
    async def apply_address_change(self, inp: AddressChangeInput) -> None:
        """Accept a new address unless the carrier already has the parcel."""
        problems = address_problems(inp.address.as_dict())
        if problems:
            raise ApplicationError("invalid address", problems, type=ERR_INVALID_ORDER)
        async with timed_transaction(self.sessions, "apply_address_change") as s:
            order = await lock_order(s, inp.ctx.order_id)
            refuse_if_closed_or_dispatched(order)
            order.address_json = inp.address.as_dict()
            order.updated_at = now_utc()
            await s.execute(
                insert(Event).values(
                    **event_row(
                        inp.ctx.order_id,
                        EventType.ADDRESS_UPDATED,
                        address=inp.address.as_dict(),
                        by=inp.requested_by,
                    )
                )
            )

    @activity.defn(name="MarkCancelRequested")
    async def mark_cancel_requested(self, inp: CancelMarkInput) -> None:
        """Claim the order for cancellation so a later dispatch refuses to ship it."""
        async with timed_transaction(self.sessions, "mark_cancel_requested") as s:
            order = await lock_order(s, inp.ctx.order_id)
            if order.cancel_requested:
                return
            refuse_if_closed_or_dispatched(order)
            order.cancel_requested = True
            order.updated_at = now_utc()
            await s.execute(
                insert(Event).values(
                    **event_row(
                        inp.ctx.order_id,
                        EventType.CANCEL_REQUESTED,
                        reason=inp.reason,
                        by=inp.requested_by,
                    )
                )
            )


def _received(inp: ReceiveInput) -> Insert:
    """The order's row as received: new, or the PENDING row this run's start wrote (the
    service records an order as it starts it, so it is listed at once) or its retry
    reopened (what the failed run did stays in events). A row of another run, or one
    past PENDING (an earlier attempt of this run received it), is left alone."""
    received = {
        "state": OrderState.RECEIVED,
        "step": Step.RECEIVE,
        "workflow_id": inp.workflow_id,
        "payment_id": inp.payment_id,
        "address_json": inp.address.as_dict(),
        "amount": money(order_amount_cents(inp.items)),
        "items_json": [vars(i) for i in inp.items],
        "deadline_at": datetime.fromisoformat(inp.deadline_iso).replace(tzinfo=None),
    }
    return (
        pg_insert(Order)
        .values(
            id=inp.ctx.order_id,
            run_id=inp.run_id,
            # now() for runs started before the workflow sent its start time.
            created_at=naive_utc(inp.started_at_iso) or func.now(),
            **received,
        )
        .on_conflict_do_update(
            index_elements=[Order.id],
            set_={
                **received,
                "reason": None,
                "closed_at": None,
                "settled_at": None,
                "cancel_requested": False,
                "tracking_number": None,
                "updated_at": now_utc(),
            },
            where=(Order.run_id == inp.run_id) & (Order.state == OrderState.PENDING),
        )
    )


def _refuse_foreign_ids(inp: ReceiveInput) -> None:
    """The service checks ids before it starts a run; a run started another way (the
    Temporal CLI) is held to the same rules here: client ids, and the references of a
    retry (payment, carrier order) only as this run's retry number makes them, only for
    a run that takes over a failed one."""
    pid, order_id, retry = inp.payment_id, inp.ctx.order_id, inp.ctx.retry
    first = first_reference(pid)
    problem = order_id_problem(order_id) or payment_id_problem(first)
    if problem is None and (
        pid != retry_reference(first, retry)
        or inp.ctx.carrier_order not in (None, retry_reference(order_id, retry))
        or (retry > 1 and inp.retry_of_run_id is None)
    ):
        problem = "must be the client's ids, or the references of this run's retry"
    if problem:
        raise ApplicationError(
            f"order or payment id {problem}", type=ERR_INVALID_ORDER, non_retryable=True
        )


async def _refuse_unless_owner(s: AsyncSession, payment_id: str, order_id: str) -> None:
    owner = (
        await s.execute(select(PaymentClaim.order_id).where(PaymentClaim.payment_id == payment_id))
    ).scalar_one_or_none()
    if owner != order_id:
        raise ApplicationError(
            f"payment id {payment_id} is not this order's",
            type=ERR_PAYMENT_CONFLICT,
            non_retryable=True,
        )


async def _claim_or_refuse(s: AsyncSession, payment_id: str, order_id: str) -> None:
    if (await claim_payment_id(s, payment_id, order_id)).owner != order_id:
        raise ApplicationError(
            f"payment id {payment_id} already belongs to another order",
            type=ERR_PAYMENT_CONFLICT,
            non_retryable=True,
        )
