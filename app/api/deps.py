"""Dependencies shared by the routers, as `Annotated` aliases: the one reader of `app.state`.

app/api/app.py fills it: `settings` and `authenticator` when the app is built; while it
serves (its lifespan), `temporal`, `engine`, `services` (the process's one ServiceLayer)
and `stats_cache`, None before and after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from app.api.auth import Authenticator, Principal, Role
from app.api.schemas import ErrorResponse
from app.orders.validation import ORDER_ID_RE
from app.platform.settings import Settings
from app.service.errors import Unavailable
from app.service.inspection import Inspector
from app.service.layer import ServiceLayer
from app.service.orders import OrderService
from app.service.stats import StatsCache
from app.service.status import StatusReader

# auto_error=False: a missing credential is answered by `caller` below (401 with our error
# body, and nothing at all when auth is off), not by FastAPI's default 403.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="An API key as `Authorization: Bearer <key>`",
)
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="An API key as `X-API-Key: <key>`",
)


T = TypeVar("T")
NOT_CONNECTED = "the API is not connected to its dependencies yet"


# Async on purpose: FastAPI runs plain `def` dependencies in a thread pool (a thread hop
# per dependency per request), which cost more than these few lines of work.
async def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def services_if_serving(request: Request) -> ServiceLayer | None:
    layer: ServiceLayer | None = request.app.state.services
    return layer


async def temporal_if_serving(request: Request) -> Client | None:
    client: Client | None = request.app.state.temporal
    return client


async def engine_if_serving(request: Request) -> AsyncEngine | None:
    engine: AsyncEngine | None = request.app.state.engine
    return engine


async def get_services(
    layer: Annotated[ServiceLayer | None, Depends(services_if_serving)],
) -> ServiceLayer:
    if layer is None:
        # Only between process start and the end of the lifespan's startup.
        raise Unavailable(NOT_CONNECTED)
    return layer


async def get_stats_cache(request: Request) -> StatsCache:
    cache: StatsCache | None = request.app.state.stats_cache
    if cache is None:
        raise Unavailable(NOT_CONNECTED)
    return cache


def kept_on_app(name: str, make: Callable[[], T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency: the app's one `make()`, made on first use (a cache of the app's own)."""

    async def kept(request: Request) -> T:
        state = request.app.state
        value: T | None = getattr(state, name, None)
        if value is None:
            value = make()
            setattr(state, name, value)
        return value

    return kept


async def caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    presented: list[str | None] = [
        c for c in (api_key, bearer.credentials if bearer else None) if c
    ]
    # Both headers may be sent, but then both must be valid keys of the same caller.
    found = {authenticator.authenticate(c) for c in presented or [None]}
    principal = found.pop() if len(found) == 1 else None
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # For the request log line: who did it (never the key).
    request.state.principal = principal.name
    return principal


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if not principal.has(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this API key does not have the {role} role"
            )
        return principal

    return check


AppSettings = Annotated[Settings, Depends(app_settings)]
Services = Annotated[ServiceLayer, Depends(get_services)]
ServicesIfServing = Annotated[ServiceLayer | None, Depends(services_if_serving)]
TemporalIfServing = Annotated[Client | None, Depends(temporal_if_serving)]
EngineIfServing = Annotated[AsyncEngine | None, Depends(engine_if_serving)]
Stats = Annotated[StatsCache, Depends(get_stats_cache)]


async def _commands(layer: Services) -> OrderService:
    return layer.orders


async def _status_reader(layer: Services) -> StatusReader:
    return layer.status


async def _inspector(layer: Services) -> Inspector:
    return layer.inspection


Commands = Annotated[OrderService, Depends(_commands)]
StatusReads = Annotated[StatusReader, Depends(_status_reader)]
Inspection = Annotated[Inspector, Depends(_inspector)]
Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Reviewer = Annotated[Principal, Depends(require(Role.REVIEWER))]

OrderId = Annotated[
    str,
    Path(
        description="The shop's order id (1-64 letters, digits, '.', '_' or '-')",
        pattern=ORDER_ID_RE.pattern,
        examples=["order-123"],
    ),
]

_DESCRIPTIONS = {
    401: "Missing or unknown API key",
    403: "The API key lacks the role, or the server does not allow this field",
    404: "No such order",
    409: "Conflicts with the order's current state",
    413: "Request body too large",
    422: "Invalid input; `error.field` names it",
    500: "Unexpected server error (details only in the server log)",
    503: "Temporal or PostgreSQL is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, all with the same `ErrorResponse` body."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[code]}
        if code == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            }
        out[code] = entry
    return out
