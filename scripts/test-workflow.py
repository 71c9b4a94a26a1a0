#!/usr/bin/env python3
"""The guide's scenario runner: `python scripts/test-workflow.py` against a RUNNING stack.

Scenarios (each on its own orders, all run side by side): happy path, cancel in review,
cancel after payment (refund), address update, review timeout, parallel orders. Orders use
the `off` fault profile unless told otherwise, so a failure means a broken rule, not bad
luck. Prints a report table; exits 1 when a scenario failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import runpy
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":
    # Same interpreter rules as scripts/cli.py (re-run with .venv/bin/python when needed).
    runpy.run_path(str(Path(__file__).with_name("cli.py")))["ensure_project_python"]()

from rich.table import Table
from rich.text import Text

from app.cli.common import exit_now, open_service, out, report_error
from app.cli.waiting import is_terminal, wait_for_order
from app.orders.messages import DEMO_ADDRESS
from devstack.stack.addresses import client_settings
from devstack.stack.config import StackSettings

if TYPE_CHECKING:
    from app.service.layer import ServiceLayer

SCENARIOS = (
    "happy-path",
    "cancel",
    "cancel-after-payment",
    "address-update",
    "review-timeout",
    "parallel",
)


@dataclass
class Options:
    fault_profile: str
    review_timeout: float
    parallel: int
    tag: str


@dataclass
class Outcome:
    scenario: str
    passed: bool
    detail: str
    seconds: float
    orders: list[str]


class Check(AssertionError):
    """A scenario expectation that did not hold."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Check(message)


def log(scenario: str, message: str) -> None:
    out.print(Text(f"{scenario:<22} {message}"), soft_wrap=True)


async def start(services: ServiceLayer, order_id: str, opts: Options, **kwargs: Any) -> None:
    address = kwargs.pop("address", dict(DEMO_ADDRESS))
    profile = kwargs.pop("fault_profile", opts.fault_profile)
    await services.orders.start_order(
        order_id, f"pmt-{order_id}", address, fault_profile=profile, **kwargs
    )


async def until_review(services: ServiceLayer, order_id: str) -> dict[str, Any]:
    view = await wait_for_order(
        services.status,
        order_id,
        lambda v: v.get("step") == "MANUAL_REVIEW" or is_terminal(v),
        30.0,
    )
    expect(view.get("step") == "MANUAL_REVIEW", f"{order_id} never reached review: {view['state']}")
    return view


async def until_closed(
    services: ServiceLayer, order_id: str, timeout: float = 75.0
) -> dict[str, Any]:
    view = await wait_for_order(services.status, order_id, is_terminal, timeout)
    expect(is_terminal(view), f"{order_id} still {view.get('state')} after {timeout:.0f}s")
    return view


async def start_to_review(
    services: ServiceLayer, order_id: str, opts: Options, **kwargs: Any
) -> None:
    await start(services, order_id, opts, **kwargs)
    await until_review(services, order_id)


async def approve_to_close(services: ServiceLayer, order_id: str) -> dict[str, Any]:
    await services.orders.approve(order_id, "test-workflow")
    return await until_closed(services, order_id)


async def cancel_to_close(services: ServiceLayer, order_id: str) -> dict[str, Any]:
    await services.orders.cancel(order_id, reason="customer_request", requested_by="test-workflow")
    return await until_closed(services, order_id)


def expect_state(view: dict[str, Any], state: str, payment: str) -> None:
    got = (view.get("state"), view.get("payment_status"))
    expect(
        got == (state, payment),
        f"{view['order_id']}: expected {state}/payment {payment}, got {got[0]}/payment {got[1]}"
        + (f" ({view['reason']})" if view.get("reason") else ""),
    )


# --- scenarios -------------------------------------------------------------------------


async def happy_path(services: ServiceLayer, opts: Options) -> tuple[str, list[str]]:
    from app.service.errors import OrderConflict

    oid = f"twf-{opts.tag}-happy"
    await start_to_review(services, oid, opts)
    view = await approve_to_close(services, oid)
    expect_state(view, "COMPLETED", "charged")
    expect(bool(view.get("tracking_number")), "completed order has no tracking number")
    try:
        await start(services, oid, opts)
        raise Check("a second start of the same order was accepted")
    except OrderConflict:
        pass
    return f"COMPLETED, tracking {view['tracking_number']}; duplicate start refused", [oid]


async def cancel(services: ServiceLayer, opts: Options) -> tuple[str, list[str]]:
    oid = f"twf-{opts.tag}-cancel"
    await start_to_review(services, oid, opts)
    view = await cancel_to_close(services, oid)
    expect_state(view, "CANCELLED", "none")
    return "cancelled in review, nothing charged", [oid]


async def cancel_after_payment(services: ServiceLayer, opts: Options) -> tuple[str, list[str]]:
    oid = f"twf-{opts.tag}-refund"
    # Every external call takes 2 s: time to cancel between payment and dispatch.
    await start_to_review(services, oid, opts, fault_profile="delay=2")
    await services.orders.approve(oid, "test-workflow")
    view = await wait_for_order(
        services.status, oid, lambda v: v.get("state") == "PAID" or is_terminal(v), 30.0
    )
    expect(view.get("state") == "PAID", f"{oid} never reached PAID: {view.get('state')}")
    view = await cancel_to_close(services, oid)
    expect_state(view, "CANCELLED", "refunded")
    return "cancelled after payment, payment refunded", [oid]


async def address_update(services: ServiceLayer, opts: Options) -> tuple[str, list[str]]:
    from app.service.errors import InvalidInput

    oid = f"twf-{opts.tag}-address"
    await start_to_review(services, oid, opts)
    new = {**DEMO_ADDRESS, "street": "456 New St", "city": "New City", "zip": "54321"}
    try:
        await services.orders.update_address(oid, {**new, "zip": "!"}, requested_by="test-workflow")
        raise Check("an invalid ZIP code was accepted")
    except InvalidInput as refused:
        expect(refused.field == "address.zip", f"refusal names {refused.field}, not address.zip")
    await services.orders.update_address(oid, new, requested_by="test-workflow")
    view = await approve_to_close(services, oid)
    expect_state(view, "COMPLETED", "charged")
    expect(view.get("address") == new, f"shipped to {view.get('address')}, not {new}")
    dispatched = [e for e in await services.inspection.events(oid) if e["type"] == "DISPATCHED"]
    expect(
        bool(dispatched) and dispatched[-1]["payload"].get("address") == new,
        "the carrier was not given the new address",
    )
    return "bad ZIP refused (address.zip); shipped to the new address", [oid]


async def review_timeout(services: ServiceLayer, opts: Options) -> tuple[str, list[str]]:
    oid = f"twf-{opts.tag}-timeout"
    await start_to_review(services, oid, opts, review_timeout_s=opts.review_timeout)
    view = await until_closed(services, oid, timeout=opts.review_timeout + 30.0)
    expect_state(view, "CANCELLED", "none")
    expect(view.get("reason") == "review_timeout", f"reason {view.get('reason')!r}")
    return f"no approval within {opts.review_timeout:g}s: CANCELLED (review_timeout)", [oid]


async def parallel(services: ServiceLayer, opts: Options) -> tuple[str, list[str]]:
    ids = [f"twf-{opts.tag}-par{n}" for n in range(1, opts.parallel + 1)]

    async def one(oid: str) -> dict[str, Any]:
        await start_to_review(services, oid, opts)
        return await approve_to_close(services, oid)

    views = await asyncio.gather(*(one(oid) for oid in ids))
    for view in views:
        expect_state(view, "COMPLETED", "charged")
    return f"{len(ids)} orders side by side, all COMPLETED", ids


RUNNERS: dict[str, Callable[[ServiceLayer, Options], Awaitable[tuple[str, list[str]]]]] = {
    "happy-path": happy_path,
    "cancel": cancel,
    "cancel-after-payment": cancel_after_payment,
    "address-update": address_update,
    "review-timeout": review_timeout,
    "parallel": parallel,
}


async def run_one(services: ServiceLayer, name: str, opts: Options) -> Outcome:
    from app.service.errors import ServiceError

    started = time.monotonic()
    log(name, "running")
    try:
        detail, orders = await RUNNERS[name](services, opts)
        passed = True
    except Check as failed:
        detail, orders, passed = str(failed), [], False
    except ServiceError as failed:
        detail, orders, passed = f"{type(failed).__name__}: {failed.message}", [], False
    seconds = time.monotonic() - started
    log(name, ("PASS" if passed else "FAIL") + f" in {seconds:.1f}s")
    return Outcome(name, passed, detail, seconds, orders)


async def run_all(names: list[str], opts: Options) -> list[Outcome]:
    settings = client_settings(StackSettings())
    async with open_service(settings) as services:
        return list(await asyncio.gather(*(run_one(services, n, opts) for n in names)))


def report(outcomes: list[Outcome]) -> None:
    table = Table("scenario", "result", "time", "detail", title="test-workflow report")
    for o in outcomes:
        result = Text("PASS", style="bold green") if o.passed else Text("FAIL", style="bold red")
        table.add_row(o.scenario, result, f"{o.seconds:.1f}s", o.detail)
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    parser.add_argument("--parallel", type=int, default=5, help="orders in the parallel scenario")
    parser.add_argument(
        "--review-timeout", type=float, default=3.0, help="review wait of the timeout scenario (s)"
    )
    parser.add_argument(
        "--fault-profile", default="off", help="fault profile of the orders (default off)"
    )
    args = parser.parse_args(argv)
    if args.parallel < 1 or args.review_timeout <= 0:
        parser.error("--parallel must be >= 1 and --review-timeout > 0")
    opts = Options(args.fault_profile, args.review_timeout, args.parallel, secrets.token_hex(3))
    names = args.only or list(SCENARIOS)
    try:
        outcomes = asyncio.run(run_all(names, opts))
    except Exception as exc:  # operational: stack down, bad settings... one line, no trace
        return report_error(exc)
    report(outcomes)
    failed = [o.scenario for o in outcomes if not o.passed]
    if failed:
        sys.stderr.write(f"error: {len(failed)} scenario(s) failed: {', '.join(failed)}\n")
        return 1
    out.print(Text(f"all {len(outcomes)} scenarios passed", style="bold green"))
    return 0


if __name__ == "__main__":
    exit_now(main())
