"""ASGI middleware, outermost first: the request log (timing, one structured line per
request, observers, and the catch-all that turns an unexpected exception into a generic
500), then who may call (Host, origin and interface checks: 403), then the request body
size limit (413)."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
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


# --- who may call: hosts, origins, interfaces -----------------------------------------------

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Bounds on a request's headers (browsers send a few kB; keys and cookies fit easily).
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
# The probes answer whatever the Host (orchestrators call them by pod address).
PROBE_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed_hosts(spec: str, api_host: str) -> frozenset[str] | None:
    """API_ALLOWED_HOSTS as host names (None: any host). Empty: loopback names and
    API_HOST (unless it is a wildcard address)."""
    names = {_host_name(part) for part in spec.split(",") if part.strip()}
    if "*" in names:
        return None
    if not names:
        names = set(LOOPBACK_NAMES)
        if api_host not in ("", "0.0.0.0", "::", "[::]"):
            names.add(_host_name(api_host))
    names.discard("")
    return frozenset(names)


def _host_name(value: str) -> str:
    """`Host` header or setting -> lower-case host name without port, brackets or the
    final dot ("" when it is not a plain host name or address)."""
    value = value.strip().lower()
    if value == "*":
        return value
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return ""
        value = inner
    elif value.count(":") == 1:
        value, _, port = value.partition(":")
        if not port.isdigit():
            return ""
    value = value.removesuffix(".")
    if not value or not all(c.isascii() and (c.isalnum() or c in ".-:") for c in value):
        return ""
    return value


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


class RequestGuardMiddleware:
    """Refuses (403) requests that are not meant for this API, before any route runs
    (and, first, headers over MAX_HEADER_BYTES or MAX_HEADERS: 431):

    - a Host header that names another host than API_ALLOWED_HOSTS (DNS rebinding: a web
      page on a name that resolves to this machine would otherwise read the API);
    - while the API runs without keys (every caller an admin): a request that reached it
      on a non-loopback address (`uvicorn --factory --host 0.0.0.0` would skip the check
      of `python -m app.api`), and a state-changing request a browser sent for another
      site (Origin not this API's own, or Sec-Fetch-Site cross-site/same-site), except a
      codec call from one of CODEC_CORS_ORIGINS (the Temporal Web UI).

    With keys a browser cannot act for the caller (keys are headers it never adds by
    itself), so origins are not judged then. The probes are always answered."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: frozenset[str] | None,
        open_api: bool,
        codec_origins: Sequence[str] = (),
        codec_prefix: str = "/codec",
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.open_api = open_api
        self.codec_origins = frozenset(o.lower() for o in codec_origins)
        self.codec_prefix = codec_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > (
            MAX_HEADER_BYTES
        ):
            # The server in front may not bound them (uvicorn with httptools does not).
            response = error_response(
                431,
                "headers_too_large",
                f"request headers are larger than {MAX_HEADER_BYTES} bytes or more than "
                f"{MAX_HEADERS}",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        if scope.get("path") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        logger.warning("request refused", extra={"reason": problem, "method": scope["method"]})
        response = error_response(403, "forbidden", problem)
        await response(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name, []).append(value)
        hosts = headers.get(b"host", [])
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return "the Host header names a host this API does not serve (API_ALLOWED_HOSTS)"
        if not self.open_api:
            return None
        server = scope.get("server")
        if server and server[1] is not None and not is_loopback(str(server[0])):
            return "this API runs without API_KEYS and answers on loopback addresses only"
        if scope["method"] in _SAFE_METHODS:
            return None
        origin = (headers.get(b"origin") or [b""])[0].decode("latin-1").lower()
        site = (headers.get(b"sec-fetch-site") or [b""])[0].decode("latin-1").lower()
        path = scope.get("path", "")
        if origin and origin in self.codec_origins and path.startswith(self.codec_prefix):
            return None
        own = f"{scope.get('scheme', 'http')}://{host.lower()}"
        if (origin and origin != own) or site in ("cross-site", "same-site"):
            return (
                "a state-changing request from another site is refused while this API "
                "runs without API_KEYS"
            )
        return None
