"""Bare-Temporal baseline for the benchmark (`devstack/bench/run.py`): the order's shape, no business.

`BaselineOrderWorkflow` has the same Temporal shape as `OrderWorkflow` on the happy path:
two activities (receive, validate), a wait for the `approve_order` signal, one activity
(charge), then a child workflow on a second task queue with two activities (prepare,
dispatch): five activities, one signal, one child. The activities do nothing and nothing
touches a database or an API, so what is left is the cost of Temporal itself (dev server,
SDK, workers) on this machine.

With `features=True` (`bench`'s default; `--baseline-shape bare` turns it off) it also uses
the Temporal features an order uses, still doing no work: the order's search attributes set at the start and
upserted at the review, at shipping and at the close (behind the same patch), and the
deadline timer that `OrderWorkflow.run` waits with; and, when the order workers run with
WORKER_VERSIONING on, its workers are a version of a Worker Deployment of their own with
the workflows pinned (`--deployment`), as the orders are: about 5 ms of dev-server CPU per
order on this machine (docs/performance.md, round five). Its history then has as many
events as an order's; the difference to the bare shape is what those features cost.

Its workers run as the order workers do (the benchmark picks): one process per task queue,

    python -m devstack.bench.baseline --queue orders   --task-queue bench-base-orders
    python -m devstack.bench.baseline --queue shipping --task-queue bench-base-shipping

or one process serving both:

    python -m devstack.bench.baseline --queue all --task-queue bench-base-orders \
        --shipping-task-queue bench-base-shipping

The worker prints `baseline worker running` once its pollers run; it stops on SIGTERM/SIGINT.
Worker options are the order workers' (`app/platform/worker_tuning.py`: MAX_CONCURRENT_ACTIVITIES,
MAX_CONCURRENT_WORKFLOW_TASKS, WORKFLOW_SANDBOX), so both sides get the same configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    VersioningBehavior,
    WorkerDeploymentVersion,
)
from temporalio.worker import Worker, WorkerDeploymentConfig

BASELINE_WORKFLOW = "BaselineOrderWorkflow"
BASELINE_CHILD_WORKFLOW = "BaselineShippingWorkflow"
BASELINE_SIGNAL = "approve_order"
READY_MARKER = "baseline worker running"
DEFAULT_ORDERS_QUEUE = "bench-baseline-orders"
DEFAULT_SHIPPING_QUEUE = "bench-baseline-shipping"
BASELINE_BUILD = "baseline"

# Same start-to-close timeouts and retry policy as the order workflow's steps.
_TIMEOUT = timedelta(seconds=5)
_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


# The order's attributes and patch id; the names, not the app's modules, so the baseline
# stays bare (app/orders/search.py holds the real ones).
_STATE = SearchAttributeKey.for_keyword("OrderState")
_STEP = SearchAttributeKey.for_keyword("OrderStep")
_AMOUNT = SearchAttributeKey.for_int("OrderAmountCents")
_PATCH = "search-attributes"
_DEADLINE_S = 60.0


@dataclass
class BaselineInput:
    order_id: str
    shipping_task_queue: str
    # The order's Temporal features too (search attributes, deadline timer); see above.
    features: bool = False


def start_attributes() -> TypedSearchAttributes:
    """What the order service sets in its start request."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(_STATE, "PENDING"),
            SearchAttributePair(_STEP, "RECEIVE"),
            SearchAttributePair(_AMOUNT, 2500),
        ]
    )


@activity.defn(name="BaselineNoop")
async def noop(step: str) -> str:
    """An external call that costs nothing."""
    return step


@workflow.defn(name=BASELINE_CHILD_WORKFLOW)
class BaselineShippingWorkflow:
    @workflow.run
    async def run(self, order_id: str) -> str:
        await workflow.execute_activity(
            noop, "prepare", start_to_close_timeout=_TIMEOUT, retry_policy=_RETRY
        )
        return await workflow.execute_activity(
            noop, "dispatch", start_to_close_timeout=_TIMEOUT, retry_policy=_RETRY
        )


@workflow.defn(name=BASELINE_WORKFLOW)
class BaselineOrderWorkflow:
    def __init__(self) -> None:
        self._approved = False

    @workflow.run
    async def run(self, inp: BaselineInput) -> str:
        if not inp.features:
            return await self._steps(inp)
        # As OrderWorkflow.run: the steps run while the workflow waits with its deadline.
        steps = asyncio.create_task(self._steps(inp))
        await workflow.wait_condition(steps.done, timeout=_DEADLINE_S)
        self._publish(inp, "COMPLETED", "SHIP")
        return await steps

    async def _steps(self, inp: BaselineInput) -> str:
        for step in ("receive", "validate"):
            await workflow.execute_activity(
                noop, step, start_to_close_timeout=_TIMEOUT, retry_policy=_RETRY
            )
        self._publish(inp, "VALIDATED", "MANUAL_REVIEW")
        await workflow.wait_condition(lambda: self._approved)
        await workflow.execute_activity(
            noop, "charge", start_to_close_timeout=_TIMEOUT, retry_policy=_RETRY
        )
        self._publish(inp, "PAID", "SHIP")
        return await workflow.execute_child_workflow(
            BaselineShippingWorkflow.run,
            inp.order_id,
            id=f"{workflow.info().workflow_id}-shipping",
            task_queue=inp.shipping_task_queue,
        )

    @staticmethod
    def _publish(inp: BaselineInput, state: str, step: str) -> None:
        if inp.features and workflow.patched(_PATCH):
            updates: list[Any] = [_STATE.value_set(state), _STEP.value_set(step)]
            workflow.upsert_search_attributes(updates)

    @workflow.signal(name=BASELINE_SIGNAL)
    def approve_order(self) -> None:
        self._approved = True


def deployment_config(deployment: str | None) -> WorkerDeploymentConfig | None:
    """As a version of `deployment` whose workflows are pinned, like the order workers with
    WORKER_VERSIONING on (None: unversioned)."""
    if deployment is None:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=deployment, build_id=BASELINE_BUILD),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


def build_worker(
    client: Client, queue: str, task_queue: str, deployment: str | None = None
) -> Worker:
    """The baseline worker for `queue` ("orders" or "shipping"), tuned like the order
    workers; a version of `deployment` when given."""
    from app.platform.settings import get_settings
    from app.platform.worker_tuning import worker_tuning

    settings = get_settings()
    workflows: list[type] = [
        BaselineOrderWorkflow if queue == "orders" else BaselineShippingWorkflow
    ]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=[noop],
        graceful_shutdown_timeout=timedelta(seconds=5),
        deployment_config=deployment_config(deployment),
        **worker_tuning(settings),
    )


async def serve(
    target: str, namespace: str, task_queues: Mapping[str, str], deployment: str | None = None
) -> None:
    """Serve `task_queues` (queue -> task queue name) from this process until a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await Client.connect(target, namespace=namespace)
    async with contextlib.AsyncExitStack() as stack:
        for queue, task_queue in task_queues.items():
            await stack.enter_async_context(build_worker(client, queue, task_queue, deployment))
        names = ", ".join(f"{q} on {tq}" for q, tq in task_queues.items())
        sys.stdout.write(f"{READY_MARKER}: {names}\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    from app.platform.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(description="Run a bare-Temporal baseline worker.")
    parser.add_argument("--queue", choices=("orders", "shipping", "all"), required=True)
    parser.add_argument("--task-queue", help="task queue name (default bench-baseline-<queue>)")
    parser.add_argument(
        "--shipping-task-queue", help="with --queue all: the shipping task queue's name"
    )
    parser.add_argument(
        "--deployment", help="register as a version of this Worker Deployment, workflows pinned"
    )
    parser.add_argument("--target", default=settings.temporal_target, help="Temporal host:port")
    parser.add_argument("--namespace", default=settings.temporal_namespace)
    args = parser.parse_args(argv)
    task_queues = {
        "orders": args.task_queue or DEFAULT_ORDERS_QUEUE,
        "shipping": args.shipping_task_queue or DEFAULT_SHIPPING_QUEUE,
    }
    if args.queue == "shipping":
        task_queues = {"shipping": args.task_queue or DEFAULT_SHIPPING_QUEUE}
    elif args.queue == "orders":
        del task_queues["shipping"]
    asyncio.run(serve(args.target, args.namespace, task_queues, args.deployment))


if __name__ == "__main__":
    main()
