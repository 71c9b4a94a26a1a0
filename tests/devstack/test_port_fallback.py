"""DESIGN: if the default PostgreSQL port is taken, the embedded stack uses another one, says
so, and every command follows it, for as long as that stack runs and no longer.

The default here is a free port of the test's own (5432 belongs to whoever runs a stack on
this machine): a settings class whose POSTGRES_PORT default it is, so the port stays a
default, which is what `start` may move. The whole story through the CLI (a start that
fails on a taken port, then one that starts on the default, and commands that find it) is
in tests/devstack/test_backup.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from pydantic import create_model
from sqlalchemy.engine import make_url

from devstack.stack import infra, lifecycle, postgres, processes, temporal_server
from devstack.stack.addresses import (
    client_settings,
    move_postgres_if_taken,
    port_file,
    stack_config,
)
from devstack.stack.config import (
    POSTGRES,
    TEMPORAL,
    ServiceStatus,
    StackConfig,
    StackError,
    StackSettings,
)
from devstack.stack.lifecycle import start_stack, taken_ports
from devstack.stack.processes import port_in_use, process_status, remove_pid, write_pid
from tests.helpers import RealStack, stack_env
from tests.ports import free_port

pytestmark = pytest.mark.integration

ENV_DATABASE_URL = "postgresql+asyncpg://app:app@127.0.0.1:5432/app"  # .env.example's line


def default_port_settings(default: int, **values: Any) -> StackSettings:
    """Settings whose POSTGRES_PORT default is `default` (not set by anyone)."""
    model = create_model(
        "DefaultPortSettings", __base__=StackSettings, postgres_port=(int, default)
    )
    settings: StackSettings = model(**values)
    assert "postgres_port" not in settings.model_fields_set
    return settings


@pytest.fixture
def taken_default() -> Iterator[int]:
    """A port that plays the default, held by another program."""
    port = free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        yield port


def test_a_taken_default_port_moves_postgres_for_one_start_only(
    tmp_path: Path, taken_default: int
) -> None:
    settings = default_port_settings(taken_default, run_dir=tmp_path)
    cfg = stack_config(settings)
    message = move_postgres_if_taken(settings, cfg)
    assert message is not None and f"port {taken_default} is in use" in message
    assert cfg.postgres_port != taken_default
    assert port_in_use(cfg.host, cfg.postgres_port) is None
    # Nothing is kept: with nothing running, the next command (or start) is on the default.
    assert not port_file(cfg).exists() and not (tmp_path / "postgres.port").exists()
    assert stack_config(settings).postgres_port == taken_default


def test_restore_names_the_ports_its_start_would_find_taken(
    tmp_path: Path, taken_default: int
) -> None:
    env = stack_env(tmp_path)
    ports = {
        name: int(env[name.upper()])
        for name in ("temporal_port", "temporal_ui_port", "api_port", "worker_metrics_port")
    }
    settings = default_port_settings(taken_default, run_dir=tmp_path, **ports)
    assert taken_ports(settings) == []  # the default PostgreSQL port moves: not in the way
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["api_port"]))
        squatter.listen()
        assert taken_ports(settings) == [(ports["api_port"], "API_PORT")]


def test_explicit_port_is_never_moved(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = StackSettings(run_dir=tmp_path, postgres_port=port)
        cfg = stack_config(settings)
        assert move_postgres_if_taken(settings, cfg) is None
    assert cfg.postgres_port == port and not port_file(cfg).exists()


async def test_commands_find_the_port_the_stack_runs_on(real_stack: RealStack) -> None:
    """The session's PostgreSQL runs on a port of its own; a command whose settings name
    only the default (POSTGRES_PORT unset, .env's DATABASE_URL on 5432) reaches it there."""
    real_port = real_stack.cfg.postgres_port
    settings = StackSettings(run_dir=real_stack.cfg.run_dir, database_url=ENV_DATABASE_URL)  # type: ignore[arg-type]
    assert "postgres_port" not in settings.model_fields_set and real_port != 5432
    assert stack_config(settings).postgres_port == real_port
    client = client_settings(settings)
    for url in (client.database_url_plain, client.gateway_database_url_plain):
        assert make_url(url).port == real_port, url
    dsn = client.database_url_plain.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
    # A URL that names another server is the operator's choice, and stays.
    elsewhere = "postgresql+asyncpg://app:app@db.internal:5432/app"
    settings = StackSettings(run_dir=real_stack.cfg.run_dir, database_url=elsewhere)  # type: ignore[arg-type]
    assert client_settings(settings).database_url_plain == elsewhere


def test_the_moved_port_counts_only_while_the_stack_runs(tmp_path: Path) -> None:
    """PostgreSQL down (crashed, or restarted by chaos) while a worker given the moved port
    still runs: that port, not the default, is where PostgreSQL must come back."""
    default = free_port()
    settings = default_port_settings(default, run_dir=tmp_path)
    cfg = stack_config(settings)
    cfg.pids_dir.mkdir(parents=True)
    port_file(cfg).write_text(f"{default + 1}\n")
    assert stack_config(settings).postgres_port == default  # nothing runs: stale
    # A "worker" of this run dir that runs: this very process.
    me = psutil.Process()
    write_pid(cfg, "worker-orders", me.pid, me.cmdline())
    try:
        assert process_status(cfg, "worker-orders").running
        assert stack_config(settings).postgres_port == default + 1
        assert f":{default + 1}/" in client_settings(settings).database_url_plain
    finally:
        remove_pid(cfg, "worker-orders")
    assert stack_config(settings).postgres_port == default


def test_a_failed_start_stops_what_it_started_and_forgets_the_port(
    tmp_path: Path, taken_default: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The servers are stand-ins here (the real ones: tests/devstack/test_backup.py); what
    is checked is what a start leaves behind when it fails half way."""
    settings = default_port_settings(taken_default, run_dir=tmp_path)
    running: set[str] = set()
    stopped: list[str] = []
    kept_while_running: list[str] = []

    def status(cfg: StackConfig, name: str) -> ServiceStatus:
        return ServiceStatus(
            name, os.getpid() if name in running else None, name in running, cfg.log_path(name)
        )

    def start(name: str) -> Any:
        def run(cfg: StackConfig, timeout: float = 60.0) -> str:
            running.add(name)
            return f"{name}: started on {cfg.postgres_port}"

        return run

    def migrate(cfg: StackConfig) -> str:
        kept_while_running.append(port_file(cfg).read_text().strip())
        raise StackError("database migrations failed: boom")

    def stop_all(cfg: StackConfig, names: list[str], timeout: float = 10.0) -> list[str]:
        stopped.extend(names)
        running.difference_update(names)
        return []

    monkeypatch.setattr(processes, "process_status", status)
    monkeypatch.setattr(postgres, "start_postgres", start(POSTGRES))
    monkeypatch.setattr(temporal_server, "start_temporal", start(TEMPORAL))
    monkeypatch.setattr(infra, "stop_all", stop_all)
    monkeypatch.setattr(lifecycle, "_check_ports", lambda cfg, svcs: None)
    monkeypatch.setattr(lifecycle, "_migrate", migrate)
    (tmp_path / "postgres.port").write_text("5433\n")  # left by an earlier version: gone
    reports: list[str] = []
    with pytest.raises(StackError, match="boom"):
        start_stack(settings, reports.append)
    moved = int(kept_while_running[0])
    assert moved != taken_default
    assert any(f"using {moved} instead" in r for r in reports), reports
    assert sorted(stopped) == [POSTGRES, TEMPORAL] and not running
    assert reports[-1] == "start failed; stopped what it had started: postgres, temporal"
    assert not port_file(stack_config(settings)).exists()
    assert not (tmp_path / "postgres.port").exists()
    assert stack_config(settings).postgres_port == taken_default
