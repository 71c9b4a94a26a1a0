"""Every CLI command against a real embedded stack that the CLI started itself.

Orders run with the `off` fault profile (set for the whole stack), so outcomes are
deterministic; the demo asks for its faulty order explicitly. Commands run as
subprocesses; waiting for an order polls the REST API (a process per poll is slow).
Tests run in file order: the stop/start test comes last.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.platform.settings import PROJECT_ROOT
from tests.helpers import (
    CLI,
    TEST_WORKFLOW,
    CliStack,
    describe,
    run_cli,
    stack_env,
)

pytestmark = pytest.mark.e2e

COMMANDS = (
    "start",
    "stop",
    "restart",
    "ps",
    "start-workflow",
    "status",
    "cancel",
    "update-address",
    "approve",
    "retry",
    "list",
    "describe",
    "history",
    "events",
    "logs",
    "demo",
)
SERVICES = ("postgres", "temporal", "worker-orders", "worker-shipping", "app")
GUIDE_ADDRESS = {
    "street": "123 Main St",
    "city": "Test City",
    "state": "TS",
    "zip": "12345",
    "country": "US",
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The operational-error contract: exit 1, one line on stderr, no traceback."""
    assert result.returncode == 1, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def in_review(view: dict[str, object]) -> bool:
    return view["step"] == "MANUAL_REVIEW"


def completed(view: dict[str, object]) -> bool:
    return view["state"] == "COMPLETED"


@dataclass
class Done:
    """An order taken through the guide's happy path by the CLI."""

    order_id: str
    start_out: str
    review: dict[str, object]
    approve_out: str


@pytest.fixture(scope="module")
def done(cli_stack: CliStack) -> Done:
    oid = new_id("e2e-done")
    start_out = cli_stack.ok("start-workflow", oid, f"pmt-{oid}")
    review = cli_stack.wait_status(oid, in_review)
    approve_out = cli_stack.ok("approve", oid, "--reviewer", "e2e")
    cli_stack.wait_status(oid, completed)
    return Done(oid, start_out, review, approve_out)


@dataclass
class Unreceived:
    """An order whose every RECEIVE attempt failed (`fail=1`), closed FAILED and settled:
    an address change meets it first (refused), then a retry."""

    order_id: str
    failed: dict[str, Any]


# --- stack ---------------------------------------------------------------------------------


def test_help_lists_every_command(cli_stack: CliStack) -> None:
    out, status = cli_stack.ok_each(["--help"], ["status", "--help"])
    for command in COMMANDS:
        assert command in out
    # A flag takes no value: no type after it.
    assert "--help " in out and "<bool>" not in out
    assert "--json " in status and "<bool>" not in status


def test_start_is_idempotent(cli_stack: CliStack) -> None:
    assert "already running" in cli_stack.ok("start")


def test_ps_shows_every_service_running(cli_stack: CliStack) -> None:
    rows = {row["service"]: row for row in cli_stack.json("ps")}
    for name in SERVICES:
        assert rows[name]["state"] == "running", rows
        assert isinstance(rows[name]["pid"], int)
    env = cli_stack.env
    assert rows["postgres"]["address"] == f"127.0.0.1:{env['POSTGRES_PORT']}"
    assert f"UI http://127.0.0.1:{env['TEMPORAL_UI_PORT']}" in rows["temporal"]["address"]
    assert rows["app"]["address"] == cli_stack.api
    assert httpx.get(f"{cli_stack.api}/health", timeout=5).status_code == 200


def test_launcher_reexecs_into_the_venv_from_a_plain_python(cli_stack: CliStack) -> None:
    # The interpreter the venv was made from has none of the project's packages.
    base = Path(getattr(sys, "_base_executable", sys.executable))
    result = subprocess.run(
        [str(base), CLI, "ps"],
        env=cli_stack.env,
        cwd=cli_stack.run_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, describe(result)
    for name in SERVICES:
        assert name in result.stdout


# --- orders --------------------------------------------------------------------------------


def test_happy_path(cli_stack: CliStack, done: Done) -> None:
    assert f"order-{done.order_id}" in done.start_out
    assert done.review["state"] == "VALIDATED"
    assert done.review["address"] == GUIDE_ADDRESS
    assert "approved by e2e" in done.approve_out
    as_json, table = cli_stack.ok_each(
        ["status", done.order_id, "--json"], ["status", done.order_id]
    )
    view = json.loads(as_json)
    assert (view["state"], view["payment_status"]) == ("COMPLETED", "charged")
    assert view["attempts"] == {"RECEIVE": 1, "VALIDATE": 1, "PAY": 1, "SHIP": 1}
    for text in ("COMPLETED", "charged", view["tracking_number"], f"order-{done.order_id}"):
        assert text in table
    assert "\x1b[" not in table  # no colour codes when stdout is not a terminal


def test_start_workflow_twice_is_refused(cli_stack: CliStack, done: Done) -> None:
    line = one_error_line(cli_stack.run("start-workflow", done.order_id, "pmt-again"))
    assert line == f"error: order {done.order_id} already exists"


def test_update_address_with_the_guide_options(cli_stack: CliStack) -> None:
    oid = new_id("e2e-addr")
    cli_stack.ok("start-workflow", oid, f"pmt-{oid}", "--state", "NS", "--zip", "54321")
    cli_stack.wait_status(oid, in_review)
    out = cli_stack.ok("update-address", oid, "--street", "456 New St", "--city", "New City")
    assert "456 New St, New City, NS 54321, US" in out
    cli_stack.ok("approve", oid)
    view = cli_stack.wait_status(oid, completed)
    # The fields not given keep the order's current values; the carrier got the new one.
    new = {**GUIDE_ADDRESS, "street": "456 New St", "city": "New City", "state": "NS"}
    new["zip"] = "54321"
    assert view["address"] == new
    dispatched = [e for e in cli_stack.json("events", oid) if e["type"] == "DISPATCHED"]
    assert dispatched[-1]["payload"]["address"] == new


def test_bad_address_is_refused_naming_the_field(cli_stack: CliStack, done: Done) -> None:
    start, update = cli_stack.run_each(
        ["start-workflow", new_id("e2e-bad"), "p1", "--country", "usa"],
        ["update-address", done.order_id, "--zip", "!!"],
    )
    assert "address.country" in one_error_line(start)
    assert "address.zip" in one_error_line(update)


def test_cancel_in_review(cli_stack: CliStack) -> None:
    oid = new_id("e2e-cancel")
    cli_stack.ok("start-workflow", oid, f"pmt-{oid}")
    cli_stack.wait_status(oid, in_review)
    out = cli_stack.ok("cancel", oid, "--reason", "changed_mind")
    assert "CANCELLED" in out and "payment none" in out
    status, approve, listed = cli_stack.run_each(
        ["status", oid, "--json"],
        ["approve", oid],
        ["list", "--reason", "changed_mind", "--limit", "1000", "--json"],
    )
    assert status.returncode == 0, describe(status)
    view = json.loads(status.stdout)
    assert (view["state"], view["reason"], view["payment_status"]) == (
        "CANCELLED",
        "changed_mind",
        "none",
    )
    # A closed order refuses further changes, in one line.
    assert "already closed" in one_error_line(approve)
    assert listed.returncode == 0, describe(listed)
    by_reason = json.loads(listed.stdout)["items"]
    assert oid in [o["order_id"] for o in by_reason]
    assert {o["reason"] for o in by_reason} == {"changed_mind"}


def test_list_describe_history_events(cli_stack: CliStack, done: Done) -> None:
    wid = f"order-{done.order_id}"
    listed = ["list", "--limit", "1000", "--json"]
    # Every read but the second page's (it needs the first's cursor), at once.
    reads = {
        "page": ["list", "--limit", "10", "--json"],
        "completed": ["list", "--state", "completed", "--limit", "100"],
        "charged": [*listed, "--payment-status", "CHARGED"],
        "uncharged": [*listed, "--payment-status", "none"],
        "created_before": [*listed, "--created-before", "2100-01-01T00:00:00+00:00"],
        "created_after": [*listed, "--created-after", "2100-01-01T00:00:00Z"],
        "first": ["list", "--limit", "1", "--json"],
        "first_table": ["list", "--limit", "1"],
        "describe": ["describe", wid, "--json"],
        "describe_table": ["describe", wid],
        "history": ["history", wid, "--json"],
        "history_table": ["history", wid],
        "events": ["events", done.order_id],
    }
    out = dict(zip(reads, cli_stack.ok_each(*reads.values()), strict=True))

    def ids(name: str) -> list[str]:
        return [o["order_id"] for o in json.loads(out[name])["items"]]

    page = json.loads(out["page"])
    assert page["limit"] == 10 and page["total"] >= 1
    assert done.order_id in ids("page")
    assert done.order_id in out["completed"] and "CANCELLED" not in out["completed"]
    assert done.order_id in ids("charged")
    assert done.order_id not in ids("uncharged")
    assert done.order_id in ids("created_before")
    assert done.order_id not in ids("created_after")
    first = json.loads(out["first"])
    assert first["next_cursor"], first
    second = cli_stack.json("list", "--limit", "1", "--cursor", first["next_cursor"])
    assert second["items"] and second["items"][0]["order_id"] != first["items"][0]["order_id"]
    assert "more: the same command with --cursor" in out["first_table"]

    info = json.loads(out["describe"])
    assert (info["workflow_id"], info["type"], info["status"]) == (
        wid,
        "OrderWorkflow",
        "COMPLETED",
    )
    assert info["task_queue"] == "orders-tq" and info["history_length"] > 10
    assert info["ui_url"].startswith(f"http://127.0.0.1:{cli_stack.env['TEMPORAL_UI_PORT']}/")
    assert "OrderWorkflow" in out["describe_table"]

    events = json.loads(out["history"])
    assert events[0]["type"] == "WORKFLOW_EXECUTION_STARTED"
    assert events[-1]["type"] == "WORKFLOW_EXECUTION_COMPLETED"
    assert len(events) == info["history_length"]
    assert "ChargePayment" in out["history_table"]

    audit = out["events"]
    for kind in ("RECEIVED", "APPROVED", "PAYMENT_CHARGED", "DISPATCHED"):
        assert kind in audit


# --- errors --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unreceived(cli_stack: CliStack) -> Unreceived:
    oid = new_id("e2e-unreceived")
    cli_stack.ok("start-workflow", oid, f"pmt-{oid}", "--fault-profile", "fail=1")
    failed = cli_stack.wait_status(oid, lambda v: v["state"] == "FAILED" and v["settled"])
    return Unreceived(oid, failed)


def test_address_change_of_an_order_closed_before_it_was_received(
    cli_stack: CliStack, unreceived: Unreceived
) -> None:
    # Every RECEIVE attempt fails: the order closes FAILED (its address recorded all the
    # same); the caller is told it is closed, and how it ended.
    update = cli_stack.run("update-address", unreceived.order_id, "--street", "456 New St")
    line = one_error_line(update)
    assert "already closed" in line and "FAILED" in line


def test_failed_order_found_by_search_attribute_and_retried(
    cli_stack: CliStack, unreceived: Unreceived
) -> None:
    # The stack `cli.py start` brought up registered the search attributes with its dev
    # server; the failed order is found by them, and retried (it fails again: same faults).
    oid, failed = unreceived.order_id, unreceived.failed
    query = f"OrderState='FAILED' AND WorkflowId='order-{oid}'"

    def found() -> list[str]:
        return [o["order_id"] for o in cli_stack.json("list", "--query", query)["items"]]

    deadline = time.monotonic() + 20
    while not found() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found() == [oid]
    out = cli_stack.ok("retry", oid)
    assert f"order {oid} retried" in out
    # The new run fails its RECEIVE again and closes like any order, recorded as its own.
    view = cli_stack.wait_status(
        oid, lambda v: v["run_id"] not in (None, failed["run_id"]) and v["settled"]
    )
    assert (view["state"], view["reason"], view["attempts"]) == (
        "FAILED",
        "receive_failed",
        {"RECEIVE": 3},
    )
    assert view["payment_id"] == f"pmt-{oid}#r2"
    events, unknown = cli_stack.run_each(["events", oid, "--json"], ["retry", f"{oid}-unknown"])
    assert events.returncode == 0, describe(events)
    types = [e["type"] for e in json.loads(events.stdout)]
    assert types.count("RETRIED") == 1 and types.count("FAILED") == 2
    line = one_error_line(unknown)
    assert line == f"error: order {oid}-unknown not found"


def test_describe_names_a_pending_activity_s_state(cli_stack: CliStack) -> None:
    # Every call hangs: ReceiveOrder is pending, and describe names its state.
    oid = new_id("e2e-pending")
    cli_stack.ok("start-workflow", oid, f"pmt-{oid}", "--fault-profile", "hang=1")
    deadline = time.monotonic() + 20
    while not (pending := cli_stack.json("describe", f"order-{oid}")["pending_activities"]):
        assert time.monotonic() < deadline, "no pending activity"
        time.sleep(0.3)
    assert pending[0]["state"] in ("SCHEDULED", "STARTED"), pending
    assert re.search(
        r"ReceiveOrder\s+│ (SCHEDULED|STARTED)", cli_stack.ok("describe", f"order-{oid}")
    )
    cli_stack.ok("cancel", oid)


def test_unknown_order_or_workflow(cli_stack: CliStack) -> None:
    others = (
        ("cancel", "no-such-order"),
        ("describe", "order-no-such-order"),
        ("history", "order-no-such-order"),
    )
    result, *answers = cli_stack.run_each(("status", "no-such-order"), *others)
    assert one_error_line(result) == "error: order no-such-order not found"
    assert result.stdout == ""
    for args, answer in zip(others, answers, strict=True):
        assert "not found" in one_error_line(answer), args


def test_usage_errors_exit_2(cli_stack: CliStack) -> None:
    for result in cli_stack.run_each(
        ("start-workflow", "only-order-id"),
        ("list", "--limit", "abc"),
        ("logs", "--service", "nope"),
        ("update-address", "x"),
        ("list", "--created-after", "2026-12-03T09:00:00"),
        ("list", "--created-after", "yesterday"),
        ("list", "--query", "OrderState='FAILED'", "--payment-status", "charged"),
        ("list", "--created-after", "2026-12-03T10:00Z", "--created-before", "2026-12-03T09:00Z"),
        ("list", "--cursor", "bogus"),
        ("bench", "--status-seconds", "-1"),
        ("bench", "--soak", "--approve", "api"),
    ):
        assert result.returncode == 2, describe(result)
        assert "Traceback" not in result.stderr


def test_stack_down_is_one_line(cli_stack: CliStack) -> None:
    down = stack_env(PROJECT_ROOT / ".run" / f"e2e-down-{uuid.uuid4().hex[:8]}")
    where = Path(down["RUN_DIR"])
    try:
        stack = CliStack(where, down)
        status, ps, logs = stack.run_each(["status", "x"], ["ps", "--json"], ["logs"])
        line = one_error_line(status)
        assert "Temporal is not reachable" in line and "cli.py start" in line, line
        rows = json.loads(ps.stdout)
        assert {r["state"] for r in rows} == {"stopped"}
        assert "no log" in one_error_line(logs)
        stopped = stack.run("stop")
        assert stopped.returncode == 0 and "not running" in stopped.stdout
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_taken_port_stops_start_before_anything_runs(cli_stack: CliStack) -> None:
    run_dir = PROJECT_ROOT / ".run" / f"e2e-port-{uuid.uuid4().hex[:8]}"
    env = stack_env(run_dir)
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", int(env["POSTGRES_PORT"])))
            holder.listen()
            line = one_error_line(run_cli(["start"], env, run_dir))
        assert f"port {env['POSTGRES_PORT']} is in use" in line and "POSTGRES_PORT" in line
        assert not list((run_dir / "pids").glob("*.pid"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_compose_needs_docker(cli_stack: CliStack, tmp_path: Path) -> None:
    no_docker = {**cli_stack.env, "PATH": str(tmp_path / "empty")}
    for result in cli_stack.run_each(["start", "--compose"], ["ps", "--compose"], env=no_docker):
        assert "Docker is not installed" in one_error_line(result)
    # A docker client whose engine does not answer.
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.'"
        " >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    engine_down = {**cli_stack.env, "PATH": f"{fake.parent}{os.pathsep}/usr/bin:/bin"}
    line = one_error_line(cli_stack.run("stop", "--compose", env=engine_down))
    assert "Docker engine is not available" in line and "Cannot connect" in line


# --- logs ------------------------------------------------------------------------------------


def test_logs_of_each_service(cli_stack: CliStack) -> None:
    services = ("app", "temporal", "postgres")
    *outs, both = cli_stack.ok_each(
        *(["logs", "--service", service, "--lines", "5"] for service in services),
        ["logs", "--service", "worker", "--lines", "100"],
    )
    for service, out in zip(services, outs, strict=True):
        assert 0 < len(out.splitlines()) <= 5, (service, out)
    assert "==> worker-orders" in both and "==> worker-shipping" in both
    assert both.count('"worker running"') >= 2


def test_logs_follow_prints_new_lines(cli_stack: CliStack) -> None:
    follow = subprocess.Popen(
        [sys.executable, CLI, "logs", "--service", "worker", "--lines", "0", "--follow"],
        env=cli_stack.env,
        cwd=cli_stack.run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    oid = new_id("e2e-follow")
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().startswith("==> worker-orders")
        assert follow.stdout.readline().startswith("==> worker-shipping")
        time.sleep(0.5)  # the follower is polling by now
        cli_stack.ok("start-workflow", oid, f"pmt-{oid}", "--approve")
        deadline = time.monotonic() + 20
        line = ""
        while oid not in line:
            assert time.monotonic() < deadline, "no new log line about the order"
            line = follow.stdout.readline()
        assert line.startswith("worker-orders | ")
        follow.send_signal(signal.SIGINT)
        # Read on while it stops: a reader that stopped would leave it blocked on a full pipe.
        _, err = follow.communicate(timeout=10)
        assert follow.returncode == 0, err
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


# --- demo and the scenario runner -------------------------------------------------------------


def test_demo(cli_stack: CliStack) -> None:
    # A shorter order deadline bounds the wait for the seed-faults order.
    out = cli_stack.ok("demo", env={**cli_stack.env, "ORDER_DEADLINE_S": "15"})
    assert "demo summary" in out
    # A wrapped row goes on in lines with an empty first cell: those are not rows.
    rows = {
        cells[1].strip(): line
        for line in out.splitlines()
        if line.count("│") > 8 and (cells := line.split("│"))[1].strip()
    }
    assert "COMPLETED" in rows["clean order"] and "charged" in rows["clean order"]
    assert "CANCELLED" in rows["cancel after payment"]
    assert "refunded" in rows["cancel after payment"]
    assert "seed faults (retries)" in rows
    # Not a terminal: each order's changes come as one block under its name, not
    # interleaved with the other orders' lines.
    lines = out.splitlines()
    step = re.compile(r"^ +\+\d+\.\ds  [A-Z]")
    in_blocks = 0
    for scenario in rows:
        [header] = [i for i, line in enumerate(lines) if line.startswith(f"{scenario} (demo-")]
        block = list(itertools.takewhile(step.match, lines[header + 1 :]))
        assert block, lines
        in_blocks += len(block)
    assert in_blocks == sum(1 for line in lines if step.match(line)), lines


def test_scenario_runner(cli_stack: CliStack) -> None:
    runner = CliStack(cli_stack.run_dir, cli_stack.env, script=TEST_WORKFLOW)
    result, usage = runner.run_each([], ["--only", "nope"])
    assert result.returncode == 0, describe(result)
    assert "all 6 scenarios passed" in result.stdout
    assert usage.returncode == 2


def test_bench_options_reach_the_run(cli_stack: CliStack) -> None:
    """A tiny benchmark through the launcher: the approval by the REST API, no status phase
    and no baseline, as the options ask (the figures themselves are not judged)."""
    result = cli_stack.json(
        "bench",
        "--orders",
        "2",
        "--concurrency",
        "1",
        "--no-baseline",
        "--approve",
        "api",
        "--status-seconds",
        "0",
    )
    assert result["approve"] == "api" and result["orders_phase"]["completed"] == 2, result
    assert result["status_rps"] is None and result["baseline_per_s"] is None, result
    assert result["failed_orders"] == 0, result
    # The newest order is the benchmark's last: approved by an Update, not by the signal.
    newest = cli_stack.json("list", "--limit", "1")["items"][0]["order_id"]
    kinds = {e["type"] for e in cli_stack.json("history", f"order-{newest}")}
    assert newest.startswith("bench-") and "WORKFLOW_EXECUTION_UPDATE_ACCEPTED" in kinds, kinds
    assert "WORKFLOW_EXECUTION_SIGNALED" not in kinds, kinds


# --- persistence (last: stops and starts the stack) -------------------------------------------


def read_back(stack: CliStack, order_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The order's status and its workflow's history, as the CLI shows them."""
    status, history = stack.ok_each(
        ["status", order_id, "--json"], ["history", f"order-{order_id}", "--json"]
    )
    return json.loads(status), json.loads(history)


def test_orders_and_histories_survive_stop_and_restart(cli_stack: CliStack, done: Done) -> None:
    before, history_before = read_back(cli_stack, done.order_id)
    # An order in flight: its review timer has to survive too. Its deadline (60 s by
    # default) is lifted so a slow restart cannot fail it before it is approved.
    waiting = new_id("e2e-inflight")
    long_deadline = {**cli_stack.env, "ORDER_DEADLINE_S": "900"}
    cli_stack.ok(
        "start-workflow", waiting, f"pmt-{waiting}", "--review-timeout", "90", env=long_deadline
    )
    cli_stack.wait_status(waiting, in_review)

    assert "stack stopped" in cli_stack.ok("stop")
    ps, status = cli_stack.run_each(["ps", "--json"], ["status", done.order_id])
    assert ps.returncode == 0, describe(ps)
    assert {row["state"] for row in json.loads(ps.stdout)} == {"stopped"}
    assert "not reachable" in one_error_line(status)

    # restart = stop (nothing left to stop) + start.
    out = cli_stack.ok("restart")
    assert "stack ready" in out
    # The endpoints box names the console with the API.
    assert re.search(rf"Console\s+{cli_stack.api}/console", out), out
    after, history_after = read_back(cli_stack, done.order_id)
    for key in ("state", "payment_status", "tracking_number", "address", "attempts", "run_id"):
        assert after[key] == before[key], key
    assert history_after == history_before

    cli_stack.ok("approve", waiting)
    view = cli_stack.wait_status(waiting, completed)
    assert view["payment_status"] == "charged"
