"""Order commands: start-workflow, status, approve, cancel, update-address."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from app.cli.common import ORDERS, CliError, JsonOpt, cli_context, out
from app.cli.render import fmt_address, print_json, render_status, say, state_text, status_dict
from app.cli.waiting import is_terminal, wait_for_order
from app.orders.messages import (
    DEFAULT_CANCEL_REASON,
    DEMO_ADDRESS,
    REVIEW_TIMEOUT_S,
    TERMINAL_STATES,
)

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    from app.platform.settings import Settings
    from app.service.errors import OrderConflict
    from app.service.idempotency import StartAnswer
    from app.service.layer import ServiceLayer
    from app.service.status import StatusReader

T = TypeVar("T")

commands = typer.Typer()

FaultProfileOpt = Annotated[
    str | None,
    typer.Option(
        help="Failure simulation for this run: off (none), seed (the default: 1/3 fail, "
        "1/3 hang) or fail=R,hang=R,lost=R,delay=S. Default: the stack's FAULT_PROFILE.",
        metavar="PROFILE",
    ),
]


@commands.command("start-workflow", rich_help_panel=ORDERS)
def start_workflow(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="Your order id, e.g. order-123.")],
    payment_id: Annotated[str, typer.Argument(help="Payment id (idempotency key), e.g. pmt-123.")],
    street: Annotated[str, typer.Option(help="Shipping street.")] = DEMO_ADDRESS["street"],
    city: Annotated[str, typer.Option(help="Shipping city.")] = DEMO_ADDRESS["city"],
    state: Annotated[str, typer.Option(help="Shipping state.")] = DEMO_ADDRESS["state"],
    zip_code: Annotated[str, typer.Option("--zip", help="Shipping ZIP code.")] = DEMO_ADDRESS[
        "zip"
    ],
    country: Annotated[str, typer.Option(help="Two-letter country code.")] = DEMO_ADDRESS[
        "country"
    ],
    fault_profile: FaultProfileOpt = None,
    review_timeout: Annotated[
        float | None, typer.Option(help="Seconds the manual review waits (default 30).", min=0.1)
    ] = None,
    approve: Annotated[
        bool, typer.Option("--approve", help="Approve right away (skips the review wait).")
    ] = False,
) -> None:
    """Start the OrderWorkflow for a new order (workflow id order-ORDER_ID)."""
    address = {"street": street, "city": city, "state": state, "zip": zip_code, "country": country}

    async def call(services: ServiceLayer) -> StartAnswer:
        started = await services.orders.start_order(
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
            await wait_for_order(services.status, order_id, lambda _: True, timeout=15.0)
            await services.orders.approve(order_id, _reviewer(None))
        return started

    cli = cli_context(ctx)
    settings = cli.target_settings()
    started = cli.with_service(call, settings)
    say(f"order {order_id} started", "bold green")
    say(f"  workflow {started.workflow_id}  run {started.run_id}")
    say(f"  {_faults_line(fault_profile, settings)}")
    if approve:
        say(f"  approved by {_reviewer(None)}")
    else:
        seconds = review_timeout or settings.review_timeout_s or REVIEW_TIMEOUT_S
        say(
            f"  once validated it waits {seconds:g} s for review: "
            f"python scripts/cli.py approve {order_id}"
        )
    say(f"  follow it: python scripts/cli.py status {order_id}")


def _faults_line(given: str | None, settings: Settings) -> str:
    """Which simulated faults the run meets: its own profile, or the stack's default."""
    if given is not None:
        return f"faults: {given} (--fault-profile)"
    profile = settings.fault_profile
    if profile.strip().lower() == "off":
        return "faults: off (FAULT_PROFILE)"
    what = ": 1/3 of external calls fail, 1/3 hang" if profile.strip().lower() == "seed" else ""
    return (
        f"faults: {profile} (FAULT_PROFILE{what}), so it may retry or fail; "
        "--fault-profile off runs an order without them"
    )


def _reviewer(value: str | None) -> str:
    if value:
        return value
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "cli"


@commands.command(rich_help_panel=ORDERS)
def status(ctx: typer.Context, order_id: str, as_json: JsonOpt = False) -> None:
    """Show an order: state, step, address, payment, attempts, recent errors, deadline."""
    view = status_dict(
        cli_context(ctx).with_service(lambda services: services.status.status(order_id))
    )
    if as_json:
        print_json(view)
        return
    out.print(render_status(view))


@commands.command(rich_help_panel=ORDERS)
def cancel(
    ctx: typer.Context,
    order_id: str,
    reason: Annotated[
        str, typer.Option(help="Why the order is cancelled.")
    ] = DEFAULT_CANCEL_REASON,
) -> None:
    """Cancel an order before dispatch (a charged payment is refunded)."""

    async def call(services: ServiceLayer) -> dict[str, Any]:
        cancelling = services.orders.cancel(order_id, reason=reason, requested_by="cli")
        await _closed_said(services.status, order_id, cancelling)
        # Closing (and any refund) follows the accepted cancel; show how it ended.
        return await wait_for_order(services.status, order_id, is_terminal, timeout=10.0)

    view = cli_context(ctx).with_service(call)
    say(f"cancel of order {order_id} accepted", "bold green")
    if is_terminal(view):
        out.print(
            Text.assemble(
                "  state ", state_text(view["state"]), f"  payment {view.get('payment_status')}"
            )
        )
    else:
        say("  the order is closing; check with: python scripts/cli.py status " + order_id)


@commands.command("update-address", rich_help_panel=ORDERS)
def update_address(
    ctx: typer.Context,
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

    async def call(services: ServiceLayer) -> dict[str, Any]:
        from app.service.inputs import validate_address

        view = status_dict(await services.status.status(order_id))
        address = {**(view.get("address") or {}), **changes}
        validate_address(address)  # bad input is named first, whatever the order's state
        if view["state"] in TERMINAL_STATES:
            raise CliError(closed_message(order_id, view))
        changed = services.orders.update_address(order_id, address, requested_by="cli")
        return status_dict(await changed)

    view = cli_context(ctx).with_service(call)
    say(f"address of order {order_id} updated", "bold green")
    say(f"  ships to {fmt_address(view.get('address'))}")


@commands.command(rich_help_panel=ORDERS)
def approve(
    ctx: typer.Context,
    order_id: str,
    reviewer: Annotated[
        str | None, typer.Option(help="Who approves (default: your user name).")
    ] = None,
) -> None:
    """Approve an order waiting in manual review, so payment can proceed."""
    who = _reviewer(reviewer)
    view = status_dict(
        cli_context(ctx).with_service(
            lambda services: _closed_said(
                services.status, order_id, services.orders.approve(order_id, who)
            )
        )
    )
    say(f"order {order_id} approved by {who}", "bold green")
    out.print(
        Text.assemble("  state ", state_text(view.get("state")), f"  step {view.get('step')}")
    )
    if view.get("step") in ("RECEIVE", "VALIDATE"):
        say("  not in review yet: the approval is kept for when it gets there")
    else:
        say("  payment and shipping follow")
    say(f"  follow it: python scripts/cli.py status {order_id}")


@commands.command(rich_help_panel=ORDERS)
def retry(ctx: typer.Context, order_id: str, fault_profile: FaultProfileOpt = None) -> None:
    """Start a FAILED order again (a new run with a payment of its own), under the failed
    run's fault profile unless --fault-profile gives another."""
    retried = cli_context(ctx).with_service(
        lambda services: services.orders.retry_order(order_id, fault_profile=fault_profile)
    )
    say(f"order {order_id} retried", "bold green")
    say(f"  workflow {retried.workflow_id}  run {retried.run_id}")
    if fault_profile is not None:
        say(f"  faults: {fault_profile} (--fault-profile)")
    say(f"  it waits for review again: python scripts/cli.py approve {order_id}")
    say(f"  follow it: python scripts/cli.py status {order_id}")


def closed_message(order_id: str, view: dict[str, Any]) -> str:
    """One line on how a closed order ended, and what can still be done about it."""
    state = view.get("state")
    text = f"order {order_id} is already closed: {state}"
    if state != "COMPLETED" and view.get("step"):
        text += f" at {view['step']}"
    if view.get("reason"):
        text += f" ({view['reason']})"
    if state == "FAILED":
        text += f"; start it again with: python scripts/cli.py retry {order_id}"
    return text


async def _closed_said(reader: StatusReader, order_id: str, request: Awaitable[T]) -> T:
    """The request's answer; refused because the order has closed, how it ended (the
    service only knows it is closed)."""
    from app.service.errors import OrderConflict

    try:
        return await request
    except OrderConflict as refused:
        raise await _closed_refusal(reader, order_id, refused) from None


async def _closed_refusal(reader: StatusReader, order_id: str, refused: OrderConflict) -> Exception:
    if "already closed" not in refused.message:
        return refused
    try:
        view = status_dict(await reader.status(order_id))
    except Exception:  # the refusal stands as the service said it
        return refused
    if view.get("state") not in TERMINAL_STATES:
        return refused
    return CliError(closed_message(order_id, view))
