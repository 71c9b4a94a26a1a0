"""Hostile callers against today's API additions: `/stats?window=`, the review queue's
cursor (`/orders?step=MANUAL_REVIEW`), the paging bounds, and stats reads racing writes."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import ADDRESS, Running, serving, wait_for_step

pytestmark = pytest.mark.integration

WINDOWS = {"1h", "24h", "30d", "all"}


def new_id() -> str:
    return f"hwin-{uuid.uuid4().hex[:10]}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def assert_422(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, f"{r.request.url} -> {r.status_code} {r.text}"
    error: dict[str, Any] = r.json()["error"]
    assert error.get("field") == field or field in json.dumps(error), error


@pytest.fixture(scope="module")
async def api(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(running.settings) as client:
        yield client


async def _start(running: Running) -> str:
    order_id = new_id()
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    return order_id


# --- /stats?window= ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "window=",
        "window=1H",
        "window=%201h",
        "window=1h%20",
        "window=1h;drop",
        "window=1h%3Bdrop%20table%20orders",
        "window=" + "h" * 5000,
        "window=1h&window=24h",
        "window=1h&window=bogus",
        "window=bogus&window=1h",
        "window=%E2%91%A0h",  # circled digit one
        "window=%EF%BC%91h",  # fullwidth 1
        "window=1%00h",
        "window=%00",
        "window=1%E2%80%8Bh",  # zero-width space
        "window=%FF%FE",
        "window=ALL",
        "window=-1h",
        "window=1e9h",
    ],
)
async def test_odd_windows_are_a_422_or_an_answer(api: httpx.AsyncClient, raw: str) -> None:
    r = await api.get(f"/stats?{raw}")
    assert r.status_code in (200, 422), f"GET /stats?{raw[:80]} -> {r.status_code} {r.text[:500]}"
    if r.status_code == 422:
        assert_422(r, "window")
    else:
        body = r.json()
        assert body["window"]["name"] in WINDOWS, body["window"]


async def test_valid_windows_answer(api: httpx.AsyncClient) -> None:
    for name in sorted(WINDOWS):
        r = await api.get("/stats", params={"window": name})
        assert r.status_code == 200, r.text
        assert r.json()["window"]["name"] == name


# --- the review queue's cursor ----------------------------------------------------


async def test_review_queue_refuses_a_foreign_or_made_up_cursor(
    api: httpx.AsyncClient, running: Running
) -> None:
    for _ in range(3):
        await _start(running)
    r = await api.get("/orders", params={"limit": 1})
    assert r.status_code == 200, r.text
    plain = r.json()["next_cursor"]
    assert plain, r.json()
    r = await api.get("/orders", params={"limit": 1, "step": "PAYMENT"})
    other_step = r.json().get("next_cursor") if r.status_code == 200 else None

    baseline = await api.get("/orders", params={"step": "MANUAL_REVIEW", "limit": 100})
    assert baseline.status_code == 200, baseline.text

    bad = [
        plain,
        plain[:-1],
        plain[: len(plain) // 2],
        plain + "A",
        plain[::-1],
        "x" + plain,
        _b64(b"garbage"),
        _b64(b"\x00" * 16),
        _b64(b"\xff\xfe\xfd"),
        _b64(json.dumps(["2026-01-01T00:00:00", "order-1"]).encode()),
        _b64(json.dumps({"deadline": "2026-01-01T00:00:00", "id": "x"}).encode()),
        _b64(json.dumps(["not-a-date", "x"]).encode()),
        _b64(json.dumps([None, None, None]).encode()),
        _b64(json.dumps([]).encode()),
        "!!!!",
        "=",
        "r",
        "q",
        "\u00e9\u00e9",
        "A" * 1999,
    ]
    if other_step:
        bad.append(other_step)
    failures = []
    for cursor in bad:
        r = await api.get("/orders", params={"step": "MANUAL_REVIEW", "cursor": cursor})
        if r.status_code != 422 or r.json()["error"].get("field") != "cursor":
            failures.append(
                f"GET /orders?step=MANUAL_REVIEW&cursor={cursor[:120]!r} -> {r.status_code} "
                f"{r.text[:300]}"
            )
    assert not failures, "\n".join(failures)


async def test_a_review_cursor_is_refused_by_a_plain_list(
    api: httpx.AsyncClient, running: Running
) -> None:
    # Two orders waiting for a decision (30 s): the queue has a second page to point at.
    waiting = [await _start(running) for _ in range(2)]
    for order_id in waiting:
        await wait_for_step(running, order_id, "MANUAL_REVIEW")
    r = await api.get("/orders", params={"step": "MANUAL_REVIEW", "limit": 1})
    assert r.status_code == 200, r.text
    review = r.json()["next_cursor"]
    assert review, r.json()
    assert_422(await api.get("/orders", params={"cursor": review}), "cursor")


# --- paging bounds ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"offset": 10_001}, "offset"),
        ({"offset": 10**12}, "offset"),
        ({"offset": 10**30}, "offset"),
        ({"offset": -1}, "offset"),
        ({"offset": "-0x1"}, "offset"),
        ({"limit": -1}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": -(10**30)}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"offset": -5, "step": "MANUAL_REVIEW"}, "offset"),
        ({"offset": 10_001, "step": "MANUAL_REVIEW"}, "offset"),
        ({"limit": -1, "step": "MANUAL_REVIEW"}, "limit"),
    ],
)
async def test_paging_out_of_bounds_is_a_422(
    api: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    r = await api.get("/orders", params=params)
    assert_422(r, field)


# --- stats racing writes ----------------------------------------------------------


async def test_stats_reads_race_order_writes(api: httpx.AsyncClient, running: Running) -> None:
    windows = ["1h", "24h", "30d", "all", None]

    async def read(n: int) -> httpx.Response:
        w = windows[n % len(windows)]
        return await api.get("/stats", params={"window": w} if w else {})

    results = await asyncio.gather(
        *(_start(running) for _ in range(4)),
        *(read(n) for n in range(10)),
        *(_start(running) for _ in range(2)),
    )
    responses = [x for x in results if isinstance(x, httpx.Response)]
    assert len(responses) == 10
    for r in responses:
        assert r.status_code == 200, f"{r.request.url} -> {r.status_code} {r.text[:500]}"
    r = await api.get("/stats")
    assert r.status_code == 200, r.text
