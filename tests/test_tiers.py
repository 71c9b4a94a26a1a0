"""The deployment guide's `python -m pytest tests/unit/` (integration/, e2e/) select tiers.

Tests sit beside their package, so those folders do not exist; tests/conftest.py maps each
such path to its marker. Checked by collecting as a user would type it, from the project
root, in this process: a nested session goes through the same configuration and hooks as
a command line, and finds the test modules already imported (a subprocess per collection
imported every one of them again, some 5 s each on 2 cores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from app.platform.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit


@dataclass
class Collected:
    """What one nested `pytest --collect-only` did."""

    exit_code: int | pytest.ExitCode
    ids: list[str] = field(default_factory=list)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.ids = [item.nodeid for item in session.items]


Collect = Callable[..., Collected]


@pytest.fixture
def collect(monkeypatch: pytest.MonkeyPatch) -> Collect:
    monkeypatch.chdir(PROJECT_ROOT)

    def run(*args: str) -> Collected:
        collected = Collected(pytest.ExitCode.OK)
        # No capture of its own (this test's capsys reads what it prints), no cache, and
        # the faulthandler left to the outer session.
        options = ("-p", "no:cacheprovider", "-p", "no:faulthandler", "--capture=no")
        collected.exit_code = pytest.main(
            [*options, "--collect-only", "-q", *args], plugins=[collected]
        )
        return collected

    return run


def _ids(collected: Collected) -> list[str]:
    assert collected.exit_code == pytest.ExitCode.OK, collected.exit_code
    return collected.ids


def test_a_tier_folder_selects_its_marker(collect: Collect) -> None:
    by_path = _ids(collect("tests/e2e", "tests/unit/"))
    assert by_path and by_path == _ids(collect("-m", "unit or e2e"))


def test_a_tier_folder_with_another_selection_is_refused(
    collect: Collect, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in (("-m", "e2e"), ("tests/api",)):
        result = collect("tests/unit/", *extra)
        out, err = capsys.readouterr()
        assert result.exit_code == pytest.ExitCode.USAGE_ERROR, out + err
        assert "tests/unit/ means -m unit" in err, err
        assert "Traceback" not in out + err
