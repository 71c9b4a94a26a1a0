"""`cli.py backup` / `cli.py restore` round trip, and the namespace retention setting.

Orders are made on the session's stack (one completed, one waiting in review), a backup is
taken while that stack runs, and restored into a fresh run dir on other ports. The
restored stack has the same orders, payments, events and workflow histories, and the
gateway's and carrier's ledgers agree with them; the order that was waiting goes on where
it stopped: approved there, it completes.

The restored stack is a newcomer's: POSTGRES_PORT is not set (its default is a port of the
test's own, `default_port_cli.py`) and DATABASE_URL names that default, as .env does. Its
first start meets the default taken and Temporal's port too, and fails; the next, run as
the restore printed it, starts on the default as if the first had never run, and every
command finds the database.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.platform.settings import PROJECT_ROOT
from devstack.stack.backup import STACK_LOCATION
from tests.helpers import (
    ADDRESS,
    CliStack,
    database_dsn,
    describe,
    leftover_processes,
    stack_env,
)

pytestmark = pytest.mark.e2e


def start_order(stack: CliStack, order_id: str, **extra: Any) -> None:
    body = {"payment_id": f"pmt-{order_id}", "address": ADDRESS, "fault_profile": "off", **extra}
    r = httpx.post(f"{stack.api}/orders/{order_id}/start", json=body, timeout=30)
    assert r.status_code == 201, r.text


def approve(stack: CliStack, order_id: str) -> None:
    r = httpx.post(f"{stack.api}/orders/{order_id}/signals/approve", json={}, timeout=30)
    assert r.status_code == 200, r.text


LAUNCHER = str(Path(__file__).with_name("default_port_cli.py"))


def printed_command(restore_output: str, env: dict[str, str]) -> dict[str, str]:
    """The environment that runs the restore's last line as printed: its assignments over
    everything else the test runs with (minus the stack's location it was given)."""
    lines = restore_output.strip().splitlines()
    assert lines[-2] == "restored; start the stack with:", restore_output
    words = shlex.split(lines[-1])
    assert words[-3:] == ["python", "scripts/cli.py", "start"], lines[-1]
    assigned = dict(word.split("=", 1) for word in words[:-3])
    assert assigned == {k: env[k] for k in STACK_LOCATION if k in env}, lines[-1]
    return {**{k: v for k, v in env.items() if k not in STACK_LOCATION}, **assigned}


async def ledgers_agree(stack: CliStack, order_ids: list[str]) -> None:
    """Our payments and tracking numbers, and the gateway's and carrier's ledgers: one
    charge per order, kept, of our amount under our payment id; one live booking."""
    ours = await asyncpg.connect(database_dsn(stack), ssl=False)
    gateway = await asyncpg.connect(database_dsn(stack, "gateway"), ssl=False)
    carrier = await asyncpg.connect(database_dsn(stack, "carrier"), ssl=False)
    try:
        for order_id in order_ids:
            payments = await ours.fetch(
                "select payment_id, status, amount, gateway_ref from payments where order_id = $1",
                order_id,
            )
            charges = await gateway.fetch(
                "select charge_id, payment_id, amount_cents, refunded_cents from charges "
                "where order_id = $1",
                order_id,
            )
            assert len(payments) == 1 and len(charges) == 1, (order_id, payments, charges)
            paid, charge = payments[0], charges[0]
            assert paid["status"] == "charged" and charge["refunded_cents"] == 0
            assert (paid["payment_id"], paid["gateway_ref"]) == (
                charge["payment_id"],
                charge["charge_id"],
            )
            assert paid["amount"] * 100 == Decimal(charge["amount_cents"])
            tracking = await ours.fetchval(
                "select tracking_number from orders where id = $1", order_id
            )
            booked = await carrier.fetch(
                "select tracking_number from bookings where order_id = $1 and cancelled_at is null",
                order_id,
            )
            assert [b["tracking_number"] for b in booked] == [tracking], (order_id, booked)
    finally:
        for conn in (ours, gateway, carrier):
            await conn.close()


@pytest.fixture
def restored_dir() -> Iterator[Path]:
    run_dir = PROJECT_ROOT / ".run" / f"restored-{uuid.uuid4().hex[:8]}"
    yield run_dir
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.timeout(240)
def test_backup_and_restore_into_a_fresh_run_dir(cli_stack: CliStack, restored_dir: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    done, waiting = f"bk-done-{tag}", f"bk-wait-{tag}"
    start_order(cli_stack, done)
    approve(cli_stack, done)
    # Long enough to outlive the restore: its review and deadline keep running meanwhile.
    start_order(cli_stack, waiting, review_timeout_s=600, deadline_s=900)
    cli_stack.wait_status(done, lambda v: v["state"] == "COMPLETED")
    cli_stack.wait_status(waiting, lambda v: v["step"] == "MANUAL_REVIEW")
    history_before, events_before = map(
        json.loads,
        cli_stack.ok_each(["history", f"order-{done}", "--json"], ["events", done, "--json"]),
    )

    backup_dir = cli_stack.run_dir / "backups" / f"e2e-{tag}"
    manifest = cli_stack.json("backup", "--output", str(backup_dir))
    assert manifest["path"] == str(backup_dir)
    assert manifest["temporal"]["integrity_check"] == "ok"
    assert manifest["database"]["rows"]["orders"] >= 2
    assert manifest["ledgers"]["gateway"]["rows"]["charges"] >= 1
    assert manifest["ledgers"]["carrier"]["rows"]["bookings"] >= 1
    assert {p.name for p in backup_dir.iterdir()} == {
        "manifest.json",
        "temporal.db",
        "app.dump",
        "gateway.dump",
        "carrier.dump",
    }
    # A second backup into the same folder is refused rather than mixed in.
    again = cli_stack.run("backup", "--output", str(backup_dir))
    assert again.returncode == 1 and "not empty" in again.stderr, describe(again)

    env = stack_env(restored_dir)
    default_pg = int(env.pop("POSTGRES_PORT"))  # DATABASE_URL names it, as .env does
    env.update(TEST_DEFAULT_POSTGRES_PORT=str(default_pg), TEMPORAL_NAMESPACE_RETENTION="3d")
    # Its POSTGRES_PORT is a default (TEST_DEFAULT_POSTGRES_PORT), through the launcher.
    restored = CliStack(restored_dir, env, script=LAUNCHER)
    out = restored.ok("restore", str(backup_dir))
    assert "orders" in out and "temporal: state restored" in out
    assert "gateway ledger: " in out and "carrier ledger: " in out
    as_printed = printed_command(out, env)

    # The first start meets the default port taken (PostgreSQL moves off it) and Temporal's
    # taken too (it fails); nothing it did may change the next one.
    with socket.socket() as pg_holder, socket.socket() as temporal_holder:
        for holder, port in ((pg_holder, default_pg), (temporal_holder, int(env["TEMPORAL_PORT"]))):
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restore's TIME_WAIT
            holder.bind(("127.0.0.1", port))
            holder.listen()
        failed = restored.run("start", env=as_printed)
    assert failed.returncode == 1, describe(failed)
    assert f"port {default_pg} is in use" in failed.stdout and "instead" in failed.stdout
    assert f"port {env['TEMPORAL_PORT']} is in use" in failed.stderr, describe(failed)
    assert not list((restored_dir / "pids").glob("*.pid"))
    assert not list(restored_dir.glob("**/postgres.port"))
    assert not leftover_processes(restored_dir, [])

    started = restored.run("start", env=as_printed)
    pids: list[int] = []
    try:
        assert started.returncode == 0, describe(started)
        assert "instead" not in started.stdout, started.stdout
        assert "retention: namespace default keeps closed workflows for 3d" in started.stdout
        ps, view, events, history, listing, waiting_view = map(
            json.loads,
            restored.ok_each(
                ["ps", "--json"],
                ["status", done, "--json"],
                ["events", done, "--json"],
                ["history", f"order-{done}", "--json"],
                ["list", "--limit", "1000", "--json"],
                ["status", waiting, "--json"],
            ),
        )
        rows = {r["service"]: r for r in ps}
        pids = [r["pid"] for r in rows.values() if r["pid"]]
        assert rows["postgres"]["address"] == f"127.0.0.1:{default_pg}"

        # The completed order: same row, same events, same Temporal history.
        assert view["state"] == "COMPLETED" and view["payment_status"] == "charged"
        assert view["address"] == ADDRESS and view["tracking_number"]
        assert events == events_before
        assert history == history_before
        listed = {o["order_id"] for o in listing["items"]}
        assert {done, waiting} <= listed

        # The waiting order is still waiting there, and finishes once approved.
        view = waiting_view
        assert view["state"] == "VALIDATED" and view["step"] == "MANUAL_REVIEW"
        approve(restored, waiting)
        view = restored.wait_status(waiting, lambda v: v["state"] == "COMPLETED", timeout=60)
        assert view["payment_status"] == "charged"
        # The gateway knows the charge taken before the backup, and the one taken since.
        asyncio.run(ledgers_agree(restored, [done, waiting]))

        # A command that knows nothing of the stack's port (the real CLI: POSTGRES_PORT
        # 5432 by default, .env's DATABASE_URL on 5432) finds PostgreSQL where it runs.
        plain = {k: v for k, v in as_printed.items() if k != "TEST_DEFAULT_POSTGRES_PORT"}
        plain["DATABASE_URL"] = "postgresql+asyncpg://app:app@127.0.0.1:5432/app"
        *_, stats = CliStack(restored_dir, plain).ok_each(
            ["status", done, "--json"], ["list", "--json"], ["stats", "--json"]
        )
        assert json.loads(stats)["orders"]["total"] >= 2, stats

        # Retention: applied at start from the setting, and settable by hand.
        shown, bad = restored.run_each(["retention"], ["retention", "5h"])
        assert shown.returncode == 0, describe(shown)
        assert shown.stdout.strip().endswith("retention: 3d"), shown.stdout
        assert bad.returncode == 1 and "at least 1 day" in bad.stderr
        assert "retention: 2d" in restored.ok("retention", "2d")

        # Restore refuses to overwrite a running stack's state.
        refused = restored.run("restore", str(backup_dir))
        assert refused.returncode == 1 and "stop the stack first" in refused.stderr
    finally:
        stopped = restored.run("stop")
        left = leftover_processes(restored_dir, pids)
        assert stopped.returncode == 0, describe(stopped)
        assert not left, f"processes left after `cli.py stop`: {left}"

    # Stopped but not empty: only with --force, keeping the replaced Temporal files.
    refused = restored.run("restore", str(backup_dir))
    assert refused.returncode == 1 and "--force" in refused.stderr, describe(refused)
    forced = restored.ok("restore", str(backup_dir), "--force")
    assert "previous state kept" in forced
    assert list((restored_dir / "temporal").glob("temporal.db.replaced-*"))


def test_restore_checks_the_backup(cli_stack: CliStack, tmp_path: Path) -> None:
    backup_dir = cli_stack.run_dir / "backups" / f"e2e-corrupt-{uuid.uuid4().hex[:6]}"
    cli_stack.ok("backup", "--output", str(backup_dir))
    dump = backup_dir / "app.dump"
    dump.write_bytes(dump.read_bytes()[:-10] + b"0123456789")
    run_dir = PROJECT_ROOT / ".run" / f"restored-{uuid.uuid4().hex[:8]}"
    target = CliStack(run_dir, stack_env(run_dir))
    try:
        result = target.run("restore", str(backup_dir))
        assert result.returncode == 1 and "checksum" in result.stderr, describe(result)
        result = target.run("restore", str(tmp_path))
        assert result.returncode == 1 and "not a backup" in result.stderr, describe(result)
        assert not (run_dir / "temporal" / "temporal.db").exists()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["format"] == 2
