"""ASGI middleware, outermost first: the request log (timing, one structured line per
request, observers, and the catch-all that turns an unexpected exception into a generic
500), then the request body size limit (413)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, order_id_of

logger = logging.getLogger("app.api")

MAX_BODY_BYTES = 64 * 1024


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

        order_id = order_id_of(scope)
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
            response = error_response(500, "internal_error", "internal server error")
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
        response = error_response(
            413,
            "payload_too_large",
            f"request body is larger than {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
