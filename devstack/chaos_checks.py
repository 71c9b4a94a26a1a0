"""The chaos run's invariants, pure: facts about one order in (our tables, the workflow's
outcome, the gateway's and the carrier's ledgers), violations out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.orders.models import EventType, OrderState

TERMINAL = frozenset({"COMPLETED", "CANCELLED", "FAILED"})
# The event row each orders.state must have (activities write them in the same
# transaction as the state change).
STATE_EVENT = {
    OrderState.RECEIVED: EventType.RECEIVED,
    OrderState.VALIDATED: EventType.VALIDATED,
    OrderState.PAID: EventType.PAYMENT_CHARGED,
    OrderState.COMPLETED: EventType.COMPLETED,
    OrderState.CANCELLED: EventType.CANCELLED,
    OrderState.FAILED: EventType.FAILED,
}
VIOLATIONS = (
    "not_started",
    "not_terminal",
    "double_charges",
    "charged_without_refund",
    "state_mismatch",
    "payment_mismatch",
    "missing_events",
    "conflicting_terminal_events",
    "completed_without_charge",
    # Judged on the providers' own ledgers, which the order system never reads.
    "gateway_double_charges",
    "gateway_charged_without_refund",
    "ledger_mismatch",
    "duplicate_dispatches",
)


# ---------------------------------------------------------------------------------------
# Invariants (pure: facts in, violations out)
# ---------------------------------------------------------------------------------------


@dataclass
class OrderFacts:
    order_id: str
    payment_id: str
    # orders row: state, reason, payment_id, tracking_number (None: no row)
    db: dict[str, Any] | None = None
    payments: list[dict[str, Any]] = field(default_factory=list)
    # events rows in id order: {"type", "payload", "ts"}
    events: list[dict[str, Any]] = field(default_factory=list)
    # status (RUNNING, COMPLETED, FAILED, ...), state/reason/payment_status of the outcome
    workflow: dict[str, Any] = field(default_factory=dict)
    # The gateway's charges for this order (each with refunded_cents and its refunds) and
    # the carrier's bookings (tracking_number, cancelled), from their own databases.
    gateway: list[dict[str, Any]] = field(default_factory=list)
    carrier: list[dict[str, Any]] = field(default_factory=list)


def check_order(facts: OrderFacts) -> dict[str, list[str]]:
    """Violation kind -> what is wrong, for one started order (empty when all holds)."""
    found: dict[str, list[str]] = {}

    def bad(kind: str, detail: str) -> None:
        found.setdefault(kind, []).append(detail)

    db = facts.db
    wf = facts.workflow
    state = db["state"] if db else None
    types = [e["type"] for e in facts.events]
    wf_status = wf.get("status")

    if state not in TERMINAL:
        bad("not_terminal", f"orders.state is {state or 'missing (no row)'}")
    if wf_status in (None, "RUNNING"):
        waiting = "; ".join(wf.get("pending") or []) or "nothing pending"
        bad("not_terminal", f"workflow is {wf_status or 'unknown'} ({waiting})")

    charges = types.count(EventType.PAYMENT_CHARGED)
    if len(facts.payments) > 1:
        ids = ", ".join(p["payment_id"] for p in facts.payments)
        bad("double_charges", f"{len(facts.payments)} payment rows ({ids})")
    if charges > 1:
        bad("double_charges", f"{charges} PAYMENT_CHARGED events")
    foreign = [p for p in facts.payments if p["order_id"] != facts.order_id]
    if foreign:
        bad("double_charges", f"payment {foreign[0]['payment_id']} recorded for another order")

    charged = [p for p in facts.payments if p["status"] == "charged"]
    if state in ("CANCELLED", "FAILED") and charged:
        bad("charged_without_refund", f"{state} with payment {charged[0]['payment_id']} charged")
    if state == "COMPLETED" and not charged:
        kept = facts.payments[0]["status"] if facts.payments else "no payment"
        bad("completed_without_charge", f"COMPLETED but payment is {kept}")

    if wf_status == "COMPLETED":
        if wf.get("state") != state:
            bad("state_mismatch", f"workflow result {wf.get('state')}, database {state}")
    elif wf_status == "FAILED":
        if state != "FAILED":
            bad("state_mismatch", f"workflow failed ({wf.get('reason')}), database {state}")
    elif wf_status not in (None, "RUNNING"):
        # TERMINATED, TIMED_OUT (the backstop fired), CANCELED: never a designed ending.
        bad("state_mismatch", f"workflow {wf_status}, database {state}")
    wf_payment = wf.get("payment_status")
    db_payment = facts.payments[0]["status"] if facts.payments else "none"
    if wf_status in ("COMPLETED", "FAILED") and wf_payment and wf_payment != db_payment:
        bad("payment_mismatch", f"workflow says payment {wf_payment}, database {db_payment}")

    if state is not None and STATE_EVENT.get(state) not in types:
        bad("missing_events", f"state {state} without a {STATE_EVENT.get(state)} event")
    if facts.payments and EventType.PAYMENT_CHARGED not in types:
        bad("missing_events", "payment row without a PAYMENT_CHARGED event")
    if (
        any(p["status"] == "refunded" for p in facts.payments)
        and EventType.PAYMENT_REFUNDED not in types
    ):
        bad("missing_events", "refunded payment without a PAYMENT_REFUNDED event")
    if db and db.get("tracking_number") and EventType.DISPATCHED not in types:
        bad("missing_events", "tracking number without a DISPATCHED event")

    ends = [t for t in types if t in TERMINAL]
    if len(ends) > 1:
        bad("conflicting_terminal_events", "terminal events " + ", ".join(ends))
    for kind, detail in check_ledgers(facts):
        bad(kind, detail)
    return found


def check_ledgers(facts: OrderFacts) -> list[tuple[str, str]]:
    """Our tables against the gateway's and the carrier's ledgers, for one order."""
    found: list[tuple[str, str]] = []
    state = facts.db["state"] if facts.db else None
    per_payment = Counter(c["payment_id"] for c in facts.gateway)
    for payment_id, n in per_payment.items():
        if n > 1:
            found.append(("gateway_double_charges", f"{n} gateway charges for {payment_id}"))
    kept = [c for c in facts.gateway if c["refunded_cents"] < c["amount_cents"]]
    if state in ("CANCELLED", "FAILED") and kept:
        found.append(
            (
                "gateway_charged_without_refund",
                f"{state}, gateway charge {kept[0]['charge_id']} not refunded",
            )
        )
    ours = {p["payment_id"]: p for p in facts.payments if p["order_id"] == facts.order_id}
    for charge in facts.gateway:
        mine = ours.pop(charge["payment_id"], None)
        theirs = "refunded" if charge["refunded_cents"] >= charge["amount_cents"] else "charged"
        if charge["refunded_cents"] and theirs == "charged":
            theirs = "partly refunded"
        if mine is None:
            found.append(("ledger_mismatch", f"gateway charge {charge['charge_id']} unknown to us"))
        elif (mine["status"], mine["amount_cents"]) != (theirs, charge["amount_cents"]):
            found.append(
                (
                    "ledger_mismatch",
                    f"payment {mine['payment_id']}: ours {mine['status']} "
                    f"{mine['amount_cents']} cents, gateway {theirs} "
                    f"{charge['amount_cents']} cents",
                )
            )
    for payment_id, mine in ours.items():
        found.append(
            ("ledger_mismatch", f"payment {payment_id} {mine['status']}, no gateway charge")
        )
    if len(facts.carrier) > 1:
        found.append(("duplicate_dispatches", f"{len(facts.carrier)} carrier bookings"))
    active = [b["tracking_number"] for b in facts.carrier if not b["cancelled"]]
    tracking = (facts.db or {}).get("tracking_number")
    if tracking and tracking not in active:
        found.append(("ledger_mismatch", f"tracking number {tracking} has no carrier booking"))
    if active and state != "COMPLETED":
        found.append(("ledger_mismatch", f"{state} but the carrier holds booking {active[0]}"))
    return found
