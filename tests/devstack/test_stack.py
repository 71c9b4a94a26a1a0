"""The embedded stack supervisor against the real PostgreSQL and Temporal binaries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetSystemInfoRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client

from app.platform.settings import PROJECT_ROOT
from devstack.stack.config import (
    POSTGRES,
    TEMPORAL,
    StackConfig,
    StackError,
    StackSettings,
    database_url,
    temporal_target,
)
from devstack.stack.infra import start_infra, stop_all, stop_process
from devstack.stack.postgres import start_postgres
from devstack.stack.processes import (
    all_statuses,
    process_status,
    start_process,
    tail_log,
    wait_until,
)
from devstack.stack.temporal_server import start_temporal
from tests.ports import free_ports

pytestmark = pytest.mark.integration

PERSIST_NAMESPACE = "stack-persist-check"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, the postgres system user could not
    # traverse it. A folder under the project's (git-ignored) .run is reachable.
    path = PROJECT_ROOT / ".run" / f"test-stack-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        with contextlib.suppress(StackError):
            stop_all(StackConfig(run_dir=path))
        shutil.rmtree(path, ignore_errors=True)


def make_cfg(run_dir: Path) -> StackConfig:
    pg, grpc, ui, metrics = free_ports(4)
    return StackConfig(
        run_dir=run_dir,
        postgres_port=pg,
        temporal_port=grpc,
        temporal_ui_port=ui,
        temporal_metrics_port=metrics,
    )


def live(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def processes_mentioning(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


async def sql(cfg: StackConfig, *statements: str) -> list[asyncpg.Record]:
    assert database_url(cfg) == (f"postgresql+asyncpg://app:app@127.0.0.1:{cfg.postgres_port}/app")
    conn = await asyncpg.connect(
        host=cfg.host, port=cfg.postgres_port, user="app", password="app", database="app"
    )
    try:
        rows: list[asyncpg.Record] = []
        for statement in statements:
            rows = await conn.fetch(statement)
        return rows
    finally:
        await conn.close()


async def temporal_namespaces(cfg: StackConfig, register: str | None = None) -> set[str]:
    client = await Client.connect(temporal_target(cfg))
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version
    if register:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=register, workflow_execution_retention_period=Duration(seconds=86400)
            )
        )
    names = set()
    for name in ("default", PERSIST_NAMESPACE):
        with contextlib.suppress(Exception):
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=name)
            )
            names.add(name)
    return names


def test_infra_start_stop_restart_keeps_data(run_dir: Path) -> None:
    cfg = make_cfg(run_dir)

    messages = start_infra(cfg)
    assert messages[0].startswith("postgres: started"), messages
    assert messages[1].startswith("temporal: started"), messages

    assert asyncio.run(sql(cfg, "select 1 as one"))[0]["one"] == 1
    asyncio.run(
        sql(
            cfg,
            "create table survivors (id int primary key, note text)",
            "insert into survivors values (1, 'still here')",
        )
    )
    assert asyncio.run(temporal_namespaces(cfg, register=PERSIST_NAMESPACE)) == {
        "default",
        PERSIST_NAMESPACE,
    }

    # Starting again is a no-op.
    again = start_infra(cfg)
    assert all("already running" in m for m in again), again

    statuses = {s.name: s for s in all_statuses(cfg)}
    assert statuses[POSTGRES].running and statuses[TEMPORAL].running
    pids = [s.pid for s in statuses.values() if s.pid is not None]
    pids += [c.pid for pid in list(pids) for c in psutil.Process(pid).children(recursive=True)]
    assert len(pids) > 2  # postgres has background workers

    stopped = stop_all(cfg)
    assert [m.split(":")[0] for m in stopped] == [TEMPORAL, POSTGRES]
    assert not any(live(pid) for pid in pids)
    assert not processes_mentioning(cfg.run_dir)
    assert not any(s.running for s in all_statuses(cfg))
    assert not (cfg.pids_dir / "postgres.pid").exists()

    messages = start_infra(cfg)
    assert all("started" in m for m in messages), messages
    assert "new cluster" not in messages[0]
    rows = asyncio.run(sql(cfg, "select note from survivors where id = 1"))
    assert rows[0]["note"] == "still here"
    assert PERSIST_NAMESPACE in asyncio.run(temporal_namespaces(cfg))

    stop_all(cfg)
    assert not processes_mentioning(cfg.run_dir)


def test_taken_port_is_reported(run_dir: Path) -> None:
    cfg = make_cfg(run_dir)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", cfg.postgres_port))
        blocker.listen()
        with pytest.raises(StackError) as err:
            start_postgres(cfg)
        assert f"port {cfg.postgres_port} is in use by another program" in str(err.value)
        if os.geteuid() == 0:  # psutil can name the owner
            assert f"pid {os.getpid()}" in str(err.value)
        assert "\n" not in str(err.value)
        assert not (cfg.pgdata / "PG_VERSION").exists()

    cfg.headless = True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", cfg.temporal_port))
        blocker.listen()
        with pytest.raises(StackError, match=f"port {cfg.temporal_port} "):
            start_temporal(cfg)
    assert not process_status(cfg, TEMPORAL).running


CHILD_SCRIPT = """
import subprocess, sys, time, pathlib
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("worker up", flush=True)  # before the marker: the test reads the log once it exists
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
time.sleep(600)
"""


def test_config_from_settings(run_dir: Path) -> None:
    settings = StackSettings(run_dir=run_dir, postgres_port=15432, temporal_port=17233)
    cfg = StackConfig.from_settings(settings, headless=True)
    assert cfg.pgdata == run_dir.resolve() / "pgdata"
    assert cfg.temporal_db == run_dir.resolve() / "temporal" / "temporal.db"
    assert cfg.log_path("api") == run_dir.resolve() / "logs" / "api.log"
    assert cfg.pid_path("api") == run_dir.resolve() / "pids" / "api.pid"
    assert database_url(cfg) == "postgresql+asyncpg://app:app@127.0.0.1:15432/app"
    assert temporal_target(cfg) == "127.0.0.1:17233"
    assert (cfg.metrics_port, cfg.headless) == (19233, True)
    with pytest.raises(StackError):
        cfg.log_path("../escape")


def test_managed_process_lifecycle(run_dir: Path) -> None:
    cfg = StackConfig(run_dir=run_dir)
    marker = run_dir / "child.pid"
    argv = [sys.executable, "-c", CHILD_SCRIPT, str(marker)]

    msg = start_process(cfg, "worker-test", argv, {"X_TEST": "1"}, marker.exists, timeout=15)
    assert msg.startswith("worker-test: started"), msg
    status = process_status(cfg, "worker-test")
    assert status.running and status.pid is not None
    grandchild = int(marker.read_text())
    assert live(grandchild)
    assert start_process(cfg, "worker-test", argv).endswith(f"already running (pid {status.pid})")
    assert "worker up" in tail_log(cfg, "worker-test", 5)

    assert stop_process(cfg, "worker-test").startswith("worker-test: stopped")
    assert not live(status.pid) and not live(grandchild)
    assert not process_status(cfg, "worker-test").running
    assert stop_process(cfg, "worker-test") == "worker-test: not running"

    # A stale pid file pointing at an unrelated live process (this one) is not "running".
    cfg.pid_path("ghost").write_text(f"{os.getpid()}\n")
    assert not process_status(cfg, "ghost").running
    assert "stale" in stop_process(cfg, "ghost")
    assert live(os.getpid())

    # A process that dies during startup is a clear error with its log attached.
    with pytest.raises(StackError, match="exited with code 3") as err:
        start_process(
            cfg,
            "crasher",
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
            ready=lambda: False,
            timeout=10,
        )
    assert "boom" in err.value.log_tail
    assert not cfg.pid_path("crasher").exists()

    # One that never becomes ready is stopped (with its children) and reported.
    with pytest.raises(StackError, match="did not become ready within 3s"):
        start_process(cfg, "sleeper", [*argv[:3], str(run_dir / "s.pid")], None, lambda: False, 3)
    assert not live(int((run_dir / "s.pid").read_text()))
    assert not process_status(cfg, "sleeper").running
    assert not processes_mentioning(cfg.run_dir)


def test_a_server_not_answering_is_reported_with_its_last_error(run_dir: Path) -> None:
    calls: list[int] = []

    def refuses_then_says_no() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused\nsecond line")
        return False

    with pytest.raises(StackError) as err:
        wait_until(refuses_then_says_no, 0.5, StackConfig(run_dir=run_dir), "api")
    assert str(err.value) == (
        "api is running but not answering after 0s (last error: ConnectionError: refused)"
    )
