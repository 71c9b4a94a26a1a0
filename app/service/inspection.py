"""Reading what happened to orders, changing nothing: lists and searches of orders, an
order's audit events (the `events` table), its workflow's description and event history
(Temporal). The status view has a module of its own: app/service/status.py."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import order_workflow_id
from app.platform.codec import open_failure
from app.platform.settings import Settings
from app.platform.tables import Event, Order
from app.service.errors import OrderNotFound, Unavailable
from app.service.inputs import validate_order_id
from app.service.listing import OrderFilter, order_page, query_cursor_key, search_orders
from app.service.status import iso, shown_failure, shown_pending


class Inspector:
    def __init__(
        self,
        client: Client,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.settings = settings

    async def list_orders(
        self,
        filters: OrderFilter | None = None,
        limit: int = 20,
        offset: int = 0,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """A page of orders from the database, newest first (see app/service/listing.py)."""
        async with self.sessions() as s:
            return await order_page(s, filters or OrderFilter(), limit, offset, cursor)

    async def search_orders(
        self, query: str, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        """A page of orders whose workflow matches a Temporal visibility query."""
        return await search_orders(
            self.client, query, limit, cursor, query_cursor_key(self.settings)
        )

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        validate_order_id(order_id)
        async with self.sessions() as s:
            rows = list(
                (
                    await s.execute(
                        select(Event).where(Event.order_id == order_id).order_by(Event.id)
                    )
                ).scalars()
            )
            unknown = not rows and await s.get(Order, order_id) is None
        if unknown and not await self._workflow_exists(order_id):
            raise OrderNotFound(f"order {order_id} not found")
        return [
            {"id": e.id, "type": e.type, "payload": e.payload_json, "ts": iso(e.ts)} for e in rows
        ]

    async def _workflow_exists(self, order_id: str) -> bool:
        """Just started, before ReceiveOrder wrote its row: known to Temporal only."""
        try:
            await self.client.get_workflow_handle(order_workflow_id(order_id)).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise Unavailable.temporal(err.message) from None
        return True

    async def describe(self, workflow_id: str) -> dict[str, Any]:
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            d = await handle.describe()
        except RPCError as err:
            raise _workflow_unknown(workflow_id, err) from None
        raw = d.raw_description
        return {
            "workflow_id": d.id,
            "run_id": d.run_id,
            "type": d.workflow_type,
            "status": d.status.name if d.status else None,
            "task_queue": d.task_queue,
            "start_time": iso(d.start_time),
            "close_time": iso(d.close_time),
            "history_length": d.history_length,
            "pending_activities": await shown_pending(
                self.client.data_converter, raw.pending_activities, states=True
            ),
            "pending_children": [
                {"workflow_id": c.workflow_id, "run_id": c.run_id} for c in raw.pending_children
            ],
        }

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        """A readable summary of the workflow's event history."""
        handle = self.client.get_workflow_handle(workflow_id)
        out: list[dict[str, Any]] = []
        try:
            async for event in handle.fetch_history_events():
                for failure in event_failures(event):
                    await open_failure(self.client.data_converter, failure)
                out.append(
                    {
                        "event_id": event.event_id,
                        "time": iso(event.event_time.ToDatetime(tzinfo=UTC)),
                        "type": EventType.Name(event.event_type).removeprefix("EVENT_TYPE_"),
                        "detail": event_detail(event),
                    }
                )
        except RPCError as err:
            raise _workflow_unknown(workflow_id, err) from None
        return out


def _workflow_unknown(workflow_id: str, err: RPCError) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND:
        return OrderNotFound(f"workflow {workflow_id} not found")
    return Unavailable.temporal(err.message)


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
