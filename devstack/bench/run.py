"""Benchmark: orders through the REST API, against the same shape on bare Temporal.

`run_bench()` (async) and `run_bench_sync()` (for the CLI) drive a running stack, by
default the embedded one started by `cli.py start`:

1. **orders**: `orders` orders (after `warmup` unmeasured ones) through the REST API at a
   fixed `concurrency` (closed loop: each of `concurrency` clients starts an order, approves
   it, waits for it to complete, and starts the next). Fault profile `off`. The approval is
   sent right after the start (an approval before the review step is kept by design), as
   the `approve_order` Temporal signal (`approve="signal"`, default) or through
   `POST /orders/{id}/signals/approve` (`approve="api"`, a Temporal Update). Completion is
   the workflow's close event, seen by a long poll on its history (`handle.result()`),
   which costs one request per order instead of a stream of status polls.
2. **baseline**: the same number of workflows of the same shape on bare Temporal
   (`devstack/bench/baseline.py`: no API, no database, no-op activities; by default with the
   order's search attributes and deadline timer), started by a Temporal client at the same
   concurrency on the same dev server. Its workers, which this function starts and stops,
   run in the order workers' topology: one process per task queue, or one for both when
   the stack runs its workers so (`topology` in the result).
   Orders and baseline are measured in alternating chunks, baseline-orders-orders-baseline
   (`SEQUENCE`), and each side's chunks are added up.
3. **status**: `GET /orders/{id}/status` on the completed orders (answered from the
   database) at saturation for `status_seconds`, from `status_concurrency` keep-alive
   connections.

Latencies are measured by the client from just before the start request to the moment the
client learns the workflow closed. Percentiles are nearest-rank. Worker RSS is sampled
every 0.25 s during the measured phases. The machine's load average is recorded before and
after each phase, because the machine may be shared.

The result has exactly these keys (see `RESULT_KEYS`) plus others for context:
orders_per_s, baseline_per_s, ratio, p50_ms, p95_ms, p99_ms, start_p99_ms, status_rps,
worker_rss_mb.

The command line is `scripts/cli.py bench` (devstack/cli/testing.py).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
from temporalio.client import Client

from app.platform.settings import Settings
from devstack.bench.measure import (
    ApproveVia,
    BaselineShape,
    BenchError,
    OneRun,
    PhaseResult,
    Progress,
    RssSampler,
    api_headers,
    api_url_for,
    closed_loop,
    discover_processes,
    load_average,
    percentile,
    rounded,
    worker_pids,
)
from devstack.bench.phases import BaselinePhase, BaselineWorkers, OrdersPhase, status_load
from devstack.stack.config import StackSettings
from devstack.sync import run_sync

RESULT_KEYS = (
    "orders_per_s",
    "baseline_per_s",
    "ratio",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "start_p99_ms",
    "status_rps",
    "worker_rss_mb",
)
TOPOLOGIES = {
    True: "one worker process for both task queues",
    False: "one worker process per task queue",
}
DEFAULT_ORDERS = 300
DEFAULT_CONCURRENCY = 8


def _baseline_queues(run_id: str) -> list[str]:
    return [f"bench-base-orders-{run_id}", f"bench-base-shipping-{run_id}"]


# Measured chunks per side, in this order ("ABBA"): each side runs once right after the
# other, once after itself, and the server ages evenly under both. Run one after the other
# instead, the second measured up to 40 % more dev server CPU per workflow than the first,
# whichever side it was.
SEQUENCE = ("baseline", "orders", "orders", "baseline")


def _chunks(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run_bench(
    settings: StackSettings,
    *,
    orders: int = DEFAULT_ORDERS,
    concurrency: int = DEFAULT_CONCURRENCY,
    api_url: str | None = None,
    api_key: str | None = None,
    approve: ApproveVia = "signal",
    fault_profile: str | None = "off",
    warmup: int | None = None,
    status_seconds: float = 5.0,
    status_concurrency: int = 16,
    baseline: bool = True,
    baseline_shape: BaselineShape = "features",
    processes: Mapping[str, Sequence[int]] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark against the stack `settings` points at; return the result dict.

    `settings`: as the CLI talks to the stack (TEMPORAL_TARGET, API_PORT, RUN_DIR, ...).
    `api_url`: default http://API_HOST:API_PORT. `api_key`: default a key from API_KEYS with
    the operator, reviewer and viewer roles (none when the API is open).
    `warmup`: unmeasured orders first (default max(concurrency, 10)), on both sides.
    `processes`: pids by service name (names starting with "worker" are the workers whose
    RSS is reported); default from the run folder's pid files or the command lines.
    `baseline=False` skips phase 2 (baseline_per_s and ratio are then None);
    `baseline_shape`: "features" (default) gives the baseline the order's search attributes
    and deadline timer, and pinned worker versions when the stack's workers are versioned
    (WORKER_VERSIONING; devstack/bench/baseline.py), so what is left is our code's cost;
    "bare" the order's Temporal shape alone;
    `status_seconds=0` skips phase 3 (status_rps is then None).
    """
    if orders < 1 or concurrency < 1:
        raise BenchError("orders and concurrency must be at least 1")
    say = progress or (lambda _msg: None)
    warmup = max(concurrency, 10) if warmup is None else warmup
    base_url = (api_url or api_url_for(settings)).rstrip("/")
    headers = api_headers(settings, api_key)
    procs = dict(processes) if processes is not None else discover_processes(settings)
    workers = worker_pids(procs)
    run_id = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "orders": orders,
        "concurrency": concurrency,
        "warmup": warmup,
        "approve": approve,
        "baseline_shape": baseline_shape if baseline else None,
        "fault_profile": fault_profile,
        "api_url": base_url,
        "machine": machine_info(),
        "code": code_version(),
        # The baseline's workers run as the order workers do (issue 28: the ratio measures
        # our code, not a process split).
        "topology": TOPOLOGIES[len(workers) == 1],
        # Pinned Worker Versioning is a Temporal feature the orders use, when on: the
        # featured baseline's workers use it too.
        "baseline_versioned": baseline
        and baseline_shape == "features"
        and settings.worker_versioning,
    }
    client = await connect_temporal(settings)
    result["machine"]["temporal_server"] = await _server_version(client)

    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=60.0
    ) as http:
        await check_api(http, base_url)
        runner = OrdersPhase(http, client, run_id, approve, fault_profile)
        queues = _baseline_queues(run_id)
        base_workers = BaselineWorkers(
            settings,
            *queues,
            single_process=len(workers) == 1,
            deployment=f"bench-baseline-{run_id}" if result["baseline_versioned"] else None,
        )
        sides: dict[str, _Side] = {"orders": (runner.one, procs)}
        try:
            if baseline:
                say(f"baseline: starting bare-Temporal workers, {result['topology']}")
                await base_workers.start()
                base = BaselinePhase(client, run_id, *queues, features=baseline_shape == "features")
                sides["baseline"] = (base.one, _baseline_cpu_groups(base_workers, procs))
            sequence = [side for side in SEQUENCE if side in sides]
            if warmup:
                await _warm_up(sides, warmup, concurrency, say)
            say(
                f"measuring {orders} runs per side at concurrency {concurrency}: {', '.join(sequence)}"
            )
            # The app's workers are watched until the status phase is over too.
            rss = RssSampler(workers)
            base_rss = RssSampler(base_workers.pids)
            rss.start()
            base_rss.start()
            parts = await _measure(sides, sequence, orders, concurrency, warmup, say)
            await base_rss.stop()
            baseline_rss = base_rss.max_mb
        finally:
            base_workers.stop()

        phase = PhaseResult.merge(parts["orders"])
        result["orders_phase"] = phase.summary()
        baseline_phase: PhaseResult | None = None
        if baseline:
            baseline_phase = PhaseResult.merge(parts["baseline"])
            result["baseline_phase"] = {
                **baseline_phase.summary(),
                "task_queues": queues,
                "deployment": base_workers.deployment,
            }
        result["sequence"] = sequence

        status: dict[str, Any] = {"status_rps": None}
        if status_seconds > 0:
            say(f"status: reading {len(runner.completed_ids)} closed orders for {status_seconds}s")
            status = await status_load(
                base_url,
                runner.completed_ids,
                status_seconds,
                status_concurrency,
                headers,
                cpu_groups={k: v for k, v in procs.items() if k in ("app", "api", "postgres")},
            )
            say(f"status: {status['status_rps']:.0f} requests/s")
        await rss.stop()
        result["status_phase"] = status

    result.update(_figures(phase, baseline_phase, status, rss, baseline_rss))
    result["notes"] = _notes(workers, phase)
    return result


# One run of a side, and the processes whose CPU time its chunks are charged.
_Side = tuple[OneRun, Mapping[str, Sequence[int]]]


async def connect_temporal(settings: Settings) -> Client:
    from app.platform.temporal import connect_client

    try:
        return await connect_client(settings)
    except RuntimeError as err:
        raise BenchError(f"Temporal is not reachable at {settings.temporal_target}") from err


async def check_api(http: httpx.AsyncClient, base_url: str) -> None:
    try:
        health = await http.get("/health")
    except httpx.HTTPError as err:
        raise BenchError(
            f"the API is not reachable at {base_url} ({type(err).__name__}); "
            "is the stack running? (python scripts/cli.py start)"
        ) from err
    if health.status_code != 200:
        raise BenchError(f"the API is not healthy: {health.status_code} {health.text[:200]}")


def _baseline_cpu_groups(
    base_workers: BaselineWorkers, procs: Mapping[str, Sequence[int]]
) -> dict[str, Sequence[int]]:
    """The baseline's own workers, and the Temporal server both sides share."""
    groups: dict[str, Sequence[int]] = {"baseline_workers": base_workers.pids}
    groups.update({k: v for k, v in procs.items() if k == "temporal"})
    return groups


async def _warm_up(
    sides: Mapping[str, _Side], warmup: int, concurrency: int, say: Progress
) -> None:
    for side, (one, _) in sides.items():
        say(f"{side}: warming up with {warmup} runs")
        warm = await closed_loop(one, warmup, concurrency)
        if warm.failures:
            raise BenchError(f"{side} warm-up failed: {warm.failures[0]}")


async def _measure(
    sides: Mapping[str, _Side],
    sequence: Sequence[str],
    orders: int,
    concurrency: int,
    first_index: int,
    say: Progress,
) -> dict[str, list[PhaseResult]]:
    """Each side's `orders` runs in chunks, taken in `sequence` order; the chunks per side."""
    parts: dict[str, list[PhaseResult]] = {side: [] for side in sides}
    next_index = dict.fromkeys(sides, first_index)
    for side in sequence:
        one, cpu_groups = sides[side]
        count = _chunks(orders, sequence.count(side))[len(parts[side])]
        part = await closed_loop(
            one, count, concurrency, first_index=next_index[side], cpu_groups=cpu_groups
        )
        next_index[side] += count
        parts[side].append(part)
        say(f"{side}: {part.completed} completed at {part.per_s:.1f}/s")
    return parts


def _figures(
    phase: PhaseResult,
    baseline_phase: PhaseResult | None,
    status: Mapping[str, Any],
    rss: RssSampler,
    baseline_rss: float | None,
) -> dict[str, Any]:
    """The headline figures (`RESULT_KEYS`) and the counts beside them."""
    orders_per_s = phase.per_s
    baseline_per_s = baseline_phase.per_s if baseline_phase is not None else None
    return {
        "orders_per_s": rounded(orders_per_s, 2),
        "baseline_per_s": rounded(baseline_per_s, 2) if baseline_per_s is not None else None,
        "ratio": (
            round(orders_per_s / baseline_per_s, 3)
            if baseline_per_s
            else None  # no baseline run, or nothing completed
        ),
        "p50_ms": rounded(percentile(phase.latencies_ms, 50)),
        "p95_ms": rounded(percentile(phase.latencies_ms, 95)),
        "p99_ms": rounded(percentile(phase.latencies_ms, 99)),
        "start_p99_ms": rounded(percentile(phase.start_ms, 99)),
        "status_rps": status["status_rps"],
        "worker_rss_mb": rss.max_mb,
        "worker_rss_mb_by_pid": {str(k): rounded(v) for k, v in rss.peak_mb.items()},
        "baseline_worker_rss_mb": baseline_rss,
        "failed_orders": len(phase.failures),
    }


def _notes(workers: Sequence[int], phase: PhaseResult) -> list[str]:
    notes = []
    if not workers:
        notes.append("no worker process found (pid files or app.worker): worker_rss_mb is null")
    if phase.failures:
        notes.append(f"{len(phase.failures)} orders failed; see orders_phase.first_failures")
    return notes


def code_version() -> dict[str, Any]:
    """The commit measured (and whether the work tree differs from it), when known."""
    from app.platform.settings import PROJECT_ROOT

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD"), "modified": bool(status)}


def machine_info() -> dict[str, Any]:
    import temporalio

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "temporalio": getattr(temporalio, "__version__", None),
        "load_at_start": load_average(),
    }


async def _server_version(client: Client) -> str | None:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    with contextlib.suppress(Exception):
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        return info.server_version or None
    return None


def run_bench_sync(
    settings: StackSettings,
    *,
    orders: int = DEFAULT_ORDERS,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`run_bench()` from synchronous code (the CLI), also when an event loop is running.

    `options` are `run_bench()`'s other keywords. Raises `BenchError` (a one-line message)
    when the stack cannot be benchmarked."""
    options.update(orders=orders, concurrency=concurrency, progress=progress)
    result: dict[str, Any] = run_sync(lambda: run_bench(settings, **options))
    return result


def _baseline(result: Mapping[str, Any]) -> str:
    """The baseline's figure with the shape it measured (the ratio depends on it)."""
    if result["baseline_per_s"] is None:
        return "not run (--no-baseline)"
    shape = result.get("baseline_shape") or "features"
    what = {
        "bare": "bare: the order's Temporal shape",
        "features": "features: with search attributes and the deadline timer",
    }
    versioned = ", pinned to a worker version" if result.get("baseline_versioned") else ""
    return f"{result['baseline_per_s']} ({what.get(shape, shape)}{versioned})"


def format_report(result: Mapping[str, Any]) -> str:
    """A short human-readable summary of a result."""
    rows = [
        ("orders/s", result["orders_per_s"]),
        ("baseline/s", _baseline(result)),
        ("ratio", result["ratio"]),
        ("latency p50/p95/p99 ms", f"{result['p50_ms']} / {result['p95_ms']} / {result['p99_ms']}"),
        ("start p99 ms", result["start_p99_ms"]),
        ("status reads/s", result["status_rps"]),
        ("worker RSS MB (max)", result["worker_rss_mb"]),
        ("orders, concurrency", f"{result['orders']}, {result['concurrency']}"),
        ("failed orders", result.get("failed_orders", 0)),
        ("load (1/5/15 min) at start", result["machine"]["load_at_start"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
