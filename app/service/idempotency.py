"""Safe retries of a start request: the `Idempotency-Key` a client sends with it.

The key and a fingerprint of what the request asked for go into the workflow run's memo
when the run starts (one atomic write, in Temporal), so a repeat of the request, or five
copies of it racing, find the run and get its answer instead of a 409.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from app.orders.models import OrderInput, OrderState, Step

IDEMPOTENCY_MEMO = "idempotency"


@dataclass(frozen=True)
class IdempotentRequest:
    key: str
    fingerprint: str

    def memo(self) -> dict[str, str]:
        return {"key": self.key, "fingerprint": self.fingerprint}


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
