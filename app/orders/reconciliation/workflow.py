"""ReconciliationWorkflow: one `Reconcile` activity, run by the Temporal Schedule
`reconciliation` (every RECONCILE_INTERVAL_S, overlaps skipped) or asked for now
(`cli.py reconcile`, app/service/reconciliation.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import VersioningBehavior

from app.orders.scheduled import run_job

with workflow.unsafe.imports_passed_through():
    from app.orders.reconciliation.messages import (
        RECONCILE_ACTIVITY,
        RECONCILIATION_WORKFLOW,
        ReconcileInput,
    )

# Bounded work (a window of orders); a retried run starts over, which is safe: every heal
# is idempotent.
RECONCILE_TIMEOUT = timedelta(minutes=15)


# Auto-upgrade: each scheduled run is short and starts on the current build anyway.
@workflow.defn(name=RECONCILIATION_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class ReconciliationWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput | None = None) -> dict[str, Any]:
        # The schedule starts it without input (nothing of it sealed by a payload key
        # that may be retired later): the settings' defaults.
        return await run_job(RECONCILE_ACTIVITY, inp or ReconcileInput(), RECONCILE_TIMEOUT)
