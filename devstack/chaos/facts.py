"""What a chaos run knows of its orders: what it did to each while following it
(`Tracked`), and at the end the facts the invariants are judged on (`gather_facts`): our
tables, the gateway's and the carrier's own ledgers, and how each workflow ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from app.orders.messages import TERMINAL_STATES, order_workflow_id
from app.platform.tables import Event, Order, Payment
from app.service.orders import OrderService
from devstack.chaos.adversarial import PlannedOrder
from devstack.chaos.checks import OrderFacts
from devstack.chaos.ledgers import carrier_ledger, gateway_ledger, ledger_keys


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


@dataclass
class Tracked:
    """What the run knows of one started order while it follows it."""

    plan: PlannedOrder
    # Its latest run must have closed by then (0: the run's own bound applies).
    until: float = 0.0
    state: str | None = None
    # Closed in the database, its workflow still running (refunding, cancelling bookings).
    compensating: bool = False
    closed: bool = False
    close_cancelled: bool = False
    retrying: bool = False
    retry_attempts: int = 0
    retries: list[dict[str, Any]] = field(default_factory=list)
    retry_refusals: list[str] = field(default_factory=list)
    cancels: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Ledgers:
    """The providers' own databases, which the order system never reads: the auditor does."""

    gateway: AsyncEngine
    carrier: AsyncEngine


async def gather_facts(
    service: OrderService,
    planned: Iterable[PlannedOrder],
    tracked: dict[str, Tracked],
    ledgers: Ledgers,
    gate: asyncio.Semaphore,
) -> dict[str, OrderFacts]:
    """The facts of every planned order (started or not); `gate` bounds the Temporal
    calls in flight."""
    facts = {
        o.order_id: OrderFacts(order_id=o.order_id, payment_id=o.payment_id, free=o.free)
        for o in planned
    }
    await _database_facts(service, facts)
    await _ledger_facts(ledgers, facts)
    for oid, t in tracked.items():
        facts[oid].cancels = t.cancels

    async def outcome(f: OrderFacts) -> None:
        async with gate:
            f.workflow = await workflow_outcome(service.client, order_workflow_id(f.order_id))
        # Closed in our database, its workflow still refunding or cancelling bookings.
        f.settling = f.state in TERMINAL_STATES and f.workflow.get("status") == "RUNNING"

    await asyncio.gather(*(outcome(f) for f in facts.values()))
    return facts


async def _database_facts(service: OrderService, facts: dict[str, OrderFacts]) -> None:
    """Our orders, payments and events rows."""
    ids = list(facts)
    planned_by: dict[str, list[str]] = {}
    for f in facts.values():
        planned_by.setdefault(f.payment_id, []).append(f.order_id)
    async with service.sessions() as s:
        for o in (await s.execute(select(Order).where(Order.id.in_(ids)))).scalars():
            facts[o.id].db = {
                "state": o.state,
                "reason": o.reason,
                "step": o.step,
                "payment_id": o.payment_id,
                "tracking_number": o.tracking_number,
                "cancel_requested": o.cancel_requested,
                "amount_cents": None if o.amount is None else int(o.amount * 100),
            }
        payments = (
            await s.execute(
                select(Payment).where(
                    Payment.order_id.in_(ids) | Payment.payment_id.in_(list(planned_by))
                )
            )
        ).scalars()
        for p in payments:
            row = {
                "payment_id": p.payment_id,
                "order_id": p.order_id,
                "status": p.status,
                "amount_cents": int((p.amount or 0) * 100),
                "gateway_ref": p.gateway_ref,
            }
            # Ours, or (another order's, under a payment id one of ours started with).
            for owner in [p.order_id] if p.order_id in facts else planned_by[p.payment_id]:
                facts[owner].payments.append(row)
        events = await s.execute(select(Event).where(Event.order_id.in_(ids)).order_by(Event.id))
        for e in events.scalars():
            facts[e.order_id].events.append(
                {"type": e.type, "payload": e.payload_json, "ts": e.ts.isoformat()}
            )


async def _ledger_facts(ledgers: Ledgers, facts: dict[str, OrderFacts]) -> None:
    """The gateway's charges, the carrier's bookings and both providers' keys."""
    ids = list(facts)
    for oid, charges in (await gateway_ledger(ledgers.gateway, ids)).items():
        facts[oid].gateway = charges
    for oid, bookings in (await carrier_ledger(ledgers.carrier, ids)).items():
        facts[oid].carrier = bookings
    for provider, ledger in (("gateway", ledgers.gateway), ("carrier", ledgers.carrier)):
        for oid, keys in (await ledger_keys(ledger, provider, ids)).items():
            facts[oid].keys += keys


async def workflow_outcome(client: Client, workflow_id: str) -> dict[str, Any]:
    """status plus, once closed, the state/reason/payment status the workflow ended with."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except Exception as err:
        return {"status": None, "error": one_line(err)}
    status = desc.status.name if desc.status is not None else None
    out: dict[str, Any] = {"status": status, "run_id": desc.run_id}
    if status == "RUNNING":
        # What it is waiting for tells a stuck order from one still compensating.
        raw = desc.raw_description
        out["pending"] = [
            f"{a.activity_type.name} attempt {a.attempt}"
            + (f" (last failure: {a.last_failure.message})" if a.last_failure.message else "")
            for a in raw.pending_activities
        ] + [f"child {c.workflow_id}" for c in raw.pending_children]
    if status == "COMPLETED":
        result = await handle.result()
        if isinstance(result, dict):
            out.update(
                state=result.get("state"),
                reason=result.get("reason"),
                payment_status=result.get("payment_status"),
            )
    elif status == "FAILED":
        try:
            await handle.result()
        except WorkflowFailureError as err:
            cause = err.cause
            details = (
                cause.details[0] if isinstance(cause, ApplicationError) and cause.details else {}
            )
            out["state"] = "FAILED"
            out["failure"] = one_line(cause) if cause else one_line(err)
            if isinstance(details, dict):
                out.update(
                    reason=details.get("reason"), payment_status=details.get("payment_status")
                )
    return out
