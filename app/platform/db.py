"""PostgreSQL: engine, sessions and timed transactions (the tables: app/platform/tables.py;
plain SQL on the driver for the hot path: app/platform/sql.py)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.platform import metrics
from app.platform.sql import DriverSql, driver

if TYPE_CHECKING:
    from app.platform.settings import Settings


def ssl_context(sslmode: str, ca_file: Path | None = None) -> ssl.SSLContext | bool:
    """asyncpg's `ssl` argument for a libpq-style sslmode."""
    if sslmode == "disable":
        return False
    if sslmode == "require":  # encrypted, server not verified (like libpq's "require")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if sslmode == "verify-full":
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    raise ValueError(f"DATABASE_SSLMODE must be disable, require or verify-full, not {sslmode!r}")


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    sslmode: str = "disable",
    ssl_ca: Path | None = None,
    pre_ping: bool = True,
    application_name: str = "orders",
) -> AsyncEngine:
    """`pre_ping`: test each connection as it leaves the pool. asyncpg's ping is three round
    trips (BEGIN, an empty query, ROLLBACK), more than a short transaction itself; callers
    that retry anyway (activities) turn it off and rely on SQLAlchemy invalidating the whole
    pool on the first disconnect error instead."""
    connect_args: dict[str, Any] = {
        # TIMESTAMP columns hold UTC: the code compares them with UTC clocks.
        "server_settings": {"timezone": "UTC", "application_name": application_name},
    }
    # Always explicit: asyncpg's own default is "prefer", which would encrypt "disable" too.
    connect_args["ssl"] = ssl_context(sslmode, ssl_ca)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def engine_from_settings(
    settings: Settings, *, pool_size: int = 10, pre_ping: bool = True
) -> AsyncEngine:
    return create_engine(
        settings.database_url_plain,
        pool_size=pool_size,
        pre_ping=pre_ping,
        sslmode=settings.database_sslmode,
        ssl_ca=settings.database_ssl_ca,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# OSError includes TimeoutError (Python 3.11) and connection failures asyncpg raises as is;
# statements on the driver (app/platform/sql.py) raise asyncpg's own errors.
_DATABASE_FAILURES = (
    SQLAlchemyError,
    OSError,
    asyncio.CancelledError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


@asynccontextmanager
async def timed_transaction(
    sessions: async_sessionmaker[AsyncSession], operation: str
) -> AsyncIterator[AsyncSession]:
    """One transaction, measured as a database operation (latency and errors by name).

    Errors count only when they are the database's: driver, connection or pool failures, or
    the transaction cut off while in flight (timeout/cancel). A business rule or an external
    call failing inside the block rolls back too, but has its own metric (step errors).
    """
    async with _timed(operation), sessions.begin() as session:
        yield session


@asynccontextmanager
async def timed_statements(
    sessions: async_sessionmaker[AsyncSession], operation: str
) -> AsyncIterator[AsyncSession]:
    """Like `timed_transaction`, for writes that are each one atomic statement: every
    statement commits on its own, saving the BEGIN and COMMIT round trips."""
    async with _timed(operation), sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


@asynccontextmanager
async def timed_driver(
    sessions: async_sessionmaker[AsyncSession], operation: str
) -> AsyncIterator[DriverSql]:
    """Plain SQL on a pooled connection's driver (app/platform/sql.py), measured like
    `timed_transaction`: each statement commits on its own unless inside `transaction()`."""
    async with _timed(operation), driver(sessions) as db:
        yield db


@asynccontextmanager
async def _timed(operation: str) -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        yield
    except _DATABASE_FAILURES as err:
        metrics.DB_ERRORS.labels(operation=operation, error=type(err).__name__).inc()
        raise
    finally:
        metrics.DB_LATENCY.labels(operation=operation).observe(time.perf_counter() - started)
