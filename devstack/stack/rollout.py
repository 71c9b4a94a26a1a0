"""Rolling the embedded stack's workers from one build to another (`cli.py deploy`), which
builds `cli.py start` runs, and the Worker Deployment as `cli.py ps` shows it.

A deploy starts the checkout's build beside the running workers, waits until it polls
both task queues, makes it current (or ramps it), waits until the old builds have no open
orders (they are pinned to them), then stops the old builds' workers: no order ever runs a
task on code other than the code it started on. docs/operations.md, "Deploying a new
version", gives the same steps for compose and Kubernetes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from app import versioning
from app.platform.temporal import connect_client
from devstack.stack import builds, processes
from devstack.stack.addresses import client_settings, stack_config
from devstack.stack.app_processes import (
    WORKER_QUEUES,
    running_builds,
    start_worker,
    worker_metrics_ports,
    worker_role,
)
from devstack.stack.config import TEMPORAL, StackConfig, StackError, StackSettings
from devstack.stack.infra import stop_process

DEFAULT_DRAIN_TIMEOUT = 180.0
# How long a build's new workers get to poll both task queues.
POLL_TIMEOUT = 60.0
DEPLOY_HINT = "python scripts/cli.py deploy"

Report = Callable[[str], None]


@asynccontextmanager
async def _client(settings: StackSettings, timeout: float = 10.0) -> AsyncIterator[Client]:
    target = client_settings(settings)
    try:
        client = await asyncio.wait_for(connect_client(target), timeout)
    except (RuntimeError, TimeoutError) as err:
        raise StackError(
            f"Temporal is not reachable at {target.temporal_target}; is the stack running? "
            "(python scripts/cli.py start)"
        ) from err
    yield client


def _queues(settings: StackSettings) -> set[str]:
    return {settings.order_task_queue, settings.shipping_task_queue}


def _in_parallel(calls: Sequence[Callable[[], str]]) -> list[str]:
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


# ---------------------------------------------------------------------------------------------
# `cli.py start`: which builds
# ---------------------------------------------------------------------------------------------


@dataclass
class StartPlan:
    serving: str  # the build of worker-orders and worker-shipping
    beside: list[str] = field(default_factory=list)  # builds ramping or draining
    messages: list[str] = field(default_factory=list)
    # The current version's code is not here: the serving build must take over.
    make_current: bool = False


def plan_start(settings: StackSettings, cfg: StackConfig) -> StartPlan:
    """The builds a start runs. Workers already running keep their build. With no open
    order on any version (and no ramp), the checkout. Otherwise the deployment's current
    version (orders stay on their build; `deploy` rolls to the checkout), the ramping one
    and those with open orders; a fresh stack, or one without versioning, runs the
    checkout."""
    serving = builds.serving_build(cfg)
    running = running_builds(cfg)
    if serving is not None and any(name in WORKER_QUEUES for name in running.get(serving, [])):
        return StartPlan(serving)
    checkout = builds.disk_build(settings)
    if not settings.worker_versioning:
        return StartPlan(checkout)
    view = asyncio.run(_describe(settings))
    if view is None or view.current is None:
        return StartPlan(checkout)
    current = view.current
    if (
        checkout != current
        and view.ramping is None
        and not any(version.open_orders for version in view.versions)
    ):
        # Nothing is pinned to any build, so the checkout can take over at once: a developer
        # who edits the code and restarts gets that code.
        return StartPlan(
            checkout,
            messages=[
                f"workers: build {checkout} of the checkout takes over from {current} "
                "(no open orders on any version)"
            ],
            make_current=True,
        )
    if not builds.can_run(cfg, settings, current):
        return StartPlan(
            checkout,
            messages=[
                f"workers: the current version {current}'s code is not in "
                f"{builds.builds_dir(cfg)}; build {checkout} of the checkout takes over"
            ],
            make_current=True,
        )
    plan = StartPlan(current)
    for version in view.versions:
        build = version.build_id
        if build == current or not (build == view.ramping or version.open_orders):
            continue
        if builds.can_run(cfg, settings, build):
            plan.beside.append(build)
        else:
            plan.messages.append(
                f"workers: build {build} has {version.open_orders} open orders and its code "
                "is not here; they wait"
            )
    if checkout != current:
        plan.messages.append(
            f"workers: build {current} (the current version); the checkout is build "
            f"{checkout}: `{DEPLOY_HINT}` rolls to it"
        )
    return plan


async def _describe(settings: StackSettings) -> versioning.DeploymentView | None:
    async with _client(settings) as client:
        return await versioning.describe(client, settings.worker_deployment_name)


def make_current(settings: StackSettings, build: str) -> str:
    """Once `build`'s workers poll: route new orders to it."""

    async def run() -> None:
        async with _client(settings) as client:
            deployment = settings.worker_deployment_name
            await versioning.wait_until_polling(
                client, deployment, build, _queues(settings), POLL_TIMEOUT
            )
            await versioning.set_current(client, deployment, build)

    asyncio.run(run())
    return f"workers: build {build} is the current version"


# ---------------------------------------------------------------------------------------------
# `cli.py ps`: the deployment
# ---------------------------------------------------------------------------------------------


def deployment_status(settings: StackSettings, timeout: float = 5.0) -> dict[str, Any] | None:
    """The Worker Deployment: its routing, each version with its open orders and the
    workers of it this stack runs, and the checkout's build. None while Temporal is down
    or no versioned worker ever polled."""
    cfg = stack_config(settings)
    if not processes.process_status(cfg, TEMPORAL).running:
        return None
    try:
        view = asyncio.run(asyncio.wait_for(_describe(settings), timeout))
    except (StackError, TimeoutError, RuntimeError, RPCError):
        return None  # `ps` shows the processes whatever Temporal answers
    if view is None:
        return None
    running = running_builds(cfg)
    return {
        "name": view.name,
        "current": view.current,
        "ramping": view.ramping,
        "ramp_percent": view.ramp_percent if view.ramping else None,
        "checkout_build": builds.disk_build(settings),
        "versions": [
            {
                "build_id": v.build_id,
                "status": v.status,
                "open_orders": v.open_orders,
                "workers": running.get(v.build_id, []),
            }
            for v in view.versions
        ],
    }


# ---------------------------------------------------------------------------------------------
# `cli.py deploy`
# ---------------------------------------------------------------------------------------------


def deploy(
    settings: StackSettings,
    report: Report,
    *,
    ramp: float | None = None,
    rollback: bool = False,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> None:
    """Roll the stack's workers to the checkout's build (`rollback`: back to the previous
    version, or end a ramp). A StackError says why not, in one line."""
    if not settings.worker_versioning:
        raise StackError(
            "WORKER_VERSIONING=false: the workers are unversioned, so there is no version "
            "to route orders to; `python scripts/cli.py restart` runs the checkout (guard "
            "workflow changes with workflow.patched)"
        )
    asyncio.run(_deploy(settings, report, ramp, rollback, drain_timeout))


async def _deploy(
    settings: StackSettings,
    report: Report,
    ramp: float | None,
    rollback: bool,
    drain_timeout: float,
) -> None:
    cfg = stack_config(settings)
    async with _client(settings) as client:
        view = await versioning.describe(client, settings.worker_deployment_name)
        if rollback:
            target = _rollback_target(view, report)
        else:
            target = builds.disk_build(settings)
            report(f"the checkout is build {target}")
        if not builds.can_run(cfg, settings, target):
            raise StackError(f"build {target}'s code is not in {builds.builds_dir(cfg)}")
        rollout = _Rollout(client, settings, cfg, report, target)
        await rollout.run(view, ramp, drain_timeout)


def _rollback_target(view: versioning.DeploymentView | None, report: Report) -> str:
    if view is None or view.current is None:
        raise StackError("no current version: nothing to roll back")
    if view.ramping is not None:
        report(f"ending the ramp to build {view.ramping}; build {view.current} stays current")
        return view.current
    previous = versioning.previous_version(view)
    if previous is None:
        raise StackError(f"build {view.current} is the only version ever current: no rollback")
    report(f"rolling back from build {view.current} to build {previous}")
    return previous


@dataclass
class _Rollout:
    client: Client
    settings: StackSettings
    cfg: StackConfig
    report: Report
    target: str

    @property
    def deployment(self) -> str:
        return self.settings.worker_deployment_name

    async def run(
        self, view: versioning.DeploymentView | None, ramp: float | None, drain_timeout: float
    ) -> None:
        current = view.current if view else None
        ramping = view.ramping if view else None
        old = [build for build in running_builds(self.cfg) if build != self.target]
        if current == self.target and ramping is None and not old:
            self.report(f"build {self.target} is already current: nothing to deploy")
            return
        await self._start_beside()
        if ramp is not None and current != self.target:
            await versioning.set_ramping(self.client, self.deployment, self.target, ramp)
            self.report(
                f"build {self.target} ramps: {ramp:g}% of new orders run on it, the others "
                f"on build {current}; `{DEPLOY_HINT}` makes it current, `--rollback` ends the ramp"
            )
            return
        if ramping is not None and ramping != self.target:
            await versioning.set_ramping(self.client, self.deployment, "", 0)
            self.report(f"the ramp to build {ramping} ended")
        if current != self.target:
            await versioning.set_current(self.client, self.deployment, self.target)
            self.report(f"build {self.target} is current: new orders run on it")
        if old:
            await self._drain(old, drain_timeout)
            await asyncio.to_thread(self._retire, old)
        builds.prune(self.cfg, keep={self.target, *old, *([current] if current else [])})

    async def _start_beside(self) -> None:
        """The target build's workers, those not running yet, then until they poll."""
        names = running_builds(self.cfg).get(self.target, [])
        missing = [role for role in WORKER_QUEUES if not any(worker_role(n) == role for n in names)]
        if missing:
            self.report(f"starting build {self.target}'s workers beside the running ones")
            for message in await asyncio.to_thread(self._start_workers, missing):
                self.report(f"  {message}")
        queues = _queues(self.settings)
        await versioning.wait_until_polling(
            self.client, self.deployment, self.target, queues, POLL_TIMEOUT
        )
        self.report(f"build {self.target} polls {', '.join(sorted(queues))}")

    def _start_workers(self, roles: Sequence[str]) -> list[str]:
        return _in_parallel([partial(start_worker, self.settings, r, self.target) for r in roles])

    def _stop_workers(self, names: Sequence[str]) -> list[str]:
        return _in_parallel([partial(stop_process, self.cfg, name) for name in names])

    async def _drain(self, old: list[str], timeout: float) -> None:
        listed = ", ".join(old)
        self.report(f"waiting until build {listed} has no open orders (up to {timeout:.0f}s)")
        started = time.monotonic()
        counts = await versioning.wait_until_drained(self.client, self.deployment, old, timeout)
        left = {build: n for build, n in counts.items() if n}
        if left:
            build, count = next(iter(left.items()))
            orders = "1 open order" if count == 1 else f"{count} open orders"
            raise StackError(
                f"build {build} still has {orders} after {timeout:.0f}s; its workers keep "
                f"running: `{DEPLOY_HINT}` retires them once the orders finish"
            )
        self.report(f"build {listed} drained in {time.monotonic() - started:.1f}s")

    def _await_metrics_ports(self, timeout: float = 15.0) -> None:
        """The stopped workers' metrics ports, free again: a socket of a process that has
        just exited can hold its port for a moment after the process is gone."""
        give_up = time.monotonic() + timeout
        for port in worker_metrics_ports(self.settings):
            while processes.port_in_use(self.cfg.host, port) and time.monotonic() < give_up:
                time.sleep(0.2)

    def _retire(self, old: list[str]) -> None:
        """Stop the old builds' workers; the target's take over the plain names (and the
        metrics ports) when an old build had them."""
        running = running_builds(self.cfg)
        serving = builds.serving_build(self.cfg)
        for build in old:
            for message in self._stop_workers(running.get(build, [])):
                self.report(f"  {message} (build {build})")
        if serving in old or serving is None:
            builds.set_serving(self.cfg, self.target)
            self._await_metrics_ports()
            # The target's own: under the plain names, with the metrics ports.
            for message in self._start_workers(list(WORKER_QUEUES)):
                self.report(f"  {message} (build {self.target})")
            beside = [n for n in running.get(self.target, []) if n not in WORKER_QUEUES]
            for message in self._stop_workers(beside):
                self.report(f"  {message}")
        self.report(f"build {', '.join(old)} retired; build {self.target} serves")
