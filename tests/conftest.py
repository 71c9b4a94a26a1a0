"""Shared fixtures and the test tiers.

Tests live beside the package they check (tests/orders, tests/api, ...); each module says its
tier with a marker: `unit` (no servers, or the time-skipping test server), `integration` (a
real Temporal dev server and PostgreSQL started in-process, `real_stack`/`running`) and
`e2e` (a stack the CLI started itself, `cli_stack`, or processes driven from outside).
`./scripts/test.sh -m unit` is the quick loop. The session runs the tiers in that order, so
the cheap tests answer first and the stacks start once each.

Both stacks run on free ports under their own run folders, so they never collide with a dev
stack started by `cli.py start`, and are torn down at the end of the session.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from temporalio.client import WorkflowFailureError

from app.orders.messages import order_workflow_id
from app.orders.providers.wiring import open_simulators
from app.platform.db import create_engine, session_factory
from app.platform.migrate import upgrade
from app.platform.settings import PROJECT_ROOT, Settings
from app.platform.temporal import connect_client
from app.service.layer import ServiceLayer
from app.service.status import StatusReader
from app.worker import build_workers, fault_injector
from devstack.stack.config import StackConfig, database_url, temporal_target
from devstack.stack.infra import start_infra, stop_all
from tests.ast_guard import serialize_ast_parsing
from tests.helpers import (
    ADDRESS,
    CliStack,
    HungOrder,
    RealStack,
    Running,
    stack_env,
    started_stack,
)
from tests.ports import free_ports

TIERS = ("unit", "integration", "e2e")
TESTS_DIR = Path(__file__).resolve().parent

# The app's and workers' threads parse beside Hypothesis (tests/ast_guard.py).
serialize_ast_parsing()


def pytest_configure(config: pytest.Config) -> None:
    """The deployment guide's `python -m pytest tests/unit/` (integration/, e2e/), run from
    the repository root, select a tier.

    Tests sit beside their package, so a tier is a marker, not a folder: such a path, where
    no folder of that name exists, stands for `tests -m <tier>`."""
    here = config.invocation_params.dir
    tiers = [
        tier
        for arg in config.args
        for tier in TIERS
        if (here / arg).resolve() == TESTS_DIR / tier and not (here / arg).exists()
    ]
    if not tiers:
        return
    if config.option.markexpr or len(tiers) < len(config.args):
        raise pytest.UsageError(
            f"tests/{tiers[0]}/ means -m {tiers[0]}; with other paths or -m, use -m alone"
        )
    config.args[:] = [str(TESTS_DIR)]
    config.option.markexpr = " or ".join(dict.fromkeys(tiers))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tiers in order (stable within a tier); a module without a tier is an error."""
    untiered = sorted({item.location[0] for item in items if _tier(item) is None})
    if untiered:
        raise pytest.UsageError(f"test modules without a tier marker: {', '.join(untiered)}")
    items.sort(key=lambda item: TIERS.index(_tier(item) or "unit"))


def _tier(item: pytest.Item) -> str | None:
    return next((tier for tier in TIERS if item.get_closest_marker(tier)), None)


@pytest.fixture(scope="session")
def real_stack() -> Iterator[RealStack]:
    run_dir = PROJECT_ROOT / ".run" / f"test-{uuid.uuid4().hex[:8]}"
    pg, grpc, ui, metrics = free_ports(4)
    cfg = StackConfig(
        run_dir=run_dir,
        postgres_port=pg,
        temporal_port=grpc,
        temporal_ui_port=ui,
        temporal_metrics_port=metrics,
        headless=True,
    )
    start_infra(cfg)
    settings = Settings(
        database_url=database_url(cfg),  # type: ignore[arg-type]
        temporal_target=temporal_target(cfg),
        order_task_queue=f"orders-{uuid.uuid4().hex[:6]}",
        shipping_task_queue=f"shipping-{uuid.uuid4().hex[:6]}",
        fault_profile="off",
        allow_fault_injection=True,
        # Unversioned: tests start workers of their own on this server whenever they need
        # them; tests/platform/test_worker_versions.py turns versioning on for its own.
        worker_versioning=False,
    )
    upgrade(settings.database_url_plain)
    try:
        yield RealStack(cfg, settings)
    finally:
        stop_all(cfg)
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
        services = ServiceLayer.build(client, sessions, settings)
        yield Running(
            settings,
            client,
            engine,
            sessions,
            services.orders,
            services.status,
            services.inspection,
            providers,
        )
    await engine.dispose()


@pytest.fixture(scope="session")
async def hung_order(running: Running) -> HungOrder:
    """One order whose service hangs, for the tests of what its timeouts leave behind
    (tests/orders/test_lifecycle.py, tests/service/test_status_reads.py): its three
    timeouts take some 15 s, paid once."""
    order_id = f"hung-{uuid.uuid4().hex[:10]}"
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS, fault_profile="hang=1")
    with pytest.raises(WorkflowFailureError):
        await running.client.get_workflow_handle(order_workflow_id(order_id)).result()
    at_close = await StatusReader(running.client, running.sessions).status(order_id)
    return HungOrder(order_id, at_close)


@pytest.fixture(scope="session")
def cli_stack() -> Iterator[CliStack]:
    """A real embedded stack started by the CLI itself (`cli.py start`), once per session.

    Every CLI call is a subprocess with that environment, run from the run folder so a
    developer's `.env` does not leak in: the settings of `stack_env` are all the stack knows.
    `cli.py stop` must leave no process behind.
    """
    # Under the project's .run (not /tmp/pytest-of-*, which is 0700): the postgres system
    # user must be able to reach its data directory.
    run_dir = PROJECT_ROOT / ".run" / f"e2e-{uuid.uuid4().hex[:8]}"
    with started_stack(CliStack(run_dir, stack_env(run_dir))) as stack:
        yield stack


@pytest.fixture
async def scratch(real_stack: RealStack) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A fresh, migrated database on the session's PostgreSQL, dropped afterwards: for
    tests that need exact counts, which other tests' orders would change."""
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    base = real_stack.settings.database_url_plain
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    # Alembic's env runs its own event loop: give it a thread without one.
    await asyncio.to_thread(upgrade, url)
    engine = create_async_engine(url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()
