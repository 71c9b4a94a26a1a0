"""The worker process: `run_worker(settings, queue, metrics_port)`, and its command line
`python -m app.worker --queue orders|shipping|all [--metrics-port N]`.

Waits for Temporal and PostgreSQL, serves the queue(s), and drains gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import socket
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any, Literal

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from app import versioning
from app.orders.activities import (
    ActivityDependencies,
    orders_queue_activities,
    shipping_queue_activities,
)
from app.orders.faults import FaultInjector, FaultProfile
from app.orders.housekeeping.activities import HousekeepingActivities
from app.orders.housekeeping.workflow import HousekeepingWorkflow
from app.orders.messages import ERR_INVALID_ORDER, OrderInput
from app.orders.providers.intake import OrderIntake
from app.orders.providers.wiring import Simulators, open_simulators
from app.orders.reconciliation.activities import ReconciliationActivities
from app.orders.reconciliation.workflow import ReconciliationWorkflow
from app.orders.workflows import OrderWorkflow, ShippingWorkflow
from app.orders.workflows.unversioned import (
    UnversionedHousekeepingWorkflow,
    UnversionedOrderWorkflow,
    UnversionedReconciliationWorkflow,
    UnversionedShippingWorkflow,
)
from app.platform.db import engine_from_settings, session_factory
from app.platform.logging_setup import configure_logging
from app.platform.settings import Settings, get_settings_or_exit, require_production_ready
from app.platform.temporal import connect_with_retry, runtime_with_core_logs
from app.platform.worker_tuning import worker_tuning

log = logging.getLogger("app.worker")

# Which task queue(s) a worker serves: the orders queue (with the reconciliation), the
# shipping queue, or both in one process.
Queue = Literal["orders", "shipping", "all"]
QUEUES: tuple[Queue, ...] = ("orders", "shipping", "all")


async def wait_for_database(engine: AsyncEngine, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
            return
        except Exception as err:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"database not reachable after {timeout:.0f}s: {err}") from err
            log.info("waiting for database", extra={"error": type(err).__name__})
            await asyncio.sleep(1.0)


class _ServerFaultsOnly(FaultInjector):
    """The worker's own FAULT_PROFILE for every call: a profile named by an order or a
    reconciliation run is a test knob, applied only where ALLOW_FAULT_INJECTION is on."""

    def profile(self, spec: str | None) -> FaultProfile:
        return self.default


def fault_injector(settings: Settings) -> FaultInjector:
    kind = FaultInjector if settings.allow_fault_injection else _ServerFaultsOnly
    return kind(settings.fault_profile, settings.fault_seed)


def refused_knob(args: Sequence[Any], settings: Settings) -> str | None:
    """The per-order test knob a workflow input carries that this worker does not allow
    (None: none). Timings equal to the worker's own REVIEW_TIMEOUT_S / ORDER_DEADLINE_S
    are its configuration, not a knob (the API and CLI copy theirs into each input)."""
    if settings.allow_fault_injection:
        return None
    for arg in args:
        if getattr(arg, "fault_profile", None) is not None:
            return "fault_profile"
        if isinstance(arg, OrderInput):
            if arg.review_timeout_s != settings.review_timeout_s:
                return "review_timeout_s"
            if arg.deadline_s != settings.order_deadline_s:
                return "deadline_s"
    return None


class TestKnobGuard(Interceptor):
    """Workers refuse a run whose input carries a test knob they do not allow, before the
    workflow does anything: such an input can only come from a client that went round
    the API's and CLI's refusals (a direct Temporal start). The run fails with
    InvalidOrder, naming the knob; no provider is called."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        settings = self.settings

        class _Refuse(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                knob = refused_knob(input.args, settings)
                if knob is not None:
                    workflow.logger.warning(
                        "input refused: a test knob this worker does not allow",
                        extra={"knob": knob},
                    )
                    raise ApplicationError(
                        f"{knob} is refused: fault injection and timing overrides are "
                        "disabled on this worker (ALLOW_FAULT_INJECTION=false)",
                        type=ERR_INVALID_ORDER,
                        non_retryable=True,
                    )
                return await super().execute_workflow(input)

        return _Refuse


def _workflows(settings: Settings) -> tuple[list[type], list[type]]:
    """The orders queue's and the shipping queue's workflows. The server refuses a
    versioning behavior from an unversioned worker: those register the twins."""
    if settings.worker_versioning:
        return (
            [OrderWorkflow, ReconciliationWorkflow, HousekeepingWorkflow],
            [ShippingWorkflow],
        )
    return (
        [
            UnversionedOrderWorkflow,
            UnversionedReconciliationWorkflow,
            UnversionedHousekeepingWorkflow,
        ],
        [UnversionedShippingWorkflow],
    )


def build_workers(
    client: Client,
    settings: Settings,
    engine: AsyncEngine,
    queue: Queue,
    providers: Simulators,
) -> list[Worker]:
    """The Temporal workers of `queue`: each task queue's workflows, and its activities
    given the order database and the providers."""
    # The production guard, for every worker built (settings copies are never validated).
    require_production_ready(settings)
    deps = ActivityDependencies(
        session_factory(engine),
        OrderIntake(fault_injector(settings)),
        providers.gateway,
        providers.carrier,
    )
    worker = functools.partial(
        Worker,
        client,
        deployment_config=versioning.deployment_config(settings),
        graceful_shutdown_timeout=timedelta(seconds=10),
        interceptors=[] if settings.allow_fault_injection else [TestKnobGuard(settings)],
        **worker_tuning(settings),
    )
    order_flows, shipping_flows = _workflows(settings)
    workers: list[Worker] = []
    if queue in ("orders", "all"):
        # The scheduled reconciliation runs beside the orders (docs/architecture.md).
        audit = ReconciliationActivities(
            deps.sessions, deps.gateway, deps.carrier, client, settings
        )
        workers.append(
            worker(
                task_queue=settings.order_task_queue,
                workflows=order_flows,
                activities=[
                    *orders_queue_activities(deps),
                    audit.reconcile,
                    HousekeepingActivities(deps.sessions, settings).prune_events,
                ],
            )
        )
    if queue in ("shipping", "all"):
        workers.append(
            worker(
                task_queue=settings.shipping_task_queue,
                workflows=shipping_flows,
                activities=shipping_queue_activities(deps),
            )
        )
    return workers


class _SdkMetrics(Collector):
    """Re-exports the Temporal SDK's own Prometheus endpoint, so one port serves both."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return
        yield from text_string_to_metric_families(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_metrics(port: int, host: str) -> Runtime:
    """Application metrics and the SDK's (worker, poll, task latency) on one endpoint."""
    sdk_port = _free_port()
    runtime = runtime_with_core_logs(
        PrometheusConfig(bind_address=f"127.0.0.1:{sdk_port}", durations_as_seconds=True)
    )
    REGISTRY.register(_SdkMetrics(f"http://127.0.0.1:{sdk_port}/metrics"))
    start_http_server(port, addr=host)
    return runtime


async def serve(settings: Settings, queue: Queue, metrics_port: int) -> None:
    """Serve `queue` until SIGTERM or SIGINT, then finish the tasks in flight.
    `metrics_port`: the Prometheus endpoint (0: none)."""
    runtime = (
        _serve_metrics(metrics_port, settings.metrics_host)
        if metrics_port
        else runtime_with_core_logs()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # No pre-ping: a failed attempt on a stale connection is retried like any other.
    engine = engine_from_settings(settings, pool_size=20, pre_ping=False)
    try:
        await wait_for_database(engine)
        client = await connect_with_retry(settings, timeout=60.0, runtime=runtime, service="worker")
        async with AsyncExitStack() as stack:
            providers = await stack.enter_async_context(
                open_simulators(settings, fault_injector(settings))
            )
            workers = build_workers(client, settings, engine, queue, providers)
            for w in workers:
                await stack.enter_async_context(w)
            version = versioning.deployment_config(settings).version
            log.info(
                "worker running",
                extra={
                    "queues": [w.task_queue for w in workers],
                    "fault_profile": settings.fault_profile,
                    "build_id": version.build_id,
                    "versioned": settings.worker_versioning,
                },
            )
            if settings.worker_versioning:
                adopting = asyncio.create_task(
                    _adopt_on_first_start(client, version, {w.task_queue for w in workers})
                )
                stack.callback(adopting.cancel)
            await stop.wait()
            log.info("shutting down: finishing in-flight tasks")
    finally:
        await engine.dispose()
    log.info("worker stopped")


async def _adopt_on_first_start(
    client: Client, version: WorkerDeploymentVersion, queues: set[str]
) -> None:
    """A fresh install has no current version: the first build to poll becomes it. Later
    builds wait for a rollout (`cli.py deploy`, `temporal worker deployment`)."""
    try:
        current = await versioning.adopt_if_unrouted(
            client, version.deployment_name, version.build_id, queues
        )
    except Exception as err:  # logged, not fatal: the operator can still set it current
        log.warning("could not check the deployment's current version", extra={"error": str(err)})
        return
    log.info(
        "this build is the current version"
        if current == version.build_id
        else "another build is current: this one takes new orders once made current",
        extra={
            "deployment": version.deployment_name,
            "build_id": version.build_id,
            "current_build_id": current,
        },
    )


def run_worker(settings: Settings, queue: Queue = "all", metrics_port: int | None = None) -> None:
    """The worker process: its logging set up, then `queue` served until a signal stops it.
    `metrics_port`: None takes WORKER_METRICS_PORT, 0 serves no metrics."""
    configure_logging(f"worker-{queue}", settings.log_level, settings.log_format)
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    asyncio.run(serve(settings, queue, port))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run a Temporal worker for the order service.")
    parser.add_argument("--queue", choices=QUEUES, default="all", help="which task queue(s)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus /metrics port: app + Temporal SDK metrics (0 = off; default "
        "WORKER_METRICS_PORT)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m app.worker`: the flags read, the settings loaded (a bad one exits with
    one line), then run_worker."""
    args = _parser().parse_args(argv)
    run_worker(get_settings_or_exit(), args.queue, args.metrics_port)


if __name__ == "__main__":
    main()
