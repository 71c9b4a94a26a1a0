"""Worker options shared by the order workers and the benchmark's baseline workers.

Kept apart from `app.worker` so the baseline stays bare: it needs these options, not the
database and activity modules the order workers import.
"""

from __future__ import annotations

from typing import TypedDict

from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from app.platform.settings import Settings


class WorkerTuning(TypedDict):
    max_concurrent_activities: int
    max_concurrent_workflow_tasks: int
    workflow_runner: WorkflowRunner


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """The sandbox only when WORKFLOW_SANDBOX asks for it (docs/performance.md).

    In a worker the sandbox re-imports a workflow's module for every new run and execs code
    for every activation and payload: 20-25 ms of CPU per order, a third of the workers'
    cost. What it guards against, non-deterministic calls in workflow code, is checked
    where it is cheap: the unit tests run every workflow path in the default, strict
    sandbox, and the replay tests catch changes that break recorded histories.
    """
    return SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()


def worker_tuning(settings: Settings) -> WorkerTuning:
    return WorkerTuning(
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        workflow_runner=workflow_runner(settings),
    )
