"""Schemathesis against the API's own OpenAPI document, on the real stack.

Every operation gets generated requests, valid and invalid (plus undocumented methods,
missing and wrong keys); no answer may be a 5xx or anything the schema does not document.

Schemathesis drives the app in its own ASGI loop thread, through the app's real lifespan
(its own Temporal client and engine), plus workers of its own on task queues of its own,
so the orders it starts really run while this synchronous test leaves the session's event
loop (and the session's workers) idle. The orders go to a database of their own, so the
state checks of other modules never meet an order whose workers are gone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi as schemathesis_asgi
from sqlalchemy.engine import make_url

from app.api.app import create_app
from app.api.middleware import RequestInfo
from app.orders.providers.wiring import open_simulators
from app.platform.migrate import upgrade
from app.platform.settings import Settings
from app.worker import build_workers, fault_injector
from tests.helpers import RealStack

pytestmark = pytest.mark.integration

FUZZ_KEY = "fuzz-0123456789"
KEYS = SecretStr(f"fuzzer:{FUZZ_KEY}:admin")

# Schemathesis binds the app when this module is collected, before the stack (and its
# ports) exists: the app is made now and is given the stack's settings before it starts
# (create_app reads them in its lifespan). The OpenAPI document does not depend on them.
app = create_app(Settings(api_keys=KEYS))
_api_lifespan = app.router.lifespan_context


@asynccontextmanager
async def _lifespan_with_workers(app: FastAPI) -> AsyncIterator[None]:
    async with _api_lifespan(app), AsyncExitStack() as workers:
        settings = app.state.settings
        providers = await workers.enter_async_context(
            open_simulators(settings, fault_injector(settings))
        )
        for worker in build_workers(
            app.state.temporal, settings, app.state.engine, "all", providers
        ):
            await workers.enter_async_context(worker)
        yield


app.router.lifespan_context = _lifespan_with_workers

# What the fuzzer's requests got, by route and status (through the app's observer hook).
SEEN: Counter[tuple[str, int]] = Counter()


def _observe(info: RequestInfo) -> None:
    SEEN[(f"{info.method} {info.route}", info.status)] += 1


app.state.request_observers.append(_observe)

CONFIG = SchemathesisConfig.from_dict(
    {
        # The key goes through the declared security schemes, so the ignored-auth check
        # can prove that a missing or wrong key is refused on every operation.
        "auth": {
            "openapi": {
                "BearerKey": {"bearer": FUZZ_KEY},
                "ApiKeyHeader": {"api_key": FUZZ_KEY},
            }
        },
        "generation": {"max-examples": 30, "deterministic": True},
        # Off: the server also refuses what JSON Schema cannot express (non-printable or
        # blank text, the fault-profile grammar), so some schema-valid input is a 422.
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)
schema.app = app


def _new_database(stack: RealStack) -> str:
    """A migrated database of its own on the stack's PostgreSQL."""
    base = make_url(stack.settings.database_url_plain)
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    url = base.set(database=name).render_as_string(hide_password=False)

    async def create() -> None:
        conn = await asyncpg.connect(
            base.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def work() -> None:
        asyncio.run(create())
        upgrade(url)

    # Its own thread: asyncio.run must not touch the session loop of this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result()
    return url


@pytest.fixture(scope="module")
def fuzz_app(real_stack: RealStack) -> Iterator[FastAPI]:
    app.state.settings = real_stack.settings.model_copy(
        update={
            "api_keys": KEYS,
            "database_url": SecretStr(_new_database(real_stack)),
            "order_task_queue": f"fuzz-orders-{uuid.uuid4().hex[:6]}",
            "shipping_task_queue": f"fuzz-shipping-{uuid.uuid4().hex[:6]}",
        }
    )
    yield app
    # Stop its workers while the dev server is still up, not at interpreter exit.
    schemathesis_asgi.shutdown_lifespans()


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case: schemathesis.Case[Any], fuzz_app: FastAPI) -> None:
    case.call_and_validate()


def test_fuzzing_reached_real_orders() -> None:
    """The generated requests got past validation into Temporal and PostgreSQL too."""
    # Counts what the fuzz test above sent (run this file as a whole, not this test alone).
    assert SEEN, "test_api_conforms_to_its_schema must run first in the same session"
    for route in ("POST /orders/{order_id}/start", "GET /orders/{order_id}/status", "GET /orders"):
        ok = sum(n for (r, status), n in SEEN.items() if r == route and status < 300)
        assert ok > 0, (route, SEEN)
    assert not [key for key in SEEN if key[1] >= 500]
