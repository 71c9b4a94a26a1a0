"""The Temporal Schedules of the housekeeping runs beside the orders, kept as the settings
want them: `ensure` creates one or brings it to the settings (interval, queue), leaving an
operator's pause alone. The reconciliation's (app/service/reconciliation.py) and the
events retention's (`housekeeping`, app/orders/housekeeping) are ensured together.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from app.orders.housekeeping.messages import HOUSEKEEPING_WORKFLOW
from app.orders.housekeeping.messages import SCHEDULE_ID as HOUSEKEEPING_SCHEDULE_ID
from app.platform.settings import Settings

# A scheduled run that cannot start within an interval is skipped rather than queued.
SCHEDULE_CATCHUP = timedelta(minutes=1)
HOUSEKEEPING_RUN_TIMEOUT = timedelta(hours=1)


def job_schedule(
    workflow: str,
    schedule_id: str,
    every_s: float,
    settings: Settings,
    timeout: timedelta,
    note: str,
) -> Schedule:
    """A scheduled job as this service runs them: every `every_s` seconds on the orders
    queue, a run still going makes the next one skip. No input: the workflow runs with the
    settings' defaults, and the schedule holds no payload a retired PAYLOAD_KEYS key would
    make unreadable."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            workflow,
            id=schedule_id,  # Temporal appends each run's scheduled time
            task_queue=settings.order_task_queue,
            execution_timeout=timeout,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_s))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=SCHEDULE_CATCHUP),
        state=ScheduleState(note=note),
    )


def housekeeping_schedule(settings: Settings) -> Schedule:
    """Every EVENTS_RETENTION_INTERVAL_S."""
    return job_schedule(
        HOUSEKEEPING_WORKFLOW,
        HOUSEKEEPING_SCHEDULE_ID,
        settings.events_retention_interval_s,
        settings,
        HOUSEKEEPING_RUN_TIMEOUT,
        "Events retention: step events of orders closed more than EVENTS_RETENTION_DAYS "
        "ago, deleted in batches (app/orders/housekeeping).",
    )


def same_schedule(have: Schedule, want: Schedule) -> bool:
    action, wanted = have.action, want.action
    return (
        isinstance(action, ScheduleActionStartWorkflow)
        and isinstance(wanted, ScheduleActionStartWorkflow)
        and action.workflow == wanted.workflow
        and action.task_queue == wanted.task_queue
        and [i.every for i in have.spec.intervals] == [i.every for i in want.spec.intervals]
        and not have.spec.cron_expressions
        and not have.spec.calendars
        and have.policy.overlap == want.policy.overlap
    )


async def ensure(client: Client, schedule_id: str, want: Schedule, *, run_now: bool = True) -> str:
    """Create the schedule, or bring it to `want`; idempotent. "created" (then it runs once
    at once if `run_now`), "updated" or "unchanged". A paused schedule stays paused."""
    try:
        await client.create_schedule(schedule_id, want, trigger_immediately=run_now)
        return "created"
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(schedule_id)
    have = (await handle.describe()).schedule
    if same_schedule(have, want):
        return "unchanged"

    def update(inp: ScheduleUpdateInput) -> ScheduleUpdate:
        want.state = inp.description.schedule.state  # paused or not, as the operator left it
        return ScheduleUpdate(schedule=want)

    await handle.update(update)
    return "updated"


async def ensure_housekeeping(client: Client, settings: Settings) -> str:
    return await ensure(client, HOUSEKEEPING_SCHEDULE_ID, housekeeping_schedule(settings))
