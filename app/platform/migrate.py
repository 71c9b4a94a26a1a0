"""Apply the Alembic migrations: `python -m app.platform.migrate` (idempotent)."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.platform.logging_setup import mask_text
from app.platform.settings import get_settings_or_exit

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    url = database_url or get_settings_or_exit().database_url_plain
    # Alembic's config interpolates %: a percent-encoded password (%40) would make it
    # raise with the whole URL in its message. Doubled, it reads back as given.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
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
    try:
        upgrade()
    except Exception as err:
        # One line, never a traceback: driver messages may quote the connection string.
        first = (str(err).strip().splitlines() or [""])[0]
        sys.exit(f"error: migration failed: {type(err).__name__}: {mask_text(first)[:300]}")


if __name__ == "__main__":
    main()
