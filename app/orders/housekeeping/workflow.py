"""HousekeepingWorkflow: one `PruneEvents` activity, run by the Temporal Schedule
`housekeeping` (every EVENTS_RETENTION_INTERVAL_S, overlaps skipped)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import VersioningBehavior

from app.orders.scheduled import run_job

with workflow.unsafe.imports_passed_through():
    from app.orders.housekeeping.messages import (
        HOUSEKEEPING_WORKFLOW,
        PRUNE_EVENTS_ACTIVITY,
        HousekeepingInput,
    )

# Batches commit one by one and the progress mark moves with them: a retried run goes on
# where the last one stopped.
PRUNE_TIMEOUT = timedelta(minutes=30)


# Auto-upgrade: each scheduled run is short and starts on the current build anyway.
@workflow.defn(name=HOUSEKEEPING_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class HousekeepingWorkflow:
    @workflow.run
    async def run(self, inp: HousekeepingInput | None = None) -> dict[str, Any]:
        return await run_job(PRUNE_EVENTS_ACTIVITY, inp or HousekeepingInput(), PRUNE_TIMEOUT)
