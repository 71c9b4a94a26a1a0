"""The dev launcher, `python scripts/cli.py`: the operator CLI (app/cli) pointed at the
embedded stack, plus the stack's own commands.

    context.py   the context every command runs in: the launcher's settings, the embedded
                 stack as the target, its errors explained, `--compose` on operator commands
    services.py  start, stop, restart, ps, logs
    deploy.py    deploy: roll the workers to the checkout's build (or back)
    testing.py   demo (demo.py plays it), chaos, bench
    data.py      backup, restore, retention
    temporal.py  `temporal`: the Temporal CLI pointed at the stack
"""

from __future__ import annotations

import typer

from app.cli.common import build_app, exit_now, run_app
from app.cli.main import COMMAND_GROUPS
from devstack.cli import data, deploy, services, temporal, testing
from devstack.cli.context import launcher_context, with_compose_flag
from devstack.stack.app_processes import endpoints
from devstack.stack.config import StackSettings

__all__ = ["build_launcher", "endpoints", "main"]


def build_launcher() -> typer.Typer:
    """The operator's commands (each with `--compose`), then the stack's, as `--help`
    lists them."""
    return build_app(
        [
            *with_compose_flag(COMMAND_GROUPS),
            temporal.commands,
            services.commands,
            deploy.commands,
            testing.commands,
            data.commands,
        ]
    )


def main(settings_type: type[StackSettings] = StackSettings) -> None:
    """`python scripts/cli.py`; `settings_type` is what the launcher reads its settings
    with (a test gives one with other defaults)."""
    exit_now(run_app(build_launcher(), launcher_context(settings_type)))
