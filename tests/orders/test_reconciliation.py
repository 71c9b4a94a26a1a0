"""The scheduled reconciliation on the real dev server and PostgreSQL.

Each finding kind is seeded by writing our rows and the provider's ledger directly (no
whole orders: seconds, not minutes), then found, healed once across two runs when it is
safe, and reported otherwise. The schedule is created, kept idempotently and triggered
(the time-skipping server has no Schedules). Hostile cases: two runs at once, a heal and
the order's own compensation asking the gateway with the same key, an order retried (its
earlier run's charge), free orders, ids with dots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text, update
from temporalio.client import ScheduleHandle, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode

from app.orders.faults import CallInfo
from app.orders.messages import ORDER_WORKFLOW, EventType, order_workflow_id
from app.orders.providers.api import ChargeRequest, RefundRequest, charge_key, refund_key
from app.orders.reconciliation.messages import SCHEDULE_ID
from app.platform.tables import Event, Order, Payment, ReconciliationRun
from app.service.inputs import order_input
from app.service.reconciliation import ensure_schedule, latest_report, reconcile_now
from tests.helpers import ADDRESS, Running, eventually, serving, wait_for_step

pytestmark = pytest.mark.integration

OFF = "off"  # the seeding calls' fault profile
AMOUNT = 1999


def new_id(kind: str) -> str:
    # Dots, dashes and underscores: every character a client id may hold.
    return f"rec.{kind}_{uuid.uuid4().hex[:8]}"


def naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


# --- seeding: our rows, and the providers' ledgers written directly -------------------------


async def seed_order(
    running: Running,
    order_id: str,
    state: str,
    *,
    payment_id: str | None = None,
    amount_cents: int = AMOUNT,
    tracking: str | None = None,
    payment_status: str | None = None,
    payment_cents: int | None = None,
    idle_for: timedelta = timedelta(0),
    settled: bool | None = None,
) -> str:
    """Our row (and payment row). Settled as the order's own path would leave it: a
    COMPLETED order at its dispatch; a CANCELLED or FAILED one only when told (these are
    seeded as if their compensation was cut off)."""
    payment_id = payment_id or f"pmt.{order_id}"
    now = naive(datetime.now(UTC))
    settled = state == "COMPLETED" if settled is None else settled
    async with running.sessions() as s, s.begin():
        s.add(
            Order(
                id=order_id,
                state=state,
                step="SHIP" if state == "COMPLETED" else "PAY",
                payment_id=payment_id,
                amount=Decimal(amount_cents) / 100,
                tracking_number=tracking,
                address_json=ADDRESS,
                created_at=now - idle_for,
                updated_at=now - idle_for,
                settled_at=now if settled else None,
            )
        )
        await s.flush()
        if payment_status is not None:
            cents = AMOUNT if payment_cents is None else payment_cents
            s.add(
                Payment(
                    payment_id=payment_id,
                    order_id=order_id,
                    status=payment_status,
                    amount=Decimal(cents) / 100,
                    gateway_ref="ch_seeded",
                )
            )
    return payment_id


async def seed_charge(
    running: Running,
    order_id: str,
    payment_id: str,
    amount_cents: int = AMOUNT,
    *,
    refunded_cents: int = 0,
    retry: int = 1,
) -> str:
    """A charge in the gateway's own ledger (as if its answer never reached us)."""
    charge_id = f"ch_{uuid.uuid4().hex[:12]}"
    async with running.providers.gateway.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO charges (charge_id, payment_id, order_id, amount_cents, "
                "refunded_cents, idempotency_key) VALUES (:c, :p, :o, :a, :r, :k)"
            ),
            {
                "c": charge_id,
                "p": payment_id,
                "o": order_id,
                "a": amount_cents,
                "r": refunded_cents,
                "k": f"{charge_key(order_id, payment_id)}:{charge_id}",
            },
        )
    return charge_id


async def seed_booking(running: Running, carrier_order: str, *, cancelled: bool = False) -> str:
    tracking = f"TRK{uuid.uuid4().hex[:10].upper()}"
    async with running.providers.carrier.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bookings (tracking_number, order_id, address, idempotency_key, "
                "cancelled_at) VALUES (:t, :o, CAST(:a AS jsonb), :k, "
                f"{'now()' if cancelled else 'NULL'})"
            ),
            {"t": tracking, "o": carrier_order, "a": json.dumps(ADDRESS), "k": f"seed:{tracking}"},
        )
    return tracking


async def seed_charged(
    running: Running, order_id: str, state: str, *, payment_status: str | None = None
) -> str:
    """Our row of the order (and its payment row, with `payment_status`), and a charge the
    gateway keeps for it."""
    payment_id = await seed_order(running, order_id, state, payment_status=payment_status)
    await seed_charge(running, order_id, payment_id)
    return payment_id


async def seed_booked(running: Running, order_id: str, state: str) -> None:
    """Our row of the order, and a live booking the carrier holds for it."""
    await seed_order(running, order_id, state)
    await seed_booking(running, order_id)


async def seed_shipped(running: Running, order_id: str, **row: Any) -> str:
    """Our row of a COMPLETED order, its parcel booked at the carrier."""
    tracking = await seed_booking(running, order_id)
    return await seed_order(running, order_id, "COMPLETED", tracking=tracking, **row)


async def gateway_charges(running: Running, order_id: str) -> list[dict[str, Any]]:
    async with running.providers.gateway.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.payment_id, c.amount_cents, c.refunded_cents, "
                "array_agg(r.idempotency_key) FILTER (WHERE r.refund_id IS NOT NULL) AS keys, "
                "count(r.refund_id) AS refunds "
                "FROM charges c LEFT JOIN refunds r USING (charge_id) WHERE c.order_id = :o "
                "GROUP BY c.charge_id ORDER BY c.created_at"
            ),
            {"o": order_id},
        )
        return [dict(r._mapping) for r in rows]


async def live_bookings(running: Running, carrier_order: str) -> list[str]:
    async with running.providers.carrier.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT tracking_number FROM bookings WHERE order_id = :o AND cancelled_at IS NULL"
            ),
            {"o": carrier_order},
        )
        return [r.tracking_number for r in rows]


async def payment_status(running: Running, payment_id: str) -> str | None:
    async with running.sessions() as s:
        row = await s.get(Payment, payment_id)
        return row.status if row is not None else None


def kinds_by_order(report: dict[str, Any]) -> dict[str, set[tuple[str, bool]]]:
    out: dict[str, set[tuple[str, bool]]] = {}
    for f in report["findings"]:
        out.setdefault(f["order_id"], set()).add((f["kind"], f["healed"]))
    return out


async def reconcile(running: Running, ids: list[str], **options: Any) -> dict[str, Any]:
    return await reconcile_now(running.client, running.settings, order_ids=ids, **options)


# --- every kind, found, healed once across two runs ------------------------------------------


@dataclasses.dataclass
class Seeded:
    ids: dict[str, str]  # scenario -> order id
    refs: dict[str, str]  # scenario -> payment id or carrier order it is about

    @property
    def order_ids(self) -> list[str]:
        return list(self.ids.values())


async def seed_every_kind(running: Running) -> Seeded:
    ids = {
        name: new_id(name)
        for name in (
            "refund",
            "lost",
            "retried",
            "unpaid",
            "double",
            "amount",
            "booking",
            "mismatch",
            "replay",
            "parcel",
            "unknown",
            "stuck",
            "free",
            "clean",
            "unsettled",
            "settled",
        )
    }
    refs: dict[str, str] = {}
    # Cancelled, our row charged, the gateway keeps it: refunded under the order's key.
    refs["refund"] = await seed_charged(
        running, ids["refund"], "CANCELLED", payment_status="charged"
    )
    # Failed while charging, the answer lost: the gateway's charge only (cancel_or_refund).
    refs["lost"] = await seed_charged(running, ids["lost"], "FAILED")
    # Retried: run 1 (FAILED) kept its charge; run 2 completed with its own.
    first = f"pmt.{ids['retried']}"
    second = f"{first}#r2"
    await seed_order(
        running,
        ids["retried"],
        "COMPLETED",
        payment_id=second,
        payment_status="charged",
        tracking=await seed_booking(running, f"{ids['retried']}#r2"),
    )
    async with running.sessions() as s, s.begin():
        s.add(
            Payment(
                payment_id=first, order_id=ids["retried"], status="charged", amount=Decimal("19.99")
            )
        )
    await seed_charge(running, ids["retried"], first)
    await seed_charge(running, ids["retried"], second, retry=2)
    refs["retried"] = first
    # Completed with no charge at the gateway.
    refs["unpaid"] = await seed_shipped(running, ids["unpaid"], payment_status="charged")
    # Two charges under one payment.
    refs["double"] = await seed_shipped(running, ids["double"], payment_status="charged")
    await seed_charge(running, ids["double"], refs["double"])
    await seed_charge(running, ids["double"], refs["double"])
    # The gateway charged another amount than the order's.
    refs["amount"] = await seed_shipped(running, ids["amount"], payment_status="charged")
    await seed_charge(running, ids["amount"], refs["amount"], 2999)
    # Cancelled, but the carrier holds a live booking (its answer was lost).
    refs["booking"] = ids["booking"]
    await seed_booked(running, ids["booking"], "CANCELLED")
    # Completed and charged at the gateway, but our row says refunded: for a person.
    refs["mismatch"] = await seed_shipped(running, ids["mismatch"], payment_status="refunded")
    await seed_charge(running, ids["mismatch"], refs["mismatch"])
    # Failed; its compensation's refund landed at the gateway, our row still says charged
    # (the run was cut off in between): the refund is asked again, replayed, recorded.
    refs["replay"] = await seed_order(running, ids["replay"], "FAILED", payment_status="charged")
    gateway = running.providers.gateway
    call = CallInfo(ids["replay"], 1, OFF)
    key = refund_key(ids["replay"], refs["replay"])
    await gateway.charge(
        ChargeRequest(
            charge_key(ids["replay"], refs["replay"]), refs["replay"], ids["replay"], AMOUNT
        ),
        call,
    )
    await gateway.refund(RefundRequest(key, refs["replay"], ids["replay"], AMOUNT), call)
    # Completed with tracking number X; the carrier holds Y.
    refs["parcel"] = ids["parcel"]
    await seed_order(
        running, ids["parcel"], "COMPLETED", payment_status="charged", tracking="TRK-NOT-BOOKED"
    )
    await seed_charge(running, ids["parcel"], f"pmt.{ids['parcel']}")
    await seed_booking(running, ids["parcel"])
    # A charge for an order we never heard of.
    refs["unknown"] = f"pmt.{ids['unknown']}"
    await seed_charge(running, ids["unknown"], refs["unknown"])
    # Paid long ago, never ended, and no workflow.
    refs["stuck"] = await seed_order(
        running, ids["stuck"], "PAID", payment_status="charged", idle_for=timedelta(minutes=10)
    )
    await seed_charge(running, ids["stuck"], refs["stuck"])
    # A free order that shipped: nothing was due, nothing charged; no finding.
    await seed_shipped(running, ids["free"], amount_cents=0)
    # A completed, charged, booked order: no finding.
    await seed_shipped(running, ids["clean"], payment_status="charged")
    await seed_charge(running, ids["clean"], f"pmt.{ids['clean']}")
    # Failed before paying, its workflow cut off before it recorded the settlement:
    # nothing at either provider, only the record is missing.
    refs["unsettled"] = ids["unsettled"]
    await seed_order(running, ids["unsettled"], "FAILED")
    # The same, settled: no finding.
    await seed_order(running, ids["settled"], "FAILED", settled=True)
    return Seeded(ids, refs)


EXPECTED = {
    "refund": {("charged_not_refunded", True)},
    "lost": {("charged_not_refunded", True)},
    "retried": {("charged_not_refunded", True)},
    "unpaid": {("completed_unpaid", False), ("payment_mismatch", False)},
    "double": {("double_charge", False)},
    "amount": {("amount_mismatch", False)},
    "booking": {("booking_not_completed", True)},
    "mismatch": {("payment_mismatch", False)},
    "replay": {("payment_mismatch", True)},
    "parcel": {("booking_mismatch", False)},
    "unknown": {("unknown_order", False)},
    "stuck": {("order_stuck", False)},
    "unsettled": {("unsettled", True)},
}
HEALED = {name for name, kinds in EXPECTED.items() if any(healed for _, healed in kinds)}


async def test_every_kind_is_found_and_the_safe_ones_healed_once(running: Running) -> None:
    seeded = await seed_every_kind(running)
    ids, refs = seeded.ids, seeded.refs

    first = await reconcile(running, seeded.order_ids)
    found = kinds_by_order(first)
    assert {name: found.get(oid, set()) for name, oid in ids.items()} == {
        **{name: set() for name in ids},
        **EXPECTED,
    }
    assert first["healed"] == len(HEALED)
    unresolved = sum(len(k) for n, k in EXPECTED.items() if n not in HEALED)
    assert first["unresolved"] == unresolved
    assert first["unresolved_by_kind"]["completed_unpaid"] == 1
    assert first["settling"] == 0

    # The heals, on both sides: one refund each, under the order's own refund key.
    for name in ("refund", "lost", "retried"):
        oid, pid = ids[name], refs[name]
        [charge] = [c for c in await gateway_charges(running, oid) if c["payment_id"] == pid]
        assert (charge["refunded_cents"], charge["refunds"]) == (AMOUNT, 1), name
        assert charge["keys"] == [refund_key(oid, pid)], name
        assert await payment_status(running, pid) == "refunded", name
    # The retried order's current run is untouched.
    current = [c for c in await gateway_charges(running, ids["retried"]) if c["refunds"] == 0]
    assert [c["payment_id"] for c in current] == [f"pmt.{ids['retried']}#r2"]
    assert await payment_status(running, f"pmt.{ids['retried']}#r2") == "charged"
    # The replayed refund moved nothing more, and is recorded now.
    [replayed] = await gateway_charges(running, ids["replay"])
    assert (replayed["refunded_cents"], replayed["refunds"]) == (AMOUNT, 1)
    assert await payment_status(running, refs["replay"]) == "refunded"
    # The booking is cancelled, with the event the compensation writes.
    assert await live_bookings(running, ids["booking"]) == []
    async with running.sessions() as s:
        cancelled = (
            await s.execute(
                select(Event.payload_json).where(
                    Event.order_id == ids["booking"],
                    Event.type == EventType.SHIPMENTS_CANCELLED,
                )
            )
        ).scalar_one()
    assert cancelled["carrier_order"] == ids["booking"] and cancelled["by"] == "reconciliation"
    # Every order whose findings were all healed is settled now (a retry may go on).
    async with running.sessions() as s:
        settled = {
            name: (await s.get(Order, ids[name])).settled_at is not None  # type: ignore[union-attr]
            for name in ("refund", "lost", "booking", "replay", "unsettled", "stuck")
        }
    assert settled == {
        "refund": True,
        "lost": True,
        "booking": True,
        "replay": True,
        "unsettled": True,
        "stuck": False,
    }

    # The second run heals nothing more and still reports what needs a person.
    second = await reconcile(running, seeded.order_ids)
    assert second["healed"] == 0
    assert kinds_by_order(second) == {
        ids[n]: kinds for n, kinds in EXPECTED.items() if n not in HEALED
    }
    for name in ("refund", "lost", "retried", "replay"):
        charges = await gateway_charges(running, ids[name])
        assert sum(c["refunds"] for c in charges) == 1, name

    # Stored. GET /reconciliation and the gauge show the latest full run: a run limited to
    # some orders is no report of the whole.
    async with serving(running.settings) as api:
        before = (await api.get("/reconciliation")).json()
        assert before["run_id"] != second["run_id"]
        full = await reconcile_now(running.client, running.settings, heal=False)
        response = await api.get("/reconciliation", params={"limit": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["run_id"], body["unresolved"]) == (full["run_id"], full["unresolved"])
        shown = {(f["order_id"], f["kind"]) for f in body["findings"]}
        assert {(f["order_id"], f["kind"]) for f in second["findings"]} <= shown
        assert (await api.get("/reconciliation", params={"bogus": 1})).status_code == 422
        scraped = (await api.get("/metrics")).text
    doubles = full["unresolved_by_kind"]["double_charge"]
    assert doubles >= 1
    assert f'orders_reconciliation_unresolved{{kind="double_charge"}} {doubles:.1f}' in scraped
    assert "orders_reconciliation_last_run_timestamp_seconds " in scraped


async def test_report_only_heals_nothing(running: Running) -> None:
    oid = new_id("dry")
    pid = await seed_charged(running, oid, "CANCELLED", payment_status="charged")
    report = await reconcile(running, [oid], heal=False)
    assert kinds_by_order(report) == {oid: {("charged_not_refunded", False)}}
    assert [c["refunds"] for c in await gateway_charges(running, oid)] == [0]
    assert await payment_status(running, pid) == "charged"


# --- hostile: concurrent runs, the order's own compensation, a running order -----------------


async def test_two_runs_at_once_heal_each_finding_once(running: Running) -> None:
    ids = [new_id("race") for _ in range(3)]
    for oid in ids:
        await seed_charged(running, oid, "FAILED", payment_status="charged")
    lost = new_id("race-lost")
    await seed_charged(running, lost, "CANCELLED")
    booked = new_id("race-booked")
    await seed_booked(running, booked, "CANCELLED")
    scope = [*ids, lost, booked]

    a, b = await asyncio.gather(reconcile(running, scope), reconcile(running, scope))
    healed = [(f["order_id"], f["kind"]) for r in (a, b) for f in r["findings"] if f["healed"]]
    assert sorted(healed) == sorted(
        [(oid, "charged_not_refunded") for oid in [*ids, lost]]
        + [(booked, "booking_not_completed")]
    )
    for oid in [*ids, lost]:
        [charge] = await gateway_charges(running, oid)
        assert (charge["refunded_cents"], charge["refunds"]) == (AMOUNT, 1), oid
    assert await live_bookings(running, booked) == []
    again = await reconcile(running, scope)
    assert (again["findings"], again["healed"]) == ([], 0)


async def test_a_heal_and_the_orders_compensation_move_the_money_once(running: Running) -> None:
    """Both ask the gateway with the same key, operation and amount: whichever comes
    second gets the first's refund back."""
    gateway = running.providers.gateway
    # The heal first, then a straggling compensation (a recorded charge: refund).
    oid = new_id("comp")
    pid = await seed_charged(running, oid, "CANCELLED", payment_status="charged")
    assert (await reconcile(running, [oid]))["healed"] == 1
    late = await gateway.refund(
        RefundRequest(refund_key(oid, pid), pid, oid, AMOUNT), CallInfo(oid, 7, OFF)
    )
    [charge] = await gateway_charges(running, oid)
    assert (charge["refunded_cents"], charge["refunds"]) == (AMOUNT, 1)
    assert late.amount_cents == AMOUNT

    # The compensation first (a lost charge: cancel_or_refund), cut off before it recorded
    # anything; the heal replays it and records it.
    lost = new_id("comp-lost")
    lost_pid = await seed_charged(running, lost, "FAILED")
    first = await gateway.cancel_or_refund(
        RefundRequest(refund_key(lost, lost_pid), lost_pid, lost, AMOUNT),
        CallInfo(lost, 1, OFF),
    )
    assert first is not None
    report = await reconcile(running, [lost])
    assert kinds_by_order(report) == {lost: {("payment_mismatch", True)}}
    [charge] = await gateway_charges(running, lost)
    assert (charge["refunded_cents"], charge["refunds"]) == (AMOUNT, 1)
    async with running.sessions() as s:
        row = await s.get(Payment, lost_pid)
        assert row is not None and (row.status, row.gateway_ref) == ("refunded", first.charge_id)


async def test_a_heal_whose_answers_are_lost_moves_the_money_once(running: Running) -> None:
    """The gateway and carrier act on the heal's first two calls and lose their answers:
    the third call, under the same key, gets the first's answer back."""
    refund = new_id("lost-answer")
    await seed_charged(running, refund, "FAILED", payment_status="charged")
    lost = new_id("lost-answer-void")
    await seed_charged(running, lost, "CANCELLED")
    booked = new_id("lost-answer-booked")
    await seed_booked(running, booked, "FAILED")
    report = await reconcile(running, [refund, lost, booked], fault_profile="lost_first=2")
    assert report["healed"] == 3, report["findings"]
    for oid in (refund, lost):
        [charge] = await gateway_charges(running, oid)
        assert (charge["refunded_cents"], charge["refunds"]) == (AMOUNT, 1), oid
    assert await live_bookings(running, booked) == []
    # A provider that never answers: the heal gives up, the finding stays for the next run.
    stuck = new_id("no-answer")
    stuck_pid = await seed_charged(running, stuck, "FAILED", payment_status="charged")
    failing = await reconcile(running, [stuck], fault_profile="fail=1")
    [finding] = failing["findings"]
    assert (finding["healed"], failing["unresolved"]) == (False, 1)
    assert "heal failed: the provider failed (SimulatedFailure)" in finding["detail"]
    assert await payment_status(running, stuck_pid) == "charged"
    assert (await reconcile(running, [stuck]))["healed"] == 1


async def test_a_running_order_is_settling_not_a_finding(running: Running) -> None:
    oid = new_id("settling")
    pid = await seed_charged(running, oid, "CANCELLED", payment_status="charged")
    # Its workflow runs (on a queue nobody serves: nothing happens): still compensating.
    inp = order_input(running.settings, oid, pid, ADDRESS)
    handle = await running.client.start_workflow(
        ORDER_WORKFLOW, inp, id=order_workflow_id(oid), task_queue=f"idle-{uuid.uuid4().hex[:6]}"
    )
    try:
        report = await reconcile(running, [oid])
        assert (report["findings"], report["settling"], report["settling_orders"]) == ([], 1, [oid])
        assert [c["refunds"] for c in await gateway_charges(running, oid)] == [0]
    finally:
        await handle.terminate(reason="test over")
    healed = await reconcile(running, [oid])
    assert kinds_by_order(healed) == {oid: {("charged_not_refunded", True)}}


async def test_a_real_completed_order_has_no_finding(running: Running) -> None:
    oid = new_id("real")
    await running.service.start_order(oid, f"pmt.{oid}", ADDRESS)
    await wait_for_step(running, oid, "MANUAL_REVIEW")
    await running.service.approve(oid, reviewer="alice")
    result = await running.client.get_workflow_handle(order_workflow_id(oid)).result()
    assert result["state"] == "COMPLETED"
    report = await reconcile(running, [oid])
    assert (report["findings"], report["settling"]) == ([], 0)
    assert report["checked"] == {"orders": 1, "charges": 1, "bookings": 1}


# --- the schedule ----------------------------------------------------------------------------


async def test_schedule_is_created_once_kept_and_triggered(running: Running) -> None:
    client, settings = running.client, running.settings
    handle = client.get_schedule_handle(SCHEDULE_ID)
    # One seeded finding the scheduled (unscoped) run must heal.
    oid = new_id("scheduled")
    pid = await seed_charged(running, oid, "CANCELLED", payment_status="charged")
    slow = settings.model_copy(update={"reconcile_interval_s": 3600.0})
    await _delete(handle)  # another test's, if any
    try:
        assert await ensure_schedule(client, slow) == "created"
        assert await ensure_schedule(client, slow) == "unchanged"
        assert await ensure_schedule(client, settings) == "updated"  # 300 s again
        described = await handle.describe()
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(seconds=300)]

        # Created with a run at once; then triggered by hand, once that one is done.
        async def scheduled_runs() -> list[ReconciliationRun] | None:
            async with running.sessions() as s:
                rows = (
                    await s.execute(
                        select(ReconciliationRun).where(
                            ReconciliationRun.trigger == "schedule",
                            ReconciliationRun.workflow_id.like(f"{SCHEDULE_ID}-%"),
                            ReconciliationRun.started_at
                            >= naive(datetime.now(UTC)) - timedelta(minutes=5),
                        )
                    )
                ).scalars()
                found = list(rows)
                return found or None

        [first] = await eventually(scheduled_runs, timeout=60, what="the first scheduled run")
        assert await payment_status(running, pid) == "refunded"
        await handle.trigger()
        runs = await eventually(
            lambda: _at_least(scheduled_runs, 2), timeout=60, what="the triggered run"
        )
        assert len(runs) >= 2 and first.healed >= 1
        latest = await latest_report(running.sessions, settings)
        assert latest["run_id"] == max(runs, key=lambda r: r.finished_at).id
        assert oid not in {f["order_id"] for f in latest["findings"]}

        # An operator paused it: a new interval is applied, the pause is kept.
        await handle.pause(note="maintenance")
        assert await ensure_schedule(client, slow) == "updated"
        kept = await handle.describe()
        assert kept.schedule.state.paused
        assert [i.every for i in kept.schedule.spec.intervals] == [timedelta(hours=1)]
    finally:
        await _delete(handle)


async def _delete(handle: ScheduleHandle) -> None:
    try:
        await handle.delete()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise


async def _at_least(check: Any, n: int) -> Any:
    found = await check()
    return found if found and len(found) >= n else None


async def test_the_window_is_bounded(running: Running) -> None:
    """An order older than the lookback is not read (a run stays cheap at any history)."""
    old = new_id("old")
    await seed_charged(running, old, "CANCELLED", payment_status="charged")
    three_days_ago = naive(datetime.now(UTC)) - timedelta(days=3)
    async with running.sessions() as s, s.begin():
        await s.execute(
            update(Order)
            .where(Order.id == old)
            .values(created_at=three_days_ago, updated_at=three_days_ago)
        )
    async with running.providers.gateway.engine.begin() as conn:
        await conn.execute(
            text("UPDATE charges SET created_at = now() - interval '3 days' WHERE order_id = :o"),
            {"o": old},
        )
    report = await reconcile(running, [old])
    assert (report["findings"], report["checked"]["orders"]) == ([], 0)
    wider = await reconcile(running, [old], lookback_s=4 * 86400)
    assert kinds_by_order(wider) == {old: {("charged_not_refunded", True)}}
