"""ApplyAddressChange and MarkCancelRequested: a caller's change to a running order,
accepted only while the carrier does not have the parcel yet."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from app.orders.activities.common import lock_order, now_utc, record_event
from app.orders.messages import (
    ERR_INVALID_ORDER,
    ERR_ORDER_CANCELLED,
    ERR_ORDER_DISPATCHED,
    TERMINAL_STATES,
    AddressChangeInput,
    CancelMarkInput,
    EventType,
    OrderState,
)
from app.orders.validation import address_problems
from app.platform.db import timed_transaction
from app.platform.tables import Order


class ChangeActivities:
    """A caller's changes to an order in flight: a new address, a cancel claimed."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    @activity.defn(name="ApplyAddressChange")
    async def apply_address_change(self, inp: AddressChangeInput) -> None:
        """Accept a new address unless the carrier already has the parcel."""
        problems = address_problems(inp.address.as_dict())
        if problems:
            raise ApplicationError("invalid address", problems, type=ERR_INVALID_ORDER)
        async with timed_transaction(self.sessions, "apply_address_change") as s:
            order = await lock_order(s, inp.ctx.order_id)
            _refuse_if_closed_or_dispatched(order)
            if order.dispatch_requested_at is not None:
                # The carrier was asked to take the parcel: whatever came of it (an answer
                # lost, an attempt that failed), a booking may exist for the address it was
                # given, and a later attempt gets that booking back. The address is final.
                raise ApplicationError(
                    "order's dispatch to the carrier has begun: its address can no longer change",
                    type=ERR_ORDER_DISPATCHED,
                    non_retryable=True,
                )
            order.address_json = inp.address.as_dict()
            order.updated_at = now_utc()
            await record_event(
                s,
                inp.ctx.order_id,
                EventType.ADDRESS_UPDATED,
                address=inp.address.as_dict(),
                by=inp.requested_by,
            )

    @activity.defn(name="MarkCancelRequested")
    async def mark_cancel_requested(self, inp: CancelMarkInput) -> None:
        """Claim the order for cancellation so a later dispatch refuses to ship it."""
        async with timed_transaction(self.sessions, "mark_cancel_requested") as s:
            order = await lock_order(s, inp.ctx.order_id)
            if order.cancel_requested:
                return
            _refuse_if_closed_or_dispatched(order)
            order.cancel_requested = True
            order.updated_at = now_utc()
            await record_event(
                s,
                inp.ctx.order_id,
                EventType.CANCEL_REQUESTED,
                reason=inp.reason,
                by=inp.requested_by,
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
