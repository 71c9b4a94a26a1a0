"""Worker Versioning: which Worker Deployment Version a worker is, and the moves of a rollout.

Every worker build is a version (deployment name + build id) of one Worker Deployment.
Orders are Pinned: a run lives its whole life on the build that started it, so a change
to OrderWorkflow ships as a new version instead of a `workflow.patched` branch. New runs
go to the deployment's current version (or a ramp of them to a newer one); old versions
drain, then their workers stop. See docs/operations.md, "Deploying a new version".
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from temporalio.api.deployment.v1 import WorkerDeploymentVersion as VersionProto
from temporalio.api.enums.v1 import TaskQueueType, WorkerDeploymentVersionStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    DescribeWorkerDeploymentVersionRequest,
    SetWorkerDeploymentCurrentVersionRequest,
    SetWorkerDeploymentRampingVersionRequest,
)
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from app.orders.messages import ORDER_WORKFLOW
from app.platform.settings import Settings

PACKAGE = "order-fulfillment"
SOURCE_ROOT = Path(__file__).resolve().parent  # the `app` package: what a worker runs


def build_id(override: str = "", source: Path = SOURCE_ROOT) -> str:
    """This build's id: `override` when given (WORKER_BUILD_ID, set by image builds),
    else the package version and commit, plus a hash of the worker's code when it
    differs from that commit (or when there is no git checkout at all)."""
    if override:
        return override
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "0"
    commit = _git(source, "rev-parse", "--short=10", "HEAD")
    if commit is None:
        return f"{version}-src-{source_hash(source)}"
    if _git(source, "status", "--porcelain", "--", ".") == "":
        return f"{version}-{commit}"
    return f"{version}-{commit}-dirty-{source_hash(source)}"


@functools.cache
def _this_process_build(override: str) -> str:
    """Computed once: a process is one build even if files change under it."""
    return build_id(override)


def source_hash(source: Path = SOURCE_ROOT) -> str:
    """A short hash of the worker's Python sources: equal trees, equal hashes."""
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*.py")):
        digest.update(path.relative_to(source).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def deployment_config(settings: Settings) -> WorkerDeploymentConfig:
    """The worker's place in the deployment. Unversioned workers still report their build
    id (it shows in the UI) but take any task of their queues."""
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(
            deployment_name=settings.worker_deployment_name,
            build_id=_this_process_build(settings.worker_build_id),
        ),
        use_worker_versioning=settings.worker_versioning,
    )


@dataclass(frozen=True)
class VersionView:
    build_id: str
    status: str  # CURRENT, RAMPING, DRAINING, DRAINED, INACTIVE
    open_orders: int
    # When it last became current (None: never was): what a rollback goes back to.
    last_current: datetime | None = None


@dataclass(frozen=True)
class DeploymentView:
    name: str
    current: str | None  # build id; None: new work goes to unversioned workers
    ramping: str | None
    ramp_percent: float
    versions: list[VersionView]


async def describe(client: Client, deployment: str) -> DeploymentView | None:
    """The deployment's routing and versions with their open orders; None if no
    versioned worker ever polled."""
    try:
        info = (
            await client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(
                    namespace=client.namespace, deployment_name=deployment
                )
            )
        ).worker_deployment_info
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    routing = info.routing_config
    builds = [summary.deployment_version.build_id for summary in info.version_summaries]
    counts = await asyncio.gather(*(open_orders(client, deployment, b) for b in builds))
    return DeploymentView(
        name=deployment,
        current=routing.current_deployment_version.build_id or None,
        ramping=routing.ramping_deployment_version.build_id or None,
        ramp_percent=routing.ramping_version_percentage,
        versions=[
            VersionView(
                build_id=summary.deployment_version.build_id,
                status=_status_name(summary.status).removeprefix(
                    "WORKER_DEPLOYMENT_VERSION_STATUS_"
                ),
                open_orders=count,
                last_current=(
                    summary.last_current_time.ToDatetime(tzinfo=UTC)
                    if summary.HasField("last_current_time")
                    else None
                ),
            )
            for summary, count in zip(info.version_summaries, counts, strict=True)
        ],
    )


def previous_version(view: DeploymentView) -> str | None:
    """The version that was current before the current one (None: there was none)."""
    earlier = [
        v
        for v in view.versions
        if v.last_current is not None and v.build_id not in (view.current, view.ramping)
    ]
    if not earlier:
        return None
    return max(earlier, key=lambda v: v.last_current or datetime.min.replace(tzinfo=UTC)).build_id


def _status_name(value: WorkerDeploymentVersionStatus.ValueType) -> str:
    return WorkerDeploymentVersionStatus.Name(value)


async def open_orders(client: Client, deployment: str, build: str) -> int:
    """Running orders pinned to (or last run on) one version: what keeps it draining."""
    query = (
        f"WorkflowType='{ORDER_WORKFLOW}' AND ExecutionStatus='Running' AND "
        f"TemporalWorkerDeploymentVersion='{deployment}:{build}'"
    )
    return (await client.count_workflows(query)).count


async def wait_until_drained(
    client: Client, deployment: str, builds: Collection[str], timeout: float
) -> dict[str, int]:
    """Until none of `builds` has an open order, or `timeout`; the last counts. A zero
    counts once read twice a second apart: an order a version took a moment ago may not
    be in the visibility store yet."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    zero_seen = False
    while True:
        found = await asyncio.gather(*(open_orders(client, deployment, b) for b in builds))
        counts = dict(zip(builds, found, strict=True))
        if not any(found):
            if zero_seen:
                return counts
            zero_seen = True
        else:
            zero_seen = False
        if loop.time() > give_up:
            return counts
        await asyncio.sleep(1.0)


async def polled_queues(client: Client, deployment: str, build: str) -> set[str]:
    """Task queues the version's workers have polled for workflow tasks (empty while none)."""
    try:
        response = await client.workflow_service.describe_worker_deployment_version(
            DescribeWorkerDeploymentVersionRequest(
                namespace=client.namespace,
                deployment_version=VersionProto(deployment_name=deployment, build_id=build),
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return set()
        raise
    return {
        queue.name
        for queue in response.worker_deployment_version_info.task_queue_infos
        if queue.type == TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
    }


async def wait_until_polling(
    client: Client, deployment: str, build: str, queues: set[str], timeout: float
) -> None:
    """Until the version's workers poll every one of `queues`, or TimeoutError."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not queues <= await polled_queues(client, deployment, build):
        if loop.time() > give_up:
            raise TimeoutError(
                f"version {build} of {deployment} did not poll {', '.join(sorted(queues))} "
                f"within {timeout:.0f}s"
            )
        await asyncio.sleep(0.5)


async def set_current(client: Client, deployment: str, build: str) -> None:
    await client.workflow_service.set_worker_deployment_current_version(
        SetWorkerDeploymentCurrentVersionRequest(
            namespace=client.namespace,
            deployment_name=deployment,
            build_id=build,
            # Ours are the only workflow types; a version that lacks one is a broken build.
            ignore_missing_task_queues=False,
        )
    )


async def set_ramping(client: Client, deployment: str, build: str, percent: float) -> None:
    """Send `percent` of new orders to `build`; percent 0 and an empty build end a ramp."""
    await client.workflow_service.set_worker_deployment_ramping_version(
        SetWorkerDeploymentRampingVersionRequest(
            namespace=client.namespace,
            deployment_name=deployment,
            build_id=build,
            percentage=percent,
        )
    )


async def adopt_if_unrouted(
    client: Client, deployment: str, build: str, queues: set[str], timeout: float = 60.0
) -> str:
    """Make this build current when the deployment has no current version yet: the first
    start of a fresh install needs no rollout step. A deployment that already routes
    somewhere is left to the operator (`cli.py deploy`, `temporal worker deployment`).
    Returns the current build id after the call."""
    view = await describe(client, deployment)
    if view is not None and view.current is not None:
        return view.current
    await wait_until_polling(client, deployment, build, queues, timeout)
    view = await describe(client, deployment)
    if view is not None and view.current is not None:
        return view.current  # another worker of a fresh install adopted first
    try:
        await set_current(client, deployment, build)
    except RPCError as err:
        # Two workers of the same fresh build race; the loser finds it current already.
        if err.status != RPCStatusCode.FAILED_PRECONDITION:
            raise
        view = await describe(client, deployment)
        return view.current if view and view.current else build
    return build
