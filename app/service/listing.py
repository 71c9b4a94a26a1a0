"""Finding orders: filtered pages of the `orders` table, and Temporal visibility queries.

Pages are newest first, ordered by (created_at, id) so the order is total and stable. A
cursor names the last row of a page; the next page starts strictly after it, so rows
written meanwhile neither repeat nor shift a page the way an offset does. A query's cursor
wraps Temporal's page token with a MAC of the query and the token, keyed by the
deployment's secrets (API_KEYS, PAYLOAD_KEYS): the server answers a token it did not issue
with an internal error, retried for seconds, so a foreign or made-up one is refused here,
and a caller cannot make one (a plain hash of the query could be computed by anyone).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowExecution
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import (
    ORDER_WORKFLOW,
    TERMINAL_STATES,
    OrderState,
    PaymentStatus,
    Step,
)
from app.orders.search import ORDER_STATE, ORDER_STEP
from app.orders.validation import order_id_problem
from app.platform.settings import Settings, get_settings
from app.platform.tables import Order, Payment
from app.service.errors import InvalidInput, Unavailable
from app.service.status import iso
from app.service.visibility import confined_query


@dataclass(frozen=True)
class OrderFilter:
    """Every field narrows the list; None leaves it open."""

    state: OrderState | None = None
    step: Step | None = None
    payment_status: PaymentStatus | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        after, before = self.created_after, self.created_before
        if after and before and after >= before:
            # Not an empty page: a reversed range is a mistake worth naming.
            raise InvalidInput(
                "created_after must be earlier than created_before", field="created_after"
            )

    @property
    def review_queue(self) -> bool:
        """`step=MANUAL_REVIEW` is the review queue: open orders waiting for a decision
        (an order cancelled or failed in review keeps MANUAL_REVIEW as its last step)."""
        return self.step == Step.MANUAL_REVIEW

    def apply(self, q: Select[Any]) -> Select[Any]:
        if self.state:
            q = q.where(Order.state == self.state)
        if self.review_queue:
            # Literal, as migration 0010's partial index states it (a bound parameter
            # would keep the planner from proving the index covers the query).
            q = q.where(text(REVIEW_QUEUE_ROWS))
        elif self.step:
            q = q.where(Order.step == self.step)
        if self.reason:
            q = q.where(Order.reason == self.reason)
        if self.created_after:
            q = q.where(Order.created_at > _naive_utc(self.created_after))
        if self.created_before:
            q = q.where(Order.created_at < _naive_utc(self.created_before))
        if self.payment_status == PaymentStatus.NONE:
            q = q.where(~select(Payment.payment_id).where(_payment_of_order()).exists())
        elif self.payment_status:
            # A scalar subquery, not EXISTS: the planner misjudges the two-column semi-join
            # as matching nothing and hashes every payment of the status; this stays a
            # primary-key probe per order row read, newest first.
            status = select(Payment.status).where(_payment_of_order()).scalar_subquery()
            q = q.where(status == self.payment_status)
        return q

    def counted(self) -> Select[Any]:
        """The rows to count (up to MAX_COUNTED). With a payment status, from the payments
        of that status (their index), each checked against its order: bounded by the
        count, not by the orders read to find that many."""
        if not self.payment_status or self.payment_status == PaymentStatus.NONE:
            return self.apply(select(Order.id))
        others = replace(self, payment_status=None)
        order = others.apply(
            select(Order.id).where(
                Order.id == Payment.order_id, Order.payment_id == Payment.payment_id
            )
        ).scalar_subquery()
        return select(Payment.order_id).where(
            Payment.status == self.payment_status, order.is_not(None)
        )


_TERMINAL_LIST = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATES))
REVIEW_QUEUE_ROWS = f"orders.step = 'MANUAL_REVIEW' AND orders.state NOT IN ({_TERMINAL_LIST})"


def _payment_of_order() -> Any:
    return (Payment.payment_id == Order.payment_id) & (Payment.order_id == Order.id)


def _naive_utc(at: datetime) -> datetime:
    """The table's timestamps are naive UTC."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


# Paging is bounded: an offset page skips at most MAX_OFFSET rows (a cursor goes anywhere),
# and the total is counted up to MAX_COUNTED, whatever the table's size.
MAX_OFFSET = 10_000
MAX_COUNTED = 10_000

BAD_CURSOR = "cursor is not one this API handed out (take next_cursor of the last page)"
BAD_QUERY_CURSOR = (
    "cursor is not one this API handed out for this query (take next_cursor of its last page)"
)


_QUEUE_ORDER = "deadline"


def _to_cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _from_cursor(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def encode_cursor(at: datetime, order_id: str, review_queue: bool = False) -> str:
    """The last row of a page, by the list's own order: newest first (created_at), or the
    review queue's (deadline). The queue's cursors say so, and each list refuses the other's:
    a position in one order means another set of rows in the other."""
    row: list[str] = [at.isoformat(), order_id]
    return _to_cursor(json.dumps([*row, _QUEUE_ORDER] if review_queue else row).encode())


def decode_cursor(cursor: str, review_queue: bool = False) -> tuple[datetime, str]:
    """The row a cursor of this list names. A made-up one is refused here: whatever it
    holds goes into a statement (a NUL or a time zone there would be the database's
    error, a 500)."""
    try:
        created, order_id, *order = json.loads(_from_cursor(cursor))
        at = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput(BAD_CURSOR, field="cursor") from None
    if order != ([_QUEUE_ORDER] if review_queue else []):
        raise InvalidInput(BAD_CURSOR, field="cursor")
    if at.tzinfo is not None or not isinstance(order_id, str) or order_id_problem(order_id):
        raise InvalidInput(BAD_CURSOR, field="cursor")
    return at, order_id


_MAC_CHARS = 32


def query_cursor_key(settings: Settings) -> bytes:
    """The MAC key of query cursors: the same in every API and CLI process of a
    deployment (they share these secrets), unguessable where the secrets are set."""
    parts = [
        b"order-query-cursor",
        settings.api_keys.get_secret_value().encode(),
        settings.payload_keys.get_secret_value().encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).digest()


def _mac(key: bytes, query: str, token: bytes) -> str:
    signed = hmac.new(key, query.encode() + b"\0" + token, hashlib.sha256)
    return signed.hexdigest()[:_MAC_CHARS]


def encode_query_cursor(query: str, token: bytes, key: bytes | None = None) -> str:
    key = key if key is not None else query_cursor_key(get_settings())
    return f"q{_mac(key, query, token)}{_to_cursor(token)}"


def decode_query_cursor(query: str, cursor: str, key: bytes | None = None) -> bytes:
    """Temporal's page token, if `cursor` is a page of this very query that this
    deployment handed out."""
    key = key if key is not None else query_cursor_key(get_settings())
    if not cursor.startswith("q") or len(cursor) <= _MAC_CHARS + 1:
        raise InvalidInput(BAD_QUERY_CURSOR, field="cursor")
    try:
        token = _from_cursor(cursor[_MAC_CHARS + 1 :])
    except (binascii.Error, ValueError):
        raise InvalidInput(BAD_QUERY_CURSOR, field="cursor") from None
    if not hmac.compare_digest(cursor[1 : _MAC_CHARS + 1], _mac(key, query, token)):
        raise InvalidInput(BAD_QUERY_CURSOR, field="cursor")
    return token


async def order_page(
    s: AsyncSession,
    filters: OrderFilter,
    limit: int,
    offset: int = 0,
    cursor: str | None = None,
) -> dict[str, Any]:
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(
            f"offset must be from 0 to {MAX_OFFSET} (page further with cursor)", field="offset"
        )
    q = filters.apply(select(Order))
    counted = filters.counted().limit(MAX_COUNTED + 1).subquery()
    total = (await s.execute(select(func.count()).select_from(counted))).scalar_one()
    # Newest first; the review queue is worked through oldest deadline first.
    key = (_QUEUE_KEY if filters.review_queue else Order.created_at, Order.id)
    if cursor is not None:
        if offset:
            raise InvalidInput("give either cursor or offset, not both", field="offset")
        at, order_id = decode_cursor(cursor, filters.review_queue)
        after = tuple_(*key) > tuple_(at, order_id)
        q = q.where(after if filters.review_queue else tuple_(*key) < tuple_(at, order_id))
    order = [k.asc() for k in key] if filters.review_queue else [k.desc() for k in key]
    # One row more than asked tells whether there is a next page.
    rows = list((await s.execute(q.order_by(*order).limit(limit + 1).offset(offset))).scalars())
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if page else None
    if last is not None:
        last_at = (last.deadline_at or last.created_at) if filters.review_queue else last.created_at
    return {
        "items": [_summary(o) for o in page],
        "total": min(total, MAX_COUNTED),
        "total_capped": total > MAX_COUNTED,
        "limit": limit,
        "offset": offset,
        "next_cursor": (
            encode_cursor(last_at, last.id, filters.review_queue)
            if more and last is not None
            else None
        ),
    }


# The review queue's order (migration 0007 indexes it): the order's deadline, or its
# creation for a row written before it had one.
_QUEUE_KEY = func.coalesce(Order.deadline_at, Order.created_at)


def _summary(o: Order) -> dict[str, Any]:
    return {
        "order_id": o.id,
        "workflow_id": o.workflow_id,
        "state": o.state,
        "step": o.step,
        "payment_id": o.payment_id,
        "reason": o.reason,
        "created_at": iso(o.created_at),
        "updated_at": iso(o.updated_at),
        "deadline_at": iso(o.deadline_at),
    }


async def search_orders(
    client: Client, query: str, limit: int, cursor: str | None = None, key: bytes | None = None
) -> dict[str, Any]:
    """Orders whose workflow matches a visibility query, e.g. "OrderState='FAILED'"
    (the search attributes of app/orders/search.py), newest first."""
    # Parsed against the allow-list and rebuilt: only ever this app's orders.
    confined = confined_query(ORDER_WORKFLOW, query)
    token = decode_query_cursor(query, cursor, key) if cursor is not None else None
    pages = client.list_workflows(confined, page_size=limit, next_page_token=token)
    try:
        await pages.fetch_next_page()
    except RPCError as err:
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            # Our words: the server's parser message quotes the confined query.
            raise InvalidInput(
                "query is not one Temporal accepts for these search attributes (compare "
                "each with a value of its type: text for OrderState, OrderStep, CustomerId, "
                "WorkflowId and ExecutionStatus, a whole number for OrderAmountCents, an ISO 8601 "
                "time for StartTime and CloseTime)",
                field="query",
            ) from None
        raise Unavailable.temporal(err.message) from None
    next_token = pages.next_page_token
    return {
        "items": [_execution_summary(w) for w in pages.current_page or []],
        "total": None,
        "limit": limit,
        "offset": 0,
        "next_cursor": encode_query_cursor(query, next_token, key) if next_token else None,
    }


def _execution_summary(w: WorkflowExecution) -> dict[str, Any]:
    attrs = w.typed_search_attributes
    return {
        "order_id": w.id.removeprefix("order-"),
        "workflow_id": w.id,
        "state": attrs.get(ORDER_STATE) or OrderState.PENDING,
        "step": attrs.get(ORDER_STEP) or None,
        "payment_id": None,
        "reason": None,
        "created_at": w.start_time.isoformat(),
        "updated_at": (w.close_time or w.execution_time or w.start_time).isoformat(),
        "deadline_at": None,
    }
