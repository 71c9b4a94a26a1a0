"""The chaos run's invariants, pure: facts about one order in (our tables, the workflow's
outcome, the gateway's and the carrier's ledgers), violations out; plus the checks across
orders (a key, a charge, a booking or a payment id that two orders share).

An order may have several runs (an operator's retries of a FAILED order): run 1 pays with
the client's payment id and ships as the order id, run N with `<ref>#r<N>`
(app/orders/identity.py). Each run is judged on its own: one charge and one booking at
most, and money kept only by the run that shipped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.orders.identity import first_reference, retry_of
from app.orders.messages import TERMINAL_STATES, EventType, OrderState

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
    # A run that ended CANCELLED or FAILED (an earlier run of a retried order too) whose
    # charge the gateway kept.
    "left_charged",
    # COMPLETED without a kept charge of its own at the gateway (free orders aside).
    "shipped_unpaid",
    # One gateway or carrier key (or what it bought: a charge, a booking) used by two
    # orders, or a key that does not name its order and run; a payment id held by two.
    "shared_keys",
    # A cancel answered as accepted for an order that ended otherwise.
    "accepted_then_failed",
)
# What compensation still in flight (the order closed in our database, its workflow still
# refunding or cancelling bookings) may yet change: for such an order these wait, and
# the run reports it as settling rather than judging it early. Whatever never lands is
# the reconciliation's to find.
COMPENSATION_KINDS = frozenset(
    {
        "not_terminal",
        "charged_without_refund",
        "gateway_charged_without_refund",
        "left_charged",
        "payment_mismatch",
        "state_mismatch",
        "ledger_mismatch",
    }
)
GATEWAY_OPERATIONS = ("charge", "refund")
CARRIER_OPERATIONS = ("prepare", "dispatch")


# ---------------------------------------------------------------------------------------
# Invariants (pure: facts in, violations out)
# ---------------------------------------------------------------------------------------


@dataclass
class OrderFacts:
    order_id: str
    # The payment id the client started it with (its first run's).
    payment_id: str
    # orders row: state, reason, payment_id (the latest run's), tracking_number, amount_cents
    # (None: no row)
    db: dict[str, Any] | None = None
    # Our payment rows of this order, every run's: payment_id, order_id, status,
    # amount_cents, gateway_ref.
    payments: list[dict[str, Any]] = field(default_factory=list)
    # events rows in id order: {"type", "payload", "ts"}
    events: list[dict[str, Any]] = field(default_factory=list)
    # status (RUNNING, COMPLETED, FAILED, ...), state/reason/payment_status of the outcome
    workflow: dict[str, Any] = field(default_factory=dict)
    # The gateway's charges for this order (each with refunded_cents, its idempotency_key
    # and its refunds) and the carrier's bookings (order_id: the order or a retry's
    # reference, tracking_number, idempotency_key, cancelled), from their own databases.
    gateway: list[dict[str, Any]] = field(default_factory=list)
    carrier: list[dict[str, Any]] = field(default_factory=list)
    # The providers' idempotency keys whose request names this order (any run):
    # {"provider": gateway|carrier, "key", "operation", "order_ref", "payment_id"}.
    keys: list[dict[str, Any]] = field(default_factory=list)
    # The client asked for nothing to pay (every item at 0): nothing is due, the gateway
    # never sees it.
    free: bool = False
    # Closed in our database while its workflow still compensates (after the run's wait).
    settling: bool = False
    # Cancels this run sent: {"outcome": accepted|refused|unknown, "at_s", ...}.
    cancels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> str | None:
        return self.db["state"] if self.db else None

    @property
    def current_payment_id(self) -> str:
        """The latest run's payment id (the row's, else the client's)."""
        return (self.db or {}).get("payment_id") or self.payment_id

    @property
    def last_run(self) -> int:
        retried = sum(1 for e in self.events if e["type"] == EventType.RETRIED)
        return max(retry_of(self.current_payment_id), retried + 1)

    def run_ended(self, run: int) -> str | None:
        """How run `run` ended: an earlier run was retried, so it FAILED; the last one is
        where the order is."""
        return OrderState.FAILED if run < self.last_run else self.state


def runs_of_events(events: list[dict[str, Any]]) -> list[list[str]]:
    """Event types per run: a RETRIED event begins the next run."""
    runs: list[list[str]] = [[]]
    for e in events:
        if e["type"] == EventType.RETRIED:
            runs.append([])
        runs[-1].append(e["type"])
    return runs


def check_order(facts: OrderFacts) -> dict[str, list[str]]:
    """Violation kind -> what is wrong, for one started order (empty when all holds).

    For an order still settling (see COMPENSATION_KINDS), what compensation may yet change
    is left out; `deferred_checks` says what that is."""
    found = _all_checks(facts)
    if facts.settling:
        return {k: v for k, v in found.items() if k not in COMPENSATION_KINDS}
    return found


def deferred_checks(facts: OrderFacts) -> dict[str, list[str]]:
    """For a settling order: what its compensation still has to make right."""
    return {k: v for k, v in _all_checks(facts).items() if k in COMPENSATION_KINDS}


def _all_checks(facts: OrderFacts) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}

    def bad(kind: str, detail: str) -> None:
        found.setdefault(kind, []).append(detail)

    db = facts.db
    wf = facts.workflow
    state = facts.state
    types = [e["type"] for e in facts.events]
    wf_status = wf.get("status")

    if state not in TERMINAL_STATES:
        bad("not_terminal", f"orders.state is {state or 'missing (no row)'}")
    if wf_status in (None, "RUNNING"):
        waiting = "; ".join(wf.get("pending") or []) or "nothing pending"
        bad("not_terminal", f"workflow is {wf_status or 'unknown'} ({waiting})")

    own = [p for p in facts.payments if p["order_id"] == facts.order_id]
    per_run = Counter(retry_of(p["payment_id"]) for p in own)
    for run, n in sorted(per_run.items()):
        if n > 1:
            ids = ", ".join(p["payment_id"] for p in own if retry_of(p["payment_id"]) == run)
            bad("double_charges", f"run {run}: {n} payment rows ({ids})")
    for run, run_types in enumerate(runs_of_events(facts.events), start=1):
        charges = run_types.count(EventType.PAYMENT_CHARGED)
        if charges > 1:
            bad("double_charges", f"run {run}: {charges} PAYMENT_CHARGED events")
        ends = [t for t in run_types if t in TERMINAL_STATES]
        if len(ends) > 1:
            bad("conflicting_terminal_events", f"run {run}: terminal events " + ", ".join(ends))
    foreign = [p for p in facts.payments if p["order_id"] != facts.order_id]
    if foreign:
        bad("double_charges", f"payment {foreign[0]['payment_id']} recorded for another order")

    for p in own:
        run = retry_of(p["payment_id"])
        ended = facts.run_ended(run)
        if ended in ("CANCELLED", "FAILED") and p["status"] == "charged":
            bad(
                "charged_without_refund",
                f"run {run} ended {ended} with payment {p['payment_id']} charged",
            )
    current = next((p for p in own if p["payment_id"] == facts.current_payment_id), None)
    if state == "COMPLETED":
        expected = "not_due" if facts.free else "charged"
        if current is None or current["status"] != expected:
            kept = current["status"] if current else "no payment"
            bad("completed_without_charge", f"COMPLETED but payment is {kept}, not {expected}")

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
    db_payment = current["status"] if current else "none"
    if wf_status in ("COMPLETED", "FAILED") and wf_payment and wf_payment != db_payment:
        bad("payment_mismatch", f"workflow says payment {wf_payment}, database {db_payment}")

    if state in STATE_EVENT and STATE_EVENT[OrderState(state)] not in types:
        bad("missing_events", f"state {state} without a {STATE_EVENT[OrderState(state)]} event")
    if own and EventType.PAYMENT_CHARGED not in types:
        bad("missing_events", "payment row without a PAYMENT_CHARGED event")
    if any(p["status"] == "refunded" for p in own) and EventType.PAYMENT_REFUNDED not in types:
        bad("missing_events", "refunded payment without a PAYMENT_REFUNDED event")
    if db and db.get("tracking_number") and EventType.DISPATCHED not in types:
        bad("missing_events", "tracking number without a DISPATCHED event")

    accepted = [c for c in facts.cancels if c.get("outcome") == "accepted"]
    if accepted and state in TERMINAL_STATES and state != "CANCELLED":
        at = accepted[0].get("at_s")
        bad(
            "accepted_then_failed",
            f"a cancel sent at {at}s was answered accepted, the order ended {state}"
            + (f" ({db.get('reason')})" if db and db.get("reason") else ""),
        )
    for kind, detail in check_ledgers(facts):
        bad(kind, detail)
    return found


def _kept(charge: dict[str, Any]) -> bool:
    return bool(charge["refunded_cents"] < charge["amount_cents"])


def check_ledgers(facts: OrderFacts) -> list[tuple[str, str]]:
    """Our tables against the gateway's and the carrier's ledgers, for one order."""
    found: list[tuple[str, str]] = []
    state = facts.state
    per_payment = Counter(c["payment_id"] for c in facts.gateway)
    for payment_id, n in per_payment.items():
        if n > 1:
            found.append(("gateway_double_charges", f"{n} gateway charges for {payment_id}"))
    kept = [c for c in facts.gateway if _kept(c)]
    if state in ("CANCELLED", "FAILED") and kept:
        found.append(
            (
                "gateway_charged_without_refund",
                f"{state}, gateway charge {kept[0]['charge_id']} not refunded",
            )
        )
    for charge in kept:
        run = retry_of(charge["payment_id"])
        ended = facts.run_ended(run)
        if ended in ("CANCELLED", "FAILED"):
            found.append(
                (
                    "left_charged",
                    f"run {run} ended {ended}; the gateway keeps "
                    f"{charge['amount_cents'] - charge['refunded_cents']} cents of charge "
                    f"{charge['charge_id']} ({charge['payment_id']})",
                )
            )
    if state == "COMPLETED" and not facts.free:
        paid = [c for c in kept if c["payment_id"] == facts.current_payment_id]
        if not paid:
            found.append(
                (
                    "shipped_unpaid",
                    f"COMPLETED; the gateway keeps no charge of order {facts.order_id} "
                    f"under payment {facts.current_payment_id}",
                )
            )
    if facts.free and facts.gateway:
        found.append(
            ("ledger_mismatch", f"free order, yet gateway charge {facts.gateway[0]['charge_id']}")
        )
    ours = {
        p["payment_id"]: p
        for p in facts.payments
        if p["order_id"] == facts.order_id and p["status"] != "not_due"
    }
    for charge in facts.gateway:
        mine = ours.pop(charge["payment_id"], None)
        theirs = "charged" if _kept(charge) else "refunded"
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

    per_ref = Counter(b["order_id"] for b in facts.carrier)
    for ref, n in per_ref.items():
        if n > 1:
            found.append(("duplicate_dispatches", f"{n} carrier bookings for {ref}"))
    active = [b for b in facts.carrier if not b["cancelled"]]
    tracking = (facts.db or {}).get("tracking_number")
    if tracking and tracking not in {b["tracking_number"] for b in active}:
        found.append(("ledger_mismatch", f"tracking number {tracking} has no carrier booking"))
    for b in active:
        run = retry_of(b["order_id"])
        ended = facts.run_ended(run)
        if ended != "COMPLETED" or run != facts.last_run:
            found.append(
                (
                    "ledger_mismatch",
                    f"run {run} ended {ended} but the carrier holds booking {b['tracking_number']}",
                )
            )
    found += [("shared_keys", d) for d in key_problems(facts)]
    return found


def key_problems(facts: OrderFacts) -> list[str]:
    """Keys at the providers that do not name this order and the run they were used for.

    Gateway keys are `charge|refund:<order>:<payment>:<run>`, carrier keys
    `prepare|dispatch:<order or its retry reference>:<run>:<shipping attempt>`
    (app/orders/providers/api.py): a key that names its order cannot be another's."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()

    def named(provider: str, key: str, order_ref: str, payment_id: str | None) -> None:
        if (provider, key) in seen:
            return
        seen.add((provider, key))
        problem = key_problem(provider, key, order_ref, payment_id)
        if problem:
            problems.append(f"{provider} key {key!r} {problem}")

    for c in facts.gateway:
        named("gateway", c["idempotency_key"], c["order_id"], c["payment_id"])
        for r in c.get("refunds", []):
            named("gateway", r["idempotency_key"], c["order_id"], c["payment_id"])
    for b in facts.carrier:
        named("carrier", b["idempotency_key"], b["order_id"], None)
    for k in facts.keys:
        named(k["provider"], k["key"], k["order_ref"] or "", k.get("payment_id"))
    return problems


def key_problem(provider: str, key: str, order_ref: str, payment_id: str | None) -> str | None:
    """Why `key`, sent for the order (or retry reference) `order_ref`, could be another
    order's; None when it names that order and run."""
    parts = key.split(":")
    operations = GATEWAY_OPERATIONS if provider == "gateway" else CARRIER_OPERATIONS
    shape = (
        "<operation>:<order>:<payment>:<run>"
        if provider == "gateway"
        else "<operation>:<order>:<run>:<attempt>"
    )
    if len(parts) != 4 or parts[0] not in operations:
        return f"is not {shape} (used for {order_ref})"
    order = first_reference(order_ref)
    if first_reference(parts[1]) != order:
        return f"names order {parts[1]} but was used for {order_ref}"
    run_part = parts[3] if provider == "gateway" else parts[2]
    if not run_part.isdigit():
        return f"is not {shape} (used for {order_ref})"
    run = retry_of(payment_id) if provider == "gateway" and payment_id else retry_of(order_ref)
    if provider == "gateway" and payment_id is not None and parts[2] != payment_id:
        return f"names payment {parts[2]} but was used for payment {payment_id}"
    if int(run_part) != run:
        return f"names run {run_part} but was used for run {run} of {order}"
    return None


def check_across(facts: Iterable[OrderFacts]) -> dict[str, list[str]]:
    """Order id -> what it shares with another order of the run (`shared_keys`): a gateway
    charge, a carrier booking, a key, a payment id."""
    holders: dict[tuple[str, str], set[str]] = defaultdict(set)
    for f in facts:
        oid = f.order_id
        for c in f.gateway:
            holders[("gateway charge", c["charge_id"])].add(oid)
            holders[("gateway key", c["idempotency_key"])].add(oid)
        for b in f.carrier:
            holders[("carrier booking", b["tracking_number"])].add(oid)
            holders[("carrier key", b["idempotency_key"])].add(oid)
        for k in f.keys:
            holders[(f"{k['provider']} key", k["key"])].add(oid)
        for p in f.payments:
            if p.get("gateway_ref"):
                holders[("gateway charge", p["gateway_ref"])].add(oid)
            holders[("payment id", p["payment_id"])].add(oid)
        if f.db:
            if f.db.get("tracking_number"):
                holders[("carrier booking", f.db["tracking_number"])].add(oid)
            if f.db.get("payment_id"):
                holders[("payment id", f.db["payment_id"])].add(oid)
    out: dict[str, list[str]] = defaultdict(list)
    for (what, ref), orders in sorted(holders.items()):
        if len(orders) > 1:
            for oid in sorted(orders):
                others = ", ".join(o for o in sorted(orders) if o != oid)
                out[oid].append(f"{what} {ref} also held by {others}")
    return dict(out)
