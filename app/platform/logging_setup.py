"""Structured logs: one JSON object per line (or a readable line for a terminal).

Context fields (order_id, workflow_id, step, attempt, ...) come from `extra=`; the Temporal
SDK's workflow/activity loggers add their own `temporal_workflow`/`temporal_activity` dicts,
from which the workflow id and attempt are lifted. Values that look like card numbers or
secrets are masked before anything is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with ANSI colours
}
_CARD_RE = re.compile(r"\b(?:\d[ -]?){13,19}\b")
# Workflow ids that name an order: order-{order_id} and its shipping children
# shipping-{order_id}-{attempt} (app/workflows.py).
_ORDER_WORKFLOW_RE = re.compile(r"^(?:order-(.+)|shipping-(.+)-\d+)$")
_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization", "card")


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _CARD_RE.sub("[REDACTED]", value)
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if any(s in str(k).lower() for s in _SECRET_KEYS) else _mask(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def _context(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD_ATTRS or key.startswith("_"):
            continue
        if key == "temporal_workflow" and isinstance(value, dict):
            fields.setdefault("workflow_id", value.get("workflow_id"))
            fields.setdefault("run_id", value.get("run_id"))
            continue
        if key == "temporal_activity" and isinstance(value, dict):
            fields.setdefault("workflow_id", value.get("workflow_id"))
            fields.setdefault("activity", value.get("activity_type"))
            fields.setdefault("attempt", value.get("attempt"))
            continue
        if key == "temporal_log":
            continue  # forwarded Temporal core log: its text is already the message
        if value is not None:
            fields[key] = value
    wf = fields.get("workflow_id")
    match = _ORDER_WORKFLOW_RE.match(wf) if isinstance(wf, str) else None
    if "order_id" not in fields and match:
        fields["order_id"] = match.group(1) or match.group(2)
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        # The SDK appends its context dict to the message text; the fields carry it instead.
        message = record.getMessage().split(" ({'", 1)[0]
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": _mask(message),
            **_mask(_context(record)),
        }
        if record.exc_info:
            entry["exc"] = _mask(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        message = _mask(record.getMessage().split(" ({'", 1)[0])
        ctx = " ".join(f"{k}={v}" for k, v in _mask(_context(record)).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {message}" + (f"  {ctx}" if ctx else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter at INFO hides the order story.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
