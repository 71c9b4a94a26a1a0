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
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.types import DecoratedCallable
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from app.api.deps import EngineIfServing, TemporalIfServing, error_responses, kept_on_app
from app.api.schemas import EXAMPLE_DEPENDENCIES_UP, DependencyHealth, HealthResponse
from app.platform.migrate import current_revisions, script_revisions
from app.service.single_flight import SingleFlight

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


Results = dict[str, DependencyHealth]


class ProbeRounds:
    """The app's latest round of checks per probe kind, and the round in flight."""

    def __init__(self) -> None:
        self.answers: dict[tuple[object, ...], tuple[float, Results]] = {}
        self.rounds: SingleFlight[tuple[object, ...], Results] = SingleFlight()

    async def check(
        self, client: Client | None, engine: AsyncEngine | None, migrations: bool
    ) -> Results:
        """Each dependency's health: from a round of checks at most PROBE_CACHE_S old, or
        a new round (shared by the probes that arrive meanwhile)."""
        key = (migrations, id(client), id(engine))
        answer = self.answers.get(key)
        if answer is not None and answer[0] > time.monotonic():
            return answer[1]

        async def new_round() -> Results:
            results = await _check_now(client, engine, migrations)
            self.answers[key] = (time.monotonic() + PROBE_CACHE_S, results)
            return results

        return await self.rounds.run(key, new_round)


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


@dataclass(frozen=True)
class Probe:
    """The checks as a request makes them: the app's rounds, with its Temporal client and
    database engine (None while the app is not serving)."""

    rounds: ProbeRounds
    client: Client | None
    engine: AsyncEngine | None

    async def check(self, *, migrations: bool) -> Results:
        return await self.rounds.check(self.client, self.engine, migrations)


async def _request_probe(
    rounds: Annotated[ProbeRounds, Depends(kept_on_app("probe_rounds", ProbeRounds))],
    client: TemporalIfServing,
    engine: EngineIfServing,
) -> Probe:
    return Probe(rounds, client, engine)


Probes = Annotated[Probe, Depends(_request_probe)]


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


def _checking(
    path: str, summary: str, model: type[BaseModel], unhealthy: str
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A route that checks the dependencies: 503 with `model` when one is down."""
    responses = {503: {"model": model, "description": unhealthy}, **error_responses(500)}
    return router.get(path, summary=summary, response_model=model, responses=responses)


@_checking("/health", "Dependency health", HealthResponse, "A dependency is down")
async def health(probe: Probes, response: Response) -> HealthResponse:
    """200 when Temporal and PostgreSQL both answer, 503 otherwise, with each one's status."""
    results = await probe.check(migrations=False)
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


@_checking("/health/ready", "Readiness probe", ReadyResponse, "A check failed: do not send traffic")
async def ready(probe: Probes, response: Response) -> ReadyResponse:
    """200 when Temporal and PostgreSQL answer and the database's migrations are at this
    build's head, 503 otherwise, with each check's status."""
    results = await probe.check(migrations=True)
    return ReadyResponse(status=_verdict(results, response), checks=ReadyChecks(**results))


def _verdict(results: dict[str, DependencyHealth], response: Response) -> str:
    if all(r.status == "up" for r in results.values()):
        return "ok"
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return "unavailable"
