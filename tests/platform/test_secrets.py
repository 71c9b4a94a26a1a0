"""Secrets never reach an error or a log line, whatever characters they hold (issue 24):
a database password full of %, @, : and / (percent-encoded in DATABASE_URL, as it must
be), refused by PostgreSQL, through the API's and the migration's failure paths."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.platform.settings import PROJECT_ROOT
from tests.helpers import RealStack, until_answering
from tests.ports import free_port

pytestmark = pytest.mark.integration

PASSWORD = "p@ss:w%rd/%40x"
ENCODED = "p%40ss%3Aw%25rd%2F%2540x"
# Any of these in a line gives the password away, or enough of it.
FRAGMENTS = (PASSWORD, ENCODED, "p@ss", "w%rd", "p%40ss", "w%25rd", "%2540x", "%40x")


def _url(stack: RealStack) -> str:
    url = make_url(stack.settings.database_url_plain)
    return f"postgresql+asyncpg://app:{ENCODED}@{url.host}:{url.port}/{url.database}"


def _env(stack: RealStack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DATABASE_"))}
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        DATABASE_URL=_url(stack),
        TEMPORAL_TARGET=stack.settings.temporal_target,
        LOG_LEVEL="DEBUG",
        **extra,
    )
    return env


def assert_clean(text: str) -> None:
    leaked = [f for f in FRAGMENTS if f in text]
    assert not leaked, f"{leaked} in:\n{text}"


def test_the_percent_encoded_url_is_what_postgres_is_given() -> None:
    assert make_url(f"postgresql+asyncpg://app:{ENCODED}@h/app").password == PASSWORD


@dataclass
class ApiRun:
    """What the API answered while its database refused the password, and what it logged."""

    answers: list[httpx.Response]
    output: str


async def _migration(stack: RealStack, folder: Path) -> tuple[int | None, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.platform.migrate",
        env=_env(stack),
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


async def _api(stack: RealStack, folder: Path, log_format: str) -> ApiRun:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.api",
        env=_env(stack, API_PORT=str(port), LOG_FORMAT=log_format),
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    answers = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            await until_answering(api, "/health/live")
            for method, path in [
                ("GET", "/orders"),
                ("GET", "/health/ready"),
                ("GET", "/stats"),
                ("GET", "/orders/o-1/status"),
                ("POST", "/orders/o-1/signals/cancel"),
            ]:
                answers.append(await api.request(method, path))
    finally:
        proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    return ApiRun(answers, out.decode() + err.decode())


LOG_FORMATS = ("json", "console")


@dataclass
class Runs:
    migration: tuple[int | None, str, str]
    api: dict[str, ApiRun]


@pytest.fixture(scope="module")
async def runs(real_stack: RealStack, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The migration and the API (in each log format) with the password PostgreSQL
    refuses, all at once: each process spends a second or two importing, on one core of
    two, and the tests below judge what each said."""
    migration, *apis = await asyncio.gather(
        _migration(real_stack, tmp_path_factory.mktemp("migrate")),
        *(_api(real_stack, tmp_path_factory.mktemp(f"api-{f}"), f) for f in LOG_FORMATS),
    )
    return Runs(migration, dict(zip(LOG_FORMATS, apis, strict=True)))


def test_a_failed_migration_says_why_without_the_password(runs: Runs) -> None:
    returncode, stdout, stderr = runs.migration
    assert returncode != 0
    assert_clean(stdout + stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "migration failed" in lines[0], stderr


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_the_api_logs_its_failures_without_the_password(runs: Runs, log_format: str) -> None:
    answers, text = runs.api[log_format].answers, runs.api[log_format].output
    assert {r.status_code for r in answers} == {503}, [r.text for r in answers]
    for r in answers:
        assert_clean(r.text)
    assert "database unavailable" in text or "dependency unavailable" in text, text
    assert_clean(text)
