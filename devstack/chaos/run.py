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
   An order closed in the database whose workflow still compensates (a refund retrying
   under faults) is waited for, bounded (`settle_wait_s`); what is still settling then is
   reported apart (`settling`), not judged early: the reconciliation judges what never
   lands.
4. Invariants, per order, from PostgreSQL, Temporal and the gateway's and carrier's own
   ledgers (devstack/chaos/checks.py): terminal, charged at most once per run, refunded
   when it did not ship, database state equal to the workflow's outcome and to the
   ledgers, one carrier booking at most, an event row for the state it is in, and keys,
   charges and bookings of its own.

With `adversarial`, the orders mix in colliding ids and payments, free orders, cancels at
random moments and while orders close, and retries of FAILED orders
(devstack/chaos/adversarial.py); the reconciliation runs at the end and its report is part
of the verdict.

The fault plan and order timing come from the seed; the outcome of each external call
comes from the workers' FAULT_SEED (random when unset), and kills land on whatever work is
in flight, so two runs with one seed face the same faults but not the same histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import (
    DEMO_ADDRESS,
    ORDER_DEADLINE_S,
    SIGNAL_APPROVE,
    ApproveRequest,
    order_workflow_id,
)
from app.orders.providers.wiring import ledger_engine
from app.platform.db import engine_from_settings, session_factory
from app.platform.tables import Event, Order, Payment
from app.platform.temporal import connect_client, runtime_with_core_logs
from app.service.errors import InvalidInput, OrderConflict, OrderNotFound
from app.service.orders import OrderService
from devstack.chaos.adversarial import (
    CANCEL_WITHIN_S,
    KINDS,
    RETRY_CANCEL_SHARE,
    PlannedOrder,
    plain_orders,
    plan_orders,
)
from devstack.chaos.checks import (
    TERMINAL,
    VIOLATIONS,
    OrderFacts,
    check_across,
    check_order,
    deferred_checks,
)
from devstack.chaos.faults import (
    ChaosOptions,
    PlannedFault,
    execute_fault,
    heal,
    plan_faults,
    stopped_services,
)
from devstack.chaos.ledgers import carrier_ledger, gateway_ledger, ledger_keys
from devstack.stack.addresses import client_settings, stack_config
from devstack.stack.config import StackSettings

# A start or approval that fails (Temporal or PostgreSQL restarting) is retried this long:
# longer than any planned outage, so a lost order means something really broke.
CLIENT_RETRY_BUDGET_S = 90.0
# Evidence (events, history) is attached for at most this many violating orders.
MAX_EVIDENCE = 20
# How often the run looks at its orders while it waits (closing ones, FAILED ones).
POLL_S = 0.5
# A cancel or retry that met an outage is sent again for this long.
ACTION_RETRY_BUDGET_S = 20.0


class ChaosError(Exception):
    """The run cannot start (stack not running, fault injection refused...)."""


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _names_payment(err: OrderConflict) -> bool:
    """A start refused because its payment id belongs to another order."""
    return err.field == "payment_id" or err.extra.get("reason") == "payment_id"


def _count(value: Any) -> int:
    """A report's count, whether it gives a number or the list of what it counts."""
    if isinstance(value, bool) or value is None:
        return int(bool(value))
    if isinstance(value, int):
        return value
    try:
        return len(value)
    except TypeError:
        return 0


@dataclass
class _Tracked:
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


class _Run:
    """State of one chaos run (one event loop, one client, one engine)."""

    def __init__(
        self, settings: StackSettings, opts: ChaosOptions, progress: Callable[[str], None]
    ) -> None:
        self.settings = settings  # as `cli.py start` sees them: restarts use these
        self.client_settings = client_settings(settings)
        self.opts = opts
        self.progress = progress
        self.cfg = stack_config(settings)
        self.deadline_s = (
            opts.order_deadline_s or self.client_settings.order_deadline_s or ORDER_DEADLINE_S
        )
        self.t0 = 0.0
        self.tracked: dict[str, _Tracked] = {}
        self.actions: set[asyncio.Task[None]] = set()
        # Set once every start is done and the fault plan is over: from then on the run
        # only waits for its orders to close.
        self.settle_until: float | None = None
        # FAILED orders are retried until then (their retry must still fit the wait).
        self.retry_until = opts.duration_s / 2 + self.deadline_s / 2
        # The adversarial mix's own draws, apart from the fault plan's.
        self.adv_rng = random.Random(f"adversarial-{opts.seed}")
        # At most this many Temporal calls at once while following the orders.
        self.gate = asyncio.Semaphore(20)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _spawn(self, action: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(action)
        self.actions.add(task)
        task.add_done_callback(self.actions.discard)

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
        window = self.opts.duration_s / 2
        orders = (
            plan_orders(
                prefix,
                self.opts.orders,
                window,
                self.deadline_s,
                random.Random(f"mix-{self.opts.seed}"),
            )
            if self.opts.adversarial
            else plain_orders(prefix, self.opts.orders, window)
        )
        self.planned = {o.order_id: o for o in orders}

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
            f"chaos: {len(orders)} orders (ids {prefix}-NNNN"
            + (", adversarial mix" if self.opts.adversarial else "")
            + f"), {len(plan)} faults over {self.opts.duration_s:.0f}s, seed {self.opts.seed}"
        )
        following = asyncio.create_task(self._follow(service))
        try:
            starts = [asyncio.create_task(self._start(service, o)) for o in orders]
            faults_task = asyncio.create_task(self._faults(plan))
            started = await asyncio.gather(*starts)
            faults = await faults_task
            chaos_end = self.now()
            healed = await asyncio.to_thread(heal, self.settings)
            for message in healed:
                self.progress(f"  healed: {message}")
            live = [s["order_id"] for s in started if s["started"]]
            last_start = max((s["at_s"] for s in started), default=0.0)
            self.settle_until = max(last_start + self.deadline_s, chaos_end) + self.opts.grace_s
            self.progress(
                f"  {len(live)} orders started; waiting up to "
                f"{max(self.settle_until - self.now(), 0):.0f}s for them to close"
                + (f" (+{self.opts.settle_wait_s:.0f}s for compensation in flight)")
            )
            open_ids = await following
            for task in list(self.actions):
                task.cancel()
            await asyncio.gather(*self.actions, return_exceptions=True)
            settled_at = self.now()
            facts = await self._facts(service, [o.order_id for o in orders])
            summary = self._summary(plan, started, faults, healed, facts, open_ids)
            if self.opts.adversarial:
                self.progress("  reconciling")
                reconciliation = await self._reconcile(client, sorted(self.tracked))
                summary["reconciliation"] = reconciliation
                unresolved = _count(reconciliation.get("unresolved"))
                if "error" in reconciliation or unresolved:
                    summary["ok"] = False
            if not summary["ok"]:
                summary["evidence"] = await self._evidence(service, summary, facts)
        finally:
            following.cancel()
            for task in list(self.actions):
                task.cancel()
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

    async def _start(self, service: OrderService, planned: PlannedOrder) -> dict[str, Any]:
        order_id = planned.order_id
        await asyncio.sleep(max(planned.at_s - self.now(), 0.0))
        out: dict[str, Any] = {"order_id": order_id, "at_s": round(self.now(), 2)}
        give_up = time.monotonic() + CLIENT_RETRY_BUDGET_S
        attempts, error, delay = 0, None, 0.5
        started = False
        while not started:
            attempts += 1
            try:
                await service.start_order(
                    order_id,
                    planned.payment_id,
                    dict(DEMO_ADDRESS),
                    items=planned.items,
                    fault_profile=planned.fault_profile or self.opts.fault_profile,
                    deadline_s=self.deadline_s,
                )
                started = True
            except OrderConflict as err:
                if _names_payment(err) and not await _has_run(service.client, order_id):
                    # Another order holds the payment id: refused, as the product says.
                    out["refused"] = "payment_id"
                    error = _one_line(err)
                    break
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
        self.tracked[order_id] = _Tracked(planned)
        if planned.cancel_after_s is not None:
            at = out["at_s"] + planned.cancel_after_s
            self._spawn(self._cancel_at(service, order_id, at, "random"))
        out.update(await self._approve(service, order_id, give_up))
        return out

    async def _approve(
        self, service: OrderService, order_id: str, give_up: float
    ) -> dict[str, Any]:
        """The `approve_order` signal to the order's latest run, sent until it lands."""
        out: dict[str, Any] = {}
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

    # --- following the orders --------------------------------------------------------------

    async def _follow(self, service: OrderService) -> list[str]:
        """Watch the started orders until each is closed (terminal in the database, its
        workflow closed) or time is up; the ids still open then.

        Time is up at the run's bound (the last start's deadline plus grace, or a retry's);
        orders still compensating then get `settle_wait_s` more. Under `adversarial` it
        also cancels the orders it sees closing and retries the FAILED ones."""
        while True:
            # The database or Temporal restarting: look again next time.
            with contextlib.suppress(Exception):
                await self._poll(service)
            if self.settle_until is not None:
                pending = [t for t in self.tracked.values() if not t.closed or t.retrying]
                if not pending:
                    break
                until = max([self.settle_until, *(t.until for t in pending)])
                now = self.now()
                if now >= until and (
                    not any(t.compensating for t in pending)
                    or now >= until + self.opts.settle_wait_s
                ):
                    break
            await asyncio.sleep(POLL_S)
        return sorted(oid for oid, t in self.tracked.items() if not t.closed)

    async def _poll(self, service: OrderService) -> None:
        ids = sorted(oid for oid, t in self.tracked.items() if not t.closed)
        if not ids:
            return
        async with service.sessions() as s:
            rows = (await s.execute(select(Order.id, Order.state).where(Order.id.in_(ids)))).all()
        states = {oid: state for oid, state in rows}
        terminal = [oid for oid in ids if states.get(oid) in TERMINAL]
        statuses = await asyncio.gather(*(self._run_status(service, oid) for oid in terminal))
        for oid, status in zip(terminal, statuses, strict=True):
            t = self.tracked[oid]
            if t.closed or t.retrying or status is None:
                continue  # a retry is under way, or Temporal did not answer
            t.state = states[oid]
            t.compensating = status == "RUNNING"
            t.closed = status != "RUNNING"
            if not self.opts.adversarial:
                continue
            if t.compensating and not t.close_cancelled:
                t.close_cancelled = True
                self._spawn(self._cancel(service, oid, "during_close"))
            if t.closed and t.state == "FAILED" and self._may_retry(t):
                t.retrying = True
                self._spawn(self._retry(service, oid))

    async def _run_status(self, service: OrderService, order_id: str) -> str | None:
        """The latest run's status (RUNNING, COMPLETED, FAILED...); None if unknown."""
        async with self.gate:
            try:
                desc = await service.client.get_workflow_handle(
                    order_workflow_id(order_id)
                ).describe()
            except Exception:
                return None
        return desc.status.name if desc.status is not None else None

    def _may_retry(self, t: _Tracked) -> bool:
        return (
            not t.retries
            and t.retry_attempts < 10
            and self.now() < self.retry_until
            and not any(c["outcome"] == "accepted" for c in t.cancels)
        )

    async def _retry(self, service: OrderService, order_id: str) -> None:
        """Retry a FAILED order (a new run, a payment of its own); refused while it still
        settles, so the next look tries again."""
        t = self.tracked[order_id]
        t.retry_attempts += 1
        try:
            answer = await service.retry_order(order_id)
        except OrderConflict as err:
            t.retry_refusals.append(str(err.extra.get("reason") or err.message)[:120])
            t.closed = False  # look again: it may still be closing
            return
        except Exception as err:
            t.retry_refusals.append(_one_line(err)[:120])
            t.closed = False
            return
        finally:
            t.retrying = False
        at = self.now()
        retry: dict[str, Any] = {"at_s": round(at, 2), "run_id": answer.run_id}
        t.retries.append(retry)
        t.closed = t.compensating = t.close_cancelled = False
        t.state = None
        t.until = at + self.deadline_s + self.opts.grace_s
        self.progress(f"  t={at:5.1f}s retried {order_id}")
        if self.adv_rng.random() < RETRY_CANCEL_SHARE:
            later = at + self.adv_rng.uniform(0.0, min(CANCEL_WITHIN_S, self.deadline_s * 0.75))
            self._spawn(self._cancel_at(service, order_id, later, "random"))
        # The new run waits for its own review, like any order.
        retry.update(
            await self._approve(service, order_id, time.monotonic() + CLIENT_RETRY_BUDGET_S)
        )

    async def _cancel_at(self, service: OrderService, order_id: str, at: float, kind: str) -> None:
        await asyncio.sleep(max(at - self.now(), 0.0))
        await self._cancel(service, order_id, kind)

    async def _cancel(self, service: OrderService, order_id: str, kind: str) -> None:
        """Cancel the order's latest run; its answer recorded (accepted, refused, unknown).

        A cancel whose answer was lost (an outage) is sent again; a refusal then may be
        the answer to the first one having been accepted, so it counts as unknown."""
        t = self.tracked[order_id]
        record: dict[str, Any] = {
            "kind": kind,
            "at_s": round(self.now(), 2),
            "run": len(t.retries) + 1,
            "outcome": "unknown",
        }
        t.cancels.append(record)
        give_up = time.monotonic() + ACTION_RETRY_BUDGET_S
        delay, attempts = 0.5, 0
        while True:
            attempts += 1
            record["attempts"] = attempts
            try:
                view = await service.cancel(order_id, reason="chaos", requested_by="chaos")
                record.update(outcome="accepted", state=view.state)
                return
            except (OrderConflict, OrderNotFound) as err:
                record.update(
                    outcome="refused" if attempts == 1 else "unknown", detail=err.message[:160]
                )
                return
            except Exception as err:
                record["error"] = _one_line(err)[:160]
                if time.monotonic() > give_up:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

    async def _reconcile(self, client: Client, order_ids: list[str]) -> dict[str, Any]:
        """The reconciliation's report (app/service/reconciliation.py) for the run's orders
        (so an older run's leftovers on the same stack do not decide this one), or why
        there is none."""
        try:
            module = importlib.import_module("app.service.reconciliation")
        except ImportError as err:
            return {"error": f"no reconciliation to run: {_one_line(err)}"}
        reconcile_now = module.reconcile_now
        scoped = "order_ids" in inspect.signature(reconcile_now).parameters
        try:
            report = await (
                reconcile_now(client, self.client_settings, order_ids=order_ids)
                if scoped
                else reconcile_now(client, self.client_settings)
            )
        except Exception as err:
            return {"error": _one_line(err)}
        out = dict(report) if isinstance(report, dict) else {"report": report}
        out["chaos_scope"] = f"the run's {len(order_ids)} orders" if scoped else "every order"
        return out

    # --- the verdict -----------------------------------------------------------------------

    async def _facts(self, service: OrderService, ids: list[str]) -> dict[str, OrderFacts]:
        facts = {
            oid: OrderFacts(
                order_id=oid, payment_id=self.planned[oid].payment_id, free=self.planned[oid].free
            )
            for oid in ids
        }
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
        for provider, ledger in (
            ("gateway", self.gateway_engine),
            ("carrier", self.carrier_engine),
        ):
            for oid, keys in (await ledger_keys(ledger, provider, ids)).items():
                facts[oid].keys += keys
        for oid, t in self.tracked.items():
            facts[oid].cancels = t.cancels

        async def outcome(f: OrderFacts) -> None:
            async with self.gate:
                f.workflow = await _workflow_outcome(service.client, order_workflow_id(f.order_id))
            # Closed in our database, its workflow still refunding or cancelling bookings.
            f.settling = f.state in TERMINAL and f.workflow.get("status") == "RUNNING"

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
        held = {self.planned[oid].payment_id for oid in live}
        violations: dict[str, list[dict[str, Any]]] = {kind: [] for kind in VIOLATIONS}
        refused = []
        for s in started:
            if s["started"]:
                continue
            planned = self.planned[s["order_id"]]
            if s.get("refused") == "payment_id" and planned.payment_id in held:
                refused.append(s["order_id"])  # the payment id is another order's: expected
                continue
            violations["not_started"].append(
                {"order_id": s["order_id"], "detail": s.get("start_error")}
            )
        states: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        payments: Counter[str] = Counter()
        ledger: Counter[str] = Counter()
        settling = []
        for oid in sorted(live):
            f = facts[oid]
            ledger["gateway_charges"] += len(f.gateway)
            ledger["gateway_refunds"] += sum(len(c["refunds"]) for c in f.gateway)
            ledger["carrier_dispatches"] += len(f.carrier)
            ledger["carrier_cancelled"] += sum(1 for b in f.carrier if b["cancelled"])
            state = f.state or "NO_ROW"
            if state in TERMINAL:
                states[state] += 1
                if state != "COMPLETED":
                    reasons[f"{state}:{(f.db or {}).get('reason')}"] += 1
                elif f.free:
                    payments["free_completed"] += 1
            for p in f.payments:
                if p["order_id"] == oid:
                    payments[p["status"]] += 1
            for kind, details in check_order(f).items():
                violations[kind].append({"order_id": oid, "detail": "; ".join(details)})
            if f.settling:
                settling.append(
                    {
                        "order_id": oid,
                        "state": f.state,
                        "pending": f.workflow.get("pending", []),
                        "until_then": {k: "; ".join(v) for k, v in deferred_checks(f).items()},
                    }
                )
        for oid, details in check_across(facts[oid] for oid in sorted(live)).items():
            violations["shared_keys"].append({"order_id": oid, "detail": "; ".join(details)})
        not_terminal = sorted({v["order_id"] for v in violations["not_terminal"]})
        count = sum(len(v) for v in violations.values())
        summary: dict[str, Any] = {
            "ok": count == 0,
            "seed": self.opts.seed,
            "orders_requested": self.opts.orders,
            "orders_started": len(live),
            "orders_approved": sum(1 for s in started if s.get("approved")),
            "fault_profile": self.opts.fault_profile,
            "order_deadline_s": self.deadline_s,
            "grace_s": self.opts.grace_s,
            "settle_wait_s": self.opts.settle_wait_s,
            "terminal": {s: states.get(s, 0) for s in ("COMPLETED", "CANCELLED", "FAILED")},
            "reasons": dict(reasons.most_common()),
            "not_terminal_after_deadline": not_terminal,
            "still_open_when_settling_stopped": open_ids,
            # Closed, compensation still in flight after the wait: not judged here (what
            # it has yet to set right is under until_then); the reconciliation's to judge.
            "settling": settling,
            "payments": {
                # every payment row but a free order's is one charge
                "charged": sum(payments[s] for s in ("charged", "refunded")),
                "refunded": payments.get("refunded", 0),
                "kept": payments.get("charged", 0),
                "not_due": payments.get("not_due", 0),
                "free_completed": payments.get("free_completed", 0),
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
        if self.opts.adversarial:
            summary["adversarial"], summary["adversarial_outcomes"] = self._mix(started, refused)
        return summary

    def _mix(
        self, started: list[dict[str, Any]], refused: list[str]
    ) -> tuple[dict[str, int], dict[str, Any]]:
        """The mix as it happened: a count per kind, and how each kind came out."""
        planned = list(self.planned.values())
        live = {s["order_id"] for s in started if s["started"]}
        cancels = [c for t in self.tracked.values() for c in t.cancels]
        random_cancels = [c for c in cancels if c["kind"] == "random"]
        close_cancels = [c for c in cancels if c["kind"] == "during_close"]
        retried = {oid: t for oid, t in self.tracked.items() if t.retries}
        counts = {
            "reused_payment_ids": sum(1 for o in planned if "reused_payment_ids" in o.tags),
            "dotted_ids": sum(1 for o in planned if "dotted_ids" in o.tags),
            "retry_like_pairs": sum(1 for o in planned if "retry_like_pairs" in o.tags),
            "zero_totals": sum(1 for o in planned if "zero_totals" in o.tags),
            "cancels": len(random_cancels),
            "cancels_during_close": len(close_cancels),
            "retries": sum(len(t.retries) for t in retried.values()),
        }
        assert set(counts) == set(KINDS)
        reusers = [o.order_id for o in planned if "reused_payment_ids" in o.tags]
        outcomes = {
            # A refusal may hit either order of a pair racing for one payment id.
            "payment_id_refused": refused,
            "payment_id_reusers_started": sorted(oid for oid in reusers if oid in live),
            "cancels": dict(Counter(c["outcome"] for c in random_cancels)),
            "cancels_during_close": dict(Counter(c["outcome"] for c in close_cancels)),
            "retried": {oid: t.state or "open" for oid, t in sorted(retried.items())},
            "retry_refusals": sum(len(t.retry_refusals) for t in self.tracked.values()),
            "free_orders": sorted(o.order_id for o in planned if o.free),
            "failing_by_design": sorted(o.order_id for o in planned if "fails_by_design" in o.tags),
            "pairs": sorted(
                f"{o.of} / {o.order_id}" for o in planned if "retry_like_pairs" in o.tags
            ),
        }
        return counts, outcomes

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
                "keys": f.keys,
                "cancels": f.cancels,
                "retries": self.tracked[oid].retries if oid in self.tracked else [],
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


async def _has_run(client: Client, order_id: str) -> bool:
    """Whether the order has a workflow run (its start got through after all)."""
    try:
        await client.get_workflow_handle(order_workflow_id(order_id)).describe()
    except RPCError as err:
        return err.status != RPCStatusCode.NOT_FOUND
    return True


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
    settings: StackSettings, opts: ChaosOptions, progress: Callable[[str], None] = lambda _: None
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
    if summary.get("settling"):
        shown = ", ".join(
            f"{s['order_id']} ({'; '.join(s['pending']) or s['state']})"
            for s in summary["settling"][:5]
        )
        lines.append(f"still settling (compensation in flight, not judged): {shown}")
    if "adversarial" in summary:
        mix = ", ".join(f"{kind} {n}" for kind, n in summary["adversarial"].items())
        lines.append(f"adversarial: {mix}")
    if "reconciliation" in summary:
        rec = summary["reconciliation"]
        lines.append(
            f"reconciliation: {rec['error']}"
            if "error" in rec
            else f"reconciliation: {_count(rec.get('findings'))} findings, "
            f"{_count(rec.get('healed'))} healed, {_count(rec.get('unresolved'))} unresolved"
        )
    for kind, items in summary["violations"].items():
        if items:
            shown = "; ".join(f"{i['order_id']}: {i['detail']}" for i in items[:5])
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"VIOLATION {kind} x{len(items)}: {shown}{more}")
    lines.append(
        "all invariants hold"
        if summary["ok"]
        else f"{summary['violation_count']} violations"
        + (
            ", the reconciliation did not resolve everything"
            if summary["violation_count"] == 0
            else ""
        )
        + "; --json shows events and histories"
    )
    return lines
