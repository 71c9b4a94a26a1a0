"""/orders: start, status, cancel, update-address, approve, retry, list, events, history.

Commands on a running order go through Temporal Updates (via OrderService), so the answer
says whether the order accepted them; reads go to the status reader and the inspector
(app/service/layer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.types import DecoratedCallable

from app.api.deps import (
    Commands,
    Inspection,
    Operator,
    OrderId,
    Reviewer,
    StatusReads,
    Viewer,
    error_responses,
)
from app.api.schemas import (
    ApproveRequestIn,
    CancelRequestIn,
    EventList,
    HistoryOut,
    OrderList,
    OrderListQuery,
    StartOrderRequest,
    StartOrderResponse,
    UpdateAddressRequest,
)
from app.orders.messages import DEFAULT_CANCEL_REASON, order_workflow_id
from app.service.errors import InvalidInput
from app.service.inputs import refuse_test_knobs
from app.service.listing import OrderFilter
from app.service.views import OrderView

router = APIRouter(prefix="/orders", tags=["orders"])

_READ = error_responses(401, 403, 404, 422, 500, 503)
_COMMAND = error_responses(401, 403, 404, 409, 413, 422, 500, 503)


def _command(path: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A request to a running order, answered with its status view once it has taken it."""
    return router.post(path, summary=summary, response_model=OrderView, responses=_COMMAND)


def _read(
    path: str, summary: str, model: type[Any], **extra: Any
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    return router.get(path, summary=summary, response_model=model, responses=_READ, **extra)


def _ref(path: str, method: str) -> str:
    """An OpenAPI operationRef to one of this router's operations."""
    return f"#/paths/{path.replace('~', '~0').replace('/', '~1')}/{method}"


# What a started order leads to (OpenAPI links: clients and the schema fuzzer follow them
# from a start, or a retry, to the order's other operations).
_SAME_ORDER = {"order_id": "$request.path.order_id"}
ORDER_LINKS: dict[str, Any] = {
    name: {"operationRef": _ref(f"/orders/{{order_id}}/{path}", method), "parameters": _SAME_ORDER}
    for name, path, method in (
        ("GetStatus", "status", "get"),
        ("Approve", "signals/approve", "post"),
        ("Cancel", "signals/cancel", "post"),
        ("UpdateAddress", "signals/update-address", "post"),
        ("Retry", "retry", "post"),
        ("GetEvents", "events", "get"),
        ("GetHistory", "history", "get"),
    )
}


def _locate(request: Request, response: Response, order_id: str) -> None:
    """Point the answer of a start at the order's status."""
    location = request.app.url_path_for("order_status", order_id=order_id)
    response.headers["Location"] = request.scope.get("root_path", "") + location


@router.post(
    "/{order_id}/start",
    status_code=status.HTTP_201_CREATED,
    summary="Start an order",
    response_model=StartOrderResponse,
    responses={
        201: {
            "description": "Order workflow started",
            "headers": {
                "Location": {
                    "description": "The order's status URL",
                    "schema": {"type": "string"},
                }
            },
            "links": ORDER_LINKS,
        },
        200: {
            "description": "A repeat of an earlier request with the same Idempotency-Key and "
            "body: its answer again (same run)",
            "model": StartOrderResponse,
            "links": ORDER_LINKS,
        },
        **error_responses(401, 403, 409, 413, 422, 500, 503),
    },
)
async def start_order(
    order_id: OrderId,
    body: StartOrderRequest,
    orders: Commands,
    _caller: Operator,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes the request safe to send again: the same key with the same "
            "body answers 200 with the first answer (same run), the same key with another "
            "body is a 422. Without it a second start is a 409.",
        ),
    ] = None,
) -> StartOrderResponse:
    """Start the order's workflow (`order-{order_id}`). An order id is used once: a second
    start, while it runs or after it closed, is a 409 naming the existing run (unless it
    repeats a request with the same Idempotency-Key)."""
    # The CLI (an operator's tool) may still shorten timeouts; over HTTP all three are
    # test and demo knobs.
    refuse_test_knobs(
        orders.settings,
        fault_profile=body.fault_profile,
        review_timeout_s=body.review_timeout_s,
        deadline_s=body.deadline_s,
    )
    started = await orders.start_order(
        order_id,
        body.payment_id,
        body.address.model_dump(),
        items=[i.model_dump() for i in body.items] if body.items is not None else None,
        fault_profile=body.fault_profile,
        review_timeout_s=body.review_timeout_s,
        deadline_s=body.deadline_s,
        customer_id=body.customer_id,
        idempotency_key=idempotency_key,
    )
    _locate(request, response, order_id)
    if started.replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return StartOrderResponse.model_validate(started.as_dict())


@_read("/{order_id}/status", "Order status", OrderView, name="order_status")
async def order_status(order_id: OrderId, reader: StatusReads, _caller: Viewer) -> OrderView:
    """State, current step, address, payment, attempts per step, recent errors, deadline."""
    return await reader.status(order_id)


@_command("/{order_id}/signals/cancel", "Cancel an order")
async def cancel_order(
    order_id: OrderId,
    orders: Commands,
    principal: Operator,
    body: CancelRequestIn | None = None,
) -> OrderView:
    """Accepted until the carrier is dispatched (a charged payment is then refunded);
    409 after dispatch or once the order has closed."""
    reason = body.reason if body is not None else DEFAULT_CANCEL_REASON
    return await orders.cancel(order_id, reason=reason, requested_by=principal.name)


@_command("/{order_id}/signals/update-address", "Change the shipping address")
async def update_address(
    order_id: OrderId,
    body: UpdateAddressRequest,
    orders: Commands,
    principal: Operator,
) -> OrderView:
    """Accepted until dispatch; shipping uses the latest accepted address."""
    address = body.address.model_dump()
    return await orders.update_address(order_id, address, requested_by=principal.name)


@_command("/{order_id}/signals/approve", "Approve an order (manual review)")
async def approve_order(
    order_id: OrderId,
    orders: Commands,
    principal: Reviewer,
    body: ApproveRequestIn | None = None,
) -> OrderView:
    """Approval kept if it arrives before the review step; 409 once the review is over.

    The approver (`approved_by`, and `by` in the APPROVED event) is the caller: the API
    key's name, or `anonymous` while the API runs without keys. A `reviewer` named in the
    body never replaces it: it is kept in the note beside it (`reviewer named: ...`)."""
    return await orders.approve(
        order_id, reviewer=principal.name, note=approval_note(body) if body else None
    )


def approval_note(body: ApproveRequestIn) -> str | None:
    """The body's note, with the reviewer it names (a claim, not the approver) in front."""
    parts: list[str] = []
    if body.reviewer is not None:
        parts.append(f"reviewer named: {body.reviewer}")
    if body.note is not None:
        parts.append(body.note)
    return "; ".join(parts) if parts else None


@router.post(
    "/{order_id}/retry",
    status_code=status.HTTP_201_CREATED,
    summary="Retry a failed order",
    response_model=StartOrderResponse,
    responses={201: {"description": "A new run started", "links": ORDER_LINKS}, **_COMMAND},
)
async def retry_order(
    order_id: OrderId, orders: Commands, _caller: Operator, request: Request, response: Response
) -> StartOrderResponse:
    """Start a FAILED order again under the same order id: a new run, which charges a
    payment of its own (`<payment id>#r<N>`; the failed run's charge was refunded when it
    closed). 409 while it runs or closes, and for a completed or cancelled order."""
    retried = await orders.retry_order(order_id)
    _locate(request, response, order_id)
    return StartOrderResponse.model_validate(retried.as_dict())


@router.get("", summary="List orders", response_model=OrderList, responses=_READ)
async def list_orders(
    params: Annotated[OrderListQuery, Query()], inspector: Inspection, _caller: Viewer
) -> OrderList:
    """Newest first, from the database (the review queue, `step=MANUAL_REVIEW`: open orders
    waiting for a decision, oldest deadline first); with `query`, from Temporal's
    visibility store.
    Page with `cursor` (stable while orders arrive) or `offset`."""
    if params.query is not None:
        if params.model_fields_set - {"query", "limit", "cursor"}:
            raise InvalidInput("query takes the place of the other filters", field="query")
        page = await inspector.search_orders(params.query, limit=params.limit, cursor=params.cursor)
    else:
        filters = OrderFilter(
            state=params.state,
            step=params.step,
            payment_status=params.payment_status,
            created_after=params.created_after,
            created_before=params.created_before,
            reason=params.reason,
        )
        page = await inspector.list_orders(
            filters, limit=params.limit, offset=params.offset, cursor=params.cursor
        )
    return OrderList.model_validate(page)


@_read("/{order_id}/events", "The order's audit events", EventList)
async def order_events(order_id: OrderId, inspector: Inspection, _caller: Viewer) -> EventList:
    """Every state change and request, oldest first (the `events` table)."""
    events = await inspector.events(order_id)
    return EventList.model_validate({"order_id": order_id, "events": events})


@_read("/{order_id}/history", "Temporal event history (summary)", HistoryOut)
async def order_history(order_id: OrderId, inspector: Inspection, _caller: Viewer) -> HistoryOut:
    """The workflow's Temporal history, one line per event, without payloads."""
    workflow_id = order_workflow_id(order_id)
    events = await inspector.history(workflow_id)
    return HistoryOut.model_validate(
        {"order_id": order_id, "workflow_id": workflow_id, "events": events}
    )
