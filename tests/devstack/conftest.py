"""The stack of the devstack e2e tests that need one of their own (not the session's
`cli_stack`): the chaos run restarts its Temporal and PostgreSQL, and the deploy test
changes its code on disk; either would fail the other e2e tests for reasons of theirs.

The two share it, one after the other (file order: chaos, then deploy): neither looks at
the other's orders, the chaos run leaves every service running and every order closed
(it asserts both), and a start and a stop of a whole stack are paid once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.platform.settings import PROJECT_ROOT
from tests.devstack.copied_stack import CopiedStack, copy_project
from tests.helpers import stack_env, started_stack

# The chaos run's workers draw every fault from this seed (tests/devstack/test_chaos.py).
CHAOS_FAULT_SEED = "20240611"


@pytest.fixture(scope="package")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="package")
def own_stack(project: Path) -> Iterator[CopiedStack]:
    run_dir = PROJECT_ROOT / ".run" / f"e2e-own-{uuid.uuid4().hex[:8]}"
    env = {**stack_env(run_dir), "FAULT_SEED": CHAOS_FAULT_SEED}
    script = str(project / "scripts" / "cli.py")
    with started_stack(CopiedStack(run_dir, env, script=script)) as stack:
        yield stack
