"""/health: can this API reach Temporal and PostgreSQL right now? (No auth: for probes.)

Kubernetes-style probes beside it: /health/live (the process serves; checks nothing) and
/health/ready (Temporal and PostgreSQL answer and the database's schema is this build's).

Anyone may call the probes, so they must stay cheap: an answer is kept PROBE_CACHE_S and
concurrent probes share one round of checks, so a flood of probes costs at most one
database connection and one Alembic read per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from app.api.deps import error_responses
from app.api.schemas import EXAMPLE_DEPENDENCIES_UP, DependencyHealth, HealthResponse
from app.platform.migrate import current_revisions, script_revisions

router = APIRouter(tags=["health"])

# A probe must answer quickly even when a dependency hangs.
CHECK_TIMEOUT_S = 2.0
# How long one round of checks answers the probes.
PROBE_CACHE_S = 1.0


class CheckFailed(Exception):
    """A failed check whose message is a fixed phrase, safe to show as the error."""


async def _probe(check: Callable[[], Awaitable[object]]) -> DependencyHealth:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await check()
    except TimeoutError:
        return DependencyHealth(status="down", error=f"no answer within {CHECK_TIMEOUT_S:g}s")
    except CheckFailed as err:
        return DependencyHealth(status="down", error=str(err))
    except Exception as err:
        # The class name only: messages can carry hosts or connection strings.
        return DependencyHealth(status="down", error=type(err).__name__)
    return DependencyHealth(
        status="up", latency_ms=round((time.perf_counter() - started) * 1000, 2)
    )


async def _temporal(client: Client) -> None:
    if not await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_S)):
        raise RuntimeError("Temporal reports its service as not serving")


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _not_connected() -> None:
    raise RuntimeError("not connected")


NOT_MIGRATED = "not migrated: run python -m app.platform.migrate"
BEHIND_HEAD = "behind head: run python -m app.platform.migrate"
UNKNOWN_REVISION = "revision unknown to this build (a newer release migrated it?)"


async def _migrations(engine: AsyncEngine) -> None:
    expected = script_revisions()  # read once per process
    async with engine.connect() as conn:
        current = await conn.run_sync(current_revisions)
    if current == expected.heads:
        return
    if not current:
        raise CheckFailed(NOT_MIGRATED)
    if current <= expected.known:
        raise CheckFailed(BEHIND_HEAD)
    raise CheckFailed(UNKNOWN_REVISION)


class LiveResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str = Field(description="Always ok: the process is up and serving")


class ReadyChecks(BaseModel):
    temporal: DependencyHealth
    database: DependencyHealth
    migrations: DependencyHealth = Field(
        description="up when the database is at this build's migration head"
    )


class ReadyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "checks": {
                        **EXAMPLE_DEPENDENCIES_UP,
                        "migrations": {"status": "up", "latency_ms": 3.2},
                    },
                },
                {
                    "status": "unavailable",
                    "checks": {
                        **EXAMPLE_DEPENDENCIES_UP,
                        "migrations": {"status": "down", "error": NOT_MIGRATED},
                    },
                },
            ]
        }
    )

    status: str = Field(description="ok when every check is up, else unavailable")
    checks: ReadyChecks


def _unhealthy(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return {503: {"model": model, "description": description}, **error_responses(500)}


@router.get(
    "/health",
    summary="Dependency health",
    response_model=HealthResponse,
    responses=_unhealthy(HealthResponse, "A dependency is down"),
)
async def health(request: Request, response: Response) -> HealthResponse:
    """200 when Temporal and PostgreSQL both answer, 503 otherwise, with each one's status."""
    results = await _check(request, migrations=False)
    return HealthResponse(status=_verdict(results, response), dependencies=results)


@router.get(
    "/health/live",
    summary="Liveness probe",
    response_model=LiveResponse,
    responses=error_responses(500),
)
async def live() -> LiveResponse:
    """200 while the process serves requests. Checks no dependency: restarting the API
    cannot fix Temporal or PostgreSQL, so a liveness probe must not depend on them."""
    return LiveResponse(status="ok")


@router.get(
    "/health/ready",
    summary="Readiness probe",
    response_model=ReadyResponse,
    responses=_unhealthy(ReadyResponse, "A check failed: do not send traffic"),
)
async def ready(request: Request, response: Response) -> ReadyResponse:
    """200 when Temporal and PostgreSQL answer and the database's migrations are at this
    build's head, 503 otherwise, with each check's status."""
    results = await _check(request, migrations=True)
    return ReadyResponse(status=_verdict(results, response), checks=ReadyChecks(**results))


Results = dict[str, DependencyHealth]


class _ProbeCache:
    """The latest round of checks per probe kind, and the round in flight."""

    def __init__(self) -> None:
        self.answers: dict[tuple[object, ...], tuple[float, Results]] = {}
        self.rounds: dict[tuple[object, ...], asyncio.Future[Results]] = {}


async def _check(request: Request, migrations: bool) -> Results:
    """Each dependency's health: from a round of checks at most PROBE_CACHE_S old, or a
    new round (shared by the probes that arrive meanwhile)."""
    state = request.app.state
    cache: _ProbeCache | None = getattr(state, "probe_cache", None)
    if cache is None:
        cache = state.probe_cache = _ProbeCache()
    client: Client | None = getattr(state, "temporal", None)
    engine: AsyncEngine | None = getattr(state, "engine", None)
    key = (migrations, id(client), id(engine))
    answer = cache.answers.get(key)
    if answer is not None and answer[0] > time.monotonic():
        return answer[1]
    round_ = cache.rounds.get(key)
    if round_ is None:
        round_ = asyncio.ensure_future(_check_now(client, engine, migrations))
        cache.rounds[key] = round_
        round_.add_done_callback(lambda done: _keep(cache, key, done))
    # Shielded: a probe that gives up must not cancel the round the others wait for.
    return await asyncio.shield(round_)


def _keep(cache: _ProbeCache, key: tuple[object, ...], done: asyncio.Future[Results]) -> None:
    cache.rounds.pop(key, None)
    if not done.cancelled() and done.exception() is None:
        cache.answers[key] = (time.monotonic() + PROBE_CACHE_S, done.result())


async def _check_now(
    client: Client | None, engine: AsyncEngine | None, migrations: bool
) -> Results:
    """Each dependency's health, checked at the same time (a probe answers within one
    check's timeout)."""
    checks: dict[str, Callable[[], Awaitable[object]]] = {
        "temporal": lambda: _temporal(client) if client else _not_connected(),
        "database": lambda: _database(engine) if engine else _not_connected(),
    }
    if migrations:
        checks["migrations"] = lambda: _migrations(engine) if engine else _not_connected()
    results = await asyncio.gather(*(_probe(check) for check in checks.values()))
    return dict(zip(checks, results, strict=True))


def _verdict(results: dict[str, DependencyHealth], response: Response) -> str:
    if all(r.status == "up" for r in results.values()):
        return "ok"
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return "unavailable"
