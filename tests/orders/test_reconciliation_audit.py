"""What the reconciliation decides (app/orders/reconciliation/audit.py), on plain facts:
which run a charge or booking belongs to, what is safe to heal, and with which amount."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.orders.providers.api import BookingRecord, SettledCharge, refund_key
from app.orders.reconciliation.activities import Facts
from app.orders.reconciliation.audit import (
    Finding,
    Heal,
    Kind,
    OrderFacts,
    PaymentFacts,
    audit_order,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0)
OID = "ord.1-x_y"  # every character a client id may hold
PID = "pmt.1"


def order(state: str, payment_id: str = PID, amount: int | None = 1000, **kw: object) -> OrderFacts:
    fields: dict[str, object] = {
        "order_id": OID,
        "state": state,
        "step": "SHIP",
        "payment_id": payment_id,
        "amount_cents": amount,
        "tracking_number": kw.pop("tracking", None),
        "created_at": NOW,
        "updated_at": NOW,
        "settled_at": NOW,
    }
    fields.update(kw)
    return OrderFacts(**fields)  # type: ignore[arg-type]


def charge(
    pid: str = PID, amount: int = 1000, refunded: int = 0, keys: tuple[str, ...] = ()
) -> SettledCharge:
    return SettledCharge(
        f"ch-{pid}-{amount}-{refunded}", pid, OID, amount, refunded, "k", datetime.now(UTC), keys
    )


def booking(ref: str = OID, tracking: str = "T1", cancelled: bool = False) -> BookingRecord:
    return BookingRecord(tracking, ref, "k", cancelled, datetime.now(UTC))


def row(
    pid: str = PID, status: str = "charged", amount: int = 1000, oid: str = OID
) -> PaymentFacts:
    return PaymentFacts(pid, oid, status, amount)


def audit(
    o: OrderFacts | None,
    payments: list[PaymentFacts] = (),  # type: ignore[assignment]
    charges: list[SettledCharge] = (),  # type: ignore[assignment]
    bookings: list[BookingRecord] = (),  # type: ignore[assignment]
    in_window: bool = True,
) -> list[tuple[str, str, Heal | None, int]]:
    found: list[Finding] = audit_order(
        OID, o, {p.payment_id: p for p in payments}, charges, bookings, in_window
    )
    return sorted((f.kind, f.reference, f.heal, f.amount_cents) for f in found)


def test_a_completed_order_paid_and_booked_is_clean() -> None:
    done = order("COMPLETED", tracking="T1")
    assert audit(done, [row()], [charge()], [booking()]) == []


def test_free_orders_need_no_charge_but_must_not_have_one() -> None:
    free = order("COMPLETED", amount=0, tracking="T1")
    assert audit(free, [row(status="not_due", amount=0)], [], [booking()]) == []
    assert audit(free, [], [charge()], [booking()]) == [
        (Kind.AMOUNT_MISMATCH, PID, None, 0),
        (Kind.PAYMENT_MISMATCH, PID, None, 0),
    ]


def test_ended_runs_heal_the_way_their_compensation_would() -> None:
    cancelled = order("CANCELLED")
    # Our row records the charge: refund of the row's amount.
    assert audit(cancelled, [row()], [charge()]) == [
        (Kind.CHARGED_NOT_REFUNDED, PID, Heal.REFUND, 1000)
    ]
    # No row (the charge's answer was lost): cancel_or_refund of the order's amount.
    assert audit(cancelled, [], [charge()]) == [
        (Kind.CHARGED_NOT_REFUNDED, PID, Heal.CANCEL_OR_REFUND, 1000)
    ]
    # Amounts that disagree are for a person, never refunded by guess.
    assert audit(cancelled, [row(amount=900)], [charge()]) == [(Kind.AMOUNT_MISMATCH, PID, None, 0)]
    assert audit(cancelled, [], [charge(refunded=400)]) == [(Kind.AMOUNT_MISMATCH, PID, None, 0)]
    # Refunded in full at the gateway: consistent once our row says so.
    assert audit(cancelled, [row(status="refunded")], [charge(refunded=1000)]) == []


def test_a_refund_we_did_not_record_is_replayed_only_under_our_key() -> None:
    failed = order("FAILED")
    ours = refund_key(OID, PID)
    assert audit(failed, [row()], [charge(refunded=1000, keys=(ours,))]) == [
        (Kind.PAYMENT_MISMATCH, PID, Heal.REFUND, 1000)
    ]
    assert audit(failed, [row()], [charge(refunded=1000, keys=("someone-else",))]) == [
        (Kind.PAYMENT_MISMATCH, PID, None, 1000)
    ]
    assert audit(failed, [], [charge(refunded=1000, keys=(ours,))]) == [
        (Kind.PAYMENT_MISMATCH, PID, Heal.CANCEL_OR_REFUND, 1000)
    ]


def test_another_orders_payment_id_is_refunded_as_compensation_does() -> None:
    # The payment id's row belongs to another order: this order's charge under it is
    # refunded with cancel_or_refund (no row of ours), and never recorded as ours.
    failed = order("FAILED")
    theirs = row(oid="someone-else")
    assert audit(failed, [theirs], [charge()]) == [
        (Kind.CHARGED_NOT_REFUNDED, PID, Heal.CANCEL_OR_REFUND, 1000)
    ]
    assert audit(failed, [theirs], [charge(refunded=1000)]) == []


def test_a_retried_orders_earlier_runs_are_ended_its_current_run_is_not() -> None:
    retry = f"{PID}#r2"
    done = order("COMPLETED", payment_id=retry, tracking="T2")
    earlier_kept = charge(PID)
    current = charge(retry)
    bookings = [booking(OID, "T1"), booking(f"{OID}#r2", "T2")]
    assert audit(done, [row(PID), row(retry)], [earlier_kept, current], bookings) == [
        (Kind.BOOKING_NOT_COMPLETED, OID, Heal.CANCEL_BOOKING, 0),
        (Kind.CHARGED_NOT_REFUNDED, PID, Heal.REFUND, 1000),
    ]
    # A later reference than the current run's is no run of the order: for a person.
    odd = [charge(f"{PID}#r3")]
    assert audit(done, [row(retry)], [current, *odd], [booking(f"{OID}#r2", "T2")]) == [
        (Kind.PAYMENT_MISMATCH, f"{PID}#r3", None, 0)
    ]


def test_a_dotted_order_name_is_another_order_not_a_retry() -> None:
    # `<id>.r2` is a legal client id of another order; `<id>#r2` is this order's retry.
    facts = Facts(
        {},
        {},
        [charge(PID), charge(f"{PID}#r2")],
        [booking(OID), booking(f"{OID}.r2", "T9"), booking(f"{OID}#r2", "T2")],
    )
    assert {
        oid: [b.tracking_number for b in bs] for oid, bs in facts.bookings_by_order.items()
    } == {
        OID: ["T1", "T2"],
        f"{OID}.r2": ["T9"],
    }
    assert sorted(facts.order_ids()) == [OID, f"{OID}.r2"]


def test_completed_orders_without_their_money_or_parcel() -> None:
    done = order("COMPLETED", tracking="T1")
    assert audit(done, [row()], [], [booking()]) == [
        (Kind.COMPLETED_UNPAID, PID, None, 0),
        (Kind.PAYMENT_MISMATCH, PID, None, 0),
    ]
    assert audit(done, [row()], [charge(refunded=1000)], [booking()]) == [
        (Kind.COMPLETED_UNPAID, PID, None, 0)
    ]
    assert audit(done, [row()], [charge()], [booking(cancelled=True)]) == [
        (Kind.BOOKING_MISMATCH, OID, None, 0)
    ]
    assert audit(done, [row()], [charge()], []) == [(Kind.BOOKING_MISMATCH, OID, None, 0)]
    # Outside the window the exports may just not reach back: absence proves nothing.
    assert audit(done, [row()], [], [], in_window=False) == []


def test_double_charges_and_unknown_orders_are_for_a_person() -> None:
    done = order("COMPLETED", tracking="T1")
    assert audit(done, [row()], [charge(), charge(refunded=1000)], [booking()]) == [
        (Kind.DOUBLE_CHARGE, PID, None, 0)
    ]
    assert audit(None, [], [charge()], [booking()]) == [
        (Kind.UNKNOWN_ORDER, OID, None, 0),
        (Kind.UNKNOWN_ORDER, PID, None, 0),
    ]
    # Refunded in full, or cancelled: nothing kept, nothing ships.
    assert audit(None, [], [charge(refunded=1000)], [booking(cancelled=True)]) == []


def test_a_refunded_charge_under_an_older_schemes_reference_is_settled() -> None:
    # Retried before `#r<N>` (`<payment id>.r2`): the first run's charge, refunded and
    # recorded so, is no finding; kept, it is one for a person.
    legacy = f"{PID}.r2"
    done = order("COMPLETED", payment_id=legacy, tracking="T1")
    first = row(PID, status="refunded")
    assert (
        audit(done, [first, row(legacy)], [charge(PID, refunded=1000), charge(legacy)], [booking()])
        == []
    )
    assert audit(done, [row(PID), row(legacy)], [charge(PID), charge(legacy)], [booking()]) == [
        (Kind.PAYMENT_MISMATCH, PID, None, 0)
    ]


def test_a_closed_order_with_nothing_left_is_settled_when_its_record_is_missing() -> None:
    cut_off = order("FAILED", settled_at=None)
    assert audit(cut_off, [], [], []) == [(Kind.UNSETTLED, OID, Heal.MARK_SETTLED, 0)]
    assert audit(order("FAILED", settled_at=NOW), [], [], []) == []
    # Other findings say why it is not settled; healed, they settle it (the activity).
    assert audit(cut_off, [row()], [charge()]) == [
        (Kind.CHARGED_NOT_REFUNDED, PID, Heal.REFUND, 1000)
    ]
    # Outside the window the exports may not reach its charge: nothing is said.
    assert audit(cut_off, [], [], [], in_window=False) == []


def test_orders_in_flight_are_not_judged() -> None:
    for state in ("RECEIVED", "VALIDATED", "PAID", "PENDING"):
        assert audit(order(state), [row()], [charge()], [booking()]) == [], state
