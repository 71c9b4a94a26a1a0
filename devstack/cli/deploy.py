"""`cli.py deploy`: roll the embedded stack's workers to the code in the checkout, with
orders in flight finishing on the build they started on (devstack/stack/rollout.py)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from app.cli.common import STACK, CliError
from app.cli.render import say
from devstack.cli.context import launcher
from devstack.stack import lifecycle, rollout

commands = typer.Typer()


@commands.command(rich_help_panel=STACK)
def deploy(
    ctx: typer.Context,
    ramp: Annotated[
        float | None,
        typer.Option(
            help="Send this % of new orders to the new build and stop there; a later "
            "`deploy` makes it current.",
            min=0.01,
            max=100,
        ),
    ] = None,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback",
            help="Make the previous version current again (during a ramp: end the ramp).",
        ),
    ] = False,
    drain_timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for the old build's open orders to finish.", min=0),
    ] = rollout.DEFAULT_DRAIN_TIMEOUT,
) -> None:
    """Run the checkout's build beside the running workers, make it current, and stop the
    old build's workers once its open orders have finished (each order stays on its build)."""
    if ramp is not None and rollback:
        raise CliError("--ramp and --rollback do not go together")
    settings = launcher(ctx).load_settings()
    if settings.worker_versioning and not lifecycle.is_running(settings):
        raise CliError("the stack is not running: python scripts/cli.py start")
    started = time.monotonic()
    rollout.deploy(
        settings,
        lambda message: say(f"  {message}"),
        ramp=ramp,
        rollback=rollback,
        drain_timeout=drain_timeout,
    )
    say(f"deploy done in {time.monotonic() - started:.1f}s", "bold green")
