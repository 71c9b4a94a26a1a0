"""Order operations shared by the REST API and the CLI (one implementation, two front ends).

Errors are `ServiceError` subclasses carrying an HTTP-like status, so the API maps them to
responses and the CLI to one-line messages, and neither shows a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Unpack

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from app.orders.claims import claim_payment_id, release_payment_id
from app.orders.messages import (
    ERR_INVALID_ORDER,
    ERR_ORDER_CANCELLED,
    ERR_ORDER_CLOSED,
    ERR_ORDER_DISPATCHED,
    ERR_REVIEW_OVER,
    ORDER_DEADLINE_S,
    ORDER_WORKFLOW,
    QUERY_STATUS,
    TERMINAL_STATES,
    UPDATE_ADDRESS,
    UPDATE_APPROVE,
    UPDATE_CANCEL,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    OrderInput,
    OrderState,
    OrderStatus,
    Step,
    is_settled,
    order_amount_cents,
    order_workflow_id,
)
from app.orders.search import start_attributes
from app.platform.codec import open_failure
from app.platform.settings import Settings
from app.platform.tables import Event, Order, Payment
from app.service.errors import (
    InvalidInput,
    OrderConflict,
    OrderNotFound,
    ServiceError,
    Unavailable,
)
from app.service.idempotency import (
    IDEMPOTENCY_MEMO,
    IdempotentRequest,
    StartAnswer,
    bind_key,
    request_fingerprint,
)
from app.service.inputs import (
    OrderOptions,
    check_fault_profile,
    order_input,
    validate_address,
    validate_order_id,
)
from app.service.listing import OrderFilter, order_page, query_cursor_key, search_orders
from app.service.retry import (
    first_input,
    order_to_retry,
    reopen,
    retried_event,
    retry_input,
)
from app.service.status import (
    attempt_history,
    event_detail,
    event_failures,
    iso,
    merge_errors,
    shown_failure,
    status_from_db,
    step_of,
)
from app.service.views import OrderView

# Closed workflows are answered from the database; a running one from its query.
_REFUSAL_STATUS = {
    ERR_ORDER_DISPATCHED: 409,
    ERR_ORDER_CLOSED: 409,
    ERR_ORDER_CANCELLED: 409,
    ERR_REVIEW_OVER: 409,
    ERR_INVALID_ORDER: 422,
}


log = logging.getLogger("app.service")

CLOSED_CACHE_SIZE = 10_000
CLOSED_CACHE_TTL_S = 300.0


class OrderService:
    def __init__(
        self,
        client: Client,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.settings = settings
        # order id -> (expires at, status view) for closed orders; see _remember_closed.
        self._closed_views: OrderedDict[str, tuple[float, OrderView]] = OrderedDict()
        # order id -> the status lookup in flight for it; see status().
        self._status_lookups: dict[str, asyncio.Future[OrderView]] = {}

    # --- commands --------------------------------------------------------------------------

    async def start_order(
        self,
        order_id: str,
        payment_id: str,
        address: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[OrderOptions],
    ) -> StartAnswer:
        """Start the order's one workflow run.

        With an idempotency key, the same request sent again (after a network error, or
        five times at once) gets the first answer back: the key and a fingerprint of the
        request travel in the run's memo, so Temporal itself tells whether a run that
        exists is this request's. The same key with another request is refused (422)."""
        inp = order_input(self.settings, order_id, payment_id, address, **options)
        keyed = (
            IdempotentRequest(idempotency_key, request_fingerprint(inp))
            if idempotency_key is not None
            else None
        )
        if keyed is not None:
            # A key names one request: another order or body with it is a 422.
            await bind_key(self.sessions, keyed, order_id)
        try:
            await self._refuse_known_order(order_id)
            claimed = await self._claim_payment_id(inp)
            try:
                handle = await self._start_run(
                    inp,
                    # Never a second run for the same order, running or closed.
                    WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    f"order {order_id} already exists",
                    memo={IDEMPOTENCY_MEMO: keyed.memo()} if keyed else None,
                )
            except (OrderConflict, Unavailable):
                if claimed and not await self._runs_with_payment(order_id, inp.payment_id):
                    async with self.sessions() as s, s.begin():
                        await release_payment_id(s, inp.payment_id, order_id)
                raise
        except OrderConflict as conflict:
            if keyed is None:
                raise
            return await self._replay_start(order_id, keyed, conflict)
        await self._record_started(inp, handle.id, handle.result_run_id)
        return StartAnswer(order_id, handle.id, handle.result_run_id)

    async def _record_started(self, inp: OrderInput, workflow_id: str, run_id: str | None) -> None:
        """The order's row as it starts (PENDING, with what the request said), so lists,
        the console and a second start see it at once, and an order whose first step fails
        still shows its ids and address. ReceiveOrder takes the row over (or writes it, if
        this write is lost: it is a convenience, never what the order depends on)."""
        try:
            async with self.sessions() as s, s.begin():
                await s.execute(
                    pg_insert(Order)
                    .values(
                        id=inp.order_id,
                        state=OrderState.PENDING,
                        step=Step.RECEIVE,
                        workflow_id=workflow_id,
                        run_id=run_id,
                        payment_id=inp.payment_id,
                        address_json=inp.address.as_dict(),
                        amount=Decimal(order_amount_cents(inp.items)) / 100,
                        items_json=[vars(i) for i in inp.items],
                        deadline_at=datetime.now(UTC).replace(tzinfo=None)
                        + timedelta(seconds=inp.deadline_s or ORDER_DEADLINE_S),
                    )
                    .on_conflict_do_nothing(index_elements=[Order.id])
                )
        except (OSError, SQLAlchemyError) as err:
            log.warning(
                "could not record the started order; ReceiveOrder will",
                extra={"order_id": inp.order_id, "error": type(err).__name__},
            )

    async def _runs_with_payment(self, order_id: str, payment_id: str) -> bool:
        """Whether the order's run (another request's, racing this one) pays with it.

        When that cannot be told, the claim this request made is given back: a run that
        does pay with it claims it again at ReceiveOrder, or fails there, before any
        gateway call, if another order took it meanwhile."""
        try:
            first, _ = await first_input(self.client, order_workflow_id(order_id), None)
        except ServiceError:
            return False
        return first.payment_id == payment_id

    async def _claim_payment_id(self, inp: OrderInput) -> bool:
        """The payment id is the order's from now on, unless another order has it (409
        naming payment_id). Whether this call claimed it."""
        async with self.sessions() as s, s.begin():
            claim = await claim_payment_id(s, inp.payment_id, inp.order_id)
        if claim.owner != inp.order_id:
            raise OrderConflict(
                f"payment id {inp.payment_id} already belongs to another order",
                field="payment_id",
                reason="payment_id_in_use",
            )
        return claim.new

    async def _start_run(
        self,
        inp: OrderInput,
        reuse: WorkflowIDReusePolicy,
        conflict: str,
        memo: dict[str, Any] | None = None,
    ) -> WorkflowHandle[Any, Any]:
        workflow_id = order_workflow_id(inp.order_id)
        try:
            return await self.client.start_workflow(
                ORDER_WORKFLOW,
                inp,
                id=workflow_id,
                task_queue=self.settings.order_task_queue,
                id_reuse_policy=reuse,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                # No execution timeout: the workflow enforces its own deadline, and its
                # compensation (refund, booking cancellation) retries until it lands, however
                # long an outage lasts. A hard timeout would cut it off with the money kept.
                memo=memo,
                search_attributes=start_attributes(inp),
            )
        except WorkflowAlreadyStartedError as err:
            raise OrderConflict(
                conflict, order_id=inp.order_id, workflow_id=workflow_id, run_id=err.run_id
            ) from None
        except RPCError as err:
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None

    async def _replay_start(
        self, order_id: str, keyed: IdempotentRequest, conflict: OrderConflict
    ) -> StartAnswer:
        """The first answer to this keyed request, if the order's run is its; else the
        conflict stands (another request started it, or its run is past retention)."""
        handle = self.client.get_workflow_handle(order_workflow_id(order_id))
        try:
            desc = await handle.describe()
            sent = await desc.memo_value(IDEMPOTENCY_MEMO, None)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise conflict from None
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None
        if not isinstance(sent, dict) or sent.get("key") != keyed.key:
            raise conflict
        if sent.get("fingerprint") != keyed.fingerprint:
            raise InvalidInput(
                "Idempotency-Key was already used with another request body",
                field="Idempotency-Key",
            )
        return StartAnswer(order_id, desc.id, desc.run_id, replayed=True)

    async def _refuse_known_order(self, order_id: str) -> None:
        """An order id is used once: its row (any run, even closed and past retention)."""
        async with self.sessions() as s:
            existing = await s.get(Order, order_id)
        if existing is not None:
            raise OrderConflict(
                f"order {order_id} already exists",
                order_id=order_id,
                workflow_id=existing.workflow_id,
                run_id=existing.run_id,
            )

    async def approve(self, order_id: str, reviewer: str, note: str | None = None) -> OrderView:
        return await self._update(order_id, UPDATE_APPROVE, ApproveRequest(reviewer, note))

    async def cancel(
        self, order_id: str, reason: str = "customer_request", requested_by: str = "api"
    ) -> OrderView:
        return await self._update(order_id, UPDATE_CANCEL, CancelRequest(reason, requested_by))

    async def update_address(
        self, order_id: str, address: dict[str, Any], requested_by: str = "api"
    ) -> OrderView:
        addr = validate_address(address)
        return await self._update(order_id, UPDATE_ADDRESS, AddressChange(addr, requested_by))

    async def _update(self, order_id: str, update: str, arg: Any) -> OrderView:
        validate_order_id(order_id)
        handle = self.client.get_workflow_handle(order_workflow_id(order_id))
        try:
            view = await handle.execute_update(update, arg, result_type=OrderStatus)
            return OrderView.from_workflow(view, source="update")
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                status = _REFUSAL_STATUS.get(cause.type or "", 409)
                details = cause.details[0] if cause.details else None
                if status == 422 and isinstance(details, dict) and details:
                    name = next(iter(details))
                    raise InvalidInput(
                        f"address.{name} {details[name]}", field=f"address.{name}"
                    ) from None
                raise OrderConflict(cause.message, reason=cause.type) from None
            raise OrderConflict(f"order {order_id} refused the request") from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                if await self._db_order(order_id) is not None:
                    raise OrderConflict(f"order {order_id} is already closed") from None
                raise OrderNotFound(f"order {order_id} not found") from None
            if err.status == RPCStatusCode.FAILED_PRECONDITION or "completed" in err.message:
                raise OrderConflict(f"order {order_id} is already closed") from None
            if await self._closed_in_db(order_id):  # it closed while the request was in flight
                raise OrderConflict(f"order {order_id} is already closed") from None
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            if await self._closed_in_db(order_id):
                raise OrderConflict(f"order {order_id} is already closed") from None
            raise Unavailable("Temporal did not answer the request in time") from None

    async def retry_order(self, order_id: str, fault_profile: str | None = None) -> StartAnswer:
        """Start a FAILED order again: a new run, a payment of its own (app/service/retry.py).

        The new run keeps the failed run's fault profile unless given another one (where
        ALLOW_FAULT_INJECTION is on: "the outage is over" on a dev stack)."""
        validate_order_id(order_id)
        check_fault_profile(self.settings, fault_profile)
        workflow_id = order_workflow_id(order_id)
        async with self.sessions() as s, s.begin():
            order, counted = await order_to_retry(s, order_id)
            first, failed_run = await first_input(self.client, workflow_id, order.run_id)
            # The failed run's own number decides, whatever events say: a retry never
            # reuses a number (its keys and references) an earlier run had.
            retry = max(counted, first.retry + 1)
            inp = retry_input(first, order, failed_run, retry, self.settings.shipping_task_queue)
            if fault_profile is not None:
                inp = dataclasses.replace(inp, fault_profile=fault_profile)
            # The retry's own reference, which no client id can take (app/orders/identity.py).
            if (await claim_payment_id(s, inp.payment_id, order_id)).owner != order_id:
                raise OrderConflict(
                    f"payment id {inp.payment_id} already belongs to another order",
                    field="payment_id",
                    reason="payment_id_in_use",
                )
            handle = await self._start_run(
                inp,
                # Temporal's own check behind ours: never beside a running or a completed run.
                WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                # Still closing (a refund after the close), or another retry came first.
                f"order {order_id} has a run that is not failed or still closing",
            )
            assert handle.result_run_id is not None
            # The row is the new run's from now on: not FAILED (a second retry is refused),
            # not closed (the new run's end is recorded like any other order's).
            reopen(order, handle.result_run_id, inp.payment_id)
            # Counted by the next retry, and where the status view of this run begins.
            s.add(retried_event(order_id, failed_run, handle.result_run_id, inp.payment_id))
        self._closed_views.pop(order_id, None)
        return StartAnswer(order_id, workflow_id, handle.result_run_id)

    async def _closed_in_db(self, order_id: str) -> bool:
        order = await self._db_order(order_id)
        return order is not None and order.state in TERMINAL_STATES

    # --- reads -----------------------------------------------------------------------------

    async def _db_order(self, order_id: str) -> Order | None:
        async with self.sessions() as s:
            return await s.get(Order, order_id)

    async def status(self, order_id: str) -> OrderView:
        """The order's live view: from the workflow while it runs, from the DB once closed."""
        validate_order_id(order_id)
        cached = self._closed_views.get(order_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        # Concurrent reads of one order share one lookup. Without this, readers that get
        # ahead of a slow first read all miss the cache for the same order at once.
        lookup = self._status_lookups.get(order_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup_status(order_id))
            self._status_lookups[order_id] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(order_id, done))
        # Shielded: one caller going away must not cancel the others' lookup.
        return await asyncio.shield(lookup)

    def _lookup_done(self, order_id: str, done: asyncio.Future[OrderView]) -> None:
        self._status_lookups.pop(order_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody awaited is not logged

    async def _lookup_status(self, order_id: str) -> OrderView:
        # Two queries: the order with its payment, then its attempt events.
        async with self.sessions() as s:
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
            order, payment = (row[0], row[1]) if row is not None else (None, None)
            errors, attempts = await attempt_history(s, order_id)
        if order is not None and order.state in TERMINAL_STATES:
            view = status_from_db(order, payment, errors, attempts)
            self._remember_closed(order_id, view)
            return view
        handle = self.client.get_workflow_handle(order_workflow_id(order_id))
        try:
            live: OrderStatus = await handle.query(QUERY_STATUS, result_type=OrderStatus)
            desc = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                if order is not None:
                    return status_from_db(order, payment, errors, attempts)
                raise OrderNotFound(f"order {order_id} not found") from None
            if order is not None:
                return status_from_db(order, payment, errors, attempts)
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None
        except WorkflowQueryFailedError as err:
            raise Unavailable(f"status query failed: {err}") from None
        # Attempts recorded per attempt in the DB are the most precise; pending ones too.
        merged = {**live.attempts, **attempts}
        pending = []
        for act in desc.raw_description.pending_activities:
            await open_failure(self.client.data_converter, act.last_failure)
            merged[step_of(act.activity_type.name)] = max(
                merged.get(step_of(act.activity_type.name), 0), act.attempt
            )
            pending.append(
                {
                    "activity": act.activity_type.name,
                    "attempt": act.attempt,
                    "last_failure": shown_failure(act.last_failure),
                }
            )
        payment_status = payment.status if payment else live.payment_status
        return OrderView.from_workflow(
            live,
            run_id=desc.run_id,
            workflow_status=desc.status.name if desc.status else None,
            attempts=merged,
            pending_activities=pending,
            errors=merge_errors([dataclasses.asdict(e) for e in live.errors], errors),
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
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None
        return True

    async def describe(self, workflow_id: str) -> dict[str, Any]:
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            d = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise OrderNotFound(f"workflow {workflow_id} not found") from None
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None
        raw = d.raw_description
        for a in raw.pending_activities:
            await open_failure(self.client.data_converter, a.last_failure)
        return {
            "workflow_id": d.id,
            "run_id": d.run_id,
            "type": d.workflow_type,
            "status": d.status.name if d.status else None,
            "task_queue": d.task_queue,
            "start_time": iso(d.start_time),
            "close_time": iso(d.close_time),
            "history_length": d.history_length,
            "pending_activities": [
                {
                    "activity": a.activity_type.name,
                    # The enum's name (SCHEDULED, STARTED...), not its number.
                    "state": PendingActivityState.Name(a.state).removeprefix(
                        "PENDING_ACTIVITY_STATE_"
                    ),
                    "attempt": a.attempt,
                    "last_failure": shown_failure(a.last_failure),
                }
                for a in raw.pending_activities
            ],
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
            if err.status == RPCStatusCode.NOT_FOUND:
                raise OrderNotFound(f"workflow {workflow_id} not found") from None
            raise Unavailable(f"Temporal is unavailable: {err.message}") from None
        return out
