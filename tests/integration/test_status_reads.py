"""Status reads of closed orders: cached once final, and one lookup per order at a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from app.models import order_workflow_id
from app.service import OrderService
from tests.conftest import Running, wait_for_step

ADDRESS = {
    "street": "1 Main St",
    "city": "Springfield",
    "state": "IL",
    "zip": "62701",
    "country": "US",
}


@pytest.fixture(scope="module")
async def completed_order(running: Running) -> str:
    order_id = f"reads-{uuid.uuid4().hex[:10]}"
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    return order_id


def _fresh_service(running: Running) -> OrderService:
    """A service with an empty cache, as a newly started API has."""
    return OrderService(running.client, running.sessions, running.settings)


async def test_concurrent_reads_of_one_order_share_one_lookup(
    running: Running, completed_order: str
) -> None:
    service = _fresh_service(running)
    lookups = 0
    lookup = service._lookup_status

    async def counted(order_id: str) -> dict[str, Any]:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.05)  # a slow first read, as under load
        return await lookup(order_id)

    service._lookup_status = counted  # type: ignore[method-assign]
    views = await asyncio.gather(*(service.status(completed_order) for _ in range(16)))
    assert lookups == 1
    assert all(v is views[0] for v in views)
    assert views[0]["state"] == "COMPLETED" and views[0]["source"] == "database"


async def test_completed_order_is_answered_from_cache_at_once(
    running: Running, completed_order: str
) -> None:
    service = _fresh_service(running)
    first = await service.status(completed_order)
    assert first["state"] == "COMPLETED" and first["settled"]

    async def no_database(order_id: str) -> dict[str, Any]:
        raise AssertionError(f"looked up {order_id} again")

    service._lookup_status = no_database  # type: ignore[method-assign]
    assert await service.status(completed_order) == first


async def test_a_failed_lookup_reaches_every_waiting_reader(running: Running) -> None:
    service = _fresh_service(running)
    missing = f"reads-missing-{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(
        *(service.status(missing) for _ in range(4)), return_exceptions=True
    )
    assert all(type(r).__name__ == "OrderNotFound" for r in results)
    assert service._status_lookups == {}
