"""What the benchmark measures with: percentiles, the processes it watches (CPU, RSS), and the
closed loop that keeps N operations in flight."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import psutil

from app.platform.settings import Settings
from devstack.stack.config import StackSettings

# An order closes within its 60 s deadline; one still open after this is a failure.
ORDER_TIMEOUT_S = 120.0
ApproveVia = Literal["signal", "api"]
# bare: the order's shape only; features: also its search attributes and deadline timer.
BaselineShape = Literal["bare", "features"]
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


def rounded(value: float, digits: int = 1) -> float:
    return round(value, digits) if math.isfinite(value) else value


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def api_url_for(settings: Settings) -> str:
    """Where the API of `settings` answers (a wildcard bind is reached through loopback)."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def api_headers(settings: Settings, api_key: str | None) -> dict[str, str]:
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


def discover_processes(settings: StackSettings) -> dict[str, list[int]]:
    """Pids of the stack's processes by service name, from the run folder's pid files
    (`cli.py start`); workers not found there are looked up by command line
    (`app.worker` with this stack's TEMPORAL_TARGET in its environment)."""
    from devstack.stack.addresses import stack_config
    from devstack.stack.processes import all_statuses

    found: dict[str, list[int]] = {}
    with contextlib.suppress(Exception):
        cfg = stack_config(settings)
        for status in all_statuses(cfg):
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


def worker_pids(processes: Mapping[str, Sequence[int]]) -> list[int]:
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
            "wall_s": rounded(self.wall_s, 2),
            "per_s": rounded(self.per_s, 2),
            "p50_ms": rounded(percentile(self.latencies_ms, 50)),
            "p95_ms": rounded(percentile(self.latencies_ms, 95)),
            "p99_ms": rounded(percentile(self.latencies_ms, 99)),
            "max_ms": rounded(max(self.latencies_ms, default=math.nan)),
            "start_p50_ms": rounded(percentile(self.start_ms, 50)),
            "start_p99_ms": rounded(percentile(self.start_ms, 99)),
            "cpu_ms_per_order": {k: rounded(v * 1000 / n) for k, v in self.cpu_s.items()},
            # Everything measured except the load generator: what one order costs the stack.
            "stack_cpu_ms_per_order": rounded(
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
    load_before = load_average()
    meter.start()
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(max(1, min(concurrency, count)))))
    wall = time.perf_counter() - began
    cpu = meter.stop()
    return PhaseResult(latencies, starts, failures, wall, load_before, load_average(), cpu)
