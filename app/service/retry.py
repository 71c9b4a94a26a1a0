"""An operator's retry of a FAILED order: a new run under the same order id.

Only a FAILED order is retried; a running, completed or cancelled one is refused (409),
by our row and by Temporal's reuse policy (ALLOW_DUPLICATE_FAILED_ONLY), so a race
between two retries starts one run. The money: a FAILED order's charge was refunded (or
its payment voided) when it closed, so the gateway would refuse or replay a charge under
the same key. The retry charges a payment of its own, `<payment id>#r<N>`, and the
earlier payment stays in `payments` as it ended. A payment still charged and not
refunded is never charged again: such an order is refused until compensation settled it.
Likewise the carrier, which closed the failed run's shipments for good, knows the retry
as `<order id>#r<N>`. `#` is in no client's id, so neither reference can be another
order's (app/orders/identity.py), and every provider key names the retry's number.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from app.orders.identity import retry_reference
from app.orders.messages import (
    Address,
    EventType,
    LineItem,
    OrderInput,
    OrderState,
    PaymentStatus,
    Step,
)
from app.platform.tables import Event, Order, Payment
from app.service.errors import OrderConflict, OrderNotFound, Unavailable


async def order_to_retry(s: AsyncSession, order_id: str) -> tuple[Order, int]:
    """The FAILED order, locked until the caller's transaction ends (so two retries are
    decided one after the other), and the number its retry gets (the first run is 1)."""
    row = (
        await s.execute(
            select(Order, Payment)
            .outerjoin(
                Payment, (Payment.payment_id == Order.payment_id) & (Payment.order_id == Order.id)
            )
            .where(Order.id == order_id)
            .with_for_update(of=Order)
        )
    ).first()
    if row is None:
        raise OrderNotFound(f"order {order_id} not found")
    order, payment = row[0], row[1]
    _refuse_retry(order, payment)
    retries = (
        await s.execute(
            select(func.count())
            .select_from(Event)
            .where(Event.order_id == order_id, Event.type == EventType.RETRIED)
        )
    ).scalar_one()
    return order, retries + 2


def _refuse_retry(order: Order, payment: Payment | None) -> None:
    if order.state != OrderState.FAILED:
        raise OrderConflict(
            f"order {order.id} is {order.state}: only a FAILED order can be retried",
            reason="not_failed",
        )
    if order.settled_at is None:
        raise OrderConflict(
            f"order {order.id} is still settling (its refund or booking cancellation is in "
            "flight): retry once its status says settled",
            reason="settling",
        )
    if payment is not None and payment.status == PaymentStatus.CHARGED:
        raise OrderConflict(
            f"payment {payment.payment_id} of order {order.id} is charged and not refunded: "
            "it settles before a retry",
            reason="payment_unsettled",
        )


def retry_input(
    first: OrderInput, order: Order, failed_run: str, retry: int, shipping_queue: str
) -> OrderInput:
    """The failed run's input again, with what its row recorded since (the latest address),
    the retry's own payment, and today's shipping queue (deployment, not order data)."""
    return replace(
        first,
        shipping_task_queue=shipping_queue,
        # References no client id can take (app/orders/identity.py).
        payment_id=retry_reference(first.payment_id, retry),
        carrier_order=retry_reference(order.id, retry),
        retry=retry,
        address=Address(**order.address_json) if order.address_json else first.address,
        items=[LineItem(**i) for i in order.items_json] if order.items_json else first.items,
        retry_of_run_id=failed_run,
    )


async def first_input(
    client: Client, workflow_id: str, run_id: str | None
) -> tuple[OrderInput, str]:
    """What the failed run was started with (the first event of its history), and its id.

    The row knows the run only once RECEIVE succeeded; otherwise the latest run is it."""
    try:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        if run_id is None:
            run_id = (await handle.describe()).run_id
            handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        async for event in handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [inp] = await client.data_converter.decode(payloads, [OrderInput])
            assert isinstance(inp, OrderInput)
            return inp, run_id
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise Unavailable.temporal(err.message) from None
    raise OrderConflict(
        f"the failed run of {workflow_id} is past retention: start a new order",
        reason="past_retention",
    )


def reopen(order: Order, run_id: str, payment_id: str) -> None:
    order.state = OrderState.PENDING
    order.step = Step.RECEIVE
    order.run_id = run_id
    order.payment_id = payment_id
    order.reason = None
    order.closed_at = None
    order.settled_at = None
    order.cancel_requested = False
    order.tracking_number = None
    order.dispatch_requested_at = None
    order.updated_at = datetime.now(UTC).replace(tzinfo=None)


def retried_event(order_id: str, failed_run: str, run_id: str, payment_id: str) -> Event:
    return Event(
        order_id=order_id,
        type=EventType.RETRIED,
        payload_json={"previous_run_id": failed_run, "run_id": run_id, "payment_id": payment_id},
    )
