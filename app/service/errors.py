"""What the service layer refuses with: each error knows its HTTP status and code, so the
API, CLI and console answer it the same way."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Each kind states its HTTP status and code: `class Gone(ServiceError, status=410,
    code="gone")`."""

    status = 500
    code = "internal_error"

    def __init_subclass__(cls, *, status: int, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status
        cls.code = code

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    @property
    def shown(self) -> str:
        """The text a caller gets. An outage's message is "<what>: <transport or driver
        error naming hosts>": callers get the first part, the logs have it all."""
        return self.message.split(":", 1)[0] if self.status >= 500 else self.message


class InvalidInput(ServiceError, status=422, code="invalid_input"):
    """The request breaks an input rule; `field` names what."""


class OrderNotFound(ServiceError, status=404, code="order_not_found"):
    """No order (or workflow) by that id."""


class OrderConflict(ServiceError, status=409, code="conflict"):
    """The order's state refuses the request (closed, dispatched, id or key in use)."""


class Forbidden(ServiceError, status=403, code="forbidden"):
    """This server does not allow it (a test knob without ALLOW_FAULT_INJECTION)."""


class Unavailable(ServiceError, status=503, code="unavailable"):
    """Temporal or PostgreSQL did not answer."""

    @classmethod
    def temporal(cls, reason: str) -> Unavailable:
        return cls(f"Temporal is unavailable: {reason}")
