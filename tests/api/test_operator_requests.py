"""What operators reach for over HTTP, on the real stack: list filters and their refusals,
Temporal search attributes queried through the real dev server, a start that is safe to
send again (Idempotency-Key), and the refusals of a retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.orders.search import CUSTOMER_ID, ORDER_AMOUNT_CENTS, ORDER_STATE, ORDER_STEP
from tests.helpers import ADDRESS, NEW_ADDRESS, Running, eventually, serving, wait_for_step

pytestmark = pytest.mark.integration


def new_id() -> str:
    return f"find-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
async def api(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(running.settings) as client:
        yield client


def start_body(order_id: str, **extra: Any) -> dict[str, Any]:
    return {"payment_id": f"pmt-{order_id}", "address": ADDRESS, **extra}


def assert_refused(r: httpx.Response, status: int, field: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field, r.text


# --- filters -----------------------------------------------------------------------------


async def test_review_queue_lists_orders_waiting_for_review(
    api: httpx.AsyncClient, running: Running
) -> None:
    waiting = new_id()
    assert (await api.post(f"/orders/{waiting}/start", json=start_body(waiting))).status_code == 201
    await wait_for_step(running, waiting, "MANUAL_REVIEW")
    r = await api.get("/orders", params={"step": "MANUAL_REVIEW", "limit": 100})
    assert r.status_code == 200, r.text
    page = r.json()
    assert waiting in [o["order_id"] for o in page["items"]]
    assert {o["step"] for o in page["items"]} == {"MANUAL_REVIEW"}
    r = await api.get("/orders", params={"state": "MANUAL_REVIEW"})
    # A step is not a state: the answer says which field is wrong.
    assert_refused(r, 422, "state")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"step": "PACK"}, "step"),
        ({"payment_status": "maybe"}, "payment_status"),
        ({"created_after": "yesterday"}, "created_after"),
        # Without an offset a time is ambiguous.
        ({"created_before": "2025-01-01T00:00:00"}, "created_before"),
        ({"limit": 0}, "limit"),
        ({"colour": "red"}, "colour"),
        ({"stat": "FAILED"}, "stat"),
        ({"query": "OrderState='FAILED'", "state": "FAILED"}, "query"),
        ({"query": "OrderState = = 'FAILED'"}, "query"),
        ({"cursor": "%%%"}, "cursor"),
        (
            {"created_after": "2026-12-03T10:00:00Z", "created_before": "2026-12-03T09:00:00Z"},
            "created_after",
        ),
        # A page token Temporal did not issue: refused here, not retried by the server.
        ({"query": "OrderState='FAILED'", "cursor": "bm9wZQ"}, "cursor"),
    ],
)
async def test_bad_list_parameters_are_refused_naming_the_field(
    api: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    assert_refused(await api.get("/orders", params=params), 422, field)


async def test_cursor_pages_over_the_api(api: httpx.AsyncClient, running: Running) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    started = [new_id(), new_id(), new_id()]
    for order_id in started:
        r = await api.post(f"/orders/{order_id}/start", json=start_body(order_id))
        assert r.status_code == 201, r.text
    for order_id in started:
        await wait_for_step(running, order_id, "MANUAL_REVIEW")
    params: dict[str, Any] = {"limit": 2, "created_after": since.isoformat()}
    seen: list[str] = []
    for _ in range(3):
        r = await api.get("/orders", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [o["order_id"] for o in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    # Newest first, each once, over two pages (other tests' orders may come between).
    mine = [o for o in seen if o in started]
    assert mine == started[::-1] and len(seen) == len(set(seen))
    assert "cursor" in params


# --- search attributes -------------------------------------------------------------------


async def test_search_attributes_follow_the_order(api: httpx.AsyncClient, running: Running) -> None:
    order_id = new_id()
    customer = f"cust-{order_id}"
    body = start_body(order_id, customer_id=customer)
    assert (await api.post(f"/orders/{order_id}/start", json=body)).status_code == 201
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    handle = running.client.get_workflow_handle(f"order-{order_id}")
    attrs = (await handle.describe()).typed_search_attributes
    assert (attrs.get(ORDER_STATE), attrs.get(ORDER_STEP)) == ("VALIDATED", "MANUAL_REVIEW")
    assert (attrs.get(CUSTOMER_ID), attrs.get(ORDER_AMOUNT_CENTS)) == (customer, 1999)

    async def listed(query: str) -> list[dict[str, Any]] | None:
        r = await api.get("/orders", params={"query": query})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items or None

    # Visibility is eventually consistent: the dev server indexes within moments.
    found = await eventually(
        lambda: listed(f"CustomerId='{customer}' AND OrderStep='MANUAL_REVIEW'"),
        what="the order in the review queue by search attribute",
    )
    assert [(o["order_id"], o["state"], o["step"]) for o in found] == [
        (order_id, "VALIDATED", "MANUAL_REVIEW")
    ]

    r = await api.post(f"/orders/{order_id}/signals/approve", json={"reviewer": "alice"})
    assert r.status_code == 200, r.text
    await handle.result()
    done = await eventually(
        lambda: listed(f"CustomerId='{customer}' AND OrderState='COMPLETED'"),
        what="the completed order by search attribute",
    )
    assert [(o["order_id"], o["step"]) for o in done] == [(order_id, "SHIP")]


async def test_query_pages_follow_their_cursor(api: httpx.AsyncClient, running: Running) -> None:
    customer = f"cust-{new_id()}"
    started = [new_id(), new_id()]
    for order_id in started:
        body = start_body(order_id, customer_id=customer)
        assert (await api.post(f"/orders/{order_id}/start", json=body)).status_code == 201
    query = f"CustomerId='{customer}'"

    # Both in Temporal's visibility first: a page of 1 carries a next token whenever it is
    # full, so a first page taken while only one was visible leads to an empty second.
    async def both_visible() -> bool:
        return (await running.client.count_workflows(query)).count == len(started)

    await eventually(both_visible, what="both orders visible to the query")

    async def first_page() -> dict[str, Any] | None:
        r = await api.get("/orders", params={"query": query, "limit": 1})
        assert r.status_code == 200, r.text
        page: dict[str, Any] = r.json()
        return page if page["next_cursor"] else None

    page = await eventually(first_page, what="both orders visible to the query")
    r = await api.get("/orders", params={"query": query, "limit": 1, "cursor": page["next_cursor"]})
    assert r.status_code == 200, r.text
    seen = [o["order_id"] for o in page["items"] + r.json()["items"]]
    assert sorted(seen) == sorted(started), seen
    # A cursor belongs to its query.
    other = {"query": "OrderState='FAILED'", "cursor": page["next_cursor"]}
    assert_refused(await api.get("/orders", params=other), 422, "cursor")


# --- safe retries of a start --------------------------------------------------------------


async def test_same_key_sent_five_times_at_once_starts_one_run(
    api: httpx.AsyncClient, running: Running
) -> None:
    order_id = new_id()
    headers = {"Idempotency-Key": f"key-{order_id}"}
    answers = await asyncio.gather(
        *(
            api.post(f"/orders/{order_id}/start", json=start_body(order_id), headers=headers)
            for _ in range(5)
        )
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200, 200, 200, 201], [r.text for r in answers]
    run_ids = {r.json()["run_id"] for r in answers}
    assert len(run_ids) == 1
    replays = [r for r in answers if r.status_code == 200]
    assert all(r.headers["Idempotent-Replayed"] == "true" for r in replays)
    runs = [w async for w in running.client.list_workflows(f"WorkflowId='order-{order_id}'")]
    assert [w.run_id for w in runs] == list(run_ids)

    # Later, too (the order has moved on): the first answer again, not a 409.
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    again = await api.post(f"/orders/{order_id}/start", json=start_body(order_id), headers=headers)
    assert (again.status_code, again.json()["run_id"]) == (200, run_ids.pop())


async def test_same_key_with_another_body_is_refused(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    headers = {"Idempotency-Key": f"key-{order_id}"}
    first = await api.post(f"/orders/{order_id}/start", json=start_body(order_id), headers=headers)
    assert first.status_code == 201, first.text
    other = start_body(order_id, address=NEW_ADDRESS)
    r = await api.post(f"/orders/{order_id}/start", json=other, headers=headers)
    assert_refused(r, 422, "Idempotency-Key")


async def test_without_a_key_or_with_another_key_a_second_start_is_a_conflict(
    api: httpx.AsyncClient,
) -> None:
    order_id = new_id()
    first = await api.post(
        f"/orders/{order_id}/start",
        json=start_body(order_id),
        headers={"Idempotency-Key": f"key-{order_id}"},
    )
    assert first.status_code == 201, first.text
    for headers in ({}, {"Idempotency-Key": f"other-{order_id}"}):
        r = await api.post(f"/orders/{order_id}/start", json=start_body(order_id), headers=headers)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["run_id"] == first.json()["run_id"]


@pytest.mark.parametrize("key", ["", "with space", "x" * 256])
async def test_malformed_key_is_refused(api: httpx.AsyncClient, key: str) -> None:
    order_id = new_id()
    r = await api.post(
        f"/orders/{order_id}/start", json=start_body(order_id), headers={"Idempotency-Key": key}
    )
    assert_refused(r, 422, "Idempotency-Key")


# --- retry of a failed order (the whole path: tests/orders/test_retry.py) -----------------


async def test_retry_refusals_over_http(api: httpx.AsyncClient, running: Running) -> None:
    assert_refused(await api.post(f"/orders/{new_id()}/retry"), 404, None)
    waiting = new_id()
    assert (await api.post(f"/orders/{waiting}/start", json=start_body(waiting))).status_code == 201
    await wait_for_step(running, waiting, "MANUAL_REVIEW")
    r = await api.post(f"/orders/{waiting}/retry")
    assert r.status_code == 409, r.text
    assert "only a FAILED order" in r.json()["error"]["message"]
