"""ShippingWorkflow (child, shipping-tq): PreparePackage, then DispatchCarrier; tells the
parent `dispatch_failed` when it cannot dispatch, and fails with the same reason. An order
starts one per shipping attempt with `start_shipping`."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import VersioningBehavior
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from app.orders.activities import ShippingActivities
    from app.orders.messages import (
        ERR_DISPATCH_FAILED,
        ERR_ORDER_CANCELLED,
        SHIPPING_WORKFLOW,
        SIGNAL_DISPATCH_FAILED,
        ActivityContext,
        Address,
        DispatchFailure,
        DispatchInput,
        OrderInput,
        PrepareInput,
        ShippingInput,
        ShippingResult,
    )

from app.orders.workflows.failures import application_type, failure_message
from app.orders.workflows.policies import DISPATCH_TIMEOUT, PREPARE_TIMEOUT, STEP_RETRY


# Pinned, as its parent: the child runs on the parent's build.
@workflow.defn(name=SHIPPING_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class ShippingWorkflow:
    @workflow.run
    async def run(self, inp: ShippingInput) -> ShippingResult:
        ctx = ActivityContext(
            order_id=inp.order_id,
            fault_profile=inp.fault_profile,
            carrier_order=inp.carrier_order,
            retry=inp.retry,
        )
        try:
            await workflow.execute_activity_method(
                ShippingActivities.prepare_package,
                PrepareInput(ctx=ctx, shipping_attempt=inp.attempt),
                start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=STEP_RETRY,
            )
            out = await workflow.execute_activity_method(
                ShippingActivities.dispatch_carrier,
                DispatchInput(ctx=ctx, shipping_attempt=inp.attempt),
                start_to_close_timeout=DISPATCH_TIMEOUT,
                retry_policy=STEP_RETRY,
                # A dispatch in flight must settle before the parent decides what happened.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if is_cancelled_exception(err) or application_type(err) == ERR_ORDER_CANCELLED:
                raise ApplicationError(
                    "order was cancelled before dispatch", type=ERR_ORDER_CANCELLED
                ) from None
            reason = failure_message(err)
            parent = workflow.info().parent
            if parent is not None:
                await workflow.get_external_workflow_handle(
                    parent.workflow_id, run_id=parent.run_id
                ).signal(
                    SIGNAL_DISPATCH_FAILED, DispatchFailure(reason=reason, attempt=inp.attempt)
                )
            raise ApplicationError(reason, type=ERR_DISPATCH_FAILED, non_retryable=True) from None
        return ShippingResult(
            tracking_number=out.tracking_number,
            attempt=inp.attempt,
            dispatched_address=out.address,
        )


async def start_shipping(
    order: OrderInput, address: Address, attempt: int, deadline: datetime
) -> ShippingResult:
    """Ship an order (its attempt `attempt`) to `address` through a child ShippingWorkflow."""
    remaining = (deadline - workflow.now()).total_seconds()
    return await workflow.execute_child_workflow(
        ShippingWorkflow.run,
        ShippingInput(
            order_id=order.order_id,
            address=address,
            attempt=attempt,
            fault_profile=order.fault_profile,
            carrier_order=order.carrier_order,
            retry=order.retry,
        ),
        id=f"shipping-{order.order_id}-{attempt}",
        task_queue=order.shipping_task_queue,
        # Backstop only; the parent's deadline is what ends an order.
        execution_timeout=timedelta(seconds=max(remaining, 1.0) + 30),
    )
