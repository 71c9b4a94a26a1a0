"""Reads and requests on closed orders: status cached once final, one lookup per order at a
time, and a request that races the order's close answered as a conflict."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import order_workflow_id
from app.platform.tables import Event
from app.service.errors import OrderConflict, Unavailable
from app.service.orders import OrderService
from app.service.status import StatusReader
from tests.helpers import ADDRESS, HungOrder, Running, eventually, wait_for_step

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def completed_order(running: Running) -> str:
    order_id = f"reads-{uuid.uuid4().hex[:10]}"
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    await running.service.approve(order_id, reviewer="alice")
    await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    return order_id


def _fresh_reader(running: Running) -> StatusReader:
    """A status reader with an empty cache, as a newly started API has."""
    return StatusReader(running.client, running.sessions)


async def test_concurrent_reads_of_one_order_share_one_lookup(
    running: Running, completed_order: str
) -> None:
    reader = _fresh_reader(running)
    lookups = 0
    lookup = reader._lookup

    async def counted(order_id: str) -> dict[str, Any]:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.05)  # a slow first read, as under load
        return await lookup(order_id)

    reader._lookup = counted  # type: ignore[method-assign]
    views = await asyncio.gather(*(reader.status(completed_order) for _ in range(16)))
    assert lookups == 1
    assert all(v is views[0] for v in views)
    assert views[0].state == "COMPLETED" and views[0].source == "database"


async def test_completed_order_is_answered_from_cache_at_once(
    running: Running, completed_order: str
) -> None:
    reader = _fresh_reader(running)
    first = await reader.status(completed_order)
    assert first.state == "COMPLETED" and first.settled

    async def no_database(order_id: str) -> dict[str, Any]:
        raise AssertionError(f"looked up {order_id} again")

    reader._lookup = no_database  # type: ignore[method-assign]
    assert await reader.status(completed_order) == first


async def test_a_failed_lookup_reaches_every_waiting_reader(running: Running) -> None:
    reader = _fresh_reader(running)
    missing = f"reads-missing-{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(
        *(reader.status(missing) for _ in range(4)), return_exceptions=True
    )
    assert all(type(r).__name__ == "OrderNotFound" for r in results)
    assert reader._lookups.running == {}


class _ClosingWorkflow:
    """A workflow handle whose update fails the way it does when the workflow closes while
    the request is in flight."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def execute_update(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self.error


class _ClientOfClosingWorkflow:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def get_workflow_handle(self, _workflow_id: str) -> _ClosingWorkflow:
        return _ClosingWorkflow(self.error)


@pytest.mark.parametrize(
    "error",
    [
        RPCError("workflow update aborted", RPCStatusCode.ABORTED, b""),
        WorkflowUpdateRPCTimeoutOrCancelledError(),
    ],
    ids=["aborted", "rpc-timeout"],
)
async def test_request_racing_the_close_is_a_conflict(
    running: Running, completed_order: str, error: BaseException
) -> None:
    client: Any = _ClientOfClosingWorkflow(error)
    service = OrderService(client, running.sessions, running.settings)
    with pytest.raises(OrderConflict, match="already closed"):
        await service.approve(completed_order, reviewer="late")


async def test_same_failure_on_an_order_not_closed_is_unavailable(running: Running) -> None:
    client: Any = _ClientOfClosingWorkflow(RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""))
    service = OrderService(client, running.sessions, running.settings)
    with pytest.raises(Unavailable):
        await service.approve(f"reads-open-{uuid.uuid4().hex[:8]}", reviewer="late")


async def test_a_closed_orders_status_is_final_at_its_close(
    running: Running, hung_order: HungOrder
) -> None:
    """Every RECEIVE attempt hangs: the third one's timeout fails the order, and that
    attempt records its failure only when the worker cancels it, about 5 s later. The
    view read at the close (by a fresh reader, as soon as the run had failed) already
    counts it, and the late record changes nothing."""
    order_id, at_close = hung_order.order_id, hung_order.at_close
    assert (at_close.state, at_close.attempts) == ("FAILED", {"RECEIVE": 3})
    assert any(e.step == "RECEIVE" and e.attempt == 3 for e in at_close.errors)

    async def third_attempt_recorded() -> bool:
        async with running.sessions() as s:
            rows = await s.execute(
                select(Event.payload_json).where(
                    Event.order_id == order_id, Event.type == "STEP_ATTEMPT_FAILED"
                )
            )
            return any((p or {}).get("attempt") == 3 for p in rows.scalars())

    await eventually(third_attempt_recorded, timeout=15)
    later = await _fresh_reader(running).status(order_id)
    assert (later.attempts, later.errors) == (at_close.attempts, at_close.errors)
