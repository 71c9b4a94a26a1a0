"""Every error, whatever raised it, answers with the same body::

    {"error": {"code": "invalid_input", "message": "...", "field": "address.zip"}}

The handlers below turn service errors, validation errors, HTTP errors and dependency
outages into that body; `error_response` is for the few places that answer directly.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope
from temporalio.service import RPCError, RPCStatusCode

from app.api.schemas import ErrorDetail
from app.orders.validation import ORDER_ID_RE, order_id_problem
from app.service.errors import ServiceError

logger = logging.getLogger("app.api")

_ORDER_PATH_RE = re.compile(r"^/orders/([^/]+)")
# The shared wording (app/orders/validation.py) rather than the regex pydantic would quote.
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


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    known = {k: v for k, v in extra.items() if k in ErrorDetail.model_fields and v is not None}
    detail = ErrorDetail(code=code, message=message, field=field, **known)
    body = detail.model_dump(mode="json", exclude_none=True)
    body["field"] = field  # always present, null when no single field is at fault
    return {"error": body}


def error_response(
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
    return error_response(422, "invalid_input", f"{field} {problem}", field, problems=problems)


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.warning(
            "dependency unavailable",
            extra={"error": exc.message, "order_id": order_id_of(request.scope)},
        )
    headers = {"Retry-After": "5"} if exc.status == 503 else None
    extra = {
        k: str(v) if not isinstance(v, dict) else v
        for k, v in exc.extra.items()
        if v is not None  # unknown stays absent, never the string "None"
    }
    return error_response(exc.status, exc.code, exc.shown, exc.field, headers, **extra)


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): an invalid body,
        # reported like invalid JSON.
        return error_response(422, "invalid_input", "body is not valid JSON", "body")
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _on_temporal_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RPCError)
    if exc.status not in _TEMPORAL_DOWN:
        raise exc  # a bug, not an outage: the catch-all answers 500 and logs it
    logger.warning(
        "temporal unavailable",
        extra={"error": exc.message, "order_id": order_id_of(request.scope)},
    )
    return error_response(
        503, "unavailable", "Temporal is unavailable", headers={"Retry-After": "5"}
    )


# SQLSTATE classes that mean the database cannot serve us (not a bug of ours): connection
# exceptions, refused credentials, no such database, too many connections, shutdown.
_DATABASE_DOWN_CLASSES = ("08", "28", "3D", "53", "57")


def _database_down(exc: Exception) -> bool:
    """Whether a database error means the database is unreachable (else it is a bug)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, InterfaceError):
            return True
        orig = exc.orig
        cause = orig.__cause__ if orig is not None else None
        sqlstate = getattr(orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
    elif isinstance(exc, asyncpg.InterfaceError):  # the driver's, on the hot path
        return True
    else:
        sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _DATABASE_DOWN_CLASSES


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, OSError) and not _database_down(exc):
        raise exc
    logger.warning(
        "database unavailable",
        extra={"error": type(exc).__name__, "order_id": order_id_of(request.scope)},
    )
    return error_response(
        503, "unavailable", "the database is unavailable", headers={"Retry-After": "5"}
    )


def order_id_of(scope: Scope) -> str | None:
    match = _ORDER_PATH_RE.match(scope.get("path", ""))
    # Only a well-formed id goes into logs: the path is caller-controlled text.
    if match and ORDER_ID_RE.fullmatch(match.group(1)):
        return match.group(1)
    return None


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RPCError, _on_temporal_error)
    app.add_exception_handler(DBAPIError, _on_database_error)
    # Plain SQL on the driver (app/platform/sql.py) raises asyncpg's own errors.
    app.add_exception_handler(asyncpg.PostgresError, _on_database_error)
    app.add_exception_handler(asyncpg.InterfaceError, _on_database_error)
    app.add_exception_handler(OSError, _on_database_error)
