"""`python scripts/cli.py ... --compose` without a Docker engine (none here or in CI).

`logs --compose` runs against a stand-in `docker` that records its arguments, so the test
sees the exact `docker compose logs` command line; with an engine that does not answer it
must fail with one line. The operator commands' `--compose` (`list` here) must resolve the
addresses compose publishes and the password compose gives PostgreSQL: checked directly,
and end to end by pointing those published ports at the test stack.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.platform.settings import PROJECT_ROOT, Settings
from devstack.stack.compose import COMPOSE_FILE, compose_client_settings
from devstack.stack.config import StackError
from tests.helpers import RealStack
from tests.ports import free_port

pytestmark = pytest.mark.integration

CLI = str(PROJECT_ROOT / "scripts" / "cli.py")

FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "{log}"
case "$1 $2" in
  "info "*) {info} ;;
  "compose version") echo "Docker Compose version v2.30.0" ;;
  *) echo "app-1  | a log line"; exit {logs_exit} ;;
esac
"""
ENGINE_UP = "echo 28.0.0"
ENGINE_DOWN = (
    "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2; exit 1"
)


def fake_docker(tmp_path: Path, info: str = ENGINE_UP, logs_exit: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(log=tmp_path / "calls", info=info, logs_exit=logs_exit))
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_env(bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "POSTGRES_"))}
    env.pop("DATABASE_URL", None)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin:/bin"
    env.update(extra)
    return env


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def compose_calls(tmp_path: Path) -> list[str]:
    """The `docker compose ...` invocations (the engine checks left out)."""
    calls = (tmp_path / "calls").read_text().splitlines()
    return [c for c in calls if c.startswith("compose ") and c != "compose version"]


# --- logs --compose ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "logs --tail 50"),
        (
            ("--service", "worker", "-n", "5", "--follow"),
            "logs --tail 5 --follow worker-orders worker-shipping",
        ),
        (("--service", "app", "--lines", "0"), "logs --tail 0 app"),
        (("--service", "temporal"), "logs --tail 50 temporal"),
    ],
)
def test_logs_compose_runs_docker_compose_logs(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    bin_dir = fake_docker(tmp_path)
    result = run_cli("logs", "--compose", *args, env=cli_env(bin_dir))
    assert result.returncode == 0, result.stderr
    assert "a log line" in result.stdout  # compose's output goes straight through
    assert compose_calls(tmp_path) == [f"compose -f {COMPOSE_FILE} {expected}"]


def test_logs_compose_fails_in_one_line_without_an_engine(tmp_path: Path) -> None:
    line = one_error_line(
        run_cli("logs", "--compose", env=cli_env(fake_docker(tmp_path, info=ENGINE_DOWN)))
    )
    assert "Docker engine is not available" in line and "Cannot connect" in line
    assert compose_calls(tmp_path) == []
    # No docker at all.
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(run_cli("logs", "--compose", env=cli_env(empty)))
    assert "Docker is not installed" in line


def test_logs_compose_reports_a_failing_compose(tmp_path: Path) -> None:
    bin_dir = fake_docker(tmp_path, logs_exit=3)
    line = one_error_line(run_cli("logs", "--compose", "--service", "app", env=cli_env(bin_dir)))
    assert line == "error: docker compose logs --tail 50 app failed with exit code 3"


# --- the operator commands' --compose ------------------------------------------------------


def test_compose_settings_follow_the_published_ports_and_password() -> None:
    base = Settings(
        database_url="postgresql+asyncpg://app:app@db.example:6000/other",  # type: ignore[arg-type]
        temporal_target="temporal.example:7000",
        allow_fault_injection=True,
    )
    # compose's defaults: what docker-compose.yml publishes without overrides.
    target = compose_client_settings(base, {"POSTGRES_PASSWORD": "s3cret"})
    assert target.database_url_plain == "postgresql+asyncpg://app:s3cret@127.0.0.1:5432/app"
    assert target.temporal_target == "127.0.0.1:7233"
    assert target.temporal_ui_url == "http://127.0.0.1:8233"
    assert target.allow_fault_injection is False  # as in compose's containers
    # The variables compose interpolates move them; a password is URL-quoted.
    moved = compose_client_settings(
        base,
        {
            "POSTGRES_PASSWORD": "p@ss:w/rd",
            "POSTGRES_PORT": "6543",
            "TEMPORAL_PORT": "17233",
            "TEMPORAL_UI_PORT": "18233",
        },
    )
    assert moved.database_url_plain == "postgresql+asyncpg://app:p%40ss%3Aw%2Frd@127.0.0.1:6543/app"
    assert moved.temporal_target == "127.0.0.1:17233"
    assert moved.temporal_ui_url == "http://127.0.0.1:18233"
    # Unset, compose itself refuses to start; so do we, with its message.
    with pytest.raises(StackError, match=r"set POSTGRES_PASSWORD in \.env"):
        compose_client_settings(base, {})


def test_list_compose_talks_to_the_published_ports(real_stack: RealStack) -> None:
    # Publish the test stack's Temporal and PostgreSQL as compose would (TEMPORAL_PORT,
    # POSTGRES_PORT, POSTGRES_PASSWORD); DATABASE_URL and TEMPORAL_TARGET point elsewhere,
    # and --compose must not use them.
    cfg = real_stack.cfg
    env = cli_env(
        POSTGRES_PORT=str(cfg.postgres_port),
        TEMPORAL_PORT=str(cfg.temporal_port),
        POSTGRES_PASSWORD="app",
        DATABASE_URL=f"postgresql+asyncpg://app:app@127.0.0.1:{free_port()}/app",
        TEMPORAL_TARGET=f"127.0.0.1:{free_port()}",
    )
    # The three commands at once (independent; a CLI process is mostly its imports).
    with ThreadPoolExecutor(3) as pool:
        compose, plain, wrong = (
            pool.submit(run_cli, "list", "--compose", "--json", "--limit", "5", env=env),
            pool.submit(run_cli, "list", env=env),
            pool.submit(run_cli, "list", "--compose", env={**env, "POSTGRES_PASSWORD": "not-it"}),
        )
    listed = compose.result()
    assert listed.returncode == 0, listed.stderr
    assert set(json.loads(listed.stdout)) >= {"items", "total"}
    # Without --compose the same command follows DATABASE_URL/TEMPORAL_TARGET: unreachable.
    assert "Temporal is not reachable" in one_error_line(plain.result())
    # The password is the one compose gives PostgreSQL.
    assert "password authentication failed" in one_error_line(wrong.result())


def test_list_compose_names_the_compose_stack_when_it_is_down() -> None:
    port = free_port()
    env = cli_env(TEMPORAL_PORT=str(port), POSTGRES_PASSWORD="pw")
    line = one_error_line(run_cli("list", "--compose", env=env))
    assert line == (
        f"error: Temporal is not reachable at 127.0.0.1:{port}; "
        "is the stack running? (python scripts/cli.py start --compose)"
    )
