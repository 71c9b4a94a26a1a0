"""Worker builds of the embedded stack: the `app` package of each build the stack has run,
frozen in the run folder, and the build its workers `worker-orders`/`worker-shipping` run.

    builds/<tag>/app/      the build's code, copied from the checkout when the build first
                           starts (`cli.py start` or `deploy`), never written to afterwards
    builds/<tag>/BUILD_ID  its build id (written last: without it the copy is unfinished)
    builds/.serving        the build of `worker-orders` and `worker-shipping`

A worker runs its build's copy, not the checkout: an order pinned to a build keeps running
that build's code while the checkout moves on, and a rollback has the old code to start.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

from app import versioning
from app.platform.settings import Settings
from devstack.stack.config import StackConfig, StackError

BUILD_ID_FILE = "BUILD_ID"
SERVING_FILE = ".serving"
# Copies kept besides those still needed (~1 MB each): enough to roll back a few builds.
KEPT_SNAPSHOTS = 8
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


def builds_dir(cfg: StackConfig) -> Path:
    return cfg.run_dir / "builds"


def disk_build(settings: Settings) -> str:
    """The build id of the code now in the checkout (WORKER_BUILD_ID when set)."""
    return versioning.build_id(settings.worker_build_id)


def build_tag(build: str) -> str:
    """A short name for `build` that is safe in file and process names."""
    if _TAG_RE.match(build):
        return build
    digest = hashlib.sha256(build.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", build)[:29].lstrip("._-")
    return f"{stem}-{digest}" if stem else f"build-{digest}"


def snapshot_dir(cfg: StackConfig, build: str) -> Path:
    """The folder whose `app` package is `build`'s code (on a worker's PYTHONPATH)."""
    return builds_dir(cfg) / build_tag(build)


def snapshot_build(folder: Path) -> str | None:
    try:
        return (folder / BUILD_ID_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def build_of_tag(cfg: StackConfig, tag: str) -> str | None:
    return snapshot_build(builds_dir(cfg) / tag)


def has_snapshot(cfg: StackConfig, build: str) -> bool:
    return snapshot_build(snapshot_dir(cfg, build)) == build


def can_run(cfg: StackConfig, settings: Settings, build: str) -> bool:
    """Whether the stack has `build`'s code: its copy, or the checkout."""
    return has_snapshot(cfg, build) or build == disk_build(settings)


@contextlib.contextmanager
def _builds_lock(cfg: StackConfig) -> Iterator[None]:
    """One copy at a time (both workers of a build start together, two CLIs may race)."""
    builds_dir(cfg).mkdir(parents=True, exist_ok=True)
    with (builds_dir(cfg) / ".lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_snapshot(cfg: StackConfig, settings: Settings, build: str) -> Path:
    """`build`'s copy, taken from the checkout now if the checkout is that build."""
    folder = snapshot_dir(cfg, build)
    if has_snapshot(cfg, build):
        return folder
    if build != disk_build(settings):
        raise StackError(
            f"build {build}'s code is not in {builds_dir(cfg)} and the checkout is another "
            "build; deploy it from a checkout of that build"
        )
    with _builds_lock(cfg):
        if not has_snapshot(cfg, build):
            _copy_checkout(folder, build)
    return folder


def _copy_checkout(folder: Path, build: str) -> None:
    source = versioning.SOURCE_ROOT
    before = versioning.source_hash(source)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copytree(source, tmp / "app", ignore=shutil.ignore_patterns("__pycache__"))
        if versioning.source_hash(tmp / "app") != before:
            raise StackError("the code changed while it was being copied; run the command again")
        # Workers import from here; bytecode now spares every start (and, with the workflow
        # sandbox, every run) compiling the workflow modules again.
        compileall.compile_dir(str(tmp / "app"), quiet=1)
        (tmp / BUILD_ID_FILE).write_text(f"{build}\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished copy of an earlier try
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def serving_build(cfg: StackConfig) -> str | None:
    """The build `worker-orders` and `worker-shipping` run (None: not chosen yet)."""
    try:
        return (builds_dir(cfg) / SERVING_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def set_serving(cfg: StackConfig, build: str) -> None:
    path = builds_dir(cfg) / SERVING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{build}\n", encoding="utf-8")
    tmp.replace(path)


def prune(cfg: StackConfig, keep: Collection[str]) -> list[str]:
    """Remove the oldest copies beyond KEPT_SNAPSHOTS, never one of `keep`; their builds."""
    folders = [f for f in builds_dir(cfg).glob("*") if f.is_dir() and snapshot_build(f) is not None]
    folders.sort(key=lambda f: f.stat().st_mtime, reverse=True)
    removed = []
    for folder in folders[KEPT_SNAPSHOTS:]:
        build = snapshot_build(folder)
        if build is not None and build not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(build)
    return removed
