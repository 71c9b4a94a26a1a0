"""The Temporal dev server: start, stop, and readiness over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from datetime import timedelta

import psutil

from app.orders.search import SEARCH_ATTRIBUTES
from devstack.stack.config import (
    TEMPORAL,
    StackConfig,
    temporal_binary,
    temporal_target,
    temporal_ui_url,
)
from devstack.stack.processes import (
    child_env,
    cmdline,
    find_process,
    refuse_other_port,
    remove_pid,
    require_port,
    service_lock,
    spawn,
    stop_locked,
    wait_ready,
    wait_until,
)
from devstack.sync import run_sync

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
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return argv


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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
    run_sync(lambda: _temporal_ping(temporal_target(cfg), cfg.temporal_namespace, timeout))
    return True


def _temporal_running_port(proc: psutil.Process) -> int | None:
    cmd = cmdline(proc)
    for i, arg in enumerate(cmd[:-1]):
        if arg in ("--port", "-p"):
            with contextlib.suppress(ValueError):
                return int(cmd[i + 1])
    return None


def start_temporal(cfg: StackConfig, timeout: float = 60.0) -> str:
    """Start the Temporal dev server (state kept in run_dir/temporal/temporal.db)."""
    with service_lock(cfg, TEMPORAL):
        running = find_process(cfg, TEMPORAL)
        if running is not None:
            refuse_other_port(
                "temporal", _temporal_running_port(running), cfg.temporal_port, running.pid
            )
            wait_until(lambda: check_temporal(cfg), min(timeout, 15.0), cfg, TEMPORAL)
            return f"temporal: already running on {temporal_target(cfg)} (pid {running.pid})"
        require_port(cfg, cfg.temporal_port, "Temporal (gRPC)", "TEMPORAL_PORT")
        if not cfg.headless:
            require_port(cfg, cfg.temporal_ui_port, "Temporal Web UI", "TEMPORAL_UI_PORT")
        require_port(cfg, cfg.metrics_port, "Temporal metrics", "temporal_metrics_port")
        if cfg.temporal_http_port is not None:
            require_port(cfg, cfg.temporal_http_port, "Temporal HTTP API", "temporal_http_port")
        for directory in (cfg.run_dir, cfg.logs_dir, cfg.pids_dir, cfg.temporal_dir):
            directory.mkdir(parents=True, exist_ok=True)
        remove_pid(cfg, TEMPORAL)
        started = time.monotonic()
        child = spawn(cfg, TEMPORAL, _temporal_argv(cfg), env=child_env(None), cwd=cfg.temporal_dir)
        wait_ready(cfg, TEMPORAL, child, lambda: check_temporal(cfg), timeout)
        ui = temporal_ui_url(cfg)
        return (
            f"temporal: started on {temporal_target(cfg)} (pid {child.pid}) "
            f"in {time.monotonic() - started:.1f}s" + (f"; Web UI {ui}" if ui else "")
        )


def stop_temporal(cfg: StackConfig, timeout: float = 10.0) -> str:
    """SIGTERM the dev server (it flushes SQLite), SIGKILL after `timeout`."""
    with service_lock(cfg, TEMPORAL):
        return stop_locked(cfg, TEMPORAL, timeout)
