"""Settings: production refuses the defaults that are only safe on the embedded stack."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from app.platform.settings import Settings, settings_problem

pytestmark = pytest.mark.unit

KEYS = SecretStr("ops:k3y-0123456789:admin")
STRONG_DB = SecretStr("postgresql+asyncpg://app:s3cret@db:5432/app")


def test_the_embedded_defaults_are_accepted() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.deployment == "embedded"


def test_production_with_its_own_password_and_keys_is_accepted() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, deployment="production", database_url=STRONG_DB, api_keys=KEYS
    )
    assert settings.deployment == "production"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"api_keys": KEYS}, "default database password"),
        ({"database_url": STRONG_DB}, "API_KEYS is empty"),
        (
            {"database_url": STRONG_DB, "api_keys": KEYS, "allow_fault_injection": True},
            "ALLOW_FAULT_INJECTION",
        ),
    ],
)
def test_production_refuses_the_defaults(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, deployment="production", **overrides)  # type: ignore[call-arg,arg-type]
    line = settings_problem(err.value)
    assert named in line and "DEPLOYMENT=production" in line and "\n" not in line
