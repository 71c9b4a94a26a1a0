"""Alembic environment: runs migrations on the async engine from DATABASE_URL."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.platform.db import ssl_context
from app.platform.settings import get_settings
from app.platform.tables import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    settings = get_settings()
    url = context.config.get_main_option("sqlalchemy.url") or settings.database_url_plain
    tls = ssl_context(settings.database_sslmode, settings.database_ssl_ca)
    engine = create_async_engine(url, connect_args={"ssl": tls})
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


asyncio.run(_main())
