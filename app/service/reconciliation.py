"""The reconciliation as the front ends see it: run it now, read its latest report, and keep
its Temporal Schedule in place (app/orders/reconciliation does the work).

`reconcile_now` is what `cli.py reconcile`, `cli.py chaos` and tests call; `latest_report`
answers GET /reconciliation, the console's panel and the API's gauges; `ensure_schedule`
is run by `cli.py start`, `orders reconcile-schedule` and compose's setup job.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    Schedule,
    WorkflowFailureError,
)
from temporalio.exceptions import FailureError
from temporalio.service import RPCError

from app.orders.reconciliation.audit import KINDS
from app.orders.reconciliation.messages import (
    MANUAL_ID_PREFIX,
    RECONCILIATION_WORKFLOW,
    SCHEDULE_ID,
    ReconcileInput,
)
from app.platform.settings import Settings
from app.platform.tables import ReconciliationFinding, ReconciliationRun
from app.service.errors import ServiceError, Unavailable
from app.service.schedules import ensure, ensure_housekeeping, job_schedule

# A run asked for now waits this long for its report (a run is bounded: a window of
# orders, heals tried a few seconds each).
RUN_TIMEOUT = timedelta(minutes=20)
DEFAULT_FINDINGS_LIMIT = 200


class ReconciliationFailed(ServiceError, status=502, code="reconciliation_failed"):
    """A reconciliation run failed (the message names its error type)."""


async def reconcile_now(
    client: Client,
    settings: Settings,
    *,
    heal: bool = True,
    order_ids: list[str] | None = None,
    lookback_s: float | None = None,
    fault_profile: str | None = None,
) -> dict[str, Any]:
    """Run the ReconciliationWorkflow now (a fresh workflow id) and return its report:
    `run_id`, `findings` (each `kind`, `order_id`, `reference`, `detail`, `safe`,
    `healed`), `healed`, `unresolved`, `settling`, `unresolved_by_kind`, ...

    `order_ids` limits it to those orders; `heal=False` only reports; `fault_profile`
    (the dev stack's simulators) is the heals' provider calls' fault profile."""
    workflow_id = f"{MANUAL_ID_PREFIX}{uuid.uuid4().hex[:12]}"
    inp = ReconcileInput(
        trigger="manual",
        heal=heal,
        lookback_s=lookback_s,
        order_ids=order_ids,
        fault_profile=fault_profile,
    )
    try:
        report: dict[str, Any] = await client.execute_workflow(
            RECONCILIATION_WORKFLOW,
            inp,
            id=workflow_id,
            task_queue=settings.order_task_queue,
            execution_timeout=RUN_TIMEOUT,
            result_type=dict,
        )
    except WorkflowFailureError as err:
        cause: BaseException = err.cause
        while isinstance(cause, FailureError) and cause.cause is not None:
            cause = cause.cause
        kind = getattr(cause, "type", None) or type(cause).__name__
        raise ReconciliationFailed(f"reconciliation run {workflow_id} failed: {kind}") from err
    except RPCError as err:
        raise Unavailable.temporal(err.message) from None
    return report


# --- the schedule --------------------------------------------------------------------------


def schedule_of(settings: Settings) -> Schedule:
    """Every RECONCILE_INTERVAL_S."""
    return job_schedule(
        RECONCILIATION_WORKFLOW,
        SCHEDULE_ID,
        settings.reconcile_interval_s,
        settings,
        RUN_TIMEOUT,
        "Order reconciliation: our orders and payments against the gateway's and "
        "carrier's exports (app/orders/reconciliation).",
    )


async def ensure_schedule(client: Client, settings: Settings) -> str:
    """Create the schedule, or bring it to the settings (interval, queue); idempotent.

    "created" (it also runs once at once), "updated" or "unchanged". A schedule an
    operator paused stays paused. The events retention's schedule (`housekeeping`) is
    ensured with it, so whatever sets up the reconciliation sets that up too."""
    await ensure_housekeeping(client, settings)
    return await ensure(client, SCHEDULE_ID, schedule_of(settings))


# --- stored reports ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=UTC).isoformat()


def empty_report(settings: Settings) -> dict[str, Any]:
    return {
        "run_id": None,
        "workflow_id": None,
        "trigger": None,
        "started_at": None,
        "finished_at": None,
        "since": None,
        "healed": 0,
        "unresolved": 0,
        "settling": 0,
        "unresolved_by_kind": dict.fromkeys(map(str, KINDS), 0),
        "findings": [],
        "findings_total": 0,
        "settling_orders": [],
        "checked": {"orders": 0, "charges": 0, "bookings": 0},
        "interval_s": settings.reconcile_interval_s,
    }


def _latest() -> Select[ReconciliationRun]:
    """The latest full run (a run limited to some orders is no report of the whole)."""
    return (
        select(ReconciliationRun)
        .where(ReconciliationRun.scoped.is_(False))
        .order_by(ReconciliationRun.finished_at.desc())
        .limit(1)
    )


async def latest_run(sessions: async_sessionmaker[AsyncSession]) -> ReconciliationRun | None:
    async with sessions() as s:
        return (await s.execute(_latest())).scalar_one_or_none()


async def latest_report(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    limit: int = DEFAULT_FINDINGS_LIMIT,
) -> dict[str, Any]:
    """The latest full run's report, unresolved findings first (at most `limit`)."""
    report = empty_report(settings)
    async with sessions() as s:
        run = (await s.execute(_latest())).scalar_one_or_none()
        if run is None:
            return report
        rows = (
            await s.execute(
                select(ReconciliationFinding)
                .where(ReconciliationFinding.run_id == run.id)
                .order_by(
                    case((ReconciliationFinding.healed, 1), else_=0),
                    ReconciliationFinding.kind,
                    ReconciliationFinding.order_id,
                    ReconciliationFinding.id,
                )
                .limit(limit)
            )
        ).scalars()
        findings = [
            {
                "kind": f.kind,
                "order_id": f.order_id,
                "reference": f.reference,
                "detail": f.detail,
                "safe": f.safe,
                "healed": f.healed,
            }
            for f in rows
        ]
    summary = run.summary_json or {}
    report.update(
        {
            "run_id": run.id,
            "workflow_id": run.workflow_id,
            "trigger": run.trigger,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "since": _iso(run.since),
            "healed": run.healed,
            "unresolved": run.unresolved,
            "settling": run.settling,
            "findings": findings,
            "findings_total": int(summary.get("findings_total", len(findings))),
            "settling_orders": list(summary.get("settling_orders", [])),
            "checked": dict(summary.get("checked", report["checked"])),
        }
    )
    report["unresolved_by_kind"].update(summary.get("unresolved_by_kind", {}))
    return report
