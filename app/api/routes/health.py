"""/health: can this API reach Temporal and PostgreSQL right now? (No auth: for probes.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from app.api.deps import error_responses
from app.api.schemas import DependencyHealth, HealthResponse

router = APIRouter(tags=["health"])

# A probe must answer quickly even when a dependency hangs.
CHECK_TIMEOUT_S = 2.0


async def _probe(check: Callable[[], Awaitable[object]]) -> DependencyHealth:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await check()
    except TimeoutError:
        return DependencyHealth(status="down", error=f"no answer within {CHECK_TIMEOUT_S:g}s")
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


@router.get(
    "/health",
    summary="Dependency health",
    response_model=HealthResponse,
    responses={
        503: {"model": HealthResponse, "description": "A dependency is down"},
        **error_responses(500),
    },
)
async def health(request: Request, response: Response) -> HealthResponse:
    """200 when Temporal and PostgreSQL both answer, 503 otherwise, with each one's status."""
    client: Client | None = getattr(request.app.state, "temporal", None)
    engine: AsyncEngine | None = getattr(request.app.state, "engine", None)
    temporal, database = await asyncio.gather(
        _probe(lambda: _temporal(client) if client else _not_connected()),
        _probe(lambda: _database(engine) if engine else _not_connected()),
    )
    healthy = temporal.status == "up" and database.status == "up"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthResponse(
        status="ok" if healthy else "unavailable",
        dependencies={"temporal": temporal, "database": database},
    )
