"""`cli.py backup` / `cli.py restore` round trip, and the namespace retention setting.

Orders are made on the session's stack (one completed, one waiting in review), a backup is
taken while that stack runs, and restored into a fresh run dir on other ports. The
restored stack has the same orders, payments, events and workflow histories, and the
order that was waiting goes on where it stopped: approved there, it completes.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.platform.settings import PROJECT_ROOT
from tests.helpers import ADDRESS, CliStack, describe, leftover_processes, stack_env

pytestmark = pytest.mark.e2e


def start_order(stack: CliStack, order_id: str, **extra: Any) -> None:
    body = {"payment_id": f"pmt-{order_id}", "address": ADDRESS, "fault_profile": "off", **extra}
    r = httpx.post(f"{stack.api}/orders/{order_id}/start", json=body, timeout=30)
    assert r.status_code == 201, r.text


def approve(stack: CliStack, order_id: str) -> None:
    r = httpx.post(f"{stack.api}/orders/{order_id}/signals/approve", json={}, timeout=30)
    assert r.status_code == 200, r.text


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
    cli_stack.wait_status(done, lambda v: v["state"] == "COMPLETED")
    # Long enough to outlive the restore: its review and deadline keep running meanwhile.
    start_order(cli_stack, waiting, review_timeout_s=600, deadline_s=900)
    cli_stack.wait_status(waiting, lambda v: v["step"] == "MANUAL_REVIEW")
    history_before = cli_stack.json("history", f"order-{done}")
    events_before = cli_stack.json("events", done)

    backup_dir = cli_stack.run_dir / "backups" / f"e2e-{tag}"
    manifest = cli_stack.json("backup", "--output", str(backup_dir))
    assert manifest["path"] == str(backup_dir)
    assert manifest["temporal"]["integrity_check"] == "ok"
    assert manifest["database"]["rows"]["orders"] >= 2
    assert {p.name for p in backup_dir.iterdir()} == {"manifest.json", "temporal.db", "app.dump"}
    # A second backup into the same folder is refused rather than mixed in.
    again = cli_stack.run("backup", "--output", str(backup_dir))
    assert again.returncode == 1 and "not empty" in again.stderr, describe(again)

    restored = CliStack(
        restored_dir, {**stack_env(restored_dir), "TEMPORAL_NAMESPACE_RETENTION": "3d"}
    )
    out = restored.ok("restore", str(backup_dir))
    assert "orders" in out and "temporal: state restored" in out
    started = restored.run("start")
    pids: list[int] = []
    try:
        assert started.returncode == 0, describe(started)
        assert "retention: namespace default keeps closed workflows for 3d" in started.stdout
        pids = [r["pid"] for r in restored.json("ps") if r["pid"]]

        # The completed order: same row, same events, same Temporal history.
        view = restored.status(done)
        assert view["state"] == "COMPLETED" and view["payment_status"] == "charged"
        assert view["address"] == ADDRESS and view["tracking_number"]
        assert restored.json("events", done) == events_before
        assert restored.json("history", f"order-{done}") == history_before
        listed = {o["order_id"] for o in restored.json("list", "--limit", "1000")["items"]}
        assert {done, waiting} <= listed

        # The waiting order is still waiting there, and finishes once approved.
        view = restored.status(waiting)
        assert view["state"] == "VALIDATED" and view["step"] == "MANUAL_REVIEW"
        approve(restored, waiting)
        view = restored.wait_status(waiting, lambda v: v["state"] == "COMPLETED", timeout=60)
        assert view["payment_status"] == "charged"

        # Retention: applied at start from the setting, and settable by hand.
        assert restored.ok("retention").strip().endswith("retention: 3d")
        assert "retention: 2d" in restored.ok("retention", "2d")
        bad = restored.run("retention", "5h")
        assert bad.returncode == 1 and "at least 1 day" in bad.stderr

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
    assert manifest["format"] == 1
