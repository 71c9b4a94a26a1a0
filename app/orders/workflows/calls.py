"""The activities OrderWorkflow calls, each with what it is told, its timeout and its retry
policy: the steps' (their failures are the workflow's to read), the gates behind a
caller's request, and the close with its refund."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from app.orders.activities import (
        ChangeActivities,
        CompensationActivities,
        IntakeActivities,
        PaymentActivities,
    )
    from app.orders.messages import (
        ActivityContext,
        Address,
        AddressChange,
        AddressChangeInput,
        CancelMarkInput,
        CancelRequest,
        ChargeInput,
        CloseInput,
        CloseOutcome,
        OrderInput,
        ReceiveInput,
        RefundInput,
        StepOutcome,
        ValidateInput,
        order_amount_cents,
    )

from app.orders.workflows.failures import OrderStopped, gate
from app.orders.workflows.order_state import Review, StepLog
from app.orders.workflows.policies import (
    CHARGE_TIMEOUT,
    CLOSE_RETRY,
    CLOSE_TIMEOUT,
    PATCH_REFUND_AFTER_CLOSE,
    RECEIVE_TIMEOUT,
    STEP_RETRY,
    VALIDATE_TIMEOUT,
)

InputT = TypeVar("InputT")


def context(order: OrderInput, with_faults: bool = True) -> ActivityContext:
    # Gates (cancel, address change) are bookkeeping, not external calls: no faults.
    return ActivityContext(
        order_id=order.order_id,
        fault_profile=order.fault_profile if with_faults else None,
        carrier_order=order.carrier_order,
        retry=order.retry,
    )


async def _step(
    method: Callable[[Any, InputT], Awaitable[StepOutcome]],
    arg: InputT,
    timeout: timedelta,
    cancellation: workflow.ActivityCancellationType = workflow.ActivityCancellationType.TRY_CANCEL,
) -> int:
    """Run a step's activity; the attempt that succeeded."""
    outcome = await workflow.execute_activity_method(
        method,
        arg,
        start_to_close_timeout=timeout,
        retry_policy=STEP_RETRY,
        cancellation_type=cancellation,
    )
    return outcome.attempt


async def receive(order: OrderInput, address: Address, deadline: datetime) -> int:
    info = workflow.info()
    receive = ReceiveInput(
        ctx=context(order),
        workflow_id=info.workflow_id,
        run_id=info.run_id,
        payment_id=order.payment_id,
        address=address,
        items=order.items,
        deadline_iso=deadline.isoformat(),
        started_at_iso=info.start_time.isoformat(),
        retry_of_run_id=order.retry_of_run_id,
    )
    return await _step(IntakeActivities.receive_order, receive, RECEIVE_TIMEOUT)


async def validate(order: OrderInput, address: Address) -> int:
    validate = ValidateInput(ctx=context(order), address=address, items=order.items)
    return await _step(IntakeActivities.validate_order, validate, VALIDATE_TIMEOUT)


async def charge(order: OrderInput, review: Review) -> int:
    approval = review.approval
    charge = ChargeInput(
        ctx=context(order),
        payment_id=order.payment_id,
        amount_cents=order_amount_cents(order.items),
        approved_by=approval.reviewer if approval else "unknown",
        approval_note=approval.note if approval else None,
        approved_at_iso=(review.approved_at or workflow.now()).isoformat(),
    )
    # A charge in flight must finish before the workflow decides whether to refund.
    wait = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
    return await _step(PaymentActivities.charge_payment, charge, CHARGE_TIMEOUT, wait)


async def mark_cancel_requested(order: OrderInput, req: CancelRequest) -> None:
    mark = CancelMarkInput(
        ctx=context(order, with_faults=False), reason=req.reason, requested_by=req.requested_by
    )
    await gate(ChangeActivities.mark_cancel_requested, mark)


async def apply_address_change(order: OrderInput, change: AddressChange) -> None:
    apply = AddressChangeInput(
        ctx=context(order, with_faults=False),
        address=change.address,
        requested_by=change.requested_by,
    )
    await gate(ChangeActivities.apply_address_change, apply)


async def close(
    order: OrderInput,
    stop: OrderStopped,
    step: str,
    steps: StepLog,
    address: Address,
    deadline: datetime,
) -> CloseOutcome:
    """Record the order's end (and compensate, in histories from before the refund moved
    out of CloseOrder); retried until it succeeds."""
    close = CloseInput(
        ctx=context(order),
        payment_id=order.payment_id,
        state=stop.state,
        reason=stop.reason,
        step=step,
        started_at_iso=workflow.info().start_time.isoformat(),
        # Versioned: histories recorded before this change refunded inside CloseOrder and
        # must replay that way.
        defer_refund=workflow.patched(PATCH_REFUND_AFTER_CLOSE),
        attempts=dict(steps.attempts),
        errors=list(steps.errors),
        address=address,
        items=order.items,
        deadline_iso=deadline.isoformat(),
    )
    return await workflow.execute_activity_method(
        CompensationActivities.close_order,
        close,
        start_to_close_timeout=CLOSE_TIMEOUT,
        retry_policy=CLOSE_RETRY,
    )


async def refund(order: OrderInput) -> CloseOutcome:
    """Refund a closed order's charge, retrying until the gateway takes it, however long."""
    return await workflow.execute_activity_method(
        CompensationActivities.refund_payment,
        RefundInput(ctx=context(order), payment_id=order.payment_id),
        start_to_close_timeout=CLOSE_TIMEOUT,
        retry_policy=CLOSE_RETRY,
    )
