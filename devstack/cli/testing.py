"""Trying the product out on the running stack: `cli.py demo`, `chaos` and `bench`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Annotated

import typer
from rich.text import Text

from app.cli.common import TESTING, CliError, JsonOpt, err
from app.cli.render import print_json, say
from app.orders.faults import FaultProfile, FaultProfileError
from app.orders.messages import order_workflow_id
from app.platform.settings import Settings
from devstack.bench.measure import ApproveVia, BaselineShape
from devstack.cli.context import launcher
from devstack.cli.demo import play_demo, print_summary
from devstack.stack import addresses

commands = typer.Typer()


@commands.command(rich_help_panel=TESTING)
def demo(ctx: typer.Context) -> None:
    """Run three demo orders side by side and summarise them.

    A clean order (approved, completed), one cancelled after payment (refunded), and one
    under the seed fault profile (retries, any outcome).
    """
    runs = launcher(ctx).with_service(play_demo)
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


@commands.command(rich_help_panel=TESTING)
def chaos(
    ctx: typer.Context,
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
    from devstack.chaos.report import summary_lines
    from devstack.chaos.run import ChaosError, run_chaos

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
        settings = launcher(ctx).load_settings()
        summary = asyncio.run(run_chaos(settings, opts, lambda m: err.print(Text(m))))
    except ChaosError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(summary)
    else:
        for line in summary_lines(summary):
            say(line, "bold red" if line.startswith("VIOLATION") else None)
    if not summary["ok"]:
        raise typer.Exit(3)


@commands.command(rich_help_panel=TESTING)
def bench(
    ctx: typer.Context,
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
        BaselineShape | None,
        typer.Option(
            help="features (default): the order's Temporal shape with its search attributes "
            "and deadline timer, the ratio's baseline; bare: the shape alone."
        ),
    ] = None,
    approve: Annotated[
        ApproveVia | None,
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
    data_scale: Annotated[
        int | None,
        typer.Option(
            help="Instead: seed this many closed orders (10 events each, over 30 days) into "
            "a scratch database (bench_scale) and time the operator's reads, p50/p99.",
            min=1,
        ),
    ] = None,
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
    settings = addresses.client_settings(launcher(ctx).load_settings())
    progress = None if as_json else (lambda m: err.print(Text(m)))
    if data_scale is not None:
        _bench_data_scale(settings, data_scale, progress, as_json)
        return
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


def _bench_data_scale(
    settings: Settings, orders: int, progress: Callable[[str], None] | None, as_json: bool
) -> None:
    from devstack.bench.data_scale import format_data_scale, run_data_scale_sync
    from devstack.bench.measure import BenchError

    try:
        result = run_data_scale_sync(settings, orders, progress)
    except BenchError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(result)
    else:
        say(format_data_scale(result))
