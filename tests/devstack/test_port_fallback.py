"""DESIGN: if 5432 is taken, the embedded stack uses another port, says so, and keeps it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.platform.settings import Settings
from devstack import stack
from devstack.services import PORT_FILE, client_settings, move_postgres_if_taken, stack_config

pytestmark = pytest.mark.integration


def test_taken_default_port_moves_postgres_and_everything_follows(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)  # POSTGRES_PORT not set: 5432 is only a default
    assert "postgres_port" not in settings.model_fields_set
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if stack.port_in_use("127.0.0.1", 5432) is None:
            squatter.bind(("127.0.0.1", 5432))
            squatter.listen()
        cfg = stack_config(settings)
        message = move_postgres_if_taken(settings, cfg)
    assert message is not None and "5432 is in use" in message
    assert cfg.postgres_port != 5432
    assert (tmp_path / PORT_FILE).read_text().strip() == str(cfg.postgres_port)
    # Every later command reads the same port, and so does the DATABASE_URL it uses.
    assert stack_config(settings).postgres_port == cfg.postgres_port
    url = client_settings(settings).database_url_plain
    assert f":{cfg.postgres_port}/" in url


def test_explicit_port_is_never_moved(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings(run_dir=tmp_path, postgres_port=port)
        cfg = stack_config(settings)
        assert move_postgres_if_taken(settings, cfg) is None
    assert cfg.postgres_port == port and not (tmp_path / PORT_FILE).exists()
