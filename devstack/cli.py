"""The dev launcher's commands on top of the operator CLI (app/cli): the embedded stack (start, stop,
restart, ps, logs), the demo, chaos, bench, backup, restore and retention."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import secrets
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from app.cli.common import (
    INSPECT,
    STACK,
    TESTING,
    CliError,
    JsonOpt,
    add_explainer,
    app,
    err,
    explain_error,
    load_settings,
    out,
    set_target,
    with_service,
)
from app.cli.main import main as operator_main
from app.cli.render import kv_grid, print_json, say
from app.orders.faults import FaultProfile, FaultProfileError
from app.orders.messages import order_workflow_id
from app.platform.settings import Settings
from devstack import temporal_cli as temporal_cli  # registers `temporal`
from devstack.demo import play_demo, print_summary
from devstack.stack import addresses, app_processes, lifecycle
from devstack.stack import compose as compose_stack
from devstack.stack.config import StackError
from devstack.stack.processes import tail_log

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    pass


ComposeOpt = Annotated[
    bool, typer.Option("--compose", help="Drive `docker compose` instead of the embedded stack.")
]
TimeoutOpt = Annotated[
    float, typer.Option(help="Seconds to wait for each service to become ready.", min=5)
]


def endpoints(settings: Settings) -> list[tuple[str, str]]:
    """What a person connects to (the start banner, quick-start): the stack's addresses,
    with the operator console the API serves after the API's own."""
    rows = list(app_processes.endpoints(settings))
    console = ("Console", f"{app_processes.api_url(settings)}/console")
    after = next((i + 1 for i, (name, _) in enumerate(rows) if name.startswith("API")), 0)
    while after < len(rows) and rows[after][0].startswith("API"):
        after += 1
    return [*rows[:after], console, *rows[after:]]


def _print_endpoints(settings: Settings) -> None:
    grid = kv_grid(endpoints(settings))
    out.print(Panel(grid, title="endpoints", expand=False))


def _start(settings: Settings, timeout: float) -> None:
    cfg = addresses.stack_config(settings)
    if lifecycle.is_running(settings):
        say(f"stack already running (run dir {cfg.run_dir})")
        _print_ps(settings)
        _ensure_reconciliation(settings)
        return
    say(f"starting the embedded stack (run dir {cfg.run_dir})")
    started = time.monotonic()
    lifecycle.start_stack(settings, lambda msg: say(f"  {msg}"), timeout=timeout)
    _ensure_reconciliation(settings)
    say(f"stack ready in {time.monotonic() - started:.1f}s", "bold green")
    _print_endpoints(settings)


def _ensure_reconciliation(settings: Settings) -> None:
    """The reconciliation's Temporal Schedule, created or brought to the settings
    (idempotent: `start` on a running stack keeps it as it is)."""
    from app.orders.reconciliation.messages import SCHEDULE_ID
    from app.service.reconciliation import ensure_schedule

    try:
        done = with_service(
            lambda svc: ensure_schedule(svc.client, svc.settings),
            addresses.client_settings(settings),
        )
    except Exception as exc:  # the stack runs; say so, and how to add the schedule later
        message, _ = explain_error(exc)
        say(
            f"  reconciliation: schedule {SCHEDULE_ID} not created ({message}); "
            "retry: python scripts/cli.py reconcile-schedule",
            "bold red",
        )
        return
    say(f"  reconciliation: schedule {SCHEDULE_ID} {done}")


def _stop(settings: Settings) -> None:
    started = time.monotonic()
    for message in lifecycle.stop_stack(settings):
        say(f"  {message}")
    say(f"stack stopped in {time.monotonic() - started:.1f}s")


def _print_ps(settings: Settings) -> None:
    table = Table("service", "state", "pid", "address")
    for row in lifecycle.stack_status(settings):
        style = "green" if row.state == "running" else "red"
        table.add_row(
            row.service, Text(row.state, style=style), str(row.pid or "-"), row.address or "-"
        )
    out.print(table)


@app.command(rich_help_panel=STACK)
def start(
    compose: ComposeOpt = False,
    timeout: TimeoutOpt = 90.0,
) -> None:
    """Start all services: PostgreSQL, Temporal + Web UI, migrations, both workers, the API."""
    if compose:
        compose_stack.compose(["up", "-d", "--build", "--wait"])
        say("compose stack is up", "bold green")
        return
    _start(load_settings(), timeout)


@app.command(rich_help_panel=STACK)
def stop(compose: ComposeOpt = False) -> None:
    """Stop all services (data and workflow histories are kept)."""
    if compose:
        compose_stack.compose(["down"])
        return
    _stop(load_settings())


@app.command(rich_help_panel=STACK)
def restart(
    compose: ComposeOpt = False,
    timeout: TimeoutOpt = 90.0,
) -> None:
    """Stop, then start all services."""
    if compose:
        compose_stack.compose(["restart"])
        return
    settings = load_settings()
    _stop(settings)
    _start(settings, timeout)


@app.command(rich_help_panel=STACK)
def ps(compose: ComposeOpt = False, as_json: JsonOpt = False) -> None:
    """Show each service: state, pid and address."""
    if compose:
        compose_stack.compose(["ps", *(["--format", "json"] if as_json else [])])
        return
    settings = load_settings()
    if as_json:
        print_json([dataclasses.asdict(row) for row in lifecycle.stack_status(settings)])
        return
    _print_ps(settings)


class LogService(StrEnum):
    app = "app"
    worker = "worker"
    worker_orders = "worker-orders"
    worker_shipping = "worker-shipping"
    temporal = "temporal"
    postgres = "postgres"


@app.command(rich_help_panel=INSPECT)
def logs(
    service: Annotated[
        LogService | None,
        typer.Option(
            help="Whose log (worker = both workers; default app, with --compose every service)."
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
        args = compose_stack.compose_logs_args(service.value if service else None, lines, follow)
        with contextlib.suppress(KeyboardInterrupt):
            compose_stack.compose(args)
        return
    service = service or LogService.app
    cfg = addresses.stack_config(load_settings())
    names = app_processes.LOG_GROUPS[service.value]
    paths = {name: cfg.log_path(name) for name in names}
    if not any(p.exists() for p in paths.values()):
        raise CliError(
            f"no log for {service.value} in {cfg.logs_dir} (has the stack been started?)"
        )
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


@app.command(rich_help_panel=TESTING)
def demo() -> None:
    """Run three demo orders side by side and summarise them.

    A clean order (approved, completed), one cancelled after payment (refunded), and one
    under the seed fault profile (retries, any outcome).
    """
    runs = with_service(play_demo)
    print_summary(runs)
    failed = [r for r in runs if not r.ok]
    if failed:
        run = failed[0]
        raise CliError(
            f"demo: {run.scenario} ({run.order_id}) ended {run.view.get('state')} "
            f"with payment {run.view.get('payment_status')}, expected {run.expect.lower()}"
        )
    wid = order_workflow_id(runs[-1].order_id)
    say(f"inspect: python scripts/cli.py history {wid}   or the Temporal UI")


@app.command(rich_help_panel=TESTING)
def chaos(
    orders: Annotated[int, typer.Option(help="How many orders.", min=1, max=5000)] = 100,
    duration: Annotated[
        float, typer.Option(help="Seconds of fault injection (orders start in the first half).")
    ] = 60.0,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the fault plan and timing (default: random).")
    ] = None,
    kill_interval: Annotated[
        float, typer.Option(help="Mean seconds between worker SIGKILLs (0 = none).", min=0)
    ] = 5.0,
    max_worker_kills: Annotated[
        int | None, typer.Option(help="At most this many worker kills.", min=0)
    ] = None,
    restart_temporal: Annotated[
        bool, typer.Option(help="Restart the Temporal dev server once.")
    ] = True,
    restart_postgres: Annotated[bool, typer.Option(help="Restart PostgreSQL once.")] = True,
    hard: Annotated[
        bool, typer.Option("--hard", help="SIGKILL Temporal and PostgreSQL instead of stopping.")
    ] = False,
    order_deadline: Annotated[
        float | None,
        typer.Option(help="Per-order deadline in seconds (default ORDER_DEADLINE_S).", min=5),
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds past the deadline to wait for orders to close.", min=0)
    ] = 30.0,
    settle_wait: Annotated[
        float,
        typer.Option(
            help="Seconds more for orders still compensating (closed, a refund retrying); "
            "those still at it are then reported as settling, not judged.",
            min=0,
        ),
    ] = 120.0,
    adversarial: Annotated[
        bool,
        typer.Option(
            "--adversarial",
            help="Mix in reused payment ids, retry-like and dotted ids, free orders, "
            "cancels (while closing too), retries of FAILED orders; reconcile at the end.",
        ),
    ] = False,
    id_prefix: Annotated[
        str | None, typer.Option(help="Order ids PREFIX-NNNN (default: unique per run).")
    ] = None,
    fault_profile: Annotated[
        str,
        typer.Option(
            help="Fault profile of every order: seed, off, or fail=R,hang=R,lost=R,delay=S."
        ),
    ] = "seed",
    as_json: JsonOpt = False,
) -> None:
    """Orders under seed faults while workers die and Temporal/PostgreSQL restart; checks.

    Runs against the embedded stack of RUN_DIR and exits 3 when an invariant is broken
    (double charge, charge without refund, DB vs Temporal mismatch, our payments vs the
    gateway's ledger, two carrier bookings, a key two orders share, missing event, order
    not closed in time; with --adversarial also the reconciliation's unresolved findings).
    See docs/operations.md, "Chaos runs".
    """
    from devstack.chaos.faults import ChaosOptions
    from devstack.chaos.run import ChaosError, run_chaos, summary_lines

    opts = ChaosOptions(
        orders=orders,
        duration_s=duration,
        seed=seed if seed is not None else secrets.randbelow(1_000_000),
        kill_interval_s=kill_interval,
        max_worker_kills=max_worker_kills,
        restart_temporal=restart_temporal,
        restart_postgres=restart_postgres,
        hard_restarts=hard,
        order_deadline_s=order_deadline,
        grace_s=grace,
        settle_wait_s=settle_wait,
        adversarial=adversarial,
        id_prefix=id_prefix,
        fault_profile=fault_profile,
    )
    try:
        FaultProfile.parse(fault_profile)
    except FaultProfileError as exc:
        raise CliError(f"--fault-profile: {exc}") from None
    try:
        summary = asyncio.run(run_chaos(load_settings(), opts, lambda m: err.print(Text(m))))
    except ChaosError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(summary)
    else:
        for line in summary_lines(summary):
            say(line, "bold red" if line.startswith("VIOLATION") else None)
    if not summary["ok"]:
        raise typer.Exit(3)


class BaselineShapeOpt(StrEnum):
    bare = "bare"
    features = "features"


class ApproveOpt(StrEnum):
    signal = "signal"
    api = "api"


@app.command(rich_help_panel=TESTING)
def bench(
    orders: Annotated[
        int | None,
        typer.Option(help="Orders through the REST API (default 300; 3000 with --soak)."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Orders in flight at once (default 8; 4 with --soak)."),
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Also run bare-Temporal workflows of the same shape.")
    ] = True,
    baseline_shape: Annotated[
        BaselineShapeOpt | None,
        typer.Option(
            help="bare (default): the order's Temporal shape, the ratio's baseline; features: "
            "with the order's search attributes and deadline timer too."
        ),
    ] = None,
    approve: Annotated[
        ApproveOpt | None,
        typer.Option(
            help="How each order is approved: the approve_order signal (default) or the "
            "REST API (an Update)."
        ),
    ] = None,
    status_seconds: Annotated[
        float | None,
        typer.Option(help="Length of the status-read phase (default 5; 0 skips it).", min=0),
    ] = None,
    soak: Annotated[
        bool,
        typer.Option(
            help="A long run in four quarters instead: is throughput, latency and memory "
            "flat, and how fast do the databases grow?"
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Orders/s and latency of the running stack against a bare-Temporal baseline.

    Uses the `off` fault profile and approves each order at once. Figures and how to read
    them: docs/performance.md.
    """
    from devstack.bench.measure import BenchError
    from devstack.bench.run import format_report, run_bench_sync
    from devstack.bench.soak import format_soak, run_soak_sync

    for name, value in (("--orders", orders), ("--concurrency", concurrency)):
        if value is not None and value < 1:
            raise typer.BadParameter(f"{name} must be at least 1")
    # Only what was given goes to run_bench(), whose defaults stand otherwise.
    given = {
        name: value
        for name, value in (
            ("baseline_shape", baseline_shape),
            ("approve", approve),
            ("status_seconds", status_seconds),
        )
        if value is not None
    }
    if soak and given:
        # The soak measures the orders alone, approved by signal; say so rather than ignore.
        names = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        verb = "does" if len(given) == 1 else "do"
        raise typer.BadParameter(f"{names} {verb} not apply to --soak")
    settings = addresses.client_settings(load_settings())
    progress = None if as_json else (lambda m: err.print(Text(m)))
    try:
        if soak:
            result = run_soak_sync(
                settings,
                orders=orders or 3000,
                concurrency=concurrency or 4,
                progress=progress,
            )
        else:
            result = run_bench_sync(
                settings,
                orders=orders or 300,
                concurrency=concurrency or 8,
                progress=progress,
                baseline=baseline,
                **given,
            )
    except BenchError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(result)
    else:
        say(format_soak(result) if soak else format_report(result))


@app.command(rich_help_panel=STACK)
def backup(
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
        manifest = make_backup(load_settings(), output)
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


@app.command(rich_help_panel=STACK)
def restore(
    folder: Annotated[Path, typer.Argument(help="A folder written by `cli.py backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace this run dir's existing state.")
    ] = False,
) -> None:
    """Restore a backup into the (stopped) embedded stack of RUN_DIR; then `cli.py start`."""
    from devstack.stack.backup import BackupError, start_command
    from devstack.stack.backup import restore as restore_backup

    settings = load_settings()
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


@app.command(rich_help_panel=STACK)
def retention(
    value: Annotated[
        str | None, typer.Argument(help="New retention, e.g. 30d or 72h (omit to show it).")
    ] = None,
) -> None:
    """Show or set how long Temporal keeps closed workflow histories (the namespace's
    retention; TEMPORAL_NAMESPACE_RETENTION applies it at every `start`)."""
    from devstack.stack.retention import apply_retention, current_retention
    from devstack.tools import ToolError

    target = addresses.client_settings(load_settings())
    try:
        if value is not None:
            say(apply_retention(target, value), "bold green")
        say(f"retention: {current_retention(target)}")
    except ToolError as exc:
        raise CliError(str(exc)) from None


def _explain_stack_error(exc: BaseException) -> tuple[str, str] | None:
    if not isinstance(exc, StackError):
        return None
    # Only this run's lines: the log is appended to across starts.
    lines = exc.log_tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("=== ")]
    tail = "\n".join(lines[starts[-1] + 1 :] if starts else lines).strip()
    if not tail:
        return exc.message, ""
    where = f" ({exc.log_path})" if exc.log_path else ""
    return exc.message, f"last log lines{where}:\n{tail}"


ComposeTargetOpt = Annotated[
    bool,
    typer.Option(
        "--compose",
        help="Talk to the docker compose stack (its published ports and POSTGRES_PASSWORD) "
        "instead of the embedded stack.",
    ),
]


def add_compose_option() -> None:
    """Give each operator command (app/cli: list, status, approve...) a `--compose` flag
    that points it at the compose stack instead of the embedded one. The commands stay as
    app/cli defines them, whatever options they have."""
    for info in app.registered_commands:
        original = info.callback
        if original is None or not original.__module__.startswith("app.cli."):
            continue
        signature = inspect.signature(original, eval_str=True)
        if "compose" in signature.parameters:
            continue
        info.callback = _with_compose_flag(original, signature)


def _with_compose_flag(
    original: Callable[..., Any], signature: inspect.Signature
) -> Callable[..., Any]:
    @wraps(original)
    def command(*args: Any, compose: bool = False, **kwargs: Any) -> Any:
        if compose:
            set_target(
                compose_stack.compose_client_settings, "python scripts/cli.py start --compose"
            )
        return original(*args, **kwargs)

    flag = inspect.Parameter(
        "compose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=ComposeTargetOpt
    )
    params = [*signature.parameters.values(), flag]
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def main() -> None:
    """`python scripts/cli.py`: the operator CLI pointed at the embedded stack (addresses
    follow its ports; fault injection on, as the dev stack allows), plus its commands;
    `--compose` on an operator command points it at the compose stack instead."""
    set_target(addresses.client_settings)
    add_explainer(_explain_stack_error)
    add_compose_option()
    operator_main()
