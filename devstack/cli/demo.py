"""`cli.py demo`: three orders side by side (clean, cancelled after payment, seed faults),
shown as they move, then summarised."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from app.cli.common import STEPS, out
from app.cli.render import errors_table, fmt_attempts, state_text
from app.cli.waiting import is_terminal, wait_for_order
from app.orders.messages import DEMO_ADDRESS, ORDER_DEADLINE_S

if TYPE_CHECKING:
    from app.service.layer import ServiceLayer


@dataclasses.dataclass
class DemoRun:
    scenario: str
    order_id: str
    expect: str
    view: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    # What it went through, "+1.2s  VALIDATED MANUAL_REVIEW" (printed at once when the
    # output is not a terminal, so three orders' lines do not interleave).
    steps: list[str] = dataclasses.field(default_factory=list)

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


async def play_demo(services: ServiceLayer) -> list[DemoRun]:
    """Three orders side by side, with live progress: each scenario's start, approval and
    (for one) cancel after payment, as a reviewer and a customer would.

    On a terminal, a progress bar per order and a line per change as it happens; elsewhere
    (a pipe, a log file) each order's changes as one block when it has ended."""
    from app.service.errors import OrderConflict

    tag = datetime.now().strftime("%H%M%S") + secrets.token_hex(2)
    runs = [
        DemoRun("clean order", f"demo-{tag}-clean", "COMPLETED"),
        DemoRun("cancel after payment", f"demo-{tag}-cancel", "REFUNDED"),
        DemoRun("seed faults (retries)", f"demo-{tag}-faults", "ANY"),
    ]
    profiles = ["off", "delay=1", "seed"]
    # Bound every wait by the order deadline, plus time for compensation to finish.
    limit = (services.settings.order_deadline_s or ORDER_DEADLINE_S) + 15.0
    columns = (
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description:<24}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    live = out.is_terminal
    with Progress(*columns, console=out, disable=not live) as progress:

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
                at = f"+{time.monotonic() - started:.1f}s"
                run.steps.append(f"{at:>6}  {label}")
                if live:
                    progress.console.print(
                        Text(f"{run.scenario:<24} {run.order_id:<28} {label}"), soft_wrap=True
                    )

            def wait(done: Callable[[dict[str, Any]], bool]) -> Awaitable[dict[str, Any]]:
                remaining = max(limit - (time.monotonic() - started), 1.0)
                return wait_for_order(services.status, run.order_id, done, remaining, on_change)

            await services.orders.start_order(
                run.order_id, f"pmt-{run.order_id}", dict(DEMO_ADDRESS), fault_profile=profile
            )
            # Approve once the order waits for review, as a reviewer would.
            view = await wait(lambda v: v.get("step") == "MANUAL_REVIEW" or is_terminal(v))
            if not is_terminal(view):
                try:
                    await services.orders.approve(run.order_id, "demo")
                    run.notes.append("approved")
                except OrderConflict as refused:
                    run.notes.append(f"approval refused: {refused.message}")
            if run.expect == "REFUNDED":
                view = await wait(lambda v: v.get("state") == "PAID" or is_terminal(v))
                if view.get("state") == "PAID":
                    try:
                        await services.orders.cancel(
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
            if not live:
                block = [f"{run.scenario} ({run.order_id})", *(f"  {s}" for s in run.steps)]
                out.print(Text("\n".join(block)), soft_wrap=True)

        await asyncio.gather(*(play(r, p) for r, p in zip(runs, profiles, strict=True)))
    return runs


def print_summary(runs: list[DemoRun]) -> None:
    # The scenario and the order id never fold (they are what a reader greps for); the
    # long cells (attempts, notes) wrap instead.
    table = Table(
        Column("scenario", no_wrap=True),
        Column("order", no_wrap=True),
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
