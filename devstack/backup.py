"""Backup and restore of the embedded stack (`cli.py backup`, `cli.py restore`), and the
Temporal namespace's retention (`cli.py retention`, TEMPORAL_NAMESPACE_RETENTION).

A backup is a folder:

    manifest.json   what was copied, when, from which stack, with sha256 of each file
    temporal.db     the dev server's SQLite state (histories, timers, task queues)
    app.dump        the application database (orders, payments, events), pg_dump -Fc

Consistency. The SQLite file is copied with SQLite's online backup API in one step: one
read transaction, so the copy is the database as of one instant, WAL included, while the
dev server keeps running (a plain file copy of a WAL-mode database can tear). Temporal is
copied *before* PostgreSQL is dumped, so the database is never older than the histories:
after a restore, a workflow may re-run an activity that finished between the two copies,
and every activity is idempotent against rows that already exist (the charge keyed on the
payment id, the dispatch on the tracking number). The opposite order would leave
histories that point at rows the database lost.

Restore goes into a stopped stack (normally a fresh RUN_DIR): the SQLite file is put in
place while no dev server has it open, and the dump is loaded with pg_restore into the
embedded PostgreSQL (started for the purpose and stopped again). Then `cli.py start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.platform.settings import Settings
from devstack import services as stack_services
from devstack import stack
from devstack.stack import POSTGRES, StackConfig
from devstack.tools import ToolError, run_tool

MANIFEST = "manifest.json"
DB_DUMP = "app.dump"
TEMPORAL_FILE = "temporal.db"
FORMAT = 1


class BackupError(ToolError):
    """A backup or restore that cannot be done, in one line."""


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pg_env(cfg: StackConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=cfg.pg_password, PGCONNECT_TIMEOUT="10", LC_ALL="C")
    return env


def _pg_conn_args(cfg: StackConfig) -> list[str]:
    return ["-h", cfg.host, "-p", str(cfg.postgres_port), "-U", cfg.pg_user, "-d", cfg.pg_db]


_TABLES = ("orders", "payments", "events")


async def _connect(cfg: StackConfig) -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(
            host=cfg.host,
            port=cfg.postgres_port,
            user=cfg.pg_user,
            password=cfg.pg_password,
            database=cfg.pg_db,
            timeout=10,
            # The embedded build has no TLS; asyncpg would otherwise try it first.
            ssl=False,
        )
    except (TimeoutError, OSError) as err:
        raise BackupError(
            f"cannot reach PostgreSQL at {cfg.host}:{cfg.postgres_port}: {err}"
        ) from None


async def _counts(conn: Any) -> dict[str, int] | None:
    """Rows per application table; None when the schema is not there (fresh database)."""
    if await conn.fetchval("select to_regclass('public.orders')") is None:
        return None
    return {t: int(await conn.fetchval(f"select count(*) from {t}")) for t in _TABLES}


def _db_counts(cfg: StackConfig) -> dict[str, int] | None:
    async def run() -> dict[str, int] | None:
        conn = await _connect(cfg)
        try:
            return await _counts(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def _dump_database(cfg: StackConfig, target: Path) -> dict[str, int] | None:
    """pg_dump -Fc of the application database, and its row counts, from one snapshot.

    The counts are read in a repeatable-read transaction whose snapshot pg_dump imports
    (--snapshot), so they describe exactly what the dump holds while orders keep arriving.
    """

    async def run() -> dict[str, int] | None:
        conn = await _connect(cfg)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await conn.fetchval("select pg_export_snapshot()")
                rows = await _counts(conn)
                proc = await asyncio.create_subprocess_exec(
                    str(stack.postgres_bin_dir() / "pg_dump"),
                    *_pg_conn_args(cfg),
                    f"--snapshot={snapshot}",
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    "-f",
                    str(target),
                    env=_pg_env(cfg),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), timeout=600)
                except TimeoutError:
                    proc.kill()
                    raise BackupError("pg_dump timed out after 600s") from None
                if proc.returncode != 0:
                    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
                    raise BackupError(
                        f"pg_dump failed (exit {proc.returncode}): "
                        + (lines[0].strip() if lines else "no output")
                    )
                return rows
        finally:
            await conn.close()

    return asyncio.run(run())


def _sqlite_snapshot(src: Path, dst: Path) -> dict[str, Any]:
    """A consistent single-file copy of a live WAL-mode SQLite database."""
    tmp = dst.with_name(dst.name + ".partial")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(tmp)
    try:
        # pages=-1: the whole database in one step, i.e. under one read transaction.
        source.backup(target, pages=-1)
        # Standalone file (no -wal beside it); the dev server turns WAL back on at start.
        target.execute("PRAGMA journal_mode=DELETE")
        check = target.execute("PRAGMA integrity_check").fetchone()
        executions = None
        with contextlib.suppress(sqlite3.Error):  # Temporal's schema, best effort
            executions = target.execute("select count(*) from executions").fetchone()[0]
    finally:
        target.close()
        source.close()
    if not check or check[0] != "ok":
        tmp.unlink(missing_ok=True)
        raise BackupError(f"the copy of {src.name} failed SQLite's integrity check: {check}")
    tmp.replace(dst)
    return {"integrity_check": "ok", "executions": executions}


def default_output(cfg: StackConfig) -> Path:
    return cfg.run_dir / "backups" / f"backup-{datetime.now(UTC):%Y%m%d-%H%M%S}"


# ---------------------------------------------------------------------------------------
# Backup
# ---------------------------------------------------------------------------------------


def backup(settings: Settings, output: Path | None = None) -> dict[str, Any]:
    """Copy the embedded stack's Temporal state, then dump its database; the manifest."""
    cfg = stack_services.stack_config(settings)
    if not cfg.temporal_db.is_file():
        raise BackupError(f"no Temporal state at {cfg.temporal_db}; has the stack been started?")
    if not stack.process_status(cfg, POSTGRES).running:
        raise BackupError(
            "PostgreSQL is not running (pg_dump needs it); start the stack first: "
            "python scripts/cli.py start"
        )
    out = (output or default_output(cfg)).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; choose a new folder with --output")
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    # Temporal first: see the module docstring for why the order matters.
    temporal = _sqlite_snapshot(cfg.temporal_db, out / TEMPORAL_FILE)
    temporal_done = datetime.now(UTC)
    dump_tmp = out / (DB_DUMP + ".partial")
    rows = _dump_database(cfg, dump_tmp)
    dump_tmp.replace(out / DB_DUMP)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "temporal_copied_at": temporal_done.isoformat(timespec="seconds"),
        "source_run_dir": str(cfg.run_dir),
        "temporal_namespace": cfg.temporal_namespace,
        "database": {"name": cfg.pg_db, "user": cfg.pg_user, "rows": rows},
        "temporal": temporal,
        "files": {
            name: {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
            for name in (TEMPORAL_FILE, DB_DUMP)
        },
        "seconds": round(time.monotonic() - began, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    manifest["path"] = str(out)
    return manifest


# ---------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The backup's manifest, after checking every file against its checksum."""
    path = folder / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{folder} is not a backup (no {MANIFEST})") from None
    except ValueError as err:
        raise BackupError(f"{path} is not valid JSON: {err}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: unsupported backup format {manifest.get('format')!r}")
    for name, meta in (manifest.get("files") or {}).items():
        file = folder / name
        if not file.is_file():
            raise BackupError(f"{file} is missing")
        if _sha256(file) != meta.get("sha256"):
            raise BackupError(f"{file} does not match its checksum in {MANIFEST} (corrupt copy?)")
    return manifest


def restore(settings: Settings, folder: Path, *, force: bool = False) -> list[str]:
    """Load a backup into the embedded stack of `settings` (which must be stopped)."""
    cfg = stack_services.stack_config(settings)
    folder = folder.expanduser().resolve()
    manifest = read_manifest(folder)
    busy = [
        n
        for n in stack_services.ALL_SERVICES
        if n != POSTGRES and stack.process_status(cfg, n).running
    ]
    if busy:
        raise BackupError(
            f"stop the stack first ({', '.join(busy)} running): restore replaces Temporal's "
            "database file, which must not be open. python scripts/cli.py stop"
        )
    has_temporal = cfg.temporal_db.exists()
    if has_temporal and not force:
        raise BackupError(
            f"{cfg.temporal_db} already exists: restore into a fresh RUN_DIR, or pass --force "
            "to replace this stack's state (the old files are kept beside it)"
        )
    messages: list[str] = []
    started_pg = not stack.process_status(cfg, POSTGRES).running
    if started_pg:
        messages.append(stack.start_postgres(cfg))
    try:
        rows = _db_counts(cfg)
        if rows and any(rows.values()) and not force:
            raise BackupError(
                f"database {cfg.pg_db} already holds {rows['orders']} orders: restore into a "
                "fresh RUN_DIR, or pass --force to replace them"
            )
        began = time.monotonic()
        run_tool(
            [
                str(stack.postgres_bin_dir() / "pg_restore"),
                *_pg_conn_args(cfg),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                str(folder / DB_DUMP),
            ],
            _pg_env(cfg),
            timeout=600,
        )
        restored = _db_counts(cfg) or {}
        messages.append(
            f"database: {restored.get('orders', 0)} orders, {restored.get('payments', 0)} "
            f"payments, {restored.get('events', 0)} events restored in "
            f"{time.monotonic() - began:.1f}s"
        )
        expected = (manifest.get("database") or {}).get("rows")
        if expected and restored != expected:
            raise BackupError(f"restored row counts {restored} differ from the backup's {expected}")
    finally:
        if started_pg:
            messages.append(stack.stop_postgres(cfg))
    messages.append(_put_temporal_db(cfg, folder / TEMPORAL_FILE, replace=has_temporal))
    return messages


def _put_temporal_db(cfg: StackConfig, source: Path, *, replace: bool) -> str:
    cfg.temporal_dir.mkdir(parents=True, exist_ok=True)
    note = ""
    if replace:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        # The -wal/-shm files belong to the old database: left beside the new one, SQLite
        # would replay the old WAL into it.
        for suffix in ("", "-wal", "-shm"):
            old = cfg.temporal_db.with_name(cfg.temporal_db.name + suffix)
            if old.exists():
                old.replace(old.with_name(f"{old.name}.replaced-{stamp}"))
        note = f" (previous state kept as {cfg.temporal_db.name}.replaced-{stamp})"
    tmp = cfg.temporal_db.with_name(cfg.temporal_db.name + ".restoring")
    shutil.copyfile(source, tmp)
    tmp.replace(cfg.temporal_db)
    return f"temporal: state restored to {cfg.temporal_db}{note}"
