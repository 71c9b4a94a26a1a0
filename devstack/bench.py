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
   (`app/bench_baseline.py`: no API, no database, no-op activities), started by a Temporal
   client at the same concurrency on the same dev server, with two worker processes (one
   per task queue) that this function starts and stops.
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

Also runnable as `python -m devstack.bench [--orders N] [--concurrency C] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
from temporalio.client import Client

from app.platform.settings import Settings
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
DEFAULT_ORDERS = 300
DEFAULT_CONCURRENCY = 8
# An order closes within its 60 s deadline; one still open after this is a failure.
ORDER_TIMEOUT_S = 120.0
BENCH_ADDRESS = {
    "street": "1 Bench Street",
    "city": "Loadville",
    "state": "CA",
    "zip": "94000",
    "country": "US",
}
ApproveVia = Literal["signal", "api"]
Progress = Callable[[str], None]


class BenchError(Exception):
    """The benchmark cannot run (stack not reachable, fault injection refused, ...)."""


# --- small helpers -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _r(value: float, digits: int = 1) -> float:
    return round(value, digits) if math.isfinite(value) else value


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def api_url_for(settings: Settings) -> str:
    """Where the API of `settings` answers (a wildcard bind is reached through loopback)."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def _api_headers(settings: Settings, api_key: str | None) -> dict[str, str]:
    """An API key that may start, approve and read orders: the given one, or one from
    API_KEYS that holds those roles (none needed when the API is open)."""
    if api_key:
        return {"X-API-Key": api_key}
    spec = settings.api_keys.get_secret_value()
    if not spec:
        return {}
    from app.api.auth import Role, parse_api_keys

    needed = (Role.OPERATOR, Role.REVIEWER, Role.VIEWER)
    for key in parse_api_keys(spec):
        if all(key.principal.has(role) for role in needed):
            return {"X-API-Key": key.secret.decode()}
    raise BenchError("API_KEYS has no key with the operator, reviewer and viewer roles")


# --- processes: who to watch ---------------------------------------------------------------


def discover_processes(settings: Settings) -> dict[str, list[int]]:
    """Pids of the stack's processes by service name, from the run folder's pid files
    (`cli.py start`); workers not found there are looked up by command line
    (`app.worker` with this stack's TEMPORAL_TARGET in its environment)."""
    from devstack import services as stack_services
    from devstack import stack

    found: dict[str, list[int]] = {}
    with contextlib.suppress(Exception):
        cfg = stack_services.stack_config(settings)
        for status in stack.all_statuses(cfg):
            if status.running and status.pid is not None:
                found[status.name] = [status.pid]
    if not any(name.startswith("worker") for name in found):
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmd = proc.info["cmdline"] or []
                if "app.worker" in cmd and "-m" in cmd:
                    env = proc.environ()
                    if env.get("TEMPORAL_TARGET", settings.temporal_target) == (
                        settings.temporal_target
                    ):
                        found.setdefault("worker", []).append(proc.pid)
    return found


def _worker_pids(processes: Mapping[str, Sequence[int]]) -> list[int]:
    return [pid for name, pids in processes.items() if name.startswith("worker") for pid in pids]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


class CpuMeter:
    """CPU seconds used by groups of processes (with their children) between two points."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self._start: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                for proc in _tree(pid):
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system
            out[name] = total
        own = psutil.Process().cpu_times()
        out["bench_client"] = own.user + own.system
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        return {name: end[name] - self._start.get(name, 0.0) for name in end}


class RssSampler:
    """Peak resident memory of each process, sampled in the background."""

    def __init__(self, pids: Iterable[int], interval: float = 0.25) -> None:
        self.procs: dict[int, psutil.Process] = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.procs[pid] = psutil.Process(pid)
        self.interval = interval
        self.peak_mb: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for pid, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                mb = proc.memory_info().rss / 2**20
                self.peak_mb[pid] = max(self.peak_mb.get(pid, 0.0), mb)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.procs and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()

    @property
    def max_mb(self) -> float | None:
        return round(max(self.peak_mb.values()), 1) if self.peak_mb else None


# --- the closed loop -----------------------------------------------------------------------


@dataclasses.dataclass
class PhaseResult:
    latencies_ms: list[float]
    start_ms: list[float]
    failures: list[str]
    wall_s: float
    load_before: list[float]
    load_after: list[float]
    cpu_s: dict[str, float]

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @classmethod
    def merge(cls, parts: Sequence[PhaseResult]) -> PhaseResult:
        """One result for runs measured in several chunks (wall times and CPU add up)."""
        cpu: dict[str, float] = {}
        for part in parts:
            for name, seconds in part.cpu_s.items():
                cpu[name] = cpu.get(name, 0.0) + seconds
        return cls(
            latencies_ms=[ms for p in parts for ms in p.latencies_ms],
            start_ms=[ms for p in parts for ms in p.start_ms],
            failures=[f for p in parts for f in p.failures],
            wall_s=sum(p.wall_s for p in parts),
            load_before=parts[0].load_before,
            load_after=parts[-1].load_after,
            cpu_s=cpu,
        )

    @property
    def per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        n = max(self.completed, 1)
        return {
            "completed": self.completed,
            "failed": len(self.failures),
            "wall_s": _r(self.wall_s, 2),
            "per_s": _r(self.per_s, 2),
            "p50_ms": _r(percentile(self.latencies_ms, 50)),
            "p95_ms": _r(percentile(self.latencies_ms, 95)),
            "p99_ms": _r(percentile(self.latencies_ms, 99)),
            "max_ms": _r(max(self.latencies_ms, default=math.nan)),
            "start_p50_ms": _r(percentile(self.start_ms, 50)),
            "start_p99_ms": _r(percentile(self.start_ms, 99)),
            "cpu_ms_per_order": {k: _r(v * 1000 / n) for k, v in self.cpu_s.items()},
            # Everything measured except the load generator: what one order costs the stack.
            "stack_cpu_ms_per_order": _r(
                sum(v for k, v in self.cpu_s.items() if k != "bench_client") * 1000 / n
            ),
            "load_before": self.load_before,
            "load_after": self.load_after,
            "first_failures": self.failures[:5],
        }


OneRun = Callable[[int], Awaitable[tuple[float, float]]]


async def closed_loop(
    one: OneRun,
    count: int,
    concurrency: int,
    *,
    first_index: int = 0,
    cpu_groups: Mapping[str, Sequence[int]] | None = None,
    timeout_s: float = ORDER_TIMEOUT_S,
) -> PhaseResult:
    """Run `one(i)` for `count` indexes with `concurrency` runs in flight at any time.

    `one` returns (start request ms, start-to-completion ms) or raises; a run that takes
    longer than `timeout_s` counts as failed."""
    next_index = first_index
    end_index = first_index + count
    latencies: list[float] = []
    starts: list[float] = []
    failures: list[str] = []

    async def client() -> None:
        nonlocal next_index
        while next_index < end_index:
            i = next_index
            next_index += 1
            try:
                async with asyncio.timeout(timeout_s):
                    start_ms, total_ms = await one(i)
            except Exception as err:
                failures.append(f"#{i}: {type(err).__name__}: {err}"[:300])
                continue
            starts.append(start_ms)
            latencies.append(total_ms)

    meter = CpuMeter(cpu_groups or {})
    load_before = _load()
    meter.start()
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(max(1, min(concurrency, count)))))
    wall = time.perf_counter() - began
    cpu = meter.stop()
    return PhaseResult(latencies, starts, failures, wall, load_before, _load(), cpu)


# --- phase 1: orders through the API ---------------------------------------------------------


class _Orders:
    def __init__(
        self,
        http: httpx.AsyncClient,
        client: Client,
        run_id: str,
        approve: ApproveVia,
        fault_profile: str | None,
    ) -> None:
        self.http = http
        self.client = client
        self.run_id = run_id
        self.approve = approve
        self.fault_profile = fault_profile
        self.completed_ids: list[str] = []

    def order_id(self, i: int) -> str:
        return f"bench-{self.run_id}-{i:05d}"

    async def one(self, i: int) -> tuple[float, float]:
        from app.orders.models import SIGNAL_APPROVE, ApproveRequest, order_workflow_id

        order_id = self.order_id(i)
        body: dict[str, Any] = {"payment_id": f"pay-{order_id}", "address": BENCH_ADDRESS}
        if self.fault_profile is not None:
            body["fault_profile"] = self.fault_profile
        began = time.perf_counter()
        resp = await self.http.post(f"/orders/{order_id}/start", json=body)
        start_ms = (time.perf_counter() - began) * 1000
        if resp.status_code != 201:
            _refuse(resp, "start")
        handle = self.client.get_workflow_handle(order_workflow_id(order_id))
        if self.approve == "signal":
            await handle.signal(SIGNAL_APPROVE, ApproveRequest(reviewer="bench"))
        else:
            approved = await self.http.post(
                f"/orders/{order_id}/signals/approve", json={"reviewer": "bench"}
            )
            if approved.status_code != 200:
                _refuse(approved, "approve")
        result = await handle.result()
        total_ms = (time.perf_counter() - began) * 1000
        state = result.get("state") if isinstance(result, dict) else None
        if state != "COMPLETED":
            raise BenchError(f"order {order_id} ended {state}: {result}")
        self.completed_ids.append(order_id)
        return start_ms, total_ms


def _refuse(resp: httpx.Response, what: str) -> None:
    detail = resp.text[:300]
    if resp.status_code == 403 and "fault" in detail:
        raise BenchError(
            "the API refuses fault_profile=off (ALLOW_FAULT_INJECTION=false); benchmark the "
            "embedded stack, or pass fault_profile=None to a stack whose workers run "
            "FAULT_PROFILE=off"
        )
    if resp.status_code == 401:
        raise BenchError("the API wants an API key (set API_KEYS or pass api_key)")
    raise BenchError(f"{what} answered {resp.status_code}: {detail}")


# --- phase 3: status reads at saturation -------------------------------------------------------


async def status_load(
    base_url: str,
    order_ids: Sequence[str],
    seconds: float,
    concurrency: int,
    headers: Mapping[str, str],
    *,
    cpu_groups: Mapping[str, Sequence[int]] | None = None,
    warmup_s: float = 1.0,
) -> dict[str, Any]:
    """GET /orders/{id}/status round-robin over `order_ids` from `concurrency` keep-alive
    connections for `seconds` (after `warmup_s` unmeasured); requests per second answered 200.

    The client is plain HTTP/1.1 on asyncio streams: on a 2-core machine the load generator
    shares the CPU with the server, and httpx costs several times more CPU per request,
    which would be measured as server slowness."""
    if not order_ids:
        return {"status_rps": 0.0, "note": "no completed orders to read"}
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [
        f"GET /orders/{oid}/status HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
        for oid in order_ids
    ]
    counts = {"ok": 0, "bad": 0}
    latencies: list[float] = []
    measuring = False
    stop_at = 0.0

    async def conn(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            i = offset
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                writer.write(requests[i % len(requests)])
                i += 1
                status = await _read_response(reader)
                if measuring:
                    latencies.append((time.perf_counter() - began) * 1000)
                    counts["ok" if status == 200 else "bad"] += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    meter = CpuMeter(cpu_groups or {})
    load_before = _load()
    stop_at = time.perf_counter() + warmup_s + seconds
    tasks = [asyncio.create_task(conn(k * 7)) for k in range(concurrency)]
    await asyncio.sleep(warmup_s)
    measuring = True
    meter.start()
    began = time.perf_counter()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - began
    cpu = meter.stop()
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    if errors and not counts["ok"]:
        raise BenchError(f"status reads failed: {errors[0]}")
    return {
        "status_rps": _r(counts["ok"] / wall if wall > 0 else 0.0),
        "status_non_200": counts["bad"],
        "status_p50_ms": _r(percentile(latencies, 50), 2),
        "status_p99_ms": _r(percentile(latencies, 99), 2),
        "status_seconds": _r(wall, 2),
        "status_concurrency": concurrency,
        "status_cpu_pct": {k: _r(100 * v / wall) for k, v in cpu.items()} if wall > 0 else {},
        "status_load_before": load_before,
        "status_load_after": _load(),
        "status_errors": errors[:3],
    }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked body); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


# --- phase 2: bare-Temporal baseline ---------------------------------------------------------


class BaselineWorkers:
    """Two baseline worker processes (orders, shipping), started and stopped by us."""

    def __init__(self, settings: Settings, orders_queue: str, shipping_queue: str) -> None:
        self.settings = settings
        self.queues = {"orders": orders_queue, "shipping": shipping_queue}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-baseline-"))

    def log_path(self, queue: str) -> Path:
        return self.log_dir / f"{queue}.log"

    def _spawn(self) -> None:
        from app.platform.settings import PROJECT_ROOT

        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        for queue, task_queue in self.queues.items():
            argv = [
                sys.executable,
                "-m",
                "devstack.bench_baseline",
                "--queue",
                queue,
                "--task-queue",
                task_queue,
                "--target",
                self.settings.temporal_target,
                "--namespace",
                self.settings.temporal_namespace,
            ]
            with self.log_path(queue).open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=str(PROJECT_ROOT),
                    )
                )

    async def start(self, timeout: float = 60.0) -> None:
        """Start both workers and wait until each says its pollers run."""
        from devstack.bench_baseline import READY_MARKER

        self._spawn()
        deadline = time.monotonic() + timeout
        for queue, proc in zip(self.queues, self.procs, strict=True):
            while READY_MARKER not in self.log_path(queue).read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_path(queue).read_text(errors="replace")[-1500:]
                    raise BenchError(f"baseline worker ({queue}) did not start:\n{tail}")
                await asyncio.sleep(0.1)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = []
        for queue in self.queues:
            self.log_path(queue).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.log_dir.rmdir()


class _Baseline:
    def __init__(self, client: Client, run_id: str, orders_queue: str, shipping_queue: str):
        self.client = client
        self.run_id = run_id
        self.orders_queue = orders_queue
        self.shipping_queue = shipping_queue

    async def one(self, i: int) -> tuple[float, float]:
        from devstack.bench_baseline import BASELINE_SIGNAL, BASELINE_WORKFLOW, BaselineInput

        order_id = f"base-{self.run_id}-{i:05d}"
        began = time.perf_counter()
        handle = await self.client.start_workflow(
            BASELINE_WORKFLOW,
            BaselineInput(order_id=order_id, shipping_task_queue=self.shipping_queue),
            id=order_id,
            task_queue=self.orders_queue,
        )
        start_ms = (time.perf_counter() - began) * 1000
        await handle.signal(BASELINE_SIGNAL)
        await handle.result()
        return start_ms, (time.perf_counter() - began) * 1000


# --- the benchmark ---------------------------------------------------------------------------


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
    settings: Settings,
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
    `status_seconds=0` skips phase 3 (status_rps is then None).
    """
    if orders < 1 or concurrency < 1:
        raise BenchError("orders and concurrency must be at least 1")
    say = progress or (lambda _msg: None)
    warmup = max(concurrency, 10) if warmup is None else warmup
    base_url = (api_url or api_url_for(settings)).rstrip("/")
    headers = _api_headers(settings, api_key)
    procs = dict(processes) if processes is not None else discover_processes(settings)
    workers = _worker_pids(procs)
    run_id = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "orders": orders,
        "concurrency": concurrency,
        "warmup": warmup,
        "approve": approve,
        "fault_profile": fault_profile,
        "api_url": base_url,
        "machine": _machine(),
        "code": _code_version(),
    }

    from app.platform.temporal import connect_client

    try:
        client = await connect_client(settings)
    except RuntimeError as err:
        raise BenchError(f"Temporal is not reachable at {settings.temporal_target}") from err
    result["machine"]["temporal_server"] = await _server_version(client)

    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=60.0
    ) as http:
        try:
            health = await http.get("/health")
        except httpx.HTTPError as err:
            raise BenchError(
                f"the API is not reachable at {base_url} ({type(err).__name__}); "
                "is the stack running? (python scripts/cli.py start)"
            ) from err
        if health.status_code != 200:
            raise BenchError(f"the API is not healthy: {health.status_code} {health.text[:200]}")

        runner = _Orders(http, client, run_id, approve, fault_profile)
        queues = _baseline_queues(run_id)
        base_workers = BaselineWorkers(settings, *queues)
        sides: dict[str, tuple[OneRun, Mapping[str, Sequence[int]]]] = {
            "orders": (runner.one, procs)
        }
        try:
            if baseline:
                say("baseline: starting two bare-Temporal worker processes")
                await base_workers.start()
                base = _Baseline(client, run_id, *queues)
                groups: dict[str, Sequence[int]] = {"baseline_workers": base_workers.pids}
                groups.update({k: v for k, v in procs.items() if k == "temporal"})
                sides["baseline"] = (base.one, groups)
            sequence = [side for side in SEQUENCE if side in sides]
            if warmup:
                for side, (one, _) in sides.items():
                    say(f"{side}: warming up with {warmup} runs")
                    warm = await closed_loop(one, warmup, concurrency)
                    if warm.failures:
                        raise BenchError(f"{side} warm-up failed: {warm.failures[0]}")
            say(
                f"measuring {orders} runs per side at concurrency {concurrency}: {', '.join(sequence)}"
            )
            rss = RssSampler(workers)
            base_rss = RssSampler(base_workers.pids)
            rss.start()
            base_rss.start()
            parts: dict[str, list[PhaseResult]] = {side: [] for side in sides}
            next_index = dict.fromkeys(sides, warmup)
            for side in sequence:
                one, cpu_groups = sides[side]
                count = _chunks(orders, sequence.count(side))[len(parts[side])]
                part = await closed_loop(
                    one, count, concurrency, first_index=next_index[side], cpu_groups=cpu_groups
                )
                next_index[side] += count
                parts[side].append(part)
                say(f"{side}: {part.completed} completed at {part.per_s:.1f}/s")
            await base_rss.stop()
            baseline_rss = base_rss.max_mb
        finally:
            base_workers.stop()

        phase = PhaseResult.merge(parts["orders"])
        result["orders_phase"] = phase.summary()
        baseline_phase: PhaseResult | None = None
        if baseline:
            baseline_phase = PhaseResult.merge(parts["baseline"])
            result["baseline_phase"] = {**baseline_phase.summary(), "task_queues": queues}
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

    orders_per_s = phase.per_s
    baseline_per_s = baseline_phase.per_s if baseline_phase is not None else None
    result.update(
        {
            "orders_per_s": _r(orders_per_s, 2),
            "baseline_per_s": _r(baseline_per_s, 2) if baseline_per_s is not None else None,
            "ratio": (
                round(orders_per_s / baseline_per_s, 3)
                if baseline_per_s
                else None  # no baseline run, or nothing completed
            ),
            "p50_ms": _r(percentile(phase.latencies_ms, 50)),
            "p95_ms": _r(percentile(phase.latencies_ms, 95)),
            "p99_ms": _r(percentile(phase.latencies_ms, 99)),
            "start_p99_ms": _r(percentile(phase.start_ms, 99)),
            "status_rps": status["status_rps"],
            "worker_rss_mb": rss.max_mb,
            "worker_rss_mb_by_pid": {str(k): _r(v) for k, v in rss.peak_mb.items()},
            "baseline_worker_rss_mb": baseline_rss,
            "failed_orders": len(phase.failures),
        }
    )
    notes = []
    if not workers:
        notes.append("no worker process found (pid files or app.worker): worker_rss_mb is null")
    if phase.failures:
        notes.append(f"{len(phase.failures)} orders failed; see orders_phase.first_failures")
    result["notes"] = notes
    return result


def _code_version() -> dict[str, Any]:
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


def _machine() -> dict[str, Any]:
    import temporalio

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "temporalio": getattr(temporalio, "__version__", None),
        "load_at_start": _load(),
    }


async def _server_version(client: Client) -> str | None:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    with contextlib.suppress(Exception):
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        return info.server_version or None
    return None


def run_bench_sync(
    settings: Settings,
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


def format_report(result: Mapping[str, Any]) -> str:
    """A short human-readable summary of a result."""
    rows = [
        ("orders/s", result["orders_per_s"]),
        ("baseline/s", result["baseline_per_s"]),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.bench",
        description="Benchmark the order system (through its REST API) against the same "
        "workflow shape on bare Temporal, on the running embedded stack.",
    )
    parser.add_argument(
        "--orders", type=int, default=DEFAULT_ORDERS, help="measured orders (and baseline runs)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="orders in flight at once"
    )
    parser.add_argument(
        "--approve",
        choices=("signal", "api"),
        default="signal",
        help="approve by the approve_order signal (default) or through the REST API",
    )
    parser.add_argument(
        "--status-seconds",
        type=float,
        default=5.0,
        help="length of the status-read phase (0 = skip it)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline phase")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    from devstack.services import client_settings

    settings = client_settings(Settings())
    progress: Progress = lambda msg: print(msg, file=sys.stderr)  # noqa: E731, T201
    try:
        result = run_bench_sync(
            settings,
            orders=args.orders,
            concurrency=args.concurrency,
            approve=args.approve,
            status_seconds=args.status_seconds,
            baseline=not args.no_baseline,
            progress=progress,
        )
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)  # noqa: T201
        return 1
    print(json.dumps(result, indent=2) if args.json else format_report(result))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
