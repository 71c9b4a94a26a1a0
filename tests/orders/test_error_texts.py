"""What clients are shown of a failure: our own texts, or a fixed one for its kind. A
driver's or SQL text (an activity that hit a database error) goes to the logs only."""

from __future__ import annotations

import pytest
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure, TimeoutFailureInfo
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

from app.orders.messages import ERR_INVALID_ORDER, UNEXPECTED_ERROR_TEXT, shown_message
from app.orders.workflows.failures import failure_message
from app.service.status import shown_failure

pytestmark = pytest.mark.unit

SQL = (
    "(sqlalchemy.dialects.postgresql.asyncpg.IntegrityError) new row violates check "
    "constraint [SQL: INSERT INTO charges (charge_id, amount_cents) VALUES ($1, $2)]"
)


def _activity_error(cause: ApplicationError) -> ActivityError:
    err = ActivityError(
        "activity error",
        scheduled_event_id=1,
        started_event_id=2,
        identity="w",
        activity_type="ChargePayment",
        activity_id="1",
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    err.__cause__ = cause
    return err


def test_a_driver_error_is_shown_as_a_fixed_text() -> None:
    assert shown_message("IntegrityError", SQL) == UNEXPECTED_ERROR_TEXT
    failed = _activity_error(ApplicationError(SQL, type="IntegrityError"))
    assert failure_message(failed) == UNEXPECTED_ERROR_TEXT
    untyped = _activity_error(ApplicationError(SQL))
    assert failure_message(untyped) == UNEXPECTED_ERROR_TEXT


def test_our_own_texts_stay() -> None:
    invalid = ApplicationError("order is invalid: items qty too high", type=ERR_INVALID_ORDER)
    assert failure_message(_activity_error(invalid)) == "order is invalid: items qty too high"
    assert shown_message("timeout", None) == "activity timed out"


def test_temporal_failures_from_describe_and_history_are_shown_the_same_way() -> None:
    raw = Failure(
        message=SQL, application_failure_info=ApplicationFailureInfo(type="IntegrityError")
    )
    assert shown_failure(raw) == UNEXPECTED_ERROR_TEXT
    timed_out = Failure(
        message="activity StartToClose timeout", timeout_failure_info=TimeoutFailureInfo()
    )
    assert shown_failure(timed_out) == "activity timed out"
    assert shown_failure(Failure()) is None
