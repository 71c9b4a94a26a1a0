"""Shared fixtures: a real stack (Temporal dev server + embedded PostgreSQL) per test session.

The stack runs on free ports under its own run folder, so it never collides with a dev
stack started by `cli.py start`, and is torn down at the end of the session.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from app.orders.providers.wiring import Simulators, open_simulators
from app.platform.db import create_engine, session_factory
from app.platform.migrate import upgrade
from app.platform.settings import PROJECT_ROOT, Settings
from app.platform.tables import Event
from app.platform.temporal import connect_client
from app.service.orders import OrderService
from app.worker import build_workers, fault_injector
from devstack import stack
from tests.ports import free_ports

# A valid order address for tests that do not care which one.
ADDRESS = {
    "street": "1 Main St",
    "city": "Springfield",
    "state": "IL",
    "zip": "62701",
    "country": "US",
}
# The events a completed order has, in order.
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


@pytest.fixture(scope="session")
def real_stack() -> Iterator[RealStack]:
    run_dir = PROJECT_ROOT / ".run" / f"test-{uuid.uuid4().hex[:8]}"
    pg, grpc, ui, metrics = free_ports(4)
    cfg = stack.StackConfig(
        run_dir=run_dir,
        postgres_port=pg,
        temporal_port=grpc,
        temporal_ui_port=ui,
        temporal_metrics_port=metrics,
        headless=True,
    )
    stack.start_infra(cfg)
    settings = Settings(
        database_url=stack.database_url(cfg),  # type: ignore[arg-type]
        temporal_target=stack.temporal_target(cfg),
        order_task_queue=f"orders-{uuid.uuid4().hex[:6]}",
        shipping_task_queue=f"shipping-{uuid.uuid4().hex[:6]}",
        fault_profile="off",
        allow_fault_injection=True,
        run_dir=run_dir,
        postgres_port=cfg.postgres_port,
        temporal_port=cfg.temporal_port,
        temporal_ui_port=cfg.temporal_ui_port,
    )
    upgrade(settings.database_url_plain)
    try:
        yield RealStack(cfg, settings)
    finally:
        stack.stop_all(cfg)
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class Running:
    settings: Settings
    client: Client
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    service: OrderService
    # The gateway and carrier simulators the workers use (their ledgers: tests audit them).
    providers: Simulators


@pytest.fixture(scope="session")
async def running(real_stack: RealStack) -> AsyncIterator[Running]:
    """Real workers (both queues) in this process, a client, a DB engine and the service."""
    settings = real_stack.settings
    client = await connect_client(settings)
    engine = create_engine(settings.database_url_plain)
    sessions = session_factory(engine)
    async with AsyncExitStack() as workers:
        providers = await workers.enter_async_context(
            open_simulators(settings, fault_injector(settings))
        )
        for w in build_workers(client, settings, engine, "all", providers):
            await workers.enter_async_context(w)
        yield Running(
            settings,
            client,
            engine,
            sessions,
            OrderService(client, sessions, settings),
            providers,
        )
    await engine.dispose()


async def wait_for_step(running: Running, order_id: str, step: str) -> dict[str, Any]:
    """The order's status view once its workflow reports `step`."""

    async def check() -> dict[str, Any] | None:
        try:
            status = await running.service.status(order_id)
        except Exception:  # not started yet, or Temporal busy: look again
            return None
        return status if status.get("step") == step else None

    result: dict[str, Any] = await eventually(check)
    return result


async def order_events(running: Running, order_id: str) -> list[str]:
    """The order's event types, oldest first."""
    async with running.sessions() as s:
        rows = await s.execute(
            select(Event.type).where(Event.order_id == order_id).order_by(Event.id)
        )
        return list(rows.scalars())


async def eventually(check, timeout: float = 20.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `check()` until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)
