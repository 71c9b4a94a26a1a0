"""Shared fixtures: a real stack (Temporal dev server + embedded PostgreSQL) per test session.

The stack runs on free ports under its own run folder, so it never collides with a dev
stack started by `cli.py start`, and is torn down at the end of the session.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import pytest

from app.orders.providers.wiring import open_simulators
from app.platform.db import create_engine, session_factory
from app.platform.migrate import upgrade
from app.platform.settings import PROJECT_ROOT, Settings
from app.platform.temporal import connect_client
from app.service.orders import OrderService
from app.worker import build_workers, fault_injector
from devstack import stack
from tests.helpers import RealStack, Running
from tests.ports import free_ports


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
