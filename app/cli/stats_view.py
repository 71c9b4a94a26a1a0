"""`cli.py stats`: order statistics (app/stats.py) read from PostgreSQL and drawn with Rich.

Only the database is needed, not Temporal: the figures come from the orders, payments and
events tables, so they can be read while Temporal is down.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from app.platform.settings import Settings
from app.service.stats import order_stats

_STATE_STYLE = {"COMPLETED": "green", "CANCELLED": "yellow", "FAILED": "red"}


async def load_stats(settings: Settings) -> dict[str, Any]:
    from app.platform.db import engine_from_settings, session_factory

    # One short read: a pool of one connection is enough.
    engine = engine_from_settings(settings, pool_size=1)
    try:
        return await order_stats(session_factory(engine))
    finally:
        await engine.dispose()


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_stats(data: dict[str, Any]) -> Group:
    orders = data["orders"]
    summary = Table("total", "open", "closed", "completion rate", title="orders")
    summary.add_row(
        str(orders["total"]),
        str(orders["open"]),
        str(orders["closed"]),
        _rate(data["completion_rate"]),
    )

    outcomes = Table("state", "orders", "reasons", title="outcomes per state")
    for state, count in orders["by_state"].items():
        outcome = data["outcomes"].get(state)
        reasons = (
            ", ".join(f"{reason} {n}" for reason, n in outcome["reasons"].items())
            if outcome
            else "(open)"
        )
        outcomes.add_row(Text(state, style=_STATE_STYLE.get(state, "cyan")), str(count), reasons)

    execution = data["execution_time"]
    pct = execution["percentiles"]
    times = Table(
        "orders", "p50", "p95", "p99", "mean", "max", title="execution time (RECEIVED to end)"
    )
    times.add_row(
        str(execution["count"]),
        _seconds(pct.get("p50")),
        _seconds(pct.get("p95")),
        _seconds(pct.get("p99")),
        _seconds(execution["mean_s"]),
        _seconds(execution["max_s"]),
    )

    steps = Table(
        "step",
        "attempts",
        "failed",
        "error rate",
        "retries",
        "orders retried",
        "failures by kind",
        title="steps",
    )
    for step in data["steps"]:
        steps.add_row(
            step["step"],
            str(step["attempts"]),
            str(step["failed"]),
            _rate(step["error_rate"]),
            str(step["retries"]),
            str(step["orders_retried"]),
            ", ".join(f"{kind} {n}" for kind, n in step["failures_by_kind"].items()) or "-",
        )

    parts: list[Any] = [summary, outcomes, times, steps]
    if execution["without_start"]:
        parts.append(
            Text(
                f"{execution['without_start']} closed order(s) never got past RECEIVE and are "
                "not in the execution times."
            )
        )
    payments = ", ".join(f"{status} {n}" for status, n in data["payments"].items())
    parts.append(Text(f"payments: {payments or 'none'}"))
    return Group(*parts)
