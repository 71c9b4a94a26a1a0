"""The README's walk ("Using it"), line by line as written, on the stack the CLI started.

The walk's lines are read from README.md and run in order; each has the check of what its
comment promises, so the README and this test cannot drift apart: a changed, added or
removed line fails here until its check says what it does. Where the README says "a moment
later" or "seconds later", the test waits (through the REST API) as a reader would.

The session's stack runs with FAULT_PROFILE=off, and so the walk's own `--fault-profile off`
is what makes it pass on the default `seed` profile too; the order started with
`--fault-profile seed` shows what "When faults strike" says a newcomer sees there.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from app.platform.settings import PROJECT_ROOT
from tests.helpers import CliStack, describe

pytestmark = pytest.mark.e2e

README = PROJECT_ROOT / "README.md"
LAUNCHER = ["python", "scripts/cli.py"]
SERVICES = ("postgres", "temporal", "worker-orders", "worker-shipping", "app")

Result = subprocess.CompletedProcess[str]
View = dict[str, Any]


def walk_lines() -> list[list[str]]:
    """The commands of the README's first block under "## Using it", as a shell splits
    them (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Using it\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def closed_line(order_id: str) -> str:
    """What `approve` answers for an order that failed at RECEIVE, as the README quotes it
    for order-123 in "When faults strike"."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    quoted = re.search(r"`approve` then answers `(error: order order-123 is [^`]+)`", text)
    assert quoted, "the README no longer quotes approve's answer for a failed order"
    return quoted.group(1).replace("order-123", order_id)


def ok(result: Result) -> str:
    assert result.returncode == 0, describe(result)
    return result.stdout


def completed(view: View) -> bool:
    return view["state"] == "COMPLETED"


def failed_and_settled(view: View) -> bool:
    return view["state"] == "FAILED" and bool(view["settled"])


def table_column(out: str, column: int = 0) -> list[str]:
    """A rich table's cells of one column, top to bottom. A row whose long cells wrap goes
    on in lines with an empty first cell: those are left out."""
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    return [row[column].strip() for row in rows if len(row) > column and row[0].strip()]


@dataclass
class Line:
    """One line of the walk: what to wait for first (as a reader would), then its check."""

    command: str
    check: Callable[[CliStack, Result], None]
    before: Callable[[CliStack], None] | None = None


def wait(order_id: str, done: Callable[[View], bool]) -> Callable[[CliStack], None]:
    def waiting(stack: CliStack) -> None:
        stack.wait_status(order_id, done, timeout=30)

    return waiting


def check_ps(stack: CliStack, result: Result) -> None:
    out = ok(result)
    for service in SERVICES:
        assert re.search(rf"│ {service}\s+│ running", out), out


def check_status_123(stack: CliStack, result: Result) -> None:
    out = ok(result)
    for text in ("COMPLETED", "456 New St, New City", "charged  $19.99"):
        assert text in out, out


def check_cancel_124(stack: CliStack, result: Result) -> None:
    out = ok(result)
    assert "state CANCELLED  payment none" in out, out
    view = stack.status("order-124")
    assert (view["state"], view["payment_status"]) == ("CANCELLED", "none")


def check_closed_125(stack: CliStack, result: Result) -> None:
    assert result.returncode == 1, describe(result)
    assert result.stderr.strip() == closed_line("order-125"), describe(result)


def check_retry_125(stack: CliStack, result: Result) -> None:
    out = ok(result)
    assert "order order-125 retried" in out and "faults: off" in out, out


def check_completed_125(stack: CliStack, result: Result) -> None:
    ok(result)
    view = stack.wait_status("order-125", completed)
    assert (view["payment_id"], view["payment_status"]) == ("pmt-125#r2", "charged"), view


def check_signal_126(stack: CliStack, result: Result) -> None:
    assert "Signal workflow succeeded" in ok(result)
    # Nothing else approves it: the signal did.
    stack.wait_status("order-126", completed)


def check_list(stack: CliStack, result: Result) -> None:
    orders = table_column(ok(result))
    walk = ["order-126", "order-125", "order-124", "order-123"]
    assert orders[:4] == walk, orders


def check_describe_123(stack: CliStack, result: Result) -> None:
    out = ok(result)
    ui = f"http://127.0.0.1:{stack.env['TEMPORAL_UI_PORT']}/namespaces/default/workflows/"
    for text in ("COMPLETED", "orders-tq", f"{ui}order-order-123/"):
        assert text in out, out


def check_history_123(stack: CliStack, result: Result) -> None:
    events = table_column(ok(result), 2)
    assert events[0] == "WORKFLOW_EXECUTION_STARTED", events
    assert events[-1] == "WORKFLOW_EXECUTION_COMPLETED", events


def check_stats(stack: CliStack, result: Result) -> None:
    out = ok(result)
    for text in ("p50", "p95", "p99", "RECEIVE", "SHIP"):
        assert text in out, out


def started(order_id: str, faults: str) -> Callable[[CliStack, Result], None]:
    def check(stack: CliStack, result: Result) -> None:
        out = ok(result)
        assert f"order {order_id} started" in out and f"faults: {faults}" in out, out

    return check


def succeeds(*texts: str) -> Callable[[CliStack, Result], None]:
    def check(stack: CliStack, result: Result) -> None:
        out = ok(result)
        for text in texts:
            assert text in out, out

    return check


WALK = [
    Line("python scripts/cli.py start", succeeds("stack already running")),
    Line("python scripts/cli.py ps", check_ps),
    Line(
        "python scripts/cli.py start-workflow order-123 pmt-123 --fault-profile off",
        started("order-123", "off"),
    ),
    Line(
        'python scripts/cli.py update-address order-123 --street "456 New St" --city "New City"',
        succeeds("ships to 456 New St, New City, TS 12345, US"),
    ),
    Line("python scripts/cli.py approve order-123", succeeds("order order-123 approved by")),
    Line(
        "python scripts/cli.py status order-123",
        check_status_123,
        before=wait("order-123", completed),
    ),
    Line(
        "python scripts/cli.py start-workflow order-124 pmt-124 --fault-profile off",
        started("order-124", "off"),
    ),
    Line("python scripts/cli.py cancel order-124", check_cancel_124),
    Line(
        "python scripts/cli.py start-workflow order-125 pmt-125 --fault-profile fail=1",
        started("order-125", "fail=1"),
    ),
    Line(
        "python scripts/cli.py approve order-125",
        check_closed_125,
        before=wait("order-125", failed_and_settled),
    ),
    Line("python scripts/cli.py retry order-125 --fault-profile off", check_retry_125),
    Line("python scripts/cli.py approve order-125", check_completed_125),
    Line(
        "python scripts/cli.py start-workflow order-126 pmt-126 --fault-profile off",
        started("order-126", "off"),
    ),
    Line(
        "python scripts/cli.py temporal workflow signal --workflow-id order-order-126 "
        "--name approve_order",
        check_signal_126,
    ),
    Line("python scripts/cli.py list --limit 10", check_list),
    Line("python scripts/cli.py describe order-order-123", check_describe_123),
    Line("python scripts/cli.py history order-order-123", check_history_123),
    Line("python scripts/cli.py stats", check_stats),
]


def test_the_walk_is_the_readme_s(cli_stack: CliStack) -> None:
    assert walk_lines() == [shlex.split(line.command) for line in WALK]


def test_the_readme_walk_does_what_it_says(cli_stack: CliStack) -> None:
    # The default profile's order starts beside the walk's first line (`start`, which
    # finds the stack running), so its wait overlaps the walk's; it is older than the
    # walk's orders, as `list` expects.
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(SeededOrder.start, cli_stack)
        walk_line(cli_stack, WALK[0])
        seeded = starting.result()
    for line in WALK[1:]:
        walk_line(cli_stack, line)
    seeded.check(cli_stack)


def walk_line(stack: CliStack, line: Line) -> None:
    if line.before is not None:
        line.before(stack)
    args = shlex.split(line.command)
    assert args[:2] == LAUNCHER, line.command
    line.check(stack, stack.run(*args[2:]))


@dataclass
class SeededOrder:
    """An order under the guide's `seed` profile: what it shows is what "When faults strike"
    says, whatever its draws were. Not approved, with a 1 s review: it never pays, so it
    ends within its (short) deadline with nothing to refund."""

    order_id: str

    @classmethod
    def start(cls, stack: CliStack) -> SeededOrder:
        order_id = f"walk-seed-{uuid.uuid4().hex[:6]}"
        short = {**stack.env, "ORDER_DEADLINE_S": "20"}
        args = ("--fault-profile", "seed", "--review-timeout", "1")
        out = ok(stack.run("start-workflow", order_id, f"pmt-{order_id}", *args, env=short))
        assert "faults: seed (--fault-profile)" in out, out
        return cls(order_id)

    def check(self, stack: CliStack) -> None:
        # Closed and settled, so no later check (reconcile) meets it half done.
        view = stack.wait_status(self.order_id, lambda v: bool(v["settled"]), timeout=40)
        assert view["payment_status"] == "none", view
        # The README's two kinds, the step's own last word ("error"), an attempt cut off.
        kinds = {e["kind"] for e in view["errors"]}
        assert kinds <= {"SimulatedFailure", "timeout", "error", None, "cancelled"}, view["errors"]
        for step, tries in view["attempts"].items():
            assert 1 <= tries <= 3, (step, view["attempts"])
        refused = stack.run("approve", self.order_id)
        assert refused.returncode == 1, describe(refused)
        line = refused.stderr.strip()
        if view["state"] == "FAILED" and view["reason"] != "deadline_exceeded":
            # As quoted for order-123, at its own step.
            step = view["step"]
            expected = closed_line(self.order_id).replace("RECEIVE", step)
            assert line == expected.replace("receive_failed", f"{step.lower()}_failed"), line
        else:  # cut off by its deadline while retrying, or not approved in its 1 s review
            assert line.startswith(
                f"error: order {self.order_id} is already closed: {view['state']} at "
            ), line
