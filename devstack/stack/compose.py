"""`docker compose` for the production-shaped stack (`cli.py ... --compose`): the command,
its logs, and the addresses and credentials docker-compose.yml publishes to this host."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import SecretStr

from app.platform.settings import PROJECT_ROOT, Settings
from devstack.stack.config import StackError, first_line

if TYPE_CHECKING:
    from devstack.stack.app_processes import LogGroup

# `cli.py logs --compose --service X` shows these compose services (no X: all of them).
COMPOSE_LOG_GROUPS: dict[LogGroup, tuple[str, ...]] = {
    "app": ("app",),
    "worker": ("worker-orders", "worker-shipping"),
    "worker-orders": ("worker-orders",),
    "worker-shipping": ("worker-shipping",),
    "temporal": ("temporal",),
    "postgres": ("postgres",),
}
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"


def compose_command() -> list[str]:
    """`docker compose` (or `docker-compose`) for this project's compose file, after checking
    the Docker engine answers."""
    docker = shutil.which("docker")
    legacy = shutil.which("docker-compose")
    if docker is None and legacy is None:
        raise StackError(
            "Docker is not installed (no `docker` on PATH); "
            "run without --compose to use the embedded stack"
        )
    if docker is not None:
        try:
            info = subprocess.run(
                [docker, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise StackError(f"the Docker engine is not available ({err})") from err
        if info.returncode != 0:
            raise StackError(
                f"the Docker engine is not available ({first_line(info.stderr + info.stdout)}); "
                "start Docker, or run without --compose to use the embedded stack"
            )
        plugin = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if plugin.returncode == 0:
            return [docker, "compose", "-f", str(COMPOSE_FILE)]
    if legacy is not None:
        return [legacy, "-f", str(COMPOSE_FILE)]
    raise StackError(
        "Docker Compose is not installed (neither `docker compose` nor `docker-compose`); "
        "run without --compose to use the embedded stack"
    )


def compose(args: Sequence[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `docker compose ARGS` in the project folder (output streamed unless captured)."""
    cmd = [*compose_command(), *args]
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, text=True, capture_output=capture, check=False)
    if result.returncode != 0:
        detail = f": {first_line(result.stderr)}" if capture and result.stderr else ""
        raise StackError(
            f"docker compose {' '.join(args)} failed with exit code {result.returncode}{detail}"
        )
    return result


def compose_logs_args(service: LogGroup | None, lines: int, follow: bool) -> list[str]:
    """`docker compose` arguments for `cli.py logs --compose`."""
    args = ["logs", "--tail", str(lines)]
    if follow:
        args.append("--follow")
    return [*args, *(COMPOSE_LOG_GROUPS[service] if service else ())]


# What the operator CLI needs to reach the compose stack from this host: the ports compose
# publishes and the database credentials it gives PostgreSQL, read from docker-compose.yml
# with the variables compose itself interpolates (the environment, then the project's .env).

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables compose interpolates the file with: .env, overridden by the environment."""
    from dotenv import dotenv_values

    dotenv = PROJECT_ROOT / ".env"
    values = (
        {k: v for k, v in dotenv_values(dotenv).items() if v is not None}
        if dotenv.is_file()
        else {}
    )
    values.update(os.environ if environ is None else environ)
    return values


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        current = variables.get(name)
        missing = current is None or (op.startswith(":") and current == "")
        if op.endswith("?") and missing:
            raise StackError(f"docker-compose.yml: {arg or f'{name} is not set'}")
        if op.endswith("-") and missing:
            return arg
        return current or ""

    return _VARIABLE.sub(value, text)


def _compose_service(name: str) -> dict[str, object]:
    import yaml  # PyYAML comes with uvicorn[standard]

    data = yaml.safe_load(COMPOSE_FILE.read_text())
    service: dict[str, object] = data["services"][name]
    return service


def compose_published(service: str, container_port: int, variables: Mapping[str, str]) -> str:
    """host:port where compose publishes a service's container port (`ports:` entry)."""
    ports = _compose_service(service).get("ports") or []
    assert isinstance(ports, list)
    for entry in ports:
        parts = interpolate(str(entry), variables).rsplit(":", 2)
        if parts[-1].split("/")[0] == str(container_port):
            host = parts[0] if len(parts) == 3 else "127.0.0.1"
            host = "127.0.0.1" if host in ("", "0.0.0.0") else host
            return f"{host}:{parts[-2]}"
    raise StackError(f"docker-compose.yml publishes no port {container_port} of {service}")


def compose_client_settings(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings to talk to the compose stack with, from this host: Temporal and
    PostgreSQL where compose publishes them, PostgreSQL's user, password and database as
    compose sets them, fault injection off as in its containers. Everything else (task
    queues, namespace, payload keys) comes from the same .env the containers read."""
    from sqlalchemy.engine import URL

    variables = compose_variables(environ)
    env = _compose_service("postgres").get("environment") or {}
    assert isinstance(env, dict)
    user, password, database = (
        interpolate(str(env[key]), variables)
        for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    pg_host, pg_port = compose_published("postgres", 5432, variables).rsplit(":", 1)
    url = URL.create(
        "postgresql+asyncpg",
        username=user,
        password=password,
        host=pg_host,
        port=int(pg_port),
        database=database,
    )
    ui = compose_published("temporal-ui", 8080, variables)
    return settings.model_copy(
        update={
            "database_url": SecretStr(url.render_as_string(hide_password=False)),
            "temporal_target": compose_published("temporal", 7233, variables),
            "temporal_ui_url": f"http://{ui}",
            "allow_fault_injection": False,
        }
    )
