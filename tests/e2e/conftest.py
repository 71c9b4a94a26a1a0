"""A real embedded stack started by the CLI itself (`cli.py start`), once per session.

It lives in its own run folder on free ports, so it never meets a dev stack started from
the same checkout, and `cli.py stop` must leave no process behind. Every CLI call is a
subprocess with that environment, run from the run folder so a developer's `.env` does not
leak in: the settings below are all the stack knows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.platform.settings import PROJECT_ROOT
from tests.ports import port_block

CLI = str(PROJECT_ROOT / "scripts" / "cli.py")
TEST_WORKFLOW = str(PROJECT_ROOT / "scripts" / "test-workflow.py")


# postgres, temporal, UI, API, worker metrics x2, and Temporal's metrics port, which
# `cli.py start` puts at TEMPORAL_PORT + 2000.
STACK_PORT_OFFSETS = (0, 1, 2, 3, 4, 5, 1 + 2000)


def stack_env(run_dir: Path) -> dict[str, str]:
    base = port_block(STACK_PORT_OFFSETS)
    pg, grpc, ui, api, worker_metrics = range(base, base + 5)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    env.update(
        {
            "RUN_DIR": str(run_dir),
            "POSTGRES_PORT": str(pg),
            "TEMPORAL_PORT": str(grpc),
            "TEMPORAL_UI_PORT": str(ui),
            "API_PORT": str(api),
            "API_HOST": "127.0.0.1",
            "API_KEYS": "",
            "WORKER_METRICS_PORT": str(worker_metrics),  # shipping: the next port
            "DATABASE_URL": f"postgresql+asyncpg://app:app@127.0.0.1:{pg}/app",
            "TEMPORAL_TARGET": f"127.0.0.1:{grpc}",
            "ORDER_TASK_QUEUE": "orders-tq",
            "SHIPPING_TASK_QUEUE": "shipping-tq",
            # Deterministic orders: the tests that want faults ask for them per order.
            "FAULT_PROFILE": "off",
            "ALLOW_FAULT_INJECTION": "true",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "PAYLOAD_KEYS": "",
        }
    )
    return env


@dataclass
class CliStack:
    run_dir: Path
    env: dict[str, str]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), env or self.env, self.run_dir, timeout)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, describe(result)
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def status(self, order_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.json("status", order_id)
        return view

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    def wait_status(
        self, order_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll the order through the REST API (cheaper than a CLI process per poll)."""
        deadline = time.monotonic() + timeout
        while True:
            response = httpx.get(f"{self.api}/orders/{order_id}/status", timeout=10)
            view: dict[str, Any] = response.json() if response.status_code == 200 else {}
            if view and done(view):
                return view
            assert time.monotonic() < deadline, f"{order_id} stuck: {response.text}"
            time.sleep(0.2)


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120.0, script: str = CLI
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, script, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode} for {result.args[2:]}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def leftover_processes(run_dir: Path, pids: list[int]) -> list[str]:
    """Processes of this stack still alive: known pids, or anything naming the run folder."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            environ = {}
            if proc.pid in pids or str(run_dir) in cmd:
                found.append(f"{proc.pid} {cmd}")
                continue
            environ = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if environ.get("RUN_DIR") == str(run_dir) and proc.pid != os.getpid():
            found.append(f"{proc.pid} {cmd}")
    return found


@pytest.fixture(scope="session")
def cli_stack() -> Iterator[CliStack]:
    # Under the project's .run (not /tmp/pytest-of-*, which is 0700): the postgres system
    # user must be able to reach its data directory.
    run_dir = PROJECT_ROOT / ".run" / f"e2e-{uuid.uuid4().hex[:8]}"
    stack = CliStack(run_dir, stack_env(run_dir))
    started = stack.run("start")
    try:
        assert started.returncode == 0, describe(started)
        yield stack
    finally:
        pids = []
        with_pids = stack.run("ps", "--json")
        if with_pids.returncode == 0:
            pids = [row["pid"] for row in json.loads(with_pids.stdout) if row["pid"]]
        stopped = stack.run("stop")
        left = leftover_processes(run_dir, pids)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert stopped.returncode == 0, describe(stopped)
        assert not left, f"processes left after `cli.py stop`: {left}"
