"""OrderWorkflow (parent, orders-tq) and ShippingWorkflow (child, shipping-tq).

Rules live here; effects live in activities. The database row of an order is the arbiter
for "has the carrier been dispatched": DispatchCarrier, cancel and address changes all lock
it, so a cancel or address change either lands before dispatch or is refused.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    RetryState,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from app.orders.activities import OrderActivities
    from app.orders.models import (
        ERR_INVALID_ORDER,
        ERR_ORDER_CANCELLED,
        ERR_ORDER_CLOSED,
        ERR_ORDER_DISPATCHED,
        ERR_ORDER_FAILED,
        ERR_PAYMENT_CONFLICT,
        ERR_REVIEW_OVER,
        ORDER_DEADLINE_S,
        ORDER_WORKFLOW,
        QUERY_STATUS,
        REVIEW_TIMEOUT_S,
        SIGNAL_APPROVE,
        SIGNAL_CANCEL,
        SIGNAL_DISPATCH_FAILED,
        SIGNAL_UPDATE_ADDRESS,
        TERMINAL_STATES,
        UPDATE_ADDRESS,
        UPDATE_APPROVE,
        UPDATE_CANCEL,
        ActivityContext,
        Address,
        AddressChange,
        AddressChangeInput,
        ApproveRequest,
        CancelMarkInput,
        CancelRequest,
        ChargeInput,
        CloseInput,
        DispatchFailure,
        OrderInput,
        OrderResult,
        OrderState,
        OrderStatus,
        PaymentStatus,
        ReceiveInput,
        RefundInput,
        ShippingInput,
        ShippingResult,
        Step,
        StepError,
        StepOutcome,
        ValidateInput,
        order_amount_cents,
    )
    from app.orders.search import ORDER_STATE, upsert_search_attributes
    from app.orders.validation import address_problems

from app.orders.workflows.failures import OrderStopped, application_type, failure_message, gate
from app.orders.workflows.policies import (
    CHARGE_TIMEOUT,
    CLOSE_RETRY,
    CLOSE_TIMEOUT,
    MAX_ERRORS_KEPT,
    MAX_SHIPPING_ATTEMPTS,
    PATCH_REFUND_AFTER_CLOSE,
    PATCH_SEARCH_ATTRIBUTES,
    RECEIVE_TIMEOUT,
    STEP_RETRY,
    VALIDATE_TIMEOUT,
)
from app.orders.workflows.shipping import ShippingWorkflow

# The input of an activity the workflow calls.
InputT = TypeVar("InputT")


@workflow.defn(name=ORDER_WORKFLOW)
class OrderWorkflow:
    # The input is taken at construction so an update or query that arrives in the very
    # first activation (start immediately followed by approve) already sees the order.
    #
    # Where the order is: `_state` (the diagram's states; terminal once closed) and `_step`
    # (the step running or last run). What is decided but not yet done: `_stop`, why the
    # order is ending (cancel, deadline, failure) once that is decided, and `_cancel`, the
    # cancel request that was accepted. Everything else is what the status query reports.
    @workflow.init
    def __init__(self, inp: OrderInput) -> None:
        self._inp = inp
        self._state = OrderState.PENDING
        self._step: Step | None = Step.RECEIVE
        self._approval: ApproveRequest | None = None
        self._approved_at: datetime | None = None
        self._cancel: CancelRequest | None = None
        self._stop: OrderStopped | None = None
        self._payment_status = PaymentStatus.NONE
        self._attempts: dict[str, int] = {}
        self._errors: list[StepError] = []
        self._dispatch_failure: DispatchFailure | None = None
        self._shipping_attempts = 0
        self._tracking_number: str | None = None
        self._reason: str | None = None
        self._updated_at: datetime | None = workflow.now()
        self._review_deadline: datetime | None = None
        self._address: Address | None = inp.address
        deadline_s = inp.deadline_s if inp.deadline_s is not None else ORDER_DEADLINE_S
        self._deadline = workflow.info().start_time + timedelta(seconds=deadline_s)

    # --- main flow ---------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderResult:
        deadline = self._deadline
        self._log("order started", deadline=deadline.isoformat())

        business = asyncio.create_task(self._fulfil())
        remaining = max((deadline - workflow.now()).total_seconds(), 0.001)
        try:
            await workflow.wait_condition(
                lambda: business.done() or self._stop is not None, timeout=remaining
            )
        except builtins.TimeoutError:
            self._stop = OrderStopped(OrderState.FAILED, "deadline_exceeded")
            self._log("deadline exceeded", step=str(self._step))
        except asyncio.CancelledError:
            # A Temporal-level cancel (UI button, `temporal workflow cancel`): treated like
            # cancel_order, so compensation still runs.
            self._stop = OrderStopped(OrderState.CANCELLED, "workflow_cancelled")
            self._log("workflow cancellation requested")

        if not business.done():
            business.cancel()
        end = await self._business_outcome(business)
        result = await self._close(end)
        await workflow.wait_condition(workflow.all_handlers_finished)
        if result.state == OrderState.FAILED:
            # Compensation is done; fail the execution so the Temporal UI shows it.
            raise ApplicationError(
                f"order {inp.order_id} failed: {result.reason}",
                {"reason": result.reason, "payment_status": result.payment_status},
                type=ERR_ORDER_FAILED,
                non_retryable=True,
            )
        return result

    async def _business_outcome(self, business: asyncio.Task[None]) -> OrderStopped | None:
        """None when the order shipped, otherwise why it stopped."""
        try:
            await business
        except OrderStopped as stopped:
            return self._stop or self._end(stopped.state, stopped.reason)
        except asyncio.CancelledError:
            pass
        except (ActivityError, ChildWorkflowError) as err:
            if self._stop is None and not is_cancelled_exception(err):
                raise
        return self._stop

    async def _fulfil(self) -> None:
        inp = self._inp
        ctx = self._ctx()

        self._enter(Step.RECEIVE)
        info = workflow.info()
        await self._step_activity(
            Step.RECEIVE,
            OrderActivities.receive_order,
            ReceiveInput(
                ctx=ctx,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                payment_id=inp.payment_id,
                address=self._current_address(),
                items=inp.items,
                deadline_iso=self._deadline.isoformat(),
                started_at_iso=info.start_time.isoformat(),
                retry_of_run_id=inp.retry_of_run_id,
            ),
            RECEIVE_TIMEOUT,
        )
        self._set_state(OrderState.RECEIVED)
        self._checkpoint()

        self._enter(Step.VALIDATE)
        await self._step_activity(
            Step.VALIDATE,
            OrderActivities.validate_order,
            ValidateInput(ctx=ctx, address=self._current_address(), items=inp.items),
            VALIDATE_TIMEOUT,
        )
        self._set_state(OrderState.VALIDATED)
        self._checkpoint()

        self._enter(Step.MANUAL_REVIEW)
        review_s = inp.review_timeout_s if inp.review_timeout_s is not None else REVIEW_TIMEOUT_S
        self._review_deadline = workflow.now() + timedelta(seconds=review_s)
        try:
            await workflow.wait_condition(lambda: self._approval is not None, timeout=review_s)
        except builtins.TimeoutError:
            self._log("review timed out")
            raise self._end(OrderState.CANCELLED, "review_timeout") from None
        self._checkpoint()

        self._enter(Step.PAY)
        amount_cents = order_amount_cents(inp.items)
        await self._step_activity(
            Step.PAY,
            OrderActivities.charge_payment,
            ChargeInput(
                ctx=ctx,
                payment_id=inp.payment_id,
                amount_cents=amount_cents,
                approved_by=self._approval.reviewer if self._approval else "unknown",
                approval_note=self._approval.note if self._approval else None,
                approved_at_iso=(self._approved_at or workflow.now()).isoformat(),
            ),
            CHARGE_TIMEOUT,
            # A charge in flight must finish before we decide whether to refund.
            wait_for_cancel=True,
        )
        # A free order is not charged: PAY recorded that nothing was due.
        self._payment_status = PaymentStatus.CHARGED if amount_cents else PaymentStatus.NOT_DUE
        self._set_state(OrderState.PAID)
        self._checkpoint()

        self._enter(Step.SHIP)
        await self._ship(inp)

    async def _ship(self, inp: OrderInput) -> None:
        while True:
            self._shipping_attempts += 1
            attempt = self._shipping_attempts
            self._dispatch_failure = None
            self._checkpoint()
            remaining = (self._deadline - workflow.now()).total_seconds()
            try:
                result: ShippingResult = await workflow.execute_child_workflow(
                    ShippingWorkflow.run,
                    ShippingInput(
                        order_id=inp.order_id,
                        address=self._current_address(),
                        attempt=attempt,
                        fault_profile=inp.fault_profile,
                        carrier_order=inp.carrier_order,
                        retry=inp.retry,
                    ),
                    id=f"shipping-{inp.order_id}-{attempt}",
                    task_queue=inp.shipping_task_queue,
                    # Backstop only; the parent's deadline is what ends an order.
                    execution_timeout=timedelta(seconds=max(remaining, 1.0) + 30),
                )
            except ChildWorkflowError as err:
                if self._stop is not None or is_cancelled_exception(err):
                    raise
                if application_type(err) == ERR_ORDER_CANCELLED:
                    # The cancel handler marked the row; let it finish accepting the cancel.
                    await workflow.wait_condition(lambda: self._stop is not None)
                    raise
                reason = (
                    self._dispatch_failure.reason
                    if self._dispatch_failure
                    else failure_message(err)
                )
                self._record_error(Step.SHIP, attempt, f"shipping attempt {attempt}: {reason}")
                self._log("shipping failed", attempt=attempt, reason=reason)
                if attempt >= MAX_SHIPPING_ATTEMPTS or self._deadline <= workflow.now():
                    raise self._end(OrderState.FAILED, "shipping_failed") from None
                continue
            self._tracking_number = result.tracking_number
            self._address = result.dispatched_address
            self._attempts[Step.SHIP] = attempt
            self._set_state(OrderState.COMPLETED)
            return

    async def _close(self, stop: OrderStopped | None) -> OrderResult:
        inp = self._inp
        if stop is None:
            return OrderResult(
                order_id=inp.order_id,
                state=OrderState.COMPLETED,
                tracking_number=self._tracking_number,
                payment_status=self._payment_status,
            )
        self._log("closing order", state=str(stop.state), reason=stop.reason)
        outcome = await workflow.execute_activity_method(
            OrderActivities.close_order,
            CloseInput(
                ctx=self._ctx(),
                payment_id=inp.payment_id,
                state=stop.state,
                reason=stop.reason,
                step=self._step,
                started_at_iso=workflow.info().start_time.isoformat(),
                # Versioned: histories recorded before this change refunded inside
                # CloseOrder and must replay that way.
                defer_refund=workflow.patched(PATCH_REFUND_AFTER_CLOSE),
                attempts=dict(self._attempts),
                errors=list(self._errors),
                address=self._current_address(),
                items=inp.items,
                deadline_iso=self._deadline.isoformat(),
            ),
            start_to_close_timeout=CLOSE_TIMEOUT,
            retry_policy=CLOSE_RETRY,
        )
        self._payment_status = PaymentStatus(outcome.payment_status)
        # The database may know better: a dispatch that committed wins over a late stop.
        final = OrderState(outcome.state)
        self._reason = None if final == OrderState.COMPLETED else stop.reason
        self._set_state(final)
        if outcome.refund_pending:
            # The order is already closed in the database; the refund retries until the
            # gateway takes it, however long that is.
            refunded = await workflow.execute_activity_method(
                OrderActivities.refund_payment,
                RefundInput(
                    ctx=self._ctx(),
                    payment_id=inp.payment_id,
                ),
                start_to_close_timeout=CLOSE_TIMEOUT,
                retry_policy=CLOSE_RETRY,
            )
            self._payment_status = PaymentStatus(refunded.payment_status)
            outcome.refunded = refunded.refunded
        if outcome.refunded:
            self._log("payment refunded", payment_id=inp.payment_id)
        return OrderResult(
            order_id=inp.order_id,
            state=final,
            reason=self._reason,
            tracking_number=self._tracking_number,
            payment_status=self._payment_status,
        )

    async def _step_activity(
        self,
        step: Step,
        method: Callable[[Any, InputT], Awaitable[StepOutcome]],
        arg: InputT,
        timeout: timedelta,
        *,
        wait_for_cancel: bool = False,
    ) -> StepOutcome:
        try:
            out = await workflow.execute_activity_method(
                method,
                arg,
                start_to_close_timeout=timeout,
                retry_policy=STEP_RETRY,
                cancellation_type=(
                    workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                    if wait_for_cancel
                    else workflow.ActivityCancellationType.TRY_CANCEL
                ),
            )
        except ActivityError as err:
            if self._stop is not None or is_cancelled_exception(err):
                raise
            message = failure_message(err)
            # Retries used up: every attempt ran. Otherwise (a refusal, non-retryable) the
            # attempt that failed recorded itself with its number before we heard of it.
            exhausted = err.retry_state in (RetryState.MAXIMUM_ATTEMPTS_REACHED, RetryState.TIMEOUT)
            attempts = STEP_RETRY.maximum_attempts if exhausted else 1
            self._attempts[step] = max(self._attempts.get(step, 0), attempts)
            self._record_error(step, attempts, message)
            self._log("step failed", step=str(step), error=message)
            kind = application_type(err)
            if kind == ERR_INVALID_ORDER:
                raise self._end(OrderState.FAILED, "invalid_order") from None
            if kind == ERR_PAYMENT_CONFLICT:
                raise self._end(OrderState.FAILED, "payment_id_in_use") from None
            raise self._end(OrderState.FAILED, f"{step.lower()}_failed") from None
        self._attempts[step] = out.attempt
        return out

    # --- signals (the guide's names) ---------------------------------------------------

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve_order(self, req: ApproveRequest | None = None) -> None:
        if self._step_past_review():
            self._log("approval ignored: review is over")
            return
        self._accept_approval(req or ApproveRequest())

    @workflow.signal(name=SIGNAL_CANCEL)
    async def cancel_order(self, req: CancelRequest | None = None) -> None:
        req = req or CancelRequest()
        try:
            self._validate_cancel(req)
            await self._accept_cancel(req)
        except ApplicationError as refused:
            self._log("cancel refused", reason=str(refused))

    @workflow.signal(name=SIGNAL_UPDATE_ADDRESS)
    async def update_address(self, change: AddressChange | Address) -> None:
        if isinstance(change, Address):
            change = AddressChange(address=change)
        try:
            self._validate_address_change(change)
            await self._accept_address(change)
        except ApplicationError as refused:
            self._log("address change refused", reason=str(refused))

    @workflow.signal(name=SIGNAL_DISPATCH_FAILED)
    def dispatch_failed(self, failure: DispatchFailure) -> None:
        self._dispatch_failure = failure
        self._log("dispatch failed", reason=failure.reason, attempt=failure.attempt)

    # --- updates: the same requests, with a synchronous answer ---------------------------

    @workflow.update(name=UPDATE_APPROVE)
    def approve(self, req: ApproveRequest) -> OrderStatus:
        self._accept_approval(req)
        return self.status()

    @approve.validator
    def _validate_approve(self, req: ApproveRequest) -> None:
        if self._is_closed() or self._stop is not None:
            raise ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)
        if self._step_past_review():
            raise ApplicationError("manual review is already over", type=ERR_REVIEW_OVER)

    @workflow.update(name=UPDATE_CANCEL)
    async def cancel(self, req: CancelRequest) -> OrderStatus:
        await self._accept_cancel(req)
        return self.status()

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        if self._is_closed() or (self._stop is not None and self._cancel is None):
            raise ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)
        if self._tracking_number is not None:
            raise ApplicationError("order was already dispatched", type=ERR_ORDER_DISPATCHED)

    @workflow.update(name=UPDATE_ADDRESS)
    async def change_address(self, change: AddressChange) -> OrderStatus:
        await self._accept_address(change)
        return self.status()

    @change_address.validator
    def _validate_address_change(self, change: AddressChange) -> None:
        if self._is_closed() or self._stop is not None:
            raise ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)
        if self._tracking_number is not None:
            raise ApplicationError("order was already dispatched", type=ERR_ORDER_DISPATCHED)
        problems = address_problems(change.address.as_dict())
        if problems:
            raise ApplicationError(
                "invalid address", problems, type=ERR_INVALID_ORDER, non_retryable=True
            )

    # --- query -------------------------------------------------------------------------

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> OrderStatus:
        inp = self._inp
        info = workflow.info()
        return OrderStatus(
            order_id=inp.order_id,
            workflow_id=info.workflow_id,
            state=self._state,
            step=self._step,
            address=self._current_address(),
            payment_id=inp.payment_id,
            payment_status=self._payment_status,
            amount_cents=order_amount_cents(inp.items),
            attempts=dict(self._attempts),
            errors=list(self._errors),
            created_at=info.start_time.isoformat(),
            updated_at=(self._updated_at or info.start_time).isoformat(),
            deadline_at=self._deadline.isoformat(),
            review_deadline_at=(
                self._review_deadline.isoformat() if self._review_deadline else None
            ),
            approved=self._approval is not None,
            approved_by=self._approval.reviewer if self._approval else None,
            cancel_requested=self._cancel is not None,
            reason=self._reason,
            shipping_attempts=self._shipping_attempts,
            tracking_number=self._tracking_number,
        )

    # --- handlers' shared logic --------------------------------------------------------

    def _accept_approval(self, req: ApproveRequest) -> None:
        if self._approval is None:
            self._approval = req
            self._approved_at = workflow.now()
            self._log("order approved", reviewer=req.reviewer)

    async def _accept_cancel(self, req: CancelRequest) -> None:
        if self._cancel is not None:
            return  # already accepted: cancelling twice is not an error
        if self._step == Step.SHIP:
            # The carrier may be dispatching right now; the order row decides.
            await gate(
                OrderActivities.mark_cancel_requested,
                CancelMarkInput(
                    ctx=self._ctx(with_faults=False),
                    reason=req.reason,
                    requested_by=req.requested_by,
                ),
            )
            if self._cancel is not None:
                return
            if self._stop is not None:
                # The order decided to end otherwise (deadline, a failed step) while the
                # row was being marked: the cancel was not what ended it.
                raise ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)
        self._cancel = req
        if self._stop is None:
            self._stop = OrderStopped(OrderState.CANCELLED, req.reason)
        self._log("cancel accepted", reason=req.reason, by=req.requested_by)

    async def _accept_address(self, change: AddressChange) -> None:
        # The row is written by ReceiveOrder; an early change waits for it.
        await workflow.wait_condition(
            lambda: self._state != OrderState.PENDING or self._stop is not None
        )
        if self._stop is not None:
            raise ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)
        await gate(
            OrderActivities.apply_address_change,
            AddressChangeInput(
                ctx=self._ctx(with_faults=False),
                address=change.address,
                requested_by=change.requested_by,
            ),
        )
        if self._stop is not None:  # the order decided to end while the row was written
            raise ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)
        self._address = change.address
        self._log("address updated", by=change.requested_by)

    # --- small helpers -----------------------------------------------------------------

    def _end(self, state: OrderState, reason: str) -> OrderStopped:
        """The order decides to end: from here on cancel, approve and address changes are
        refused as closed. The first decision stands (a cancel or deadline before it)."""
        if self._stop is None:
            self._stop = OrderStopped(state, reason)
        return self._stop

    def _checkpoint(self) -> None:
        """Stop between steps once a cancel or the deadline has been accepted.

        Cancelling the business task is not enough on its own: an activity that completes
        while its cancellation is pending still hands back its result.
        """
        if self._stop is not None:
            raise self._stop

    def _ctx(self, with_faults: bool = True) -> ActivityContext:
        # Gates (cancel, address change) are bookkeeping, not external calls: no faults.
        return ActivityContext(
            order_id=self._inp.order_id,
            fault_profile=self._inp.fault_profile if with_faults else None,
            carrier_order=self._inp.carrier_order,
            retry=self._inp.retry,
        )

    def _current_address(self) -> Address:
        return self._address or self._inp.address

    def _is_closed(self) -> bool:
        return self._state in TERMINAL_STATES

    def _step_past_review(self) -> bool:
        return self._step in (Step.PAY, Step.SHIP) or self._is_closed()

    def _enter(self, step: Step) -> None:
        self._step = step
        self._updated_at = workflow.now()
        if step in (Step.MANUAL_REVIEW, Step.SHIP):
            self._publish_search_attributes()
        elif (
            step == Step.RECEIVE
            and workflow.info().typed_search_attributes.get(ORDER_STATE) is None
        ):
            self._publish_search_attributes(with_start=True)  # not started by our service
        # DEBUG: the state change that ends each step is logged at INFO anyway.
        self._log("step started", level=logging.DEBUG, step=str(step))

    def _set_state(self, state: OrderState) -> None:
        self._state = state
        self._updated_at = workflow.now()
        if state in TERMINAL_STATES:
            self._publish_search_attributes()
        self._log("state changed", state=str(state))

    def _publish_search_attributes(self, with_start: bool = False) -> None:
        # Histories recorded before the order published them replay without.
        if workflow.patched(PATCH_SEARCH_ATTRIBUTES):
            upsert_search_attributes(self._state, self._step, self._inp if with_start else None)

    def _record_error(self, step: Step, attempt: int, message: str) -> None:
        self._errors.append(
            StepError(step=step, attempt=attempt, message=message, at=workflow.now().isoformat())
        )
        del self._errors[:-MAX_ERRORS_KEPT]

    def _log(self, message: str, level: int = logging.INFO, **fields: object) -> None:
        workflow.logger.log(
            level,
            message,
            extra={"order_id": self._inp.order_id, "step": self._step, **fields},
        )
