"""The Docker Compose stack, checked without Docker (no engine here or in CI).

The compose file must parse, use only settings that exist and are documented, pin every
image, give every long-running service a healthcheck and every one-shot job a dependant
that waits for it to succeed, and keep the workers scalable. Each command it runs in our
image must exist and start here, outside a container; Temporal's setup scripts run here
too: the schema job against a stand-in temporal-sql-tool, the namespace job with the real
`temporal` CLI against the test stack's Temporal.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.orders.search import SEARCH_ATTRIBUTES
from app.platform.settings import PROJECT_ROOT, Settings
from devstack.stack.compose import interpolate
from devstack.stack.config import temporal_binary
from tests.helpers import RealStack
from tests.ports import free_port

pytestmark = pytest.mark.integration

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
REQUIRED_SERVICES = {
    "postgres",
    "temporal-schema",
    "temporal",
    "temporal-namespace",
    "temporal-ui",
    "migrate",
    "reconcile-schedule",
    "app",
    "worker-orders",
    "worker-shipping",
}
# Services that run our image; the others are third-party images with their own variables.
OUR_SERVICES = ("migrate", "app", "worker-orders", "worker-shipping", "reconcile-schedule")
WORKERS = ("worker-orders", "worker-shipping")
SETTINGS = {name.upper() for name in Settings.model_fields}
VERSION = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def documented() -> set[str]:
    """Variable names in .env.example, set (NAME=) or shown with their default (# NAME=)."""
    text = (PROJECT_ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def one_shots(services: dict[str, Any]) -> set[str]:
    """Jobs that run to completion: restart no, or only on failure."""
    return {
        name
        for name, svc in services.items()
        if str(svc.get("restart", "no")) == "no" or str(svc["restart"]).startswith("on-failure")
    }


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= REQUIRED_SERVICES
    for name in OUR_SERVICES:
        svc = services[name]
        # Built here, tagged with the project's version.
        assert svc["build"] == "." and svc["image"] == f"order-fulfillment:{VERSION}", name
        assert [f["path"] for f in svc["env_file"]] == [".env"]
    assert compose["services"]["temporal-ui"]["ports"][0].endswith(":8080")
    # Ports are published on loopback only.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image, f"{name}: no image (an untagged build)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.match(r"v?\d+(\.\d+)+", tag), f"{name}: {image} is not pinned"
    # Temporal's deprecated all-in-one image is gone.
    assert not [s for s in compose["services"].values() if "auto-setup" in s["image"]]


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    jobs = one_shots(services)
    assert jobs == {"temporal-schema", "temporal-namespace", "migrate", "reconcile-schedule"}
    for name, svc in services.items():
        if name in jobs:
            assert "healthcheck" not in svc, name
            continue
        assert svc["restart"] == "unless-stopped", name
        check = svc.get("healthcheck", {})
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_dependencies_wait_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    jobs = one_shots(services)
    awaited = set()
    for name, svc in services.items():
        for dependency, spec in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if dependency in jobs else "service_healthy"
            assert spec["condition"] == want, (name, dependency, spec)
            awaited.add(dependency)
    # Every job is something another service waits for.
    assert jobs <= awaited, jobs - awaited


def test_temporal_follows_the_server_plus_admin_tools_practice(compose: dict[str, Any]) -> None:
    services = compose["services"]
    server, schema, namespace = (
        services[n] for n in ("temporal", "temporal-schema", "temporal-namespace")
    )
    version = server["image"].removeprefix("temporalio/server:")
    assert version != server["image"], server["image"]
    for job in (schema, namespace):
        # admin-tools tags read <server version>[-tctl-...-cli-...]: the same release.
        assert re.fullmatch(rf"temporalio/admin-tools:{re.escape(version)}(-.+)?", job["image"])
    assert server["environment"]["DB"] == "postgres12"
    # The schema job sets up the databases the server then uses.
    for key in ("DB", "DB_PORT", "POSTGRES_SEEDS", "POSTGRES_USER", "DBNAME", "VISIBILITY_DBNAME"):
        assert schema["environment"][key] == server["environment"][key], key
    assert schema["environment"]["SQL_PASSWORD"] == server["environment"]["POSTGRES_PWD"]
    assert server["environment"]["POSTGRES_SEEDS"] == "postgres"
    assert set(server["depends_on"]) == {"temporal-schema"}
    assert set(schema["depends_on"]) == {"postgres"}
    assert set(namespace["depends_on"]) == {"temporal"}
    # Our processes start once the namespace and the app's schema exist.
    for name in OUR_SERVICES[1:]:
        assert set(services[name]["depends_on"]) >= {"temporal-namespace", "migrate"}, name
    # The dynamic config file the server is told to read is the one mounted there.
    path = "/etc/temporal/" + server["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    (volume,) = server["volumes"]
    source, target = volume.split(":")[:2]
    assert path.startswith(target + "/")
    assert (
        yaml.safe_load((PROJECT_ROOT / source / path.removeprefix(target + "/")).read_text()) == {}
    )


def test_namespace_job_registers_the_search_attributes(compose: dict[str, Any]) -> None:
    env = compose["services"]["temporal-namespace"]["environment"]
    pairs = dict(pair.split("=") for pair in env["SEARCH_ATTRIBUTES"].split())
    assert pairs == SEARCH_ATTRIBUTES
    # 7 days, as docs/deployment.md says.
    assert env["NAMESPACE_RETENTION"] == "168h"
    # The namespace the app's containers use (.env's TEMPORAL_NAMESPACE, default default).
    assert env["NAMESPACE"] == "${TEMPORAL_NAMESPACE:-default}"


# --- Temporal's setup jobs, run here ---------------------------------------------------------


def _job_env(compose: dict[str, Any], service: str, variables: dict[str, str]) -> dict[str, str]:
    """The job's environment as compose would interpolate it."""
    env = compose["services"][service]["environment"]
    return {key: interpolate(str(value), variables) for key, value in env.items()}


def _run_job(
    compose: dict[str, Any], service: str, env: dict[str, str], bin_dir: Path
) -> subprocess.CompletedProcess[str]:
    """The job's command, from the folder compose mounts at /scripts, with /bin/sh."""
    svc = compose["services"][service]
    assert svc["entrypoint"] == ["/bin/sh"], service
    (volume,) = svc["volumes"]
    source, target = volume.split(":")[:2]
    (script,) = svc["command"]
    host_script = PROJECT_ROOT / source / Path(script).relative_to(target)
    clean = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(bin_dir.parent), **env}
    return subprocess.run(
        ["/bin/sh", str(host_script)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _recorder(bin_dir: Path, name: str, log: Path, exit_code: int = 0) -> None:
    """A stand-in for a tool: logs its arguments (and SQL_PASSWORD), exits with exit_code."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(
        f'#!/bin/sh\necho "SQL_PASSWORD=${{SQL_PASSWORD:-}} $*" >> "{log}"\nexit {exit_code}\n'
    )
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_schema_job_sets_up_both_databases(compose: dict[str, Any], tmp_path: Path) -> None:
    log, bin_dir = tmp_path / "calls", tmp_path / "bin"
    _recorder(bin_dir, "temporal-sql-tool", log)
    env = _job_env(compose, "temporal-schema", {"POSTGRES_PASSWORD": "s3cret"})
    done = _run_job(compose, "temporal-schema", env, bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    tool = "SQL_PASSWORD=s3cret --plugin postgres12 --ep postgres -p 5432 -u app --db"
    schemas = "/etc/temporal/schema/postgresql/v12"
    expected = []
    for database, folder in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        expected += [
            f"{tool} {database} create",
            f"{tool} {database} setup-schema -v 0.0",
            f"{tool} {database} update-schema -d {schemas}/{folder}/versioned",
        ]
    assert log.read_text().splitlines() == expected
    # A failing step fails the job (compose retries it: restart on-failure) at once.
    log.unlink()
    _recorder(bin_dir, "temporal-sql-tool", log, exit_code=1)
    failed = _run_job(compose, "temporal-schema", env, bin_dir)
    assert failed.returncode != 0
    assert log.read_text().splitlines() == expected[:1]


def test_namespace_job_creates_namespace_and_search_attributes(
    compose: dict[str, Any], real_stack: RealStack, tmp_path: Path
) -> None:
    # The real `temporal` CLI (admin-tools ships the same commands) and a namespace of this
    # test's own on the test stack's Temporal.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "temporal").symlink_to(temporal_binary())
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    env = _job_env(compose, "temporal-namespace", {"TEMPORAL_NAMESPACE": namespace})
    assert env["NAMESPACE"] == namespace
    address = real_stack.settings.temporal_target
    env["TEMPORAL_ADDRESS"] = address
    for _ in range(2):  # the job runs on every `docker compose up`
        done = _run_job(compose, "temporal-namespace", env, bin_dir)
        assert done.returncode == 0, done.stdout + done.stderr

    def cli(*args: str) -> Any:
        argv = [str(temporal_binary()), *args, "--namespace", namespace, "--address", address]
        result = subprocess.run(
            [*argv, "-o", "json"], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    registered = cli("operator", "search-attribute", "list")["customAttributes"]
    assert {
        name: kind.removeprefix("INDEXED_VALUE_TYPE_")
        for name, kind in registered.items()
        if name in SEARCH_ATTRIBUTES
    } == {name: kind.upper() for name, kind in SEARCH_ATTRIBUTES.items()}
    described = cli("operator", "namespace", "describe")
    assert described["config"]["workflowExecutionRetentionTtl"] == f"{7 * 86400}s"
    # An attribute registered with another type fails the job instead of passing quietly.
    clash = {**env, "SEARCH_ATTRIBUTES": "OrderState=Int", "SETUP_TRIES": "2", "SETUP_WAIT_S": "0"}
    failed = _run_job(compose, "temporal-namespace", clash, bin_dir)
    assert failed.returncode != 0 and "different type" in failed.stderr


def test_namespace_job_gives_up_when_temporal_never_serves(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "temporal").symlink_to(temporal_binary())
    env = _job_env(compose, "temporal-namespace", {})
    env.update(TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}", SETUP_TRIES="2", SETUP_WAIT_S="0")
    failed = _run_job(compose, "temporal-namespace", env, bin_dir)
    assert failed.returncode != 0
    assert "gave up after 2 tries: temporal operator cluster health" in failed.stderr


def test_workers_scale(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        svc = compose["services"][name]
        # `--scale worker-orders=3` needs replicas that do not clash.
        assert "container_name" not in svc and "ports" not in svc, name
        command = svc["command"]
        port = command[command.index("--metrics-port") + 1]
        # The healthcheck asks the replica's own metrics port.
        assert f"127.0.0.1:{port}/metrics" in " ".join(svc["healthcheck"]["test"]), name


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
    """The service's command as this checkout runs it: this interpreter for the image's."""
    cmd: list[str] = compose["services"][service]["command"]
    assert cmd[:2] == ["python", "-m"], cmd
    return [sys.executable, *cmd[1:]]


def _run_here(
    command: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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
    result = _run_here([*_command(compose, service), "--help"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--queue" in result.stdout


def test_migrate_command_runs_here(compose: dict[str, Any], real_stack: RealStack) -> None:
    result = _run_here(_command(compose, "migrate"), timeout=120, env=_env(real_stack))
    assert result.returncode == 0, result.stderr


def test_reconcile_schedule_command_runs_here(
    compose: dict[str, Any], real_stack: RealStack
) -> None:
    """The schedule job creates the reconciliation's schedule, and on the next `up` finds
    it as the settings want it."""
    cmd = _command(compose, "reconcile-schedule")
    env = _env(real_stack, ORDER_TASK_QUEUE=f"compose-{uuid.uuid4().hex[:6]}", COLUMNS="200")
    address = real_stack.settings.temporal_target
    try:
        said = []
        for _ in range(2):  # every `docker compose up` runs it
            result = _run_here(cmd, timeout=120, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            said.append(result.stdout.strip())
        assert said == ["schedule reconciliation created", "schedule reconciliation unchanged"]
    finally:
        delete = ["schedule", "delete", "--schedule-id", "reconciliation", "--address", address]
        subprocess.run(
            [str(temporal_binary()), *delete],
            capture_output=True,
            timeout=30,
            check=False,
        )


def test_api_command_starts_and_answers_its_healthcheck(
    compose: dict[str, Any], real_stack: RealStack
) -> None:
    # The compose healthcheck's own URL, on this test's port.
    (url,) = re.findall(
        r"http://127\.0\.0\.1:8000(/[\w/]+)",
        " ".join(compose["services"]["app"]["healthcheck"]["test"]),
    )
    cmd = _command(compose, "app")
    port = free_port()
    proc = subprocess.Popen(
        cmd,
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
                if httpx.get(f"http://127.0.0.1:{port}{url}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not become healthy"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_compose_file_is_the_one_the_cli_drives() -> None:
    from devstack.stack.compose import COMPOSE_FILE as CLI_COMPOSE_FILE

    assert Path(CLI_COMPOSE_FILE) == COMPOSE_FILE


def test_registered_search_attributes_are_the_workflows() -> None:
    """What compose registers (SEARCH_ATTRIBUTES, checked above) is what the workflow
    upserts; the names are a contract with operators' saved queries."""
    assert SEARCH_ATTRIBUTES == {
        "OrderState": "Keyword",
        "OrderStep": "Keyword",
        "CustomerId": "Keyword",
        "OrderAmountCents": "Int",
    }
