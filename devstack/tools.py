"""Running the stack's command-line tools (pg_dump, psql, temporal) with one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path


class ToolError(Exception):
    """A tool that could not run or failed, in one line."""


def run_tool(
    argv: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"{Path(argv[0]).name} timed out after {timeout:.0f}s") from None
    except OSError as err:
        raise ToolError(f"cannot run {Path(argv[0]).name}: {err}") from None
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        raise ToolError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}): "
            + (lines[0].strip() if lines else "no output")
        )
    return result
