"""An order's status view: from its workflow while it runs, from the database once closed.

`StatusReader.status` is the way in: concurrent reads of one order share one lookup, a
closed order's view is cached, and a running order's view is its workflow's status query
merged with what the database and Temporal's pending activities add. The database half
(the order row with its payment, the attempts and errors its events tell, final once the
order is closed) is the functions below it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
)
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import (
    MAX_ERRORS_SHOWN,
    QUERY_STATUS,
    TERMINAL_STATES,
    EventType,
    OrderState,
    OrderStatus,
    Step,
    is_settled,
    order_workflow_id,
    shown_message,
)
from app.platform.codec import open_failure
from app.platform.tables import Event, Order, Payment
from app.service.errors import OrderNotFound, Unavailable
from app.service.inputs import validate_order_id
from app.service.single_flight import SingleFlight
from app.service.views import OrderView

CLOSED_CACHE_SIZE = 10_000
CLOSED_CACHE_TTL_S = 300.0


class StatusReader:
    def __init__(self, client: Client, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.client = client
        self.sessions = sessions
        # order id -> (expires at, status view) for closed orders; see _remember_closed.
        self._closed_views: OrderedDict[str, tuple[float, OrderView]] = OrderedDict()
        self._lookups: SingleFlight[str, OrderView] = SingleFlight()

    async def status(self, order_id: str) -> OrderView:
        """The order's live view: from the workflow while it runs, from the DB once closed."""
        validate_order_id(order_id)
        cached = self._closed_views.get(order_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return await self._lookups.run(order_id, lambda: self._lookup(order_id))

    def forget(self, order_id: str) -> None:
        """Drop the order's cached view: it has a new run (a retry)."""
        self._closed_views.pop(order_id, None)

    async def _lookup(self, order_id: str) -> OrderView:
        recorded = await read_recorded(self.sessions, order_id)
        if recorded.closed:
            view = recorded.view()
            self._remember_closed(order_id, view)
            return view
        handle = self.client.get_workflow_handle(order_workflow_id(order_id))
        try:
            live: OrderStatus = await handle.query(QUERY_STATUS, result_type=OrderStatus)
            desc = await handle.describe()
        except RPCError as err:
            # Temporal cannot say (the run is gone, or Temporal is down): the row can.
            if recorded.order is not None:
                return recorded.view()
            if err.status == RPCStatusCode.NOT_FOUND:
                raise OrderNotFound(f"order {order_id} not found") from None
            raise Unavailable.temporal(err.message) from None
        except WorkflowQueryFailedError as err:
            raise Unavailable(f"status query failed: {err}") from None
        return await self._merged(live, desc, recorded)

    async def _merged(
        self, live: OrderStatus, desc: WorkflowExecutionDescription, recorded: Recorded
    ) -> OrderView:
        """The running order's view: its query's answer with the attempts recorded per
        attempt in the DB (the most precise) and those of its pending activities."""
        pending = await shown_pending(
            self.client.data_converter, desc.raw_description.pending_activities
        )
        attempts = {**live.attempts, **recorded.attempts}
        for act in pending:
            step = step_of(act["activity"])
            attempts[step] = max(attempts.get(step, 0), act["attempt"])
        payment_status = recorded.payment.status if recorded.payment else live.payment_status
        return OrderView.from_workflow(
            live,
            run_id=desc.run_id,
            workflow_status=desc.status.name if desc.status else None,
            attempts=attempts,
            pending_activities=pending,
            errors=merge_errors([dataclasses.asdict(e) for e in live.errors], recorded.errors),
            payment_status=payment_status,
            source="workflow",
            # A run still going is compensating at most (the row records the settlement).
            settled=desc.status != WorkflowExecutionStatus.RUNNING
            and is_settled({"state": live.state, "payment_status": payment_status}),
        )

    def _remember_closed(self, order_id: str, view: OrderView) -> None:
        """Closed orders no longer change, so their view is cached (status reads of finished
        orders are the API's hottest path).

        Attempts and errors are final at the close (see attempt_history); only a refund
        may still be on its way, so an unsettled view is cached briefly until it lands. A
        FAILED order may be retried (a new run), from this process or another one: its
        view is cached briefly too."""
        final = view.settled and view.state != OrderState.FAILED
        expires = time.monotonic() + (CLOSED_CACHE_TTL_S if final else 1.0)
        self._closed_views[order_id] = (expires, view)
        self._closed_views.move_to_end(order_id)
        while len(self._closed_views) > CLOSED_CACHE_SIZE:
            self._closed_views.popitem(last=False)


# --- the database half ------------------------------------------------------------------

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


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What the database holds of an order for its status view (no order: no row yet)."""

    order: Order | None
    payment: Payment | None
    errors: list[dict[str, Any]]
    attempts: dict[str, int]

    @property
    def closed(self) -> bool:
        return self.order is not None and self.order.state in TERMINAL_STATES

    def view(self) -> OrderView:
        assert self.order is not None
        return status_from_db(self.order, self.payment, self.errors, self.attempts)


async def read_recorded(sessions: async_sessionmaker[AsyncSession], order_id: str) -> Recorded:
    # Two queries: the order with its payment, then its attempt events.
    async with sessions() as s:
        row = (
            await s.execute(
                select(Order, Payment)
                .outerjoin(
                    Payment,
                    (Payment.payment_id == Order.payment_id) & (Payment.order_id == Order.id),
                )
                .where(Order.id == order_id)
            )
        ).first()
        errors, attempts = await attempt_history(s, order_id)
    order, payment = (row[0], row[1]) if row is not None else (None, None)
    return Recorded(order, payment, errors, attempts)


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
    return merged[:MAX_ERRORS_SHOWN]


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


async def shown_pending(
    converter: DataConverter, activities: Sequence[PendingActivityInfo], *, states: bool = False
) -> list[dict[str, Any]]:
    """A run's pending activities as clients may see them, with their state (SCHEDULED,
    STARTED...) when asked. Their last failures are opened first (sealed when payload keys
    are set)."""
    shown = []
    for act in activities:
        await open_failure(converter, act.last_failure)
        one: dict[str, Any] = {"activity": act.activity_type.name}
        if states:
            # The enum's name, not its number.
            name = PendingActivityState.Name(act.state)
            one["state"] = name.removeprefix("PENDING_ACTIVITY_STATE_")
        one["attempt"] = act.attempt
        one["last_failure"] = shown_failure(act.last_failure)
        shown.append(one)
    return shown
