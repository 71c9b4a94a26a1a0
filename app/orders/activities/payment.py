"""ChargePayment: the order's money taken at the gateway once per payment id, and recorded
with the order marked paid."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.activities.common import (
    call_info,
    event_params,
    locked_order,
    money,
    now_utc,
    refusals_are_final,
    refuse_unless_payment_owner,
    step_activity,
    with_events,
)
from app.orders.messages import (
    ERR_ORDER_CLOSED,
    ERR_PAYMENT_CONFLICT,
    TERMINAL_STATES,
    ChargeInput,
    EventType,
    OrderState,
    PaymentStatus,
    Step,
    StepOutcome,
)
from app.orders.providers.api import Charge, ChargeRequest, PaymentGateway, charge_key
from app.platform.db import timed_driver
from app.platform.sql import Sql

log = logging.getLogger("app.orders.activities")


class PaymentActivities:
    """Charging the order at the gateway."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], gateway: PaymentGateway) -> None:
        self.sessions = sessions
        self.gateway = gateway

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
        async with timed_driver(self.sessions, "charge_claim") as db:
            await refuse_unless_payment_owner(db, inp.payment_id, order_id)
        charge = await self._charge(inp, info.attempt)
        async with timed_driver(self.sessions, "charge_payment") as db, db.transaction():
            # A charge that happened is recorded even if a cancel raced it: the workflow
            # then refunds it. Once the order is closed, though, compensation owns the
            # money (it asks the gateway itself): a straggling attempt records nothing.
            locked = await locked_order(db, order_id, "state")
            if locked["state"] in TERMINAL_STATES:
                raise ApplicationError(
                    "order is already closed", type=ERR_ORDER_CLOSED, non_retryable=True
                )
            if await db.value(_PAID, **_paid(inp, charge, info.attempt)) is None:
                await _refuse_unless_this_runs_charge(db, inp, charge)
                log.info(
                    "charge already recorded; not charging again",
                    extra={"order_id": order_id, "attempt": info.attempt},
                )
        return StepOutcome(attempt=info.attempt)

    async def _charge(self, inp: ChargeInput, attempt: int) -> Charge:
        """The gateway's charge of the order; a free order's stands for itself (no call)."""
        if inp.amount_cents == 0:
            return Charge(charge_id="", payment_id=inp.payment_id, amount_cents=0)
        request = ChargeRequest(
            key=charge_key(inp.ctx.order_id, inp.payment_id),
            payment_id=inp.payment_id,
            order_id=inp.ctx.order_id,
            amount_cents=inp.amount_cents,
        )
        # The key was sent before with another amount: refused.
        with refusals_are_final(conflict=ERR_PAYMENT_CONFLICT):
            return await self.gateway.charge(request, call_info(inp.ctx, attempt))


# The payment row recorded (unless it exists) and, only when this statement recorded it,
# the order marked paid with its events.
_PAID = with_events(
    """UPDATE orders SET state = :paid, step = :pay, updated_at = :now
    WHERE id = :id AND EXISTS (SELECT 1 FROM charged)
    RETURNING id""",
    events=2,
    before="""charged AS (
        INSERT INTO payments (payment_id, order_id, status, amount, gateway_ref)
        VALUES (:payment_id, :id, :status, :amount, :gateway_ref)
        ON CONFLICT (payment_id) DO NOTHING
        RETURNING payment_id
    ),""",
)


def _paid(inp: ChargeInput, charge: Charge, attempt: int) -> dict[str, Any]:
    """`_PAID`'s parameters."""
    approved = {"by": inp.approved_by, "at": inp.approved_at_iso, "note": inp.approval_note}
    charged = {
        "state": OrderState.PAID,
        "payment_id": inp.payment_id,
        "amount_cents": inp.amount_cents,
        "attempt": attempt,
    }
    return {
        "id": inp.ctx.order_id,
        "payment_id": inp.payment_id,
        "status": PaymentStatus.CHARGED if charge.amount_cents else PaymentStatus.NOT_DUE,
        "amount": money(charge.amount_cents),
        "gateway_ref": charge.charge_id or None,
        "paid": OrderState.PAID,
        "pay": Step.PAY,
        "now": now_utc(),
        **event_params((EventType.APPROVED, approved), (EventType.PAYMENT_CHARGED, charged)),
    }


async def _refuse_unless_this_runs_charge(db: Sql, inp: ChargeInput, charge: Charge) -> None:
    """The payment row was there already: fine only if it is this run's own charge."""
    existing = await db.row(
        "SELECT order_id, status, gateway_ref FROM payments WHERE payment_id = :payment_id",
        payment_id=inp.payment_id,
    )
    # Only this run's own charge, still taken, is "already recorded": a row of another
    # order, or one refunded since (a replayed charge that no longer holds any money),
    # must never ship the order.
    if (
        existing is None
        or existing["order_id"] != inp.ctx.order_id
        or existing["status"] == PaymentStatus.REFUNDED
        or existing["gateway_ref"] != (charge.charge_id or None)
    ):
        raise ApplicationError(
            f"payment id {inp.payment_id} already belongs to another order or an earlier charge",
            type=ERR_PAYMENT_CONFLICT,
            non_retryable=True,
        )
