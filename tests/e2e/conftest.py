"""A real embedded stack started by the CLI itself (`cli.py start`), once per session.

It lives in its own run folder on free ports, so it never meets a dev stack started from
the same checkout, and `cli.py stop` must leave no process behind. Every CLI call is a
subprocess with that environment, run from the run folder so a developer's `.env` does not
leak in: the settings below are all the stack knows.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator

import pytest

from app.platform.settings import PROJECT_ROOT
from tests.helpers import CliStack, describe, leftover_processes, stack_env


@pytest.fixture(scope="session")
def cli_stack() -> Iterator[CliStack]:
    # Under the project's .run (not /tmp/pytest-of-*, which is 0700): the postgres system
    # user must be able to reach its data directory.
    run_dir = PROJECT_ROOT / ".run" / f"e2e-{uuid.uuid4().hex[:8]}"
    stack = CliStack(run_dir, stack_env(run_dir))
    started = stack.run("start")
    try:
        assert started.returncode == 0, describe(started)
        yield stack
    finally:
        pids = []
        with_pids = stack.run("ps", "--json")
        if with_pids.returncode == 0:
            pids = [row["pid"] for row in json.loads(with_pids.stdout) if row["pid"]]
        stopped = stack.run("stop")
        left = leftover_processes(run_dir, pids)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert stopped.returncode == 0, describe(stopped)
        assert not left, f"processes left after `cli.py stop`: {left}"
