"""Order commands shared by the REST API and the CLI (one implementation, two front ends).

Errors are `ServiceError` subclasses carrying an HTTP-like status, so the API maps them to
responses and the CLI to one-line messages, and neither shows a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Unpack

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from app.orders.claims import claim_payment_id, release_payment_id
from app.orders.messages import (
    DEFAULT_CANCEL_REASON,
    ERR_INVALID_ORDER,
    ERR_ORDER_CANCELLED,
    ERR_ORDER_CLOSED,
    ERR_ORDER_DISPATCHED,
    ERR_REVIEW_OVER,
    ORDER_DEADLINE_S,
    ORDER_WORKFLOW,
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
    order_amount_cents,
    order_workflow_id,
)
from app.orders.search import start_attributes
from app.platform.settings import Settings
from app.platform.sql import as_json, driver, on_session
from app.platform.tables import Order
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
from app.service.retry import (
    first_input,
    order_to_retry,
    reopen,
    retried_event,
    retry_input,
)
from app.service.status import StatusReader
from app.service.views import OrderView

# The status of a refused update (the workflow's ApplicationError type): 409 or 422.
_REFUSAL_STATUS = {
    ERR_ORDER_DISPATCHED: 409,
    ERR_ORDER_CLOSED: 409,
    ERR_ORDER_CANCELLED: 409,
    ERR_REVIEW_OVER: 409,
    ERR_INVALID_ORDER: 422,
}


def _refusal(order_id: str, cause: BaseException | None) -> ServiceError:
    """The order's answer to a request it refused: its ApplicationError's type says 409 or
    422 (an address change's details name the field)."""
    if not isinstance(cause, ApplicationError):
        return OrderConflict(f"order {order_id} refused the request")
    status = _REFUSAL_STATUS.get(cause.type or "", 409)
    details = cause.details[0] if cause.details else None
    if status == 422 and isinstance(details, dict) and details:
        name = next(iter(details))
        return InvalidInput(f"address.{name} {details[name]}", field=f"address.{name}")
    return OrderConflict(cause.message, reason=cause.type)


def _payment_id_taken(payment_id: str) -> OrderConflict:
    return OrderConflict(
        f"payment id {payment_id} already belongs to another order",
        field="payment_id",
        reason="payment_id_in_use",
    )


log = logging.getLogger("app.service")

# The order's row as its run starts (see `_record_started`).
_STARTED = """
INSERT INTO orders (id, state, step, workflow_id, run_id, payment_id, address_json, amount,
    items_json, deadline_at)
VALUES (:id, :state, :step, :workflow_id, :run_id, :payment_id, CAST(:address AS jsonb),
    :amount, CAST(:items AS jsonb), :deadline_at)
ON CONFLICT (id) DO NOTHING
"""


class OrderService:
    """The order commands: start, approve, cancel, change the address, retry.

    A retry drops the order's cached status view from `reader`, the status reads of the
    same process (app/service/layer.py builds them together)."""

    def __init__(
        self,
        client: Client,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        reader: StatusReader | None = None,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.settings = settings
        self.reader = reader or StatusReader(client, sessions)

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
            async with driver(self.sessions) as db:
                await db.run(
                    _STARTED,
                    id=inp.order_id,
                    state=OrderState.PENDING,
                    step=Step.RECEIVE,
                    workflow_id=workflow_id,
                    run_id=run_id,
                    payment_id=inp.payment_id,
                    address=as_json(inp.address.as_dict()),
                    amount=Decimal(order_amount_cents(inp.items)) / 100,
                    items=as_json([vars(i) for i in inp.items]),
                    deadline_at=datetime.now(UTC).replace(tzinfo=None)
                    + timedelta(seconds=inp.deadline_s or ORDER_DEADLINE_S),
                )
        except (OSError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
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
        async with driver(self.sessions) as db:
            claim = await claim_payment_id(db, inp.payment_id, inp.order_id)
        if claim.owner != inp.order_id:
            raise _payment_id_taken(inp.payment_id)
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
            raise Unavailable.temporal(err.message) from None

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
            raise Unavailable.temporal(err.message) from None
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
        async with driver(self.sessions) as db:
            existing = await db.row(
                "SELECT workflow_id, run_id FROM orders WHERE id = :id", id=order_id
            )
        if existing is not None:
            raise OrderConflict(
                f"order {order_id} already exists",
                order_id=order_id,
                workflow_id=existing["workflow_id"],
                run_id=existing["run_id"],
            )

    async def approve(self, order_id: str, reviewer: str, note: str | None = None) -> OrderView:
        return await self._update(order_id, UPDATE_APPROVE, ApproveRequest(reviewer, note))

    async def cancel(
        self, order_id: str, reason: str = DEFAULT_CANCEL_REASON, requested_by: str = "api"
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
        except WorkflowUpdateFailedError as err:
            raise _refusal(order_id, err.cause) from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            raise await self._undelivered(order_id, err) from None
        return OrderView.from_workflow(view, source="update")

    async def _undelivered(
        self, order_id: str, err: RPCError | WorkflowUpdateRPCTimeoutOrCancelledError
    ) -> ServiceError:
        """Why a request did not reach the order: it has closed (409), never existed
        (404), or Temporal did not answer (503)."""
        closed = OrderConflict(f"order {order_id} is already closed")
        if isinstance(err, WorkflowUpdateRPCTimeoutOrCancelledError):
            if await self._closed_in_db(order_id):
                return closed
            return Unavailable("Temporal did not answer the request in time")
        if err.status == RPCStatusCode.NOT_FOUND:
            if await self._db_order(order_id) is not None:
                return closed
            return OrderNotFound(f"order {order_id} not found")
        if err.status == RPCStatusCode.FAILED_PRECONDITION or "completed" in err.message:
            return closed
        if await self._closed_in_db(order_id):  # it closed while the request was in flight
            return closed
        return Unavailable.temporal(err.message)

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
            if (await claim_payment_id(on_session(s), inp.payment_id, order_id)).owner != order_id:
                raise _payment_id_taken(inp.payment_id)
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
        self.reader.forget(order_id)
        return StartAnswer(order_id, workflow_id, handle.result_run_id)

    async def _closed_in_db(self, order_id: str) -> bool:
        order = await self._db_order(order_id)
        return order is not None and order.state in TERMINAL_STATES

    async def _db_order(self, order_id: str) -> Order | None:
        async with self.sessions() as s:
            return await s.get(Order, order_id)
