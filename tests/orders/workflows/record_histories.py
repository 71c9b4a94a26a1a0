"""Record the main paths' workflow histories for the replay tests.

    python -m tests.orders.workflows.record_histories

Run it after a deliberate, versioned workflow change and commit the new files beside the
old ones: old histories must keep replaying (that is the point of the test).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from app.orders.models import SIGNAL_APPROVE, ApproveRequest, CancelRequest
from app.orders.workflows import OrderWorkflow
from tests.orders.workflows.conftest import register_search_attributes, time_skipping_server_path
from tests.orders.workflows.fakes import FakeShop, running_shop, start_order

HISTORIES = Path(__file__).parent / "histories"


async def _happy(client: Client, shop: FakeShop, oq: str, sq: str) -> WorkflowHandle:  # type: ignore[type-arg]
    handle = await start_order(client, oq, sq)
    await handle.signal(SIGNAL_APPROVE, ApproveRequest(reviewer="alice"))
    await handle.result()
    return handle


async def _review_timeout(client: Client, shop: FakeShop, oq: str, sq: str) -> WorkflowHandle:  # type: ignore[type-arg]
    handle = await start_order(client, oq, sq)
    await handle.result()
    return handle


async def _cancel_after_payment(client: Client, shop: FakeShop, oq: str, sq: str) -> WorkflowHandle:  # type: ignore[type-arg]
    shop.hold("PREPARE")
    handle = await start_order(client, oq, sq)
    await handle.signal(SIGNAL_APPROVE)
    await shop.entered["PREPARE"].wait()
    await handle.execute_update(OrderWorkflow.cancel, CancelRequest())
    shop.release("PREPARE")
    await handle.result()
    return handle


async def _dispatch_retry(client: Client, shop: FakeShop, oq: str, sq: str) -> WorkflowHandle:  # type: ignore[type-arg]
    shop.failing_dispatch_attempts = {1}
    return await _happy(client, shop, oq, sq)


async def _invalid(client: Client, shop: FakeShop, oq: str, sq: str) -> WorkflowHandle:  # type: ignore[type-arg]
    shop.invalid = True
    handle = await start_order(client, oq, sq)
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    return handle


SCENARIOS = {
    "happy_path": _happy,
    "review_timeout": _review_timeout,
    "cancel_after_payment": _cancel_after_payment,
    "dispatch_retry": _dispatch_retry,
    "invalid_order": _invalid,
}


async def record() -> None:
    HISTORIES.mkdir(exist_ok=True)
    for name, scenario in SCENARIOS.items():
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=time_skipping_server_path()
        ) as env:
            await register_search_attributes(env)
            shop = FakeShop()
            async with running_shop(env.client, shop) as (oq, sq):
                handle = await scenario(env.client, shop, oq, sq)
                history = await handle.fetch_history()
                order_id = handle.id.removeprefix("order-")
                if name == "dispatch_retry":  # a failed and a successful shipping child
                    for attempt in (1, 2):
                        child = env.client.get_workflow_handle(f"shipping-{order_id}-{attempt}")
                        child_history = await child.fetch_history()
                        path = HISTORIES / f"shipping_attempt{attempt}.json"
                        path.write_text(child_history.to_json())
        (HISTORIES / f"order_{name}.json").write_text(history.to_json())
        print(f"recorded {name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record())
