"""Schemathesis against the API's own OpenAPI document, on the real stack (issue 24).

A bounded run in three parts, all with the same checks: no 5xx, no status, header or body
the schema does not document, a missing or wrong key refused, and schema-valid input
accepted (positive data acceptance: the schema says what the server enforces, so what it
allows is never a 422):

- every operation: its documented examples, then generated requests, valid and invalid
  (plus undocumented methods);
- stateful: scenarios that follow the OpenAPI links from a start (or a retry) to the
  order's status, approval, cancel, address change, retry, events and history.

Schemathesis drives the app in its own ASGI loop thread, through the app's real lifespan
(its own Temporal client and engine), plus workers of its own on task queues of its own,
so the orders it starts really run while this synchronous test leaves the session's event
loop (and the session's workers) idle. The orders go to a database of their own, so the
state checks of other modules never meet an order whose workers are gone. The server runs
as production would: keys on, test knobs off (a fault profile or timing override is a
403 the schema documents).
"""

from __future__ import annotations

import asyncio
import re
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
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.errors import FlakyStrategyDefinition
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi import stateful
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
# Bounds: the whole module takes about 30 s on 2 cores (most of it Hypothesis drawing
# free text from app/api/text.py's character class), within the suite's budget.
EXAMPLES_PER_OPERATION = 20
TEXT_EXAMPLES = 10
SCENARIOS = 15
STEPS_PER_SCENARIO = 6

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
        # A host the API serves (API_ALLOWED_HOSTS: loopback names by default).
        "base-url": "http://127.0.0.1",
        # The key goes through the declared security schemes, so the ignored-auth check
        # can prove that a missing or wrong key is refused on every operation.
        "auth": {
            "openapi": {
                "BearerKey": {"bearer": FUZZ_KEY},
                "ApiKeyHeader": {"api_key": FUZZ_KEY},
            }
        },
        "generation": {"max-examples": EXAMPLES_PER_OPERATION, "deterministic": True},
        "phases": {
            "examples": {"enabled": True, "extra-data-sources": {"responses": False}},
            "coverage": {"enabled": False},
            # What a case draws must not depend on what the server answered before (values
            # lifted from responses, feedback from 4xx): Hypothesis replays cases, and a
            # real server does not answer the same twice.
            "fuzzing": {
                "enabled": True,
                "extra-data-sources": {"responses": False},
                "error-feedback": {"enabled": False},
            },
            "stateful": {"enabled": True, "max-steps": STEPS_PER_SCENARIO},
        },
        # On: schema-valid input must never be refused as invalid.
        "checks": {"positive_data_acceptance": {"enabled": True}},
        "operations": [
            {
                # What no JSON Schema can say: the visibility query's grammar, a cursor
                # this API handed out, a time range the right way round, and `query`
                # taking the place of the filters. Each is a 422 naming the field.
                "include-name": "GET /orders",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [
                            *("2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx")
                        ]
                    }
                },
            },
            {
                # Free text costs Hypothesis a regular expression of 700 ranges per
                # string (app/api/text.py): fewer examples keep the run bounded.
                "include-name": [
                    "POST /orders/{order_id}/start",
                    "POST /orders/{order_id}/signals/update-address",
                    "POST /orders/{order_id}/signals/approve",
                    "POST /orders/{order_id}/signals/cancel",
                ],
                "generation": {"max-examples": TEXT_EXAMPLES},
            },
        ],
    }
)
schema = schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)
schema.app = app

START = "POST /orders/{order_id}/start"
OF_AN_ORDER = {200, 201, 409}
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


@schemathesis.hook
def before_call(ctx: Any, case: schemathesis.Case[Any], kwargs: dict[str, Any]) -> None:
    """An Idempotency-Key names one request (reused on another order or body it is a
    422, tests/api/test_operator_requests.py): each generated request gets its own."""
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and _KEY_RE.fullmatch(key):
        case.headers = {**(case.headers or {}), "Idempotency-Key": f"{key}-{uuid.uuid4().hex}"}


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
            # As in production: per-order test knobs refused (403), by the API and the
            # workers alike.
            "allow_fault_injection": False,
            "database_url": SecretStr(_new_database(real_stack)),
            "order_task_queue": f"fuzz-orders-{uuid.uuid4().hex[:6]}",
            "shipping_task_queue": f"fuzz-shipping-{uuid.uuid4().hex[:6]}",
        }
    )
    yield app
    # Stop its workers while the dev server is still up, not at interpreter exit.
    schemathesis_asgi.shutdown_lifespans()


FUZZ_SETTINGS = settings(
    derandomize=True,
    # Generation only: shrinking replays requests against a server that has moved on.
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_conforms_to_its_schema(case: schemathesis.Case[Any], fuzz_app: FastAPI) -> None:
    case.call_and_validate()


def test_scenarios_follow_the_links_from_a_start(
    fuzz_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stateful: start an order (or retry one), then what its links lead to, in any order,
    each answer checked like the single requests above."""
    # Schemathesis enters scenarios only by operations it judges likely to succeed with
    # random data; its analysis reads payment_id and customer_id in a start as references
    # to resources nothing produces, so it would never begin with the one operation that
    # makes orders. A start is the scenario's first step here.
    judge = stateful.is_likely_root_transition

    def start_is_an_entry(operation: Any, node: Any, produced: set[str]) -> bool:
        return operation.label == START or judge(operation, node, produced)

    monkeypatch.setattr(stateful, "is_likely_root_transition", start_is_an_entry)
    machine = schema.as_state_machine()
    assert any("start" in rule for rule in machine.root_rules), machine.root_rules
    # Which steps a scenario can take depends on the server's answers (a link is followed
    # only from a response that has it), so Hypothesis may find that a choice it made
    # before cannot be made again (FlakyStrategyDefinition): as schemathesis' own runner
    # does, such a run starts over (with the next seed), it is not a failure.
    for attempt in range(3):
        try:
            seed(attempt)(machine).run(
                settings=settings(
                    FUZZ_SETTINGS,
                    derandomize=False,
                    max_examples=SCENARIOS,
                    stateful_step_count=STEPS_PER_SCENARIO,
                )
            )
            break
        except FlakyStrategyDefinition:
            continue


def test_fuzzing_reached_real_orders() -> None:
    """The generated requests got past validation into Temporal and PostgreSQL, and the
    scenarios reached the linked operations of orders that exist."""
    # Counts what the tests above sent (run this file as a whole, not this test alone).
    assert SEEN, "the fuzz tests must run first in the same session"
    for route in (START, "GET /orders"):
        ok = sum(n for (r, status), n in SEEN.items() if r == route and status < 300)
        assert ok > 0, (route, SEEN)
    # The links led to orders that exist: answered (2xx) or refused for the order's state
    # (409), not a 404 for an id nobody started.
    for route in (
        "GET /orders/{order_id}/status",
        "POST /orders/{order_id}/signals/approve",
        "POST /orders/{order_id}/signals/cancel",
        "POST /orders/{order_id}/retry",
    ):
        reached = sum(n for (r, status), n in SEEN.items() if r == route and status in OF_AN_ORDER)
        assert reached > 0, (route, SEEN)
    assert not [key for key in SEEN if key[1] >= 500]
