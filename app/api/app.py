"""The REST API: `create_app()` builds it, `python -m app.api` serves it under uvicorn.

One Temporal client and one database engine per process, made in the lifespan (never at
import) and shared by every request through one `OrderService` on `app.state`. Error
bodies: app/api/errors.py; middleware: app/api/middleware.py.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from temporalio.runtime import Runtime

from app import console
from app.api.auth import ApiKeyConfigError, Authenticator
from app.api.errors import install_error_handlers
from app.api.middleware import MAX_BODY_BYTES, BodyLimitMiddleware, RequestLogMiddleware
from app.api.routes import codec, health, metrics, orders, reconciliation, stats
from app.platform.db import engine_from_settings, session_factory
from app.platform.logging_setup import configure_logging
from app.platform.settings import Settings, get_settings, get_settings_or_exit
from app.platform.temporal import connect_with_retry, runtime_with_core_logs
from app.service.orders import OrderService

logger = logging.getLogger("app.api")

# How long startup keeps trying to reach Temporal (compose may start the API first).
CONNECT_TIMEOUT_S = 30.0


# --- app ---------------------------------------------------------------------------------


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    config_error: ApiKeyConfigError | None = app.state.config_error
    if config_error is not None:
        raise config_error
    authenticator: Authenticator = app.state.authenticator
    if not authenticator.enabled:
        logger.warning("API authentication is off: no API_KEYS set, every caller has every role")
    client = await connect_with_retry(settings, timeout=CONNECT_TIMEOUT_S, service="api")
    # Room for a burst of concurrent reads without opening and closing overflow connections
    # (each new one pays authentication and starts with no prepared statements).
    engine = engine_from_settings(settings, pool_size=20)
    app.state.temporal = client
    app.state.engine = engine
    app.state.service = OrderService(client, session_factory(engine), settings)
    logger.info(
        "api ready",
        extra={"temporal": settings.temporal_target, "auth": authenticator.enabled},
    )
    try:
        yield
    finally:
        # The Temporal client has no close(); dropping the last reference releases it.
        app.state.service = None
        app.state.temporal = None
        app.state.engine = None
        await engine.dispose()


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
    app.state.service = None
    app.state.temporal = None
    app.state.engine = None
    # Hook for request metrics: each RequestObserver sees every request once it ends.
    app.state.request_observers = [metrics.observe_request]

    install_error_handlers(app)

    # Added last = outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(codec.CodecCorsMiddleware, origins=codec.cors_origins(settings))
    app.add_middleware(RequestLogMiddleware, observers=app.state.request_observers)

    app.include_router(health.router)
    app.include_router(orders.router)
    app.include_router(stats.router)
    app.include_router(reconciliation.router)
    app.include_router(console.router)
    app.include_router(metrics.router)
    app.include_router(codec.router)
    return app


def startup_problem(settings: Settings) -> str | None:
    """Why `python -m app.api` must not start with these settings, in one line."""
    try:
        keys = Authenticator.from_spec(settings.api_keys.get_secret_value())
    except ApiKeyConfigError as err:
        return f"invalid API_KEYS: {err}"
    if not keys.enabled and not _is_loopback(settings.api_host):
        return (
            f"refusing to serve on {settings.api_host} without API_KEYS: set API_KEYS "
            "(name:key:role1+role2,...) or API_HOST=127.0.0.1"
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
