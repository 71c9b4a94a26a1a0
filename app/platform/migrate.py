"""Apply the Alembic migrations: `python -m app.platform.migrate` (idempotent)."""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.platform.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url or get_settings().database_url_plain)
    return cfg


def upgrade(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")


@dataclass(frozen=True)
class Revisions:
    """The revisions of this build's migration scripts."""

    heads: frozenset[str]
    known: frozenset[str]


@functools.cache
def script_revisions() -> Revisions:
    """Read once per process from the scripts (no database, no settings needed)."""
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    return Revisions(
        heads=frozenset(script.get_heads()),
        known=frozenset(rev.revision for rev in script.walk_revisions()),
    )


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revisions the database is at (its `alembic_version`; empty if never migrated)."""
    return frozenset(MigrationContext.configure(connection).get_current_heads())


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Apply the database migrations (idempotent) to DATABASE_URL."
    )
    parser.parse_args()
    upgrade()


if __name__ == "__main__":
    main()
