"""Finding orders in the database: each filter, stable order, and a cursor walk.

On a scratch database (`scratch`), so the expected lists are exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.orders.messages import OrderState, PaymentStatus, Step
from app.platform.tables import Order, Payment
from app.service.errors import InvalidInput
from app.service.listing import OrderFilter, encode_cursor, order_page

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 9, 0, 0)

# id, state, step, reason, minutes after T0, payment status (None: no payment row)
ORDERS = [
    ("o1", OrderState.COMPLETED, Step.SHIP, None, 0, PaymentStatus.CHARGED),
    ("o2", OrderState.FAILED, Step.SHIP, "shipping_failed", 1, PaymentStatus.REFUNDED),
    ("o3", OrderState.VALIDATED, Step.MANUAL_REVIEW, None, 2, None),
    ("o4", OrderState.CANCELLED, Step.MANUAL_REVIEW, "review_timeout", 3, None),
    ("o5", OrderState.VALIDATED, Step.MANUAL_REVIEW, None, 4, None),
    # o6 and o7 share a creation time: the id decides their order.
    ("o6", OrderState.FAILED, Step.RECEIVE, "receive_failed", 5, None),
    ("o7", OrderState.COMPLETED, Step.SHIP, None, 5, PaymentStatus.CHARGED),
]


@pytest.fixture
async def orders(
    scratch: async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession]:
    async with scratch() as s, s.begin():
        await s.execute(
            insert(Order),
            [
                {
                    "id": oid,
                    "state": state,
                    "step": step,
                    "reason": reason,
                    "payment_id": f"pmt-{oid}",
                    "created_at": T0 + timedelta(minutes=at),
                    "updated_at": T0 + timedelta(minutes=at),
                }
                for oid, state, step, reason, at, _ in ORDERS
            ],
        )
        await s.execute(
            insert(Payment),
            [
                {
                    "payment_id": f"pmt-{oid}",
                    "order_id": oid,
                    "status": paid,
                    "amount": Decimal("19.99"),
                }
                for oid, *_, paid in ORDERS
                if paid is not None
            ],
        )
    return scratch


async def ids(sessions: async_sessionmaker[AsyncSession], filters: OrderFilter) -> list[str]:
    """Every match (one page holds them all): the total counts the same filter."""
    async with sessions() as s:
        page = await order_page(s, filters, limit=100)
    assert (page["total"], page["next_cursor"]) == (len(page["items"]), None)
    return [o["order_id"] for o in page["items"]]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (OrderFilter(), ["o7", "o6", "o5", "o4", "o3", "o2", "o1"]),
        (OrderFilter(state=OrderState.COMPLETED), ["o7", "o1"]),
        # The review queue: waiting at the review step, not closed there.
        # The review queue: open orders only (o4 was cancelled in review), oldest deadline
        # (here: creation, no deadline written) first.
        (OrderFilter(state=OrderState.VALIDATED, step=Step.MANUAL_REVIEW), ["o3", "o5"]),
        (OrderFilter(step=Step.MANUAL_REVIEW), ["o3", "o5"]),
        (OrderFilter(payment_status=PaymentStatus.REFUNDED), ["o2"]),
        (OrderFilter(payment_status=PaymentStatus.CHARGED), ["o7", "o1"]),
        (OrderFilter(payment_status=PaymentStatus.NONE), ["o6", "o5", "o4", "o3"]),
        (OrderFilter(reason="review_timeout"), ["o4"]),
        (OrderFilter(created_after=T0 + timedelta(minutes=3)), ["o7", "o6", "o5"]),
        (OrderFilter(created_before=T0 + timedelta(minutes=2)), ["o2", "o1"]),
        # An aware bound is compared in UTC (the table stores naive UTC).
        (
            OrderFilter(
                created_after=(T0 + timedelta(seconds=30)).replace(tzinfo=UTC),
                created_before=(T0 + timedelta(minutes=3)).replace(tzinfo=UTC),
            ),
            ["o3", "o2"],
        ),
        (OrderFilter(state=OrderState.FAILED, payment_status=PaymentStatus.NONE), ["o6"]),
    ],
    ids=lambda v: repr(v) if isinstance(v, OrderFilter) else None,
)
async def test_each_filter_narrows_the_list(
    orders: async_sessionmaker[AsyncSession], filters: OrderFilter, expected: list[str]
) -> None:
    assert await ids(orders, filters) == expected
    async with orders() as s:
        # The count (from the payments' side with a payment status) agrees with the list.
        assert (await order_page(s, filters, limit=50))["total"] == len(expected)


async def test_cursor_walks_every_order_once_in_order(
    orders: async_sessionmaker[AsyncSession],
) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    async with orders() as s:
        while True:
            page = await order_page(s, OrderFilter(), limit=3, cursor=cursor)
            pages += 1
            assert page["total"] == len(ORDERS)
            seen += [o["order_id"] for o in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert pages == 3
    assert seen == ["o7", "o6", "o5", "o4", "o3", "o2", "o1"]


async def test_a_cursor_is_not_shifted_by_newer_orders(
    orders: async_sessionmaker[AsyncSession],
) -> None:
    async with orders() as s:
        first = await order_page(s, OrderFilter(), limit=2)
    assert [o["order_id"] for o in first["items"]] == ["o7", "o6"]
    async with orders() as s, s.begin():
        await s.execute(
            insert(Order).values(id="o8", state="RECEIVED", created_at=T0 + timedelta(hours=1))
        )
    async with orders() as s:
        second = await order_page(s, OrderFilter(), limit=2, cursor=first["next_cursor"])
    # An offset would now repeat o6; the cursor goes on after it.
    assert [o["order_id"] for o in second["items"]] == ["o5", "o4"]


async def test_last_page_has_no_cursor(orders: async_sessionmaker[AsyncSession]) -> None:
    async with orders() as s:
        page = await order_page(s, OrderFilter(state=OrderState.COMPLETED), limit=2)
    assert [o["order_id"] for o in page["items"]] == ["o7", "o1"]
    assert page["next_cursor"] is None


@pytest.mark.parametrize(
    ("cursor", "offset", "field"),
    [("not-a-cursor!", 0, "cursor"), (encode_cursor(T0, "o3"), 5, "offset")],
)
async def test_bad_cursor_is_refused_naming_the_field(
    orders: async_sessionmaker[AsyncSession], cursor: str, offset: int, field: str
) -> None:
    async with orders() as s:
        with pytest.raises(InvalidInput) as refused:
            await order_page(s, OrderFilter(), limit=2, offset=offset, cursor=cursor)
    assert refused.value.field == field


async def test_review_queue_is_oldest_deadline_first_through_the_cursor(
    scratch: async_sessionmaker[AsyncSession],
) -> None:
    rows = [
        # id, state, minutes after T0 created, deadline minutes after T0
        ("q1", OrderState.VALIDATED, 0, 9),
        ("q2", OrderState.VALIDATED, 1, 3),
        ("q3", OrderState.CANCELLED, 2, 1),
        ("q4", OrderState.FAILED, 3, 2),
        ("q5", OrderState.VALIDATED, 4, 5),
    ]
    async with scratch() as s, s.begin():
        await s.execute(
            insert(Order),
            [
                {
                    "id": oid,
                    "state": state,
                    "step": Step.MANUAL_REVIEW,
                    "created_at": T0 + timedelta(minutes=at),
                    "deadline_at": T0 + timedelta(minutes=deadline),
                }
                for oid, state, at, deadline in rows
            ],
        )
    queue = OrderFilter(step=Step.MANUAL_REVIEW)
    seen: list[str] = []
    cursor = None
    async with scratch() as s:
        while True:
            page = await order_page(s, queue, limit=1, cursor=cursor)
            seen += [o["order_id"] for o in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == ["q2", "q5", "q1"]
    async with scratch() as s:
        first = await order_page(s, queue, limit=5)
    assert first["total"] == 3
    assert (
        first["items"][0]["deadline_at"]
        == (T0 + timedelta(minutes=3)).replace(tzinfo=UTC).isoformat()
    )


async def test_offset_is_bounded(orders: async_sessionmaker[AsyncSession]) -> None:
    async with orders() as s:
        with pytest.raises(InvalidInput, match="cursor"):
            await order_page(s, OrderFilter(), limit=5, offset=10_001)
