"""Chaos run on the embedded stack (`cli.py chaos`): orders under seed faults while
processes die, then a check of the invariants that must survive it.

What happens, in one process that talks to the running stack like any client:

1. N orders are started (per-order fault profile, `seed` by default: 1/3 of external
   calls fail, 1/3 hang; `--fault-profile` adds lost answers), spread over the first half
   of the run, each approved with the `approve_order`
   signal right after its start (an early approval is kept until the review step).
2. Meanwhile a fault plan drawn from `--seed` runs: SIGKILL a random worker every few
   seconds and bring it back through the stack supervisor, restart the Temporal dev server
   once and PostgreSQL once (stop + start through the supervisor).
3. Every order must then reach a terminal state within its deadline plus a grace period.
4. Invariants, per order, from PostgreSQL, Temporal and the gateway's and carrier's own
   ledgers (devstack/chaos_checks.py): terminal, charged at most once, refunded when it
   did not ship, database state equal to the workflow's outcome and to the ledgers, one
   carrier booking at most, an event row for the state it is in.

The fault plan and order timing come from the seed; the outcome of each external call
comes from the workers' FAULT_SEED (random when unset), and kills land on whatever work is
in flight, so two runs with one seed face the same faults but not the same histories.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from app.orders.models import (
    DEMO_ADDRESS,
    ORDER_DEADLINE_S,
    SIGNAL_APPROVE,
    ApproveRequest,
    order_workflow_id,
)
from app.orders.providers.carrier import read_ledger as carrier_ledger
from app.orders.providers.gateway import read_ledger as gateway_ledger
from app.orders.providers.wiring import ledger_engine
from app.platform.db import engine_from_settings, session_factory
from app.platform.settings import Settings
from app.platform.tables import Event, Order, Payment
from app.platform.temporal import connect_client, runtime_with_core_logs
from app.service.errors import InvalidInput, OrderConflict
from app.service.orders import OrderService
from devstack import services as stack_services
from devstack.chaos_checks import TERMINAL, VIOLATIONS, OrderFacts, check_order
from devstack.chaos_faults import (
    ChaosOptions,
    PlannedFault,
    execute_fault,
    heal,
    plan_faults,
    stopped_services,
)

# A start or approval that fails (Temporal or PostgreSQL restarting) is retried this long:
# longer than any planned outage, so a lost order means something really broke.
CLIENT_RETRY_BUDGET_S = 90.0
# Evidence (events, history) is attached for at most this many violating orders.
MAX_EVIDENCE = 20


class ChaosError(Exception):
    """The run cannot start (stack not running, fault injection refused...)."""


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class _Run:
    """State of one chaos run (one event loop, one client, one engine)."""

    def __init__(
        self, settings: Settings, opts: ChaosOptions, progress: Callable[[str], None]
    ) -> None:
        self.settings = settings  # as `cli.py start` sees them: restarts use these
        self.client_settings = stack_services.client_settings(settings)
        self.opts = opts
        self.progress = progress
        self.cfg = stack_services.stack_config(settings)
        self.deadline_s = (
            opts.order_deadline_s or self.client_settings.order_deadline_s or ORDER_DEADLINE_S
        )
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self) -> dict[str, Any]:
        stopped = stopped_services(self.cfg)
        if stopped:
            raise ChaosError(
                f"the embedded stack is not running ({', '.join(stopped)} stopped; run dir "
                f"{self.cfg.run_dir}); start it with: python scripts/cli.py start"
            )
        if not self.client_settings.allow_fault_injection:
            raise ChaosError(
                "fault injection is off for this target (ALLOW_FAULT_INJECTION=false); "
                "chaos runs only against the embedded stack"
            )
        rng = random.Random(self.opts.seed)
        plan = plan_faults(self.opts, rng)
        prefix = self.opts.id_prefix or (
            f"chaos-{self.opts.seed}-{datetime.now(UTC):%H%M%S}{secrets.token_hex(2)}"
        )
        ids = [f"{prefix}-{i:04d}" for i in range(self.opts.orders)]
        window = self.opts.duration_s / 2
        offsets = [window * i / max(len(ids), 1) for i in range(len(ids))]

        # Core (Rust) logs through Python logging, i.e. stderr: left alone they land on
        # stdout during the Temporal restart and corrupt `--json`.
        client = await connect_client(self.client_settings, runtime=runtime_with_core_logs())
        engine = engine_from_settings(self.client_settings, pool_size=10)
        # The auditor reads the providers' ledgers directly; the order system never does.
        cs = self.client_settings
        self.gateway_engine = ledger_engine(cs, cs.gateway_database_url_plain, pool_size=2)
        self.carrier_engine = ledger_engine(cs, cs.carrier_database_url_plain, pool_size=2)
        service = OrderService(client, session_factory(engine), self.client_settings)
        self.t0 = time.monotonic()
        self.progress(
            f"chaos: {len(ids)} orders (ids {prefix}-NNNN), {len(plan)} faults over "
            f"{self.opts.duration_s:.0f}s, seed {self.opts.seed}"
        )
        try:
            starts = [
                asyncio.create_task(self._start(service, oid, at))
                for oid, at in zip(ids, offsets, strict=True)
            ]
            faults_task = asyncio.create_task(self._faults(plan))
            started = await asyncio.gather(*starts)
            faults = await faults_task
            chaos_end = self.now()
            healed = await asyncio.to_thread(heal, self.settings)
            for message in healed:
                self.progress(f"  healed: {message}")
            live = [s["order_id"] for s in started if s["started"]]
            last_start = max((s["at_s"] for s in started), default=0.0)
            settle_until = max(last_start + self.deadline_s, chaos_end) + self.opts.grace_s
            self.progress(
                f"  {len(live)} orders started; waiting up to "
                f"{max(settle_until - self.now(), 0):.0f}s for them to close"
            )
            open_ids = await self._settle(service, live, settle_until)
            settled_at = self.now()
            facts = await self._facts(service, ids)
            summary = self._summary(plan, started, faults, healed, facts, open_ids)
            if summary["violation_count"]:
                summary["evidence"] = await self._evidence(service, summary, facts)
        finally:
            await engine.dispose()
            await self.gateway_engine.dispose()
            await self.carrier_engine.dispose()
        summary["timings"] = {
            "start_window_s": round(window, 1),
            "chaos_s": round(chaos_end, 1),
            "settled_at_s": round(settled_at, 1),
            "total_s": round(self.now(), 1),
        }
        return summary

    async def _start(self, service: OrderService, order_id: str, at: float) -> dict[str, Any]:
        await asyncio.sleep(max(at - self.now(), 0.0))
        out: dict[str, Any] = {"order_id": order_id, "at_s": round(self.now(), 2)}
        give_up = time.monotonic() + CLIENT_RETRY_BUDGET_S
        attempts, error, delay = 0, None, 0.5
        started = False
        while not started:
            attempts += 1
            try:
                await service.start_order(
                    order_id,
                    f"pmt-{order_id}",
                    dict(DEMO_ADDRESS),
                    fault_profile=self.opts.fault_profile,
                    deadline_s=self.deadline_s,
                )
                started = True
            except OrderConflict:
                started = True  # an earlier attempt got through and its answer was lost
            except InvalidInput as err:
                error = _one_line(err)
                break
            except Exception as err:  # Temporal or PostgreSQL restarting: retry
                error = _one_line(err)
                if time.monotonic() > give_up:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
        out.update(started=started, start_attempts=attempts, start_error=error)
        if not started:
            return out
        handle = service.client.get_workflow_handle(order_workflow_id(order_id))
        approved, delay = False, 0.5
        while not approved:
            try:
                await handle.signal(SIGNAL_APPROVE, ApproveRequest(reviewer="chaos"))
                approved = True
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    out["approve_note"] = "order closed before the approval"
                    break
                if time.monotonic() > give_up:
                    out["approve_error"] = _one_line(err)
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
        out["approved"] = approved
        return out

    async def _faults(self, plan: list[PlannedFault]) -> list[dict[str, Any]]:
        """Run the plan in order; one fault at a time, so restarts never overlap."""
        records = []
        for fault in plan:
            await asyncio.sleep(max(fault.at_s - self.now(), 0.0))
            began = self.now()
            record = await asyncio.to_thread(
                partial(execute_fault, self.settings, fault, hard=self.opts.hard_restarts)
            )
            record = {"planned_at_s": fault.at_s, "at_s": round(began, 2), **record}
            note = "" if record["ok"] else f" FAILED: {record.get('error')}"
            self.progress(
                f"  t={began:5.1f}s {fault.kind} {fault.target} "
                f"(back in {record['downtime_s']:.1f}s){note}"
            )
            if not record["ok"] or record.get("also_down"):
                # Right away: orders (and their retries) must not wait for the end of the
                # plan to get their service back.
                record["healed"] = await asyncio.to_thread(heal, self.settings)
                for message in record["healed"]:
                    self.progress(f"  healed: {message}")
            records.append(record)
        return records

    async def _settle(self, service: OrderService, ids: list[str], until: float) -> list[str]:
        """Wait until every order is terminal in the database and its workflow closed."""
        pending = set(ids)
        gate = asyncio.Semaphore(20)

        async def closed(order_id: str) -> bool:
            async with gate:
                try:
                    desc = await service.client.get_workflow_handle(
                        order_workflow_id(order_id)
                    ).describe()
                except Exception:
                    return False
                return bool(desc.status is not None and desc.status.name != "RUNNING")

        while pending and self.now() < until:
            try:
                async with service.sessions() as s:
                    rows = (
                        await s.execute(
                            select(Order.id, Order.state).where(Order.id.in_(sorted(pending)))
                        )
                    ).all()
            except Exception:
                rows = []  # the database may still be coming back
            candidates = [oid for oid, state in rows if state in TERMINAL]
            done = await asyncio.gather(*(closed(oid) for oid in candidates))
            pending.difference_update(oid for oid, ok in zip(candidates, done, strict=True) if ok)
            if pending:
                await asyncio.sleep(1.0)
        return sorted(pending)

    async def _facts(self, service: OrderService, ids: list[str]) -> dict[str, OrderFacts]:
        facts = {oid: OrderFacts(order_id=oid, payment_id=f"pmt-{oid}") for oid in ids}
        payment_ids = [f.payment_id for f in facts.values()]
        async with service.sessions() as s:
            for o in (await s.execute(select(Order).where(Order.id.in_(ids)))).scalars():
                facts[o.id].db = {
                    "state": o.state,
                    "reason": o.reason,
                    "step": o.step,
                    "payment_id": o.payment_id,
                    "tracking_number": o.tracking_number,
                    "cancel_requested": o.cancel_requested,
                }
            payments = (
                await s.execute(
                    select(Payment).where(
                        Payment.order_id.in_(ids) | Payment.payment_id.in_(payment_ids)
                    )
                )
            ).scalars()
            for p in payments:
                owner = p.order_id if p.order_id in facts else p.payment_id.removeprefix("pmt-")
                if owner in facts:
                    facts[owner].payments.append(
                        {
                            "payment_id": p.payment_id,
                            "order_id": p.order_id,
                            "status": p.status,
                            "amount_cents": int((p.amount or 0) * 100),
                        }
                    )
            events = await s.execute(
                select(Event).where(Event.order_id.in_(ids)).order_by(Event.id)
            )
            for e in events.scalars():
                facts[e.order_id].events.append(
                    {"type": e.type, "payload": e.payload_json, "ts": e.ts.isoformat()}
                )
        for oid, charges in (await gateway_ledger(self.gateway_engine, ids)).items():
            facts[oid].gateway = charges
        for oid, bookings in (await carrier_ledger(self.carrier_engine, ids)).items():
            facts[oid].carrier = bookings
        gate = asyncio.Semaphore(20)

        async def outcome(f: OrderFacts) -> None:
            async with gate:
                f.workflow = await _workflow_outcome(service.client, order_workflow_id(f.order_id))

        await asyncio.gather(*(outcome(f) for f in facts.values()))
        return facts

    def _summary(
        self,
        plan: list[PlannedFault],
        started: list[dict[str, Any]],
        faults: list[dict[str, Any]],
        healed: list[str],
        facts: dict[str, OrderFacts],
        open_ids: list[str],
    ) -> dict[str, Any]:
        live = {s["order_id"] for s in started if s["started"]}
        violations: dict[str, list[dict[str, Any]]] = {kind: [] for kind in VIOLATIONS}
        for s in started:
            if not s["started"]:
                violations["not_started"].append(
                    {"order_id": s["order_id"], "detail": s.get("start_error")}
                )
        states: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        payments: Counter[str] = Counter()
        ledger: Counter[str] = Counter()
        for oid in sorted(live):
            f = facts[oid]
            ledger["gateway_charges"] += len(f.gateway)
            ledger["gateway_refunds"] += sum(len(c["refunds"]) for c in f.gateway)
            ledger["carrier_dispatches"] += len(f.carrier)
            ledger["carrier_cancelled"] += sum(1 for b in f.carrier if b["cancelled"])
            state = f.db["state"] if f.db else "NO_ROW"
            if state in TERMINAL:
                states[state] += 1
                if state != "COMPLETED":
                    reasons[f"{state}:{(f.db or {}).get('reason')}"] += 1
            for p in f.payments:
                payments[p["status"]] += 1
            for kind, details in check_order(f).items():
                violations[kind].append({"order_id": oid, "detail": "; ".join(details)})
        not_terminal = sorted({v["order_id"] for v in violations["not_terminal"]})
        count = sum(len(v) for v in violations.values())
        return {
            "ok": count == 0,
            "seed": self.opts.seed,
            "orders_requested": self.opts.orders,
            "orders_started": len(live),
            "orders_approved": sum(1 for s in started if s.get("approved")),
            "fault_profile": self.opts.fault_profile,
            "order_deadline_s": self.deadline_s,
            "grace_s": self.opts.grace_s,
            "terminal": {s: states.get(s, 0) for s in ("COMPLETED", "CANCELLED", "FAILED")},
            "reasons": dict(reasons.most_common()),
            "not_terminal_after_deadline": not_terminal,
            "still_open_when_settling_stopped": open_ids,
            "payments": {
                "charged": sum(payments.values()),  # every payment row is one charge
                "refunded": payments.get("refunded", 0),
                "kept": payments.get("charged", 0),
            },
            # What the providers' own ledgers hold for these orders.
            "ledger": {
                k: ledger.get(k, 0)
                for k in (
                    "gateway_charges",
                    "gateway_refunds",
                    "carrier_dispatches",
                    "carrier_cancelled",
                )
            },
            "start_retries": sum(s.get("start_attempts", 1) - 1 for s in started),
            "plan": [asdict(f) for f in plan],
            "faults": faults,
            "fault_counts": dict(Counter(f["kind"] for f in faults if f["ok"])),
            "healed": healed,
            "violations": violations,
            "violation_count": count,
        }

    async def _evidence(
        self, service: OrderService, summary: dict[str, Any], facts: dict[str, OrderFacts]
    ) -> dict[str, Any]:
        """Events and a payload-free history for the first violating orders."""
        ids = _unique(v["order_id"] for vs in summary["violations"].values() for v in vs)
        ids = [oid for oid in ids if oid in facts][:MAX_EVIDENCE]
        out: dict[str, Any] = {}
        for oid in ids:
            f = facts[oid]
            try:
                history = await service.history(order_workflow_id(oid))
            except Exception as err:
                history = [{"error": _one_line(err)}]
            out[oid] = {
                "db": f.db,
                "payments": f.payments,
                "gateway": f.gateway,
                "carrier": f.carrier,
                "events": [
                    {"type": e["type"], "ts": e["ts"], "payload": e["payload"]} for e in f.events
                ],
                "workflow": f.workflow,
                "history": [
                    f"{h.get('event_id')} {h.get('type')} {h.get('detail') or ''}".rstrip()
                    if "type" in h
                    else str(h)
                    for h in history
                ],
            }
        return out


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


async def _workflow_outcome(client: Client, workflow_id: str) -> dict[str, Any]:
    """status plus, once closed, the state/reason/payment status the workflow ended with."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except Exception as err:
        return {"status": None, "error": _one_line(err)}
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
            out["failure"] = _one_line(cause) if cause else _one_line(err)
            if isinstance(details, dict):
                out.update(
                    reason=details.get("reason"), payment_status=details.get("payment_status")
                )
    return out


async def run_chaos(
    settings: Settings, opts: ChaosOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the chaos scenario against the embedded stack `settings` describe."""
    return await _Run(settings, opts, progress).run()


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary for a terminal (the JSON has everything, evidence included)."""
    t = summary["terminal"]
    p = summary["payments"]
    faults = ", ".join(f"{kind} x{n}" for kind, n in summary["fault_counts"].items()) or "none"
    lines = [
        f"orders: {summary['orders_started']}/{summary['orders_requested']} started; "
        f"COMPLETED {t['COMPLETED']}, CANCELLED {t['CANCELLED']}, FAILED {t['FAILED']}, "
        f"not terminal {len(summary['not_terminal_after_deadline'])}",
        f"payments: {p['charged']} charged, {p['refunded']} refunded, {p['kept']} kept",
        "ledgers: {gateway_charges} gateway charges, {gateway_refunds} refunds; "
        "{carrier_dispatches} carrier bookings ({carrier_cancelled} cancelled)".format(
            **summary["ledger"]
        ),
        f"faults: {faults}; took {summary['timings']['total_s']:.0f}s",
    ]
    for kind, items in summary["violations"].items():
        if items:
            shown = "; ".join(f"{i['order_id']}: {i['detail']}" for i in items[:5])
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"VIOLATION {kind} x{len(items)}: {shown}{more}")
    lines.append(
        "all invariants hold"
        if summary["ok"]
        else f"{summary['violation_count']} violations; --json shows events and histories"
    )
    return lines
