"""`cli.py stats`: order statistics (app/stats.py) read from PostgreSQL and drawn with Rich.

Only the database is needed, not Temporal: the figures come from the orders, payments and
events tables, so they can be read while Temporal is down.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from app.cli.render import rows_table
from app.platform.settings import Settings
from app.service.stats import order_stats

_STATE_STYLE = {"COMPLETED": "green", "CANCELLED": "yellow", "FAILED": "red"}


async def load_stats(settings: Settings, window: str | None = None) -> dict[str, Any]:
    from app.platform.db import engine_from_settings, session_factory

    # One short read: a pool of one connection is enough.
    engine = engine_from_settings(settings, pool_size=1)
    try:
        return await order_stats(session_factory(engine), window)
    finally:
        await engine.dispose()


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_stats(data: dict[str, Any]) -> Group:
    execution = data["execution_time"]
    parts: list[Any] = [
        _summary_table(data),
        _outcomes_table(data),
        _times_table(execution),
        _steps_table(data["steps"]),
    ]
    if execution["without_start"]:
        parts.append(
            Text(
                f"{execution['without_start']} closed order(s) never got past RECEIVE and are "
                "not in the execution times."
            )
        )
    payments = ", ".join(f"{status} {n}" for status, n in data["payments"].items())
    parts.append(Text(f"payments: {payments or 'none'}"))
    window = data.get("window") or {}
    if window.get("since"):
        parts.append(
            Text(
                f"window: last {window['name']}, since {window['since']} "
                f"({window['resolution']} buckets)"
            )
        )
    return Group(*parts)


def _summary_table(data: dict[str, Any]) -> Table:
    orders = data["orders"]
    row = (
        str(orders["total"]),
        str(orders["open"]),
        str(orders["closed"]),
        _rate(data["completion_rate"]),
    )
    return rows_table(("total", "open", "closed", "completion rate"), [row], "orders")


def _outcomes_table(data: dict[str, Any]) -> Table:
    rows = []
    for state, count in data["orders"]["by_state"].items():
        outcome = data["outcomes"].get(state)
        reasons = (
            ", ".join(f"{reason} {n}" for reason, n in outcome["reasons"].items())
            if outcome
            else "(open)"
        )
        rows.append((Text(state, style=_STATE_STYLE.get(state, "cyan")), str(count), reasons))
    return rows_table(("state", "orders", "reasons"), rows, "outcomes per state")


def _times_table(execution: dict[str, Any]) -> Table:
    pct = execution["percentiles"]
    row = (
        str(execution["count"]),
        _seconds(pct.get("p50")),
        _seconds(pct.get("p95")),
        _seconds(pct.get("p99")),
        _seconds(execution["mean_s"]),
        _seconds(execution["max_s"]),
    )
    columns = ("orders", "p50", "p95", "p99", "mean", "max")
    return rows_table(columns, [row], "execution time (RECEIVED to end)")


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    rows = [
        (
            step["step"],
            str(step["attempts"]),
            str(step["failed"]),
            _rate(step["error_rate"]),
            str(step["retries"]),
            str(step["orders_retried"]),
            ", ".join(f"{kind} {n}" for kind, n in step["failures_by_kind"].items()) or "-",
        )
        for step in steps
    ]
    columns = (
        "step",
        "attempts",
        "failed",
        "error rate",
        "retries",
        "orders retried",
        "failures by kind",
    )
    return rows_table(columns, rows, "steps")
