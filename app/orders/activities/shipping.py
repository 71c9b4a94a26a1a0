"""Activities of the shipping queue: PreparePackage and DispatchCarrier."""

from __future__ import annotations

import logging

from sqlalchemy import (
    insert,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.activities.common import (
    ActivityBase,
    call_info,
    event_row,
    lock_order,
    now_utc,
    observe_end,
    refusals_are_final,
    step_activity,
    with_events,
)
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
    Carrier,
    DispatchRequest,
    PrepareRequest,
    dispatch_key,
    prepare_key,
)
from app.platform.db import timed_statements, timed_transaction
from app.platform.tables import Event, Order

log = logging.getLogger("app.orders.activities")


class ShippingActivities(ActivityBase):
    """Activities of the shipping queue."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], carrier: Carrier) -> None:
        super().__init__(sessions)
        self.carrier = carrier

    @activity.defn(name="PreparePackage")
    @step_activity(Step.SHIP)
    async def prepare_package(self, inp: PrepareInput) -> StepOutcome:
        info = activity.info()
        order_id, ref = inp.ctx.order_id, inp.ctx.shipment_ref
        key = prepare_key(order_id, inp.ctx.retry, inp.shipping_attempt)
        request = PrepareRequest(key, ref, inp.shipping_attempt)
        with refusals_are_final():
            await self.carrier.prepare(
                request, call_info(inp.ctx, f"{inp.shipping_attempt}.{info.attempt}")
            )
        async with timed_statements(self.sessions, "prepare_package") as s:
            await s.execute(
                insert(Event).values(
                    **event_row(
                        order_id,
                        EventType.PACKAGE_PREPARED,
                        shipping_attempt=inp.shipping_attempt,
                        attempt=info.attempt,
                    )
                )
            )
        return StepOutcome(attempt=info.attempt)

    @activity.defn(name="DispatchCarrier")
    @step_activity(Step.SHIP)
    async def dispatch_carrier(self, inp: DispatchInput) -> DispatchOutcome:
        """Hand the parcel to the carrier, holding the order row so a concurrent cancel or
        address change is decided before or after dispatch, never during."""
        info = activity.info()
        order_id = inp.ctx.order_id
        async with timed_transaction(self.sessions, "dispatch_carrier") as s:
            order = await lock_order(s, order_id)
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
            retry = inp.ctx.retry
            request = DispatchRequest(
                key=dispatch_key(order_id, retry, inp.shipping_attempt),
                order_id=inp.ctx.shipment_ref,
                address=address.as_dict(),
                supersedes=tuple(
                    dispatch_key(order_id, retry, n) for n in range(1, inp.shipping_attempt)
                ),
            )
            with refusals_are_final():
                booking = await self.carrier.dispatch(
                    request, call_info(inp.ctx, f"{inp.shipping_attempt}.{info.attempt}")
                )
            tracking = booking.tracking_number
            # An earlier attempt's booking (its answer was lost) went to its own address.
            address = Address(**booking.address)
            now = now_utc()
            completed = (
                update(Order)
                .where(Order.id == order_id)
                .values(
                    tracking_number=tracking,
                    state=OrderState.COMPLETED,
                    step=Step.SHIP,
                    updated_at=now,
                    closed_at=now,
                    settled_at=now,
                )
            )
            await s.execute(
                with_events(
                    completed,
                    (
                        EventType.DISPATCHED,
                        {
                            "tracking_number": tracking,
                            "shipping_attempt": inp.shipping_attempt,
                            "attempt": info.attempt,
                            "address": address.as_dict(),
                        },
                    ),
                    (EventType.COMPLETED, {"state": OrderState.COMPLETED}),
                    at=now,  # as closed_at says
                )
            )
        observe_end(OrderState.COMPLETED, None, order.created_at)
        return DispatchOutcome(attempt=info.attempt, tracking_number=tracking, address=address)
