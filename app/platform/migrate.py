"""Apply the Alembic migrations: `python -m app.platform.migrate` (idempotent)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.platform.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url or get_settings().database_url_plain)
    return cfg


def upgrade(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Apply the database migrations (idempotent) to DATABASE_URL."
    )
    parser.parse_args()
    upgrade()


if __name__ == "__main__":
    main()
