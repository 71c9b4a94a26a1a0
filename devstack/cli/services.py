"""The embedded stack's services (`cli.py start|stop|restart|ps|logs`), or with `--compose`
the docker compose stack's."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from app.cli.common import INSPECT, STACK, CliContext, CliError, JsonOpt, out
from app.cli.render import kv_grid, print_json, say
from devstack.cli.context import launcher
from devstack.stack import addresses, app_processes, lifecycle, rollout
from devstack.stack import compose as compose_stack
from devstack.stack.app_processes import LogGroup, endpoints
from devstack.stack.config import TEMPORAL, StackSettings
from devstack.stack.processes import tail_log

commands = typer.Typer()

ComposeOpt = Annotated[
    bool, typer.Option("--compose", help="Drive `docker compose` instead of the embedded stack.")
]
TimeoutOpt = Annotated[
    float, typer.Option(help="Seconds to wait for each service to become ready.", min=5)
]


def _print_endpoints(settings: StackSettings) -> None:
    grid = kv_grid(endpoints(settings))
    out.print(Panel(grid, title="endpoints", expand=False))


def _start(context: CliContext[StackSettings], settings: StackSettings, timeout: float) -> None:
    cfg = addresses.stack_config(settings)
    if lifecycle.is_running(settings):
        say(f"stack already running (run dir {cfg.run_dir})")
        _print_ps(settings)
        _ensure_reconciliation(context, settings)
        return
    say(f"starting the embedded stack (run dir {cfg.run_dir})")
    started = time.monotonic()
    lifecycle.start_stack(settings, lambda msg: say(f"  {msg}"), timeout=timeout)
    _ensure_reconciliation(context, settings)
    say(f"stack ready in {time.monotonic() - started:.1f}s", "bold green")
    _print_endpoints(settings)


def _ensure_reconciliation(context: CliContext[StackSettings], settings: StackSettings) -> None:
    """The reconciliation's Temporal Schedule, created or brought to the settings
    (idempotent: `start` on a running stack keeps it as it is)."""
    from app.orders.reconciliation.messages import SCHEDULE_ID
    from app.service.reconciliation import ensure_schedule

    try:
        done = context.with_service(
            lambda services: ensure_schedule(services.orders.client, services.settings),
            addresses.client_settings(settings),
        )
    except Exception as exc:  # the stack runs; say so, and how to add the schedule later
        message, _ = context.explain_error(exc)
        say(
            f"  reconciliation: schedule {SCHEDULE_ID} not created ({message}); "
            "retry: python scripts/cli.py reconcile-schedule",
            "bold red",
        )
        return
    say(f"  reconciliation: schedule {SCHEDULE_ID} {done}")


def _stop(settings: StackSettings) -> None:
    started = time.monotonic()
    for message in lifecycle.stop_stack(settings):
        say(f"  {message}")
    say(f"stack stopped in {time.monotonic() - started:.1f}s")


def _print_ps(settings: StackSettings) -> None:
    table = Table("service", "state", "pid", "address")
    for row in lifecycle.stack_status(settings):
        style = "green" if row.state == "running" else "red"
        table.add_row(
            row.service, Text(row.state, style=style), str(row.pid or "-"), row.address or "-"
        )
    out.print(table)
    deployment = rollout.deployment_status(settings)
    if deployment is not None:
        _print_deployment(deployment)


def _print_deployment(deployment: dict[str, Any]) -> None:
    """Each version of the Worker Deployment: its routing, open orders, workers here."""
    table = Table(
        "build",
        "status",
        "open orders",
        "workers here",
        title=f"worker deployment {deployment['name']}",
        title_justify="left",
    )
    for version in deployment["versions"]:
        status = version["status"].lower()
        if version["build_id"] == deployment["ramping"]:
            status += f" {deployment['ramp_percent']:g}%"
        table.add_row(
            version["build_id"],
            Text(status, style=VERSION_STYLE.get(version["status"], "")),
            str(version["open_orders"]),
            ", ".join(version["workers"]) or "-",
        )
    out.print(table)
    checkout = deployment["checkout_build"]
    if checkout != deployment["current"]:
        say(f"the checkout is build {checkout}: `python scripts/cli.py deploy` rolls to it")


VERSION_STYLE = {"CURRENT": "green", "RAMPING": "cyan", "DRAINING": "yellow"}


def _ps_json(settings: StackSettings) -> list[dict[str, Any]]:
    """The service rows; Temporal's carries the Worker Deployment (null while down)."""
    rows = [dataclasses.asdict(row) for row in lifecycle.stack_status(settings)]
    for row in rows:
        if row["service"] == TEMPORAL:
            row["deployment"] = rollout.deployment_status(settings)
    return rows


@commands.command(rich_help_panel=STACK)
def start(
    ctx: typer.Context,
    compose: ComposeOpt = False,
    timeout: TimeoutOpt = 90.0,
) -> None:
    """Start all services: PostgreSQL, Temporal + Web UI, migrations, both workers, the API."""
    if compose:
        compose_stack.compose(["up", "-d", "--build", "--wait"])
        say("compose stack is up", "bold green")
        return
    context = launcher(ctx)
    _start(context, context.load_settings(), timeout)


@commands.command(rich_help_panel=STACK)
def stop(ctx: typer.Context, compose: ComposeOpt = False) -> None:
    """Stop all services (data and workflow histories are kept)."""
    if compose:
        compose_stack.compose(["down"])
        return
    _stop(launcher(ctx).load_settings())


@commands.command(rich_help_panel=STACK)
def restart(
    ctx: typer.Context,
    compose: ComposeOpt = False,
    timeout: TimeoutOpt = 90.0,
) -> None:
    """Stop, then start all services."""
    if compose:
        compose_stack.compose(["restart"])
        return
    context = launcher(ctx)
    settings = context.load_settings()
    _stop(settings)
    _start(context, settings, timeout)


@commands.command(rich_help_panel=STACK)
def ps(ctx: typer.Context, compose: ComposeOpt = False, as_json: JsonOpt = False) -> None:
    """Show each service: state, pid and address; then each version of the Worker
    Deployment: current, ramping or draining, its open orders, the workers here that run it."""
    if compose:
        compose_stack.compose(["ps", *(["--format", "json"] if as_json else [])])
        return
    settings = launcher(ctx).load_settings()
    if as_json:
        print_json(_ps_json(settings))
        return
    _print_ps(settings)


@commands.command(rich_help_panel=INSPECT)
def logs(
    ctx: typer.Context,
    service: Annotated[
        LogGroup | None,
        typer.Option(
            help="Whose log (worker = every worker, of each build running; default app, "
            "with --compose every service)."
        ),
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.", min=0)] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    compose: Annotated[
        bool, typer.Option("--compose", help="`docker compose logs` of the compose stack.")
    ] = False,
) -> None:
    """Show a service's log from the embedded stack's run folder (or from compose)."""
    if compose:
        args = compose_stack.compose_logs_args(service, lines, follow)
        with contextlib.suppress(KeyboardInterrupt):
            compose_stack.compose(args)
        return
    service = service or "app"
    cfg = addresses.stack_config(launcher(ctx).load_settings())
    names = app_processes.log_names(cfg, service)
    paths = {name: cfg.log_path(name) for name in names}
    if not any(p.exists() for p in paths.values()):
        raise CliError(f"no log for {service} in {cfg.logs_dir} (has the stack been started?)")
    for name, path in paths.items():
        if len(paths) > 1:
            say(f"==> {name} ({path}) <==", "bold")
        text = tail_log(cfg, name, lines)
        if text:
            sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(paths, prefix=len(paths) > 1)


def _follow(paths: dict[str, Path], prefix: bool) -> None:
    """Print lines appended to the logs until interrupted (like tail -F)."""
    offsets = {name: (p.stat().st_size if p.exists() else 0) for name, p in paths.items()}
    while True:
        for name, path in paths.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[name]:  # rotated
                offsets[name] = 0
            if size == offsets[name]:
                continue
            with path.open("rb") as fh:
                fh.seek(offsets[name])
                chunk = fh.read()
            # Only whole lines; a partial last line waits for its newline.
            end = chunk.rfind(b"\n") + 1
            offsets[name] += end
            for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
                sys.stdout.write(f"{name} | {line}\n" if prefix else line + "\n")
            sys.stdout.flush()
        time.sleep(0.3)
