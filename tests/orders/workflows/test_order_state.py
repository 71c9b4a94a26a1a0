"""The rules OrderWorkflow's groups of state keep on their own: the first decision to end
stands, requests are refused once it is made, the first approval is kept."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from temporalio.exceptions import ApplicationError

from app.orders.messages import (
    ERR_ORDER_CLOSED,
    ERR_ORDER_DISPATCHED,
    ApproveRequest,
    CancelRequest,
    OrderState,
)
from app.orders.workflows.order_state import Ending, Review, Shipment

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _refusal(call: object) -> str | None:
    try:
        call()  # type: ignore[operator]
    except ApplicationError as err:
        return err.type
    return None


def test_first_decision_to_end_stands() -> None:
    ending = Ending()
    first = ending.decide(OrderState.FAILED, "deadline_exceeded")
    assert ending.decide(OrderState.CANCELLED, "review_timeout") is first
    assert (ending.decided.state, ending.decided.reason) == ("FAILED", "deadline_exceeded")


def test_requests_are_refused_once_the_end_is_decided() -> None:
    ending = Ending()
    assert _refusal(lambda: ending.refuse_if_closed(OrderState.PAID)) is None
    assert _refusal(lambda: ending.refuse_if_closed(OrderState.COMPLETED)) == ERR_ORDER_CLOSED
    ending.decide(OrderState.FAILED, "invalid_order")
    assert _refusal(lambda: ending.refuse_if_closed(OrderState.VALIDATED)) == ERR_ORDER_CLOSED
    refused = _refusal(lambda: ending.refuse_if_closed(OrderState.VALIDATED, cancelling=True))
    assert refused == ERR_ORDER_CLOSED


def test_a_cancel_decides_once_and_may_be_sent_again() -> None:
    ending = Ending()
    assert ending.accept_cancel(CancelRequest(reason="customer_request"))
    assert (ending.decided.state, ending.decided.reason) == ("CANCELLED", "customer_request")
    # Cancelling twice is not an error: the second is neither refused nor a new decision.
    assert _refusal(lambda: ending.refuse_if_closed(OrderState.PAID, cancelling=True)) is None
    assert not ending.accept_cancel(CancelRequest(reason="other"))
    assert ending.decided.reason == "customer_request"


def test_a_cancel_after_another_decision_is_refused() -> None:
    """As after a gate activity returns: the order decided to end otherwise meanwhile."""
    ending = Ending()
    ending.decide(OrderState.FAILED, "deadline_exceeded")
    assert _refusal(lambda: ending.accept_cancel(CancelRequest())) == ERR_ORDER_CLOSED
    assert ending.cancel is None and ending.decided.reason == "deadline_exceeded"


def test_dispatched_shipment_refuses() -> None:
    shipment = Shipment()
    assert _refusal(shipment.refuse_if_dispatched) is None
    shipment.tracking_number = "TRK1"
    assert _refusal(shipment.refuse_if_dispatched) == ERR_ORDER_DISPATCHED


def test_first_approval_is_kept() -> None:
    review = Review()
    assert review.approve(ApproveRequest(reviewer="alice"), NOW)
    assert not review.approve(ApproveRequest(reviewer="bob"), NOW)
    assert review.approval is not None and review.approval.reviewer == "alice"
    assert review.approved_at == NOW
