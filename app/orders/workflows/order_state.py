"""What OrderWorkflow knows besides where the order is, in named groups: the review, how the
order ends, the shipment, and what its steps went through."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from app.orders.messages import (
        ERR_INVALID_ORDER,
        ERR_ORDER_CLOSED,
        ERR_ORDER_DISPATCHED,
        MAX_ERRORS_SHOWN,
        TERMINAL_STATES,
        Address,
        ApproveRequest,
        CancelRequest,
        OrderState,
        StepError,
    )
    from app.orders.validation import address_problems

from app.orders.workflows.failures import OrderStopped, attempts_used, failure_message


def order_closed() -> ApplicationError:
    return ApplicationError("order is already closed", type=ERR_ORDER_CLOSED)


def check_address(address: Address) -> None:
    """Refuse an address the product would not ship to (the API's rules)."""
    problems = address_problems(address.as_dict())
    if problems:
        raise ApplicationError(
            "invalid address", problems, type=ERR_INVALID_ORDER, non_retryable=True
        )


@dataclass
class Review:
    """The manual review: its deadline once it starts, and the approval, which is kept even
    when it comes before the review does."""

    deadline: datetime | None = None
    approval: ApproveRequest | None = None
    approved_at: datetime | None = None

    def approve(self, req: ApproveRequest, at: datetime) -> bool:
        """Keep the first approval; False when one was kept already."""
        if self.approval is not None:
            return False
        self.approval, self.approved_at = req, at
        return True


@dataclass
class Ending:
    """How the order ends, decided once: the first decision stands, whichever came first of
    a cancel accepted, the deadline, a Temporal-level cancel, a failed step and the review's
    timeout. From then on the business stops at its next step, and cancel, approve and
    address changes are refused as closed (a request that waited on a gate activity asks
    again when it returns). The close records the decision, or COMPLETED when the carrier
    had the parcel already."""

    decided: OrderStopped | None = None
    # The cancel accepted; set only when a cancel is what decided the end.
    cancel: CancelRequest | None = None
    # The closed order's reason (None once COMPLETED), as the status and result report it.
    reason: str | None = None

    def decide(self, state: OrderState, reason: str) -> OrderStopped:
        if self.decided is None:
            self.decided = OrderStopped(state, reason)
        return self.decided

    def refuse_if_closed(self, state: OrderState, cancelling: bool = False) -> None:
        """Refuse a request once the order is closed (`state` terminal) or decided to end,
        except a cancel while a cancel is what ends it (cancelling twice is no error)."""
        again = cancelling and self.cancel is not None
        if state in TERMINAL_STATES or (self.decided is not None and not again):
            raise order_closed()

    def refuse_if_decided(self) -> None:
        """Refuse a request that waited (for the row, on a gate) while the end was decided."""
        if self.decided is not None:
            raise order_closed()

    def accept_cancel(self, req: CancelRequest) -> bool:
        """Let `req` decide the end; False when a cancel was accepted already."""
        if self.cancel is not None:
            return False
        if self.decided is not None:
            # Decided otherwise (deadline, a failed step) while the cancel waited on its
            # gate: the cancel is not what ended the order.
            raise order_closed()
        self.cancel = req
        self.decide(OrderState.CANCELLED, req.reason)
        return True


@dataclass
class Shipment:
    """The shipping children started so far, and the tracking number once one dispatched."""

    attempts: int = 0
    tracking_number: str | None = None

    def refuse_if_dispatched(self) -> None:
        if self.tracking_number is not None:
            raise ApplicationError("order was already dispatched", type=ERR_ORDER_DISPATCHED)


@dataclass
class StepLog:
    """What the steps went through, as the status and CloseOrder report it: each step's
    attempts and the latest errors (capped, so the status stays small)."""

    attempts: dict[str, int] = field(default_factory=dict)
    errors: list[StepError] = field(default_factory=list)

    def failed(self, step: str, err: ActivityError, at: datetime) -> str:
        """Record a step's failed activity; the message clients may see of it."""
        attempts, message = attempts_used(err), failure_message(err)
        self.attempts[step] = max(self.attempts.get(step, 0), attempts)
        self.record_error(step, attempts, message, at)
        return message

    def record_error(self, step: str, attempt: int, message: str, at: datetime) -> None:
        self.errors.append(
            StepError(step=step, attempt=attempt, message=message, at=at.isoformat())
        )
        del self.errors[:-MAX_ERRORS_SHOWN]
