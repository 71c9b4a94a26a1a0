"""ReceiveOrder and ValidateOrder: the order's row written as received (its payment id
claimed for it), then checked against the business rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.activities.common import (
    call_info,
    event_params,
    lock_order,
    money,
    naive_utc,
    now_utc,
    record_event,
    require_order,
    step_activity,
    with_events,
)
from app.orders.claims import claim_payment_id
from app.orders.identity import first_reference, retry_reference
from app.orders.messages import (
    ERR_INVALID_ORDER,
    ERR_PAYMENT_CONFLICT,
    EventType,
    OrderState,
    ReceiveInput,
    Step,
    StepOutcome,
    ValidateInput,
    order_amount_cents,
)
from app.orders.providers.intake import OrderIntake
from app.orders.rules import business_problems
from app.orders.validation import order_id_problem, payment_id_problem
from app.platform.db import timed_driver, timed_transaction
from app.platform.sql import Sql, as_json


class IntakeActivities:
    """Receiving an order and validating it, each after its (stub) service's call."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], intake: OrderIntake) -> None:
        self.sessions = sessions
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
        async with timed_driver(self.sessions, "receive_order") as db:
            # A retry's reference only for the order that owns the payment id it is made
            # from (claims.py: the claim waits for a retry's uncommitted claim of it).
            await _claim_or_refuse(db, inp.payment_id, inp.ctx.order_id)
            if await db.value(_RECEIVED, **_received(inp), **event_params(received)):
                return StepOutcome(attempt=info.attempt)
            # Written by an earlier attempt of this run, or the id is taken.
            run_id = await db.value("SELECT run_id FROM orders WHERE id = :id", id=inp.ctx.order_id)
            if run_id != inp.run_id:
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
                await record_event(
                    s, inp.ctx.order_id, EventType.VALIDATION_FAILED, problems=problems
                )
        else:
            event = (EventType.VALIDATED, {"state": OrderState.VALIDATED, "attempt": info.attempt})
            async with timed_driver(self.sessions, "validate_order") as db:
                validated = await db.value(
                    _VALIDATED,
                    id=inp.ctx.order_id,
                    received=OrderState.RECEIVED,
                    validated=OrderState.VALIDATED,
                    review=Step.MANUAL_REVIEW,
                    now=now_utc(),
                    **event_params(event),
                )
                if validated is None:
                    # Validated by an earlier attempt, or not there at all.
                    await require_order(db, inp.ctx.order_id)
        if problems:
            raise ApplicationError(
                "order is invalid: " + "; ".join(f"{k} {v}" for k, v in problems.items()),
                problems,
                type=ERR_INVALID_ORDER,
                non_retryable=True,
            )
        return StepOutcome(attempt=info.attempt)


# The order's row as received: new, or the PENDING row this run's start wrote (the
# service records an order as it starts it, so it is listed at once) or its retry
# reopened (what the failed run did stays in events). A row of another run, or one past
# PENDING (an earlier attempt of this run received it), is left alone.
_RECEIVED = with_events(
    """INSERT INTO orders AS o (id, run_id, created_at, state, step, workflow_id, payment_id,
        address_json, amount, items_json, deadline_at)
    VALUES (:id, :run_id, :created_at, :state, :step, :workflow_id, :payment_id,
        CAST(:address AS jsonb), :amount, CAST(:items AS jsonb), :deadline_at)
    ON CONFLICT (id) DO UPDATE SET
        state = excluded.state, step = excluded.step, workflow_id = excluded.workflow_id,
        payment_id = excluded.payment_id, address_json = excluded.address_json,
        amount = excluded.amount, items_json = excluded.items_json,
        deadline_at = excluded.deadline_at, reason = NULL, closed_at = NULL,
        settled_at = NULL, cancel_requested = false, tracking_number = NULL,
        updated_at = :now
    WHERE o.run_id = :run_id AND o.state = :pending
    RETURNING o.id"""
)

_VALIDATED = with_events(
    """UPDATE orders SET state = :validated, step = :review, updated_at = :now
    WHERE id = :id AND state = :received
    RETURNING id"""
)


def _received(inp: ReceiveInput) -> dict[str, Any]:
    """`_RECEIVED`'s parameters."""
    now = now_utc()
    return {
        "id": inp.ctx.order_id,
        "run_id": inp.run_id,
        # The insert time for runs started before the workflow sent its start time.
        "created_at": naive_utc(inp.started_at_iso) or now,
        "state": OrderState.RECEIVED,
        "step": Step.RECEIVE,
        "workflow_id": inp.workflow_id,
        "payment_id": inp.payment_id,
        "address": as_json(inp.address.as_dict()),
        "amount": money(order_amount_cents(inp.items)),
        "items": as_json([vars(i) for i in inp.items]),
        "deadline_at": datetime.fromisoformat(inp.deadline_iso).replace(tzinfo=None),
        "pending": OrderState.PENDING,
        "now": now,
    }


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


async def _claim_or_refuse(db: Sql, payment_id: str, order_id: str) -> None:
    if (await claim_payment_id(db, payment_id, order_id)).owner != order_id:
        raise ApplicationError(
            f"payment id {payment_id} already belongs to another order",
            type=ERR_PAYMENT_CONFLICT,
            non_retryable=True,
        )
