"""The embedded stack's data: `cli.py backup`, `restore`, and `retention` (how long
Temporal keeps closed workflow histories)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from app.cli.common import STACK, CliError, JsonOpt, out
from app.cli.render import print_json, say
from devstack.cli.context import launcher
from devstack.stack import lifecycle

commands = typer.Typer()


@commands.command(rich_help_panel=STACK)
def backup(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder to write (default RUN_DIR/backups/backup-<time>)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up the embedded stack: Temporal's state (online SQLite copy), then the database,
    then the gateway's and carrier's ledgers (their simulators' databases)."""
    from devstack.stack.backup import BackupError, ledger_summary
    from devstack.stack.backup import backup as make_backup

    try:
        manifest = make_backup(launcher(ctx).load_settings(), output)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(manifest)
        return
    rows = manifest["database"]["rows"] or {}
    say(f"backup written to {manifest['path']} in {manifest['seconds']:.1f}s", "bold green")
    say(f"  database: {rows.get('orders', 0)} orders, {rows.get('events', 0)} events")
    say(f"  temporal: {manifest['temporal'].get('executions')} workflow executions")
    for name, ledger in manifest["ledgers"].items():
        say(f"  {name} ledger: {ledger_summary(ledger['rows'])}")
    say(f"  restore into a stopped stack with: python scripts/cli.py restore {manifest['path']}")


@commands.command(rich_help_panel=STACK)
def restore(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="A folder written by `cli.py backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace this run dir's existing state.")
    ] = False,
) -> None:
    """Restore a backup into the (stopped) embedded stack of RUN_DIR; then `cli.py start`."""
    from devstack.stack.backup import BackupError, start_command
    from devstack.stack.backup import restore as restore_backup

    settings = launcher(ctx).load_settings()
    try:
        messages = restore_backup(settings, folder, force=force)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    for message in messages:
        say(f"  {message}")
    taken = lifecycle.taken_ports(settings)
    if taken:
        ports = ", ".join(f"{port} ({setting})" for port, setting in taken)
        say(
            f"note: in use now (another stack?): {ports}; stop what holds them before you "
            "start, or add those settings, with free ports, to the line below",
            "yellow",
        )
    say("restored; start the stack with:", "bold green")
    # The last line is the command itself, never folded, so it can be run as printed.
    out.print(Text(start_command(settings)), soft_wrap=True)


@commands.command(rich_help_panel=STACK)
def retention(
    ctx: typer.Context,
    value: Annotated[
        str | None, typer.Argument(help="New retention, e.g. 30d or 72h (omit to show it).")
    ] = None,
) -> None:
    """Show or set how long Temporal keeps closed workflow histories (the namespace's
    retention; TEMPORAL_NAMESPACE_RETENTION applies it at every `start`)."""
    from devstack.stack.retention import apply_retention, current_retention
    from devstack.tools import ToolError

    target = launcher(ctx).target_settings()
    try:
        if value is not None:
            say(apply_retention(target, value), "bold green")
        say(f"retention: {current_retention(target)}")
    except ToolError as exc:
        raise CliError(str(exc)) from None
