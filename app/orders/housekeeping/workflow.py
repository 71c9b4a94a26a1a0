"""HousekeepingWorkflow: one `PruneEvents` activity, run by the Temporal Schedule
`housekeeping` (every EVENTS_RETENTION_INTERVAL_S, overlaps skipped)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from app.orders.housekeeping.messages import (
        HOUSEKEEPING_WORKFLOW,
        PRUNE_EVENTS_ACTIVITY,
        HousekeepingInput,
    )

# Batches commit one by one and the progress mark moves with them: a retried run goes on
# where the last one stopped.
PRUNE_TIMEOUT = timedelta(minutes=30)
PRUNE_HEARTBEAT = timedelta(seconds=60)
PRUNE_RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
)


# Auto-upgrade: each scheduled run is short and starts on the current build anyway.
@workflow.defn(name=HOUSEKEEPING_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class HousekeepingWorkflow:
    @workflow.run
    async def run(self, inp: HousekeepingInput | None = None) -> dict[str, Any]:
        report: dict[str, Any] = await workflow.execute_activity(
            PRUNE_EVENTS_ACTIVITY,
            inp or HousekeepingInput(),
            start_to_close_timeout=PRUNE_TIMEOUT,
            heartbeat_timeout=PRUNE_HEARTBEAT,
            retry_policy=PRUNE_RETRY,
            result_type=dict,
        )
        return report
