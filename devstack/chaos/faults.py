"""The chaos run's fault plan (drawn from the seed) and how each fault is inflicted: SIGKILL a
worker and bring it back, restart (or crash) Temporal and PostgreSQL, heal what is down.

Blocking calls: the run executes them in a thread so orders keep flowing meanwhile."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from devstack.stack.addresses import stack_config
from devstack.stack.app_processes import (
    ALL_SERVICES,
    WORKER_ORDERS,
    WORKER_SHIPPING,
    app_services,
    start_app_service,
)
from devstack.stack.config import POSTGRES, TEMPORAL, StackConfig, StackError, StackSettings
from devstack.stack.postgres import start_postgres, stop_postgres
from devstack.stack.processes import port_in_use, process_status
from devstack.stack.temporal_server import start_temporal, stop_temporal

WORKERS = (WORKER_ORDERS, WORKER_SHIPPING)


@dataclass
class ChaosOptions:
    orders: int = 100
    duration_s: float = 60.0
    seed: int = 0
    # Mean seconds between worker kills (each gap is 0.5x-1.5x this); 0 = no kills.
    kill_interval_s: float = 5.0
    max_worker_kills: int | None = None
    restart_temporal: bool = True
    restart_postgres: bool = True
    # None = ORDER_DEADLINE_S (60 s).
    order_deadline_s: float | None = None
    grace_s: float = 30.0
    fault_profile: str = "seed"
    # SIGKILL Temporal and PostgreSQL (crash) instead of stopping them.
    hard_restarts: bool = False
    # Order ids are PREFIX-NNNN; None = chaos-SEED-<time+random> (unique per run). A fixed
    # prefix plus the workers' FAULT_SEED makes every fault draw repeat on a fresh stack.
    id_prefix: str | None = None
    # Past the bound (deadline + grace), orders still compensating (closed in the
    # database, a refund or booking cancellation retrying) are waited for this much more;
    # those still at it are then reported as settling, not judged.
    settle_wait_s: float = 120.0
    # Mix in colliding ids and payment ids, free orders, cancels at random moments and
    # while closing, retries of FAILED orders; reconcile at the end
    # (devstack/chaos/adversarial.py).
    adversarial: bool = False


@dataclass(frozen=True)
class PlannedFault:
    at_s: float
    kind: str  # kill_worker, restart_temporal, restart_postgres
    target: str


def plan_faults(opts: ChaosOptions, rng: random.Random) -> list[PlannedFault]:
    """The run's faults, a pure function of the options and the seeded generator."""
    faults: list[PlannedFault] = []
    if opts.kill_interval_s > 0:
        at = rng.uniform(0.5, 1.5) * opts.kill_interval_s
        while at < opts.duration_s and (
            opts.max_worker_kills is None or len(faults) < opts.max_worker_kills
        ):
            faults.append(PlannedFault(round(at, 2), "kill_worker", rng.choice(WORKERS)))
            at += rng.uniform(0.5, 1.5) * opts.kill_interval_s
    # Temporal in the first half and PostgreSQL in the second, so every order phase (start,
    # activities, compensation) meets at least one of them.
    if opts.restart_temporal:
        at = round(rng.uniform(0.25, 0.45) * opts.duration_s, 2)
        faults.append(PlannedFault(at, "restart_temporal", TEMPORAL))
    if opts.restart_postgres:
        at = round(rng.uniform(0.55, 0.75) * opts.duration_s, 2)
        faults.append(PlannedFault(at, "restart_postgres", POSTGRES))
    return sorted(faults, key=lambda f: f.at_s)


# ---------------------------------------------------------------------------------------
# Faults (blocking: run in a thread so orders keep flowing meanwhile)
# ---------------------------------------------------------------------------------------


def _wait_stopped(cfg: StackConfig, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    # process_status also reaps a child of ours (a worker this run restarted earlier).
    while process_status(cfg, name).running:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _ports_of(settings: StackSettings, cfg: StackConfig, name: str) -> list[int]:
    if name == POSTGRES:
        return [cfg.postgres_port]
    if name == TEMPORAL:
        ports = [cfg.temporal_port, cfg.metrics_port]
        ports += [] if cfg.headless else [cfg.temporal_ui_port]
        return ports + ([cfg.temporal_http_port] if cfg.temporal_http_port else [])
    return [svc.port for svc in app_services(settings) if svc.name == name]


def _wait_ports_free(cfg: StackConfig, ports: list[int], timeout: float) -> None:
    """A killed multi-threaded process counts as gone (its leader is a zombie) a moment
    before its last thread exits and its listening sockets close; restarting in that
    moment fails with "port in use". Wait it out."""
    deadline = time.monotonic() + timeout
    while any(port_in_use(cfg.host, port) for port in ports):
        if time.monotonic() > deadline:
            return  # the start that follows reports who holds it
        time.sleep(0.1)


def stopped_services(cfg: StackConfig) -> list[str]:
    return [n for n in ALL_SERVICES if not process_status(cfg, n).running]


def _crash(cfg: StackConfig, name: str) -> int | None:
    """SIGKILL a service's whole process group (a postmaster and its backends die together,
    as in a machine crash), then wait until it is gone."""
    pid = process_status(cfg, name).pid
    if pid is None:
        return None
    try:
        group = os.getpgid(pid) == pid
        members = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return pid
    if not _wait_stopped(cfg, name, 10.0):
        raise StackError(f"{name} (pid {pid}) survived SIGKILL")
    # Until its parent reaps it, a killed postmaster is a zombie that kill(pid, 0) still
    # finds, and a new postmaster refuses the socket lock file naming that pid ("lock file
    # ... already exists"). The supervisor counts zombies as gone, so wait here.
    deadline = time.monotonic() + 30.0
    while any(psutil.pid_exists(p) for p in members) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid


# How the supervisor stops and starts each server a restart fault hits.
_SERVER_CONTROL: dict[
    str, tuple[Callable[[StackConfig], str], Callable[[StackConfig, float], str]]
] = {
    TEMPORAL: (stop_temporal, start_temporal),
    POSTGRES: (stop_postgres, start_postgres),
}


def execute_fault(
    settings: StackSettings, fault: PlannedFault, timeout: float = 90.0, *, hard: bool = False
) -> dict[str, Any]:
    """Inflict one fault and bring the service back; a record of what happened.

    Restarts stop Temporal and PostgreSQL the supervisor's way (SIGTERM, `pg_ctl -m fast`);
    with `hard` they are SIGKILLed instead, so recovery from a crash is what is tested.
    """
    cfg = stack_config(settings)
    record: dict[str, Any] = {"kind": fault.kind, "target": fault.target, "ok": True}
    began = time.monotonic()
    try:
        if fault.kind == "kill_worker":
            status = process_status(cfg, fault.target)
            if status.pid is None:
                record["note"] = "was not running"
            else:
                record["pid"] = status.pid
                os.kill(status.pid, signal.SIGKILL)
                if not _wait_stopped(cfg, fault.target, 10.0):
                    raise StackError(f"{fault.target} (pid {status.pid}) survived SIGKILL")
            _wait_ports_free(cfg, _ports_of(settings, cfg, fault.target), 15.0)
            start_app_service(settings, fault.target, timeout)
            record["new_pid"] = process_status(cfg, fault.target).pid
        elif fault.kind in ("restart_temporal", "restart_postgres"):
            stop, start = _SERVER_CONTROL[fault.target]
            record["pid"] = process_status(cfg, fault.target).pid
            record["mode"] = "SIGKILL" if hard else "stop"
            if hard:
                _crash(cfg, fault.target)
            else:
                stop(cfg)
            _wait_ports_free(cfg, _ports_of(settings, cfg, fault.target), 15.0)
            start(cfg, timeout)
            record["new_pid"] = process_status(cfg, fault.target).pid
        else:
            raise StackError(f"unknown fault {fault.kind!r}")
    except (StackError, OSError) as err:
        record["ok"] = False
        record["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
    record["downtime_s"] = round(time.monotonic() - began, 2)
    # A service we did not touch that is gone now died by itself: worth knowing.
    others_down = [n for n in stopped_services(cfg) if n != fault.target]
    if others_down:
        record["also_down"] = others_down
    return record


def heal(settings: StackSettings, timeout: float = 90.0) -> list[str]:
    """Start whatever is not running (after a failed restart or an unexpected exit)."""
    cfg = stack_config(settings)
    messages = []
    for name in stopped_services(cfg):
        _wait_ports_free(cfg, _ports_of(settings, cfg, name), 15.0)
        try:
            if name == POSTGRES:
                messages.append(start_postgres(cfg, timeout))
            elif name == TEMPORAL:
                messages.append(start_temporal(cfg, timeout))
            else:
                messages.append(start_app_service(settings, name, timeout))
        except StackError as err:
            messages.append(f"{name}: could not start: {err}")
    return messages
