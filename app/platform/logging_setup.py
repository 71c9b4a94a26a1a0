"""Structured logs: one JSON object per line (or a readable line for a terminal).

Context fields (order_id, workflow_id, step, attempt, ...) come from `extra=`; the Temporal
SDK's workflow/activity loggers add their own `temporal_workflow`/`temporal_activity` dicts,
from which the workflow id and attempt are lifted. Values that look like card numbers or
secrets are masked before anything is written: card-like numbers, the password of any
URL (`scheme://user:password@host`, whatever characters it holds), and fields named like
secrets. The console format escapes control characters (a request path may hold them), so
a line can neither fake another line nor drive the terminal.
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
# The credentials of a URL: `scheme://user:`, then everything up to the last `@` of the
# same run of non-space characters (a password may hold @, : and %, encoded or not).
# Bounded repeats: caller text (a request path) must not make the search quadratic.
_URL_USER_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/@'\"]{0,256}:")
_SPACES_RE = re.compile(r"(\s+)")
# What the console format escapes: C0/C1 controls, DEL, and line/paragraph separators.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# Workflow ids that name an order: order-{order_id} and its shipping children
# shipping-{order_id}-{attempt} (app/workflows.py).
_ORDER_WORKFLOW_RE = re.compile(r"^(?:order-(.+)|shipping-(.+)-\d+)$")
_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization", "card")


def mask_text(text: str) -> str:
    """`text` without card-like numbers or URL passwords."""
    return _CARD_RE.sub("[REDACTED]", _mask_url_passwords(text))


def _mask_url_passwords(text: str) -> str:
    if "://" not in text:
        return text
    parts = _SPACES_RE.split(text)
    for n, part in enumerate(parts):
        user = _URL_USER_RE.search(part) if "://" in part else None
        at = part.rfind("@") if user else -1
        if user and at >= user.end():
            parts[n] = f"{part[: user.end()]}[REDACTED]{part[at:]}"
    return "".join(parts)


def escape_controls(text: str) -> str:
    """Control characters as visible escapes (\\x1b, \\u2028); tabs and newlines of
    tracebacks are kept by the caller that wants them."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
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
        message = _one_line(_mask(record.getMessage().split(" ({'", 1)[0]))
        ctx = " ".join(
            f"{_one_line(str(k))}={_one_line(str(v))}" for k, v in _mask(_context(record)).items()
        )
        line = f"{ts} {record.levelname:<7} {record.name}: {message}" + (f"  {ctx}" if ctx else "")
        if record.exc_info:
            # A traceback keeps its own lines; what it quotes is escaped like the rest.
            trace = mask_text(self.formatException(record.exc_info))
            line += "\n" + "\n".join(escape_controls(part) for part in trace.split("\n"))
        return line


def _one_line(text: str) -> str:
    return escape_controls(text.replace("\n", "\\n").replace("\t", "\\t"))


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter at INFO hides the order story.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
