"""How the CLI shows things: status panels, tables, times, addresses."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from app.cli.common import STATE_STYLE, STEPS, out

if TYPE_CHECKING:
    from app.service.views import OrderView


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


def kv_grid(rows: list[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


def rows_table(
    columns: Iterable[str], rows: Iterable[Iterable[str | Text]], title: str | None = None
) -> Table:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    return table


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
    parts: list[Any] = [kv_grid(rows)]
    pending = view.get("pending_activities") or []
    if pending:
        in_flight = [
            (act["activity"], str(act["attempt"]), act.get("last_failure") or "-")
            for act in pending
        ]
        parts.append(
            rows_table(("pending activity", "attempt", "last failure"), in_flight, "in flight")
        )
    errors = view.get("errors") or []
    if errors:
        parts.append(errors_table(errors))
    return Panel(Group(*parts), title=f"order {view.get('order_id')}", expand=False)


def errors_table(errors: list[dict[str, Any]], limit: int = 10) -> Table:
    rows = [
        (
            str(e.get("step")),
            str(e.get("attempt")),
            str(e.get("kind") or "error"),
            str(e.get("message")),
            fmt_time(e.get("at")),
        )
        for e in errors[:limit]
    ]
    return rows_table(("step", "attempt", "kind", "message", "at"), rows, "recent errors")


def status_dict(view: OrderView) -> dict[str, Any]:
    """The view as the CLI prints and renders it: its JSON form, like the API's answer."""
    return view.model_dump(mode="json")
