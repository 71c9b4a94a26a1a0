"""Settings: production refuses the defaults that are only safe on the embedded stack.

The production guard judges parsed values (API_KEYS="," is no key at all) and is the one
guard every process runs: settings load, the API's lifespan, every worker built, the CLI
(issue 24). docs/deployment.md lists what it refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from app.platform.settings import (
    PROJECT_ROOT,
    ProductionRefused,
    Settings,
    require_production_ready,
    settings_problem,
)

pytestmark = pytest.mark.unit

KEYS = SecretStr("ops:k3y-0123456789:admin")
STRONG_DB = SecretStr("postgresql+asyncpg://app:s3cret@db:5432/app")
# What a production deployment sets (docs/deployment.md): its own password, keys, no
# faults, TLS to PostgreSQL.
READY: dict[str, Any] = {
    "deployment": "production",
    "database_url": STRONG_DB,
    "api_keys": KEYS,
    "fault_profile": "off",
    "database_sslmode": "verify-full",
}


def production(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{**READY, **overrides})  # type: ignore[call-arg]


def test_the_embedded_defaults_are_accepted() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.deployment == "embedded"


def test_production_with_its_own_password_keys_no_faults_and_tls_is_accepted() -> None:
    assert production().deployment == "production"
    assert production(database_sslmode="require").deployment == "production"
    # A private database link, said plainly (compose's own network).
    plain = production(database_sslmode="disable", allow_plaintext_database=True)
    assert plain.deployment == "production"
    assert production(fault_profile=" OFF ").deployment == "production"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"database_url": SecretStr("postgresql+asyncpg://app:app@db/app")}, "default database"),
        ({"api_keys": SecretStr("")}, "API_KEYS holds no key"),
        # Not blank, yet no key: the guard judges what the API will parse.
        ({"api_keys": SecretStr(",")}, "API_KEYS holds no key"),
        ({"api_keys": SecretStr(" , ")}, "API_KEYS holds no key"),
        ({"api_keys": SecretStr(",,\t,")}, "API_KEYS holds no key"),
        ({"api_keys": SecretStr("\u2003,\u00a0,\u3000")}, "API_KEYS holds no key"),
        ({"api_keys": SecretStr("just-a-key-0123")}, "API_KEYS is invalid"),
        ({"api_keys": SecretStr("ops:short:admin")}, "API_KEYS is invalid"),
        ({"allow_fault_injection": True}, "ALLOW_FAULT_INJECTION"),
        ({"fault_profile": "seed"}, "FAULT_PROFILE"),
        ({"fault_profile": "fail=0.1"}, "FAULT_PROFILE"),
        ({"codec_cors_origins": "*"}, "CODEC_CORS_ORIGINS"),
        ({"codec_cors_origins": "https://ui.example, *"}, "CODEC_CORS_ORIGINS"),
        ({"codec_cors_origins": "null"}, "CODEC_CORS_ORIGINS"),
        ({"codec_cors_origins": "https://*.example"}, "CODEC_CORS_ORIGINS"),
        ({"database_sslmode": "disable"}, "DATABASE_SSLMODE"),
    ],
)
def test_production_refuses_in_one_line_naming_the_setting(
    overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(ValidationError) as err:
        production(**overrides)
    line = settings_problem(err.value)
    assert named in line and "DEPLOYMENT=production" in line and "\n" not in line
    assert "k3y-0123456789" not in line and "s3cret" not in line


def test_every_refusal_at_once_in_one_line() -> None:
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, deployment="production", api_keys=SecretStr(","))  # type: ignore[call-arg]
    line = settings_problem(err.value)
    for named in ("DATABASE_URL", "API_KEYS", "FAULT_PROFILE", "DATABASE_SSLMODE"):
        assert named in line, line
    assert "\n" not in line


def test_copies_are_judged_where_processes_start() -> None:
    """model_copy skips validation: the guard runs again where the app, a worker or the
    CLI is built (those call sites: tests/api/test_hostile.py, tests/platform below)."""
    ready = production()
    require_production_ready(ready)
    talked_round = ready.model_copy(update={"api_keys": SecretStr(",")})
    with pytest.raises(ProductionRefused, match="API_KEYS holds no key"):
        require_production_ready(talked_round)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DATABASE_"))}
    env.update(PYTHONPATH=str(PROJECT_ROOT), **extra)
    return env


ENTRY_POINTS = (
    ("-m", "app.worker", "--queue", "orders"),
    ("-m", "app.api"),
    ("-m", "app.cli.main", "list"),
    ("-m", "app.platform.migrate"),
)


@pytest.fixture(scope="module")
def entry_point_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Every entry point started at once under production settings talked round (each
    process spends its second or two importing, on one core of two); how each ended."""
    env = _env(
        DEPLOYMENT="production",
        DATABASE_URL="postgresql+asyncpg://app:Str0ng-pw@127.0.0.1:9/app",
        API_KEYS=",",
        FAULT_PROFILE="off",
        DATABASE_SSLMODE="require",
    )

    folders = {command: tmp_path_factory.mktemp("entry") for command in ENTRY_POINTS}

    def run(command: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *command],
            env=env,
            cwd=folders[command],
            capture_output=True,
            text=True,
            timeout=60,
        )

    with ThreadPoolExecutor(len(ENTRY_POINTS)) as pool:
        return dict(zip(ENTRY_POINTS, pool.map(run, ENTRY_POINTS), strict=True))


@pytest.mark.parametrize("command", ENTRY_POINTS, ids=[" ".join(c) for c in ENTRY_POINTS])
def test_every_entry_point_refuses_production_talked_round(
    command: tuple[str, ...],
    entry_point_runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]],
) -> None:
    result = entry_point_runs[command]
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "API_KEYS holds no key" in lines[0], result.stderr
    assert "Str0ng-pw" not in result.stderr + result.stdout
