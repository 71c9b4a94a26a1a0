"""Backup and restore of the embedded stack (`cli.py backup`, `cli.py restore`), and the
Temporal namespace's retention (`cli.py retention`, TEMPORAL_NAMESPACE_RETENTION).

A backup is a folder:

    manifest.json   what was copied, when, from which stack, with sha256 of each file
    temporal.db     the dev server's SQLite state (histories, timers, task queues)
    app.dump        the application database (orders, payments, events), pg_dump -Fc
    gateway.dump    the payment gateway simulator's ledger (database `gateway`), pg_dump -Fc
    carrier.dump    the carrier simulator's ledger (database `carrier`), pg_dump -Fc

The two ledgers live on the embedded stack's PostgreSQL, so they are backed up with it: a
restored stack whose gateway had forgotten its charges would hold payments nobody took. In
production they are the providers' own systems, not ours to back up or restore.

Consistency. The SQLite file is copied with SQLite's online backup API in one step: one
read transaction, so the copy is the database as of one instant, WAL included, while the
dev server keeps running (a plain file copy of a WAL-mode database can tear). Each copy is
taken after everything that refers to it: Temporal first, then the application database,
then the providers' ledgers. So the database is never older than the histories, and the
ledgers never older than the database: after a restore, a workflow may re-run an activity
that finished between two copies, and every activity is idempotent (the gateway and the
carrier answer a repeated key with what they did the first time; our rows are keyed on the
payment id and the tracking number). The opposite order would leave histories that point
at rows the database lost, or payments whose charge the gateway never heard of.

Restore goes into a stopped stack (normally a fresh RUN_DIR): the SQLite file is put in
place while no dev server has it open, and the dumps are loaded with pg_restore into the
embedded PostgreSQL (started for the purpose and stopped again). Then `cli.py start`, with
the settings the restore was given (`start_command` prints it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.platform.settings import CARRIER_DB, GATEWAY_DB
from devstack.stack.addresses import move_postgres_if_taken, stack_config
from devstack.stack.app_processes import ALL_SERVICES
from devstack.stack.config import POSTGRES, StackConfig, StackSettings, postgres_bin_dir
from devstack.stack.postgres import start_postgres, stop_postgres
from devstack.stack.processes import process_status
from devstack.tools import ToolError, run_tool

MANIFEST = "manifest.json"
DB_DUMP = "app.dump"
TEMPORAL_FILE = "temporal.db"
# The provider simulators' databases and their dumps, dumped in this order after ours.
LEDGERS: dict[str, str] = {GATEWAY_DB: "gateway.dump", CARRIER_DB: "carrier.dump"}
# 2: with the ledgers. A format 1 backup (temporal.db and app.dump) is still restored.
FORMAT = 2
READABLE_FORMATS = (1, 2)


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


def _pg_conn_args(cfg: StackConfig, database: str) -> list[str]:
    return ["-h", cfg.host, "-p", str(cfg.postgres_port), "-U", cfg.pg_user, "-d", database]


_TABLES = ("orders", "payments", "events")


async def _connect(cfg: StackConfig, database: str) -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(
            host=cfg.host,
            port=cfg.postgres_port,
            user=cfg.pg_user,
            password=cfg.pg_password,
            database=database,
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


async def _ledger_counts(conn: Any) -> dict[str, int]:
    """Rows per table of a provider's ledger (whatever tables it has; none before its
    simulator first ran)."""
    names = await conn.fetch(
        "select tablename from pg_tables where schemaname = 'public' order by tablename"
    )
    counts: dict[str, int] = {}
    for record in names:
        name = str(record["tablename"])
        quoted = '"' + name.replace('"', '""') + '"'
        counts[name] = int(await conn.fetchval(f"select count(*) from public.{quoted}"))
    return counts


Counter = Callable[[Any], Awaitable[Any]]


def _db_counts(cfg: StackConfig, database: str, count: Counter) -> Any:
    async def run() -> Any:
        conn = await _connect(cfg, database)
        try:
            return await count(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def _dump_database(cfg: StackConfig, database: str, target: Path, count: Counter) -> Any:
    """pg_dump -Fc of one database, and its row counts, from one snapshot.

    The counts are read in a repeatable-read transaction whose snapshot pg_dump imports
    (--snapshot), so they describe exactly what the dump holds while orders keep arriving.
    """

    async def run() -> Any:
        conn = await _connect(cfg, database)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await conn.fetchval("select pg_export_snapshot()")
                rows = await count(conn)
                proc = await asyncio.create_subprocess_exec(
                    str(postgres_bin_dir() / "pg_dump"),
                    *_pg_conn_args(cfg, database),
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
                    raise BackupError(f"pg_dump of {database} timed out after 600s") from None
                if proc.returncode != 0:
                    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
                    raise BackupError(
                        f"pg_dump of {database} failed (exit {proc.returncode}): "
                        + (lines[0].strip() if lines else "no output")
                    )
                return rows
        finally:
            await conn.close()

    return asyncio.run(run())


def _dump_to(cfg: StackConfig, database: str, out: Path, name: str, count: Counter) -> Any:
    partial = out / (name + ".partial")
    rows = _dump_database(cfg, database, partial, count)
    partial.replace(out / name)
    return rows


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


def backup(settings: StackSettings, output: Path | None = None) -> dict[str, Any]:
    """Copy the embedded stack's Temporal state, then dump its database, then the providers'
    ledgers; the manifest."""
    cfg = stack_config(settings)
    if not cfg.temporal_db.is_file():
        raise BackupError(f"no Temporal state at {cfg.temporal_db}; has the stack been started?")
    if not process_status(cfg, POSTGRES).running:
        raise BackupError(
            "PostgreSQL is not running (pg_dump needs it); start the stack first: "
            "python scripts/cli.py start"
        )
    out = (output or default_output(cfg)).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; choose a new folder with --output")
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    # Temporal, ours, then the providers': see the module docstring for why the order matters.
    temporal = _sqlite_snapshot(cfg.temporal_db, out / TEMPORAL_FILE)
    temporal_done = datetime.now(UTC)
    rows = _dump_to(cfg, cfg.pg_db, out, DB_DUMP, _counts)
    ledgers = {
        name: {"file": file, "rows": _dump_to(cfg, name, out, file, _ledger_counts)}
        for name, file in LEDGERS.items()
    }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "temporal_copied_at": temporal_done.isoformat(timespec="seconds"),
        "source_run_dir": str(cfg.run_dir),
        "temporal_namespace": cfg.temporal_namespace,
        "database": {"name": cfg.pg_db, "user": cfg.pg_user, "rows": rows},
        "ledgers": ledgers,
        "temporal": temporal,
        "files": {
            name: {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
            for name in (TEMPORAL_FILE, DB_DUMP, *LEDGERS.values())
        },
        "seconds": round(time.monotonic() - began, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    manifest["path"] = str(out)
    return manifest


def ledger_summary(rows: Mapping[str, int] | None) -> str:
    """A ledger's row counts in words: "2 charges, 1 refunds, ..." (no tables: "empty")."""
    return ", ".join(f"{count} {table}" for table, count in (rows or {}).items()) or "empty"


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
    if manifest.get("format") not in READABLE_FORMATS:
        raise BackupError(f"{path}: unsupported backup format {manifest.get('format')!r}")
    for name, meta in (manifest.get("files") or {}).items():
        file = folder / name
        if not file.is_file():
            raise BackupError(f"{file} is missing")
        if _sha256(file) != meta.get("sha256"):
            raise BackupError(f"{file} does not match its checksum in {MANIFEST} (corrupt copy?)")
    return manifest


def _backup_ledgers(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ledgers a backup holds, by database ({} in a format 1 backup)."""
    ledgers = manifest.get("ledgers") or {}
    files = manifest.get("files") or {}
    for name, meta in ledgers.items():
        if name not in LEDGERS or meta.get("file") not in files:
            raise BackupError(f"{MANIFEST}: unknown ledger {name!r} or its dump is not listed")
    return dict(ledgers)


def _pg_restore(cfg: StackConfig, database: str, dump: Path) -> None:
    run_tool(
        [
            str(postgres_bin_dir() / "pg_restore"),
            *_pg_conn_args(cfg, database),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            str(dump),
        ],
        _pg_env(cfg),
        timeout=600,
    )


def _refuse_data(cfg: StackConfig, ledgers: Mapping[str, Any]) -> None:
    """Without --force, restore only into databases that hold nothing yet."""
    rows = _db_counts(cfg, cfg.pg_db, _counts)
    if rows and any(rows.values()):
        raise BackupError(
            f"database {cfg.pg_db} already holds {rows['orders']} orders: restore into a "
            "fresh RUN_DIR, or pass --force to replace them"
        )
    for name in ledgers:
        held = sum(_db_counts(cfg, name, _ledger_counts).values())
        if held:
            raise BackupError(
                f"database {name} (a provider's ledger) already holds {held} rows: restore "
                "into a fresh RUN_DIR, or pass --force to replace them"
            )


def restore(settings: StackSettings, folder: Path, *, force: bool = False) -> list[str]:
    """Load a backup into the embedded stack of `settings` (which must be stopped)."""
    cfg = stack_config(settings)
    folder = folder.expanduser().resolve()
    manifest = read_manifest(folder)
    ledgers = _backup_ledgers(manifest)
    busy = [n for n in ALL_SERVICES if n != POSTGRES and process_status(cfg, n).running]
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
    started_pg = not process_status(cfg, POSTGRES).running
    if started_pg:
        # Only for the restore: a port it moves to is not kept (the start picks its own).
        moved = move_postgres_if_taken(settings, cfg)
        if moved:
            messages.append(moved)
        messages.append(start_postgres(cfg))
    try:
        if not force:
            _refuse_data(cfg, ledgers)
        began = time.monotonic()
        _pg_restore(cfg, cfg.pg_db, folder / DB_DUMP)
        restored = _db_counts(cfg, cfg.pg_db, _counts) or {}
        messages.append(
            f"database: {restored.get('orders', 0)} orders, {restored.get('payments', 0)} "
            f"payments, {restored.get('events', 0)} events restored in "
            f"{time.monotonic() - began:.1f}s"
        )
        expected = (manifest.get("database") or {}).get("rows")
        if expected and restored != expected:
            raise BackupError(f"restored row counts {restored} differ from the backup's {expected}")
        for name, meta in ledgers.items():
            _pg_restore(cfg, name, folder / meta["file"])
            rows = _db_counts(cfg, name, _ledger_counts)
            if rows != (meta.get("rows") or {}):
                raise BackupError(
                    f"restored {name} row counts {rows} differ from the backup's {meta['rows']}"
                )
            messages.append(f"{name} ledger: {ledger_summary(rows)} restored")
        if not ledgers:
            messages.append(
                "ledgers: not in this backup (format 1); the gateway's and carrier's "
                "databases were left as they are"
            )
    finally:
        if started_pg:
            messages.append(stop_postgres(cfg))
    messages.append(_put_temporal_db(cfg, folder / TEMPORAL_FILE, replace=has_temporal))
    return messages


# The settings that say which embedded stack a command is about. A restore into another
# RUN_DIR (on ports of its own) is started with the same ones.
STACK_LOCATION = (
    "RUN_DIR",
    "POSTGRES_PORT",
    "TEMPORAL_PORT",
    "TEMPORAL_UI_PORT",
    "API_HOST",
    "API_PORT",
    "WORKER_METRICS_PORT",
)


def start_command(settings: StackSettings, environ: Mapping[str, str] | None = None) -> str:
    """`python scripts/cli.py start` for the stack of `settings`, as a shell line that works
    as printed: with RUN_DIR when it is not the default, and the stack's ports that came from
    the environment (a .env is read again by the command itself)."""
    given = {key.upper() for key in (os.environ if environ is None else environ)}
    run_dir = Path(settings.run_dir).expanduser().resolve()
    default_run_dir = Path(type(settings).model_fields["run_dir"].default).resolve()
    words: list[str] = []
    for name in STACK_LOCATION:
        if name == "RUN_DIR":
            if run_dir == default_run_dir:
                continue
            value = str(run_dir)
        elif name in given:
            value = str(getattr(settings, name.lower()))
        else:
            continue
        words.append(f"{name}={shlex.quote(value)}")
    return " ".join([*words, "python scripts/cli.py start"])


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
