"""Activities: the external calls of each step plus their database effects.

Each step's state change and event are written in the same transaction as its effect, and
every write is idempotent, so a retried or duplicated attempt changes nothing twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    Insert,
    Select,
    Update,
    exists,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.faults import CallInfo, OrderIntake
from app.orders.models import (
    ERR_INVALID_ORDER,
    ERR_ORDER_CANCELLED,
    ERR_ORDER_CLOSED,
    ERR_ORDER_DISPATCHED,
    ERR_PAYMENT_CONFLICT,
    TERMINAL_STATES,
    Address,
    AddressChangeInput,
    CancelMarkInput,
    ChargeInput,
    CloseInput,
    CloseOutcome,
    DispatchInput,
    DispatchOutcome,
    OrderState,
    PaymentStatus,
    PrepareInput,
    ReceiveInput,
    RefundInput,
    StepOutcome,
    ValidateInput,
    order_amount_cents,
)
from app.orders.providers.api import (
    CancelShipmentsRequest,
    Carrier,
    ChargeNotFound,
    ChargeRequest,
    DispatchRequest,
    IdempotencyConflict,
    PaymentGateway,
    PrepareRequest,
    ProviderRefusal,
    Refund,
    RefundRequest,
    charge_key,
    dispatch_key,
    prepare_key,
    refund_key,
)
from app.orders.validation import address_problems
from app.platform import metrics
from app.platform.db import Event, JsonType, Order, Payment, timed_statements, timed_transaction

log = logging.getLogger("app.orders.activities")

# Business rules checked by ValidateOrder.
MAX_ORDER_CENTS = 1_000_000
MAX_QTY = 100
SHIPPABLE_COUNTRIES = frozenset({"US", "CA", "GB", "DE", "FR", "NL", "ES", "IT", "AU", "JP"})

P = ParamSpec("P")
R = TypeVar("R")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive_utc(iso: str | None) -> datetime | None:
    """An ISO timestamp as the naive UTC the TIMESTAMP columns hold."""
    return datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None) if iso else None


def _cents(amount_cents: int) -> Decimal:
    return (Decimal(amount_cents) / 100).quantize(Decimal("0.01"))


def _event(order_id: str, type_: str, **payload: Any) -> dict[str, Any]:
    return {"order_id": order_id, "type": type_, "payload_json": payload}


def _with_events(write: Insert | Update, *events: tuple[str, dict[str, Any]]) -> Select[Any]:
    """One statement: `write` on an order row, plus the events for the row it wrote.

    Selects the order id when `write` wrote the row, nothing when it did not (then no event
    is recorded either). A statement's data-modifying CTEs commit together or not at all,
    so the step's state change and its events need no transaction around them: one round
    trip to PostgreSQL instead of four (these writes are the hottest path of an order)."""
    written = write.returning(Order.id).cte("written")
    rows = [
        select(written.c.id, literal(type_), literal(payload, JsonType))
        for type_, payload in events
    ]
    recorded = (
        insert(Event)
        .from_select(["order_id", "type", "payload_json"], union_all(*rows))
        .cte("recorded")
    )
    return select(written.c.id).add_cte(recorded)


def step_activity(step: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Counts attempts and records each failed attempt (timeouts included) as an event.

    The failure record is best effort and in its own transaction: it must never turn a
    retryable failure into a different one.
    """

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            info = activity.info()
            self = args[0]
            assert isinstance(self, _ActivityBase)
            order_id = getattr(getattr(args[1], "ctx", None), "order_id", "?")
            name = info.activity_type
            where = {"workflow_id": info.workflow_id, "activity": name, "step": step}
            metrics.ACTIVITY_ATTEMPTS.labels(activity=name).inc()
            if info.attempt > 1:
                metrics.ACTIVITY_RETRIES.labels(activity=name).inc()
                log.info(
                    "retrying activity",
                    extra={"order_id": order_id, **where, "attempt": info.attempt},
                )
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as err:
                kind = _failure_kind(err)
                metrics.STEP_ERRORS.labels(step=step, error=kind).inc()
                log.warning(
                    "activity attempt failed",
                    extra={
                        "order_id": order_id,
                        **where,
                        "attempt": info.attempt,
                        "error_type": kind,
                        "error": str(err) or kind,
                    },
                )
                await asyncio.shield(
                    self._record_attempt_failure(order_id, step, info.attempt, kind, err)
                )
                raise
            metrics.STEP_DURATION.labels(step=step).observe(time.perf_counter() - started)
            return result

        return run

    return wrap


def _failure_kind(err: BaseException) -> str:
    if isinstance(err, asyncio.CancelledError):
        details = activity.cancellation_details()
        return "timeout" if details is None or details.timed_out else "cancelled"
    if isinstance(err, ApplicationError) and err.type:
        return err.type
    return type(err).__name__


class _ActivityBase:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def _record_attempt_failure(
        self, order_id: str, step: str, attempt: int, kind: str, err: BaseException
    ) -> None:
        message = "activity timed out" if kind == "timeout" else (str(err) or kind)[:500]
        try:
            async with timed_transaction(self.sessions, "record_attempt_failure") as s:
                await s.execute(
                    insert(Event).values(
                        **_event(
                            order_id,
                            "STEP_ATTEMPT_FAILED",
                            step=step,
                            attempt=attempt,
                            kind=kind,
                            message=message,
                        )
                    )
                )
        except Exception:  # the database may be the thing that failed
            log.warning("could not record attempt failure", extra={"order_id": order_id})


async def _lock_order(session: AsyncSession, order_id: str) -> Order:
    order = (
        await session.execute(select(Order).where(Order.id == order_id).with_for_update())
    ).scalar_one_or_none()
    if order is None:
        # Retryable: the row may not be visible yet if ReceiveOrder is still committing.
        raise ApplicationError(f"order {order_id} not found in database", type="OrderNotFound")
    return order


async def _require_order(session: AsyncSession, order_id: str) -> None:
    if (await session.execute(select(Order.id).where(Order.id == order_id))).first() is None:
        raise ApplicationError(f"order {order_id} not found in database", type="OrderNotFound")


@contextmanager
def _refusals_are_final(conflict: str | None = None) -> Iterator[None]:
    """A provider's refusal becomes a non-retryable failure: the same request would get
    the same answer. `conflict` names an idempotency conflict in our terms."""
    try:
        yield
    except ProviderRefusal as err:
        type_ = conflict if conflict and isinstance(err, IdempotencyConflict) else err.code
        if isinstance(err, ChargeNotFound):
            # Our ledger says charged, the gateway's does not: never papered over.
            log.error("refund refused: no such charge at the gateway")
        raise ApplicationError(str(err), type=type_, non_retryable=True) from None


def _call(inp_ctx: Any, attempt: int | str) -> CallInfo:
    return CallInfo(inp_ctx.order_id, attempt, inp_ctx.fault_profile)


class OrderActivities(_ActivityBase):
    """Activities of the orders queue."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        intake: OrderIntake,
        gateway: PaymentGateway,
        carrier: Carrier,
    ) -> None:
        super().__init__(sessions)
        self.intake = intake
        self.gateway = gateway
        # Compensation only: an order that closes unshipped cancels its bookings.
        self.carrier = carrier

    @activity.defn(name="ReceiveOrder")
    @step_activity("RECEIVE")
    async def receive_order(self, inp: ReceiveInput) -> StepOutcome:
        info = activity.info()
        await self.intake.receive_order(_call(inp.ctx, info.attempt))
        new_order = (
            pg_insert(Order)
            .values(
                id=inp.ctx.order_id,
                state=OrderState.RECEIVED,
                step="RECEIVE",
                address_json=inp.address.as_dict(),
                workflow_id=inp.workflow_id,
                run_id=inp.run_id,
                payment_id=inp.payment_id,
                amount=_cents(order_amount_cents(inp.items)),
                items_json=[vars(i) for i in inp.items],
                deadline_at=datetime.fromisoformat(inp.deadline_iso).replace(tzinfo=None),
                # now() for runs started before the workflow sent its start time.
                created_at=_naive_utc(inp.started_at_iso) or func.now(),
            )
            .on_conflict_do_nothing(index_elements=[Order.id])
        )
        received = (
            "RECEIVED",
            {
                "state": OrderState.RECEIVED,
                "attempt": info.attempt,
                "workflow_id": inp.workflow_id,
                "run_id": inp.run_id,
            },
        )
        async with timed_statements(self.sessions, "receive_order") as s:
            inserted = (await s.execute(_with_events(new_order, received))).scalar_one_or_none()
            if inserted is None:  # a retry, or the id is taken
                existing = await s.get(Order, inp.ctx.order_id)
                if existing is not None and existing.run_id != inp.run_id:
                    raise ApplicationError(
                        f"order id {inp.ctx.order_id} already belongs to another workflow run",
                        type=ERR_INVALID_ORDER,
                        non_retryable=True,
                    )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="ValidateOrder")
    @step_activity("VALIDATE")
    async def validate_order(self, inp: ValidateInput) -> StepOutcome:
        info = activity.info()
        await self.intake.validate_order(_call(inp.ctx, info.attempt))
        problems = _business_problems(inp)
        if problems:
            # Recorded with the failure; the workflow closes the order as FAILED.
            async with timed_transaction(self.sessions, "validate_order") as s:
                await _lock_order(s, inp.ctx.order_id)
                await s.execute(
                    insert(Event).values(
                        **_event(inp.ctx.order_id, "VALIDATION_FAILED", problems=problems)
                    )
                )
        else:
            validated = (
                update(Order)
                .where(Order.id == inp.ctx.order_id, Order.state == OrderState.RECEIVED)
                .values(state=OrderState.VALIDATED, step="MANUAL_REVIEW", updated_at=_now())
            )
            event = ("VALIDATED", {"state": OrderState.VALIDATED, "attempt": info.attempt})
            async with timed_statements(self.sessions, "validate_order") as s:
                if (await s.execute(_with_events(validated, event))).scalar_one_or_none() is None:
                    # Validated by an earlier attempt, or not there at all.
                    await _require_order(s, inp.ctx.order_id)
        if problems:
            raise ApplicationError(
                "order is invalid: " + "; ".join(f"{k} {v}" for k, v in problems.items()),
                problems,
                type=ERR_INVALID_ORDER,
                non_retryable=True,
            )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="ChargePayment")
    @step_activity("PAY")
    async def charge_payment(self, inp: ChargeInput) -> StepOutcome:
        """Idempotent on payment_id: however often it runs, at most one charge exists.

        The gateway sees the payment id as the charge's idempotency key, so an attempt
        after a lost answer gets the first charge back instead of a second one."""
        info = activity.info()
        order_id = inp.ctx.order_id
        request = ChargeRequest(
            key=charge_key(inp.payment_id),
            payment_id=inp.payment_id,
            order_id=order_id,
            amount_cents=inp.amount_cents,
        )
        # The payment id is another order's, or was sent with another amount: refused.
        with _refusals_are_final(conflict=ERR_PAYMENT_CONFLICT):
            charge = await self.gateway.charge(request, _call(inp.ctx, info.attempt))
        async with timed_transaction(self.sessions, "charge_payment") as s:
            # A charge that happened is recorded even if a cancel raced it: the workflow
            # then refunds it. Once the order is closed, though, compensation owns the
            # money (it asks the gateway itself): a straggling attempt records nothing.
            locked = await _lock_order(s, order_id)
            if locked.state in TERMINAL_STATES:
                raise ApplicationError(
                    "order is already closed", type=ERR_ORDER_CLOSED, non_retryable=True
                )
            payment = (
                pg_insert(Payment)
                .values(
                    payment_id=inp.payment_id,
                    order_id=order_id,
                    status=PaymentStatus.CHARGED,
                    amount=_cents(charge.amount_cents),
                    gateway_ref=charge.charge_id,
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
                .values(state=OrderState.PAID, step="PAY", updated_at=_now())
            )
            charged = (
                await s.execute(
                    _with_events(
                        paid,
                        ("APPROVED", {"by": inp.approved_by, "at": inp.approved_at_iso}),
                        (
                            "PAYMENT_CHARGED",
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
                if existing is not None and existing.order_id != order_id:
                    raise ApplicationError(
                        f"payment id {inp.payment_id} already belongs to another order",
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
            order = await _lock_order(s, inp.ctx.order_id)
            _refuse_if_closed_or_dispatched(order)
            order.address_json = inp.address.as_dict()
            order.updated_at = _now()
            await s.execute(
                insert(Event).values(
                    **_event(
                        inp.ctx.order_id,
                        "ADDRESS_UPDATED",
                        address=inp.address.as_dict(),
                        by=inp.requested_by,
                    )
                )
            )

    @activity.defn(name="MarkCancelRequested")
    async def mark_cancel_requested(self, inp: CancelMarkInput) -> None:
        """Claim the order for cancellation so a later dispatch refuses to ship it."""
        async with timed_transaction(self.sessions, "mark_cancel_requested") as s:
            order = await _lock_order(s, inp.ctx.order_id)
            if order.cancel_requested:
                return
            _refuse_if_closed_or_dispatched(order)
            order.cancel_requested = True
            order.updated_at = _now()
            await s.execute(
                insert(Event).values(
                    **_event(
                        inp.ctx.order_id,
                        "CANCEL_REQUESTED",
                        reason=inp.reason,
                        by=inp.requested_by,
                    )
                )
            )

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
        maybe_charged = not ours and inp.step == "PAY"
        refund_now = must_refund and not inp.defer_refund
        if refund_now and payment is not None:
            await self._refund(payment, _call(inp.ctx, info.attempt))
        async with timed_transaction(self.sessions, "close_order") as s:
            events: list[dict[str, Any]] = []
            refunded = refund_now and await _mark_refunded(s, order_id, inp.payment_id)
            locked = (
                await s.execute(select(Order).where(Order.id == order_id).with_for_update())
            ).scalar_one_or_none()
            final = inp.state
            started = order.created_at if order is not None else _naive_utc(inp.started_at_iso)
            if locked is None:
                # The order never reached the database (ReceiveOrder failed): record it now
                # so every order that was started can be found and audited.
                await s.execute(
                    pg_insert(Order)
                    .values(
                        id=order_id,
                        state=inp.state,
                        step=inp.step,
                        reason=inp.reason,
                        closed_at=_now(),
                        created_at=started or func.now(),
                    )
                    .on_conflict_do_nothing(index_elements=[Order.id])
                )
                events.append(_terminal_event(inp))
            elif locked.state == OrderState.COMPLETED:
                final = OrderState.COMPLETED
            elif locked.state not in TERMINAL_STATES:
                locked.state = inp.state
                locked.reason = inp.reason
                locked.step = inp.step or locked.step
                locked.updated_at = locked.closed_at = _now()
                events.append(_terminal_event(inp))
            else:
                final = OrderState(locked.state)
            if events:
                await s.execute(insert(Event), events)
            status_row = await s.get(Payment, inp.payment_id)
            status = (
                status_row.status
                if status_row is not None and status_row.order_id == order_id
                else PaymentStatus.NONE
            )
        if events:  # this attempt recorded the end (a retry that found it closed did not)
            _observe_end(final, inp.reason, started)
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
            refund_pending=(
                (must_refund or maybe_charged)
                and inp.defer_refund
                and final != OrderState.COMPLETED
            ),
        )

    @activity.defn(name="RefundPayment")
    async def refund_payment(self, inp: RefundInput) -> CloseOutcome:
        """Compensation after the order is closed: refund a kept charge, once.

        For an order closed while shipping, its carrier bookings are cancelled first. With
        no charge recorded, the gateway is asked to cancel or refund: it refunds a charge
        whose answer was lost (recorded here with its refund), or voids the payment so that
        no late charge attempt can take the money. Each finding is recorded as it is made,
        so a retry after a flaky call carries on from there instead of starting over."""
        info = activity.info()
        order_id = inp.ctx.order_id
        call = _call(inp.ctx, info.attempt)
        async with timed_transaction(self.sessions, "refund_read") as s:
            order = await s.get(Order, order_id)
            payment = await s.get(Payment, inp.payment_id)
            shipments_open = (
                order is not None
                and order.step == "SHIP"
                and order.tracking_number is None
                and not await _has_event(s, order_id, "SHIPMENTS_CANCELLED")
            )
        state = order.state if order is not None else OrderState.FAILED
        if payment is not None and payment.order_id != order_id:
            payment = None  # another order's payment id: never charged for this one
        if state == OrderState.COMPLETED or (
            payment is not None and payment.status != PaymentStatus.CHARGED
        ):
            status = payment.status if payment is not None else PaymentStatus.NONE
            return CloseOutcome(state=state, payment_status=status, refunded=False)
        if shipments_open:
            await self._cancel_shipments(order_id, call)
        if payment is None:
            found = await self._cancel_or_refund(inp.payment_id, order, call)
            if found is None:  # never charged, and now it cannot be
                return CloseOutcome(state=state, payment_status=PaymentStatus.NONE, refunded=False)
            async with timed_transaction(self.sessions, "refund_payment") as s:
                refunded = await _record_lost_charge_refunded(s, order_id, inp.payment_id, found)
        else:
            await self._refund(payment, call)
            async with timed_transaction(self.sessions, "refund_payment") as s:
                refunded = await _mark_refunded(s, order_id, inp.payment_id)
        log.info(
            "payment refunded",
            extra={"order_id": order_id, "workflow_id": info.workflow_id, "attempt": info.attempt},
        )
        return CloseOutcome(state=state, payment_status=PaymentStatus.REFUNDED, refunded=refunded)

    async def _cancel_or_refund(
        self, payment_id: str, order: Order | None, call: CallInfo
    ) -> Refund | None:
        """No charge recorded: refund one the gateway took anyway, or void the payment."""
        # No order row or amount: never received, so never charged; this only voids.
        amount = int(order.amount * 100) if order is not None and order.amount else 0
        order_id = call.order_id
        request = RefundRequest(refund_key(payment_id), payment_id, order_id, amount)
        with _refusals_are_final():
            refund = await self.gateway.cancel_or_refund(request, call)
        if refund is not None:
            log.warning(
                "gateway had a charge we never recorded (its answer was lost); refunded it",
                extra={"order_id": order_id, "charge_id": refund.charge_id},
            )
        return refund

    async def _cancel_shipments(self, order_id: str, call: CallInfo) -> None:
        """Closed while shipping: a booking whose answer was lost must not ship a refunded
        order, and no late dispatch may book one."""
        with _refusals_are_final():
            cancelled = await self.carrier.cancel(CancelShipmentsRequest(order_id), call)
        async with timed_transaction(self.sessions, "cancel_shipments") as s:
            await s.execute(
                insert(Event).values(
                    **_event(
                        order_id,
                        "SHIPMENTS_CANCELLED",
                        bookings=[b.tracking_number for b in cancelled],
                    )
                )
            )
        if cancelled:
            log.warning(
                "carrier had a booking we never recorded (its answer was lost); cancelled it",
                extra={"order_id": order_id, "bookings": len(cancelled)},
            )

    async def _refund(self, payment: Payment, call: CallInfo) -> None:
        """Refund a charge we recorded, in full."""
        amount = int((payment.amount or Decimal(0)) * 100)
        pid = payment.payment_id
        with _refusals_are_final():
            await self.gateway.refund(
                RefundRequest(refund_key(pid), pid, payment.order_id, amount), call
            )


async def _record_lost_charge_refunded(
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
                amount=_cents(refund.amount_cents),
                gateway_ref=refund.charge_id,
                refunded_at=_now(),
            )
            .on_conflict_do_nothing(index_elements=[Payment.payment_id])
            .returning(Payment.payment_id)
        )
    ).scalar_one_or_none()
    if inserted is None:
        return False
    charged = _event(
        order_id,
        "PAYMENT_CHARGED",
        payment_id=payment_id,
        amount_cents=refund.amount_cents,
        found_at_gateway=True,
    )
    refunded = _event(order_id, "PAYMENT_REFUNDED", payment_id=payment_id)
    await s.execute(insert(Event), [charged, refunded])
    return True


async def _has_event(s: AsyncSession, order_id: str, type_: str) -> bool:
    found = await s.execute(
        select(Event.id).where(Event.order_id == order_id, Event.type == type_).limit(1)
    )
    return found.first() is not None


async def _mark_refunded(s: AsyncSession, order_id: str, payment_id: str) -> bool:
    """charged -> refunded with its event; False when another attempt already did it."""
    done = (
        await s.execute(
            update(Payment)
            .where(Payment.payment_id == payment_id, Payment.status == PaymentStatus.CHARGED)
            .values(status=PaymentStatus.REFUNDED, refunded_at=_now())
            .returning(Payment.payment_id)
        )
    ).scalar_one_or_none() is not None
    if done:
        await s.execute(
            insert(Event).values(**_event(order_id, "PAYMENT_REFUNDED", payment_id=payment_id))
        )
    return done


def _terminal_event(inp: CloseInput) -> dict[str, Any]:
    """The end state, with the workflow's final attempt counts and errors (the status of
    a closed order is read from here on)."""
    return _event(
        inp.ctx.order_id,
        inp.state,
        state=inp.state,
        reason=inp.reason,
        attempts=inp.attempts,
        errors=[dataclasses.asdict(e) for e in inp.errors],
    )


def _observe_end(state: str, reason: str | None, created_at: datetime | None) -> None:
    metrics.ORDERS_TERMINAL.labels(state=state, reason=reason or "").inc()
    if created_at is not None:
        metrics.ORDER_DURATION.labels(outcome=state).observe(
            max((_now() - created_at).total_seconds(), 0.0)
        )


def _refuse_if_closed_or_dispatched(order: Order) -> None:
    if order.state == OrderState.COMPLETED or order.tracking_number is not None:
        raise ApplicationError(
            "order was already dispatched", type=ERR_ORDER_DISPATCHED, non_retryable=True
        )
    if order.state in TERMINAL_STATES or order.cancel_requested:
        raise ApplicationError(
            "order is already closed or being cancelled",
            type=ERR_ORDER_CANCELLED,
            non_retryable=True,
        )


def _business_problems(inp: ValidateInput) -> dict[str, str]:
    problems: dict[str, str] = {}
    if not inp.items:
        problems["items"] = "must not be empty"
    elif any(i.qty < 1 or i.qty > MAX_QTY for i in inp.items):
        problems["items"] = f"quantities must be between 1 and {MAX_QTY}"
    elif any(i.unit_price_cents < 0 for i in inp.items):
        problems["items"] = "prices must not be negative"
    elif order_amount_cents(inp.items) > MAX_ORDER_CENTS:
        problems["amount"] = "exceeds the limit for one order"
    problems.update({f"address.{k}": v for k, v in address_problems(inp.address.as_dict()).items()})
    if "address.country" not in problems and inp.address.country not in SHIPPABLE_COUNTRIES:
        problems["address.country"] = f"we do not ship to {inp.address.country}"
    return problems


class ShippingActivities(_ActivityBase):
    """Activities of the shipping queue."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], carrier: Carrier) -> None:
        super().__init__(sessions)
        self.carrier = carrier

    @activity.defn(name="PreparePackage")
    @step_activity("SHIP")
    async def prepare_package(self, inp: PrepareInput) -> StepOutcome:
        info = activity.info()
        order_id = inp.ctx.order_id
        request = PrepareRequest(
            prepare_key(order_id, inp.shipping_attempt), order_id, inp.shipping_attempt
        )
        with _refusals_are_final():
            await self.carrier.prepare(
                request, _call(inp.ctx, f"{inp.shipping_attempt}.{info.attempt}")
            )
        async with timed_statements(self.sessions, "prepare_package") as s:
            await s.execute(
                insert(Event).values(
                    **_event(
                        order_id,
                        "PACKAGE_PREPARED",
                        shipping_attempt=inp.shipping_attempt,
                        attempt=info.attempt,
                    )
                )
            )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="DispatchCarrier")
    @step_activity("SHIP")
    async def dispatch_carrier(self, inp: DispatchInput) -> DispatchOutcome:
        """Hand the parcel to the carrier, holding the order row so a concurrent cancel or
        address change is decided before or after dispatch, never during."""
        info = activity.info()
        order_id = inp.ctx.order_id
        async with timed_transaction(self.sessions, "dispatch_carrier") as s:
            order = await _lock_order(s, order_id)
            if order.tracking_number is not None:  # an earlier attempt already dispatched
                return DispatchOutcome(
                    attempt=info.attempt,
                    tracking_number=order.tracking_number,
                    address=Address(**(order.address_json or {})),
                )
            if order.cancel_requested or order.state in TERMINAL_STATES:
                raise ApplicationError(
                    "order was cancelled before dispatch",
                    type=ERR_ORDER_CANCELLED,
                    non_retryable=True,
                )
            address = Address(**(order.address_json or {}))
            request = DispatchRequest(
                key=dispatch_key(order_id, inp.shipping_attempt),
                order_id=order_id,
                address=address.as_dict(),
                supersedes=tuple(dispatch_key(order_id, n) for n in range(1, inp.shipping_attempt)),
            )
            with _refusals_are_final():
                booking = await self.carrier.dispatch(
                    request, _call(inp.ctx, f"{inp.shipping_attempt}.{info.attempt}")
                )
            tracking = booking.tracking_number
            # An earlier attempt's booking (its answer was lost) went to its own address.
            address = Address(**booking.address)
            now = _now()
            completed = (
                update(Order)
                .where(Order.id == order_id)
                .values(
                    tracking_number=tracking,
                    state=OrderState.COMPLETED,
                    step="SHIP",
                    updated_at=now,
                    closed_at=now,
                )
            )
            await s.execute(
                _with_events(
                    completed,
                    (
                        "DISPATCHED",
                        {
                            "tracking_number": tracking,
                            "shipping_attempt": inp.shipping_attempt,
                            "attempt": info.attempt,
                            "address": address.as_dict(),
                        },
                    ),
                    ("COMPLETED", {"state": OrderState.COMPLETED}),
                )
            )
        _observe_end(OrderState.COMPLETED, None, order.created_at)
        return DispatchOutcome(attempt=info.attempt, tracking_number=tracking, address=address)
