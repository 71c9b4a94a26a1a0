"""The CLI's one-line message for a database failure, whichever layer raised it: the ORM's
errors, or the driver's own (plain SQL on the hot path, app/platform/sql.py)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from app.cli.common import db_failure
from app.platform.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings(_env_file=None, database_url="postgresql+asyncpg://app:app@db.example:6543/app")


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError("connection refused"),
        sa_exc.OperationalError("SELECT 1", {}, Exception("gone")),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
    ],
)
def test_an_unreachable_database_names_its_address(error: BaseException) -> None:
    failure = db_failure(error, SETTINGS)
    assert failure is not None
    assert "PostgreSQL is not reachable at db.example:6543" in str(failure)
    assert "\n" not in str(failure)


def test_a_statement_the_database_refused_is_one_line() -> None:
    failure = db_failure(asyncpg.UndefinedTableError('relation "orders" does not exist'), SETTINGS)
    assert failure is not None
    assert str(failure).startswith('database error: relation "orders" does not exist')


def test_anything_else_is_not_a_database_failure() -> None:
    assert db_failure(ValueError("no"), SETTINGS) is None
