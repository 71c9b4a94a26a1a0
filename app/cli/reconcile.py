"""Reconciliation commands: `reconcile` (run it now, print the report) and
`reconcile-schedule` (create or update its Temporal Schedule; what `cli.py start` and
compose's setup job run)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from app.cli.common import INSPECT, JsonOpt, cli_context, out
from app.cli.render import fmt_time, print_json, say

if TYPE_CHECKING:
    from app.service.layer import ServiceLayer

# `reconcile` exits with this when the run left findings for a person (0: none left;
# 1: the run could not be made, like every other command's operational error).
EXIT_UNRESOLVED = 3


commands = typer.Typer()


@commands.command(rich_help_panel=INSPECT)
def reconcile(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    no_heal: Annotated[
        bool, typer.Option("--no-heal", help="Only report: heal nothing (no refund, no cancel).")
    ] = False,
    order: Annotated[
        list[str] | None,
        typer.Option(help="Only this order (repeat for more); default every recent order."),
    ] = None,
    lookback: Annotated[
        float | None,
        typer.Option(
            help="Seconds back the run looks (default RECONCILE_LOOKBACK_S, a day).",
            min=60,
            max=90 * 86400,
        ),
    ] = None,
) -> None:
    """Run the reconciliation now: compare our orders and payments with the gateway's and
    carrier's exports, heal the safe findings (refunds, booking cancellations), print the
    report. Exit 0 when nothing is left unresolved, 3 when findings need a person."""

    async def call(services: ServiceLayer) -> dict[str, Any]:
        from app.service.reconciliation import reconcile_now

        return await reconcile_now(
            services.orders.client,
            services.settings,
            heal=not no_heal,
            order_ids=order,
            lookback_s=lookback,
        )

    report = cli_context(ctx).with_service(call)
    if as_json:
        print_json(report)
    else:
        out.print(render_report(report))
    if report["unresolved"]:
        raise typer.Exit(EXIT_UNRESOLVED)


@commands.command("reconcile-schedule", rich_help_panel=INSPECT)
def reconcile_schedule(ctx: typer.Context) -> None:
    """Create the reconciliation's Temporal Schedule, or bring it to the settings
    (RECONCILE_INTERVAL_S); idempotent. `cli.py start` and compose's setup job run it."""

    async def call(services: ServiceLayer) -> str:
        from app.orders.reconciliation.messages import SCHEDULE_ID
        from app.service.reconciliation import ensure_schedule

        done = await ensure_schedule(services.orders.client, services.settings)
        return f"schedule {SCHEDULE_ID} {done}"

    say(cli_context(ctx).with_service(call))


def render_report(report: dict[str, Any]) -> Group:
    findings = Table("kind", "order", "reference", "outcome", "detail", title="findings")
    for f in report["findings"]:
        outcome = (
            Text("healed", style="green") if f["healed"] else Text("unresolved", style="bold red")
        )
        findings.add_row(f["kind"], f["order_id"], f["reference"], outcome, f["detail"])
    unresolved = report["unresolved"]
    summary = Text(
        f"{report['healed']} healed, {unresolved} unresolved, {report['settling']} settling "
        f"(orders still compensating); checked {report['checked']['orders']} orders, "
        f"{report['checked']['charges']} charges, {report['checked']['bookings']} bookings "
        f"since {fmt_time(report['since'])}",
        style="bold red" if unresolved else "bold green",
    )
    parts: list[Any] = [Text(f"reconciliation run {report['workflow_id']}")]
    if report["findings"]:
        parts.append(findings)
    if report["findings_total"] > len(report["findings"]):
        parts.append(
            Text(f"({report['findings_total']} findings; the first {len(report['findings'])})")
        )
    parts.append(summary)
    return Group(*parts)
