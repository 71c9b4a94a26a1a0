"""The REST API: `create_app()` builds it, `python -m app.api` serves it under uvicorn.

One Temporal client and one database engine per process, made in the lifespan (never at
import) and shared by every request through one `OrderService` on `app.state`.

Every error, whatever raised it, answers with the same body::

    {"error": {"code": "invalid_input", "message": "...", "field": "address.zip"}}

Middleware, outermost first: request log (timing, one structured line per request,
observers, and the catch-all that turns an unexpected exception into a generic 500),
then the request body size limit (413), then FastAPI's routing and exception handlers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from app import console
from app.api.auth import ApiKeyConfigError, Authenticator
from app.api.routes import codec, health, metrics, orders, stats
from app.api.schemas import ErrorDetail
from app.orders.validation import ORDER_ID_RE, order_id_problem
from app.platform.db import engine_from_settings, session_factory
from app.platform.logging_setup import configure_logging
from app.platform.settings import Settings, get_settings
from app.platform.temporal import connect_client, runtime_with_core_logs
from app.service.orders import OrderService, ServiceError

logger = logging.getLogger("app.api")

MAX_BODY_BYTES = 64 * 1024
# How long startup keeps trying to reach Temporal (compose may start the API first).
CONNECT_TIMEOUT_S = 30.0

_ORDER_PATH_RE = re.compile(r"^/orders/([^/]+)")
# The shared wording (app/validation.py) rather than the regex pydantic would quote.
ORDER_ID_PROBLEM = order_id_problem("") or "is invalid"
_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "unavailable",
}
_TEMPORAL_DOWN = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
}


# --- error bodies ------------------------------------------------------------------------


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    known = {k: v for k, v in extra.items() if k in ErrorDetail.model_fields and v is not None}
    detail = ErrorDetail(code=code, message=message, field=field, **known)
    body = detail.model_dump(mode="json", exclude_none=True)
    body["field"] = field  # always present, null when no single field is at fault
    return {"error": body}


def _error(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field, **extra), status, headers=headers)


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    """("body", "address", "zip") -> "address.zip"; ("body", "items", 0, "qty") -> "items[0].qty"."""
    parts = loc[1:] if loc and loc[0] in ("body", "path", "query", "header", "cookie") else loc
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or (str(loc[0]) if loc else None)


def _problem_of(err: dict[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "json_invalid":
        return "is not valid JSON"
    if kind == "missing":
        return "is required"
    if err.get("loc") == ("path", "order_id"):
        return ORDER_ID_PROBLEM
    return str(err.get("msg", "is invalid")).removeprefix("Value error, ")


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    problems: dict[str, str] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        name = "body" if err.get("type") == "json_invalid" else (_field_of(loc) or "body")
        problems.setdefault(name, _problem_of(err))
    field, problem = next(iter(problems.items()), ("body", "is invalid"))
    # The offending input is never echoed: it may be a card number or a secret.
    return _error(422, "invalid_input", f"{field} {problem}", field, problems=problems)


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.warning(
            "dependency unavailable",
            extra={"error": exc.message, "order_id": _order_id_of(request.scope)},
        )
    headers = {"Retry-After": "5"} if exc.status == 503 else None
    extra = {k: str(v) if not isinstance(v, dict) else v for k, v in exc.extra.items()}
    # "Temporal is unavailable: <transport error naming hosts>": the client gets the
    # first part, the log above has it all.
    message = exc.message.split(":", 1)[0] if exc.status >= 500 else exc.message
    return _error(exc.status, exc.code, message, exc.field, headers, **extra)


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): an invalid body,
        # reported like invalid JSON.
        return _error(422, "invalid_input", "body is not valid JSON", "body")
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    code = _HTTP_CODES.get(exc.status_code, "error")
    return _error(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _on_temporal_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RPCError)
    if exc.status not in _TEMPORAL_DOWN:
        raise exc  # a bug, not an outage: the catch-all answers 500 and logs it
    logger.warning(
        "temporal unavailable",
        extra={"error": exc.message, "order_id": _order_id_of(request.scope)},
    )
    return _error(503, "unavailable", "Temporal is unavailable", headers={"Retry-After": "5"})


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError) and not (
        exc.connection_invalidated or isinstance(exc, InterfaceError)
    ):
        raise exc
    logger.warning(
        "database unavailable",
        extra={"error": type(exc).__name__, "order_id": _order_id_of(request.scope)},
    )
    return _error(503, "unavailable", "the database is unavailable", headers={"Retry-After": "5"})


# --- middleware --------------------------------------------------------------------------


def _order_id_of(scope: Scope) -> str | None:
    match = _ORDER_PATH_RE.match(scope.get("path", ""))
    # Only a well-formed id goes into logs: the path is caller-controlled text.
    if match and ORDER_ID_RE.fullmatch(match.group(1)):
        return match.group(1)
    return None


@dataclass(frozen=True)
class RequestInfo:
    """What a request observer (e.g. Prometheus metrics) learns about each request."""

    method: str
    # Route template such as /orders/{order_id}/status (None when no route matched):
    # bounded cardinality, unlike the path.
    route: str | None
    path: str
    status: int
    duration_s: float
    order_id: str | None


RequestObserver = Callable[[RequestInfo], None]


class RequestLogMiddleware:
    """One structured log line per request, observers, and the catch-all for errors.

    Bodies are never logged (they carry addresses and may carry card-like data).
    """

    def __init__(self, app: ASGIApp, observers: list[RequestObserver]) -> None:
        self.app = app
        self.observers = observers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
            await send(message)

        order_id = _order_id_of(scope)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            logger.exception(
                "unhandled error",
                extra={"order_id": order_id, "method": scope["method"], "path": scope["path"]},
            )
            if response_started:
                raise
            status = 500
            response = _error(500, "internal_error", "internal server error")
            await response(scope, receive, send)
        finally:
            self._record(scope, status, time.perf_counter() - started, order_id)

    def _record(self, scope: Scope, status: int, duration_s: float, order_id: str | None) -> None:
        route = scope.get("route")
        info = RequestInfo(
            method=scope["method"],
            route=getattr(route, "path", None),
            path=scope["path"],
            status=status,
            duration_s=duration_s,
            order_id=order_id,
        )
        level = logging.ERROR if status >= 500 else logging.INFO
        if status < 400 and (info.method == "GET" or info.route in ("/health", "/metrics")):
            # Reads (probes, scrapes, console polling) would drown the order story, and
            # logging each one cost a fifth of a status read's CPU.
            level = logging.DEBUG
        logger.log(
            level,
            "request",
            extra={
                "method": info.method,
                "path": info.path,
                "route": info.route,
                "status": status,
                "duration_ms": round(duration_s * 1000, 2),
                "order_id": order_id,
                "principal": scope.get("state", {}).get("principal"),
            },
        )
        for observe in self.observers:
            try:
                observe(info)
            except Exception:
                logger.exception("request observer failed")


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, whether or not they are chunked.

    A declared Content-Length over the limit is refused before reading; otherwise the body
    is read (at most `max_bytes` + one chunk) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Client went away before sending the whole body.
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(
            413,
            "payload_too_large",
            f"request body is larger than {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


# --- app ---------------------------------------------------------------------------------


async def _connect_temporal(settings: Settings) -> Client:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONNECT_TIMEOUT_S
    delay = 0.5
    while True:
        try:
            return await connect_client(settings)
        except Exception as err:
            if loop.time() + delay > give_up:
                raise RuntimeError(
                    f"cannot reach Temporal at {settings.temporal_target}: {err}"
                ) from None
            logger.warning(
                "Temporal not reachable yet, retrying",
                extra={"target": settings.temporal_target, "error": str(err)},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    config_error: ApiKeyConfigError | None = app.state.config_error
    if config_error is not None:
        raise config_error
    authenticator: Authenticator = app.state.authenticator
    if not authenticator.enabled:
        logger.warning("API authentication is off: no API_KEYS set, every caller has every role")
    client = await _connect_temporal(settings)
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

    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RPCError, _on_temporal_error)
    app.add_exception_handler(DBAPIError, _on_database_error)
    app.add_exception_handler(OSError, _on_database_error)

    # Added last = outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(codec.CodecCorsMiddleware, origins=codec.cors_origins(settings))
    app.add_middleware(RequestLogMiddleware, observers=app.state.request_observers)

    app.include_router(health.router)
    app.include_router(orders.router)
    app.include_router(stats.router)
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
    settings = get_settings()
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


app = create_app()
