"""OrderWorkflow (orders-tq): the order state machine of docs/architecture.md, its steps run
alike by `_run_step` racing the deadline. How the order ends is decided once (`Ending`);
`_close` records it and compensates, whatever cancels the run. Rules live here, effects in
activities (calls.py). The order row decides whether the carrier has the parcel: dispatch,
cancel and address changes lock it, so a cancel or change lands before dispatch or not at all.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import VersioningBehavior
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from app.orders.messages import (
        ERR_ORDER_CANCELLED,
        ERR_ORDER_FAILED,
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
        Address,
        AddressChange,
        ApproveRequest,
        CancelRequest,
        DispatchFailure,
        OrderInput,
        OrderResult,
        OrderState,
        OrderStatus,
        PaymentStatus,
        Step,
        order_amount_cents,
    )
    from app.orders.search import ORDER_STATE, upsert_search_attributes

from app.orders.workflows import calls
from app.orders.workflows.failures import (
    OrderStopped,
    application_type,
    cancel_reached_close,
    failure_message,
    stop_reason,
)
from app.orders.workflows.order_state import Ending, Review, Shipment, StepLog, check_address
from app.orders.workflows.policies import MAX_SHIPPING_ATTEMPTS, PATCH_SEARCH_ATTRIBUTES
from app.orders.workflows.shipping import start_shipping

# A step's work: the attempts its activity took (None: no activity).
Work = Callable[[], Awaitable[int | None]]


# Pinned: a run lives its life on the build that started it (app/versioning.py).
@workflow.defn(name=ORDER_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class OrderWorkflow:
    # The input is taken at construction so an update or query that arrives in the very
    # first activation (start immediately followed by approve) already sees the order.
    @workflow.init
    def __init__(self, inp: OrderInput) -> None:
        self._inp = inp
        deadline_s = inp.deadline_s if inp.deadline_s is not None else ORDER_DEADLINE_S
        self._deadline = workflow.info().start_time + timedelta(seconds=deadline_s)
        # Where the order is: the diagram's state (terminal once closed), the step running
        # or last run, the address it ships to (the latest accepted) and what was paid.
        self._state = OrderState.PENDING
        self._step = Step.RECEIVE
        self._updated_at = workflow.now()
        self._address = inp.address
        self._payment_status = PaymentStatus.NONE
        self._review = Review()
        self._ending = Ending()
        self._shipment = Shipment()
        self._steps = StepLog()

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderResult:
        self._log("order started", deadline=self._deadline.isoformat())
        business = asyncio.create_task(self._fulfil())
        await self._race_deadline(business)
        if not business.done():
            business.cancel()
        result = await self._close_to_the_end(await self._outcome(business))
        await workflow.wait_condition(workflow.all_handlers_finished)
        if result.state == OrderState.FAILED:  # compensated: failed in the Temporal UI too
            raise ApplicationError(
                f"order {inp.order_id} failed: {result.reason}",
                {"reason": result.reason, "payment_status": result.payment_status},
                type=ERR_ORDER_FAILED,
                non_retryable=True,
            )
        return result

    async def _fulfil(self) -> None:
        """The diagram of docs/architecture.md, a step a line."""
        await self._run_step(Step.RECEIVE, self._receive, reaches=OrderState.RECEIVED)
        await self._run_step(Step.VALIDATE, self._validate, reaches=OrderState.VALIDATED)
        await self._run_step(Step.MANUAL_REVIEW, self._await_approval)
        await self._run_step(Step.PAY, self._pay, reaches=OrderState.PAID)
        await self._run_step(Step.SHIP, self._ship, reaches=OrderState.COMPLETED)

    async def _run_step(self, step: Step, work: Work, reaches: OrderState | None = None) -> None:
        """Every step alike: enter it, do its work, record its attempts and the state it
        reaches, then stop if the order decided to end meanwhile. A failed activity ends the
        order, unless the decision to end came first and cut it short."""
        self._enter(step)
        try:
            attempts = await work()
        except ActivityError as err:
            if self._ending.decided is not None or is_cancelled_exception(err):
                raise
            message = self._steps.failed(step, err, workflow.now())
            self._log("step failed", step=str(step), error=message)
            raise self._ending.decide(OrderState.FAILED, stop_reason(step, err)) from None
        if attempts is not None:
            self._steps.attempts[step] = attempts
        if reaches is not None:
            self._set_state(reaches)
        self._checkpoint()

    async def _race_deadline(self, business: asyncio.Task[None]) -> None:
        """Until the business is done or the end decided (here: deadline, Temporal cancel)."""
        remaining = max((self._deadline - workflow.now()).total_seconds(), 0.001)
        try:
            await workflow.wait_condition(
                lambda: business.done() or self._ending.decided is not None, timeout=remaining
            )
        except builtins.TimeoutError:
            self._ending.decide(OrderState.FAILED, "deadline_exceeded")
            self._log("deadline exceeded", step=str(self._step))
        except asyncio.CancelledError:
            # A cancel from the Temporal UI or CLI counts as cancel_order: compensation runs.
            self._ending.decide(OrderState.CANCELLED, "workflow_cancelled")
            self._log("workflow cancellation requested")

    async def _outcome(self, business: asyncio.Task[None]) -> OrderStopped | None:
        """None when the order shipped, otherwise how it ends. A step the decision cut short
        ends in a cancellation or an activity or child error: expected, not a failure."""
        try:
            await business
        except (OrderStopped, asyncio.CancelledError):
            pass  # the decision to end, made already
        except (ActivityError, ChildWorkflowError) as err:
            if self._ending.decided is None and not is_cancelled_exception(err):
                raise
        return self._ending.decided

    async def _receive(self) -> int:
        return await calls.receive(self._inp, self._address, self._deadline)

    async def _validate(self) -> int:
        return await calls.validate(self._inp, self._address)

    async def _await_approval(self) -> None:
        timeout_s = self._inp.review_timeout_s
        review_s = timeout_s if timeout_s is not None else REVIEW_TIMEOUT_S
        self._review.deadline = workflow.now() + timedelta(seconds=review_s)
        try:
            await workflow.wait_condition(
                lambda: self._review.approval is not None, timeout=review_s
            )
        except builtins.TimeoutError:
            self._log("review timed out")
            raise self._ending.decide(OrderState.CANCELLED, "review_timeout") from None

    async def _pay(self) -> int:
        attempt = await calls.charge(self._inp, self._review)
        # A free order is not charged: PAY recorded that nothing was due.
        amount_cents = order_amount_cents(self._inp.items)
        self._payment_status = PaymentStatus.CHARGED if amount_cents else PaymentStatus.NOT_DUE
        return attempt

    async def _ship(self) -> int:
        """A shipping child per attempt until one dispatches."""
        while True:
            self._shipment.attempts += 1
            attempt = self._shipment.attempts
            self._checkpoint()
            try:
                shipped = await start_shipping(self._inp, self._address, attempt, self._deadline)
            except ChildWorkflowError as err:
                await self._shipping_failed(attempt, err)
                continue
            self._shipment.tracking_number = shipped.tracking_number
            self._address = shipped.dispatched_address
            return attempt

    async def _shipping_failed(self, attempt: int, err: ChildWorkflowError) -> None:
        """Returns when another attempt may start, raises when shipping is over."""
        if self._ending.decided is not None or is_cancelled_exception(err):
            raise err
        if application_type(err) == ERR_ORDER_CANCELLED:
            # A cancel marked the row before the carrier took the parcel and its handler
            # has not heard back yet: let it accept the cancel.
            await workflow.wait_condition(lambda: self._ending.decided is not None)
            raise err
        # The child's error carries the reason it also sent with dispatch_failed.
        reason = failure_message(err)
        message = f"shipping attempt {attempt}: {reason}"
        self._steps.record_error(Step.SHIP, attempt, message, workflow.now())
        self._log("shipping failed", attempt=attempt, reason=reason)
        if attempt >= MAX_SHIPPING_ATTEMPTS or self._deadline <= workflow.now():
            raise self._ending.decide(OrderState.FAILED, "shipping_failed") from None

    async def _close_to_the_end(self, stop: OrderStopped | None) -> OrderResult:
        """`_close`, even if a Temporal cancel arrives meanwhile (it would cut the refund off
        with the money kept): both activities are idempotent, so the close starts again."""
        while True:
            try:
                return await self._close(stop)
            except (asyncio.CancelledError, ActivityError) as err:
                if not cancel_reached_close(err):
                    raise
                self._log("workflow cancellation requested while closing: the close goes on")

    async def _close(self, stop: OrderStopped | None) -> OrderResult:
        """Record how the order ended and compensate; a shipped order has nothing to undo."""
        inp = self._inp
        if stop is not None:
            self._log("closing order", state=str(stop.state), reason=stop.reason)
            outcome = await calls.close(
                inp, stop, self._step, self._steps, self._address, self._deadline
            )
            self._payment_status = PaymentStatus(outcome.payment_status)
            # The database may know better: a dispatch that committed wins over a late stop.
            final = OrderState(outcome.state)
            self._ending.reason = None if final == OrderState.COMPLETED else stop.reason
            self._set_state(final)
            if outcome.refund_pending:
                # Closed in the database already; the refund takes as long as it takes.
                refunded = await calls.refund(inp)
                self._payment_status = PaymentStatus(refunded.payment_status)
                outcome.refunded = refunded.refunded
            if outcome.refunded:
                self._log("payment refunded", payment_id=inp.payment_id)
        return OrderResult(
            order_id=inp.order_id,
            state=OrderState.COMPLETED if stop is None else self._state,
            reason=self._ending.reason,
            tracking_number=self._shipment.tracking_number,
            payment_status=self._payment_status,
        )

    # Signals: the spec's message names, usable from `temporal workflow signal`.

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve_order(self, req: ApproveRequest | None = None) -> None:
        if self._past_review():
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
        # Logged only: the child fails with the same reason, and _ship reads it there.
        self._log("dispatch failed", reason=failure.reason, attempt=failure.attempt)

    # Updates: the same requests answered at once; their validators refuse before any effect.

    @workflow.update(name=UPDATE_APPROVE)
    def approve(self, req: ApproveRequest) -> OrderStatus:
        self._accept_approval(req)
        return self.status()

    @approve.validator
    def _validate_approve(self, req: ApproveRequest) -> None:
        self._ending.refuse_if_closed(self._state)
        if self._past_review():
            raise ApplicationError("manual review is already over", type=ERR_REVIEW_OVER)

    @workflow.update(name=UPDATE_CANCEL)
    async def cancel(self, req: CancelRequest) -> OrderStatus:
        await self._accept_cancel(req)
        return self.status()

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        self._ending.refuse_if_closed(self._state, cancelling=True)
        self._shipment.refuse_if_dispatched()

    @workflow.update(name=UPDATE_ADDRESS)
    async def change_address(self, change: AddressChange) -> OrderStatus:
        await self._accept_address(change)
        return self.status()

    @change_address.validator
    def _validate_address_change(self, change: AddressChange) -> None:
        self._ending.refuse_if_closed(self._state)
        self._shipment.refuse_if_dispatched()
        check_address(change.address)

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> OrderStatus:
        inp, info, review = self._inp, workflow.info(), self._review
        return OrderStatus(
            order_id=inp.order_id,
            workflow_id=info.workflow_id,
            state=self._state,
            step=self._step,
            address=self._address,
            payment_id=inp.payment_id,
            payment_status=self._payment_status,
            amount_cents=order_amount_cents(inp.items),
            attempts=dict(self._steps.attempts),
            errors=list(self._steps.errors),
            created_at=info.start_time.isoformat(),
            updated_at=self._updated_at.isoformat(),
            deadline_at=self._deadline.isoformat(),
            review_deadline_at=review.deadline.isoformat() if review.deadline else None,
            approved=review.approval is not None,
            approved_by=review.approval.reviewer if review.approval else None,
            cancel_requested=self._ending.cancel is not None,
            reason=self._ending.reason,
            shipping_attempts=self._shipment.attempts,
            tracking_number=self._shipment.tracking_number,
        )

    def _accept_approval(self, req: ApproveRequest) -> None:
        if self._review.approve(req, workflow.now()):
            self._log("order approved", reviewer=req.reviewer)

    async def _accept_cancel(self, req: CancelRequest) -> None:
        if self._ending.cancel is None and self._step == Step.SHIP:
            # The carrier may be dispatching right now; the order row decides.
            await calls.mark_cancel_requested(self._inp, req)
        if self._ending.accept_cancel(req):
            self._log("cancel accepted", reason=req.reason, by=req.requested_by)

    async def _accept_address(self, change: AddressChange) -> None:
        # The row is written by ReceiveOrder; an early change waits for it.
        await workflow.wait_condition(
            lambda: self._state != OrderState.PENDING or self._ending.decided is not None
        )
        self._ending.refuse_if_decided()
        await calls.apply_address_change(self._inp, change)
        self._ending.refuse_if_decided()  # it may have, while the row was written
        self._address = change.address
        self._log("address updated", by=change.requested_by)

    def _checkpoint(self) -> None:
        """Stop between steps once the order decided to end. Cancelling the business task
        is not enough on its own: an activity that completes while its cancellation is
        pending still hands back its result."""
        if self._ending.decided is not None:
            raise self._ending.decided

    def _past_review(self) -> bool:
        return self._step in (Step.PAY, Step.SHIP) or self._state in TERMINAL_STATES

    def _enter(self, step: Step) -> None:
        self._step = step
        self._updated_at = workflow.now()
        # Published where an order waits (review, shipping); the other steps are brief.
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

    def _log(self, message: str, level: int = logging.INFO, **fields: object) -> None:
        workflow.logger.log(
            level,
            message,
            extra={"order_id": self._inp.order_id, "step": self._step, **fields},
        )
