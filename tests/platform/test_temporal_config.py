"""Where the service connects to Temporal: Temporal's environment configuration (envconfig
profiles and TEMPORAL_* variables) merged with this service's own settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from app.platform.settings import Settings
from app.platform.temporal import connect_options

pytestmark = pytest.mark.unit

ENVCONFIG_VARS = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_TLS",
    "TEMPORAL_TARGET",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No profile from the machine running the tests: a HOME of its own, no TEMPORAL_*."""
    for name in ENVCONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_without_any_profile() -> None:
    options = connect_options(settings())
    assert (options.target, options.namespace) == ("127.0.0.1:7233", "default")
    assert options.api_key is None
    assert options.tls is False


def test_temporal_address_is_used_when_temporal_target_is_not_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    assert connect_options(settings()).target == "temporal.internal:7233"


def test_temporal_target_wins_over_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_TARGET", "127.0.0.1:17233")
    assert connect_options(settings()).target == "127.0.0.1:17233"
    assert connect_options(settings(temporal_target="10.0.0.9:7233")).target == "10.0.0.9:7233"


def test_an_api_key_turns_tls_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "shop.a1b2c.tmprl.cloud:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "shop.a1b2c")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-123")
    options = connect_options(settings())
    assert options.target == "shop.a1b2c.tmprl.cloud:7233"
    assert options.namespace == "shop.a1b2c"
    assert options.api_key == "key-123"
    assert options.tls is not False


def test_a_profile_of_a_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(
        "[profile.default]\n"
        'address = "localhost:7233"\n'
        "[profile.cloud]\n"
        'address = "shop.a1b2c.tmprl.cloud:7233"\n'
        'namespace = "shop.a1b2c"\n'
        'api_key = "from-file"\n'
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "cloud")
    options = connect_options(settings())
    assert (options.target, options.namespace) == ("shop.a1b2c.tmprl.cloud:7233", "shop.a1b2c")
    assert options.api_key == "from-file"
    assert options.tls is not False


def test_own_tls_files_win_over_the_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("TEMPORAL_TLS", "false")
    options = connect_options(settings(temporal_tls_ca=ca))
    assert isinstance(options.tls, TLSConfig)
    assert options.tls.server_root_ca_cert == ca.read_bytes()


def test_tls_can_be_turned_off_beside_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in front of a plaintext cluster: the key is still sent."""
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-123")
    monkeypatch.setenv("TEMPORAL_TLS", "false")
    options = connect_options(settings())
    assert options.api_key == "key-123"
    assert options.tls is False


def test_a_broken_config_file_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text("[profile.default\naddress = \n")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    with pytest.raises(RuntimeError, match="Temporal client configuration is not usable"):
        connect_options(settings())
