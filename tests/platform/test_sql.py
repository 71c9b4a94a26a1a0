"""Plain SQL on the driver (app/platform/sql.py): parameters, transactions, and a pool that
never hands out a connection a failure left broken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.platform.sql import driver, positional
from tests.helpers import Running, fixed_pool


@pytest.mark.unit
def test_named_parameters_become_positional_once_each() -> None:
    sql, names = positional("SELECT :a, :b, :a, CAST(:c AS jsonb), '{}'::jsonb, x::text")
    assert sql == "SELECT $1, $2, $1, CAST($3 AS jsonb), '{}'::jsonb, x::text"
    assert names == ("a", "b", "c")


@pytest.fixture
async def one_connection(running: Running) -> AsyncIterator[AsyncEngine]:
    """A pool of exactly one connection: whatever it hands out next is what the last
    caller gave back."""
    async with fixed_pool(running.settings, 1) as engine:
        yield engine


async def _backend_pid(engine: AsyncEngine) -> int:
    async with driver(engine) as db:
        pid: int = await db.value("SELECT pg_backend_pid()")
    return pid


@pytest.mark.integration
async def test_a_transaction_that_raises_commits_nothing_and_keeps_its_connection(
    one_connection: AsyncEngine,
) -> None:
    before = await _backend_pid(one_connection)
    with pytest.raises(ValueError):
        async with driver(one_connection) as db, db.transaction():
            await db.run("CREATE TEMP TABLE t_sql (x int)")
            await db.run("INSERT INTO t_sql VALUES (:x)", x=1)
            raise ValueError("refused")
    async with driver(one_connection) as db:
        assert await db.value("SELECT to_regclass('pg_temp.t_sql')") is None
    assert await _backend_pid(one_connection) == before


@pytest.mark.integration
async def test_a_statement_cut_off_by_a_cancel_never_returns_its_connection_to_the_pool(
    one_connection: AsyncEngine,
) -> None:
    """An activity's timeout cancels it mid-statement: the next caller gets a new,
    working connection, not one still busy with the old statement."""
    before = await _backend_pid(one_connection)

    async def sleeper() -> None:
        async with driver(one_connection) as db:
            await db.run("SELECT pg_sleep(5)")

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with driver(one_connection) as db:
        assert await db.value("SELECT 1 + :x", x=1) == 2
        assert await db.value("SELECT pg_backend_pid()") != before


@pytest.mark.integration
async def test_a_server_error_outside_a_transaction_leaves_the_connection_usable(
    one_connection: AsyncEngine,
) -> None:
    before = await _backend_pid(one_connection)
    with pytest.raises(asyncpg.PostgresError):
        async with driver(one_connection) as db:
            await db.run("SELECT 1 / :zero", zero=0)
    assert await _backend_pid(one_connection) == before
