"""ReconciliationWorkflow: one `Reconcile` activity, run by the Temporal Schedule
`reconciliation` (every RECONCILE_INTERVAL_S, overlaps skipped) or asked for now
(`cli.py reconcile`, app/service/reconciliation.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from app.orders.reconciliation.messages import (
        RECONCILE_ACTIVITY,
        RECONCILIATION_WORKFLOW,
        ReconcileInput,
    )

# Bounded work (a window of orders), heartbeating: a dead worker is noticed within a
# minute and the run is retried from the start, which is safe (every heal is idempotent).
RECONCILE_TIMEOUT = timedelta(minutes=15)
RECONCILE_HEARTBEAT = timedelta(seconds=60)
RECONCILE_RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
)


# Auto-upgrade: each scheduled run is short and starts on the current build anyway.
@workflow.defn(name=RECONCILIATION_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class ReconciliationWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput | None = None) -> dict[str, Any]:
        # The schedule starts it without input (nothing of it sealed by a payload key
        # that may be retired later): the settings' defaults.
        report: dict[str, Any] = await workflow.execute_activity(
            RECONCILE_ACTIVITY,
            inp or ReconcileInput(),
            start_to_close_timeout=RECONCILE_TIMEOUT,
            heartbeat_timeout=RECONCILE_HEARTBEAT,
            retry_policy=RECONCILE_RETRY,
            result_type=dict,
        )
        return report
