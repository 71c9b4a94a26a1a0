"""`cli.py start` keeps the reconciliation's schedule; `cli.py reconcile` runs it now, on the
stack the CLI started itself (after the other CLI tests' orders: none may be left
unresolved)."""

from __future__ import annotations

import json
import subprocess

import pytest

from devstack.stack.config import temporal_binary
from tests.helpers import CliStack, describe

pytestmark = pytest.mark.e2e


def test_start_keeps_the_reconciliation_schedule(cli_stack: CliStack) -> None:
    listed = subprocess.run(
        [str(temporal_binary()), "schedule", "list", "--address", cli_stack.env["TEMPORAL_TARGET"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "reconciliation" in listed.stdout
    assert "schedule reconciliation unchanged" in cli_stack.ok("start")
    assert cli_stack.ok("reconcile-schedule").strip() == "schedule reconciliation unchanged"


def test_reconcile_json_on_a_clean_stack(cli_stack: CliStack) -> None:
    result = cli_stack.run("reconcile", "--json")
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    assert (report["unresolved"], report["findings"]) == (0, []), report
    assert report["trigger"] == "manual" and set(report["checked"]) == {
        "orders",
        "charges",
        "bookings",
    }
    table = cli_stack.ok("reconcile", "--no-heal")
    assert "0 unresolved" in table
