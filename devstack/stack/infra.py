"""PostgreSQL and the Temporal dev server as one: start both; stop any service of the stack
by name (PostgreSQL through postgres.py, the others through processes.py), several in
order: app processes first, then Temporal, then PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from devstack.stack.config import INFRA_SERVICES, POSTGRES, TEMPORAL, StackConfig, StackError
from devstack.stack.postgres import start_postgres, stop_postgres
from devstack.stack.processes import known_services, service_lock, stop_locked
from devstack.stack.temporal_server import start_temporal


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
