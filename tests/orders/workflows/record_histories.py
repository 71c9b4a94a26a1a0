"""Record the order's paths as workflow histories for the replay tests.

    python -m tests.orders.workflows.record_histories --tag TAG [SCENARIO ...]

writes `order_<scenario>_<tag>.json` (and the shipping children of dispatch_retry as
`shipping_attempt<n>_<tag>.json`) for every scenario, or the ones named. Record after a
deliberate, versioned workflow change, with a tag naming it (a patch id), and commit the
new files beside the old ones: old histories must keep replaying (that is the point of the
test), so the recorder never overwrites one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from app.orders.messages import (
    SIGNAL_APPROVE,
    SIGNAL_CANCEL,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    LineItem,
)
from app.orders.search import start_attributes
from app.orders.workflows import OrderWorkflow
from tests.orders.workflows.conftest import register_search_attributes, time_skipping_server_path
from tests.orders.workflows.fakes import (
    NEW_ADDRESS,
    FakeShop,
    order_input,
    running_shop,
    start_order,
)

HISTORIES = Path(__file__).parent / "histories"

Handle = WorkflowHandle[Any, Any]
Scenario = Callable[[Client, FakeShop, str, str], Awaitable[Handle]]


async def _finished(handle: Handle) -> Handle:
    """The handle once its run has ended, however it ended."""
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    return handle


async def _in_step(handle: Handle, step: str) -> None:
    for _ in range(500):
        if (await handle.query(OrderWorkflow.status)).step == step:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"order never reached {step}")


async def _approved_until(client: Client, shop: FakeShop, oq: str, sq: str, step: str) -> Handle:
    """An order started and approved, held in `step` (released by the caller)."""
    shop.hold(step)
    handle = await start_order(client, oq, sq)
    await handle.signal(SIGNAL_APPROVE)
    await shop.entered[step].wait()
    return handle


async def _happy(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    handle = await start_order(client, oq, sq)
    await handle.signal(SIGNAL_APPROVE, ApproveRequest(reviewer="alice"))
    return await _finished(handle)


async def _review_timeout(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    return await _finished(await start_order(client, oq, sq))


async def _cancel_after_payment(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    handle = await _approved_until(client, shop, oq, sq, "PREPARE")
    await handle.execute_update(OrderWorkflow.cancel, CancelRequest())
    shop.release("PREPARE")
    return await _finished(handle)


async def _dispatch_retry(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    shop.failing_dispatch_attempts = {1}
    return await _happy(client, shop, oq, sq)


async def _invalid(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    shop.invalid = True
    return await _finished(await start_order(client, oq, sq))


async def _started_by_service(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """As the service starts an order: the start request carries the search attributes,
    so the workflow does not upsert them at RECEIVE."""
    inp = order_input("t-by-service", sq)
    handle = await client.start_workflow(
        OrderWorkflow.run,
        inp,
        id=f"order-{inp.order_id}",
        task_queue=oq,
        search_attributes=start_attributes(inp),
    )
    await handle.signal(SIGNAL_APPROVE)
    return await _finished(handle)


async def _deadline_exceeded(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    handle = await start_order(client, oq, sq, review_timeout_s=120, deadline_s=60)
    return await _finished(handle)


async def _cancel_in_review(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    handle = await start_order(client, oq, sq, review_timeout_s=3600, deadline_s=3600)
    await _in_step(handle, "MANUAL_REVIEW")
    await handle.signal(SIGNAL_CANCEL, CancelRequest(reason="customer_request"))
    return await _finished(handle)


async def _cancel_during_pay(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """The charge in flight is waited for (WAIT_CANCELLATION_COMPLETED), then refunded."""
    handle = await _approved_until(client, shop, oq, sq, "PAY")
    await handle.execute_update(OrderWorkflow.cancel, CancelRequest(reason="customer_request"))
    shop.release("PAY")
    return await _finished(handle)


async def _cancel_refused_dispatched(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """The carrier has the parcel: MarkCancelRequested refuses and the order completes."""
    handle = await _approved_until(client, shop, oq, sq, "DISPATCH")
    shop.dispatched_address = shop.address
    with contextlib.suppress(Exception):
        await handle.execute_update(OrderWorkflow.cancel, CancelRequest())
    shop.dispatched_address = None
    shop.release("DISPATCH")
    return await _finished(handle)


async def _cancel_meets_dispatch(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """The row is marked cancelled and the carrier refuses (OrderCancelled) before the
    cancel's handler hears back: the parent waits for the handler to accept it."""
    shop.hold("MARK_CANCEL")
    handle = await _approved_until(client, shop, oq, sq, "DISPATCH")
    cancel = asyncio.create_task(handle.execute_update(OrderWorkflow.cancel, CancelRequest()))
    await shop.entered["MARK_CANCEL"].wait()
    shop.release("DISPATCH")
    await asyncio.sleep(0.5)
    shop.release("MARK_CANCEL")
    await cancel
    return await _finished(handle)


async def _deadline_while_shipping(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """The deadline passes while the package is prepared: the child is cancelled, the
    charge refunded."""
    shop.hold("PREPARE")
    handle = await start_order(client, oq, sq, deadline_s=8)
    await handle.signal(SIGNAL_APPROVE)
    await _finished(handle)
    shop.release("PREPARE")
    return handle


async def _address_change(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """One change sent while RECEIVE runs (it waits for the row), applied before dispatch."""
    shop.hold("RECEIVE")
    handle = await start_order(client, oq, sq)
    await shop.entered["RECEIVE"].wait()
    change = asyncio.create_task(
        handle.execute_update(OrderWorkflow.change_address, AddressChange(address=NEW_ADDRESS))
    )
    await asyncio.sleep(0.5)
    shop.release("RECEIVE")
    await change
    await handle.signal(SIGNAL_APPROVE)
    return await _finished(handle)


async def _shipping_failed(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    shop.failing_dispatch_attempts = {1, 2, 3}
    return await _happy(client, shop, oq, sq)


async def _workflow_cancelled(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    """A Temporal-level cancel while the package is prepared: compensated like a cancel."""
    handle = await _approved_until(client, shop, oq, sq, "PREPARE")
    await handle.cancel()
    await _finished(handle)  # the held activity is cut off, as a hung one would be
    shop.release("PREPARE")
    return handle


async def _free_order(client: Client, shop: FakeShop, oq: str, sq: str) -> Handle:
    free = [LineItem(sku="FREE", qty=2, unit_price_cents=0)]
    handle = await start_order(client, oq, sq, items=free)
    await handle.signal(SIGNAL_APPROVE)
    return await _finished(handle)


SCENARIOS: dict[str, Scenario] = {
    "happy_path": _happy,
    "review_timeout": _review_timeout,
    "cancel_after_payment": _cancel_after_payment,
    "dispatch_retry": _dispatch_retry,
    "invalid_order": _invalid,
    "started_by_service": _started_by_service,
    "deadline_exceeded": _deadline_exceeded,
    "cancel_in_review": _cancel_in_review,
    "cancel_during_pay": _cancel_during_pay,
    "cancel_refused_dispatched": _cancel_refused_dispatched,
    "cancel_meets_dispatch": _cancel_meets_dispatch,
    "deadline_while_shipping": _deadline_while_shipping,
    "address_change": _address_change,
    "shipping_failed": _shipping_failed,
    "workflow_cancelled": _workflow_cancelled,
    "free_order": _free_order,
}


def _write(path: Path, text: str) -> None:
    if path.exists():
        raise SystemExit(f"{path.name} exists: committed histories are never re-recorded")
    path.write_text(text)


async def record(tag: str, names: list[str]) -> None:
    HISTORIES.mkdir(exist_ok=True)
    for name in names:
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=time_skipping_server_path()
        ) as env:
            await register_search_attributes(env)
            shop = FakeShop()
            async with running_shop(env.client, shop) as (oq, sq):
                handle = await SCENARIOS[name](env.client, shop, oq, sq)
                history = await handle.fetch_history()
                order_id = handle.id.removeprefix("order-")
                if name == "dispatch_retry":  # a failed and a successful shipping child
                    for attempt in (1, 2):
                        child = env.client.get_workflow_handle(f"shipping-{order_id}-{attempt}")
                        child_history = await child.fetch_history()
                        _write(
                            HISTORIES / f"shipping_attempt{attempt}_{tag}.json",
                            child_history.to_json(),
                        )
        _write(HISTORIES / f"order_{name}_{tag}.json", history.to_json())
        print(f"recorded {name}: {len(history.events)} events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True, help="names the code version, e.g. a patch id")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    asyncio.run(record(args.tag, args.scenarios or list(SCENARIOS)))


if __name__ == "__main__":
    main()
