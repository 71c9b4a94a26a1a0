"""What the embedded stack is made of, and how `cli.py start|stop|ps` drive it.

`devstack.stack` knows how to run one process; this module decides which ones, with which
command line, environment and readiness check:

    postgres         embedded PostgreSQL                    POSTGRES_PORT (5432)
    temporal         Temporal dev server + Web UI           TEMPORAL_PORT (7233), TEMPORAL_UI_PORT (8233)
    (migrations)     alembic upgrade head, in this process
    worker-orders    python -m app.worker --queue orders    metrics WORKER_METRICS_PORT (9101)
    worker-shipping  python -m app.worker --queue shipping  metrics WORKER_METRICS_PORT + 1
    app              python -m app.api                      API_PORT (8000), ready = GET /health 200

It also wraps `docker compose` for the production-shaped stack (`--compose`).
"""

from __future__ import annotations

import compileall
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

import app
from app.platform.settings import PROJECT_ROOT, Settings
from devstack import stack
from devstack.stack import POSTGRES, TEMPORAL, StackConfig, StackError

WORKER_ORDERS = "worker-orders"
WORKER_SHIPPING = "worker-shipping"
API = "app"
APP_SERVICES: tuple[str, ...] = (WORKER_ORDERS, WORKER_SHIPPING, API)
ALL_SERVICES: tuple[str, ...] = (POSTGRES, TEMPORAL, *APP_SERVICES)
# `cli.py logs --service X` reads these logs.
LOG_GROUPS: dict[str, tuple[str, ...]] = {
    "app": (API,),
    "worker": (WORKER_ORDERS, WORKER_SHIPPING),
    WORKER_ORDERS: (WORKER_ORDERS,),
    WORKER_SHIPPING: (WORKER_SHIPPING,),
    "temporal": (TEMPORAL,),
    "postgres": (POSTGRES,),
}
# `cli.py logs --compose --service X` shows these compose services (no X: all of them).
COMPOSE_LOG_GROUPS: dict[str, tuple[str, ...]] = {
    "app": ("app",),
    "worker": ("worker-orders", "worker-shipping"),
    "worker-orders": ("worker-orders",),
    "worker-shipping": ("worker-shipping",),
    "temporal": ("temporal",),
    "postgres": ("postgres",),
}
DEFAULT_WORKER_METRICS_PORT = 9101
# The worker logs this once its pollers run (app/worker.py).
WORKER_READY_MARKER = b"worker running"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"

T = TypeVar("T")


@dataclass(frozen=True)
class AppService:
    """One supervised application process of the embedded stack."""

    name: str
    argv: list[str]
    port: int
    port_setting: str
    address: str
    # Either a line the process logs once it serves, or a URL that answers 200 when ready.
    ready_marker: bytes | None = None
    health_url: str | None = None


# ---------------------------------------------------------------------------------------------
# Settings and addresses
# ---------------------------------------------------------------------------------------------


# When POSTGRES_PORT is not set and its default (5432) is taken, `start` runs PostgreSQL on
# the next free port. That port belongs to the running stack, never to the run dir: commands
# read it from the running server, or, while PostgreSQL itself is down (a crash, a chaos
# restart) and processes it was given to still run, from pids/postgres.port, which `start`
# writes once PostgreSQL runs there. Once nothing of the stack runs it counts for nothing,
# and `stop` or a failed `start` removes it: the next start tries the default port again.
PORT_FILE = "postgres.port"
# Where earlier versions kept a moved port for good (whatever ran): removed by `start`.
_LEGACY_PORT_FILE = "postgres.port"


def port_file(cfg: StackConfig) -> Path:
    return cfg.pids_dir / PORT_FILE


def _saved_port(cfg: StackConfig) -> int | None:
    try:
        return int(port_file(cfg).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _running(cfg: StackConfig, names: Sequence[str]) -> list[str]:
    return [name for name in names if stack.process_status(cfg, name).running]


def stack_config(settings: Settings) -> StackConfig:
    """The embedded stack of `settings`, on the ports it really uses.

    POSTGRES_PORT, when set, is the port. Otherwise a running PostgreSQL of the run dir
    says where it listens (a `start` may have moved it off a taken default); while it is
    down, the port the stack's running processes were given; with nothing running, the
    default."""
    cfg = StackConfig.from_settings(settings)
    if "postgres_port" in settings.model_fields_set:
        return cfg
    port = stack.running_postgres_port(cfg)
    if port is None:
        others = [n for n in stack.known_services(cfg) if n not in stack.INFRA_SERVICES]
        if _running(cfg, others):
            port = _saved_port(cfg)
    if port is not None:
        cfg.postgres_port = port
    return cfg


def move_postgres_if_taken(settings: Settings, cfg: StackConfig) -> str | None:
    """DESIGN: if the default port (5432) is taken, use another, say so plainly, and use it
    everywhere, for as long as this stack runs. Only `cfg` changes: nothing is kept."""
    if (
        "postgres_port" in settings.model_fields_set
        or cfg.postgres_port != settings.postgres_port  # the port a running stack was given
        or stack.process_status(cfg, POSTGRES).running
    ):
        return None
    owner = stack.port_in_use(cfg.host, cfg.postgres_port)
    if owner is None:
        return None
    for port in range(cfg.postgres_port + 1, cfg.postgres_port + 50):
        if stack.port_in_use(cfg.host, port) is None:
            taken = cfg.postgres_port
            cfg.postgres_port = port
            return (
                f"postgres: port {taken} is in use by another program ({owner}); using {port} "
                "instead while this stack runs (DATABASE_URL and every command follow it; "
                "set POSTGRES_PORT to choose one)"
            )
    return None


def _remember_postgres_port(settings: Settings, cfg: StackConfig) -> None:
    """Once PostgreSQL runs: the port the stack's processes are given, for while it is down."""
    path = port_file(cfg)
    if cfg.postgres_port == settings.postgres_port:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{cfg.postgres_port}\n", encoding="utf-8")
    tmp.replace(path)


def _forget_port_if_stopped(cfg: StackConfig) -> None:
    if not _running(cfg, stack.known_services(cfg)):
        port_file(cfg).unlink(missing_ok=True)


def _follow_stack_port(url: str, settings: Settings, cfg: StackConfig) -> str | None:
    """A URL set by hand (.env's DATABASE_URL) that names the embedded stack's configured
    address, while the stack runs on another port: the same URL on the stack's port."""
    if not url or cfg.postgres_port == settings.postgres_port:
        return None
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.host not in (cfg.host, "127.0.0.1", "localhost"):
        return None
    if (parsed.port or 5432) != settings.postgres_port:
        return None
    return parsed.set(port=cfg.postgres_port).render_as_string(hide_password=False)


def client_settings(settings: Settings) -> Settings:
    """The settings to talk to the stack with.

    Addresses not set explicitly (env or .env) follow the embedded stack's ports, so
    POSTGRES_PORT/TEMPORAL_PORT alone move everything; database URLs set explicitly to the
    stack's configured address follow the port PostgreSQL really runs on. Pointed at the
    embedded stack, fault injection follows its dev policy (on) unless ALLOW_FAULT_INJECTION
    is set.
    """
    cfg = stack_config(settings)
    explicit = settings.model_fields_set
    update: dict[str, object] = {}
    if "database_url" not in explicit:
        update["database_url"] = SecretStr(stack.database_url(cfg))
    for name in ("database_url", "gateway_database_url", "carrier_database_url"):
        if name in explicit and name not in update:
            value: SecretStr = getattr(settings, name)
            followed = _follow_stack_port(value.get_secret_value(), settings, cfg)
            if followed is not None:
                update[name] = SecretStr(followed)
    if "temporal_target" not in explicit:
        update["temporal_target"] = stack.temporal_target(cfg)
    ui = stack.temporal_ui_url(cfg)
    if "temporal_ui_url" not in explicit and ui:
        update["temporal_ui_url"] = ui
    target = update.get("temporal_target", settings.temporal_target)
    if "allow_fault_injection" not in explicit and target == stack.temporal_target(cfg):
        update["allow_fault_injection"] = True
    return settings.model_copy(update=update)


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as an environment variable, so a child sees exactly what we see
    (whatever its working directory and whichever .env it would read)."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    return env


def process_env(settings: Settings, cfg: StackConfig) -> dict[str, str]:
    """Environment of the embedded stack's app processes: always the embedded addresses."""
    env = settings_env(client_settings(settings))
    env["DATABASE_URL"] = stack.database_url(cfg)
    env["TEMPORAL_TARGET"] = stack.temporal_target(cfg)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_metrics_ports(settings: Settings) -> tuple[int, int]:
    base = settings.worker_metrics_port or DEFAULT_WORKER_METRICS_PORT
    return base, base + 1


def api_url(settings: Settings) -> str:
    # A wildcard bind is reached through loopback.
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def app_services(settings: Settings) -> list[AppService]:
    orders_port, shipping_port = worker_metrics_ports(settings)
    url = api_url(settings)
    return [
        _worker(WORKER_ORDERS, "orders", orders_port, settings.order_task_queue),
        _worker(WORKER_SHIPPING, "shipping", shipping_port, settings.shipping_task_queue),
        AppService(
            API,
            [sys.executable, "-m", "app.api"],
            settings.api_port,
            "API_PORT",
            url,
            health_url=f"{url}/health",
        ),
    ]


def _worker(name: str, queue: str, port: int, task_queue: str) -> AppService:
    return AppService(
        name,
        [sys.executable, "-m", "app.worker", "--queue", queue, "--metrics-port", str(port)],
        port,
        "WORKER_METRICS_PORT",
        f"{task_queue}, metrics http://127.0.0.1:{port}/metrics",
        ready_marker=WORKER_READY_MARKER,
    )


def endpoints(settings: Settings) -> list[tuple[str, str]]:
    """What a person connects to, for the start banner and quick-start."""
    cfg = stack_config(settings)
    url = api_url(settings)
    rows = [("API", url), ("API docs", f"{url}/docs")]
    ui = stack.temporal_ui_url(cfg)
    if ui:
        rows.append(("Temporal UI", ui))
    rows += [
        ("Temporal gRPC", stack.temporal_target(cfg)),
        (
            "PostgreSQL",
            f"{cfg.host}:{cfg.postgres_port} (user {cfg.pg_user}, password {cfg.pg_password}, "
            f"db {cfg.pg_db})",
        ),
        ("Logs", str(cfg.logs_dir)),
    ]
    return rows


# ---------------------------------------------------------------------------------------------
# Readiness
# ---------------------------------------------------------------------------------------------


def _log_marker_check(path: Path, marker: bytes) -> Callable[[], bool]:
    """True once `marker` is logged after now (the log is appended to across runs)."""
    try:
        offset = path.stat().st_size
    except FileNotFoundError:
        offset = 0

    def check() -> bool:
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(offset if size >= offset else 0)  # smaller: the log was rotated
                return marker in fh.read()
        except FileNotFoundError:
            return False

    return check


def _health_check(url: str) -> Callable[[], bool]:
    import httpx  # only `start` needs it; keeps `ps`, `stop` and --help quick

    def check() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _ready_check(cfg: StackConfig, svc: AppService) -> Callable[[], bool] | None:
    if svc.health_url:
        return _health_check(svc.health_url)
    if svc.ready_marker:
        return _log_marker_check(cfg.log_path(svc.name), svc.ready_marker)
    return None


# ---------------------------------------------------------------------------------------------
# Start / stop / status of the embedded stack
# ---------------------------------------------------------------------------------------------


def _parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run independent start/stop calls together; raise the first failure once all ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
    results: list[T] = []
    for future in futures:
        err = future.exception()
        if err is not None:
            raise err
        results.append(future.result())
    return results


def _wanted_ports(cfg: StackConfig, services: list[AppService]) -> list[tuple[int, str, str]]:
    """(port, what, setting) of every service that does not run yet."""
    wanted: list[tuple[int, str, str]] = []
    if not stack.process_status(cfg, POSTGRES).running:
        wanted.append((cfg.postgres_port, "PostgreSQL", "POSTGRES_PORT"))
    if not stack.process_status(cfg, TEMPORAL).running:
        wanted.append((cfg.temporal_port, "Temporal (gRPC)", "TEMPORAL_PORT"))
        if not cfg.headless:
            wanted.append((cfg.temporal_ui_port, "Temporal Web UI", "TEMPORAL_UI_PORT"))
        wanted.append((cfg.metrics_port, "Temporal metrics", "TEMPORAL_PORT (+2000)"))
    for svc in services:
        if not stack.process_status(cfg, svc.name).running:
            wanted.append((svc.port, svc.name, svc.port_setting))
    return wanted


def _check_ports(cfg: StackConfig, services: list[AppService]) -> None:
    """Refuse before starting anything when a port we still need is taken."""
    for port, what, setting in _wanted_ports(cfg, services):
        owner = stack.port_in_use(cfg.host, port)
        if owner is not None:
            raise StackError(
                f"port {port} is in use by another program ({owner}); {what} cannot start "
                f"on {cfg.host}:{port} - stop that program or set {setting} to a free port"
            )


def taken_ports(settings: Settings) -> list[tuple[int, str]]:
    """(port, setting) that `start` would need and another program holds now; PostgreSQL's
    only when POSTGRES_PORT is set (its default moves)."""
    cfg = stack_config(settings)
    movable = "postgres_port" not in settings.model_fields_set
    return [
        (port, setting)
        for port, what, setting in _wanted_ports(cfg, app_services(settings))
        if not (movable and setting == "POSTGRES_PORT")
        and stack.port_in_use(cfg.host, port) is not None
    ]


def _migrate(cfg: StackConfig) -> str:
    from app.platform.migrate import upgrade

    started = time.monotonic()
    try:
        upgrade(stack.database_url(cfg))
    except Exception as err:
        raise StackError(f"database migrations failed: {_first_line(str(err))}") from err
    return f"migrations: database schema up to date in {time.monotonic() - started:.1f}s"


def is_running(settings: Settings) -> bool:
    cfg = stack_config(settings)
    return all(stack.process_status(cfg, name).running for name in ALL_SERVICES)


def start_stack(settings: Settings, report: Callable[[str], None], timeout: float = 90.0) -> None:
    """Start whatever is not running yet: infra, migrations, then the app processes.

    A start that fails stops what it had started itself (what ran before stays), so the
    next start begins as if this one had never run: same ports, nothing left over."""
    cfg = stack_config(settings)
    (cfg.run_dir / _LEGACY_PORT_FILE).unlink(missing_ok=True)
    before = set(_running(cfg, ALL_SERVICES))
    moved = move_postgres_if_taken(settings, cfg)
    if moved:
        report(moved)
    try:
        _start_missing(settings, cfg, report, timeout)
    except Exception:
        for message in _roll_back(cfg, before):
            report(message)
        raise


def _start_missing(
    settings: Settings, cfg: StackConfig, report: Callable[[str], None], timeout: float
) -> None:
    services = app_services(settings)
    _check_ports(cfg, services)
    # PostgreSQL and Temporal (SQLite) do not depend on each other.
    infra = [
        partial(stack.start_postgres, cfg, timeout),
        partial(stack.start_temporal, cfg, timeout),
    ]
    for message in _parallel(infra):
        report(message)
    _remember_postgres_port(settings, cfg)
    report(_migrate(cfg))
    if settings.temporal_namespace_retention:
        from devstack.retention import apply_retention

        retention = settings.temporal_namespace_retention
        report(apply_retention(client_settings(settings), retention))
    # The workflow sandbox re-imports the workflow modules for every run; without bytecode
    # (PYTHONDONTWRITEBYTECODE is common) it compiles them from source each time.
    compileall.compile_dir(str(Path(app.__file__).resolve().parent), quiet=1)
    calls = [partial(start_app_service, settings, svc.name, timeout) for svc in services]
    for message in _parallel(calls):
        report(message)


def _roll_back(cfg: StackConfig, before: set[str]) -> list[str]:
    """After a failed start: stop what it had started, forget a port it had moved to."""
    started = [name for name in _running(cfg, ALL_SERVICES) if name not in before]
    messages: list[str] = []
    if started:
        try:
            stack.stop_all(cfg, started)
        except StackError as err:
            messages.append(f"start failed; stopping what it had started failed too: {err}")
        else:
            messages.append(f"start failed; stopped what it had started: {', '.join(started)}")
    _forget_port_if_stopped(cfg)
    return messages


def start_app_service(settings: Settings, name: str, timeout: float = 90.0) -> str:
    """Start one application process exactly as `start` does (no-op while it runs).

    One recipe for first start and for restarting a single process (`cli.py chaos` kills
    workers and brings them back through here), so a restarted process is the same process.
    """
    cfg = stack_config(settings)
    svc = next((s for s in app_services(settings) if s.name == name), None)
    if svc is None:
        raise StackError(f"unknown application service {name!r}; one of {', '.join(APP_SERVICES)}")
    return stack.start_process(
        cfg,
        svc.name,
        svc.argv,
        env=process_env(settings, cfg),
        ready=_ready_check(cfg, svc),
        timeout=timeout,
        cwd=PROJECT_ROOT,
        port=svc.port,
        port_setting=svc.port_setting,
    )


def stop_stack(settings: Settings, timeout: float = 15.0) -> list[str]:
    """Stop the app processes together (each drains its in-flight work), then Temporal,
    then PostgreSQL."""
    cfg = stack_config(settings)
    others = [n for n in stack.known_services(cfg) if n not in stack.INFRA_SERVICES]
    messages = _parallel([partial(stack.stop_process, cfg, name, timeout) for name in others])
    messages += stack.stop_all(cfg, [TEMPORAL, POSTGRES])
    _forget_port_if_stopped(cfg)
    return messages


@dataclass
class Row:
    service: str
    state: str
    pid: int | None
    address: str
    log: str


def stack_status(settings: Settings) -> list[Row]:
    cfg = stack_config(settings)
    addresses = {svc.name: svc.address for svc in app_services(settings)}
    ui = stack.temporal_ui_url(cfg)
    rows: list[Row] = []
    names = list(dict.fromkeys([*ALL_SERVICES, *stack.known_services(cfg)]))
    for name in names:
        st = stack.process_status(cfg, name)
        address = st.address or addresses.get(name, "")
        if name == TEMPORAL and ui:
            address += f", UI {ui}"
        rows.append(
            Row(name, "running" if st.running else "stopped", st.pid, address, str(st.log_path))
        )
    return rows


# ---------------------------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------------------------


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


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
                f"the Docker engine is not available ({_first_line(info.stderr + info.stdout)}); "
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
        detail = f": {_first_line(result.stderr)}" if capture and result.stderr else ""
        raise StackError(
            f"docker compose {' '.join(args)} failed with exit code {result.returncode}{detail}"
        )
    return result


def compose_logs_args(service: str | None, lines: int, follow: bool) -> list[str]:
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
