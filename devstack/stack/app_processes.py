"""The application processes the embedded stack starts beside PostgreSQL and Temporal,
and how: two workers and the API, each with its command line, address and readiness check.

    postgres         embedded PostgreSQL (postgres.py)           POSTGRES_PORT (5432)
    temporal         Temporal dev server + Web UI                TEMPORAL_PORT (7233), TEMPORAL_UI_PORT (8233)
                     (temporal_server.py)
    worker-orders    python -m app.worker --queue orders         metrics WORKER_METRICS_PORT (9101)
    worker-shipping  python -m app.worker --queue shipping       metrics WORKER_METRICS_PORT + 1
    app              python -m app.api                           API_PORT (8000), ready = GET /health 200
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from app.platform.settings import PROJECT_ROOT, Settings
from devstack.stack import config, processes
from devstack.stack.addresses import process_env, stack_config
from devstack.stack.config import POSTGRES, TEMPORAL, StackConfig, StackError, StackSettings

WORKER_ORDERS: Final = "worker-orders"
WORKER_SHIPPING: Final = "worker-shipping"
API: Final = "app"
APP_SERVICES: tuple[str, ...] = (WORKER_ORDERS, WORKER_SHIPPING, API)
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
    return AppService(
        name,
        [sys.executable, "-m", "app.worker", "--queue", queue, "--metrics-port", str(port)],
        port,
        "WORKER_METRICS_PORT",
        f"{task_queue}, metrics http://127.0.0.1:{port}/metrics",
        ready_marker=WORKER_READY_MARKER,
    )


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
    workers and brings them back through here), so a restarted process is the same process.
    """
    cfg = stack_config(settings)
    svc = next((s for s in app_services(settings) if s.name == name), None)
    if svc is None:
        raise StackError(f"unknown application service {name!r}; one of {', '.join(APP_SERVICES)}")
    return processes.start_process(
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
