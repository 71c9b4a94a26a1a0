"""What every activity shares: attempt accounting (`step_activity`), one-statement writes
with their events (plain SQL on the driver: app/platform/sql.py), the order row lock, the
payment id's owner, and turning a provider's refusal into a final failure."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.faults import CallInfo
from app.orders.messages import (
    ERR_PAYMENT_CONFLICT,
    ActivityContext,
    EventType,
    Step,
    shown_message,
)
from app.orders.providers.api import (
    ChargeNotFound,
    IdempotencyConflict,
    ProviderRefusal,
)
from app.platform import metrics
from app.platform.db import timed_transaction
from app.platform.sql import DriverSql, Row, Sql, as_json
from app.platform.tables import Event, Order

log = logging.getLogger("app.orders.activities")


P = ParamSpec("P")
R = TypeVar("R")


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(iso: str | None) -> datetime | None:
    """An ISO timestamp as the naive UTC the TIMESTAMP columns hold."""
    return datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None) if iso else None


def money(amount_cents: int) -> Decimal:
    return (Decimal(amount_cents) / 100).quantize(Decimal("0.01"))


def event_row(order_id: str, type_: EventType | str, **payload: Any) -> dict[str, Any]:
    return {"order_id": order_id, "type": str(type_), "payload_json": payload}


async def record_event(
    s: AsyncSession, order_id: str, type_: EventType | str, **payload: Any
) -> None:
    """One event of the order, in the session's transaction."""
    await s.execute(insert(Event).values(**event_row(order_id, type_, **payload)))


def with_events(write: str, events: int = 1, *, before: str = "", stamped: bool = False) -> str:
    """One statement: `write` (an INSERT or UPDATE of one order row, `RETURNING id`) plus
    `events` events for the row it wrote (parameters `type0`, `payload0`, ...: see
    `event_params`). `before`: CTEs `write` reads, each followed by a comma.

    The events are stamped `:at` when `stamped` (the time the write records, e.g. its
    `closed_at`), else with the statement's clock.

    Selects the order id when `write` wrote the row, nothing when it did not (then no event
    is recorded either). A statement's data-modifying CTEs commit together or not at all,
    so the step's state change and its events need no transaction around them: one round
    trip to PostgreSQL instead of four (these writes are the hottest path of an order)."""
    stamp = ":at" if stamped else "clock_timestamp()"
    rows = " UNION ALL ".join(
        f"SELECT id, :type{i}, CAST(:payload{i} AS jsonb), {stamp} FROM written"
        for i in range(events)
    )
    return (
        f"WITH {before} written AS ({write}), "
        f"recorded AS (INSERT INTO events (order_id, type, payload_json, ts) {rows}) "
        "SELECT id FROM written"
    )


def event_params(*events: tuple[EventType, dict[str, Any]]) -> dict[str, Any]:
    """The `type<i>`/`payload<i>` parameters of `with_events`' statement."""
    params: dict[str, Any] = {}
    for i, (type_, payload) in enumerate(events):
        params[f"type{i}"] = str(type_)
        params[f"payload{i}"] = as_json(payload)
    return params


_EVENT = (
    "INSERT INTO events (order_id, type, payload_json, ts) "
    "VALUES (:order_id, :type, CAST(:payload AS jsonb), clock_timestamp())"
)


async def insert_event(db: Sql, order_id: str, type_: EventType, **payload: Any) -> None:
    """One event of the order, on the hot path's connection (`record_event` in a session)."""
    await db.run(_EVENT, order_id=order_id, type=str(type_), payload=as_json(payload))


def step_activity(step: Step) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Counts attempts and records each failed attempt (timeouts included) as an event.

    The failure record is best effort and in its own transaction: it must never turn a
    retryable failure into a different one.
    """

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            info = activity.info()
            activities = args[0]
            assert isinstance(activities, UsesOrderDatabase)
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
                    record_attempt_failure(
                        activities.sessions, order_id, step, info.attempt, kind, err
                    )
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


@runtime_checkable
class UsesOrderDatabase(Protocol):
    """An activities class `step_activity` can record failed attempts for."""

    sessions: async_sessionmaker[AsyncSession]


async def record_attempt_failure(
    sessions: async_sessionmaker[AsyncSession],
    order_id: str,
    step: str,
    attempt: int,
    kind: str,
    err: BaseException,
) -> None:
    # What clients are shown (status errors): our text or a fixed one for its kind;
    # a driver's or SQL text stays in the log line step_activity wrote.
    message = shown_message(kind, err.message if isinstance(err, ApplicationError) else str(err))
    try:
        async with timed_transaction(sessions, "record_attempt_failure") as s:
            await record_event(
                s,
                order_id,
                EventType.STEP_ATTEMPT_FAILED,
                step=step,
                attempt=attempt,
                kind=kind,
                message=message,
            )
    except Exception:  # the database may be the thing that failed
        log.warning("could not record attempt failure", extra={"order_id": order_id})


async def lock_order(session: AsyncSession, order_id: str) -> Order:
    order = (
        await session.execute(select(Order).where(Order.id == order_id).with_for_update())
    ).scalar_one_or_none()
    if order is None:
        raise _not_found(order_id)
    return order


async def locked_order(db: DriverSql, order_id: str, columns: str) -> Row:
    """`lock_order` on the hot path's connection (inside its transaction): the row's
    `columns` (SQL), held until commit."""
    row = await db.row(f"SELECT {columns} FROM orders WHERE id = :id FOR UPDATE", id=order_id)
    if row is None:
        raise _not_found(order_id)
    return row


async def require_order(db: Sql, order_id: str) -> None:
    if await db.value("SELECT 1 FROM orders WHERE id = :id", id=order_id) is None:
        raise _not_found(order_id)


def _not_found(order_id: str) -> ApplicationError:
    # Retryable: the row may not be visible yet if ReceiveOrder is still committing.
    return ApplicationError(f"order {order_id} not found in database", type="OrderNotFound")


async def refuse_unless_payment_owner(db: Sql, payment_id: str, order_id: str) -> None:
    """Refuse for good unless the payment id is claimed by this order."""
    owner = await db.value(
        "SELECT order_id FROM payment_claims WHERE payment_id = :payment_id",
        payment_id=payment_id,
    )
    if owner != order_id:
        raise ApplicationError(
            f"payment id {payment_id} is not this order's",
            type=ERR_PAYMENT_CONFLICT,
            non_retryable=True,
        )


@contextmanager
def refusals_are_final(conflict: str | None = None) -> Iterator[None]:
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


def call_info(ctx: ActivityContext, attempt: int | str) -> CallInfo:
    # A retry's calls draw their own faults: under a fixed FAULT_SEED it would otherwise
    # meet exactly the faults that failed the run it retries.
    run_attempt = attempt if ctx.retry <= 1 else f"r{ctx.retry}.{attempt}"
    return CallInfo(ctx.order_id, run_attempt, ctx.fault_profile)


def observe_end(state: str, reason: str | None, created_at: datetime | None) -> None:
    metrics.ORDERS_TERMINAL.labels(state=state, reason=reason or "").inc()
    if created_at is not None:
        metrics.ORDER_DURATION.labels(outcome=state).observe(
            max((now_utc() - created_at).total_seconds(), 0.0)
        )
