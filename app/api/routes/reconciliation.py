"""/reconciliation: the latest report of the scheduled reconciliation (viewer role).

The run itself is Temporal's (the `reconciliation` schedule, or `cli.py reconcile`); this
reads what the last run stored (app/service/reconciliation.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import Services, Viewer, error_responses
from app.service.reconciliation import latest_report

router = APIRouter(tags=["reconciliation"])


class ReconciliationQuery(BaseModel):
    """GET /reconciliation parameters. Unknown ones are refused (422), not ignored."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(
        default=200, ge=1, le=1000, description="At most this many findings, unresolved first"
    )


class FindingOut(BaseModel):
    kind: str = Field(
        description="charged_not_refunded, completed_unpaid, double_charge, amount_mismatch, "
        "booking_not_completed, payment_mismatch, booking_mismatch, unknown_order, order_stuck, "
        "unsettled"
    )
    order_id: str
    reference: str = Field(description="The payment id or carrier order it is about")
    detail: str
    safe: bool = Field(description="A kind the run heals by itself (refund, booking cancel)")
    healed: bool = Field(description="Healed by this run")


class Checked(BaseModel):
    orders: int
    charges: int
    bookings: int


class ReconciliationReport(BaseModel):
    run_id: str | None = Field(description="The run's Temporal run id; null before any run")
    workflow_id: str | None
    trigger: str | None = Field(description="schedule or manual")
    started_at: str | None
    finished_at: str | None
    since: str | None = Field(description="Orders created since then were checked")
    healed: int
    unresolved: int = Field(description="Findings left for a person")
    settling: int = Field(description="Orders whose workflow is still compensating")
    unresolved_by_kind: dict[str, int]
    findings: list[FindingOut]
    findings_total: int
    settling_orders: list[str]
    checked: Checked
    interval_s: float = Field(description="How often the schedule runs it (RECONCILE_INTERVAL_S)")


@router.get(
    "/reconciliation",
    summary="Latest reconciliation report",
    response_model=ReconciliationReport,
    responses=error_responses(401, 403, 422, 500, 503),
)
async def reconciliation(
    params: Annotated[ReconciliationQuery, Query()], layer: Services, _caller: Viewer
) -> ReconciliationReport:
    """What the last reconciliation run found comparing our orders and payments with the
    gateway's and carrier's exports: what it healed, what it left for a person, which
    orders were still settling. Read from PostgreSQL."""
    report = await latest_report(layer.sessions, layer.settings, limit=params.limit)
    return ReconciliationReport.model_validate(report)
