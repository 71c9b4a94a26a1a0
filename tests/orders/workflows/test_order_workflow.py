"""OrderWorkflow paths on the time-skipping server, activities replaced by FakeShop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment

from app.orders.messages import (
    ERR_ORDER_CLOSED,
    ERR_ORDER_DISPATCHED,
    ERR_REVIEW_OVER,
    SIGNAL_APPROVE,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    LineItem,
    OrderResult,
)
from app.orders.workflows import OrderWorkflow
from tests.orders.workflows.fakes import (
    NEW_ADDRESS,
    FakeShop,
    order_input,
    running_shop,
    start_order,
)

pytestmark = pytest.mark.unit


async def _failure(handle: object) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()  # type: ignore[attr-defined]
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def _wait_step(handle: object, step: str) -> None:
    for _ in range(200):
        status = await handle.query(OrderWorkflow.status)  # type: ignore[attr-defined]
        if status.step == step:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"order never reached {step}")


async def _refused(handle: object, update: Any, arg: Any) -> ApplicationError:
    """The error the workflow refused the update with."""
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(update, arg)  # type: ignore[attr-defined]
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def _wait_event(handle: WorkflowHandle[Any, Any], kind: EventType.ValueType) -> None:
    for _ in range(250):
        async for event in handle.fetch_history_events():
            if event.event_type == kind:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {EventType.Name(kind)} in {handle.id}")


@asynccontextmanager
async def _held_in(
    env: WorkflowEnvironment, step: str, **start: Any
) -> AsyncIterator[tuple[FakeShop, WorkflowHandle[OrderWorkflow, Any]]]:
    """An approved order whose `step` activity has started and waits for its release."""
    shop = FakeShop()
    shop.hold(step)
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq, **start)
        await handle.signal(SIGNAL_APPROVE)
        await shop.entered[step].wait()
        yield shop, handle


async def test_happy_path(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        await handle.signal(SIGNAL_APPROVE, ApproveRequest(reviewer="alice"))
        result: OrderResult = await handle.result()
        status = await handle.query(OrderWorkflow.status)
    assert result.state == "COMPLETED"
    assert result.tracking_number == "TRK1"
    assert shop.calls == ["RECEIVE", "VALIDATE", "PAY", "PREPARE", "DISPATCH"]
    assert shop.charges == 1 and shop.refunds == 0
    assert status.state == "COMPLETED" and status.approved_by == "alice"
    assert status.attempts == {"RECEIVE": 1, "VALIDATE": 1, "PAY": 1, "SHIP": 1}


async def test_approval_before_review_is_kept(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    shop.hold("RECEIVE")
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        await shop.entered["RECEIVE"].wait()
        await handle.signal(SIGNAL_APPROVE)  # before VALIDATE and MANUAL_REVIEW
        shop.release("RECEIVE")
        result = await handle.result()
    assert result.state == "COMPLETED"


async def test_review_timeout_cancels_without_charge(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        result = await handle.result()  # time skips past the 30 s review wait
    assert (result.state, result.reason) == ("CANCELLED", "review_timeout")
    assert shop.charges == 0 and "PAY" not in shop.calls
    assert shop.closed_state == "CANCELLED"


@pytest.mark.parametrize("step", ["RECEIVE", "VALIDATE", "MANUAL_REVIEW", "PAY", "PREPARE"])
async def test_cancel_during_each_step(env: WorkflowEnvironment, step: str) -> None:
    shop = FakeShop()
    if step != "MANUAL_REVIEW":
        shop.hold(step)
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        if step in ("PAY", "PREPARE"):
            await handle.signal(SIGNAL_APPROVE)
        if step == "MANUAL_REVIEW":
            await _wait_step(handle, "MANUAL_REVIEW")
        else:
            await shop.entered[step].wait()
        # The cancel is accepted while the step is still in flight (outside SHIP at once;
        # in SHIP through MarkCancelRequested, which is never held), then the step ends.
        status = await handle.execute_update(
            OrderWorkflow.cancel, CancelRequest(reason="customer_request")
        )
        assert status.cancel_requested
        if step != "MANUAL_REVIEW":
            shop.release(step)
        result = await handle.result()
    assert (result.state, result.reason) == ("CANCELLED", "customer_request")
    assert shop.dispatched_address is None
    charged_before_cancel = step in ("PAY", "PREPARE")
    assert shop.charges == (1 if charged_before_cancel else 0)
    assert shop.refunds == (1 if charged_before_cancel else 0)
    assert result.payment_status == ("refunded" if charged_before_cancel else "none")


async def test_cancel_after_dispatch_is_refused(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq, deadline_s=3600)
        await handle.signal(SIGNAL_APPROVE)
        await handle.result()
        # The run is closed; the refusal comes from the update's validator path.
        with pytest.raises(Exception):  # noqa: B017 - closed workflows reject any update
            await handle.execute_update(OrderWorkflow.cancel, CancelRequest())
    assert shop.refunds == 0


@pytest.mark.parametrize(
    ("update", "arg"),
    [
        (OrderWorkflow.cancel, CancelRequest()),
        (OrderWorkflow.change_address, AddressChange(address=NEW_ADDRESS)),
    ],
    ids=["cancel", "change_address"],
)
async def test_update_during_dispatch_refused_once_carrier_has_it(
    env: WorkflowEnvironment, update: Any, arg: Any
) -> None:
    async with _held_in(env, "DISPATCH") as (shop, handle):
        # The carrier takes the parcel first (the real activity holds the row lock).
        shop.dispatched_address = shop.address
        assert (await _refused(handle, update, arg)).type == ERR_ORDER_DISPATCHED
        shop.dispatched_address = None
        shop.release("DISPATCH")
        result = await handle.result()
    assert result.state == "COMPLETED" and shop.refunds == 0
    assert shop.dispatched_address != NEW_ADDRESS


async def test_cancel_marked_as_the_carrier_refuses_is_accepted(env: WorkflowEnvironment) -> None:
    """The row is marked cancelled and the carrier refuses the parcel (OrderCancelled)
    before the cancel's handler hears back: the order waits for the handler to accept it."""
    async with _held_in(env, "DISPATCH") as (shop, handle):
        shop.hold("MARK_CANCEL")
        cancel = asyncio.create_task(handle.execute_update(OrderWorkflow.cancel, CancelRequest()))
        await shop.entered["MARK_CANCEL"].wait()
        shop.release("DISPATCH")
        child = env.client.get_workflow_handle(f"shipping-{handle.id.removeprefix('order-')}-1")
        with pytest.raises(WorkflowFailureError):
            await child.result()
        shop.release("MARK_CANCEL")
        assert (await cancel).cancel_requested
        result = await handle.result()
    assert (result.state, result.reason) == ("CANCELLED", "customer_request")
    assert shop.refunds == 1 and shop.dispatched_address is None


async def test_cancel_refused_when_the_order_ends_while_its_gate_runs(
    env: WorkflowEnvironment,
) -> None:
    """The first decision to end stands: a Temporal-level cancel decided while the cancel
    update waited on MarkCancelRequested, so the update is refused as closed."""
    async with _held_in(env, "DISPATCH") as (shop, handle):
        shop.hold("MARK_CANCEL")
        cancel = asyncio.create_task(_refused(handle, OrderWorkflow.cancel, CancelRequest()))
        await shop.entered["MARK_CANCEL"].wait()
        await handle.cancel()
        # The run has decided once it asks the shipping child to cancel.
        await _wait_event(
            handle, EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
        )
        shop.release("MARK_CANCEL")
        assert (await cancel).type == ERR_ORDER_CLOSED
        shop.release("DISPATCH")
        result = await handle.result()
    assert (result.state, result.reason) == ("CANCELLED", "workflow_cancelled")
    assert shop.refunds == 1 and shop.dispatched_address is None


async def test_address_update_before_dispatch_is_shipped(env: WorkflowEnvironment) -> None:
    async with _held_in(env, "PREPARE") as (shop, handle):
        status = await handle.execute_update(
            OrderWorkflow.change_address, AddressChange(address=NEW_ADDRESS)
        )
        assert status.address == NEW_ADDRESS
        shop.release("PREPARE")
        result = await handle.result()
    assert result.state == "COMPLETED"
    assert shop.dispatched_address == NEW_ADDRESS


async def test_invalid_address_update_rejected_by_validator(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        bad = AddressChange(address=NEW_ADDRESS.__class__(**{**NEW_ADDRESS.as_dict(), "zip": ""}))
        assert "zip" in str((await _refused(handle, OrderWorkflow.change_address, bad)).details)
        await handle.signal(SIGNAL_APPROVE)
        assert (await handle.result()).state == "COMPLETED"


async def test_dispatch_failure_then_retry_succeeds(env: WorkflowEnvironment) -> None:
    shop = FakeShop(failing_dispatch_attempts={1})
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        await handle.signal(SIGNAL_APPROVE)
        result = await handle.result()
        status = await handle.query(OrderWorkflow.status)
    assert result.state == "COMPLETED"
    assert status.shipping_attempts == 2
    assert any("carrier unavailable" in e.message for e in status.errors)
    assert shop.refunds == 0


async def test_dispatch_failures_exhausted_fail_and_refund(env: WorkflowEnvironment) -> None:
    shop = FakeShop(failing_dispatch_attempts={1, 2, 3})
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        await handle.signal(SIGNAL_APPROVE)
        err = await _failure(handle)
    assert err.type == "OrderFailed" and "shipping_failed" in str(err)
    assert shop.charges == 1 and shop.refunds == 1
    assert shop.closed_state == "FAILED"


async def test_deadline_exceeded_fails_and_compensates(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    async with running_shop(env.client, shop) as (oq, sq):
        # Review wait longer than the order's deadline: the deadline fires first.
        handle = await start_order(env.client, oq, sq, review_timeout_s=120, deadline_s=60)
        err = await _failure(handle)
    assert "deadline_exceeded" in str(err)
    assert shop.closed_state == "FAILED" and shop.closed_reason == "deadline_exceeded"


async def test_deadline_after_charge_refunds(env: WorkflowEnvironment) -> None:
    # The deadline (8 s) passes while the held package is being prepared: its three
    # attempts (5 s timeout, 1 s and 2 s backoff) end 18 s after it starts. The clock
    # runs in real time while an activity is held, so the deadline must also leave a
    # slow machine room to reach PREPARE (3 s left a loaded one little).
    async with _held_in(env, "PREPARE", deadline_s=8) as (shop, handle):
        err = await _failure(handle)
        shop.release("PREPARE")
    assert "deadline_exceeded" in str(err)
    assert shop.charges == 1 and shop.refunds == 1 and shop.dispatched_address is None


async def test_invalid_order_fails_fast_without_retries(env: WorkflowEnvironment) -> None:
    shop = FakeShop(invalid=True)
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        err = await _failure(handle)
    assert "invalid_order" in str(err)
    assert shop.calls.count("VALIDATE") == 1 and "PAY" not in shop.calls


async def test_failing_order_refuses_requests_while_it_closes(env: WorkflowEnvironment) -> None:
    """Once a step's failure decides the end, nothing is answered as accepted: a cancel
    taken then would be told "cancelled" for an order that ends FAILED."""
    shop = FakeShop(invalid=True)
    shop.hold("CLOSE")
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        await shop.entered["CLOSE"].wait()
        for update, arg in (
            (OrderWorkflow.cancel, CancelRequest()),
            (OrderWorkflow.approve, ApproveRequest(reviewer="bob")),
            (OrderWorkflow.change_address, AddressChange(address=NEW_ADDRESS)),
        ):
            assert (await _refused(handle, update, arg)).type == ERR_ORDER_CLOSED
        shop.release("CLOSE")
        err = await _failure(handle)
    assert "invalid_order" in str(err) and shop.closed_state == "FAILED"


async def test_free_order_is_not_due_anything(env: WorkflowEnvironment) -> None:
    async with running_shop(env.client, FakeShop()) as (oq, sq):
        handle = await start_order(
            env.client, oq, sq, items=[LineItem(sku="FREE", qty=2, unit_price_cents=0)]
        )
        await handle.signal(SIGNAL_APPROVE)
        result: OrderResult = await handle.result()
    assert (result.state, result.payment_status) == ("COMPLETED", "not_due")


async def test_approval_after_review_refused(env: WorkflowEnvironment) -> None:
    async with _held_in(env, "PAY") as (shop, handle):
        err = await _refused(handle, OrderWorkflow.approve, ApproveRequest(reviewer="bob"))
        assert err.type == ERR_REVIEW_OVER
        shop.release("PAY")
        assert (await handle.result()).state == "COMPLETED"


async def test_duplicate_start_rejected(env: WorkflowEnvironment) -> None:
    shop = FakeShop()
    async with running_shop(env.client, shop) as (oq, sq):
        handle = await start_order(env.client, oq, sq)
        order_id = handle.id.removeprefix("order-")

        async def start_again() -> None:
            await env.client.start_workflow(
                OrderWorkflow.run,
                order_input(order_id, sq),
                id=handle.id,
                task_queue=oq,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )

        with pytest.raises(WorkflowAlreadyStartedError):
            await start_again()
        await handle.signal(SIGNAL_APPROVE)
        await handle.result()
        # Closed runs are protected too.
        with pytest.raises(WorkflowAlreadyStartedError):
            await start_again()


async def test_temporal_cancellation_still_compensates(env: WorkflowEnvironment) -> None:
    async with _held_in(env, "PREPARE") as (shop, handle):
        await handle.cancel()
        result = await handle.result()
        shop.release("PREPARE")
    assert (result.state, result.reason) == ("CANCELLED", "workflow_cancelled")
    assert shop.refunds == 1 and shop.dispatched_address is None
