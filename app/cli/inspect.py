"""Inspection commands: list, describe, history, events, stats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.panel import Panel

from app.cli.common import INSPECT, JsonOpt, cli_context, out
from app.cli.render import fmt_time, kv_grid, print_json, rows_table, say, state_text
from app.orders.messages import OrderState, PaymentStatus, Step

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    from app.service.listing import OrderFilter


commands = typer.Typer()


@commands.command("list", rich_help_panel=INSPECT)
def list_orders(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option(help="How many orders, newest first.", min=1, max=1000)
    ] = 10,
    state: Annotated[
        OrderState | None, typer.Option(help="Only orders in this state.", case_sensitive=False)
    ] = None,
    step: Annotated[
        Step | None,
        typer.Option(
            help="Only orders at this step (MANUAL_REVIEW: the review queue, open orders "
            "waiting for a decision, oldest deadline first).",
            case_sensitive=False,
        ),
    ] = None,
    payment_status: Annotated[
        PaymentStatus | None,
        typer.Option(help="Only orders whose payment is in this status.", case_sensitive=False),
    ] = None,
    created_after: Annotated[
        str | None,
        typer.Option(
            help="Only orders created after this ISO 8601 time with an offset.", metavar="TIME"
        ),
    ] = None,
    created_before: Annotated[
        str | None,
        typer.Option(
            help="Only orders created before this ISO 8601 time with an offset.", metavar="TIME"
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            help="Only orders closed for this reason (e.g. customer_request, deadline_exceeded)."
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(
            help="A Temporal visibility query instead, e.g. \"OrderState='FAILED'\" "
            "(search attributes OrderState, OrderStep, CustomerId, OrderAmountCents).",
        ),
    ] = None,
    cursor: Annotated[
        str | None,
        typer.Option(help="The next page: the cursor the last page printed (same filters again)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List recent orders, newest first: from the database, or from Temporal with --query."""
    filters = _order_filter(state, step, payment_status, created_after, created_before, reason)
    _check_page_options(filters, query, cursor)
    page = cli_context(ctx).with_service(
        lambda services: (
            services.inspection.search_orders(query, limit=limit, cursor=cursor)
            if query is not None
            else services.inspection.list_orders(filters, limit=limit, cursor=cursor)
        )
    )
    if as_json:
        print_json(page)
        return
    _print_orders(page)


def _order_filter(
    state: OrderState | None,
    step: Step | None,
    payment_status: PaymentStatus | None,
    created_after: str | None,
    created_before: str | None,
    reason: str | None,
) -> OrderFilter:
    from app.service.errors import InvalidInput
    from app.service.listing import OrderFilter

    try:
        return OrderFilter(
            state=state,
            step=step,
            payment_status=payment_status,
            created_after=_aware("--created-after", created_after),
            created_before=_aware("--created-before", created_before),
            reason=reason or None,
        )
    except InvalidInput as exc:  # the service's words, in the CLI's option names
        raise typer.BadParameter(str(exc).replace("created_", "--created-")) from None


def _check_page_options(filters: OrderFilter, query: str | None, cursor: str | None) -> None:
    """--query replaces the filters; --cursor must be one `list` printed (for that query)."""
    from app.service.errors import InvalidInput
    from app.service.listing import decode_cursor, decode_query_cursor

    if query is not None:
        given = [f"--{name.replace('_', '-')}" for name, v in vars(filters).items() if v]
        if given:
            raise typer.BadParameter(
                f"--query takes the place of {', '.join(given)}; give one or the other"
            )
    if cursor is not None:
        try:
            if query is not None:
                decode_query_cursor(query, cursor)
            else:
                decode_cursor(cursor, filters.review_queue)
        except InvalidInput:
            raise typer.BadParameter(
                "--cursor is not one that list printed (with --query: for that query)"
            ) from None


def _print_orders(page: dict[str, Any]) -> None:
    rows = [
        (
            o["order_id"],
            o.get("workflow_id") or "-",
            state_text(o["state"]),
            o.get("step") or "-",
            o.get("payment_id") or "-",
            o.get("reason") or "-",
            fmt_time(o.get("created_at")),
            fmt_time(o.get("updated_at")),
        )
        for o in page["items"]
    ]
    columns = ("order", "workflow", "state", "step", "payment", "reason", "created", "updated")
    out.print(rows_table(columns, rows))
    total = page["total"]
    say(
        f"{len(page['items'])} of {total} orders"
        if total is not None
        else f"{len(page['items'])} orders"
    )
    if page.get("next_cursor"):
        # The cursor carries the position only: the filters must be given again.
        say(f"more: the same command with --cursor {page['next_cursor']}")


def _aware(option: str, value: str | None) -> datetime | None:
    """An ISO 8601 time with an offset (naive times would depend on the operator's zone)."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise typer.BadParameter(
            f"{option} must be an ISO 8601 date and time with an offset, "
            "e.g. 2026-12-03T09:00:00+00:00"
        )
    return at


@commands.command(rich_help_panel=INSPECT)
def describe(ctx: typer.Context, workflow_id: str, as_json: JsonOpt = False) -> None:
    """Describe a workflow execution (e.g. order-order-123): status, queue, pending work."""
    cli = cli_context(ctx)
    settings = cli.target_settings()
    info = cli.with_service(lambda services: services.inspection.describe(workflow_id), settings)
    ui = (
        f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{info['workflow_id']}/{info['run_id']}/history"
    )
    info["ui_url"] = ui
    if as_json:
        print_json(info)
        return
    rows: list[tuple[str, Any]] = [
        ("type", info["type"]),
        ("run", info["run_id"]),
        ("status", state_text(info["status"])),
        ("task queue", info["task_queue"]),
        ("started", fmt_time(info["start_time"])),
        ("closed", fmt_time(info["close_time"])),
        ("history", f"{info['history_length']} events"),
        ("Temporal UI", ui),
    ]
    parts: list[Any] = [kv_grid(rows)]
    activities = [
        (a["activity"], str(a["state"]), str(a["attempt"]), a["last_failure"] or "-")
        for a in info["pending_activities"]
    ]
    if activities:
        parts.append(
            rows_table(("pending activity", "state", "attempt", "last failure"), activities)
        )
    children = [(c["workflow_id"], c["run_id"]) for c in info["pending_children"]]
    if children:
        parts.append(rows_table(("child workflow", "run"), children))
    out.print(Panel(Group(*parts), title=f"workflow {info['workflow_id']}", expand=False))


@commands.command(rich_help_panel=INSPECT)
def history(ctx: typer.Context, workflow_id: str, as_json: JsonOpt = False) -> None:
    """Show a workflow's execution history (e.g. order-order-123)."""
    events = cli_context(ctx).with_service(
        lambda services: services.inspection.history(workflow_id)
    )
    columns = ("#", "time", "event", "detail")
    _print_rows(events, as_json, columns, _history_row, f"history of {workflow_id}")


def _history_row(e: dict[str, Any]) -> tuple[str, ...]:
    return str(e["event_id"]), fmt_time(e["time"]), e["type"], e["detail"] or ""


@commands.command(rich_help_panel=INSPECT)
def events(ctx: typer.Context, order_id: str, as_json: JsonOpt = False) -> None:
    """Show an order's audit trail (the events table)."""
    trail = cli_context(ctx).with_service(lambda services: services.inspection.events(order_id))
    columns = ("#", "time", "event", "payload")
    _print_rows(trail, as_json, columns, _event_row, f"events of order {order_id}")


def _event_row(e: dict[str, Any]) -> tuple[str, ...]:
    payload = json.dumps(e["payload"], separators=(",", ":")) if e["payload"] else ""
    return str(e["id"]), fmt_time(e["ts"]), e["type"], payload


def _print_rows(
    items: list[dict[str, Any]],
    as_json: bool,
    columns: tuple[str, ...],
    row: Callable[[dict[str, Any]], tuple[str, ...]],
    title: str,
) -> None:
    """The items as JSON, or as a table of one row each."""
    if as_json:
        print_json(items)
        return
    out.print(rows_table(columns, [row(item) for item in items], title))


@commands.command(rich_help_panel=INSPECT)
def stats(
    ctx: typer.Context,
    window: Annotated[
        str,
        typer.Option(
            "--window", help="1h, 24h, 30d or all: orders created, closed or attempted since"
        ),
    ] = "all",
    as_json: JsonOpt = False,
) -> None:
    """Order statistics from the database: execution time p50/p95/p99, retries and error
    rate per step, outcomes per state, over a window (all time by default)."""
    from app.cli.stats_view import load_stats, render_stats
    from app.service.stats import WINDOWS

    if window not in WINDOWS:
        raise typer.BadParameter(f"must be one of {', '.join(WINDOWS)}", param_hint="--window")
    cli = cli_context(ctx)
    settings = cli.target_settings()
    try:
        data = asyncio.run(load_stats(settings, window))
    except Exception as exc:
        failure = cli.db_failure(exc, settings)
        if failure is None:
            raise
        raise failure from exc
    if as_json:
        print_json(data)
        return
    out.print(render_stats(data))
