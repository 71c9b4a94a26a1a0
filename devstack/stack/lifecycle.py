"""The whole embedded stack, started and stopped in order (`cli.py start|stop|ps`):
PostgreSQL and Temporal together, the database migrations in this process, then the app
processes (app_processes.py), the workers of the builds rollout.py chooses; a start that
fails stops what it had started."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from devstack.stack import builds, config, infra, postgres, processes, temporal_server
from devstack.stack.addresses import (
    client_settings,
    forget_port_if_stopped,
    move_postgres_if_taken,
    remember_postgres_port,
    running_services,
    stack_config,
)
from devstack.stack.app_processes import (
    ALL_SERVICES,
    WORKER_QUEUES,
    AppService,
    app_services,
    start_app_service,
    start_worker,
    task_queue_of,
    worker_build,
    worker_role,
)
from devstack.stack.config import (
    POSTGRES,
    TEMPORAL,
    StackConfig,
    StackError,
    StackSettings,
    first_line,
)
from devstack.stack.rollout import make_current, plan_start

# Where earlier versions kept a moved port for good (whatever ran): removed by `start`.
_LEGACY_PORT_FILE = "postgres.port"

T = TypeVar("T")


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
    if not processes.process_status(cfg, POSTGRES).running:
        wanted.append((cfg.postgres_port, "PostgreSQL", "POSTGRES_PORT"))
    if not processes.process_status(cfg, TEMPORAL).running:
        wanted.append((cfg.temporal_port, "Temporal (gRPC)", "TEMPORAL_PORT"))
        if not cfg.headless:
            wanted.append((cfg.temporal_ui_port, "Temporal Web UI", "TEMPORAL_UI_PORT"))
        wanted.append((cfg.metrics_port, "Temporal metrics", "TEMPORAL_PORT (+2000)"))
    for svc in services:
        if not processes.process_status(cfg, svc.name).running:
            wanted.append((svc.port, svc.name, svc.port_setting))
    return wanted


def _check_ports(cfg: StackConfig, services: list[AppService]) -> None:
    """Refuse before starting anything when a port we still need is taken."""
    for port, what, setting in _wanted_ports(cfg, services):
        owner = processes.port_in_use(cfg.host, port)
        if owner is not None:
            raise StackError(
                f"port {port} is in use by another program ({owner}); {what} cannot start "
                f"on {cfg.host}:{port} - stop that program or set {setting} to a free port"
            )


def taken_ports(settings: StackSettings) -> list[tuple[int, str]]:
    """(port, setting) that `start` would need and another program holds now; PostgreSQL's
    only when POSTGRES_PORT is set (its default moves)."""
    cfg = stack_config(settings)
    movable = "postgres_port" not in settings.model_fields_set
    return [
        (port, setting)
        for port, what, setting in _wanted_ports(cfg, app_services(settings))
        if not (movable and setting == "POSTGRES_PORT")
        and processes.port_in_use(cfg.host, port) is not None
    ]


def _migrate(cfg: StackConfig) -> str:
    from app.platform.migrate import upgrade

    started = time.monotonic()
    try:
        upgrade(config.database_url(cfg))
    except Exception as err:
        raise StackError(f"database migrations failed: {first_line(str(err))}") from err
    return f"migrations: database schema up to date in {time.monotonic() - started:.1f}s"


def is_running(settings: StackSettings) -> bool:
    cfg = stack_config(settings)
    return all(processes.process_status(cfg, name).running for name in ALL_SERVICES)


def start_stack(
    settings: StackSettings, report: Callable[[str], None], timeout: float = 90.0
) -> None:
    """Start whatever is not running yet: infra, migrations, then the app processes.

    A start that fails stops what it had started itself (what ran before stays), so the
    next start begins as if this one had never run: same ports, nothing left over."""
    cfg = stack_config(settings)
    (cfg.run_dir / _LEGACY_PORT_FILE).unlink(missing_ok=True)
    before = set(running_services(cfg, _stack_services(cfg)))
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
    settings: StackSettings, cfg: StackConfig, report: Callable[[str], None], timeout: float
) -> None:
    services = app_services(settings)
    _check_ports(cfg, services)
    # PostgreSQL and Temporal (SQLite) do not depend on each other.
    infra = [
        partial(postgres.start_postgres, cfg, timeout),
        partial(temporal_server.start_temporal, cfg, timeout),
    ]
    for message in _parallel(infra):
        report(message)
    remember_postgres_port(settings, cfg)
    report(_migrate(cfg))
    if settings.temporal_namespace_retention:
        from devstack.stack.retention import apply_retention

        retention = settings.temporal_namespace_retention
        report(apply_retention(client_settings(settings), retention))
    plan = plan_start(settings, cfg)
    for message in plan.messages:
        report(message)
    builds.set_serving(cfg, plan.serving)
    calls = [partial(start_app_service, settings, svc.name, timeout) for svc in services]
    calls += [
        partial(start_worker, settings, role, build, timeout)
        for build in plan.beside
        for role in WORKER_QUEUES
    ]
    for message in _parallel(calls):
        report(message)
    if plan.make_current:
        report(make_current(settings, plan.serving))


def _stack_services(cfg: StackConfig) -> list[str]:
    """The stack's services and the workers of other builds it runs."""
    return list(dict.fromkeys([*ALL_SERVICES, *processes.known_services(cfg)]))


def _roll_back(cfg: StackConfig, before: set[str]) -> list[str]:
    """After a failed start: stop what it had started, forget a port it had moved to."""
    started = [name for name in running_services(cfg, _stack_services(cfg)) if name not in before]
    messages: list[str] = []
    if started:
        try:
            infra.stop_all(cfg, started)
        except StackError as err:
            messages.append(f"start failed; stopping what it had started failed too: {err}")
        else:
            messages.append(f"start failed; stopped what it had started: {', '.join(started)}")
    forget_port_if_stopped(cfg)
    return messages


def stop_stack(settings: StackSettings, timeout: float = 15.0) -> list[str]:
    """Stop the app processes together (each drains its in-flight work), then Temporal,
    then PostgreSQL."""
    cfg = stack_config(settings)
    others = [n for n in processes.known_services(cfg) if n not in config.INFRA_SERVICES]
    messages = _parallel([partial(infra.stop_process, cfg, name, timeout) for name in others])
    messages += infra.stop_all(cfg, [TEMPORAL, POSTGRES])
    forget_port_if_stopped(cfg)
    return messages


@dataclass
class Row:
    service: str
    state: str
    pid: int | None
    address: str
    log: str
    build_id: str | None = None  # a worker's build


def stack_status(settings: StackSettings) -> list[Row]:
    cfg = stack_config(settings)
    addresses = {svc.name: svc.address for svc in app_services(settings)}
    ui = config.temporal_ui_url(cfg)
    rows: list[Row] = []
    for name in _stack_services(cfg):
        st = processes.process_status(cfg, name)
        role = worker_role(name)
        address = (
            st.address or addresses.get(name) or (task_queue_of(settings, role) if role else "")
        )
        if name == TEMPORAL and ui:
            address += f", UI {ui}"
        state = "running" if st.running else "stopped"
        build = worker_build(cfg, name) if role else None
        rows.append(Row(name, state, st.pid, address, str(st.log_path), build))
    return rows
