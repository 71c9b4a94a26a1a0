"""How long the Temporal namespace keeps closed workflow histories (`cli.py retention`,
TEMPORAL_NAMESPACE_RETENTION at `cli.py start`), through the `temporal` CLI.

Callers pass the settings that point at the stack (devstack.stack.addresses.client_settings).
"""

from __future__ import annotations

import json
import os
import re

from app.platform.settings import Settings
from devstack.stack.config import temporal_binary
from devstack.tools import ToolError, run_tool

_RETENTION_RE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNIT_HOURS = {"d": 24.0, "h": 1.0, "m": 1 / 60}


def retention_hours(value: str) -> int:
    """`30d`, `72h` or `90m` as whole hours (what `temporal ... --retention` is given)."""
    match = _RETENTION_RE.match(value)
    if not match:
        raise ToolError(f"retention {value!r} must look like 30d, 72h or 1440m")
    hours = int(match.group(1)) * _UNIT_HOURS[match.group(2)]
    if hours < 24 or hours != int(hours):
        # The server refuses less than a day (namespace.minRetention).
        raise ToolError(f"retention {value!r} must be a whole number of hours, at least 1 day")
    return int(hours)


def _temporal_cli(target: Settings, *args: str) -> str:
    argv = [
        str(temporal_binary()),
        *args,
        "--address",
        target.temporal_target,
        "--namespace",
        target.temporal_namespace,
    ]
    for flag, path in (
        ("--tls-ca-path", target.temporal_tls_ca),
        ("--tls-cert-path", target.temporal_tls_cert),
        ("--tls-key-path", target.temporal_tls_key),
    ):
        if path is not None:
            argv += [flag, str(path)]
    if target.temporal_tls_server_name:
        argv += ["--tls-server-name", target.temporal_tls_server_name]
    # The CLI also reads TEMPORAL_* variables (some are ours, with other meanings).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    try:
        return run_tool(argv, env, timeout=30).stdout
    except ToolError as err:
        raise ToolError(f"temporal {' '.join(args[:3])}: {err}") from None


def apply_retention(settings: Settings, value: str) -> str:
    """Set how long the namespace keeps closed workflow histories."""
    hours = retention_hours(value)
    _temporal_cli(settings, "operator", "namespace", "update", "--retention", f"{hours}h")
    namespace = settings.temporal_namespace
    return f"retention: namespace {namespace} keeps closed workflows for {value.strip()} ({hours}h)"


def current_retention(settings: Settings) -> str:
    """The namespace's retention as the server reports it (e.g. `24h0m0s`)."""
    text = _temporal_cli(settings, "operator", "namespace", "describe", "-o", "json")
    try:
        data = json.loads(text)
        ttl = data["config"]["workflowExecutionRetentionTtl"]
    except (ValueError, KeyError, TypeError):
        raise ToolError(
            "could not read the retention from `temporal operator namespace describe`"
        ) from None
    seconds = float(str(ttl).rstrip("s"))
    return f"{seconds / 86400:g}d" if seconds % 86400 == 0 else f"{seconds / 3600:g}h"
