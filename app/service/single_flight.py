"""One lookup at a time per key: callers that ask while it runs wait for it.

Without it, callers that arrive behind a slow first lookup (a status read under load, a
flood of health probes) all miss their cache at once and each start the same work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        # key -> the lookup in flight for it
        self.running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, lookup: Callable[[], Awaitable[V]]) -> V:
        """`lookup()`'s answer, shared with every caller asking for `key` meanwhile."""
        flight = self.running.get(key)
        if flight is None:
            flight = asyncio.ensure_future(lookup())
            self.running[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        # Shielded: one caller going away must not cancel the others' lookup.
        return await asyncio.shield(flight)

    def _landed(self, key: K, done: asyncio.Future[V]) -> None:
        self.running.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody awaited is not logged
