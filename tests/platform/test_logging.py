"""Log lines carry no secret and cannot be forged: URL passwords masked whatever
characters they hold, control characters escaped in the console format (issue 24)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from app.platform.logging_setup import ConsoleFormatter, JsonFormatter

pytestmark = pytest.mark.unit

# A password with everything that breaks naive parsing: %, @, :, /, quotes.
PASSWORD = "p%40ss:w@rd/%25x'y\"z"
URL = f"postgresql+asyncpg://app:{PASSWORD}@db.internal:5432/app"


def record(message: str, exc: bool = False, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("app.api", logging.WARNING, __file__, 1, message, None, None)
    if exc:
        try:
            raise RuntimeError(f"cannot connect to {URL}\x1b[2J")
        except RuntimeError:
            rec.exc_info = sys.exc_info()
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.mark.parametrize("formatter", [ConsoleFormatter(), JsonFormatter("api")])
def test_url_passwords_never_reach_a_line(formatter: logging.Formatter) -> None:
    for rec in (
        record(f"database down: {URL}"),
        record("database down", error=f"connect to {URL} refused"),
        record("boom", exc=True),
        record("quoted", detail=f"url='{URL}'"),
    ):
        line = formatter.format(rec)
        for fragment in ("p%40ss", "w@rd", "%25x", PASSWORD):
            assert fragment not in line, line
        assert "db.internal" in line  # the host still says where


def test_console_lines_escape_control_characters() -> None:
    path = "/orders/\x1b[31mred\x1b[0m\r\n12:00:00 INFO    app.api: forged\u2028\x85\x00"
    line = ConsoleFormatter().format(record("request", path=path, method="GET"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert not any(ch in line for ch in "\u2028\x85\x00")
    assert "\\x1b[31mred" in line and "\\r\\n" in line
    trace = ConsoleFormatter().format(record("boom", exc=True))
    assert "\x1b" not in trace and "\\x1b[2J" in trace
    assert trace.count("\n") >= 2  # the traceback keeps its own lines


def test_json_lines_stay_one_object() -> None:
    path = '/orders/x\n{"level": "info"}'
    line = JsonFormatter("api").format(record("request", path=path))
    assert "\n" not in line and json.loads(line)["path"] == path
