"""`cli.py bench --soak`: is the order system flat over a long run?

The orders side only (no baseline, no status phase), run in four equal quarters back to
back. Per quarter: throughput, latency, the CPU an order cost each process of the stack,
and the resident memory of the workers and the API at its end. Over the run: how much the app's, the providers' and the dev server's
databases grew, per 1,000 orders. A leak or a table that slows as it grows shows as a last
quarter slower or bigger than the first.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.platform.settings import CARRIER_DB, GATEWAY_DB
from devstack.bench.measure import (
    BenchError,
    PhaseResult,
    Progress,
    api_headers,
    api_url_for,
    closed_loop,
    discover_processes,
    percentile,
    rounded,
    worker_pids,
)
from devstack.bench.phases import OrdersPhase
from devstack.bench.run import check_api, code_version, connect_temporal, machine_info
from devstack.stack.addresses import stack_config
from devstack.stack.config import StackSettings
from devstack.sync import run_sync

QUARTERS = 4


async def run_soak(
    settings: StackSettings,
    *,
    orders: int = 3000,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> dict[str, Any]:
    if orders < QUARTERS or concurrency < 1:
        raise BenchError(f"a soak needs at least {QUARTERS} orders and a concurrency of 1")
    say = progress or (lambda _msg: None)
    base_url = api_url_for(settings).rstrip("/")
    procs = discover_processes(settings)
    watched = {"worker": worker_pids(procs), "api": list(procs.get("app", []))}
    client = await connect_temporal(settings)
    sizes_before = await database_sizes(settings)
    quarters: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=api_headers(settings, None), limits=limits, timeout=60.0
    ) as http:
        await check_api(http, base_url)
        runner = OrdersPhase(http, client, uuid.uuid4().hex[:8], "signal", "off")
        first = 0
        for index, count in enumerate(_split(orders), start=1):
            part = await closed_loop(
                runner.one, count, concurrency, first_index=first, cpu_groups=procs
            )
            first += count
            quarters.append(_quarter(index, part, watched))
            say(f"quarter {index}: {part.completed} at {part.per_s:.1f}/s")
    sizes_after = await database_sizes(settings)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "soak",
        "orders": orders,
        "concurrency": concurrency,
        "machine": machine_info(),
        "code": code_version(),
        "quarters": quarters,
        **flatness(quarters),
        "db_mb_per_1000_orders": {
            name: rounded((sizes_after[name] - sizes_before[name]) / orders * 1000, 2)
            for name in sizes_after
        },
        "db_mb_after": {name: rounded(mb, 1) for name, mb in sizes_after.items()},
        "failed_orders": sum(q["failed"] for q in quarters),
    }


def _split(orders: int) -> list[int]:
    return [orders // QUARTERS + (1 if i < orders % QUARTERS else 0) for i in range(QUARTERS)]


def _quarter(index: int, part: PhaseResult, watched: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    return {
        "quarter": index,
        "completed": part.completed,
        "failed": len(part.failures),
        "per_s": rounded(part.per_s, 2),
        "p50_ms": rounded(percentile(part.latencies_ms, 50)),
        "p99_ms": rounded(percentile(part.latencies_ms, 99)),
        # Now, not the peak: growth from quarter to quarter is the question.
        "rss_mb": {name: rounded(_rss_mb(pids)) for name, pids in watched.items()},
        # Which process an order costs more as the databases grow.
        "cpu_ms_per_order": part.summary()["cpu_ms_per_order"],
    }


def _rss_mb(pids: Sequence[int]) -> float:
    """The largest of the processes (each worker on its own: one leaking is the finding)."""
    sizes = [0.0]
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            sizes.append(psutil.Process(pid).memory_info().rss / 2**20)
    return max(sizes)


def flatness(quarters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last quarter against the first: throughput and p99 change (%), RSS growth (MB)."""
    first, last = quarters[0], quarters[-1]

    def change(key: str) -> float | None:
        return rounded((last[key] - first[key]) / first[key] * 100, 1) if first[key] else None

    return {
        "throughput_change_pct": change("per_s"),
        "p99_change_pct": change("p99_ms"),
        "rss_growth_mb": {
            name: rounded(last["rss_mb"][name] - first["rss_mb"][name]) for name in first["rss_mb"]
        },
    }


async def database_sizes(settings: StackSettings) -> dict[str, float]:
    """MB on disk: the app's, the gateway's and the carrier's databases, and the dev
    server's SQLite file (with its write-ahead log)."""
    url = make_url(settings.database_url_plain)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname = ANY(:n)"
                ),
                {"n": [url.database, GATEWAY_DB, CARRIER_DB]},
            )
            found = {name: size / 2**20 for name, size in rows.all()}
    finally:
        await engine.dispose()
    names = {
        url.database: "postgres_app",
        GATEWAY_DB: "postgres_gateway",
        CARRIER_DB: "postgres_carrier",
    }
    sizes = {label: found.get(name, 0.0) for name, label in names.items()}
    db = Path(stack_config(settings).temporal_db)
    sizes["temporal_sqlite"] = (
        sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()) / 2**20
    )
    return sizes


def run_soak_sync(settings: StackSettings, **options: Any) -> dict[str, Any]:
    result: dict[str, Any] = run_sync(lambda: run_soak(settings, **options))
    return result


def format_soak(result: Mapping[str, Any]) -> str:
    lines = [
        f"{'quarter':<8} {'orders/s':>9} {'p50 ms':>8} {'p99 ms':>8}  RSS MB (worker, api)  "
        "CPU ms per order"
    ]
    for q in result["quarters"]:
        rss = q["rss_mb"]
        cpu = ", ".join(f"{k} {v}" for k, v in q.get("cpu_ms_per_order", {}).items())
        lines.append(
            f"{q['quarter']:<8} {q['per_s']:>9} {q['p50_ms']:>8} {q['p99_ms']:>8}  "
            f"{rss['worker']}, {rss['api']}  {cpu}"
        )
    lines += [
        f"last vs first quarter: throughput {result['throughput_change_pct']}%, "
        f"p99 {result['p99_change_pct']}%, RSS growth {result['rss_growth_mb']} MB",
        f"database growth per 1,000 orders (MB): {result['db_mb_per_1000_orders']}",
        f"failed orders: {result['failed_orders']}",
    ]
    return "\n".join(lines)
