"""Which workflow runner the production workers use (WORKFLOW_SANDBOX)."""

import pytest
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from app.platform.settings import Settings
from app.platform.worker_tuning import workflow_runner

pytestmark = pytest.mark.unit


def test_workers_run_workflows_unsandboxed_by_default() -> None:
    assert isinstance(workflow_runner(Settings(_env_file=None)), UnsandboxedWorkflowRunner)


def test_workflow_sandbox_setting_turns_the_sandbox_on(monkeypatch) -> None:
    monkeypatch.setenv("WORKFLOW_SANDBOX", "true")
    assert isinstance(workflow_runner(Settings(_env_file=None)), SandboxedWorkflowRunner)
