"""Where the embedded stack listens, seen from the product's settings: `stack_config`
(the ports it really uses, PostgreSQL moved off a taken default and the port file that
remembers it while the stack runs), `client_settings` (the settings to talk to it with)
and the environment its app processes are given."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from devstack.stack import config, postgres, processes
from devstack.stack.config import POSTGRES, StackConfig, StackSettings

# When POSTGRES_PORT is not set and its default (5432) is taken, `start` runs PostgreSQL on
# the next free port. That port belongs to the running stack, never to the run dir: commands
# read it from the running server, or, while PostgreSQL itself is down (a crash, a chaos
# restart) and processes it was given to still run, from pids/postgres.port, which `start`
# writes once PostgreSQL runs there. Once nothing of the stack runs it counts for nothing,
# and `stop` or a failed `start` removes it: the next start tries the default port again.
PORT_FILE = "postgres.port"


def port_file(cfg: StackConfig) -> Path:
    return cfg.pids_dir / PORT_FILE


def _saved_port(cfg: StackConfig) -> int | None:
    try:
        return int(port_file(cfg).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def running_services(cfg: StackConfig, names: Sequence[str]) -> list[str]:
    return [name for name in names if processes.process_status(cfg, name).running]


def stack_config(settings: StackSettings) -> StackConfig:
    """The embedded stack of `settings`, on the ports it really uses.

    POSTGRES_PORT, when set, is the port. Otherwise a running PostgreSQL of the run dir
    says where it listens (a `start` may have moved it off a taken default); while it is
    down, the port the stack's running processes were given; with nothing running, the
    default."""
    cfg = StackConfig.from_settings(settings)
    if "postgres_port" in settings.model_fields_set:
        return cfg
    port = postgres.running_postgres_port(cfg)
    if port is None:
        others = [n for n in processes.known_services(cfg) if n not in config.INFRA_SERVICES]
        if running_services(cfg, others):
            port = _saved_port(cfg)
    if port is not None:
        cfg.postgres_port = port
    return cfg


def move_postgres_if_taken(settings: StackSettings, cfg: StackConfig) -> str | None:
    """If the default port (5432) is taken, use another, say so plainly, and use it
    everywhere, for as long as this stack runs. Only `cfg` changes: nothing is kept."""
    if (
        "postgres_port" in settings.model_fields_set
        or cfg.postgres_port != settings.postgres_port  # the port a running stack was given
        or processes.process_status(cfg, POSTGRES).running
    ):
        return None
    owner = processes.port_in_use(cfg.host, cfg.postgres_port)
    if owner is None:
        return None
    for port in range(cfg.postgres_port + 1, cfg.postgres_port + 50):
        if processes.port_in_use(cfg.host, port) is None:
            taken = cfg.postgres_port
            cfg.postgres_port = port
            return (
                f"postgres: port {taken} is in use by another program ({owner}); using {port} "
                "instead while this stack runs (DATABASE_URL and every command follow it; "
                "set POSTGRES_PORT to choose one)"
            )
    return None


def remember_postgres_port(settings: StackSettings, cfg: StackConfig) -> None:
    """Once PostgreSQL runs: the port the stack's processes are given, for while it is down."""
    path = port_file(cfg)
    if cfg.postgres_port == settings.postgres_port:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{cfg.postgres_port}\n", encoding="utf-8")
    tmp.replace(path)


def forget_port_if_stopped(cfg: StackConfig) -> None:
    if not running_services(cfg, processes.known_services(cfg)):
        port_file(cfg).unlink(missing_ok=True)


def _follow_stack_port(url: str, settings: StackSettings, cfg: StackConfig) -> str | None:
    """A URL set by hand (.env's DATABASE_URL) that names the embedded stack's configured
    address, while the stack runs on another port: the same URL on the stack's port."""
    if not url or cfg.postgres_port == settings.postgres_port:
        return None
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.host not in (cfg.host, "127.0.0.1", "localhost"):
        return None
    if (parsed.port or 5432) != settings.postgres_port:
        return None
    return parsed.set(port=cfg.postgres_port).render_as_string(hide_password=False)


def client_settings(settings: StackSettings) -> StackSettings:
    """The settings to talk to the stack with.

    Addresses not set explicitly (env or .env) follow the embedded stack's ports, so
    POSTGRES_PORT/TEMPORAL_PORT alone move everything; database URLs set explicitly to the
    stack's configured address follow the port PostgreSQL really runs on. Pointed at the
    embedded stack, fault injection follows its dev policy (on) unless ALLOW_FAULT_INJECTION
    is set.
    """
    cfg = stack_config(settings)
    explicit = settings.model_fields_set
    update: dict[str, object] = {}
    if "database_url" not in explicit:
        update["database_url"] = SecretStr(config.database_url(cfg))
    for name in ("database_url", "gateway_database_url", "carrier_database_url"):
        if name in explicit and name not in update:
            value: SecretStr = getattr(settings, name)
            followed = _follow_stack_port(value.get_secret_value(), settings, cfg)
            if followed is not None:
                update[name] = SecretStr(followed)
    if "temporal_target" not in explicit:
        update["temporal_target"] = config.temporal_target(cfg)
    ui = config.temporal_ui_url(cfg)
    if "temporal_ui_url" not in explicit and ui:
        update["temporal_ui_url"] = ui
    target = update.get("temporal_target", settings.temporal_target)
    if "allow_fault_injection" not in explicit and target == config.temporal_target(cfg):
        update["allow_fault_injection"] = True
    return settings.model_copy(update=update)


def settings_env(settings: StackSettings) -> dict[str, str]:
    """Every setting as an environment variable, so a child sees exactly what we see
    (whatever its working directory and whichever .env it would read)."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    return env


def process_env(settings: StackSettings, cfg: StackConfig) -> dict[str, str]:
    """Environment of the embedded stack's app processes: always the embedded addresses."""
    env = settings_env(client_settings(settings))
    env["DATABASE_URL"] = config.database_url(cfg)
    env["TEMPORAL_TARGET"] = config.temporal_target(cfg)
    env["PYTHONUNBUFFERED"] = "1"
    return env
