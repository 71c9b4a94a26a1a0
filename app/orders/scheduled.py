"""The shape every scheduled job's workflow shares (the reconciliation, the housekeeping):
one bounded, heartbeating activity, retried from the start a few times, which is safe
because each job is idempotent or keeps a progress mark. Workflow-safe: no I/O here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

JOB_HEARTBEAT = timedelta(seconds=60)  # a dead worker is noticed within a minute
JOB_RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
)


async def run_job(activity: str, arg: Any, timeout: timedelta) -> dict[str, Any]:
    """The job's one activity, by name; its report."""
    report: dict[str, Any] = await workflow.execute_activity(
        activity,
        arg,
        start_to_close_timeout=timeout,
        heartbeat_timeout=JOB_HEARTBEAT,
        retry_policy=JOB_RETRY,
        result_type=dict,
    )
    return report
