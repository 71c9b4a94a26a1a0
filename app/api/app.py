"""The REST API: `create_app()` builds it, `python -m app.api` serves it under uvicorn.

One Temporal client and one database engine per process, made in the lifespan (never at
import) and shared by every request through one ServiceLayer on `app.state` (the routes
get its parts through app/api/deps.py). Error bodies: app/api/errors.py; middleware:
app/api/middleware.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from temporalio.runtime import Runtime

from app import console
from app.api.auth import ApiKeyConfigError, Authenticator
from app.api.errors import install_error_handlers
from app.api.middleware import (
    MAX_BODY_BYTES,
    BodyLimitMiddleware,
    RequestGuardMiddleware,
    RequestLogMiddleware,
    allowed_hosts,
    is_loopback,
)
from app.api.routes import codec, health, metrics, orders, reconciliation, stats
from app.api.text import text_components
from app.platform.db import engine_from_settings, session_factory
from app.platform.logging_setup import configure_logging
from app.platform.settings import (
    Settings,
    get_settings,
    get_settings_or_exit,
    production_problems,
    refusal,
)
from app.platform.temporal import connect_with_retry, runtime_with_core_logs
from app.service.layer import ServiceLayer
from app.service.stats import StatsCache

logger = logging.getLogger("app.api")

# How long startup keeps trying to reach Temporal (compose may start the API first).
CONNECT_TIMEOUT_S = 30.0


# --- app ---------------------------------------------------------------------------------


class StartupRefused(RuntimeError):
    """Settings this API must not serve with (one line naming the setting)."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    config_error: ApiKeyConfigError | None = app.state.config_error
    if config_error is not None:
        raise config_error
    # The same judgement as `python -m app.api`, wherever the app is served from
    # (`uvicorn --factory`, another ASGI server): refused, never only warned about.
    problem = startup_problem(settings)
    if problem:
        raise StartupRefused(problem)
    authenticator: Authenticator = app.state.authenticator
    if not authenticator.enabled:
        logger.warning(
            "API authentication is off: no API_KEYS set, every caller has every role "
            "(as the principal 'anonymous', also the approver of approvals); loopback only"
        )
    client = await connect_with_retry(settings, timeout=CONNECT_TIMEOUT_S, service="api")
    # Room for a burst of concurrent reads without opening and closing overflow connections
    # (each new one pays authentication and starts with no prepared statements).
    engine = engine_from_settings(settings, pool_size=20)
    sessions = session_factory(engine)
    app.state.temporal = client
    app.state.engine = engine
    app.state.services = ServiceLayer.build(client, sessions, settings)
    app.state.stats_cache = StatsCache(sessions)
    logger.info(
        "api ready",
        extra={"temporal": settings.temporal_target, "auth": authenticator.enabled},
    )
    try:
        yield
    finally:
        # The Temporal client has no close(); dropping the last reference releases it.
        _disconnect(app)
        await engine.dispose()


def _disconnect(app: FastAPI) -> None:
    """What only a serving app has (app/api/deps.py answers 503 while it is None)."""
    app.state.services = None
    app.state.stats_cache = None
    app.state.temporal = None
    app.state.engine = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Nothing connects until the lifespan starts (no I/O at import)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Order fulfillment API",
        version="0.1.0",
        summary="Start, follow, approve, change and cancel orders run by Temporal workflows",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    try:
        app.state.authenticator = Authenticator.from_spec(settings.api_keys.get_secret_value())
        app.state.config_error = None
    except ApiKeyConfigError as err:
        # Reported when the app starts serving, so importing this module never fails.
        app.state.authenticator = Authenticator([])
        app.state.config_error = err
    _disconnect(app)
    # Hook for request metrics: each RequestObserver sees every request once it ends.
    app.state.request_observers = [metrics.observe_request]

    install_error_handlers(app)

    # Added last = outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(codec.CodecCorsMiddleware, origins=codec.cors_origins(settings))
    app.add_middleware(
        RequestGuardMiddleware,
        hosts=allowed_hosts(settings.api_allowed_hosts, settings.api_host),
        # An unparsable API_KEYS is refused by the lifespan; until then, judged as open.
        open_api=not app.state.authenticator.enabled,
        codec_origins=codec.cors_origins(settings),
        codec_prefix=codec.PREFIX,
    )
    app.add_middleware(RequestLogMiddleware, observers=app.state.request_observers)

    app.include_router(health.router)
    app.include_router(orders.router)
    app.include_router(stats.router)
    app.include_router(reconciliation.router)
    app.include_router(console.router)
    app.include_router(metrics.router)
    app.include_router(codec.router)
    _with_text_components(app)
    return app


def _with_text_components(app: FastAPI) -> None:
    """The OpenAPI document with the shared text schemas its request fields reference."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(text_components())
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def startup_problem(settings: Settings) -> str | None:
    """Why the API must not serve with these settings, in one line: the production guard
    (app/platform/settings.py), then what an open API may not do. Run by `main` before
    it binds and by the lifespan wherever the app is served."""
    problems = production_problems(settings)
    if problems:
        return refusal(problems)
    try:
        keys = Authenticator.from_spec(settings.api_keys.get_secret_value())
    except ApiKeyConfigError as err:
        return f"invalid API_KEYS: {err}"
    if keys.enabled:
        return None
    if not is_loopback(settings.api_host):
        return (
            f"refusing to serve on {settings.api_host} without API_KEYS: set API_KEYS "
            "(name:key:role1+role2,...) or API_HOST=127.0.0.1"
        )
    if allowed_hosts(settings.api_allowed_hosts, settings.api_host) is None:
        return "API_ALLOWED_HOSTS=* needs API_KEYS (an open API answers loopback names only)"
    return None


def main() -> int:
    settings = get_settings_or_exit()
    configure_logging("api", settings.log_level, settings.log_format)
    problem = startup_problem(settings)
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    # The client's Temporal core logs as JSON lines too (set before any client exists).
    Runtime.set_default(runtime_with_core_logs())
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the structured logging configured above
        access_log=False,  # RequestLogMiddleware logs each request
        server_header=False,
    )
    return 0
