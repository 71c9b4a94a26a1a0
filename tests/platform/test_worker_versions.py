"""Worker Versioning on the real dev server: orders are pinned to the build that started
them, so a new build whose OrderWorkflow would not replay their histories takes over
without failing one of them; the old build drains; a rollback routes new orders back.

Build B is a test-only variant of OrderWorkflow that starts with a timer: replaying any
history of build A on it is a non-determinism error, so an order of A that ran one task on
B would fail."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import VersioningBehavior

import app.worker
from app import versioning
from app.orders.messages import ORDER_WORKFLOW, OrderInput, OrderResult, order_workflow_id
from app.orders.workflows import OrderWorkflow
from app.platform.settings import Settings
from app.service.orders import OrderService
from tests.helpers import ADDRESS, Running, eventually, own_queues, run_workers

pytestmark = pytest.mark.integration


@workflow.defn(name=ORDER_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class OrderWorkflowB(OrderWorkflow):
    """Build B: a timer before the first step, a command build A's histories never had."""

    @workflow.run
    async def run(self, input: OrderInput) -> OrderResult:
        await workflow.sleep(0.01)
        return await super().run(input)


def versioned(running: Running, name: str) -> Settings:
    """The session's settings with versioning on, as Worker Deployment `name`, on queues
    of their own."""
    return own_queues(running.settings, name, worker_versioning=True, worker_deployment_name=name)


async def start_workers(
    stack: AsyncExitStack, running: Running, settings: Settings, variant: type | None = None
) -> None:
    patch = pytest.MonkeyPatch()
    if variant is not None:
        patch.setattr(app.worker, "OrderWorkflow", variant)
    try:
        await run_workers(stack, running, settings)
    finally:
        patch.undo()
    await versioning.wait_until_polling(
        running.client,
        settings.worker_deployment_name,
        settings.worker_build_id,
        {settings.order_task_queue, settings.shipping_task_queue},
        timeout=30.0,
    )


async def build_of(client: Client, order_id: str) -> str:
    described = await client.get_workflow_handle(order_workflow_id(order_id)).describe()
    info = described.raw_description.workflow_execution_info.versioning_info
    return info.deployment_version.build_id


async def ran_b_code(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the run holds build B's opening timer (10 ms; A's own timers are seconds)."""
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            fire = event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            if fire.total_seconds() < 1:
                return True
    return False


async def complete(service: OrderService, order_id: str) -> None:
    await wait_for_step_of(service, order_id)
    await service.approve(order_id, reviewer="versions-test")

    async def completed() -> bool:
        return (await service.reader.status(order_id)).state == "COMPLETED"

    await eventually(completed, timeout=30.0, what=f"{order_id} to complete")


async def wait_for_step_of(service: OrderService, order_id: str) -> None:
    async def in_review() -> bool:
        return (await service.reader.status(order_id)).step == "MANUAL_REVIEW"

    await eventually(in_review, timeout=20.0, what=f"{order_id} to wait in review")


async def test_pinned_orders_finish_on_their_build_while_a_new_build_takes_over(
    running: Running,
) -> None:
    tag = uuid.uuid4().hex[:6]
    base = versioned(running, f"versions-{tag}")
    a = base.model_copy(update={"worker_build_id": "A"})
    b = base.model_copy(update={"worker_build_id": "B"})
    service = OrderService(running.client, running.sessions, base)
    client, deployment = running.client, base.worker_deployment_name

    async def start(order_id: str) -> None:
        await service.start_order(order_id, f"pmt-{order_id}", ADDRESS)

    async with AsyncExitStack() as stack:
        await start_workers(stack, running, a)
        assert await versioning.adopt_if_unrouted(client, deployment, "A", set()) == "A"
        old = [f"pin-a{i}-{tag}" for i in range(2)]
        for order_id in old:
            await start(order_id)
            await wait_for_step_of(service, order_id)

        await start_workers(stack, running, b, variant=OrderWorkflowB)
        await versioning.set_current(client, deployment, "B")
        view = await versioning.describe(client, deployment)
        assert view is not None and view.current == "B"

        # New orders run B's code; A's orders, approved now, finish on A without a
        # non-determinism error (a task of theirs on B would fail them).
        new = f"pin-b-{tag}"
        await start(new)
        for order_id in [*old, new]:
            await complete(service, order_id)
        assert [await build_of(client, o) for o in old] == ["A", "A"]
        assert await build_of(client, new) == "B"
        assert await ran_b_code(client.get_workflow_handle(order_workflow_id(new)))
        assert not await ran_b_code(client.get_workflow_handle(order_workflow_id(old[0])))

        # A has drained: nothing open is pinned to it.
        async def drained() -> bool:
            return await versioning.open_orders(client, deployment, "A") == 0

        await eventually(drained, timeout=20.0, what="build A to drain")

        # A rollback routes new orders to A again.
        await versioning.set_current(client, deployment, "A")
        back = f"pin-back-{tag}"
        await start(back)
        await complete(service, back)
        assert await build_of(client, back) == "A"


async def test_a_ramp_sends_part_of_new_orders_to_the_new_build(running: Running) -> None:
    tag = uuid.uuid4().hex[:6]
    base = versioned(running, f"ramp-{tag}")
    service = OrderService(running.client, running.sessions, base)
    client, deployment = running.client, base.worker_deployment_name
    async with AsyncExitStack() as stack:
        await start_workers(stack, running, base.model_copy(update={"worker_build_id": "A"}))
        await versioning.adopt_if_unrouted(client, deployment, "A", set())
        await start_workers(stack, running, base.model_copy(update={"worker_build_id": "B"}))
        await versioning.set_ramping(client, deployment, "B", 100.0)
        view = await versioning.describe(client, deployment)
        assert view is not None
        assert (view.current, view.ramping, view.ramp_percent) == ("A", "B", 100.0)
        order_id = f"ramp-{tag}"
        await service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
        await wait_for_step_of(service, order_id)
        assert await build_of(client, order_id) == "B"
        await service.cancel(order_id, reason="test over")
