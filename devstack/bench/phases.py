"""The benchmark's phases: orders through the REST API, the same shape on bare Temporal
(baseline workers), and status reads at saturation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from app.orders.messages import DEMO_ADDRESS
from app.platform.settings import Settings
from devstack.bench.measure import (
    ApproveVia,
    BenchError,
    CpuMeter,
    load_average,
    percentile,
    rounded,
)

# --- phase 1: orders through the API ---------------------------------------------------------


class OrdersPhase:
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
        from app.orders.messages import SIGNAL_APPROVE, ApproveRequest, order_workflow_id

        order_id = self.order_id(i)
        body: dict[str, Any] = {"payment_id": f"pay-{order_id}", "address": DEMO_ADDRESS}
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
    load_before = load_average()
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
        "status_rps": rounded(counts["ok"] / wall if wall > 0 else 0.0),
        "status_non_200": counts["bad"],
        "status_p50_ms": rounded(percentile(latencies, 50), 2),
        "status_p99_ms": rounded(percentile(latencies, 99), 2),
        "status_seconds": rounded(wall, 2),
        "status_concurrency": concurrency,
        "status_cpu_pct": {k: rounded(100 * v / wall) for k, v in cpu.items()} if wall > 0 else {},
        "status_load_before": load_before,
        "status_load_after": load_average(),
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
    """The baseline's worker processes, started and stopped by us, in the order workers'
    topology: one per task queue, or (`single_process`) one serving both."""

    def __init__(
        self,
        settings: Settings,
        orders_queue: str,
        shipping_queue: str,
        *,
        single_process: bool = False,
        deployment: str | None = None,
    ) -> None:
        self.settings = settings
        self.queues = {"orders": orders_queue, "shipping": shipping_queue}
        self.single_process = single_process
        # Versioned, pinned workers of this Worker Deployment (None: unversioned).
        self.deployment = deployment
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-baseline-"))

    @property
    def processes(self) -> dict[str, list[str]]:
        """Process name -> the queue arguments it is started with."""
        orders, shipping = self.queues["orders"], self.queues["shipping"]
        if self.single_process:
            return {
                "all": ["--queue", "all", "--task-queue", orders, "--shipping-task-queue", shipping]
            }
        return {
            "orders": ["--queue", "orders", "--task-queue", orders],
            "shipping": ["--queue", "shipping", "--task-queue", shipping],
        }

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _spawn(self) -> None:
        from app.platform.settings import PROJECT_ROOT

        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        for name, queue_args in self.processes.items():
            argv = [
                sys.executable,
                "-m",
                "devstack.bench.baseline",
                *queue_args,
                *(["--deployment", self.deployment] if self.deployment else []),
                "--target",
                self.settings.temporal_target,
                "--namespace",
                self.settings.temporal_namespace,
            ]
            with self.log_path(name).open("wb") as log:
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
        """Start the workers and wait until each says its pollers run."""
        from devstack.bench.baseline import READY_MARKER

        self._spawn()
        deadline = time.monotonic() + timeout
        for name, proc in zip(self.processes, self.procs, strict=True):
            while READY_MARKER not in self.log_path(name).read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_path(name).read_text(errors="replace")[-1500:]
                    raise BenchError(f"baseline worker ({name}) did not start:\n{tail}")
                await asyncio.sleep(0.1)
        if self.deployment:
            await self._route_to_them(deadline - time.monotonic())

    async def _route_to_them(self, timeout: float) -> None:
        """A new deployment routes nowhere: its version becomes current once it polls."""
        from app import versioning
        from app.platform.temporal import connect_client
        from devstack.bench.baseline import BASELINE_BUILD

        assert self.deployment is not None
        client = await connect_client(self.settings)
        await versioning.adopt_if_unrouted(
            client, self.deployment, BASELINE_BUILD, set(self.queues.values()), max(timeout, 5)
        )

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
        for name in self.processes:
            self.log_path(name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.log_dir.rmdir()


class BaselinePhase:
    def __init__(
        self,
        client: Client,
        run_id: str,
        orders_queue: str,
        shipping_queue: str,
        *,
        features: bool = False,
    ):
        self.client = client
        self.run_id = run_id
        self.orders_queue = orders_queue
        self.shipping_queue = shipping_queue
        self.features = features

    async def one(self, i: int) -> tuple[float, float]:
        from devstack.bench.baseline import (
            BASELINE_SIGNAL,
            BASELINE_WORKFLOW,
            BaselineInput,
            start_attributes,
        )

        order_id = f"base-{self.run_id}-{i:05d}"
        began = time.perf_counter()
        handle = await self.client.start_workflow(
            BASELINE_WORKFLOW,
            BaselineInput(
                order_id=order_id, shipping_task_queue=self.shipping_queue, features=self.features
            ),
            id=order_id,
            task_queue=self.orders_queue,
            search_attributes=start_attributes() if self.features else None,
        )
        start_ms = (time.perf_counter() - began) * 1000
        await handle.signal(BASELINE_SIGNAL)
        await handle.result()
        return start_ms, (time.perf_counter() - began) * 1000
