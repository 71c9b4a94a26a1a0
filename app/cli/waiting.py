"""Waiting on orders (the CLI, the demo and scripts/test-workflow.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.cli.render import status_dict

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    from app.service.status import StatusReader


def is_terminal(view: dict[str, Any]) -> bool:
    """Closed and compensated (a refund follows the close): the service's `settled`."""
    return bool(view.get("settled"))


async def wait_for_order(
    reader: StatusReader,
    order_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 0.2,
) -> dict[str, Any]:
    """Poll the order's status until `done(view)` or `timeout`; return the last view."""
    from app.service.errors import Unavailable

    deadline = time.monotonic() + timeout
    seen: tuple[Any, ...] | None = None
    view: dict[str, Any] = {}
    while True:
        try:
            view = status_dict(await reader.status(order_id))
        except Unavailable:
            # A workflow answers queries only after its first task; moments after the start
            # it may not yet.
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(interval)
            continue
        key = (view.get("state"), view.get("step"))
        if on_change is not None and key != seen:
            seen = key
            on_change(view)
        if done(view) or time.monotonic() >= deadline:
            return view
        await asyncio.sleep(interval)


def seconds_left(view: dict[str, Any]) -> float:
    deadline = view.get("deadline_at")
    if not deadline:
        return 0.0
    return (datetime.fromisoformat(deadline) - datetime.now().astimezone()).total_seconds()
