"""Order commands: start-workflow, status, approve, cancel, update-address."""

from __future__ import annotations

import contextlib
import getpass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from app.cli.common import ORDERS, CliError, JsonOpt, app, out, with_service
from app.cli.render import fmt_address, print_json, render_status, say, state_text, status_dict
from app.cli.waiting import is_terminal, wait_for_order
from app.orders.models import DEMO_ADDRESS, TERMINAL_STATES

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    from app.service.idempotency import StartAnswer
    from app.service.orders import OrderService


@app.command("start-workflow", rich_help_panel=ORDERS)
def start_workflow(
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

    async def call(svc: OrderService) -> StartAnswer:
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
    say(f"  workflow {started.workflow_id}  run {started.run_id}")
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
    view = status_dict(with_service(lambda svc: svc.status(order_id)))
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
        from app.service.inputs import validate_address

        view = status_dict(await svc.status(order_id))
        address = {**(view.get("address") or {}), **changes}
        validate_address(address)  # bad input is named first, whatever the order's state
        if view["state"] in TERMINAL_STATES:
            raise CliError(f"order {order_id} is already closed ({view['state']})")
        return status_dict(await svc.update_address(order_id, address, requested_by="cli"))

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
    view = status_dict(with_service(lambda svc: svc.approve(order_id, who)))
    say(f"order {order_id} approved by {who}", "bold green")
    out.print(
        Text.assemble("  state ", state_text(view.get("state")), f"  step {view.get('step')}")
    )


@app.command(rich_help_panel=ORDERS)
def retry(order_id: str) -> None:
    """Start a FAILED order again (a new run with a payment of its own)."""
    retried = with_service(lambda svc: svc.retry_order(order_id))
    say(f"order {order_id} retried", "bold green")
    say(f"  workflow {retried.workflow_id}  run {retried.run_id}")
    say(f"  follow it: python scripts/cli.py status {order_id}")
