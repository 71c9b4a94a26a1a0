"""The deployment guide's `python -m pytest tests/unit/` (integration/, e2e/) select tiers.

Tests sit beside their package, so those folders do not exist; tests/conftest.py maps each
such path to its marker. Checked by collecting in a subprocess, as a user would type it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.platform.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit


def _collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ids(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_a_tier_folder_selects_its_marker() -> None:
    by_path = _ids(_collect("tests/e2e", "tests/unit/"))
    assert by_path and by_path == _ids(_collect("-m", "unit or e2e"))


def test_a_tier_folder_with_another_selection_is_refused() -> None:
    for extra in (("-m", "e2e"), ("tests/api",)):
        result = _collect("tests/unit/", *extra)
        assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
        assert "tests/unit/ means -m unit" in result.stderr, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
