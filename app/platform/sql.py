"""Plain SQL for the hot path, run straight on the driver (asyncpg) over the SQLAlchemy pool.

An order's steps run about twenty statements. Through an ORM Session each one costs
0.5-0.75 ms of CPU (session and pool bookkeeping, statement construction and cache keys,
the greenlet bridge); the same statement on the asyncpg connection underneath costs about
0.1 ms (docs/performance.md, round five). So the statements every order runs are written
as SQL with `:name` parameters and run through `Sql`:

- `driver(sessions)`: a connection of the same pool (its size, TLS and credentials are
  configured once), each statement committing on its own unless inside `transaction()`
  (`timed_driver` in app/platform/db.py measures it as a database operation);
- `on_session(session)`: the same SQL inside an ORM transaction, where a path needs both.

JSON parameters are passed as JSON text (`CAST(:x AS jsonb)`); JSON columns come back
decoded, as SQLAlchemy's connection codecs do. Everything off the hot path keeps the ORM.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

Row = Mapping[str, Any]

# `:name` where SQLAlchemy's text() sees one (SessionSql runs the same statements through
# it): not after a colon or a backslash, not followed by a colon (so `::type` casts are
# left alone, and `:x::type` is no parameter: write CAST(:x AS type)); `\:` is a colon.
_PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")
_ESCAPED_COLON = re.compile(r"\\(:[\w$]*)(?![:\w$])")


@functools.lru_cache(maxsize=512)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with `$1, $2, ...` for its `:name` parameters, and the names in that order:
    the statement the asyncpg dialect compiles from `text(sql)`."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _ESCAPED_COLON.sub(r"\1", _PARAM.sub(number, sql)), tuple(names)


def as_json(value: Any) -> str:
    """A JSON parameter, for `CAST(:x AS jsonb)`."""
    return json.dumps(value)


class Sql(Protocol):
    async def rows(self, sql: str, **params: Any) -> list[Row]: ...

    async def row(self, sql: str, **params: Any) -> Row | None: ...

    async def value(self, sql: str, **params: Any) -> Any: ...

    async def run(self, sql: str, **params: Any) -> None: ...


class DriverSql:
    """An asyncpg connection taking `:name` parameters."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @staticmethod
    def _args(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
        query, names = positional(sql)
        return query, [params[name] for name in names]

    async def rows(self, sql: str, **params: Any) -> list[Row]:
        query, args = self._args(sql, params)
        return list(await self.conn.fetch(query, *args))

    async def row(self, sql: str, **params: Any) -> Row | None:
        query, args = self._args(sql, params)
        row: Row | None = await self.conn.fetchrow(query, *args)
        return row

    async def value(self, sql: str, **params: Any) -> Any:
        query, args = self._args(sql, params)
        return await self.conn.fetchval(query, *args)

    async def run(self, sql: str, **params: Any) -> None:
        query, args = self._args(sql, params)
        await self.conn.execute(query, *args)

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """Statements up to the end of the block commit together (or not at all)."""
        transaction: AbstractAsyncContextManager[Any] = self.conn.transaction()
        return transaction


class SessionSql:
    """The same statements inside an ORM session's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def rows(self, sql: str, **params: Any) -> list[Row]:
        return [dict(r._mapping) for r in await self.session.execute(text(sql), params)]

    async def row(self, sql: str, **params: Any) -> Row | None:
        row = (await self.session.execute(text(sql), params)).first()
        return dict(row._mapping) if row is not None else None

    async def value(self, sql: str, **params: Any) -> Any:
        return (await self.session.execute(text(sql), params)).scalar()

    async def run(self, sql: str, **params: Any) -> None:
        await self.session.execute(text(sql), params)


def on_session(session: AsyncSession) -> Sql:
    return SessionSql(session)


# Failures after which a connection is not handed out again: it may be broken, or stopped
# halfway through a statement (a cancelled activity).
_BROKEN = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)


@asynccontextmanager
async def driver(
    bind: async_sessionmaker[AsyncSession] | AsyncEngine,
) -> AsyncIterator[DriverSql]:
    """A connection of `bind`'s pool (a session factory's engine, or an engine)."""
    engine = bind if isinstance(bind, AsyncEngine) else bind.kw["bind"]
    pooled = await engine.raw_connection()
    conn: asyncpg.Connection = pooled.driver_connection
    try:
        yield DriverSql(conn)
    except BaseException as err:
        if conn.is_closed():
            # The server dropped it (a restart, a failover): so it did every connection the
            # pool made before, which are replaced as they next leave it, as SQLAlchemy
            # does on a disconnect in its own statements. One at a time, each would fail a
            # caller of its own (three attempts of one step, with a pool of dead ones).
            engine.pool._invalidate(pooled, err)
        elif not isinstance(err, Exception) or isinstance(err, _BROKEN) or conn.is_in_transaction():
            await _close(conn)
            pooled.invalidate()
        raise
    finally:
        pooled.close()


async def _close(conn: asyncpg.Connection) -> None:
    """Close gracefully, as SQLAlchemy closes a connection it invalidates: a statement cut
    off by a cancel is then cancelled on the server first. Terminated at once, the cancel
    request is dropped and the statement runs on without its caller, and may commit."""
    try:
        await asyncio.shield(conn.close(timeout=2))
    except (Exception, asyncio.CancelledError):
        conn.terminate()
