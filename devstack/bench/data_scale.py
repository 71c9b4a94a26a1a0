"""`cli.py bench --data-scale N`: the operator's endpoints on a database a year in.

Seeds N closed orders (one payment each, ten events each, created over 30 days) with
`generate_series` into a scratch database beside the stack's (`bench_scale`, dropped
first; never the operator's own), then serves the API in-process against it (the
same FastAPI app, no socket: loopback only by construction) and times each operator read
REPEATS times: p50 and p99. The rows are inserted with the triggers off and the statistics
rebuilt once (`stats_rebuild()`, as the migration's backfill does), then a few open orders
in review are written with the triggers on.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psutil
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.platform.migrate import upgrade
from app.platform.settings import Settings
from devstack.bench.measure import BenchError, Progress, api_headers

SCRATCH_DB = "bench_scale"
MAX_ORDERS = 2_000_000
REPEATS = 30
EVENTS_PER_ORDER = 10
IN_REVIEW = 40
DAYS = 30
DASHBOARD_POLL_S = 2.0  # the console's POLL_MS

# Ten events per closed order: the steps, a failed attempt of PAY and of SHIP, the outcome.
_SEED_ORDERS = """
INSERT INTO orders (id, state, created_at, updated_at, step, workflow_id, payment_id, amount,
                    reason, deadline_at, closed_at, settled_at)
SELECT 'bench-' || lpad(g::text, 8, '0'),
       CASE WHEN g % 10 < 8 THEN 'COMPLETED' WHEN g % 10 = 8 THEN 'CANCELLED' ELSE 'FAILED' END,
       t.at, t.at + interval '10 seconds',
       CASE WHEN g % 10 < 8 THEN 'SHIP' WHEN g % 10 = 8 THEN 'MANUAL_REVIEW' ELSE 'PAY' END,
       'order-bench-' || lpad(g::text, 8, '0'), 'pay-bench-' || g, 19.99,
       CASE g % 10 WHEN 8 THEN 'review_timeout' WHEN 9 THEN 'payment_declined' END,
       t.at + interval '60 seconds', t.at + (3 + g % 20) * interval '1 second',
       t.at + (3 + g % 20) * interval '1 second'
FROM generate_series(1, :n) g,
     LATERAL (SELECT CAST(:start AS timestamp) + (g::bigint * :span / :n) * interval '1 second' AS at) t
"""
_SEED_PAYMENTS = """
INSERT INTO payments (payment_id, order_id, status, amount, created_at)
SELECT 'pay-bench-' || g, 'bench-' || lpad(g::text, 8, '0'),
       CASE WHEN g % 10 < 8 THEN 'charged' ELSE 'refunded' END, 19.99,
       CAST(:start AS timestamp) + (g::bigint * :span / :n) * interval '1 second' + interval '2 seconds'
FROM generate_series(1, :n) g
"""
_SEED_EVENTS = """
INSERT INTO events (order_id, type, payload_json, ts)
SELECT 'bench-' || lpad(g::text, 8, '0'),
       CASE WHEN e.type = 'END' THEN
           CASE WHEN g % 10 < 8 THEN 'COMPLETED' WHEN g % 10 = 8 THEN 'CANCELLED' ELSE 'FAILED' END
       ELSE e.type END,
       e.payload,
       CAST(:start AS timestamp) + (g::bigint * :span / :n) * interval '1 second'
           + CASE WHEN e.type = 'END' THEN 3 + g % 20 ELSE e.after END * interval '1 second'
FROM generate_series(1, :n) g,
     (VALUES ('RECEIVED', 0.0, '{}'::jsonb), ('VALIDATED', 0.3, '{}'), ('APPROVED', 0.8, '{}'),
             ('STEP_ATTEMPT_FAILED', 1.0, '{"step": "PAY", "kind": "timeout"}'),
             ('PAYMENT_CHARGED', 1.5, '{"payment_id": "p"}'),
             ('STEP_ATTEMPT_FAILED', 1.8, '{"step": "SHIP", "kind": "SimulatedFailure"}'),
             ('PACKAGE_PREPARED', 2.0, '{}'), ('DISPATCHED', 2.5, '{}'),
             ('ADDRESS_UPDATED', 0.5, '{}'), ('END', 0, '{}')) AS e(type, after, payload)
"""
_SEED_REVIEW = """
INSERT INTO orders (id, state, step, created_at, updated_at, deadline_at)
SELECT 'bench-review-' || g, 'VALIDATED', 'MANUAL_REVIEW', now() - g * interval '1 second',
       now(), now() + (60 - g) * interval '1 second'
FROM generate_series(1, :k) g
"""


async def _recreate(admin: AsyncEngine) -> None:
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{SCRATCH_DB}"'))


async def seed(url: str, orders: int, progress: Progress | None) -> dict[str, float]:
    """Fill the scratch database; seconds per phase."""
    say = progress or (lambda _m: None)
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    span = DAYS * 86400
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=DAYS, minutes=10)
    params = {"n": orders, "start": start, "span": span}
    took: dict[str, float] = {}
    try:
        async with engine.connect() as conn:
            # Bulk rows without the per-row statistics triggers (needs a superuser, which
            # the embedded stack's role is); the statistics are rebuilt once below.
            await conn.execute(text("SET session_replication_role = replica"))
            for name, sql in (
                ("orders", _SEED_ORDERS),
                ("payments", _SEED_PAYMENTS),
                ("events", _SEED_EVENTS),
            ):
                say(f"seeding {name} ...")
                began = time.perf_counter()
                await conn.execute(text(sql), params)
                took[f"seed_{name}_s"] = round(time.perf_counter() - began, 1)
            await conn.execute(text("SET session_replication_role = origin"))
            say("rebuilding statistics and analyzing ...")
            began = time.perf_counter()
            await conn.execute(text("SELECT stats_rebuild()"))
            await conn.execute(text("SELECT stats_spans_rebuild()"))
            await conn.execute(text("ANALYZE"))
            took["stats_rebuild_s"] = round(time.perf_counter() - began, 1)
            await conn.execute(text(_SEED_REVIEW), {"k": IN_REVIEW})
    finally:
        await engine.dispose()
    return took


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2), "p99_ms": round(p99 * 1000, 2)}


async def _timed(call: Callable[[], Awaitable[httpx.Response]]) -> dict[str, float]:
    await call()  # warm: the pool's connection and its prepared statement
    samples = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        response = await call()
        samples.append(time.perf_counter() - began)
        if response.status_code != 200:
            raise BenchError(f"{response.request.url}: HTTP {response.status_code}")
    return _ms(samples)


def _requests(orders: int) -> dict[str, str]:
    deep = "bench-" + str(max(1, orders // 10)).rjust(8, "0")  # 90% down the newest-first list
    return {
        "GET /stats": "/stats",
        "GET /stats?window=24h": "/stats?window=24h",
        "GET /orders?limit=20": "/orders?limit=20",
        "GET /orders?state=FAILED&limit=20": "/orders?state=FAILED&limit=20",
        "GET /orders?step=PAY&limit=20": "/orders?step=PAY&limit=20",
        "GET /orders?reason=review_timeout&limit=20": "/orders?reason=review_timeout&limit=20",
        "GET /orders?payment_status=refunded&limit=20": "/orders?payment_status=refunded&limit=20",
        "GET /orders?created_after=...&limit=20": "/orders?created_after=2000-01-01T00:00:00Z"
        "&limit=20",
        "GET /orders?step=MANUAL_REVIEW (review queue)": "/orders?step=MANUAL_REVIEW&limit=20",
        "GET /orders?limit=20&offset=10000": "/orders?limit=20&offset=10000",
        "GET /orders?cursor=<90% deep>&limit=20": "CURSOR",
        "GET /orders/{id}/status (closed)": f"/orders/{deep}/status",
        "GET /orders/{id}/events": f"/orders/{deep}/events",
    }


async def measure(
    settings: Settings, url: str, orders: int
) -> tuple[dict[str, Any], dict[str, float]]:
    from app.api.app import create_app
    from app.platform.db import session_factory
    from app.service.listing import encode_cursor
    from app.service.stats import order_stats

    scratch = settings.model_copy(update={"database_url": type(settings.database_url)(url)})
    app = create_app(scratch)
    results: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = api_headers(settings, None)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers, timeout=60
        ) as http:
            engine = create_async_engine(url)
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text("SELECT created_at, id FROM orders WHERE id = :id"),
                        {"id": "bench-" + str(max(1, orders // 10)).rjust(8, "0")},
                    )
                ).one()
            cursor = encode_cursor(row.created_at, row.id)
            for name, path in _requests(orders).items():
                target = f"/orders?cursor={cursor}&limit=20" if path == "CURSOR" else path
                results[name] = await _timed(lambda t=target: http.get(t))  # type: ignore[misc]
            # What the dashboard's poll costs when the figures changed: no cache.
            sessions = session_factory(engine)
            for window in ("all", "24h", "1h"):
                samples = []
                await order_stats(sessions, window)
                for _ in range(REPEATS):
                    began = time.perf_counter()
                    await order_stats(sessions, window)
                    samples.append(time.perf_counter() - began)
                results[f"stats computed, window={window} (no cache)"] = _ms(samples)
            dashboard = await _dashboard_cost(sessions, order_stats)
            await engine.dispose()
    return results, dashboard


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process so far (backends come and go: sum them)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


async def _dashboard_cost(sessions: Any, order_stats: Any) -> dict[str, float]:
    """What one open dashboard costs the machine: the CPU of an uncached statistics read
    (this process, which serves the API here, plus PostgreSQL), at the console's poll
    interval, as a share of the machine's cores. Order throughput on this machine is bound
    by CPU, so that share is what the dashboard takes from it. Measured on the default
    window, figures changed between polls (no cache)."""
    await order_stats(sessions, "all")
    own, pg = time.process_time(), _postgres_cpu()
    for _ in range(REPEATS):
        await order_stats(sessions, "all")
    cpu_s = (time.process_time() - own + _postgres_cpu() - pg) / REPEATS
    cores = psutil.cpu_count() or 1
    return {
        "cpu_ms_per_poll": round(cpu_s * 1000, 2),
        "poll_interval_s": DASHBOARD_POLL_S,
        "share_of_machine_pct": round(100 * cpu_s / DASHBOARD_POLL_S / cores, 3),
    }


async def run_data_scale(
    settings: Settings, orders: int, progress: Progress | None = None
) -> dict[str, Any]:
    if not 1 <= orders <= MAX_ORDERS:
        raise BenchError(f"--data-scale must be from 1 to {MAX_ORDERS}")
    base = settings.database_url_plain
    url = make_url(base).set(database=SCRATCH_DB).render_as_string(hide_password=False)
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        await _recreate(admin)
    finally:
        await admin.dispose()
    # Alembic's env runs its own event loop: give it a thread without one.
    await asyncio.to_thread(upgrade, url)
    took = await seed(url, orders, progress)
    if progress:
        progress("measuring ...")
    figures, dashboard = await measure(settings, url, orders)
    return {
        "database": SCRATCH_DB,
        "orders": orders,
        "payments": orders,
        "events": orders * EVENTS_PER_ORDER,
        "in_review": IN_REVIEW,
        "repeats": REPEATS,
        "seeding": took,
        "endpoints": figures,
        "dashboard": dashboard,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def format_data_scale(result: dict[str, Any]) -> str:
    lines = [
        f"{result['orders']:,} closed orders, {result['payments']:,} payments, "
        f"{result['events']:,} events over {DAYS} days in database {result['database']} "
        f"({result['repeats']} calls each, in-process API)",
        f"{'request':<52} {'p50 ms':>9} {'p99 ms':>9}",
    ]
    dashboard = result["dashboard"]
    for name, fig in result["endpoints"].items():
        lines.append(f"{name:<52} {fig['p50_ms']:>9.2f} {fig['p99_ms']:>9.2f}")
    lines.append(
        f"one open dashboard: {dashboard['cpu_ms_per_poll']} ms CPU per poll every "
        f"{dashboard['poll_interval_s']:g} s = {dashboard['share_of_machine_pct']}% of "
        "the machine (the order throughput it can take)"
    )
    lines.append("seeding: " + ", ".join(f"{k} {v}" for k, v in result["seeding"].items()))
    return "\n".join(lines)


def run_data_scale_sync(
    settings: Settings, orders: int, progress: Progress | None = None
) -> dict[str, Any]:
    return asyncio.run(run_data_scale(settings, orders, progress))
