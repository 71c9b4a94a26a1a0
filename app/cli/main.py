"""Command-line interface: `python scripts/cli.py COMMAND` (installed as `orders COMMAND`).

Stack commands drive the embedded stack (devstack.services) or, with `--compose`, docker
compose. Order commands call app.service.orders.OrderService directly, the same implementation the
REST API uses. Exit codes: 0 success, 1 operational error (one line on stderr, never a
traceback), 2 usage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from app.orders.faults import FaultProfile, FaultProfileError
from app.orders.models import OrderState, Step, is_settled, order_workflow_id
from app.platform.settings import Settings
from devstack import services as stack_services
from devstack import stack
from devstack.stack import StackError

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    from app.service.orders import OrderService

T = TypeVar("T")

DEFAULT_ADDRESS = {
    "street": "123 Main St",
    "city": "Test City",
    "state": "TS",
    "zip": "12345",
    "country": "US",
}
STEPS = tuple(step.value for step in Step)
STATE_STYLE = {
    "COMPLETED": "bold green",
    "CANCELLED": "bold yellow",
    "FAILED": "bold red",
}


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by programs and grep: don't fold ids at 80 columns. Rich still
    # drops colour by itself when the stream is not a terminal.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=stderr)


out = _console()
err = _console(stderr=True)


class CliError(Exception):
    """An operational failure with a one-line message (and optional detail lines)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


app = typer.Typer(
    name="cli.py",
    help="Order fulfillment on Temporal: run the stack, operate orders, inspect workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

STACK = "Stack"
ORDERS = "Orders"
INSPECT = "Monitoring & debugging"
TESTING = "Testing"

ComposeOpt = Annotated[
    bool, typer.Option("--compose", help="Drive `docker compose` instead of the embedded stack.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TimeoutOpt = Annotated[
    float, typer.Option(help="Seconds to wait for each service to become ready.", min=5)
]


# ---------------------------------------------------------------------------------------------
# Plumbing: settings, the service, errors
# ---------------------------------------------------------------------------------------------


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "setting"
        raise CliError(f"invalid setting {name}: {first['msg']}") from None


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__


def _db_address(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(settings.database_url_plain)
    except Exception:
        return "DATABASE_URL"
    return f"{url.host}:{url.port or 5432}"


def _db_failure(exc: BaseException, settings: Settings) -> CliError | None:
    """A one-line explanation for database failures; None for anything else."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, OSError | sa_exc.OperationalError | sa_exc.InterfaceError):
        return CliError(
            f"PostgreSQL is not reachable at {_db_address(settings)} ({_first_line(exc)}); "
            "is the stack running? (python scripts/cli.py start)"
        )
    if isinstance(exc, sa_exc.SQLAlchemyError):
        orig = getattr(exc, "orig", None) or exc
        hint = " (run `python -m app.platform.migrate`)" if "does not exist" in str(orig) else ""
        return CliError(f"database error: {_first_line(orig)}{hint}")
    return None


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[OrderService]:
    """An OrderService on a fresh Temporal client and a small DB pool (closed on exit)."""
    from app.platform.db import engine_from_settings, session_factory
    from app.platform.temporal import connect_client
    from app.service.orders import OrderService

    try:
        client = await connect_client(settings)
    except RuntimeError as exc:  # the SDK reports connection failures as RuntimeError
        raise CliError(
            f"Temporal is not reachable at {settings.temporal_target}; "
            "is the stack running? (python scripts/cli.py start)",
        ) from exc
    engine = engine_from_settings(settings, pool_size=5)
    try:
        yield OrderService(client, session_factory(engine), settings)
    except Exception as exc:
        failure = _db_failure(exc, settings)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        with contextlib.suppress(Exception):
            await engine.dispose()


def with_service(
    call: Callable[[OrderService], Awaitable[T]], settings: Settings | None = None
) -> T:
    """Run one async operation against the stack the settings point at."""
    settings = settings or stack_services.client_settings(_settings())

    async def run() -> T:
        async with open_service(settings) as svc:
            return await call(svc)

    return asyncio.run(run())


def report_error(exc: BaseException) -> int:
    """Print an operational error (one line, then any detail lines); the exit code."""
    message, detail = explain_error(exc)
    err.print(Text(f"error: {message}", style="bold red"))
    if detail:
        err.print(Text(detail.rstrip()))
    return 1


def explain_error(exc: BaseException) -> tuple[str, str]:
    """(one-line message, detail) for an operational error."""
    from app.service.orders import ServiceError

    if isinstance(exc, CliError):
        return exc.message, exc.detail
    if isinstance(exc, ServiceError):
        return exc.message, ""
    if isinstance(exc, StackError):
        # Only this run's lines: the log is appended to across starts.
        lines = exc.log_tail.splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("=== ")]
        tail = "\n".join(lines[starts[-1] + 1 :] if starts else lines).strip()
        if not tail:
            return exc.message, ""
        where = f" ({exc.log_path})" if exc.log_path else ""
        return exc.message, f"last log lines{where}:\n{tail}"
    from temporalio.service import RPCError

    if isinstance(exc, RPCError):
        return f"Temporal error: {_first_line(exc)}", ""
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the stack", ""
    return f"unexpected {type(exc).__name__}: {_first_line(exc)}", ""


def _run_app() -> int:
    try:
        app()  # standalone mode: Click turns usage errors into SystemExit(2)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        return report_error(exc)
    return 0


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown once output is flushed.

    The Temporal SDK's Rust threads can abort a finishing interpreter (SIGABRT,
    "PyGILState_Release ... finalizing", temporalio/sdk-python#300) after the command
    itself succeeded; nothing is left to clean up at this point.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main() -> None:
    """Console entry point: usage errors exit 2 (Click), operational errors exit 1."""
    exit_now(_run_app())


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def say(message: str, style: str | None = None) -> None:
    out.print(Text(message, style=style or ""))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def state_text(state: str | None) -> Text:
    return Text(state or "-", style=STATE_STYLE.get(state or "", "bold cyan"))


def fmt_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def fmt_address(address: dict[str, Any] | None) -> str:
    if not address:
        return "-"
    a = address
    return (
        f"{a.get('street')}, {a.get('city')}, {a.get('state')} {a.get('zip')}, {a.get('country')}"
    )


def fmt_attempts(attempts: dict[str, int]) -> str:
    ordered = sorted(attempts.items(), key=lambda kv: STEPS.index(kv[0]) if kv[0] in STEPS else 9)
    return " ".join(f"{step}x{n}" for step, n in ordered) or "-"


def _kv_grid(rows: list[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


def render_status(view: dict[str, Any]) -> Panel:
    amount = view.get("amount_cents")
    rows: list[tuple[str, Any]] = [
        ("workflow", f"{view.get('workflow_id')}  run {view.get('run_id') or '-'}"),
        ("state", state_text(view.get("state"))),
        ("step", view.get("step") or "-"),
        ("address", fmt_address(view.get("address"))),
        (
            "payment",
            f"{view.get('payment_id')}  {view.get('payment_status')}"
            + (f"  ${amount / 100:.2f}" if isinstance(amount, int) else ""),
        ),
        ("attempts", fmt_attempts(view.get("attempts") or {})),
    ]
    if view.get("approved_by") or view.get("approved"):
        rows.append(("approved by", view.get("approved_by") or "yes"))
    if view.get("review_deadline_at") and view.get("step") == "MANUAL_REVIEW":
        rows.append(("review until", fmt_time(view["review_deadline_at"])))
    if view.get("cancel_requested"):
        rows.append(("cancel", "requested"))
    if view.get("reason"):
        rows.append(("reason", view["reason"]))
    if view.get("tracking_number"):
        rows.append(("tracking", view["tracking_number"]))
    rows += [
        ("created", fmt_time(view.get("created_at"))),
        ("updated", fmt_time(view.get("updated_at"))),
        ("deadline", fmt_time(view.get("deadline_at"))),
    ]
    parts: list[Any] = [_kv_grid(rows)]
    pending = view.get("pending_activities") or []
    if pending:
        table = Table("pending activity", "attempt", "last failure", title="in flight")
        for act in pending:
            table.add_row(act["activity"], str(act["attempt"]), act.get("last_failure") or "-")
        parts.append(table)
    errors = view.get("errors") or []
    if errors:
        parts.append(errors_table(errors))
    return Panel(Group(*parts), title=f"order {view.get('order_id')}", expand=False)


def errors_table(errors: list[dict[str, Any]], limit: int = 10) -> Table:
    table = Table("step", "attempt", "kind", "message", "at", title="recent errors")
    for e in errors[:limit]:
        table.add_row(
            str(e.get("step")),
            str(e.get("attempt")),
            str(e.get("kind") or "error"),
            str(e.get("message")),
            fmt_time(e.get("at")),
        )
    return table


def _status_dict(view: Any) -> dict[str, Any]:
    """Service answers are dicts (status) or OrderStatus dataclasses (updates)."""
    if dataclasses.is_dataclass(view) and not isinstance(view, type):
        return dataclasses.asdict(view)
    return dict(view)


# ---------------------------------------------------------------------------------------------
# Stack commands
# ---------------------------------------------------------------------------------------------


def _print_endpoints(settings: Settings) -> None:
    grid = _kv_grid(list(stack_services.endpoints(settings)))
    out.print(Panel(grid, title="endpoints", expand=False))


def _start(settings: Settings, timeout: float) -> None:
    cfg = stack_services.stack_config(settings)
    if stack_services.is_running(settings):
        say(f"stack already running (run dir {cfg.run_dir})")
        _print_ps(settings)
        return
    say(f"starting the embedded stack (run dir {cfg.run_dir})")
    started = time.monotonic()
    stack_services.start_stack(settings, lambda msg: say(f"  {msg}"), timeout=timeout)
    say(f"stack ready in {time.monotonic() - started:.1f}s", "bold green")
    _print_endpoints(settings)


def _stop(settings: Settings) -> None:
    started = time.monotonic()
    for message in stack_services.stop_stack(settings):
        say(f"  {message}")
    say(f"stack stopped in {time.monotonic() - started:.1f}s")


def _print_ps(settings: Settings) -> None:
    table = Table("service", "state", "pid", "address")
    for row in stack_services.stack_status(settings):
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
        stack_services.compose(["up", "-d", "--build", "--wait"])
        say("compose stack is up", "bold green")
        return
    _start(_settings(), timeout)


@app.command(rich_help_panel=STACK)
def stop(compose: ComposeOpt = False) -> None:
    """Stop all services (data and workflow histories are kept)."""
    if compose:
        stack_services.compose(["down"])
        return
    _stop(_settings())


@app.command(rich_help_panel=STACK)
def restart(
    compose: ComposeOpt = False,
    timeout: TimeoutOpt = 90.0,
) -> None:
    """Stop, then start all services."""
    if compose:
        stack_services.compose(["restart"])
        return
    settings = _settings()
    _stop(settings)
    _start(settings, timeout)


@app.command(rich_help_panel=STACK)
def ps(compose: ComposeOpt = False, as_json: JsonOpt = False) -> None:
    """Show each service: state, pid and address."""
    if compose:
        stack_services.compose(["ps", *(["--format", "json"] if as_json else [])])
        return
    settings = _settings()
    if as_json:
        print_json([dataclasses.asdict(row) for row in stack_services.stack_status(settings)])
        return
    _print_ps(settings)


# ---------------------------------------------------------------------------------------------
# Order commands
# ---------------------------------------------------------------------------------------------


@app.command("start-workflow", rich_help_panel=ORDERS)
def start_workflow(
    order_id: Annotated[str, typer.Argument(help="Your order id, e.g. order-123.")],
    payment_id: Annotated[str, typer.Argument(help="Payment id (idempotency key), e.g. pmt-123.")],
    street: Annotated[str, typer.Option(help="Shipping street.")] = DEFAULT_ADDRESS["street"],
    city: Annotated[str, typer.Option(help="Shipping city.")] = DEFAULT_ADDRESS["city"],
    state: Annotated[str, typer.Option(help="Shipping state.")] = DEFAULT_ADDRESS["state"],
    zip_code: Annotated[str, typer.Option("--zip", help="Shipping ZIP code.")] = DEFAULT_ADDRESS[
        "zip"
    ],
    country: Annotated[str, typer.Option(help="Two-letter country code.")] = DEFAULT_ADDRESS[
        "country"
    ],
    fault_profile: Annotated[
        str | None,
        typer.Option(help="Failure simulation for this order: seed, off or fail=R,hang=R,delay=S."),
    ] = None,
    review_timeout: Annotated[
        float | None, typer.Option(help="Seconds the manual review waits (default 30).", min=0.1)
    ] = None,
    approve: Annotated[
        bool, typer.Option("--approve", help="Approve right away (skips the review wait).")
    ] = False,
) -> None:
    """Start the OrderWorkflow for a new order (workflow id order-ORDER_ID)."""
    address = {"street": street, "city": city, "state": state, "zip": zip_code, "country": country}

    async def call(svc: OrderService) -> dict[str, Any]:
        started = await svc.start_order(
            order_id,
            payment_id,
            address,
            fault_profile=fault_profile,
            review_timeout_s=review_timeout,
        )
        if approve:
            # An update handled in the workflow's first activation (before run() has its
            # input) fails that task; approve once it answers a status query. The approval
            # is kept until the review step.
            await wait_for_order(svc, order_id, lambda _: True, timeout=15.0)
            await svc.approve(order_id, _reviewer(None))
        return started

    started = with_service(call)
    say(f"order {order_id} started", "bold green")
    say(f"  workflow {started['workflow_id']}  run {started['run_id']}")
    if approve:
        say(f"  approved by {_reviewer(None)}")
    else:
        say(f"  waiting for manual review: python scripts/cli.py approve {order_id}")
    say(f"  follow it: python scripts/cli.py status {order_id}")


def _reviewer(value: str | None) -> str:
    if value:
        return value
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "cli"


@app.command(rich_help_panel=ORDERS)
def status(order_id: str, as_json: JsonOpt = False) -> None:
    """Show an order: state, step, address, payment, attempts, recent errors, deadline."""
    view = with_service(lambda svc: svc.status(order_id))
    if as_json:
        print_json(view)
        return
    out.print(render_status(view))


@app.command(rich_help_panel=ORDERS)
def cancel(
    order_id: str,
    reason: Annotated[str, typer.Option(help="Why the order is cancelled.")] = "customer_request",
) -> None:
    """Cancel an order before dispatch (a charged payment is refunded)."""

    async def call(svc: OrderService) -> dict[str, Any]:
        await svc.cancel(order_id, reason=reason, requested_by="cli")
        # Closing (and any refund) follows the accepted cancel; show how it ended.
        return await wait_for_order(svc, order_id, is_terminal, timeout=10.0)

    view = with_service(call)
    say(f"cancel of order {order_id} accepted", "bold green")
    if is_terminal(view):
        out.print(
            Text.assemble(
                "  state ", state_text(view["state"]), f"  payment {view.get('payment_status')}"
            )
        )
    else:
        say("  the order is closing; check with: python scripts/cli.py status " + order_id)


@app.command("update-address", rich_help_panel=ORDERS)
def update_address(
    order_id: str,
    street: Annotated[str | None, typer.Option(help="New street.")] = None,
    city: Annotated[str | None, typer.Option(help="New city.")] = None,
    state: Annotated[str | None, typer.Option(help="New state.")] = None,
    zip_code: Annotated[str | None, typer.Option("--zip", help="New ZIP code.")] = None,
    country: Annotated[str | None, typer.Option(help="New two-letter country code.")] = None,
) -> None:
    """Change the shipping address before dispatch; fields not given stay as they are."""
    given = {"street": street, "city": city, "state": state, "zip": zip_code, "country": country}
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        raise typer.BadParameter("give at least one of --street --city --state --zip --country")

    async def call(svc: OrderService) -> dict[str, Any]:
        current = (await svc.status(order_id)).get("address") or {}
        address = {**current, **changes}
        return _status_dict(await svc.update_address(order_id, address, requested_by="cli"))

    view = with_service(call)
    say(f"address of order {order_id} updated", "bold green")
    say(f"  ships to {fmt_address(view.get('address'))}")


@app.command(rich_help_panel=ORDERS)
def approve(
    order_id: str,
    reviewer: Annotated[
        str | None, typer.Option(help="Who approves (default: your user name).")
    ] = None,
) -> None:
    """Approve an order waiting in manual review, so payment can proceed."""
    who = _reviewer(reviewer)
    view = _status_dict(with_service(lambda svc: svc.approve(order_id, who)))
    say(f"order {order_id} approved by {who}", "bold green")
    out.print(
        Text.assemble("  state ", state_text(view.get("state")), f"  step {view.get('step')}")
    )


@app.command("list", rich_help_panel=INSPECT)
def list_orders(
    limit: Annotated[
        int, typer.Option(help="How many orders, newest first.", min=1, max=1000)
    ] = 10,
    state: Annotated[
        OrderState | None, typer.Option(help="Only orders in this state.", case_sensitive=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List recent orders."""
    page = with_service(
        lambda svc: svc.list_orders(state=state.value if state else None, limit=limit)
    )
    if as_json:
        print_json(page)
        return
    table = Table("order", "workflow", "state", "step", "payment", "reason", "created", "updated")
    for o in page["items"]:
        table.add_row(
            o["order_id"],
            o.get("workflow_id") or "-",
            state_text(o["state"]),
            o.get("step") or "-",
            o.get("payment_id") or "-",
            o.get("reason") or "-",
            fmt_time(o.get("created_at")),
            fmt_time(o.get("updated_at")),
        )
    out.print(table)
    say(f"{len(page['items'])} of {page['total']} orders")


@app.command(rich_help_panel=INSPECT)
def describe(workflow_id: str, as_json: JsonOpt = False) -> None:
    """Describe a workflow execution (e.g. order-order-123): status, queue, pending work."""
    settings = stack_services.client_settings(_settings())
    info = with_service(lambda svc: svc.describe(workflow_id), settings)
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
    parts: list[Any] = [_kv_grid(rows)]
    if info["pending_activities"]:
        table = Table("pending activity", "state", "attempt", "last failure")
        for a in info["pending_activities"]:
            table.add_row(
                a["activity"], str(a["state"]), str(a["attempt"]), a["last_failure"] or "-"
            )
        parts.append(table)
    if info["pending_children"]:
        table = Table("child workflow", "run")
        for c in info["pending_children"]:
            table.add_row(c["workflow_id"], c["run_id"])
        parts.append(table)
    out.print(Panel(Group(*parts), title=f"workflow {info['workflow_id']}", expand=False))


@app.command(rich_help_panel=INSPECT)
def history(workflow_id: str, as_json: JsonOpt = False) -> None:
    """Show a workflow's execution history (e.g. order-order-123)."""
    events = with_service(lambda svc: svc.history(workflow_id))
    if as_json:
        print_json(events)
        return
    table = Table("#", "time", "event", "detail", title=f"history of {workflow_id}")
    for e in events:
        table.add_row(str(e["event_id"]), fmt_time(e["time"]), e["type"], e["detail"] or "")
    out.print(table)


@app.command(rich_help_panel=INSPECT)
def events(order_id: str, as_json: JsonOpt = False) -> None:
    """Show an order's audit trail (the events table)."""
    rows = with_service(lambda svc: svc.events(order_id))
    if as_json:
        print_json(rows)
        return
    table = Table("#", "time", "event", "payload", title=f"events of order {order_id}")
    for e in rows:
        payload = json.dumps(e["payload"], separators=(",", ":")) if e["payload"] else ""
        table.add_row(str(e["id"]), fmt_time(e["ts"]), e["type"], payload)
    out.print(table)


@app.command(rich_help_panel=INSPECT)
def stats(as_json: JsonOpt = False) -> None:
    """Order statistics from the database: execution time p50/p95/p99, retries and error
    rate per step, outcomes per state."""
    from app.cli.stats_view import load_stats, render_stats

    settings = stack_services.client_settings(_settings())
    try:
        data = asyncio.run(load_stats(settings))
    except Exception as exc:
        failure = _db_failure(exc, settings)
        if failure is None:
            raise
        raise failure from exc
    if as_json:
        print_json(data)
        return
    out.print(render_stats(data))


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
        LogService, typer.Option(help="Whose log (worker = both workers).")
    ] = LogService.app,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.", min=0)] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Show a service's log from the embedded stack's run folder."""
    cfg = stack_services.stack_config(_settings())
    names = stack_services.LOG_GROUPS[service.value]
    paths = {name: cfg.log_path(name) for name in names}
    if not any(p.exists() for p in paths.values()):
        raise CliError(
            f"no log for {service.value} in {cfg.logs_dir} (has the stack been started?)"
        )
    for name, path in paths.items():
        if len(paths) > 1:
            say(f"==> {name} ({path}) <==", "bold")
        text = stack.tail_log(cfg, name, lines)
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


# ---------------------------------------------------------------------------------------------
# Waiting on orders (also used by scripts/test-workflow.py)
# ---------------------------------------------------------------------------------------------


def is_terminal(view: dict[str, Any]) -> bool:
    """Closed and compensated (a refund follows the close): the service's `settled`."""
    return is_settled(view)


async def wait_for_order(
    svc: OrderService,
    order_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 0.2,
) -> dict[str, Any]:
    """Poll the order's status until `done(view)` or `timeout`; return the last view."""
    from app.service.orders import Unavailable

    deadline = time.monotonic() + timeout
    seen: tuple[Any, ...] | None = None
    view: dict[str, Any] = {}
    while True:
        try:
            view = await svc.status(order_id)
        except Unavailable:
            # A workflow answers queries only after its first task; moments after the start
            # it may not yet.
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(interval)
            continue
        key = (view.get("state"), view.get("step"))
        if on_change is not None and key != seen:
            seen = key
            on_change(view)
        if done(view) or time.monotonic() >= deadline:
            return view
        await asyncio.sleep(interval)


def seconds_left(view: dict[str, Any]) -> float:
    deadline = view.get("deadline_at")
    if not deadline:
        return 0.0
    return (datetime.fromisoformat(deadline) - datetime.now().astimezone()).total_seconds()


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DemoRun:
    scenario: str
    order_id: str
    expect: str
    view: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        state = self.view.get("state")
        if self.expect == "COMPLETED":
            return state == "COMPLETED"
        if self.expect == "REFUNDED":
            return state == "CANCELLED" and self.view.get("payment_status") == "refunded"
        return True  # seed faults: whatever happened is the point


def _progress_of(view: dict[str, Any]) -> int:
    if is_terminal(view):
        return len(STEPS)
    step = view.get("step")
    return STEPS.index(step) if step in STEPS else 0


async def _demo(svc: OrderService) -> list[DemoRun]:
    from app.service.orders import OrderConflict

    tag = datetime.now().strftime("%H%M%S") + secrets.token_hex(2)
    runs = [
        DemoRun("clean order", f"demo-{tag}-clean", "COMPLETED"),
        DemoRun("cancel after payment", f"demo-{tag}-cancel", "REFUNDED"),
        DemoRun("seed faults (retries)", f"demo-{tag}-faults", "ANY"),
    ]
    profiles = ["off", "delay=1", "seed"]
    # Bound every wait by the order deadline, plus time for compensation to finish.
    limit = svc.settings.order_deadline_s + 15.0
    columns = (
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description:<24}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out) as progress:

        async def play(run: DemoRun, profile: str) -> None:
            task = progress.add_task(run.scenario, total=len(STEPS), status="starting")
            started = time.monotonic()
            shown = [""]

            def on_change(view: dict[str, Any]) -> None:
                label = f"{view['state']} {view.get('step') or ''}".strip()
                if label == shown[0]:
                    return
                shown[0] = label
                progress.update(task, completed=_progress_of(view), status=label)
                progress.console.print(
                    Text(f"{run.scenario:<24} {run.order_id:<28} {label}"), soft_wrap=True
                )

            def wait(done: Callable[[dict[str, Any]], bool]) -> Awaitable[dict[str, Any]]:
                remaining = max(limit - (time.monotonic() - started), 1.0)
                return wait_for_order(svc, run.order_id, done, remaining, on_change)

            await svc.start_order(
                run.order_id, f"pmt-{run.order_id}", dict(DEFAULT_ADDRESS), fault_profile=profile
            )
            # Approve once the order waits for review, as a reviewer would.
            view = await wait(lambda v: v.get("step") == "MANUAL_REVIEW" or is_terminal(v))
            if not is_terminal(view):
                try:
                    await svc.approve(run.order_id, "demo")
                    run.notes.append("approved")
                except OrderConflict as refused:
                    run.notes.append(f"approval refused: {refused.message}")
            if run.expect == "REFUNDED":
                view = await wait(lambda v: v.get("state") == "PAID" or is_terminal(v))
                if view.get("state") == "PAID":
                    try:
                        await svc.cancel(
                            run.order_id, reason="customer_request", requested_by="demo"
                        )
                        run.notes.append("cancelled after payment")
                    except OrderConflict as refused:
                        run.notes.append(f"cancel refused: {refused.message}")
            run.view = await wait(is_terminal)
            run.seconds = time.monotonic() - started
            if not is_terminal(run.view):
                run.notes.append("still closing when the demo stopped waiting")
            progress.update(task, completed=len(STEPS), status=run.view.get("state", "?"))

        await asyncio.gather(*(play(r, p) for r, p in zip(runs, profiles, strict=True)))
    return runs


def _demo_summary(runs: list[DemoRun]) -> None:
    table = Table(
        "scenario",
        "order",
        "state",
        "reason",
        "payment",
        "attempts",
        "errors",
        "took",
        "notes",
        title="demo summary",
    )
    for run in runs:
        v = run.view
        table.add_row(
            run.scenario,
            run.order_id,
            state_text(v.get("state")),
            v.get("reason") or "-",
            str(v.get("payment_status") or "-"),
            fmt_attempts(v.get("attempts") or {}),
            str(len(v.get("errors") or [])),
            f"{run.seconds:.1f}s",
            "; ".join(run.notes) or "-",
        )
    out.print(table)
    faults = runs[-1].view
    if faults.get("errors"):
        out.print(errors_table(faults["errors"]))


@app.command(rich_help_panel=TESTING)
def demo() -> None:
    """Run three demo orders side by side and summarise them.

    A clean order (approved, completed), one cancelled after payment (refunded), and one
    under the seed fault profile (retries, any outcome).
    """
    runs = with_service(_demo)
    _demo_summary(runs)
    failed = [r for r in runs if not r.ok]
    if failed:
        run = failed[0]
        raise CliError(
            f"demo: {run.scenario} ({run.order_id}) ended {run.view.get('state')} "
            f"with payment {run.view.get('payment_status')}, expected {run.expect.lower()}"
        )
    wid = order_workflow_id(runs[-1].order_id)
    say(f"inspect: python scripts/cli.py history {wid}   or the Temporal UI")


# ---------------------------------------------------------------------------------------------
# chaos, backup, restore, retention (logic in app/chaos.py and app/backup.py)
# ---------------------------------------------------------------------------------------------


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
    gateway's ledger, two carrier bookings, missing event, order not closed in time). See docs/operations.md, "Chaos runs".
    """
    from devstack.chaos import ChaosError, ChaosOptions, run_chaos, summary_lines

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
        id_prefix=id_prefix,
        fault_profile=fault_profile,
    )
    try:
        FaultProfile.parse(fault_profile)
    except FaultProfileError as exc:
        raise CliError(f"--fault-profile: {exc}") from None
    try:
        summary = asyncio.run(run_chaos(_settings(), opts, lambda m: err.print(Text(m))))
    except ChaosError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(summary)
    else:
        for line in summary_lines(summary):
            say(line, "bold red" if line.startswith("VIOLATION") else None)
    if not summary["ok"]:
        raise typer.Exit(3)


@app.command(rich_help_panel=TESTING)
def bench(
    orders: Annotated[int, typer.Option(help="Orders through the REST API.", min=1)] = 300,
    concurrency: Annotated[int, typer.Option(help="Orders in flight at once.", min=1)] = 8,
    baseline: Annotated[
        bool, typer.Option(help="Also run bare-Temporal workflows of the same shape.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Orders/s and latency of the running stack against a bare-Temporal baseline.

    Uses the `off` fault profile and approves each order at once. Figures and how to read
    them: docs/performance.md.
    """
    from devstack.bench import BenchError, format_report, run_bench_sync

    settings = stack_services.client_settings(_settings())
    progress = None if as_json else (lambda m: err.print(Text(m)))
    try:
        result = run_bench_sync(
            settings,
            orders=orders,
            concurrency=concurrency,
            progress=progress,
            baseline=baseline,
        )
    except BenchError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(result)
    else:
        say(format_report(result))


@app.command(rich_help_panel=STACK)
def backup(
    output: Annotated[
        Path | None,
        typer.Option(help="Folder to write (default RUN_DIR/backups/backup-<time>)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up the embedded stack: Temporal's state (online SQLite copy), then the database."""
    from devstack.backup import BackupError
    from devstack.backup import backup as make_backup

    try:
        manifest = make_backup(_settings(), output)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        print_json(manifest)
        return
    rows = manifest["database"]["rows"] or {}
    say(f"backup written to {manifest['path']} in {manifest['seconds']:.1f}s", "bold green")
    say(f"  database: {rows.get('orders', 0)} orders, {rows.get('events', 0)} events")
    say(f"  temporal: {manifest['temporal'].get('executions')} workflow executions")
    say(f"  restore into a stopped stack with: python scripts/cli.py restore {manifest['path']}")


@app.command(rich_help_panel=STACK)
def restore(
    folder: Annotated[Path, typer.Argument(help="A folder written by `cli.py backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace this run dir's existing state.")
    ] = False,
) -> None:
    """Restore a backup into the (stopped) embedded stack of RUN_DIR; then `cli.py start`."""
    from devstack.backup import BackupError
    from devstack.backup import restore as restore_backup

    try:
        messages = restore_backup(_settings(), folder, force=force)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    for message in messages:
        say(f"  {message}")
    say("restored; start the stack with: python scripts/cli.py start", "bold green")


@app.command(rich_help_panel=STACK)
def retention(
    value: Annotated[
        str | None, typer.Argument(help="New retention, e.g. 30d or 72h (omit to show it).")
    ] = None,
) -> None:
    """Show or set how long Temporal keeps closed workflow histories (the namespace's
    retention; TEMPORAL_NAMESPACE_RETENTION applies it at every `start`)."""
    from devstack.retention import apply_retention, current_retention
    from devstack.tools import ToolError

    target = stack_services.client_settings(_settings())
    try:
        if value is not None:
            say(apply_retention(target, value), "bold green")
        say(f"retention: {current_retention(target)}")
    except ToolError as exc:
        raise CliError(str(exc)) from None


if __name__ == "__main__":
    main()
