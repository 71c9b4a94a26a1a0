"""What the reconciliation finds: our orders and payments compared, order by order, with
what the gateway and the carrier report (their settlement and booking exports).

Pure functions over plain facts, no I/O: the activity gathers the facts, this decides.

Every run of an order (the first, then an operator's retries) pays under its own payment
id and ships under its own carrier order (app/orders/identity.py). A run has *ended
without a sale* when the order is CANCELLED or FAILED, or when a later retry replaced it
(an operator retries only a FAILED run): then nothing may stay charged or booked for it.
The current run of a COMPLETED order keeps exactly one charge of the order's amount and
its one booking. Runs still in flight are judged by nobody: the activity drops the
findings of an order whose workflow is running (it is still settling).

Each finding names its kind; the safe ones carry the heal that the order's own
compensation would have made, with the same idempotency key, operation and amount, so a
heal and a compensation can never both move money.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from app.orders.identity import first_reference, retry_of, retry_reference
from app.orders.messages import TERMINAL_STATES, OrderState, PaymentStatus
from app.orders.providers.api import BookingRecord, SettledCharge, refund_key


class Kind(StrEnum):
    # Money kept for a run that ended without a sale (CANCELLED, FAILED, or replaced by a
    # retry). Safe: refunded under the order's own refund key.
    CHARGED_NOT_REFUNDED = "charged_not_refunded"
    # A COMPLETED order (not free) with no charge of its own kept at the gateway.
    COMPLETED_UNPAID = "completed_unpaid"
    # Two charges at the gateway for one run of an order.
    DOUBLE_CHARGE = "double_charge"
    # The gateway's amount disagrees with the order's or with our payment row's.
    AMOUNT_MISMATCH = "amount_mismatch"
    # A live booking for a run that ended without a sale. Safe: the carrier order is
    # cancelled, as the order's compensation does.
    BOOKING_NOT_COMPLETED = "booking_not_completed"
    # Our payment row disagrees with the gateway (status, or a row or charge missing).
    # Safe only where the order's own refund landed at the gateway and we did not record
    # it: that refund is asked again (the gateway replays it) and recorded.
    PAYMENT_MISMATCH = "payment_mismatch"
    # A COMPLETED order's parcel is not booked (or cancelled) at the carrier, or the
    # carrier holds bookings under a reference that is no run of the order.
    BOOKING_MISMATCH = "booking_mismatch"
    # A charge or booking for an order we have no row for.
    UNKNOWN_ORDER = "unknown_order"
    # An order that never ended and whose workflow is no longer running.
    ORDER_STUCK = "order_stuck"
    # Closed, nothing kept or booked for it any more, its workflow ended, but never marked
    # settled (its compensation was cut off): a retry would wait for it forever. Safe:
    # marked settled.
    UNSETTLED = "unsettled"


KINDS = tuple(Kind)


class Heal(StrEnum):
    """What the order's compensation would have done (app/orders/activities/compensation.py)."""

    REFUND = "refund"  # our payment row records the charge: refund it in full
    CANCEL_OR_REFUND = "cancel_or_refund"  # no row of ours: refund what the gateway took
    CANCEL_BOOKING = "cancel_booking"  # cancel the carrier order's bookings
    MARK_SETTLED = "mark_settled"  # nothing left to compensate: record the order settled


ENDED_STATES = frozenset({OrderState.CANCELLED, OrderState.FAILED})
RECORDED = frozenset({PaymentStatus.CHARGED, PaymentStatus.REFUNDED})


@dataclass(frozen=True)
class OrderFacts:
    """Our row of an order (timestamps naive UTC, as the table keeps them)."""

    order_id: str
    state: str
    step: str | None
    payment_id: str | None
    amount_cents: int | None
    tracking_number: str | None
    created_at: datetime
    updated_at: datetime
    # When its compensation was done (None: not yet, or never closed).
    settled_at: datetime | None = None

    @property
    def retry(self) -> int:
        """The current run's number (its payment id says it)."""
        return retry_of(self.payment_id) if self.payment_id else 1

    @property
    def carrier_order(self) -> str:
        """The current run's order as the carrier knows it."""
        return retry_reference(self.order_id, self.retry)

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


@dataclass(frozen=True)
class PaymentFacts:
    payment_id: str
    order_id: str
    status: str
    amount_cents: int | None


@dataclass
class Finding:
    kind: Kind
    order_id: str
    # The payment id or carrier order it is about (the order id when neither).
    reference: str
    detail: str
    heal: Heal | None = None
    amount_cents: int = 0  # what the heal refunds
    healed: bool = False

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind, self.order_id, self.reference)

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "order_id": self.order_id,
            "reference": self.reference,
            "detail": self.detail,
            "safe": self.heal is not None,
            "healed": self.healed,
        }


def audit_order(
    order_id: str,
    order: OrderFacts | None,
    payments: dict[str, PaymentFacts],
    charges: Iterable[SettledCharge],
    bookings: Iterable[BookingRecord],
    in_window: bool,
) -> list[Finding]:
    """The findings of one order.

    `payments`: our rows by payment id (this order's, and those of the payment ids the
    gateway charged it under). `in_window`: the order was created inside the window the
    exports cover, so what the exports lack is really missing (absence is judged only
    then)."""
    charges, bookings = list(charges), list(bookings)
    if order is None:
        return _unknown_order(order_id, charges, bookings)
    by_payment: dict[str, list[SettledCharge]] = defaultdict(list)
    for c in charges:
        by_payment[c.payment_id].append(c)
    by_ref: dict[str, list[BookingRecord]] = defaultdict(list)
    for b in bookings:
        by_ref[b.carrier_order].append(b)
    found = [
        *_audit_money(order, by_payment, payments, in_window),
        *_audit_parcel(order, by_ref, in_window),
    ]
    if in_window and not found and order.state in TERMINAL_STATES and order.settled_at is None:
        # Nothing is left at either provider (the exports cover its window): only the
        # record of it is missing. With other findings, those say why it is not settled.
        found.append(
            Finding(
                Kind.UNSETTLED,
                order.order_id,
                order.order_id,
                f"order is {order.state} with nothing kept or booked for it, but was never "
                "recorded settled (its compensation was cut off)",
                Heal.MARK_SETTLED,
            )
        )
    return _unique(found)


def _unknown_order(
    order_id: str, charges: list[SettledCharge], bookings: list[BookingRecord]
) -> list[Finding]:
    """What the providers keep for an order we have no row for."""
    return [
        *(
            Finding(
                Kind.UNKNOWN_ORDER,
                order_id,
                c.payment_id,
                f"the gateway has charge {c.charge_id} of {c.amount_cents} cents "
                f"({c.kept_cents} kept) for order {order_id}, which we have no row for",
            )
            for c in charges
            if c.kept_cents > 0  # refunded in full: nothing kept, nothing to do
        ),
        *(
            Finding(
                Kind.UNKNOWN_ORDER,
                order_id,
                b.carrier_order,
                f"the carrier has live booking {b.tracking_number} under {b.carrier_order}, "
                "for an order we have no row for",
            )
            for b in bookings
            if not b.cancelled
        ),
    ]


def _audit_money(
    order: OrderFacts,
    by_payment: dict[str, list[SettledCharge]],
    payments: dict[str, PaymentFacts],
    in_window: bool,
) -> list[Finding]:
    """The gateway's charges of the order, payment id by payment id, and (inside the
    window) what we record that the gateway does not have."""
    found: list[Finding] = []
    for payment_id, group in by_payment.items():
        found += _audit_charges(order, payment_id, group, payments.get(payment_id))
    if not in_window:
        return found
    amount = order.amount_cents or 0
    if order.state == OrderState.COMPLETED and amount > 0 and order.payment_id not in by_payment:
        found.append(
            Finding(
                Kind.COMPLETED_UNPAID,
                order.order_id,
                order.payment_id or order.order_id,
                f"order completed ({amount} cents) but the gateway has no charge under its "
                f"payment {order.payment_id}",
            )
        )
    for row in payments.values():
        if (
            row.order_id == order.order_id
            and row.status in RECORDED
            and row.payment_id not in by_payment
        ):
            found.append(
                Finding(
                    Kind.PAYMENT_MISMATCH,
                    order.order_id,
                    row.payment_id,
                    f"we recorded payment {row.payment_id} as {row.status}; the gateway "
                    "has no charge under it",
                )
            )
    return found


def _audit_parcel(
    order: OrderFacts, by_ref: dict[str, list[BookingRecord]], in_window: bool
) -> list[Finding]:
    """The carrier's bookings of the order, carrier order by carrier order, and (inside
    the window) a completed order's booking the carrier does not have."""
    found: list[Finding] = []
    for ref, booked in by_ref.items():
        found += _audit_bookings(order, ref, booked)
    if in_window and order.state == OrderState.COMPLETED and order.carrier_order not in by_ref:
        found.append(
            Finding(
                Kind.BOOKING_MISMATCH,
                order.order_id,
                order.carrier_order,
                f"order completed with tracking number {order.tracking_number} but the "
                f"carrier has no booking under {order.carrier_order}",
            )
        )
    return found


def _superseded(order: OrderFacts, reference: str, current: str | None) -> bool:
    """Whether `reference` belongs to an earlier run of the order than its current one."""
    return (
        current is not None
        and reference != current
        and first_reference(reference) == first_reference(current)
        and retry_of(reference) < retry_of(current)
    )


def _audit_charges(
    order: OrderFacts,
    payment_id: str,
    group: list[SettledCharge],
    row: PaymentFacts | None,
) -> list[Finding]:
    oid = order.order_id
    if len(group) > 1:
        listed = ", ".join(f"{c.charge_id} ({c.kept_cents} kept)" for c in group)
        return [
            Finding(
                Kind.DOUBLE_CHARGE,
                oid,
                payment_id,
                f"the gateway has {len(group)} charges under payment {payment_id}: {listed}",
            )
        ]
    [charge] = group
    own = row if row is not None and row.order_id == oid else None
    foreign = row is not None and own is None
    current = payment_id == order.payment_id
    ended = (current and order.ended) or _superseded(order, payment_id, order.payment_id)
    if ended:
        return _ended_run(order, charge, own, foreign)
    if not current:
        if charge.kept_cents == 0 and own is not None and own.status == PaymentStatus.REFUNDED:
            return []  # returned and recorded (a run under an id of an older scheme)
        return [
            Finding(
                Kind.PAYMENT_MISMATCH,
                oid,
                payment_id,
                f"the gateway charged order {oid} under payment {payment_id} "
                f"({charge.kept_cents} cents kept), which is none of its runs' (it pays "
                f"with {order.payment_id})",
            )
        ]
    if order.state != OrderState.COMPLETED:
        return []  # in flight: its workflow settles it (or it is stuck: ORDER_STUCK)
    return _completed_run(order, charge, own)


def _ended_run(
    order: OrderFacts, charge: SettledCharge, own: PaymentFacts | None, foreign: bool
) -> list[Finding]:
    """A run that ended without a sale: its charge must be refunded in full, and recorded."""
    if charge.kept_cents <= 0:
        return _refunded_after_end(order, charge, own, foreign)
    pid = charge.payment_id
    why = "the order is " + order.state if pid == order.payment_id else "a retry replaced it"
    if own is not None:
        return [_kept_and_recorded(order, charge, own, why)]
    return [_kept_unrecorded(order, charge, why)]


def _kept_and_recorded(
    order: OrderFacts, charge: SettledCharge, own: PaymentFacts, why: str
) -> Finding:
    """Money still kept for an ended run, under a payment row of ours."""
    oid, pid = order.order_id, charge.payment_id
    if own.status != PaymentStatus.CHARGED:
        return Finding(
            Kind.PAYMENT_MISMATCH,
            oid,
            pid,
            f"we recorded payment {pid} as {own.status}, but the gateway keeps "
            f"{charge.kept_cents} cents of it ({why})",
        )
    if own.amount_cents == charge.amount_cents == charge.kept_cents:
        return Finding(
            Kind.CHARGED_NOT_REFUNDED,
            oid,
            pid,
            f"payment {pid} is charged {charge.kept_cents} cents and not refunded, but {why}",
            Heal.REFUND,
            charge.kept_cents,
        )
    return Finding(
        Kind.AMOUNT_MISMATCH,
        oid,
        pid,
        f"payment {pid} is kept at the gateway ({charge.kept_cents} of "
        f"{charge.amount_cents} cents) and {why}, but we recorded {own.amount_cents} cents",
    )


def _kept_unrecorded(order: OrderFacts, charge: SettledCharge, why: str) -> Finding:
    """Money still kept for an ended run, which no payment row of the order records (its
    answer was lost)."""
    oid, pid = order.order_id, charge.payment_id
    amount = order.amount_cents or 0
    if amount > 0 and amount == charge.amount_cents == charge.kept_cents:
        return Finding(
            Kind.CHARGED_NOT_REFUNDED,
            oid,
            pid,
            f"the gateway charged payment {pid} {charge.kept_cents} cents, which we "
            f"never recorded, and {why}",
            Heal.CANCEL_OR_REFUND,
            amount,
        )
    return Finding(
        Kind.AMOUNT_MISMATCH,
        oid,
        pid,
        f"the gateway keeps {charge.kept_cents} of {charge.amount_cents} cents under "
        f"payment {pid}, which we never recorded ({why}), and the order's amount is "
        f"{amount} cents",
    )


def _refunded_after_end(
    order: OrderFacts, charge: SettledCharge, own: PaymentFacts | None, foreign: bool
) -> list[Finding]:
    """An ended run's charge, refunded in full at the gateway: our row must say so. Safe
    to heal only when it was refunded under the order's own key, for the whole amount."""
    oid, pid = order.order_id, charge.payment_id
    ours_refunded = refund_key(oid, pid) in charge.refund_keys
    if own is not None and own.status == PaymentStatus.CHARGED:
        safe = ours_refunded and own.amount_cents == charge.amount_cents
        return [
            Finding(
                Kind.PAYMENT_MISMATCH,
                oid,
                pid,
                f"the gateway refunded payment {pid} in full, but we still record it charged"
                + ("" if safe else " (refunded under another key or amount)"),
                Heal.REFUND if safe else None,
                charge.amount_cents,
            )
        ]
    if own is None and not foreign:
        amount = order.amount_cents or 0
        safe = ours_refunded and amount == charge.amount_cents
        return [
            Finding(
                Kind.PAYMENT_MISMATCH,
                oid,
                pid,
                f"the gateway charged and refunded payment {pid} ({charge.amount_cents} "
                "cents); we have no record of either"
                + ("" if safe else " (refunded under another key or amount)"),
                Heal.CANCEL_OR_REFUND if safe else None,
                amount,
            )
        ]
    return []


def _completed_run(
    order: OrderFacts, charge: SettledCharge, own: PaymentFacts | None
) -> list[Finding]:
    """The current run of a COMPLETED order: one charge of the order's amount, all kept."""
    oid, pid = order.order_id, charge.payment_id
    found: list[Finding] = []
    if charge.kept_cents <= 0:
        found.append(
            Finding(
                Kind.COMPLETED_UNPAID,
                oid,
                pid,
                f"order completed but its charge {charge.charge_id} under payment {pid} was "
                "refunded in full",
            )
        )
    elif charge.amount_cents != order.amount_cents or charge.kept_cents != charge.amount_cents:
        found.append(
            Finding(
                Kind.AMOUNT_MISMATCH,
                oid,
                pid,
                f"order of {order.amount_cents} cents completed; the gateway charged "
                f"{charge.amount_cents} cents under payment {pid} and keeps "
                f"{charge.kept_cents}",
            )
        )
    if own is None or own.status != PaymentStatus.CHARGED:
        recorded = "no payment row" if own is None else f"payment status {own.status}"
        found.append(
            Finding(
                Kind.PAYMENT_MISMATCH,
                oid,
                pid,
                f"order completed and the gateway holds its charge under payment {pid}, but "
                f"we have {recorded}",
            )
        )
    elif own.amount_cents != charge.amount_cents:
        found.append(
            Finding(
                Kind.AMOUNT_MISMATCH,
                oid,
                pid,
                f"we recorded payment {pid} as {own.amount_cents} cents; the gateway "
                f"charged {charge.amount_cents}",
            )
        )
    return found


def _audit_bookings(order: OrderFacts, ref: str, group: list[BookingRecord]) -> list[Finding]:
    oid = order.order_id
    live = [b for b in group if not b.cancelled]
    current = ref == order.carrier_order
    if (current and order.ended) or _superseded(order, ref, order.carrier_order):
        if not live:
            return []
        why = "the order is " + order.state if current else "a retry replaced that run"
        listed = ", ".join(b.tracking_number for b in live)
        return [
            Finding(
                Kind.BOOKING_NOT_COMPLETED,
                oid,
                ref,
                f"the carrier has live booking(s) {listed} under {ref}, but {why}",
                Heal.CANCEL_BOOKING,
            )
        ]
    if not current:
        if not live:
            return []  # cancelled: nothing ships
        return [
            Finding(
                Kind.BOOKING_MISMATCH,
                oid,
                ref,
                f"the carrier has booking(s) under {ref}, which is none of order {oid}'s "
                f"runs (it ships as {order.carrier_order})",
            )
        ]
    if order.state != OrderState.COMPLETED:
        return []  # in flight
    found = []
    tracking = {b.tracking_number for b in live}
    if order.tracking_number not in tracking:
        found.append(
            Finding(
                Kind.BOOKING_MISMATCH,
                oid,
                ref,
                f"order completed with tracking number {order.tracking_number}, which the "
                f"carrier does not hold live under {ref}",
            )
        )
    extra = sorted(tracking - {order.tracking_number})
    if extra:
        found.append(
            Finding(
                Kind.BOOKING_MISMATCH,
                oid,
                ref,
                f"the carrier holds other live booking(s) {', '.join(extra)} under {ref} "
                f"besides the order's {order.tracking_number}",
            )
        )
    return _unique(found)


def _unique(found: list[Finding]) -> list[Finding]:
    """One finding per (kind, order, reference); their details joined."""
    out: dict[tuple[str, str, str], Finding] = {}
    for f in found:
        seen = out.get(f.identity)
        if seen is None:
            out[f.identity] = f
        else:
            seen.detail = f"{seen.detail}; {f.detail}"
            seen.heal = seen.heal if seen.heal == f.heal else None
    return list(out.values())


def stuck(order: OrderFacts, workflow_status: str | None) -> Finding:
    """An order that never ended, whose workflow is gone or closed."""
    where = f"{order.state} at {order.step}" if order.step else order.state
    status = (workflow_status or "not found").lower()
    return Finding(
        Kind.ORDER_STUCK,
        order.order_id,
        order.order_id,
        f"order is {where} but its workflow is {status}: it will never end by itself",
    )
