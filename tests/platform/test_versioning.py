"""A worker build's id: the same code gives the same id, other code another one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.versioning import build_id, source_hash

pytestmark = pytest.mark.unit


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A tiny package tree standing in for `app`."""
    root = tmp_path / "app"
    (root / "orders").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "orders" / "workflow.py").write_text("STEPS = 5\n")
    return root


def test_the_setting_wins(source: Path) -> None:
    assert build_id("2026.12.1", source) == "2026.12.1"


def test_without_git_the_id_is_the_code_hash(source: Path) -> None:
    first = build_id("", source)
    assert first.endswith(f"-src-{source_hash(source)}")
    copy = source.parent / "copy"
    shutil.copytree(source, copy)
    assert source_hash(copy) == source_hash(source)
    (copy / "orders" / "workflow.py").write_text("STEPS = 6\n")
    assert source_hash(copy) != source_hash(source)


def test_a_clean_commit_is_its_own_id_and_a_change_adds_a_hash(source: Path) -> None:
    git(source.parent, "init", "-q")
    git(source.parent, "add", ".")
    git(source.parent, "commit", "-qm", "one")
    commit = git(source.parent, "rev-parse", "--short=10", "HEAD")
    clean = build_id("", source)
    assert clean.endswith(f"-{commit}")
    (source / "orders" / "workflow.py").write_text("STEPS = 6\n")
    dirty = build_id("", source)
    assert dirty == f"{clean}-dirty-{source_hash(source)}"
    (source.parent / "README.md").write_text("docs only\n")  # outside the worker's code
    assert build_id("", source) == dirty
    git(source.parent, "checkout", "-q", "--", ".")
    assert build_id("", source) == clean
    (source / "orders" / "new_step.py").write_text("NEW = 1\n")  # not yet added to git
    assert build_id("", source) == f"{clean}-dirty-{source_hash(source)}"
