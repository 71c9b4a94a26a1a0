"""In-memory stand-ins for the activities, with the same names and types as the real ones.

They model just enough of the database to check the workflow's decisions: whether a charge
exists, whether it was refunded, whether the carrier dispatched and with which address.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from app.orders.messages import (
    ERR_INVALID_ORDER,
    ERR_ORDER_CANCELLED,
    ERR_ORDER_DISPATCHED,
    Address,
    AddressChangeInput,
    CancelMarkInput,
    ChargeInput,
    CloseInput,
    CloseOutcome,
    DispatchInput,
    DispatchOutcome,
    OrderInput,
    PrepareInput,
    ReceiveInput,
    RefundInput,
    StepOutcome,
    ValidateInput,
)
from app.orders.workflows import OrderWorkflow, ShippingWorkflow

ADDRESS = Address(street="123 Main St", city="Test City", state="TS", zip="12345", country="US")
NEW_ADDRESS = Address(street="456 New St", city="New City", state="NS", zip="54321", country="US")


@dataclass
class FakeShop:
    """The fake world: flags to steer it and a record of what happened."""

    invalid: bool = False
    # Shipping attempts (1-based) whose dispatch fails every retry.
    failing_dispatch_attempts: set[int] = field(default_factory=set)
    # Steps whose activity waits until released, so a test can act "during" a step.
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    entered: dict[str, asyncio.Event] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    charges: int = 0
    refunds: int = 0
    charged: bool = False
    refunded: bool = False
    cancel_requested: bool = False
    dispatched_address: Address | None = None
    address: Address = field(default_factory=lambda: ADDRESS)
    closed_state: str | None = None
    closed_reason: str | None = None

    def hold(self, step: str) -> None:
        self.holds[step] = asyncio.Event()
        self.entered[step] = asyncio.Event()

    def release(self, step: str) -> None:
        self.holds[step].set()

    async def _step(self, step: str) -> int:
        attempt = activity.info().attempt
        self.calls.append(step)
        self.attempts[step] = attempt
        if step in self.holds:
            self.entered[step].set()
            await self.holds[step].wait()
        return attempt

    def activities(self) -> list[Callable[..., Any]]:
        shop = self

        @activity.defn(name="ReceiveOrder")
        async def receive(inp: ReceiveInput) -> StepOutcome:
            shop.address = inp.address
            return StepOutcome(attempt=await shop._step("RECEIVE"))

        @activity.defn(name="ValidateOrder")
        async def validate(inp: ValidateInput) -> StepOutcome:
            attempt = await shop._step("VALIDATE")
            if shop.invalid:
                raise ApplicationError(
                    "order is invalid", type=ERR_INVALID_ORDER, non_retryable=True
                )
            return StepOutcome(attempt=attempt)

        @activity.defn(name="ChargePayment")
        async def charge(inp: ChargeInput) -> StepOutcome:
            attempt = await shop._step("PAY")
            if not shop.charged:
                shop.charges += 1
            shop.charged = True
            return StepOutcome(attempt=attempt)

        @activity.defn(name="ApplyAddressChange")
        async def apply_address(inp: AddressChangeInput) -> None:
            if shop.dispatched_address is not None:
                raise ApplicationError("dispatched", type=ERR_ORDER_DISPATCHED, non_retryable=True)
            shop.address = inp.address

        @activity.defn(name="MarkCancelRequested")
        async def mark_cancel(inp: CancelMarkInput) -> None:
            if shop.dispatched_address is not None:
                raise ApplicationError("dispatched", type=ERR_ORDER_DISPATCHED, non_retryable=True)
            shop.cancel_requested = True
            if "MARK_CANCEL" in shop.holds:  # marked, but the workflow has not heard yet
                shop.entered["MARK_CANCEL"].set()
                await shop.holds["MARK_CANCEL"].wait()

        def _refund() -> bool:
            if shop.charged and not shop.refunded:
                shop.refunded = True
                shop.refunds += 1
                return True
            return False

        def _payment_status() -> str:
            return "refunded" if shop.refunded else ("charged" if shop.charged else "none")

        @activity.defn(name="CloseOrder")
        async def close(inp: CloseInput) -> CloseOutcome:
            if "CLOSE" in shop.holds:
                shop.entered["CLOSE"].set()
                await shop.holds["CLOSE"].wait()
            if shop.dispatched_address is not None:
                return CloseOutcome(state="COMPLETED", payment_status="charged", refunded=False)
            shop.closed_state, shop.closed_reason = inp.state, inp.reason
            pending = inp.defer_refund and shop.charged and not shop.refunded
            refunded = False if inp.defer_refund else _refund()
            return CloseOutcome(
                state=inp.state,
                payment_status=_payment_status(),
                refunded=refunded,
                refund_pending=pending,
            )

        @activity.defn(name="RefundPayment")
        async def refund(inp: RefundInput) -> CloseOutcome:
            refunded = _refund()
            status = _payment_status()
            return CloseOutcome(
                state=shop.closed_state or "", payment_status=status, refunded=refunded
            )

        @activity.defn(name="PreparePackage")
        async def prepare(inp: PrepareInput) -> StepOutcome:
            return StepOutcome(attempt=await shop._step("PREPARE"))

        @activity.defn(name="DispatchCarrier")
        async def dispatch(inp: DispatchInput) -> DispatchOutcome:
            attempt = await shop._step("DISPATCH")
            if shop.cancel_requested:
                raise ApplicationError("cancelled", type=ERR_ORDER_CANCELLED, non_retryable=True)
            if inp.shipping_attempt in shop.failing_dispatch_attempts:
                raise ApplicationError(
                    "carrier unavailable", type="SimulatedFailure", non_retryable=True
                )
            shop.dispatched_address = shop.address
            return DispatchOutcome(attempt=attempt, tracking_number="TRK1", address=shop.address)

        return [
            receive,
            validate,
            charge,
            apply_address,
            mark_cancel,
            close,
            refund,
            prepare,
            dispatch,
        ]


@asynccontextmanager
async def running_shop(client: Client, shop: FakeShop) -> AsyncIterator[tuple[str, str]]:
    """Workers for both queues (unique per test) with the fake activities."""
    orders_q, shipping_q = f"orders-{uuid.uuid4()}", f"shipping-{uuid.uuid4()}"
    acts = shop.activities()
    async with (
        Worker(client, task_queue=orders_q, workflows=[OrderWorkflow], activities=acts),
        Worker(client, task_queue=shipping_q, workflows=[ShippingWorkflow], activities=acts),
    ):
        yield orders_q, shipping_q


def order_input(order_id: str, shipping_q: str, **overrides: Any) -> OrderInput:
    return OrderInput(
        order_id=order_id,
        payment_id=f"pmt-{order_id}",
        address=ADDRESS,
        shipping_task_queue=shipping_q,
        **overrides,
    )


async def start_order(
    client: Client, orders_q: str, shipping_q: str, **overrides: Any
) -> WorkflowHandle[OrderWorkflow, Any]:
    order_id = f"t-{uuid.uuid4().hex[:12]}"
    return await client.start_workflow(
        OrderWorkflow.run,
        order_input(order_id, shipping_q, **overrides),
        id=f"order-{order_id}",
        task_queue=orders_q,
    )
