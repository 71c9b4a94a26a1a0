"""The `Reconcile` activity: gather our side and the providers' exports for a window of
orders, find what disagrees (audit.py), heal the safe findings, store the report.

What it never does: read the providers' databases (only their clients' exports), or heal
an order whose workflow is running (a running order is still settling: its own
compensation is at work, and two actors on one charge is what this job must never be).
A heal takes the order's row lock (so no retry of the order can start meanwhile), checks
the workflow again, re-reads both sides for that one order, and acts only if the finding
still stands, with the key, operation and amount the order's compensation uses: whichever
of the two gets there first moves the money, the other gets the same answer back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import String, any_, bindparam, delete, insert, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from app.orders.activities.common import now_utc, record_event
from app.orders.activities.compensation import mark_refunded, record_lost_charge_refunded
from app.orders.faults import CallInfo
from app.orders.identity import first_reference, retry_reference
from app.orders.messages import (
    ORDER_WORKFLOW,
    TERMINAL_STATES,
    EventType,
    order_workflow_id,
)
from app.orders.providers.api import (
    BookingRecord,
    CancelShipmentsRequest,
    Carrier,
    PaymentGateway,
    ProviderRefusal,
    RefundRequest,
    SettledCharge,
    refund_key,
)
from app.orders.reconciliation.audit import (
    KINDS,
    Finding,
    Heal,
    OrderFacts,
    PaymentFacts,
    audit_order,
    stuck,
)
from app.orders.reconciliation.messages import RECONCILE_ACTIVITY, ReconcileInput
from app.platform.settings import Settings
from app.platform.tables import (
    Order,
    Payment,
    ReconciliationFinding,
    ReconciliationRun,
)

log = logging.getLogger("app.orders.reconciliation")

T = TypeVar("T")

# The providers' clocks are not ours: their exports are read from this much earlier.
EXPORT_SKEW = timedelta(minutes=10)
# A non-terminal order untouched this long is checked for a workflow that is gone.
STUCK_AFTER = timedelta(minutes=2)
# Each heal's provider call: bounded, and tried a few times (a flaky provider); what does
# not land stays a finding, for the next run.
HEAL_CALL_TIMEOUT_S = 3.0
HEAL_CALL_TRIES = 5
# How many orders are described (Temporal) or healed at once.
DESCRIBE_CONCURRENCY = 16
HEAL_CONCURRENCY = 4
# A run heals at most this many orders (each heal may wait on a provider): the rest stay
# findings, healed by the next runs, so one run stays within its timeout after an outage.
MAX_HEALED_ORDERS = 500
# The report a run returns lists at most this many findings; it stores at most
# MAX_STORED_FINDINGS (the counts are always complete).
MAX_REPORTED_FINDINGS = 1000
MAX_STORED_FINDINGS = 10_000
MAX_REPORTED_SETTLING = 100
HEARTBEAT_S = 5.0
# The audit is CPU (about 0.1 ms an order) on the orders worker's event loop: it lets the
# worker's orders run between chunks of this many instead of stalling them for the whole
# window (0.26 s at 3,000 orders).
AUDIT_CHUNK = 100


def _cents(amount: Decimal | None) -> int | None:
    return None if amount is None else int((amount * 100).to_integral_value())


def _aware(naive_utc: datetime) -> datetime:
    return naive_utc.replace(tzinfo=UTC)


def _iso(naive_utc: datetime) -> str:
    return _aware(naive_utc).isoformat()


def _order_facts(row: Any) -> OrderFacts:
    """An order as the audit reads it, from its row or a select of its columns."""
    return OrderFacts(
        order_id=row.id,
        state=row.state,
        step=row.step,
        payment_id=row.payment_id,
        amount_cents=_cents(row.amount),
        tracking_number=row.tracking_number,
        created_at=row.created_at,
        updated_at=row.updated_at,
        settled_at=row.settled_at,
    )


def _carrier_orders(order_id: str, order: OrderFacts | None) -> list[str]:
    """Every carrier order the order's runs shipped under (retry 1 up to the current)."""
    last = order.retry if order is not None else 1
    return [retry_reference(order_id, n) for n in range(1, last + 1)]


@dataclass
class Facts:
    """Both sides of a window: our rows and the providers' exports."""

    orders: dict[str, OrderFacts]
    payments: dict[str, PaymentFacts]
    charges: list[SettledCharge]
    bookings: list[BookingRecord]
    charges_by_order: dict[str, list[SettledCharge]] = field(init=False)
    bookings_by_order: dict[str, list[BookingRecord]] = field(init=False)

    def __post_init__(self) -> None:
        self.charges_by_order = defaultdict(list)
        for c in self.charges:
            self.charges_by_order[c.order_id].append(c)
        self.bookings_by_order = defaultdict(list)
        for b in self.bookings:
            self.bookings_by_order[first_reference(b.carrier_order)].append(b)

    def order_ids(self) -> set[str]:
        return set(self.orders) | set(self.charges_by_order) | set(self.bookings_by_order)

    def payments_of(self, order_id: str) -> dict[str, PaymentFacts]:
        """Our rows of the order, and of the payment ids the gateway charged it under."""
        charged = {c.payment_id for c in self.charges_by_order.get(order_id, [])}
        return {
            pid: row
            for pid, row in self.payments.items()
            if row.order_id == order_id or pid in charged
        }

    def audit(self, order_id: str, since: datetime) -> list[Finding]:
        order = self.orders.get(order_id)
        return audit_order(
            order_id,
            order,
            self.payments_of(order_id),
            self.charges_by_order.get(order_id, []),
            self.bookings_by_order.get(order_id, []),
            in_window=order is not None and order.created_at >= since,
        )


class ReconciliationActivities:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        gateway: PaymentGateway,
        carrier: Carrier,
        client: Client,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.gateway = gateway
        self.carrier = carrier
        self.client = client
        self.settings = settings

    @activity.defn(name=RECONCILE_ACTIVITY)
    async def reconcile(self, inp: ReconcileInput) -> dict[str, Any]:
        info = activity.info()
        beating = asyncio.create_task(_heartbeat())
        try:
            run = Run(self, inp, info.workflow_id or "", info.workflow_run_id or "")
            return await run.execute()
        finally:
            beating.cancel()


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_S)


class Run:
    """One reconciliation run."""

    def __init__(
        self, acts: ReconciliationActivities, inp: ReconcileInput, workflow_id: str, run_id: str
    ) -> None:
        self.acts = acts
        self.inp = inp
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.started = now_utc()
        lookback = inp.lookback_s or acts.settings.reconcile_lookback_s
        self.since = self.started - timedelta(seconds=lookback)
        self.export_since = _aware(self.since) - EXPORT_SKEW
        self.scope = sorted(set(inp.order_ids)) if inp.order_ids is not None else None
        # Fault draws of this run's heal calls differ from the last run's (a seeded fault
        # profile would otherwise refuse the same heal on every run).
        self.call_tag = int(time.time())
        self.settling: set[str] = set()
        self.resolved_meanwhile = 0

    # --- gathering ----------------------------------------------------------------------

    async def gather(self, scope: list[str] | None) -> Facts:
        async with self.acts.sessions() as s:
            orders = await _orders(s, self.since, scope)
        settlement = await self.acts.gateway.settlements(self.export_since, scope)
        refs = (
            None
            if scope is None
            else [r for oid in scope for r in _carrier_orders(oid, orders.get(oid))]
        )
        bookings = await self.acts.carrier.bookings(self.export_since, refs)
        facts = Facts(orders, {}, settlement.charges, bookings)
        missing = facts.order_ids() - set(orders)
        async with self.acts.sessions() as s:
            if missing:
                orders.update(await _orders(s, None, sorted(missing)))
            facts.payments = await _payments(
                s, facts.order_ids(), {c.payment_id for c in facts.charges}
            )
        return facts

    # --- the run ------------------------------------------------------------------------

    async def execute(self) -> dict[str, Any]:
        facts = await self.gather(self.scope)
        found: dict[str, list[Finding]] = {}
        for n, oid in enumerate(facts.order_ids()):
            if n % AUDIT_CHUNK == 0:
                await asyncio.sleep(0)
            findings = facts.audit(oid, self.since)
            if findings:
                found[oid] = findings
        stuck_candidates = await self._stuck_candidates(facts)
        statuses = await self._statuses(set(found) | stuck_candidates)
        for oid, status in statuses.items():
            if status == WorkflowExecutionStatus.RUNNING.name:
                self.settling.add(oid)
                found.pop(oid, None)
            elif oid in stuck_candidates:
                found.setdefault(oid, []).append(stuck(facts.orders[oid], status))
        if self.inp.heal:
            await self._heal_all(found)
        findings = sorted(
            (f for fs in found.values() for f in fs),
            key=lambda f: (f.kind, f.order_id, f.reference),
        )
        report = self._report(facts, findings)
        await self._store(report, findings)
        log.info(
            "reconciliation done",
            extra={
                "workflow_id": self.workflow_id,
                "findings": len(findings),
                "healed": report["healed"],
                "unresolved": report["unresolved"],
                "settling": report["settling"],
            },
        )
        return report

    async def _stuck_candidates(self, facts: Facts) -> set[str]:
        """Orders that should have ended by now and may have no workflow left."""
        quiet_since = self.started - STUCK_AFTER
        open_orders = {
            o.order_id
            for o in facts.orders.values()
            if o.state not in TERMINAL_STATES
            and o.updated_at < quiet_since
            and o.created_at >= self.since
        }
        if not open_orders or self.scope is not None:
            return open_orders
        # One listing instead of a describe per open order (visibility may lag: those
        # not listed are described before anything is said about them).
        query = f"WorkflowType = '{ORDER_WORKFLOW}' AND ExecutionStatus = 'Running'"
        try:
            async for wf in self.acts.client.list_workflows(query):
                open_orders.discard(wf.id.removeprefix("order-"))
                if not open_orders:
                    break
        except RPCError as err:
            log.warning(
                "listing running orders failed; describing each",
                extra={"error": type(err).__name__, "status": str(err.status)},
            )
        return open_orders

    async def _statuses(self, order_ids: Iterable[str]) -> dict[str, str | None]:
        gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

        async def one(oid: str) -> tuple[str, str | None]:
            async with gate:
                return oid, await workflow_status(self.acts.client, oid)

        return dict(await asyncio.gather(*(one(oid) for oid in order_ids)))

    # --- healing ------------------------------------------------------------------------

    async def _heal_all(self, found: dict[str, list[Finding]]) -> None:
        gate = asyncio.Semaphore(HEAL_CONCURRENCY)

        async def one(oid: str) -> None:
            async with gate:
                await self._heal_order(oid, found)

        healable = sorted(oid for oid, fs in found.items() if any(f.heal for f in fs))
        for oid in healable[MAX_HEALED_ORDERS:]:
            for f in found[oid]:
                if f.heal is not None:
                    f.detail = f"{f.detail}; not healed by this run (too many), next run"
        await asyncio.gather(*(one(oid) for oid in healable[:MAX_HEALED_ORDERS]))

    async def _heal_order(self, oid: str, found: dict[str, list[Finding]]) -> None:
        """Heal the order's safe findings under its row lock, if they still stand."""
        findings = found[oid]
        async with self.acts.sessions.begin() as s:
            row = (
                await s.execute(select(Order).where(Order.id == oid).with_for_update())
            ).scalar_one_or_none()
            if row is None:
                return
            # The lock keeps a retry from starting; a run still going is settling.
            if await workflow_status(self.acts.client, oid) == WorkflowExecutionStatus.RUNNING.name:
                self.settling.add(oid)
                del found[oid]
                return
            fresh = await self._fresh(s, _order_facts(row))
            now = {f.identity: f for f in fresh.audit(oid, self.since)}
            for finding in [f for f in findings if f.heal is not None]:
                current = now.get(finding.identity)
                if current is None or current.heal != finding.heal:
                    # Settled since the export was read (by the order, or another run).
                    findings.remove(finding)
                    self.resolved_meanwhile += 1
                    continue
                finding.amount_cents = current.amount_cents
                await self._heal(s, row, finding)
            if not findings:
                del found[oid]
            # Every finding of a closed order healed: its compensation is done now.
            elif all(f.healed for f in findings) and _settles(row):
                row.settled_at = now_utc()

    async def _fresh(self, s: AsyncSession, order: OrderFacts) -> Facts:
        """Both sides again, for one order (read under its row lock)."""
        oid = order.order_id
        settlement = await self.acts.gateway.settlements(self.export_since, [oid])
        bookings = await self.acts.carrier.bookings(self.export_since, _carrier_orders(oid, order))
        facts = Facts({oid: order}, {}, settlement.charges, bookings)
        facts.payments = await _payments(s, {oid}, {c.payment_id for c in settlement.charges})
        return facts

    async def _heal(self, s: AsyncSession, row: Order, finding: Finding) -> None:
        """The order's own compensation step for this finding, then its record."""
        oid, ref = row.id, finding.reference
        try:
            if finding.heal == Heal.MARK_SETTLED:
                pass  # recorded with the order's other heals (_heal_order)
            elif finding.heal == Heal.CANCEL_BOOKING:
                cancelled = await self._call(
                    oid, lambda call: self.acts.carrier.cancel(CancelShipmentsRequest(ref), call)
                )
                await record_event(
                    s,
                    oid,
                    EventType.SHIPMENTS_CANCELLED,
                    carrier_order=ref,
                    bookings=[b.tracking_number for b in cancelled],
                    by="reconciliation",
                )
            else:
                request = RefundRequest(refund_key(oid, ref), ref, oid, finding.amount_cents)
                if finding.heal == Heal.REFUND:
                    await self._call(oid, lambda call: self.acts.gateway.refund(request, call))
                    await mark_refunded(s, oid, ref)
                else:
                    refund = await self._call(
                        oid, lambda call: self.acts.gateway.cancel_or_refund(request, call)
                    )
                    if refund is not None:
                        await record_lost_charge_refunded(s, oid, ref, refund)
        except _HealFailed as failed:
            finding.detail = f"{finding.detail}; heal failed: {failed.reason}"
            log.warning(
                "reconciliation could not heal a finding",
                extra={"order_id": oid, "kind": finding.kind, "reason": failed.reason},
            )
            return
        finding.healed = True
        log.warning(
            "reconciliation healed a finding",
            extra={"order_id": oid, "kind": finding.kind, "reference": ref, "heal": finding.heal},
        )

    async def _call(self, order_id: str, call: Callable[[CallInfo], Awaitable[T]]) -> T:
        """A provider call, bounded and tried again on a transient failure (same key, so a
        lost answer is replayed); a refusal is final."""
        reason = ""
        for attempt in range(1, HEAL_CALL_TRIES + 1):
            info = CallInfo(order_id, f"{self.call_tag}.{attempt}", self.inp.fault_profile)
            try:
                return await asyncio.wait_for(call(info), HEAL_CALL_TIMEOUT_S)
            except ProviderRefusal as err:
                raise _HealFailed(f"refused by the provider ({err.code})") from None
            except TimeoutError:
                reason = "the provider did not answer"
            except Exception as err:  # a flaky provider: tried again
                reason = f"the provider failed ({type(err).__name__})"
        raise _HealFailed(reason)

    # --- the report ---------------------------------------------------------------------

    def _report(self, facts: Facts, findings: list[Finding]) -> dict[str, Any]:
        healed = sum(f.healed for f in findings)
        by_kind = dict.fromkeys(map(str, KINDS), 0)
        for f in findings:
            if not f.healed:
                by_kind[f.kind] += 1
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "trigger": self.inp.trigger,
            "heal": self.inp.heal,
            "scope": self.scope,
            "started_at": _iso(self.started),
            "finished_at": _iso(now_utc()),
            "since": _iso(self.since),
            "checked": {
                "orders": len(facts.orders),
                "charges": len(facts.charges),
                "bookings": len(facts.bookings),
            },
            "findings": [f.as_dict() for f in findings[:MAX_REPORTED_FINDINGS]],
            "findings_total": len(findings),
            "healed": healed,
            "unresolved": len(findings) - healed,
            "unresolved_by_kind": by_kind,
            "settling": len(self.settling),
            "settling_orders": sorted(self.settling)[:MAX_REPORTED_SETTLING],
            "resolved_meanwhile": self.resolved_meanwhile,
        }

    async def _store(self, report: dict[str, Any], findings: list[Finding]) -> None:
        """The run and all its findings (again, if an earlier attempt stored them), and
        the reports past RECONCILE_KEEP_DAYS pruned."""
        summary = {k: v for k, v in report.items() if k not in ("findings",)}
        finished = datetime.fromisoformat(report["finished_at"]).replace(tzinfo=None)
        keep = timedelta(days=self.acts.settings.reconcile_keep_days)
        async with self.acts.sessions.begin() as s:
            await s.execute(delete(ReconciliationRun).where(ReconciliationRun.id == self.run_id))
            await s.execute(
                insert(ReconciliationRun).values(
                    id=self.run_id,
                    workflow_id=self.workflow_id,
                    trigger=self.inp.trigger,
                    scoped=self.scope is not None,
                    started_at=self.started,
                    finished_at=finished,
                    since=self.since,
                    healed=report["healed"],
                    unresolved=report["unresolved"],
                    settling=report["settling"],
                    summary_json=summary,
                )
            )
            if findings:
                await s.execute(
                    insert(ReconciliationFinding),
                    [
                        {
                            "run_id": self.run_id,
                            "kind": str(f.kind),
                            "order_id": f.order_id,
                            "reference": f.reference,
                            "detail": f.detail,
                            "safe": f.heal is not None,
                            "healed": f.healed,
                        }
                        for f in findings[:MAX_STORED_FINDINGS]
                    ],
                )
            await s.execute(
                delete(ReconciliationRun).where(ReconciliationRun.finished_at < finished - keep)
            )


def _settles(row: Order) -> bool:
    return row.state in TERMINAL_STATES and row.settled_at is None


class _HealFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def workflow_status(client: Client, order_id: str) -> str | None:
    """The order's workflow's status (RUNNING, COMPLETED, ...); None when Temporal has
    none (never started, or past retention)."""
    try:
        description = await client.get_workflow_handle(order_workflow_id(order_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status.name if description.status is not None else None


_ORDER_COLUMNS = (
    Order.id,
    Order.state,
    Order.step,
    Order.payment_id,
    Order.amount,
    Order.tracking_number,
    Order.created_at,
    Order.updated_at,
    Order.settled_at,
)


def _any(ids: Iterable[str]) -> Any:
    """`= ANY(:array)`: one parameter however many ids (IN would bind one each)."""
    return any_(bindparam(None, sorted(set(ids)), type_=ARRAY(String)))


async def _orders(
    s: AsyncSession, since: datetime | None, order_ids: list[str] | None
) -> dict[str, OrderFacts]:
    q = select(*_ORDER_COLUMNS)
    if since is not None:
        q = q.where(Order.created_at >= since)
    if order_ids is not None:
        q = q.where(Order.id == _any(order_ids))
    return {r.id: _order_facts(r) for r in await s.execute(q)}


async def _payments(
    s: AsyncSession, order_ids: Iterable[str], payment_ids: Iterable[str]
) -> dict[str, PaymentFacts]:
    oids, pids = sorted(set(order_ids)), sorted(set(payment_ids))
    if not oids and not pids:
        return {}
    rows = await s.execute(
        select(Payment.payment_id, Payment.order_id, Payment.status, Payment.amount).where(
            or_(Payment.order_id == _any(oids), Payment.payment_id == _any(pids))
        )
    )
    return {
        r.payment_id: PaymentFacts(r.payment_id, r.order_id, r.status, _cents(r.amount))
        for r in rows
    }
