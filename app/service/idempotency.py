"""Safe retries of a start request: the `Idempotency-Key` a client sends with it.

A key names one request. Before anything else, the key is bound to the order id and a
fingerprint of what the request asked for (`idempotency_keys`, one row per key, first
writer wins): the same key with another order id or another body is refused (422),
whatever became of the first request. The key and fingerprint also go into the workflow
run's memo when the run starts (one atomic write, in Temporal), so a repeat of the
request, or five copies of it racing, find the run and get its answer instead of a 409.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.orders.messages import OrderInput, OrderState, Step
from app.platform.tables import IdempotencyKey
from app.service.errors import InvalidInput

IDEMPOTENCY_MEMO = "idempotency"


@dataclass(frozen=True)
class IdempotentRequest:
    key: str
    fingerprint: str

    def memo(self) -> dict[str, str]:
        return {"key": self.key, "fingerprint": self.fingerprint}


async def bind_key(
    sessions: async_sessionmaker[AsyncSession], keyed: IdempotentRequest, order_id: str
) -> None:
    """The key is this request's from now on, or it was already: otherwise 422 on
    Idempotency-Key, saying whether the order or the body differs."""
    async with sessions() as s, s.begin():
        await s.execute(
            pg_insert(IdempotencyKey)
            .values(key=keyed.key, order_id=order_id, fingerprint=keyed.fingerprint)
            .on_conflict_do_nothing(index_elements=[IdempotencyKey.key])
        )
        bound = (
            await s.execute(
                select(IdempotencyKey.order_id, IdempotencyKey.fingerprint).where(
                    IdempotencyKey.key == keyed.key
                )
            )
        ).one()
    if bound.order_id != order_id:
        raise InvalidInput(
            "Idempotency-Key was already used to start another order (a key names one "
            "request: send a new key for a new order)",
            field="Idempotency-Key",
        )
    if bound.fingerprint != keyed.fingerprint:
        raise InvalidInput(
            "Idempotency-Key was already used with another request body",
            field="Idempotency-Key",
        )


def request_fingerprint(inp: OrderInput) -> str:
    """What the request asked for, as the workflow gets it (so equal bodies spelt
    differently, e.g. items omitted or given as the default, count as the same)."""
    canonical = json.dumps(dataclasses.asdict(inp), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class StartAnswer:
    """What a start answers: the run, and whether this is a repeat of an earlier request."""

    order_id: str
    workflow_id: str
    run_id: str | None
    replayed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "state": OrderState.PENDING,
            "step": Step.RECEIVE,
        }
