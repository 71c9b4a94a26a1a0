"""The chaos run's invariant checker and fault plan (devstack/chaos/), without a stack.

A checker that never complains proves nothing: each violation kind is shown to be caught
on facts built to break it, and a healthy order of each ending passes.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.orders.identity import first_reference, retry_of, retry_reference
from app.orders.providers.api import charge_key, dispatch_key, refund_key
from devstack.chaos.checks import (
    COMPENSATION_KINDS,
    VIOLATIONS,
    OrderFacts,
    check_across,
    check_order,
    deferred_checks,
    key_problem,
)
from devstack.chaos.faults import ChaosOptions, plan_faults

pytestmark = pytest.mark.unit


def ev(*types: str) -> list[dict[str, Any]]:
    return [{"type": t, "payload": {}, "ts": "2026-01-01T00:00:00"} for t in types]


AMOUNT = 1999


def pay(status: str, order_id: str = "o1", payment_id: str = "pmt-o1") -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "order_id": order_id,
        "status": status,
        "amount_cents": AMOUNT,
    }


def charge(
    refunded: bool = False,
    payment_id: str = "pmt-o1",
    n: int = 1,
    order_id: str = "o1",
    key: str | None = None,
) -> dict[str, Any]:
    """A gateway charge as its ledger holds it, under the key the order system sends."""
    return {
        "charge_id": f"ch_{n}",
        "payment_id": payment_id,
        "order_id": order_id,
        "amount_cents": AMOUNT,
        "refunded_cents": AMOUNT if refunded else 0,
        "idempotency_key": key or charge_key(order_id, payment_id),
        "refunds": (
            [{"refund_id": f"re_{n}", "idempotency_key": refund_key(order_id, payment_id)}]
            if refunded
            else []
        ),
    }


def booking(
    tracking: str = "T", cancelled: bool = False, ref: str = "o1", key: str | None = None
) -> dict[str, Any]:
    """A carrier booking: `ref` is the order as the carrier knows it (o1, o1#r2...)."""
    return {
        "tracking_number": tracking,
        "cancelled": cancelled,
        "order_id": ref,
        "idempotency_key": key or dispatch_key(first_reference(ref), retry_of(ref), 1),
    }


def facts(
    state: str | None,
    events: list[dict[str, Any]],
    payments: list[dict[str, Any]] | None = None,
    workflow: dict[str, Any] | None = None,
    tracking: str | None = None,
    gateway: list[dict[str, Any]] | None = None,
    carrier: list[dict[str, Any]] | None = None,
    payment_id: str | None = None,
    **more: Any,
) -> OrderFacts:
    """Facts whose ledgers agree with our tables unless `gateway`/`carrier` say otherwise.

    `payment_id`: the latest run's (the orders row's); `more`: other OrderFacts fields."""
    payments = payments or []
    if gateway is None:
        gateway = [
            charge(p["status"] == "refunded", p["payment_id"], n)
            for n, p in enumerate(payments)
            if p["order_id"] == "o1" and p["status"] != "not_due"
        ]
    ref = (
        first_reference("o1") if payment_id is None else retry_reference("o1", retry_of(payment_id))
    )
    row = {"state": state, "tracking_number": tracking, "payment_id": payment_id or "pmt-o1"}
    return OrderFacts(
        order_id="o1",
        payment_id="pmt-o1",
        db=None if state is None else row,
        payments=payments,
        events=events,
        workflow=workflow or {},
        gateway=gateway,
        carrier=(
            carrier if carrier is not None else ([booking(tracking, ref=ref)] if tracking else [])
        ),
        **more,
    )


# What the workflow reports for a healthy order of each ending.
WF_COMPLETED = {"status": "COMPLETED", "state": "COMPLETED", "payment_status": "charged"}
WF_REFUNDED = {"status": "FAILED", "state": "FAILED", "payment_status": "refunded"}
WF_FAILED = {"status": "FAILED", "state": "FAILED"}  # nothing was charged
WF_CANCELLED = {"status": "COMPLETED", "state": "CANCELLED", "payment_status": "none"}


COMPLETED_OK = facts(
    "COMPLETED",
    ev("RECEIVED", "VALIDATED", "APPROVED", "PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
    [pay("charged")],
    WF_COMPLETED,
    tracking="TRK1",
)
REFUNDED_OK = facts(
    "FAILED",
    ev("RECEIVED", "VALIDATED", "PAYMENT_CHARGED", "PAYMENT_REFUNDED", "FAILED"),
    [pay("refunded")],
    WF_REFUNDED,
)
NEVER_RECEIVED_OK = facts("FAILED", ev("STEP_ATTEMPT_FAILED", "FAILED"), [], WF_FAILED)
CANCELLED_OK = facts("CANCELLED", ev("RECEIVED", "VALIDATED", "CANCELLED"), [], WF_CANCELLED)
# One run, charged twice.
TWO_CHARGES_IN_ONE_RUN = facts(
    "COMPLETED",
    ev("PAYMENT_CHARGED", "PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
    [pay("charged")],
    WF_COMPLETED,
    tracking="T",
)


@pytest.mark.parametrize("ok", [COMPLETED_OK, REFUNDED_OK, NEVER_RECEIVED_OK, CANCELLED_OK])
def test_healthy_orders_pass(ok: OrderFacts) -> None:
    assert check_order(ok) == {}


@pytest.mark.parametrize(
    ("broken", "kind"),
    [
        (facts("PAID", ev("RECEIVED", "PAYMENT_CHARGED"), [pay("charged")]), "not_terminal"),
        (facts(None, [], [], {"status": "RUNNING", "pending": ["ReceiveOrder"]}), "not_terminal"),
        (
            facts(
                "COMPLETED",
                ev("PAYMENT_CHARGED", "COMPLETED", "DISPATCHED"),
                [pay("charged"), pay("charged", payment_id="pmt-o1-again")],
                WF_COMPLETED,
                tracking="T",
            ),
            "double_charges",
        ),
        (
            TWO_CHARGES_IN_ONE_RUN,
            "double_charges",
        ),
        (
            facts(
                "CANCELLED",
                ev("PAYMENT_CHARGED", "CANCELLED"),
                [pay("charged")],
                {"status": "COMPLETED", "state": "CANCELLED", "payment_status": "charged"},
            ),
            "charged_without_refund",
        ),
        (
            facts(
                "COMPLETED",
                ev("PAYMENT_CHARGED", "PAYMENT_REFUNDED", "DISPATCHED", "COMPLETED"),
                [pay("refunded")],
                {"status": "COMPLETED", "state": "COMPLETED", "payment_status": "refunded"},
                tracking="T",
            ),
            "completed_without_charge",
        ),
        (
            facts(
                "CANCELLED",
                ev("CANCELLED"),
                [],
                {"status": "COMPLETED", "state": "COMPLETED", "payment_status": "none"},
            ),
            "state_mismatch",
        ),
        (facts("CANCELLED", ev("CANCELLED"), [], WF_FAILED), "state_mismatch"),
        (facts("FAILED", ev("FAILED"), [], {"status": "TIMED_OUT"}), "state_mismatch"),
        (
            facts(
                "FAILED",
                ev("PAYMENT_CHARGED", "PAYMENT_REFUNDED", "FAILED"),
                [pay("refunded")],
                {"status": "FAILED", "state": "FAILED", "payment_status": "charged"},
            ),
            "payment_mismatch",
        ),
        (facts("FAILED", ev("RECEIVED"), [], WF_FAILED), "missing_events"),
        (
            facts("FAILED", ev("FAILED", "PAYMENT_REFUNDED"), [pay("refunded")], WF_REFUNDED),
            "missing_events",
        ),
        (
            facts(
                "COMPLETED",
                ev("PAYMENT_CHARGED", "COMPLETED"),
                [pay("charged")],
                WF_COMPLETED,
                tracking="T",
            ),
            "missing_events",
        ),
        (facts("FAILED", ev("COMPLETED", "FAILED"), [], WF_FAILED), "conflicting_terminal_events"),
    ],
)
def test_each_violation_is_caught(broken: OrderFacts, kind: str) -> None:
    found = check_order(broken)
    assert kind in found, found


# Our side of an order (state, events, payments, workflow, tracking), for the ledgers to
# disagree with.
SHIPPED = (
    "COMPLETED",
    ev("PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
    [pay("charged")],
    WF_COMPLETED,
    "T",
)
FAILED_UNCHARGED: tuple[str, list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]] = (
    "FAILED",
    ev("RECEIVED", "VALIDATED", "FAILED"),
    [],
    {"status": "FAILED"},
)


@pytest.mark.parametrize(
    ("broken", "kind"),
    [
        (facts(*SHIPPED, gateway=[charge(), charge(n=2)]), "gateway_double_charges"),
        (facts(*FAILED_UNCHARGED, gateway=[charge()]), "gateway_charged_without_refund"),
        (facts(*FAILED_UNCHARGED, gateway=[charge()]), "ledger_mismatch"),
        (
            facts(
                "FAILED",
                ev("PAYMENT_CHARGED", "PAYMENT_REFUNDED", "FAILED"),
                [pay("refunded")],
                WF_REFUNDED,
                gateway=[charge(refunded=False)],
            ),
            "ledger_mismatch",
        ),
        (facts(*SHIPPED, gateway=[]), "ledger_mismatch"),
        (facts(*SHIPPED, carrier=[]), "ledger_mismatch"),
        (facts(*FAILED_UNCHARGED, carrier=[booking()]), "ledger_mismatch"),
        (facts(*SHIPPED, carrier=[booking("T"), booking("T2")]), "duplicate_dispatches"),
    ],
)
def test_each_ledger_violation_is_caught(broken: OrderFacts, kind: str) -> None:
    found = check_order(broken)
    assert kind in found, found


def test_a_cancelled_booking_of_a_closed_order_and_a_refunded_charge_are_healthy() -> None:
    f = facts(
        "FAILED",
        ev("PAYMENT_CHARGED", "PAYMENT_REFUNDED", "FAILED"),
        [pay("refunded")],
        WF_REFUNDED,
        carrier=[booking(cancelled=True)],
    )
    assert check_order(f) == {}


def test_a_payment_of_another_order_counts_as_a_double_charge() -> None:
    f = facts("FAILED", ev("FAILED"), [pay("charged", order_id="someone-else")], WF_FAILED)
    assert "double_charges" in check_order(f)


def test_the_fault_plan_is_a_function_of_the_seed() -> None:
    opts = ChaosOptions(duration_s=60, kill_interval_s=5)
    first = plan_faults(opts, random.Random(7))
    assert first == plan_faults(opts, random.Random(7))
    assert first != plan_faults(opts, random.Random(8))
    kinds = [f.kind for f in first]
    assert kinds.count("restart_temporal") == 1 and kinds.count("restart_postgres") == 1
    assert kinds.count("kill_worker") >= 6  # every 2.5-7.5 s over a minute
    assert all(0 < f.at_s < opts.duration_s for f in first)
    assert [f.at_s for f in first] == sorted(f.at_s for f in first)
    temporal = next(f for f in first if f.kind == "restart_temporal")
    postgres = next(f for f in first if f.kind == "restart_postgres")
    assert temporal.at_s < postgres.at_s


def test_the_plan_honours_its_limits() -> None:
    opts = ChaosOptions(duration_s=20, kill_interval_s=2, max_worker_kills=1)
    plan = plan_faults(opts, random.Random(1))
    assert sorted(f.kind for f in plan) == ["kill_worker", "restart_postgres", "restart_temporal"]
    quiet = ChaosOptions(kill_interval_s=0, restart_temporal=False, restart_postgres=False)
    assert plan_faults(quiet, random.Random(1)) == []


# --- retries, free orders, cancels, settling, keys (the adversarial run's checks) --------

RETRY_PID = retry_reference("pmt-o1", 2)  # pmt-o1#r2
# Run 1 failed after its charge (refunded), the operator retried, run 2 shipped.
RETRIED_EVENTS = ev(
    "RECEIVED",
    "PAYMENT_CHARGED",
    "PAYMENT_REFUNDED",
    "FAILED",
    "RETRIED",
    "RECEIVED",
    "VALIDATED",
    "PAYMENT_CHARGED",
    "DISPATCHED",
    "COMPLETED",
)


def retried_and_shipped(**ledgers: Any) -> OrderFacts:
    """Run 1 FAILED (refunded) and was retried; the retry paid with RETRY_PID and shipped
    as T2. `ledgers`: the gateway's and carrier's rows, when not as our tables say."""
    return facts(
        "COMPLETED",
        RETRIED_EVENTS,
        [pay("refunded"), pay("charged", payment_id=RETRY_PID)],
        WF_COMPLETED,
        tracking="T2",
        payment_id=RETRY_PID,
        **ledgers,
    )


# The failed run had booked and its booking was cancelled when it closed.
RETRIED_OK = retried_and_shipped(
    carrier=[booking("T1", cancelled=True), booking("T2", ref="o1#r2")]
)
FREE_OK = facts(
    "COMPLETED",
    ev("RECEIVED", "VALIDATED", "PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
    [pay("not_due") | {"amount_cents": 0}],
    {"status": "COMPLETED", "state": "COMPLETED", "payment_status": "not_due"},
    tracking="T",
    free=True,
)
CANCEL_ACCEPTED_OK = facts(
    "CANCELLED",
    ev(
        "RECEIVED",
        "VALIDATED",
        "PAYMENT_CHARGED",
        "CANCEL_REQUESTED",
        "CANCELLED",
        "PAYMENT_REFUNDED",
    ),
    [pay("refunded")],
    {"status": "COMPLETED", "state": "CANCELLED", "payment_status": "refunded"},
    cancels=[{"kind": "random", "outcome": "accepted", "at_s": 3.0}],
)
# Closed FAILED in our database, its refund still retrying at the gateway.
SETTLING = facts(
    "FAILED",
    ev("RECEIVED", "VALIDATED", "PAYMENT_CHARGED", "FAILED"),
    [pay("charged")],
    {"status": "RUNNING", "pending": ["RefundPayment attempt 13"]},
    settling=True,
)


@pytest.mark.parametrize("ok", [RETRIED_OK, FREE_OK, CANCEL_ACCEPTED_OK])
def test_retried_free_and_cancelled_orders_pass(ok: OrderFacts) -> None:
    assert check_order(ok) == {}
    assert check_across([ok]) == {}


def test_the_new_kinds_are_reported() -> None:
    for kind in ("left_charged", "shipped_unpaid", "shared_keys", "accepted_then_failed"):
        assert kind in VIOLATIONS


@pytest.mark.parametrize(
    ("broken", "kind"),
    [
        # Run 1 FAILED and was retried, yet the gateway keeps its charge.
        (
            retried_and_shipped(
                gateway=[charge(False), charge(False, RETRY_PID, 2)],
                carrier=[booking("T2", ref="o1#r2")],
            ),
            "left_charged",
        ),
        # The order ended FAILED with its charge kept at the gateway.
        (facts(*FAILED_UNCHARGED, gateway=[charge()]), "left_charged"),
        # COMPLETED, but the gateway refunded the charge.
        (facts(*SHIPPED, gateway=[charge(refunded=True)]), "shipped_unpaid"),
        # COMPLETED, and no charge of its own at the gateway at all.
        (facts(*SHIPPED, gateway=[]), "shipped_unpaid"),
        # The retry shipped, but the only kept charge is the failed run's payment.
        (
            retried_and_shipped(gateway=[charge(False)], carrier=[booking("T2", ref="o1#r2")]),
            "shipped_unpaid",
        ),
        # A free order must be not_due, and the gateway must never see it.
        (
            facts(
                "COMPLETED",
                ev("PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
                [pay("charged")],
                WF_COMPLETED,
                tracking="T",
                free=True,
            ),
            "completed_without_charge",
        ),
        (
            facts(
                "COMPLETED",
                ev("PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
                [pay("not_due") | {"amount_cents": 0}],
                {"status": "COMPLETED", "state": "COMPLETED", "payment_status": "not_due"},
                tracking="T",
                free=True,
                gateway=[charge()],
            ),
            "ledger_mismatch",
        ),
        # A charge under a key that does not name the order (the old payment-id key).
        (facts(*SHIPPED, gateway=[charge(key="pmt-o1")]), "shared_keys"),
        # A booking under a key naming another order.
        (facts(*SHIPPED, carrier=[booking(key="dispatch:o2:1:1")]), "shared_keys"),
        # The retry's booking under run 1's key.
        (
            facts(*SHIPPED, carrier=[booking("T", ref="o1#r2", key="dispatch:o1:1:1")]),
            "shared_keys",
        ),
        # A key the gateway holds for this order, naming another payment.
        (
            facts(
                *SHIPPED,
                keys=[
                    {
                        "provider": "gateway",
                        "key": "charge:o1:pmt-o2:1",
                        "order_ref": "o1",
                        "payment_id": "pmt-o1",
                    }
                ],
            ),
            "shared_keys",
        ),
        # Accepted, then the order ended FAILED.
        (
            facts(
                *FAILED_UNCHARGED,
                cancels=[{"kind": "random", "outcome": "accepted", "at_s": 2.5}],
            ),
            "accepted_then_failed",
        ),
        # Two charges in one run, told apart from one charge per run of a retried order.
        (
            TWO_CHARGES_IN_ONE_RUN,
            "double_charges",
        ),
        (
            retried_and_shipped(carrier=[booking("T1"), booking("T2", ref="o1#r2")]),
            "ledger_mismatch",  # run 1's booking kept although run 1 FAILED
        ),
    ],
)
def test_each_adversarial_violation_is_caught(broken: OrderFacts, kind: str) -> None:
    found = check_order(broken)
    assert kind in found, found


def test_a_refused_or_unknown_cancel_of_a_failed_order_is_fine() -> None:
    for outcome in ("refused", "unknown"):
        f = facts(*FAILED_UNCHARGED, cancels=[{"kind": "during_close", "outcome": outcome}])
        assert check_order(f) == {}


def test_an_order_still_compensating_is_settling_not_violating() -> None:
    # What its refund will set right waits; nothing else is excused.
    assert check_order(SETTLING) == {}
    deferred = deferred_checks(SETTLING)
    assert {"charged_without_refund", "left_charged", "not_terminal"} <= set(deferred)
    assert set(deferred) <= COMPENSATION_KINDS
    # Not settling: the same facts are violations.
    judged = check_order(facts(*_fields(SETTLING)))
    assert {"charged_without_refund", "left_charged", "not_terminal"} <= set(judged)
    # A double charge is no compensation's to fix.
    twice = facts(*_fields(SETTLING), gateway=[charge(), charge(n=2)], settling=True)
    assert "gateway_double_charges" in check_order(twice)
    # Nor is an accepted cancel of an order that is ending FAILED.
    accepted = facts(*_fields(SETTLING), settling=True, cancels=[{"outcome": "accepted"}])
    assert "accepted_then_failed" in check_order(accepted)


def _fields(
    f: OrderFacts,
) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    return (f.state, f.events, f.payments, f.workflow)


def test_orders_sharing_a_booking_a_charge_a_key_or_a_payment_id() -> None:
    def other(oid: str, **changes: Any) -> OrderFacts:
        f = facts(*SHIPPED)
        f.order_id = oid
        f.payment_id = f"pmt-{oid}"
        f.db = {**(f.db or {}), "payment_id": f"pmt-{oid}", "tracking_number": f"T-{oid}"}
        f.payments = [pay("charged", order_id=oid, payment_id=f"pmt-{oid}")]
        f.gateway = [charge(payment_id=f"pmt-{oid}", order_id=oid, n=hash(oid) % 1000)]
        f.carrier = [booking(f"T-{oid}", ref=oid)]
        for name, value in changes.items():
            setattr(f, name, value)
        return f

    assert check_across([other("a"), other("b")]) == {}
    # One booking recorded by two orders (a retry shipping under another order's id).
    shared = check_across(
        [other("a"), other("b", db={"state": "COMPLETED", "tracking_number": "T-a"})]
    )
    assert set(shared) == {"a", "b"} and "carrier booking T-a" in shared["b"][0]
    # One payment id held by two orders.
    held = check_across([other("a"), other("b", db={"state": "FAILED", "payment_id": "pmt-a"})])
    assert "payment id pmt-a" in held["a"][0]
    # One gateway charge in two orders' payment rows.
    a = other("a")
    b = other(
        "b", payments=[pay("charged", "b", "pmt-b") | {"gateway_ref": a.gateway[0]["charge_id"]}]
    )
    assert "gateway charge" in check_across([a, b])["b"][0]


@pytest.mark.parametrize(
    ("provider", "key", "ref", "payment", "ok"),
    [
        ("gateway", "charge:o1:pmt-o1:1", "o1", "pmt-o1", True),
        ("gateway", "refund:o1:pmt-o1#r2:2", "o1", "pmt-o1#r2", True),
        ("gateway", "charge:o1.r2:pmt-o1.r2:1", "o1.r2", "pmt-o1.r2", True),
        ("gateway", "pmt-o1", "o1", "pmt-o1", False),  # the old key: any order could send it
        ("gateway", "charge:o2:pmt-o1:1", "o1", "pmt-o1", False),
        ("gateway", "charge:o1:pmt-o1:2", "o1", "pmt-o1", False),  # run 1 under run 2's key
        ("gateway", "charge:o1:pmt-x:1", "o1", "pmt-o1", False),
        ("carrier", "dispatch:o1:1:3", "o1", None, True),
        ("carrier", "prepare:o1:2:1", "o1#r2", None, True),
        ("carrier", "dispatch:o1.r2:1:1", "o1", None, False),  # another order's id
        ("carrier", "dispatch:o1:1:1", "o1#r2", None, False),
        ("carrier", "dispatch:o1:1", "o1", None, False),
        ("carrier", "charge:o1:1:1", "o1", None, False),
    ],
)
def test_a_key_names_its_order_and_run(
    provider: str, key: str, ref: str, payment: str | None, ok: bool
) -> None:
    assert (key_problem(provider, key, ref, payment) is None) is ok
