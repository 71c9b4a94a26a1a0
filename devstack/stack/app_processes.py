"""The application processes the embedded stack starts beside PostgreSQL and Temporal,
and how: two workers and the API, each with its command line, address and readiness check.

    postgres         embedded PostgreSQL (postgres.py)           POSTGRES_PORT (5432)
    temporal         Temporal dev server + Web UI                TEMPORAL_PORT (7233), TEMPORAL_UI_PORT (8233)
                     (temporal_server.py)
    worker-orders    python -P -m app.worker --queue orders      metrics WORKER_METRICS_PORT (9101)
    worker-shipping  python -P -m app.worker --queue shipping    metrics WORKER_METRICS_PORT + 1
    app              python -m app.api                           API_PORT (8000), ready = GET /health 200

The workers run the serving build's copy of `app` (builds.py). While `cli.py deploy` rolls
to another build, that build's workers run beside them as `worker-orders.<build>` and
`worker-shipping.<build>` (no metrics port), and so do an old build's while it drains.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from app.platform.settings import PROJECT_ROOT, Settings
from devstack.stack import builds, config, processes
from devstack.stack.addresses import process_env, stack_config
from devstack.stack.config import POSTGRES, TEMPORAL, StackConfig, StackError, StackSettings

WORKER_ORDERS: Final = "worker-orders"
WORKER_SHIPPING: Final = "worker-shipping"
API: Final = "app"
APP_SERVICES: tuple[str, ...] = (WORKER_ORDERS, WORKER_SHIPPING, API)
# Each worker service and the `--queue` it serves.
WORKER_QUEUES: dict[str, str] = {WORKER_ORDERS: "orders", WORKER_SHIPPING: "shipping"}
ALL_SERVICES: tuple[str, ...] = (POSTGRES, TEMPORAL, *APP_SERVICES)
# What `cli.py logs --service X` may name (with --compose too): a service, or both workers.
LogGroup = Literal["app", "worker", "worker-orders", "worker-shipping", "temporal", "postgres"]
# The logs `cli.py logs --service X` reads.
LOG_GROUPS: dict[LogGroup, tuple[str, ...]] = {
    "app": (API,),
    "worker": (WORKER_ORDERS, WORKER_SHIPPING),
    WORKER_ORDERS: (WORKER_ORDERS,),
    WORKER_SHIPPING: (WORKER_SHIPPING,),
    "temporal": (TEMPORAL,),
    "postgres": (POSTGRES,),
}
DEFAULT_WORKER_METRICS_PORT = 9101
# The worker logs this once its pollers run (app/worker.py).
WORKER_READY_MARKER = b"worker running"


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
    # -P: no working directory first on sys.path, so `app` is the build's copy on
    # PYTHONPATH (worker_env), not the checkout that is the working directory.
    argv = [sys.executable, "-P", "-m", "app.worker", "--queue", queue]
    return AppService(
        name,
        [*argv, "--metrics-port", str(port)],
        port,
        "WORKER_METRICS_PORT",
        f"{task_queue}, metrics http://127.0.0.1:{port}/metrics" if port else task_queue,
        ready_marker=WORKER_READY_MARKER,
    )


def task_queue_of(settings: Settings, role: str) -> str:
    return settings.order_task_queue if role == WORKER_ORDERS else settings.shipping_task_queue


def worker_role(name: str) -> str | None:
    """worker-orders or worker-shipping for a worker of any build; None for the others."""
    return next(
        (role for role in WORKER_QUEUES if name == role or name.startswith(f"{role}.")), None
    )


def worker_name(cfg: StackConfig, role: str, build: str) -> str:
    """The serving build's workers have the plain names; another build's are named by it."""
    return role if build == builds.serving_build(cfg) else f"{role}.{builds.build_tag(build)}"


def worker_build(cfg: StackConfig, name: str) -> str | None:
    """The build a worker service runs (None: unknown, or not a worker)."""
    role = worker_role(name)
    if role is None:
        return None
    if name == role:
        return builds.serving_build(cfg)
    return builds.build_of_tag(cfg, name.removeprefix(f"{role}."))


def worker_services(cfg: StackConfig) -> list[str]:
    """Every worker service this stack has started and not stopped, of any build."""
    names = [*WORKER_QUEUES, *processes.known_services(cfg)]
    return [name for name in dict.fromkeys(names) if worker_role(name) is not None]


def running_builds(cfg: StackConfig) -> dict[str, list[str]]:
    """Each build whose workers run here, and those workers."""
    found: dict[str, list[str]] = {}
    for name in worker_services(cfg):
        build = worker_build(cfg, name)
        if build is not None and processes.process_status(cfg, name).running:
            found.setdefault(build, []).append(name)
    return found


def log_names(cfg: StackConfig, group: LogGroup) -> tuple[str, ...]:
    """The services whose logs `cli.py logs --service <group>` shows: a worker group
    includes the workers of other builds that run beside the serving ones."""
    names = LOG_GROUPS[group]
    others = [
        name for name in worker_services(cfg) if name not in names and worker_role(name) in names
    ]
    return (*names, *others)


def endpoints(settings: StackSettings) -> list[tuple[str, str]]:
    """What a person connects to, for the start banner and quick-start (the operator
    console is served by the API)."""
    cfg = stack_config(settings)
    url = api_url(settings)
    rows = [("API", url), ("API docs", f"{url}/docs"), ("Console", f"{url}/console")]
    ui = config.temporal_ui_url(cfg)
    if ui:
        rows.append(("Temporal UI", ui))
    rows += [
        ("Temporal gRPC", config.temporal_target(cfg)),
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


def start_app_service(settings: StackSettings, name: str, timeout: float = 90.0) -> str:
    """Start one application process exactly as `start` does (no-op while it runs).

    One recipe for first start and for restarting a single process (`cli.py chaos` kills
    workers and brings them back through here), so a restarted process is the same process:
    a worker of the same build. Names: those of APP_SERVICES, and `<worker>.<build>`.
    """
    cfg = stack_config(settings)
    role = worker_role(name)
    if role is not None:
        build = worker_build(cfg, name)
        if build is None and name == role:  # a first start: the checkout's build
            build = builds.disk_build(settings)
            builds.set_serving(cfg, build)
        if build is None:
            raise StackError(f"{name}: no build of that name in {builds.builds_dir(cfg)}")
        return start_worker(settings, role, build, timeout)
    svc = next((s for s in app_services(settings) if s.name == name), None)
    if svc is None:
        raise StackError(f"unknown application service {name!r}; one of {', '.join(APP_SERVICES)}")
    return _start(cfg, svc, process_env(settings, cfg), timeout)


def start_worker(settings: StackSettings, role: str, build: str, timeout: float = 90.0) -> str:
    """Start `role`'s worker of `build` (no-op while it runs): the serving build's under the
    plain name, with its metrics port; another build's beside it, without one."""
    cfg = stack_config(settings)
    name = worker_name(cfg, role, build)
    if name == role:
        svc = next(s for s in app_services(settings) if s.name == role)
    else:
        svc = _worker(name, WORKER_QUEUES[role], 0, task_queue_of(settings, role))
    env = worker_env(settings, cfg, builds.ensure_snapshot(cfg, settings, build), build)
    message = _start(cfg, svc, env, timeout)
    return message if name == role else f"{message} (build {build})"


def worker_env(
    settings: StackSettings, cfg: StackConfig, snapshot: Path, build: str
) -> dict[str, str]:
    """A worker's environment: the stack's settings, its build id (the copy has no git to
    compute it from), and its build's copy first on the import path. The copy also keeps
    the code of a running build fixed: with WORKFLOW_SANDBOX=true the sandbox imports the
    workflow modules again for every run, from wherever `app` is, so a worker started from
    the checkout would run whatever the checkout holds by then."""
    env = process_env(settings, cfg)
    env["WORKER_BUILD_ID"] = build
    # The settings come in the environment; the copy's PROJECT_ROOT has no .env, and the
    # checkout's is still found as ./.env from the working directory (PROJECT_ROOT).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(snapshot), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def _start(cfg: StackConfig, svc: AppService, env: dict[str, str], timeout: float) -> str:
    return processes.start_process(
        cfg,
        svc.name,
        svc.argv,
        env=env,
        ready=_ready_check(cfg, svc),
        timeout=timeout,
        cwd=PROJECT_ROOT,
        port=svc.port or None,
        port_setting=svc.port_setting,
    )
