"""Supervising the stack's processes: logs, ports, pid files and process identity,
spawning detached process groups, waiting until ready, stopping them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from devstack.stack.config import (
    _LOG_ROTATE_BYTES,
    _NAME_RE,
    INFRA_SERVICES,
    POSTGRES,
    TEMPORAL,
    ServiceStatus,
    StackConfig,
    StackError,
    check_name,
    service_address,
)

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


def service_error(cfg: StackConfig, name: str, message: str, lines: int = 30) -> StackError:
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


def require_port(cfg: StackConfig, port: int, what: str, setting: str) -> None:
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


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_pid(cfg: StackConfig, name: str, pid: int, argv: Sequence[str]) -> None:
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


def remove_pid(cfg: StackConfig, name: str) -> None:
    for path in (cfg.pid_path(name), cfg.meta_path(name)):
        path.unlink(missing_ok=True)


def postmaster_pid(cfg: StackConfig) -> int | None:
    try:
        first = (cfg.pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0]
        return int(first.strip())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def postmaster_port(cfg: StackConfig) -> int | None:
    try:
        lines = (cfg.pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        return int(lines[3].strip())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def reap(pid: int) -> None:
    with _CHILDREN_LOCK:
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[pid]


def is_alive(proc: psutil.Process) -> bool:
    reap(proc.pid)
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return [str(part) for part in proc.cmdline()]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    except psutil.AccessDenied:
        return []


def _is_expected(cfg: StackConfig, name: str, proc: psutil.Process) -> bool:
    """Whether `proc` is the program we started as `name` (guards against stale pid files)."""
    cmd = cmdline(proc)
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


def find_process(cfg: StackConfig, name: str) -> psutil.Process | None:
    candidates = [_read_pid(cfg, name)]
    if name == POSTGRES:
        candidates.append(postmaster_pid(cfg))
    for pid in dict.fromkeys(candidates):
        if pid is None:
            continue
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        if is_alive(proc) and _is_expected(cfg, name, proc):
            return proc
    return None


def process_status(cfg: StackConfig, name: str) -> ServiceStatus:
    proc = find_process(cfg, name)
    return ServiceStatus(
        name=name,
        pid=proc.pid if proc is not None else None,
        running=proc is not None,
        log_path=cfg.log_path(name),
        address=service_address(cfg, name),
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
def service_lock(cfg: StackConfig, name: str) -> Iterator[None]:
    """Serialise start/stop of one service across processes (two CLIs, parallel tests)."""
    cfg.pids_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.pids_dir / f"{check_name(name)}.lock").open("a") as fh:
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


def spawn(
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
            raise service_error(cfg, name, f"{name}: cannot start {argv[0]}: {exc}") from exc
    with _CHILDREN_LOCK:
        _CHILDREN[proc.pid] = proc
    write_pid(cfg, name, proc.pid, argv)
    return proc


def _group_members(pgid: int) -> list[psutil.Process]:
    members: list[psutil.Process] = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count as exited); return the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while True:
        alive = [p for p in alive if is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _signal_all(pgid: int | None, procs: Sequence[psutil.Process], sig: int) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if is_alive(proc):
                proc.send_signal(sig)


def terminate(proc: psutil.Process, timeout: float, first_signal: int = signal.SIGTERM) -> None:
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
    alive = wait_gone(members, timeout)
    if alive:
        _signal_all(pgid, alive, signal.SIGKILL)
        alive = wait_gone(alive, 5.0)
    if pgid is not None:
        # Anything left in the group (e.g. a child forked while we waited) goes too.
        leftovers = [p for p in _group_members(pgid) if is_alive(p)]
        if leftovers:
            _signal_all(pgid, leftovers, signal.SIGKILL)
            wait_gone(leftovers, 5.0)


def _probe(check: Callable[[], bool]) -> tuple[bool, str]:
    """Whether `check` says ready, and the first line of its error if it raised (a service
    still starting refuses connections)."""
    try:
        return check(), ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]


def wait_ready(
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
            remove_pid(cfg, name)
            raise service_error(cfg, name, f"{name} exited with code {code} during startup")
        if check is None:
            if time.monotonic() >= grace_until:
                return
        else:
            ready, error = _probe(check)
            if ready:
                return
            last_error = error or last_error
        if time.monotonic() >= deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate(psutil.Process(proc.pid), 10.0, stop_signal)
            proc.poll()
            remove_pid(cfg, name)
            detail = f" (last error: {last_error})" if last_error else ""
            raise service_error(
                cfg,
                name,
                f"{name} did not become ready within {timeout:.0f}s{detail}; "
                f"log: {cfg.log_path(name)}",
            )
        time.sleep(0.1)


def child_env(extra: dict[str, str] | None) -> dict[str, str]:
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
    check_name(name)
    if name in INFRA_SERVICES:
        raise StackError(f"{name} is started with start_infra(), not start_process()")
    if not argv:
        raise StackError(f"{name}: empty command line")
    with service_lock(cfg, name):
        proc = find_process(cfg, name)
        if proc is not None:
            return f"{name}: already running (pid {proc.pid})"
        remove_pid(cfg, name)
        if port is not None:
            require_port(cfg, port, name, port_setting)
        started = time.monotonic()
        child = spawn(cfg, name, argv, env=child_env(env), cwd=cwd)
        wait_ready(cfg, name, child, ready, timeout)
        return f"{name}: started (pid {child.pid}) in {time.monotonic() - started:.1f}s"


def not_running(cfg: StackConfig, name: str) -> str:
    """A service to stop that is not running: forget its stale pid file, if any."""
    stale = cfg.pid_path(name).exists()
    remove_pid(cfg, name)
    return f"{name}: not running" + (" (removed stale pid file)" if stale else "")


def stop_locked(cfg: StackConfig, name: str, timeout: float) -> str:
    proc = find_process(cfg, name)
    if proc is None:
        return not_running(cfg, name)
    pid = proc.pid
    started = time.monotonic()
    terminate(proc, timeout)
    reap(pid)
    remove_pid(cfg, name)
    return f"{name}: stopped (pid {pid}) in {time.monotonic() - started:.1f}s"


def wait_until(check: Callable[[], bool], timeout: float, cfg: StackConfig, name: str) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        ready, error = _probe(check)
        if ready:
            return
        last_error = error or last_error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise service_error(
                cfg, name, f"{name} is running but not answering after {timeout:.0f}s{detail}"
            )
        time.sleep(0.2)


def refuse_other_port(name: str, running_port: int | None, configured: int, pid: int) -> None:
    """A server of ours already runs, but on another port than configured: say so."""
    if running_port is not None and running_port != configured:
        raise StackError(
            f"{name} is already running on port {running_port} (pid {pid}), "
            f"not on the configured {configured}; stop it first"
        )
