"""What the tests share (fixtures stay in the conftests): the order data every test uses,
polling, the session stack's handles, and the CLI-started stack of the e2e tests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from app.api.app import create_app
from app.orders.activities import (
    ChangeActivities,
    CompensationActivities,
    IntakeActivities,
    PaymentActivities,
    ShippingActivities,
)
from app.orders.faults import FaultInjector
from app.orders.providers.intake import OrderIntake
from app.orders.providers.wiring import Simulators
from app.platform.db import engine_from_settings
from app.platform.settings import PROJECT_ROOT, Settings
from app.platform.tables import Event, Payment
from app.service.inspection import Inspector
from app.service.orders import OrderService
from app.service.status import StatusReader
from app.service.views import OrderView
from app.worker import build_workers
from devstack import stack
from tests.ports import port_block

T = TypeVar("T")


# A valid order address for tests that do not care which one.
ADDRESS = {
    "street": "1 Main St",
    "city": "Springfield",
    "state": "IL",
    "zip": "62701",
    "country": "US",
}


# The events a completed order has, in order.
# Another valid address, for address changes.
NEW_ADDRESS = {
    "street": "456 New St",
    "city": "New City",
    "state": "NS",
    "zip": "54321",
    "country": "US",
}
HAPPY_PATH_EVENTS = [
    "RECEIVED",
    "VALIDATED",
    "APPROVED",
    "PAYMENT_CHARGED",
    "PACKAGE_PREPARED",
    "DISPATCHED",
    "COMPLETED",
]


@dataclass
class RealStack:
    cfg: stack.StackConfig
    settings: Settings


@dataclass
class Running:
    settings: Settings
    client: Client
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # The service layer's parts, built together (app/service/layer.py): the commands, the
    # status reads they share (a retry drops the order's cached view), and the inspection.
    service: OrderService
    reader: StatusReader
    inspector: Inspector
    # The gateway and carrier simulators the workers use (their ledgers: tests audit them).
    providers: Simulators


@dataclass(frozen=True)
class StackActivities:
    """The activities a test drives in ActivityEnvironment, each as a worker builds it, on
    the running stack's databases and provider simulators (no faults of their own)."""

    intake: IntakeActivities
    payment: PaymentActivities
    compensation: CompensationActivities
    shipping: ShippingActivities
    changes: ChangeActivities

    @classmethod
    def of(cls, running: Running) -> StackActivities:
        sessions, gateway, carrier = (
            running.sessions,
            running.providers.gateway,
            running.providers.carrier,
        )
        return cls(
            IntakeActivities(sessions, OrderIntake(FaultInjector("off"))),
            PaymentActivities(sessions, gateway),
            CompensationActivities(sessions, gateway, carrier),
            ShippingActivities(sessions, carrier),
            ChangeActivities(sessions),
        )


@dataclass
class HungOrder:
    """An order on the session's stack whose every RECEIVE attempt hangs (`hang=1`): each
    is cut by its 3 s start-to-close timeout, and the third timeout fails the order."""

    order_id: str
    # Its status through a reader with an empty cache, read as soon as its run had failed.
    at_close: OrderView


@asynccontextmanager
async def fixed_pool(settings: Settings, size: int) -> AsyncIterator[AsyncEngine]:
    """An engine on the order database whose pool holds exactly `size` connections and no
    pre-ping, as the workers' and the simulators' are: what it hands out next is what a
    caller gave back."""
    engine = engine_from_settings(settings, pool_size=size, pre_ping=False)
    engine.pool._max_overflow = 0  # type: ignore[attr-defined]
    try:
        yield engine
    finally:
        await engine.dispose()


def own_queues(settings: Settings, name: str, **update: Any) -> Settings:
    """`settings` with `update`, on task queues of their own (`<name>-orders`,
    `<name>-shipping`; `name` carries a random tag): only the workers the test starts
    itself serve its orders, not the session's."""
    queues = {"order_task_queue": f"{name}-orders", "shipping_task_queue": f"{name}-shipping"}
    return settings.model_copy(update={**update, **queues})


def sealed_queues(settings: Settings, name: str) -> Settings:
    """`own_queues` whose payloads are sealed with a fresh key of their own (k1)."""
    key = base64.b64encode(os.urandom(32)).decode()
    return own_queues(settings, name, payload_keys=SecretStr(f"k1:{key}"), payload_active_key="k1")


async def run_workers(
    stack: AsyncExitStack, running: Running, settings: Settings, client: Client | None = None
) -> None:
    """Workers of both queues with `settings` (on `client`, else the session's), running in
    this process until `stack` closes."""
    workers = build_workers(
        client or running.client, settings, running.engine, "all", running.providers
    )
    for worker in workers:
        await stack.enter_async_context(worker)


async def until_answering(api: httpx.AsyncClient, path: str) -> None:
    """Until the API process behind `api`, still starting, answers `path` with a 200."""

    async def answers() -> bool:
        try:
            return (await api.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(answers, timeout=30, interval=0.2)


async def wait_for_step(running: Running, order_id: str, step: str) -> OrderView:
    """The order's status view once its workflow reports `step`."""

    async def check() -> OrderView | None:
        try:
            status = await running.reader.status(order_id)
        except Exception:  # not started yet, or Temporal busy: look again
            return None
        return status if status.step == step else None

    return await eventually(check)


async def payments(running: Running, order_id: str) -> list[Payment]:
    """The order's rows in `payments`, oldest first."""
    async with running.sessions() as s:
        rows = await s.execute(
            select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at)
        )
        return list(rows.scalars())


async def order_events(running: Running, order_id: str) -> list[str]:
    """The order's event types, oldest first."""
    async with running.sessions() as s:
        rows = await s.execute(
            select(Event.type).where(Event.order_id == order_id).order_by(Event.id)
        )
        return list(rows.scalars())


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str | None = None,
) -> T:
    """Poll `check()` until it returns a truthy value, and return that value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            waited = f"{what} " if what else "condition "
            raise AssertionError(f"{waited}not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


CLI = str(PROJECT_ROOT / "scripts" / "cli.py")


TEST_WORKFLOW = str(PROJECT_ROOT / "scripts" / "test-workflow.py")


# postgres, temporal, UI, API, worker metrics x2, and Temporal's metrics port, which
# `cli.py start` puts at TEMPORAL_PORT + 2000.
STACK_PORT_OFFSETS = (0, 1, 2, 3, 4, 5, 1 + 2000)


def stack_env(run_dir: Path) -> dict[str, str]:
    base = port_block(STACK_PORT_OFFSETS)
    pg, grpc, ui, api, worker_metrics = range(base, base + 5)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    env.update(
        {
            "RUN_DIR": str(run_dir),
            "POSTGRES_PORT": str(pg),
            "TEMPORAL_PORT": str(grpc),
            "TEMPORAL_UI_PORT": str(ui),
            "API_PORT": str(api),
            "API_HOST": "127.0.0.1",
            "API_KEYS": "",
            "WORKER_METRICS_PORT": str(worker_metrics),  # shipping: the next port
            "DATABASE_URL": f"postgresql+asyncpg://app:app@127.0.0.1:{pg}/app",
            "TEMPORAL_TARGET": f"127.0.0.1:{grpc}",
            "ORDER_TASK_QUEUE": "orders-tq",
            "SHIPPING_TASK_QUEUE": "shipping-tq",
            # Deterministic orders: the tests that want faults ask for them per order.
            "FAULT_PROFILE": "off",
            "ALLOW_FAULT_INJECTION": "true",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "PAYLOAD_KEYS": "",
        }
    )
    return env


# The cores of the machine the suite is sized for.
CLI_PROCESSES_AT_ONCE = 2


@dataclass
class CliStack:
    run_dir: Path
    env: dict[str, str]
    # The launcher every command goes through (a copy's, a wrapper's, the scenario runner).
    script: str = CLI

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), env or self.env, self.run_dir, timeout, script=self.script)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, describe(result)
        return result.stdout

    def run_each(
        self, *commands: Sequence[str], env: dict[str, str] | None = None
    ) -> list[subprocess.CompletedProcess[str]]:
        """Commands that do not depend on one another, two at a time; their results in the
        order given. A CLI process spends most of its second or two importing, on one core:
        two of them take about the time of one."""
        with ThreadPoolExecutor(CLI_PROCESSES_AT_ONCE) as pool:
            return list(pool.map(lambda args: self.run(*args, env=env), commands))

    def ok_each(self, *commands: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        """`run_each` of commands that must succeed: their outputs."""
        results = self.run_each(*commands, env=env)
        for result in results:
            assert result.returncode == 0, describe(result)
        return [result.stdout for result in results]

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def status(self, order_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.json("status", order_id)
        return view

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    def wait_status(
        self, order_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll the order through the REST API (cheaper than a CLI process per poll)."""
        deadline = time.monotonic() + timeout
        while True:
            response = httpx.get(f"{self.api}/orders/{order_id}/status", timeout=10)
            view: dict[str, Any] = response.json() if response.status_code == 200 else {}
            if view and done(view):
                return view
            assert time.monotonic() < deadline, f"{order_id} stuck: {response.text}"
            time.sleep(0.2)


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120.0, script: str = CLI
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, script, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode} for {result.args[2:]}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def leftover_processes(run_dir: Path, pids: list[int]) -> list[str]:
    """Processes of this stack still alive: known pids, or anything naming the run folder."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            environ = {}
            if proc.pid in pids or str(run_dir) in cmd:
                found.append(f"{proc.pid} {cmd}")
                continue
            environ = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if environ.get("RUN_DIR") == str(run_dir) and proc.pid != os.getpid():
            found.append(f"{proc.pid} {cmd}")
    return found


def database_dsn(stack: CliStack, database: str = "app") -> str:
    """The stack's PostgreSQL DSN for asyncpg (another database on the same server)."""
    dsn = stack.env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    return dsn.rsplit("/", 1)[0] + f"/{database}"


@asynccontextmanager
async def serving(settings: Settings, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its own lifespan (real client and engine) and an HTTP client for it."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", headers=headers
        ) as client,
    ):
        yield client


CliStackT = TypeVar("CliStackT", bound=CliStack)


@contextmanager
def started_stack(stack: CliStackT) -> Iterator[CliStackT]:
    """`cli.py start` for the test's stack; afterwards `cli.py stop`, which must leave no
    process behind, and its run folder removed."""
    started = stack.run("start")
    try:
        assert started.returncode == 0, describe(started)
        yield stack
    finally:
        listed = stack.run("ps", "--json")
        pids = (
            [row["pid"] for row in json.loads(listed.stdout) if row["pid"]]
            if listed.returncode == 0
            else []
        )
        stopped = stack.run("stop")
        left = leftover_processes(stack.run_dir, pids)
        shutil.rmtree(stack.run_dir, ignore_errors=True)
        assert stopped.returncode == 0, describe(stopped)
        assert not left, f"processes left after `cli.py stop`: {left}"
