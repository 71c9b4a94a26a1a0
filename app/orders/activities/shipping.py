"""Activities of the shipping queue: PreparePackage and DispatchCarrier."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.activities.common import (
    call_info,
    event_params,
    insert_event,
    locked_order,
    now_utc,
    observe_end,
    refusals_are_final,
    step_activity,
    with_events,
)
from app.orders.faults import CallInfo
from app.orders.messages import (
    ERR_ORDER_CANCELLED,
    TERMINAL_STATES,
    Address,
    DispatchInput,
    DispatchOutcome,
    EventType,
    OrderState,
    PrepareInput,
    Step,
    StepOutcome,
)
from app.orders.providers.api import (
    Booking,
    Carrier,
    DispatchRequest,
    PrepareRequest,
    dispatch_key,
    prepare_key,
)
from app.platform.db import timed_driver
from app.platform.sql import DriverSql

log = logging.getLogger("app.orders.activities")


class ShippingActivities:
    """Activities of the shipping queue: the parcel packed, then handed to the carrier."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], carrier: Carrier) -> None:
        self.sessions = sessions
        self.carrier = carrier

    @activity.defn(name="PreparePackage")
    @step_activity(Step.SHIP)
    async def prepare_package(self, inp: PrepareInput) -> StepOutcome:
        info = activity.info()
        order_id, ref = inp.ctx.order_id, inp.ctx.shipment_ref
        key = prepare_key(order_id, inp.ctx.retry, inp.shipping_attempt)
        request = PrepareRequest(key, ref, inp.shipping_attempt)
        with refusals_are_final():
            await self.carrier.prepare(request, _shipping_call(inp, info.attempt))
        async with timed_driver(self.sessions, "prepare_package") as db:
            await insert_event(
                db,
                order_id,
                EventType.PACKAGE_PREPARED,
                shipping_attempt=inp.shipping_attempt,
                attempt=info.attempt,
            )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="DispatchCarrier")
    @step_activity(Step.SHIP)
    async def dispatch_carrier(self, inp: DispatchInput) -> DispatchOutcome:
        """Hand the parcel to the carrier, holding the order row so a concurrent cancel or
        address change is decided before or after dispatch, never during."""
        info = activity.info()
        async with timed_driver(self.sessions, "dispatch_carrier") as db:
            # Committed before the carrier is asked: if its answer is lost, this attempt's
            # transaction rolls back, and the mark is what refuses an address change then.
            await db.run(_DISPATCH_REQUESTED, id=inp.ctx.order_id, at=now_utc())
            return await self._dispatch(db, inp, info.attempt)

    async def _dispatch(self, db: DriverSql, inp: DispatchInput, attempt: int) -> DispatchOutcome:
        async with db.transaction():
            order = await locked_order(
                db,
                inp.ctx.order_id,
                "tracking_number, address_json, cancel_requested, state, created_at",
            )
            if order["tracking_number"] is not None:  # an earlier attempt already dispatched
                return DispatchOutcome(
                    attempt=attempt,
                    tracking_number=order["tracking_number"],
                    address=Address(**(order["address_json"] or {})),
                )
            if order["cancel_requested"] or order["state"] in TERMINAL_STATES:
                raise ApplicationError(
                    "order was cancelled before dispatch",
                    type=ERR_ORDER_CANCELLED,
                    non_retryable=True,
                )
            shipped_to = Address(**(order["address_json"] or {}))
            booking = await self._book(inp, shipped_to, attempt)
            # An earlier attempt's booking (its answer was lost) went to its own address.
            address = Address(**booking.address)
            await db.run(_COMPLETED, **_completed(inp, booking.tracking_number, address, attempt))
        observe_end(OrderState.COMPLETED, None, order["created_at"])
        return DispatchOutcome(
            attempt=attempt, tracking_number=booking.tracking_number, address=address
        )

    async def _book(self, inp: DispatchInput, address: Address, attempt: int) -> Booking:
        """The carrier's booking under this shipping attempt's key, or the one an earlier
        shipping attempt of this run made."""
        order_id, retry = inp.ctx.order_id, inp.ctx.retry
        request = DispatchRequest(
            key=dispatch_key(order_id, retry, inp.shipping_attempt),
            order_id=inp.ctx.shipment_ref,
            address=address.as_dict(),
            supersedes=tuple(
                dispatch_key(order_id, retry, n) for n in range(1, inp.shipping_attempt)
            ),
        )
        with refusals_are_final():
            return await self.carrier.dispatch(request, _shipping_call(inp, attempt))


def _shipping_call(inp: PrepareInput | DispatchInput, attempt: int) -> CallInfo:
    """A shipping call, named by its shipping attempt and its activity attempt."""
    return call_info(inp.ctx, f"{inp.shipping_attempt}.{attempt}")


_DISPATCH_REQUESTED = """UPDATE orders SET dispatch_requested_at = :at
    WHERE id = :id AND dispatch_requested_at IS NULL AND tracking_number IS NULL
        AND NOT cancel_requested AND closed_at IS NULL"""

# The order dispatched and closed COMPLETED, with both events stamped as closed_at says.
_COMPLETED = with_events(
    """UPDATE orders SET tracking_number = :tracking, state = :completed, step = :ship,
        updated_at = :at, closed_at = :at, settled_at = :at
    WHERE id = :id
    RETURNING id""",
    events=2,
    stamped=True,
)


def _completed(inp: DispatchInput, tracking: str, address: Address, attempt: int) -> dict[str, Any]:
    """`_COMPLETED`'s parameters."""
    dispatched = {
        "tracking_number": tracking,
        "shipping_attempt": inp.shipping_attempt,
        "attempt": attempt,
        "address": address.as_dict(),
    }
    return {
        "id": inp.ctx.order_id,
        "tracking": tracking,
        "completed": OrderState.COMPLETED,
        "ship": Step.SHIP,
        "at": now_utc(),
        **event_params(
            (EventType.DISPATCHED, dispatched),
            (EventType.COMPLETED, {"state": OrderState.COMPLETED}),
        ),
    }
