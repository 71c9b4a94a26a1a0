"""The chaos run's invariant checker and fault plan (devstack/chaos_*.py), without a stack.

A checker that never complains proves nothing: each violation kind is shown to be caught
on facts built to break it, and a healthy order of each ending passes.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from devstack.chaos_checks import OrderFacts, check_order
from devstack.chaos_faults import ChaosOptions, plan_faults

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


def charge(refunded: bool = False, payment_id: str = "pmt-o1", n: int = 1) -> dict[str, Any]:
    return {
        "charge_id": f"ch_{n}",
        "payment_id": payment_id,
        "amount_cents": AMOUNT,
        "refunded_cents": AMOUNT if refunded else 0,
        "refunds": [{"refund_id": f"re_{n}"}] if refunded else [],
    }


def booking(tracking: str = "T", cancelled: bool = False) -> dict[str, Any]:
    return {"tracking_number": tracking, "cancelled": cancelled}


def facts(
    state: str | None,
    events: list[dict[str, Any]],
    payments: list[dict[str, Any]] | None = None,
    workflow: dict[str, Any] | None = None,
    tracking: str | None = None,
    gateway: list[dict[str, Any]] | None = None,
    carrier: list[dict[str, Any]] | None = None,
) -> OrderFacts:
    """Facts whose ledgers agree with our tables unless `gateway`/`carrier` say otherwise."""
    payments = payments or []
    if gateway is None:
        gateway = [
            charge(p["status"] == "refunded", p["payment_id"], n)
            for n, p in enumerate(payments)
            if p["order_id"] == "o1"
        ]
    return OrderFacts(
        order_id="o1",
        payment_id="pmt-o1",
        db=None if state is None else {"state": state, "tracking_number": tracking},
        payments=payments,
        events=events,
        workflow=workflow or {},
        gateway=gateway,
        carrier=carrier if carrier is not None else ([booking(tracking)] if tracking else []),
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
            facts(
                "COMPLETED",
                ev("PAYMENT_CHARGED", "PAYMENT_CHARGED", "DISPATCHED", "COMPLETED"),
                [pay("charged")],
                WF_COMPLETED,
                tracking="T",
            ),
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
FAILED_UNCHARGED = ("FAILED", ev("RECEIVED", "VALIDATED", "FAILED"), [], {"status": "FAILED"})


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
