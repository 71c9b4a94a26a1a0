"""`cli.py deploy` on a real embedded stack: orders started on build A wait in review while
build B, whose OrderWorkflow would not replay A's histories, takes over; A's orders are
approved and complete on A with no non-determinism error, new orders run on B, A's workers
stop once it has drained, and `deploy --rollback` sends new orders to A again. On the way:
a drain timeout leaves A's workers running, and a restart mid-drain runs both builds.

The stack runs from a copy of the project outside any git checkout (the build id is then
a hash of the code), so the test changes "the code on disk" without touching the checkout;
the chaos run has used it before (tests/devstack/conftest.py). Build B opens OrderWorkflow
with a 10 ms timer: any of A's histories replayed on it fails."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from app.orders.messages import order_workflow_id
from tests.devstack.copied_stack import CopiedStack
from tests.helpers import CliStack, describe

pytestmark = pytest.mark.e2e

DEPLOYMENT = "order-fulfillment"
# The orders wait in review across a deploy: a deadline and review far beyond it.
LONG_ORDER = {"ORDER_DEADLINE_S": "300"}


@pytest.fixture(scope="module")
def stack(own_stack: CopiedStack) -> CopiedStack:
    return own_stack


def break_replay(project: Path) -> None:
    """Build B: OrderWorkflow.run opens with a timer that A's histories never had."""
    path = project / "app" / "orders" / "workflows" / "order.py"
    source = path.read_text(encoding="utf-8")
    changed, count = re.subn(
        r"(    @workflow\.run\n    async def run\([^)]*\)[^:]*:\n)",
        r"\1        await workflow.sleep(0.01)\n",
        source,
    )
    assert count == 1, "OrderWorkflow.run not found"
    path.write_text(changed, encoding="utf-8")


@dataclass
class RunFacts:
    build: str
    opening_timer: bool  # B's code ran: its 10 ms timer (A's timers are seconds)
    task_failures: int  # a non-determinism error fails workflow tasks


async def _facts(target: str, order_id: str) -> RunFacts:
    client = await Client.connect(target)
    handle = client.get_workflow_handle(order_workflow_id(order_id))
    described = await handle.describe()
    info = described.raw_description.workflow_execution_info.versioning_info
    opening_timer, failures = False, 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            fire = event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            opening_timer = opening_timer or fire.total_seconds() < 1
        failures += event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    return RunFacts(info.deployment_version.build_id, opening_timer, failures)


def facts(stack: CliStack, order_id: str) -> RunFacts:
    return asyncio.run(_facts(stack.env["TEMPORAL_TARGET"], order_id))


def in_review(view: dict[str, Any]) -> bool:
    return bool(view["step"] == "MANUAL_REVIEW")


def completed(view: dict[str, Any]) -> bool:
    return bool(view["state"] == "COMPLETED")


def new_order(stack: CliStack, prefix: str) -> str:
    order_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    stack.ok("start-workflow", order_id, f"pmt-{order_id}", "--approve")
    stack.wait_status(order_id, completed, timeout=60)
    return order_id


def wait_for_line(path: Path, text: str, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(encoding="utf-8"):
        assert process.poll() is None, f"deploy ended early:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{path.read_text()}"
        time.sleep(0.2)


def test_the_deployment_is_listed_after_start(stack: CopiedStack) -> None:
    listed = stack.ok("temporal", "worker", "deployment", "list")
    assert DEPLOYMENT in listed
    listing = stack.ps()
    build_a = listing.deployment["current"]
    assert build_a and build_a == listing.deployment["checkout_build"]
    assert listing.worker_builds == {"worker-orders": build_a, "worker-shipping": build_a}
    refused = stack.run("deploy", env={**stack.env, "WORKER_VERSIONING": "false"})
    assert refused.returncode == 1 and "WORKER_VERSIONING=false" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, describe(refused)
    assert "already current" in stack.ok("deploy")


def test_deploy_with_orders_in_flight_then_rollback(stack: CopiedStack, project: Path) -> None:
    build_a = stack.deployment()["current"]
    waiting = [f"dep-a{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    stack.ok_each(
        *(
            ["start-workflow", order_id, f"pmt-{order_id}", "--review-timeout", "120"]
            for order_id in waiting
        ),
        env={**stack.env, **LONG_ORDER},
    )
    for order_id in waiting:
        stack.wait_status(order_id, in_review)

    break_replay(project)
    # Orders in flight: the drain times out, and A's workers keep running beside B's.
    short = stack.run("deploy", "--drain-timeout", "1")
    assert short.returncode == 1 and "still has 2 open orders" in short.stderr, describe(short)
    listing = stack.ps()
    deployment = listing.deployment
    build_b = deployment["current"]
    assert build_b not in (None, build_a) and build_b == deployment["checkout_build"]
    versions = {v["build_id"]: v for v in deployment["versions"]}
    assert versions[build_a]["status"] == "DRAINING" and versions[build_a]["open_orders"] == 2
    assert set(listing.worker_builds.values()) == {build_a, build_b}
    # A restart brings back both: B under the plain names (current), A beside (open orders).
    stack.ok("restart")
    assert stack.worker_builds() == {
        "worker-orders": build_b,
        "worker-shipping": build_b,
        f"worker-orders.{build_a}": build_a,
        f"worker-shipping.{build_a}": build_a,
    }
    assert f"==> worker-shipping.{build_a}" in stack.ok("logs", "--service", "worker", "-n", "1")

    # The deploy waits for A to drain while A's orders are approved.
    log = stack.run_dir / "deploy.out"
    with log.open("w") as out:
        deploy = subprocess.Popen(
            [sys.executable, stack.script, "deploy", "--drain-timeout", "90"],
            env=stack.env,
            cwd=stack.run_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for_line(log, "has no open orders", deploy, timeout=60)
        stack.ok_each(*(["approve", order_id] for order_id in waiting))
        assert deploy.wait(timeout=120) == 0, log.read_text()
    finally:
        if deploy.poll() is None:
            deploy.kill()
    assert f"build {build_a} retired" in log.read_text()

    for order_id in waiting:
        assert stack.wait_status(order_id, completed, timeout=60)
        assert facts(stack, order_id) == RunFacts(build_a, opening_timer=False, task_failures=0)
    on_b = new_order(stack, "dep-b")
    assert facts(stack, on_b) == RunFacts(build_b, opening_timer=True, task_failures=0)
    # A's workers are gone; B's run under the plain names.
    assert stack.worker_builds() == {"worker-orders": build_b, "worker-shipping": build_b}

    rolled = stack.ok("deploy", "--rollback")
    assert f"to build {build_a}" in rolled
    on_a = new_order(stack, "dep-back")
    assert facts(stack, on_a) == RunFacts(build_a, opening_timer=False, task_failures=0)
    listing = stack.ps()
    assert listing.deployment["current"] == build_a
    assert listing.worker_builds == {"worker-orders": build_a, "worker-shipping": build_a}

    # Nothing open on any build: a restart runs the code on disk (B) at once. (The order
    # row reads COMPLETED a moment before its workflow closes.)
    deadline = time.monotonic() + 20
    while any(v["open_orders"] for v in stack.deployment()["versions"]):
        assert time.monotonic() < deadline, stack.deployment()
        time.sleep(0.5)
    restarted = stack.ok("restart")
    assert f"build {build_b} of the checkout takes over" in restarted, restarted
    listing = stack.ps()
    assert listing.deployment["current"] == build_b
    assert listing.worker_builds == {"worker-orders": build_b, "worker-shipping": build_b}
