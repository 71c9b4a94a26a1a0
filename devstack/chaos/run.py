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
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from app.orders.messages import (
    DEMO_ADDRESS,
    ORDER_DEADLINE_S,
    SIGNAL_APPROVE,
    TERMINAL_STATES,
    ApproveRequest,
    order_workflow_id,
)
from app.orders.providers.wiring import ledger_engine
from app.platform.db import engine_from_settings, session_factory
from app.platform.tables import Order
from app.platform.temporal import connect_client, runtime_with_core_logs
from app.service.errors import InvalidInput, OrderConflict, OrderNotFound
from app.service.layer import ServiceLayer
from app.service.orders import OrderService
from devstack.chaos.adversarial import (
    CANCEL_WITHIN_S,
    RETRY_CANCEL_SHARE,
    PlannedOrder,
    plain_orders,
    plan_orders,
)
from devstack.chaos.facts import Ledgers, Tracked, gather_facts, one_line
from devstack.chaos.faults import (
    ChaosOptions,
    PlannedFault,
    execute_fault,
    heal,
    plan_faults,
    stopped_services,
)
from devstack.chaos.report import RunRecord, count, evidence, summarize
from devstack.stack.addresses import client_settings, stack_config
from devstack.stack.config import StackSettings

# A start or approval that fails (Temporal or PostgreSQL restarting) is retried this long:
# longer than any planned outage, so a lost order means something really broke.
CLIENT_RETRY_BUDGET_S = 90.0
# How often the run looks at its orders while it waits (closing ones, FAILED ones).
POLL_S = 0.5
# A cancel or retry that met an outage is sent again for this long.
ACTION_RETRY_BUDGET_S = 20.0


class ChaosError(Exception):
    """The run cannot start (stack not running, fault injection refused...)."""


def _names_payment(err: OrderConflict) -> bool:
    """A start refused because its payment id belongs to another order."""
    return err.field == "payment_id" or err.extra.get("reason") == "payment_id"


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
        self.tracked: dict[str, Tracked] = {}
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

    def _refuse_unless_ready(self) -> None:
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

    def _planned_orders(self, prefix: str, window: float) -> list[PlannedOrder]:
        """The orders and when each starts (within `window`), from the seed."""
        if not self.opts.adversarial:
            return plain_orders(prefix, self.opts.orders, window)
        mix = random.Random(f"mix-{self.opts.seed}")
        return plan_orders(prefix, self.opts.orders, window, self.deadline_s, mix)

    async def run(self) -> dict[str, Any]:
        self._refuse_unless_ready()
        rng = random.Random(self.opts.seed)
        plan = plan_faults(self.opts, rng)
        prefix = self.opts.id_prefix or (
            f"chaos-{self.opts.seed}-{datetime.now(UTC):%H%M%S}{secrets.token_hex(2)}"
        )
        window = self.opts.duration_s / 2
        orders = self._planned_orders(prefix, window)

        # Core (Rust) logs through Python logging, i.e. stderr: left alone they land on
        # stdout during the Temporal restart and corrupt `--json`.
        client = await connect_client(self.client_settings, runtime=runtime_with_core_logs())
        engine = engine_from_settings(self.client_settings, pool_size=10)
        cs = self.client_settings
        ledgers = Ledgers(
            gateway=ledger_engine(cs, cs.gateway_database_url_plain, pool_size=2),
            carrier=ledger_engine(cs, cs.carrier_database_url_plain, pool_size=2),
        )
        services = ServiceLayer.build(client, session_factory(engine), self.client_settings)
        service = services.orders
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
            facts = await gather_facts(service, orders, self.tracked, ledgers, self.gate)
            record = RunRecord(
                self.opts,
                self.deadline_s,
                {o.order_id: o for o in orders},
                self.tracked,
                plan,
                started,
                faults,
                healed,
            )
            summary = summarize(record, facts, open_ids)
            if self.opts.adversarial:
                self.progress("  reconciling")
                reconciliation = await self._reconcile(client, sorted(self.tracked))
                summary["reconciliation"] = reconciliation
                unresolved = count(reconciliation.get("unresolved"))
                if "error" in reconciliation or unresolved:
                    summary["ok"] = False
            if not summary["ok"]:
                summary["evidence"] = await evidence(
                    services.inspection, summary, facts, self.tracked
                )
        finally:
            following.cancel()
            for task in list(self.actions):
                task.cancel()
            await engine.dispose()
            await ledgers.gateway.dispose()
            await ledgers.carrier.dispose()
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
                    error = one_line(err)
                    break
                started = True  # an earlier attempt got through and its answer was lost
            except InvalidInput as err:
                error = one_line(err)
                break
            except Exception as err:  # Temporal or PostgreSQL restarting: retry
                error = one_line(err)
                if time.monotonic() > give_up:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
        out.update(started=started, start_attempts=attempts, start_error=error)
        if not started:
            return out
        self.tracked[order_id] = Tracked(planned)
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
                    out["approve_error"] = one_line(err)
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
        terminal = [oid for oid in ids if states.get(oid) in TERMINAL_STATES]
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

    def _may_retry(self, t: Tracked) -> bool:
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
            t.retry_refusals.append(one_line(err)[:120])
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
                record["error"] = one_line(err)[:160]
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
            return {"error": f"no reconciliation to run: {one_line(err)}"}
        reconcile_now = module.reconcile_now
        scoped = "order_ids" in inspect.signature(reconcile_now).parameters
        try:
            report = await (
                reconcile_now(client, self.client_settings, order_ids=order_ids)
                if scoped
                else reconcile_now(client, self.client_settings)
            )
        except Exception as err:
            return {"error": one_line(err)}
        out = dict(report) if isinstance(report, dict) else {"report": report}
        out["chaos_scope"] = f"the run's {len(order_ids)} orders" if scoped else "every order"
        return out


async def _has_run(client: Client, order_id: str) -> bool:
    """Whether the order has a workflow run (its start got through after all)."""
    try:
        await client.get_workflow_handle(order_workflow_id(order_id)).describe()
    except RPCError as err:
        return err.status != RPCStatusCode.NOT_FOUND
    return True


async def run_chaos(
    settings: StackSettings, opts: ChaosOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the chaos scenario against the embedded stack `settings` describe."""
    return await _Run(settings, opts, progress).run()
