"""The Kubernetes-style probes, /health/live and /health/ready, against real servers.

Ready follows each of its checks: the session's Temporal, a private PostgreSQL this module
starts and stops (the session's one is shared with other tests), and the migrations of a
scratch database on the session's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.api.app import create_app
from app.api.routes import health
from app.platform.migrate import Revisions, script_revisions, upgrade
from app.platform.settings import PROJECT_ROOT, Settings
from devstack import stack
from tests.helpers import RealStack, serving
from tests.ports import free_port

pytestmark = pytest.mark.integration

KEY = "probe-0123456789"
CHECKS = {"temporal", "database", "migrations"}
# What a failed check may say: an exception's class name, or one of the fixed phrases.
CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FIXED_ERRORS = {
    health.NOT_MIGRATED,
    health.BEHIND_HEAD,
    health.UNKNOWN_REVISION,
    f"no answer within {health.CHECK_TIMEOUT_S:g}s",
}


def with_database(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


def checks_of(r: httpx.Response, status: int) -> dict[str, dict[str, Any]]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == ("ok" if status == 200 else "unavailable"), body
    checks: dict[str, dict[str, Any]] = body["checks"]
    assert set(checks) == CHECKS, body
    for name, check in checks.items():
        if check["status"] == "up":
            assert check["error"] is None and check["latency_ms"] >= 0, (name, check)
        else:
            assert check["status"] == "down", (name, check)
            error = check["error"]
            assert error in FIXED_ERRORS or CLASS_NAME.fullmatch(error), (name, error)
    return checks


def assert_no_secrets(r: httpx.Response, database_url: str) -> None:
    url = make_url(database_url)
    assert url.host and url.host not in r.text, r.text
    assert str(url.port) not in r.text, r.text
    assert f":{url.password}@" not in r.text and database_url not in r.text, r.text


async def test_probes_up_open_and_documented(real_stack: RealStack) -> None:
    keyed = real_stack.settings.model_copy(update={"api_keys": SecretStr(f"ops:{KEY}:admin")})
    async with serving(keyed) as api:
        # Auth is on (an order read without a key is refused), the probes answer anyway.
        assert (await api.get("/orders")).status_code == 401
        r = await api.get("/health/live")
        assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
        checks = checks_of(await api.get("/health/ready"), 200)
        assert {c["status"] for c in checks.values()} == {"up"}
        # /health is unchanged beside them.
        r = await api.get("/health")
        assert r.status_code == 200 and set(r.json()["dependencies"]) == {"temporal", "database"}

        spec = (await api.get("/openapi.json")).json()
    live_op = spec["paths"]["/health/live"]["get"]
    ready_op = spec["paths"]["/health/ready"]["get"]
    for op in (live_op, ready_op, spec["paths"]["/health"]["get"]):
        assert "security" not in op, op

    def ref(op: dict[str, Any], status: str) -> str:
        ref: str = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        return ref

    assert ref(live_op, "200") == "#/components/schemas/LiveResponse"
    assert ref(ready_op, "200") == ref(ready_op, "503") == "#/components/schemas/ReadyResponse"
    schemas = spec["components"]["schemas"]
    assert set(schemas["ReadyChecks"]["required"]) == CHECKS
    assert schemas["ReadyResponse"]["examples"]


async def test_ready_is_503_before_the_app_connects(real_stack: RealStack) -> None:
    app = create_app(real_stack.settings)  # lifespan not started: no client, no engine
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as api:
        checks = checks_of(await api.get("/health/ready"), 503)
        assert {c["status"] for c in checks.values()} == {"down"}
        assert (await api.get("/health/live")).status_code == 200


# --- PostgreSQL stopped ----------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[stack.StackConfig]:
    """A migrated PostgreSQL of this test's own, free to stop."""
    # Under the project's .run: the postgres system user must reach the data directory.
    run_dir = PROJECT_ROOT / ".run" / f"probes-{uuid.uuid4().hex[:8]}"
    cfg = stack.StackConfig(run_dir=run_dir, postgres_port=free_port(), headless=True)
    try:
        stack.start_postgres(cfg)
        upgrade(stack.database_url(cfg))
        yield cfg
    finally:
        stack.stop_all(cfg, [stack.POSTGRES])
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_ready_follows_postgres_going_down(
    real_stack: RealStack, private_postgres: stack.StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each probe runs its checks (they are shared for a second: tests/api/test_hostile.py).
    monkeypatch.setattr(health, "PROBE_CACHE_S", 0.0)
    url = stack.database_url(private_postgres)
    async with serving(with_database(real_stack.settings, url)) as api:
        checks = checks_of(await api.get("/health/ready"), 200)
        assert {c["status"] for c in checks.values()} == {"up"}

        stopped = await asyncio.to_thread(stack.stop_process, private_postgres, stack.POSTGRES)
        assert "stopped" in stopped, stopped

        r = await api.get("/health/ready")
        checks = checks_of(r, 503)
        assert checks["temporal"]["status"] == "up"
        assert checks["database"]["status"] == "down"
        assert checks["migrations"]["status"] == "down"
        assert_no_secrets(r, url)
        r = await api.get("/health/live")
        assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text


# --- migrations not at head ------------------------------------------------------------


@pytest.fixture
async def scratch_url(real_stack: RealStack) -> AsyncIterator[str]:
    """A fresh, unmigrated database on the session's PostgreSQL."""
    name = f"probes_{uuid.uuid4().hex[:10]}"
    base = real_stack.settings.database_url_plain
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_ready_needs_migrations_at_head(
    real_stack: RealStack, scratch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "PROBE_CACHE_S", 0.0)
    async with serving(with_database(real_stack.settings, scratch_url)) as api:
        r = await api.get("/health/ready")
        checks = checks_of(r, 503)
        assert checks["migrations"]["error"] == health.NOT_MIGRATED
        assert checks["temporal"]["status"] == checks["database"]["status"] == "up"
        assert_no_secrets(r, scratch_url)

        # Alembic's env runs its own event loop: give it a thread without one.
        await asyncio.to_thread(upgrade, scratch_url)
        checks_of(await api.get("/health/ready"), 200)

        # This build's scripts ending one migration later: the database is behind.
        ours = script_revisions()
        newer = Revisions(heads=frozenset({"9999_next"}), known=ours.known | {"9999_next"})
        with monkeypatch.context() as patch:
            patch.setattr(health, "script_revisions", lambda: newer)
            checks = checks_of(await api.get("/health/ready"), 503)
            assert checks["migrations"]["error"] == health.BEHIND_HEAD
            assert checks["database"]["status"] == "up"

        # A revision this build does not know (a newer release migrated the database).
        db = create_async_engine(scratch_url)
        try:
            async with db.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_newer'"))
        finally:
            await db.dispose()
        checks = checks_of(await api.get("/health/ready"), 503)
        assert checks["migrations"]["error"] == health.UNKNOWN_REVISION
        assert (await api.get("/health/live")).status_code == 200
