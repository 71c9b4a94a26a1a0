"""A CLI stack run from a copy of the project outside any git checkout (the build id is
then a hash of the code), so a test can change "the code on disk" without touching the
checkout: the stack the chaos and deploy e2e tests share (tests/devstack/conftest.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.platform.settings import PROJECT_ROOT
from tests.helpers import CliStack

# What `cli.py start` needs of the project (the migrations are inside app/).
COPIED = ("app", "devstack", "scripts", "pyproject.toml")


def copy_project(root: Path) -> Path:
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    return root


@dataclass
class CopiedStack(CliStack):
    """A CLI stack whose `script` is the copy's `cli.py`, so every command runs the copy's
    code."""

    def ps(self) -> Listing:
        return Listing(self.json("ps"))

    def deployment(self) -> dict[str, Any]:
        return self.ps().deployment

    def worker_builds(self) -> dict[str, str]:
        return self.ps().worker_builds


@dataclass
class Listing:
    """One `cli.py ps --json`: the deployment (on Temporal's row) and each worker's build,
    read together where a step checks both (a CLI process each costs a second or two)."""

    rows: list[dict[str, Any]]

    @property
    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = next(r for r in self.rows if r["service"] == "temporal")[
            "deployment"
        ]
        return found

    @property
    def worker_builds(self) -> dict[str, str]:
        return {r["service"]: r["build_id"] for r in self.rows if r["build_id"]}
