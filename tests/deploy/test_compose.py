"""The Docker Compose stack, checked without Docker (no engine here or in CI).

The compose file must parse, use only settings that exist and are documented, and each
command it runs in our image must exist and start here, outside a container.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.platform.settings import PROJECT_ROOT, Settings
from tests.helpers import RealStack
from tests.ports import free_port

pytestmark = pytest.mark.integration

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
REQUIRED_SERVICES = {
    "postgres",
    "temporal",
    "temporal-ui",
    "app",
    "worker-orders",
    "worker-shipping",
}
# Services that run our image; the others are third-party images with their own variables.
OUR_SERVICES = ("migrate", "app", "worker-orders", "worker-shipping")
SETTINGS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def documented() -> set[str]:
    """Variable names in .env.example, set (NAME=) or shown with their default (# NAME=)."""
    text = (PROJECT_ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def test_compose_has_the_services_with_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= REQUIRED_SERVICES
    for name in REQUIRED_SERVICES:
        assert "healthcheck" in services[name], name
    for name in OUR_SERVICES:
        svc = services[name]
        assert svc["build"] == "." and svc["image"] == "order-fulfillment:latest"
        assert [f["path"] for f in svc["env_file"]] == [".env"]
    assert "postgres12" in compose["services"]["temporal"]["environment"]["DB"]
    assert compose["services"]["temporal-ui"]["ports"][0].endswith(":8080")
    # Ports are published on loopback only.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_setting_is_documented_in_env_example() -> None:
    missing = SETTINGS - documented()
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"
    # The guide's five come first, set.
    first = re.findall(r"^([A-Z_]+)=", (PROJECT_ROOT / ".env.example").read_text(), re.M)[:5]
    assert first == [
        "DATABASE_URL",
        "TEMPORAL_TARGET",
        "ORDER_TASK_QUEUE",
        "SHIPPING_TASK_QUEUE",
        "LOG_LEVEL",
    ]


def test_interpolated_variables_are_documented() -> None:
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    assert used, "expected ${VAR} interpolation (ports, password)"
    assert used <= documented(), sorted(used - documented())


def test_our_containers_only_set_real_settings(compose: dict[str, Any]) -> None:
    for name in OUR_SERVICES:
        env = compose["services"][name].get("environment", {})
        unknown = set(env) - SETTINGS
        assert not unknown, (name, sorted(unknown))


def test_dockerfile_runs_as_non_root_on_python_311() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert 'CMD ["python", "-m", "app.api"]' in text


def _command(compose: dict[str, Any], service: str) -> list[str]:
    cmd: list[str] = compose["services"][service]["command"]
    assert cmd[:2] == ["python", "-m"], cmd
    return cmd


def _env(stack: RealStack, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=stack.settings.database_url_plain,
        TEMPORAL_TARGET=stack.settings.temporal_target,
        PYTHONPATH=str(PROJECT_ROOT),
        **extra,
    )
    return env


@pytest.mark.parametrize("service", ["worker-orders", "worker-shipping"])
def test_worker_commands_parse_here(compose: dict[str, Any], service: str) -> None:
    # argparse checks the options (the queue is one of its choices) before --help exits 0.
    cmd = _command(compose, service)
    result = subprocess.run(
        [sys.executable, *cmd[1:], "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--queue" in result.stdout


def test_migrate_command_runs_here(compose: dict[str, Any], real_stack: RealStack) -> None:
    cmd = _command(compose, "migrate")
    result = subprocess.run(
        [sys.executable, *cmd[1:]],
        cwd=PROJECT_ROOT,
        env=_env(real_stack),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_api_command_starts_and_answers_health(
    compose: dict[str, Any], real_stack: RealStack
) -> None:
    cmd = _command(compose, "app")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *cmd[1:]],
        cwd=PROJECT_ROOT,
        env=_env(real_stack, API_HOST="127.0.0.1", API_PORT=str(port), API_KEYS=""),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not become healthy"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_compose_file_is_the_one_the_cli_drives() -> None:
    from devstack.services import COMPOSE_FILE as CLI_COMPOSE_FILE

    assert Path(CLI_COMPOSE_FILE) == COMPOSE_FILE
