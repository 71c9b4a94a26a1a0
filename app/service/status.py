"""The status view of an order as the database records it: the order row with its
payment, and the attempts and errors its events tell (final once the order is closed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.orders.messages import (
    TERMINAL_STATES,
    EventType,
    Step,
    order_workflow_id,
    shown_message,
)
from app.platform.tables import Event, Order, Payment
from app.service.views import OrderView

MAX_ERRORS_SHOWN = 20
# The event that records a step's successful attempt; failed ones are STEP_ATTEMPT_FAILED.
_SUCCESS_EVENT_STEP = {
    EventType.RECEIVED: Step.RECEIVE,
    EventType.VALIDATED: Step.VALIDATE,
    EventType.PAYMENT_CHARGED: Step.PAY,
    EventType.DISPATCHED: Step.SHIP,
}
# The event that records an order's end (named like the state it records).
_TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.CANCELLED, EventType.FAILED})
_HISTORY_EVENTS = [
    *_SUCCESS_EVENT_STEP,
    EventType.STEP_ATTEMPT_FAILED,
    *_TERMINAL_EVENTS,
    EventType.RETRIED,
]


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def status_from_db(
    order: Order,
    payment: Payment | None,
    errors: list[dict[str, Any]],
    attempts: dict[str, int],
) -> OrderView:
    payment_status = payment.status if payment else "none"
    view = {
        "order_id": order.id,
        "workflow_id": order.workflow_id or order_workflow_id(order.id),
        "run_id": order.run_id,
        "state": order.state,
        "step": order.step,
        "address": order.address_json,
        "payment_id": order.payment_id,
        "payment_status": payment_status,
        "amount_cents": int(order.amount * 100) if order.amount is not None else None,
        "attempts": attempts,
        "errors": errors,
        "created_at": iso(order.created_at),
        "updated_at": iso(order.updated_at),
        "closed_at": iso(order.closed_at),
        "deadline_at": iso(order.deadline_at),
        "reason": order.reason,
        "tracking_number": order.tracking_number,
        "cancel_requested": order.cancel_requested,
        "workflow_status": None,
        "pending_activities": [],
        "source": "database",
        # Closed and its compensation done (RefundPayment records it): a refund or booking
        # cancellation still in flight leaves it unsettled, however the payment reads.
        "settled": order.state in TERMINAL_STATES and order.settled_at is not None,
    }
    return OrderView.model_validate(view)


async def attempt_history(
    s: AsyncSession, order_id: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Recent failed attempts (newest first) and the attempt count of every step.

    Once the order is closed, they are what they were at its close: an attempt that
    records its failure later (a timed-out attempt is cancelled 5 s past its timeout)
    stays in `events` but no longer changes the view. The workflow's own counts and
    errors, kept with the terminal event, complete it."""
    rows = (
        await s.execute(
            select(Event.type, Event.payload_json, Event.ts)
            .where(Event.order_id == order_id, Event.type.in_(_HISTORY_EVENTS))
            .order_by(Event.id.desc())
        )
    ).all()
    # A retried order's view is its latest run's: what earlier runs did stays in events.
    retried = next((i for i, row in enumerate(rows) if row[0] == EventType.RETRIED), None)
    if retried is not None:
        rows = rows[:retried]
    end = next((i for i, row in enumerate(rows) if row[0] in _TERMINAL_EVENTS), None)
    final: dict[str, Any] = {}
    if end is not None:
        final = rows[end][1] or {}
        rows = rows[end + 1 :]
    errors: list[dict[str, Any]] = []
    succeeded: dict[str, int] = {}
    failed: dict[str, int] = {}
    for type_, payload, ts in rows:
        p = payload or {}
        attempt = p.get("attempt")
        if type_ == EventType.STEP_ATTEMPT_FAILED:
            if len(errors) < MAX_ERRORS_SHOWN:
                errors.append(
                    {
                        "step": p.get("step"),
                        "attempt": attempt,
                        "message": p.get("message"),
                        "kind": p.get("kind"),
                        "at": iso(ts),
                    }
                )
            if isinstance(attempt, int):
                failed[p["step"]] = max(failed.get(p["step"], 0), attempt)
        elif isinstance(attempt, int) and type_ in _SUCCESS_EVENT_STEP:
            done = _SUCCESS_EVENT_STEP[type_]
            succeeded[done] = max(succeeded.get(done, 0), attempt)
    attempts = dict(failed)
    for step, attempt in succeeded.items():
        # A step that succeeded after failed attempts succeeded on a later one, even
        # when the successful attempt only confirmed an earlier attempt's write.
        attempts[step] = max(attempt, failed.get(step, 0) + 1)
    for name, count in (final.get("attempts") or {}).items():
        attempts[name] = max(attempts.get(name, 0), count)
    seen = {(e["step"], e["attempt"]) for e in errors}
    late = [e for e in final.get("errors") or [] if (e["step"], e["attempt"]) not in seen]
    return merge_errors(late, errors), attempts


def step_of(activity_type: str) -> str:
    return {
        "ReceiveOrder": Step.RECEIVE,
        "ValidateOrder": Step.VALIDATE,
        "ChargePayment": Step.PAY,
        "PreparePackage": Step.SHIP,
        "DispatchCarrier": Step.SHIP,
    }.get(activity_type, activity_type)


def merge_errors(
    from_workflow: list[dict[str, Any]], from_db: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    merged = [*from_db, *from_workflow]
    merged.sort(key=lambda e: e.get("at") or "", reverse=True)
    return merged[:20]


def shown_failure(failure: Any) -> str | None:
    """A Temporal failure as clients may see it (messages.shown_message): None for none."""
    if failure is None or not failure.ByteSize():
        return None
    if failure.HasField("timeout_failure_info"):
        return shown_message("timeout", None)
    if failure.HasField("canceled_failure_info"):
        return shown_message("cancelled", None)
    if failure.HasField("application_failure_info"):
        return shown_message(failure.application_failure_info.type, failure.message)
    return shown_message(None, None)


_FAILURE_EVENTS = (
    "activity_task_failed_event_attributes",
    "activity_task_timed_out_event_attributes",
    "workflow_execution_failed_event_attributes",
)


def event_failures(event: Any) -> list[Any]:
    """The failures a history event carries (sealed when payload keys are set)."""
    return [getattr(event, attr).failure for attr in _FAILURE_EVENTS if event.HasField(attr)]


def event_detail(event: Any) -> str | None:
    """Short, payload-free description: payloads may hold addresses (kept out of summaries)."""
    for attr, fmt in (
        ("activity_task_scheduled_event_attributes", lambda a: a.activity_type.name),
        ("activity_task_failed_event_attributes", lambda a: shown_failure(a.failure)),
        ("activity_task_timed_out_event_attributes", lambda a: shown_failure(a.failure)),
        ("workflow_execution_signaled_event_attributes", lambda a: a.signal_name),
        (
            "workflow_execution_update_accepted_event_attributes",
            lambda a: a.accepted_request.input.name,
        ),
        ("start_child_workflow_execution_initiated_event_attributes", lambda a: a.workflow_id),
        ("timer_started_event_attributes", lambda a: f"{a.start_to_fire_timeout.ToSeconds()}s"),
        ("workflow_execution_failed_event_attributes", lambda a: shown_failure(a.failure)),
    ):
        if event.HasField(attr):
            try:
                return str(fmt(getattr(event, attr)))
            except Exception:
                return None
    return None
