"""Smoke run of the benchmark (devstack/bench/run.py) on the real stack: a few orders, sane JSON.

The session's dev server and PostgreSQL (`real_stack`), plus what the benchmark measures in
production shape: two worker processes (`python -m app.worker --queue orders|shipping`)
and the API (`python -m app.api`), started as supervised processes with pid files in the
stack's run folder, on task queues of their own (the in-process workers of other tests
never take these orders). No timing assertions: the machine may be busy.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest
from temporalio.api.enums.v1 import EventType, VersioningBehavior
from temporalio.client import Client, WorkflowHistory

from app.orders.search import ORDER_STATE as STATE
from app.platform.settings import PROJECT_ROOT
from devstack.bench.baseline import BASELINE_WORKFLOW
from devstack.bench.measure import discover_processes, percentile
from devstack.bench.run import RESULT_KEYS, TOPOLOGIES, format_report, run_bench
from devstack.bench.soak import QUARTERS, flatness, run_soak
from devstack.stack.config import StackConfig, StackSettings
from devstack.stack.infra import stop_all
from devstack.stack.processes import start_process
from tests.helpers import RealStack
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVICES = ("worker-orders", "worker-shipping", "app")


@dataclass
class BenchStack:
    settings: StackSettings
    cfg: StackConfig


def _logged(cfg: StackConfig, name: str, marker: bytes) -> Callable[[], bool]:
    """Ready check: `marker` appears in the service's log."""

    def check() -> bool:
        try:
            return marker in cfg.log_path(name).read_bytes()
        except FileNotFoundError:
            return False

    return check


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def bench_stack(real_stack: RealStack) -> Iterator[BenchStack]:
    tag = uuid.uuid4().hex[:6]
    cfg = real_stack.cfg
    # The session stack's settings, with its run folder and ports (the launcher's view).
    settings = StackSettings(
        **{
            **real_stack.settings.model_dump(),
            "run_dir": cfg.run_dir,
            "postgres_port": cfg.postgres_port,
            "temporal_port": cfg.temporal_port,
            "temporal_ui_port": cfg.temporal_ui_port,
            "order_task_queue": f"bench-orders-{tag}",
            "shipping_task_queue": f"bench-shipping-{tag}",
            "api_port": free_port(),
            "api_host": "127.0.0.1",
        }
    )
    env = {
        "DATABASE_URL": settings.database_url_plain,
        "TEMPORAL_TARGET": settings.temporal_target,
        "ORDER_TASK_QUEUE": settings.order_task_queue,
        "SHIPPING_TASK_QUEUE": settings.shipping_task_queue,
        "API_HOST": settings.api_host,
        "API_PORT": str(settings.api_port),
        "API_KEYS": "",
        "ALLOW_FAULT_INJECTION": "true",
        "FAULT_PROFILE": "off",
        "WORKER_METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    py = sys.executable
    try:
        for queue in ("orders", "shipping"):
            name = f"worker-{queue}"
            start_process(
                cfg,
                name,
                [py, "-m", "app.worker", "--queue", queue],
                env=env,
                ready=_logged(cfg, name, b"worker running"),
                timeout=60.0,
                cwd=PROJECT_ROOT,
            )
        url = f"http://{settings.api_host}:{settings.api_port}/health"
        start_process(
            cfg,
            "app",
            [py, "-m", "app.api"],
            env=env,
            ready=lambda: _healthy(url),
            timeout=60.0,
            cwd=PROJECT_ROOT,
        )
        yield BenchStack(settings, cfg)
    finally:
        stop_all(cfg, list(SERVICES))


def test_discovers_the_stack_processes(bench_stack: BenchStack) -> None:
    found = discover_processes(bench_stack.settings)
    for name in (*SERVICES, "temporal", "postgres"):
        assert found.get(name), f"{name} not found in {found}"


async def test_smoke_run_reports_every_figure(bench_stack: BenchStack) -> None:
    found = discover_processes(bench_stack.settings)
    processes = {k: v for k, v in found.items() if k in (*SERVICES, "temporal", "postgres")}
    messages: list[str] = []

    result = await run_bench(
        bench_stack.settings,
        orders=6,
        concurrency=2,
        warmup=2,
        status_seconds=1.0,
        status_concurrency=4,
        processes=processes,
        progress=messages.append,
    )

    assert set(RESULT_KEYS) <= set(result)
    assert result["failed_orders"] == 0, result["orders_phase"]["first_failures"]
    assert result["orders_phase"]["completed"] == 6
    assert result["baseline_phase"]["completed"] == 6
    for key in ("orders_per_s", "baseline_per_s", "ratio", "status_rps"):
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    for key in ("p50_ms", "p95_ms", "p99_ms", "start_p99_ms"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["start_p99_ms"] <= result["p99_ms"]
    assert result["ratio"] == pytest.approx(
        result["orders_per_s"] / result["baseline_per_s"], rel=0.02
    )
    # The default yardstick: the featured baseline, its workers split as the stack's are.
    assert "(features: with search attributes and the deadline timer)" in format_report(result)
    assert result["topology"] == TOPOLOGIES[False]
    assert 10 < result["worker_rss_mb"] < 4096
    assert len(result["worker_rss_mb_by_pid"]) == 2
    assert result["status_phase"]["status_non_200"] == 0
    assert result["machine"]["cpus"] >= 1
    assert messages, "progress was never reported"
    assert result["baseline_worker_rss_mb"] is not None
    # The baseline's worker processes are gone again.
    queues = result["baseline_phase"]["task_queues"]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        assert not any(q in cmd for q in queues), f"baseline worker left running: {cmd}"


async def _baseline_histories(
    bench_stack: BenchStack, result: dict[str, Any]
) -> list[WorkflowHistory]:
    """The history of each baseline run the benchmark made."""
    client = await Client.connect(bench_stack.settings.temporal_target)
    orders_queue = result["baseline_phase"]["task_queues"][0]
    histories: list[WorkflowHistory] = []
    async for run in client.list_workflows(
        f"WorkflowType='{BASELINE_WORKFLOW}' AND TaskQueue='{orders_queue}'"
    ):
        assert run.typed_search_attributes.get(STATE) == (
            "COMPLETED" if result["baseline_shape"] == "features" else None
        )
        histories.append(
            await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
        )
    return histories


async def test_featured_baseline_uses_the_orders_temporal_features_in_one_process(
    bench_stack: BenchStack,
) -> None:
    """The default baseline's runs carry the order's search attributes and its deadline
    timer, and still do no work; against versioned order workers its own are a pinned
    version too; against workers that serve both task queues from one process, its own
    do too."""
    found = discover_processes(bench_stack.settings)
    # Seen as one worker process: the orders worker's pid stands for it.
    processes = {
        **{k: v for k, v in found.items() if not k.startswith("worker")},
        "worker": found["worker-orders"],
    }
    result = await run_bench(
        # As a stack whose workers are versioned sees it (this one's are not: the order
        # side does not change).
        bench_stack.settings.model_copy(update={"worker_versioning": True}),
        orders=2,
        concurrency=2,
        warmup=0,
        status_seconds=0,
        processes=processes,
    )
    assert result["baseline_shape"] == "features"
    assert result["topology"] == TOPOLOGIES[True]
    assert result["baseline_versioned"] is True
    assert "pinned to a worker version" in format_report(result)
    # Its one worker served both queues: every run's child shipped.
    assert result["baseline_phase"]["completed"] == 2
    histories = await _baseline_histories(bench_stack, result)
    assert len(histories) == 2
    for history in histories:
        kinds = Counter(EventType.Name(e.event_type) for e in history.events)
        assert kinds["EVENT_TYPE_TIMER_STARTED"] == 1
        assert kinds["EVENT_TYPE_TIMER_CANCELED"] == 1
        # The patch's TemporalChangeVersion, then review, shipping and close.
        assert kinds["EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"] == 4
        assert kinds["EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"] == 3
        assert kinds["EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED"] == 1
        # Every workflow task ran on the baseline's own version, pinned.
        completed = [
            e.workflow_task_completed_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        ]
        assert {c.deployment_version.deployment_name for c in completed} == {
            result["baseline_phase"]["deployment"]
        }
        assert {c.versioning_behavior for c in completed} == {
            VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
        }


async def test_bare_baseline_shape_leaves_the_features_out(bench_stack: BenchStack) -> None:
    result = await run_bench(
        bench_stack.settings,
        orders=1,
        concurrency=1,
        warmup=0,
        status_seconds=0,
        baseline_shape="bare",
        processes=discover_processes(bench_stack.settings),
    )
    assert "(bare: the order's Temporal shape)" in format_report(result)
    assert result["baseline_versioned"] is False
    (history,) = await _baseline_histories(bench_stack, result)
    kinds = Counter(EventType.Name(e.event_type) for e in history.events)
    assert kinds["EVENT_TYPE_TIMER_STARTED"] == 0
    assert kinds["EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"] == 0


async def test_soak_reports_quarters_and_database_growth(bench_stack: BenchStack) -> None:
    result = await run_soak(bench_stack.settings, orders=8, concurrency=2)

    assert result["failed_orders"] == 0
    assert [q["completed"] for q in result["quarters"]] == [2] * QUARTERS
    for q in result["quarters"]:
        assert q["per_s"] > 0 and 0 < q["p50_ms"] <= q["p99_ms"]
        assert 10 < q["rss_mb"]["worker"] < 4096 and 10 < q["rss_mb"]["api"] < 4096
        # Each process of the stack is measured, and the workers and the dev server worked.
        cpu = q["cpu_ms_per_order"]
        assert {"temporal", "postgres", "app", "bench_client"} <= set(cpu), cpu
        assert cpu["temporal"] > 0 and sum(v for k, v in cpu.items() if k.startswith("worker")) > 0
    first, last = result["quarters"][0], result["quarters"][-1]
    assert result["throughput_change_pct"] == pytest.approx(
        (last["per_s"] - first["per_s"]) / first["per_s"] * 100, abs=0.1
    )
    growth = result["db_mb_per_1000_orders"]
    assert set(growth) == {
        "postgres_app",
        "postgres_gateway",
        "postgres_carrier",
        "temporal_sqlite",
    }
    # Every database exists and holds something; growth is never negative.
    assert all(mb > 0 for mb in result["db_mb_after"].values()), result["db_mb_after"]
    assert all(mb >= 0 for mb in growth.values()), growth


def test_flatness_compares_the_last_quarter_with_the_first() -> None:
    quarters = [
        {"per_s": 10.0, "p99_ms": 500.0, "rss_mb": {"worker": 100.0, "api": 120.0}},
        {"per_s": 11.0, "p99_ms": 480.0, "rss_mb": {"worker": 104.0, "api": 121.0}},
        {"per_s": 9.0, "p99_ms": 520.0, "rss_mb": {"worker": 110.0, "api": 121.0}},
        {"per_s": 9.5, "p99_ms": 600.0, "rss_mb": {"worker": 118.5, "api": 119.0}},
    ]
    assert flatness(quarters) == {
        "throughput_change_pct": -5.0,
        "p99_change_pct": 20.0,
        "rss_growth_mb": {"worker": 18.5, "api": -1.0},
    }


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
