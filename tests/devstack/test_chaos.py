"""`cli.py chaos --adversarial` end to end: 20 orders under faults (lost answers too) on a
stack of its own, while one worker is SIGKILLed, the Temporal dev server restarts and
PostgreSQL restarts; among them reused payment ids, dotted and retry-like ids, free orders,
cancels at random moments and while orders close, and retries of FAILED orders; then the
reconciliation. One run, the plain invariants and the adversarial ones together.

Not on the session's `cli_stack`: restarting Temporal and PostgreSQL under the other e2e
tests would make them fail for reasons of ours. On the stack of the devstack e2e tests'
own, which the deploy test uses afterwards (tests/devstack/conftest.py). Its ports, like every
test stack's, are below the kernel's ephemeral range (tests/ports.py): while a service is
down, a client's new outgoing connection could otherwise take its port as a source port,
and the service could not come back on it.

The workers run with FAULT_SEED and the order ids are fixed, so every external call's
outcome (fail, hang, succeed) is the same on each run; which attempts a kill or a restart
interrupts still varies. The mix is drawn from the run's seed, and the orders it retries
include some that fail by design (every provider answer of their first attempts lost), so
each of its kinds happens whatever the kills interrupted.
"""

from __future__ import annotations

import json
import shutil
import uuid
from typing import Any

import pytest

from app.platform.settings import PROJECT_ROOT
from devstack.chaos.adversarial import KINDS
from devstack.chaos.checks import VIOLATIONS
from tests.devstack.copied_stack import CopiedStack
from tests.helpers import CliStack, describe, stack_env

pytestmark = pytest.mark.e2e

ORDERS = 20
# The run lasts until its last order closes: a FAILED order is retried until half the
# duration plus half the deadline, and its new run may take the whole deadline (and then
# its compensation). 12 s of faults still hold the kill and both restarts one after
# another, and 30 s leave an order room to outlive them; 16 s and 40 s cost ~12 s more.
DURATION_S = 12
ORDER_DEADLINE_S = 30
# The guide's faults before the effect, plus answers lost after it (the provider acted).
PROFILE = "fail=0.2,hang=0.2,lost=0.2"


@pytest.fixture(scope="module")
def chaos_stack(own_stack: CopiedStack) -> CopiedStack:
    return own_stack


@pytest.mark.timeout(240)
def test_invariants_hold_through_kills_restarts_and_an_adversarial_mix(
    chaos_stack: CliStack,
) -> None:
    result = chaos_stack.run(
        "chaos",
        "--orders",
        str(ORDERS),
        "--duration",
        str(DURATION_S),
        "--seed",
        "7",
        "--kill-interval",
        "4",
        "--max-worker-kills",
        "1",
        "--order-deadline",
        str(ORDER_DEADLINE_S),
        "--grace",
        "40",
        "--id-prefix",
        "chaos-e2e",
        "--fault-profile",
        PROFILE,
        "--adversarial",
        "--json",
        timeout=200,
    )
    assert result.stdout, describe(result)
    summary: dict[str, Any] = json.loads(result.stdout)
    violations = {k: v for k, v in summary["violations"].items() if v}
    evidence = json.dumps(summary.get("evidence", {}), indent=1)[:6000]
    reconciliation = summary["reconciliation"]
    assert result.returncode == 0 and summary["ok"], (
        f"{violations}\n{reconciliation}\n{evidence}\n{result.stderr}"
    )
    assert summary["violation_count"] == 0
    assert set(VIOLATIONS) == set(summary["violations"])  # ledger and key checks among them
    assert summary["fault_profile"] == PROFILE
    # Compensation landed within the wait: nothing left settling, nothing for the
    # reconciliation to resolve.
    assert summary["settling"] == []
    assert "error" not in reconciliation, reconciliation
    assert reconciliation["unresolved"] == 0, reconciliation

    # The mix happened, every kind of it.
    mix, outcomes = summary["adversarial"], summary["adversarial_outcomes"]
    assert set(mix) == set(KINDS)
    assert all(n > 0 for n in mix.values()), mix
    # A start with a payment id another order holds is refused (409 naming payment_id):
    # expected, not a failure; every other order started.
    refused = outcomes["payment_id_refused"]
    assert len(refused) == mix["reused_payment_ids"]
    assert summary["orders_started"] + len(refused) == ORDERS
    assert len(outcomes["retried"]) == mix["retries"]

    # It did what it says: every order started and approved, one fault of each kind, each
    # service back afterwards.
    # (An order whose RECEIVE fails fast may close before its approval lands.)
    assert summary["orders_approved"] > summary["orders_started"] // 2
    assert summary["fault_counts"] == {
        "kill_worker": 1,
        "restart_temporal": 1,
        "restart_postgres": 1,
    }
    for fault in summary["faults"]:
        assert fault["ok"] and fault["new_pid"] != fault["pid"], fault
    assert sum(summary["terminal"].values()) == summary["orders_started"]
    payments = summary["payments"]
    assert payments["charged"] == payments["refunded"] + payments["kept"]
    # A shipped order keeps its charge, a free one had nothing due.
    assert payments["kept"] + payments["free_completed"] == summary["terminal"]["COMPLETED"]
    # The providers' own ledgers agree: every gateway charge is one of our payment rows,
    # every refund one of our refunds, and only shipped orders keep a carrier booking.
    ledger = summary["ledger"]
    assert ledger["gateway_charges"] == payments["charged"]
    assert ledger["gateway_refunds"] == payments["refunded"]
    booked = ledger["carrier_dispatches"] - ledger["carrier_cancelled"]
    assert booked == summary["terminal"]["COMPLETED"]
    rows = json.loads(chaos_stack.ok("ps", "--json"))
    assert all(r["state"] == "running" for r in rows), rows

    # The stack still works for a plain order after all that.
    chaos_stack.ok("start-workflow", "after-chaos", "pmt-after-chaos", "--approve")
    view = chaos_stack.wait_status("after-chaos", lambda v: v["state"] == "COMPLETED")
    assert view["payment_status"] == "charged"


def test_chaos_refuses_a_stopped_stack() -> None:
    run_dir = PROJECT_ROOT / ".run" / f"chaos-none-{uuid.uuid4().hex[:8]}"
    stack = CliStack(run_dir, stack_env(run_dir))
    try:
        result = stack.run("chaos", "--orders", "1", "--duration", "5")
        assert result.returncode == 1, describe(result)
        assert "not running" in result.stderr and "cli.py start" in result.stderr
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
