"""What a workflow learns from a failed activity or child: the innermost message, the
application error type, how many attempts ran, the reason it ends an order with, the stop
that ends an order early, and a gate's refusal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    RetryState,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from app.orders.messages import (
        ERR_INVALID_ORDER,
        ERR_PAYMENT_CONFLICT,
        OrderState,
        shown_message,
    )

from app.orders.workflows.policies import (
    GATE_RETRY,
    GATE_TIMEOUT,
    PATCH_CLOSE_OUTLIVES_CANCEL,
    STEP_RETRY,
)

InputT = TypeVar("InputT")


class OrderStopped(Exception):
    """Ends the business flow early with a terminal state (never leaves the workflow)."""

    def __init__(self, state: OrderState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


def failure_message(err: BaseException) -> str:
    """The innermost message of an activity/child failure, as clients may see it: our own
    texts, or a fixed one for its kind (never a driver's or SQL text; see shown_message)."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, TimeoutError):
        return f"timeout ({cause.type.name.lower() if cause.type else 'unknown'})"
    if isinstance(cause, ApplicationError):
        return shown_message(cause.type, cause.message)
    return shown_message(None, None)


def application_type(err: BaseException) -> str | None:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause.type
        cause = cause.cause if isinstance(cause, ActivityError | ChildWorkflowError) else None
    return None


def attempts_used(err: ActivityError) -> int:
    """The attempts a failed step counts: all of them when its retries were used up,
    otherwise at least one (a refusal fails at once, and its attempt recorded itself with
    its number before the workflow heard of it)."""
    exhausted = err.retry_state in (RetryState.MAXIMUM_ATTEMPTS_REACHED, RetryState.TIMEOUT)
    return STEP_RETRY.maximum_attempts if exhausted else 1


# A business refusal ends the order with its own reason; any other failure with the step's.
_REFUSAL_REASONS = {ERR_INVALID_ORDER: "invalid_order", ERR_PAYMENT_CONFLICT: "payment_id_in_use"}


def stop_reason(step: str, err: BaseException) -> str:
    """The reason an order ends with when its `step` failed with `err`."""
    return _REFUSAL_REASONS.get(application_type(err) or "", f"{step.lower()}_failed")


async def gate(method: Callable[[Any, InputT], Awaitable[None]], arg: InputT) -> None:
    """Run a row-locking check-and-write; its refusal becomes the caller's answer."""
    try:
        await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=GATE_TIMEOUT,
            retry_policy=GATE_RETRY,
        )
    except ActivityError as err:
        raise ApplicationError(
            failure_message(err),
            type=application_type(err) or "RequestFailed",
            non_retryable=True,
        ) from None


def cancel_reached_close(err: BaseException) -> bool:
    """A Temporal cancel that reached the order's close (as the cancellation of its activity):
    the close goes on. Histories recorded when it cut the close off replay that way."""
    return is_cancelled_exception(err) and workflow.patched(PATCH_CLOSE_OUTLIVES_CANCEL)
