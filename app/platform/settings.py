"""All settings in one place, read from the environment and `.env` (never scattered getenv)."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from app.platform.api_keys import ApiKeyConfigError, parse_api_keys

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The embedded stack's well-known database password: refused when DEPLOYMENT=production.
DEFAULT_DB_PASSWORD = "app"
# The provider simulators' databases (created by the embedded stack and by compose).
GATEWAY_DB = "gateway"
CARRIER_DB = "carrier"


class Settings(BaseSettings):
    # The project's .env, then one in the working directory (which wins), so the CLI reads
    # the same settings from any folder.
    model_config = SettingsConfigDict(
        env_file=(PROJECT_ROOT / ".env", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        # A validation error never quotes what it was given: secrets are settings too.
        hide_input_in_errors=True,
    )

    # embedded: the one-machine dev stack (defaults that just work); production: refuses
    # the defaults that are only safe on a laptop (see _production_is_locked_down).
    deployment: Literal["embedded", "production"] = "embedded"

    # The guide's variables, same names and meaning.
    database_url: SecretStr = SecretStr(
        f"postgresql+asyncpg://app:{DEFAULT_DB_PASSWORD}@127.0.0.1:5432/app"
    )
    # The provider simulators' own ledgers, on the same server by default (the app's URL with
    # database `gateway` / `carrier`). The order system never reads them.
    gateway_database_url: SecretStr = SecretStr("")
    carrier_database_url: SecretStr = SecretStr("")
    temporal_target: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    order_task_queue: str = "orders-tq"
    shipping_task_queue: str = "shipping-tq"
    log_level: str = "INFO"
    # json (one object per line) or console (readable, for a terminal)
    log_format: str = "json"

    # Order rules, configurable so tests and demos can shorten them; None = the
    # standard 30 s review and 60 s deadline (app/orders/messages.py, their one home).
    review_timeout_s: float | None = None
    order_deadline_s: float | None = None

    # Failure simulation: seed (1/3 fail, 1/3 hang, 1/3 ok), off, or "fail=0.2,hang=0.1".
    fault_profile: str = "seed"
    # When set, fault draws are reproducible per (seed, order, activity, attempt).
    fault_seed: int | None = None
    # Whether a start request may choose its own fault profile (dev stack only).
    allow_fault_injection: bool = False

    # TLS to Temporal (mTLS when cert and key are set); any of these turns TLS on.
    temporal_tls_ca: Path | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_server_name: str | None = None
    # TLS to PostgreSQL: disable, require (encrypt), verify-full (encrypt + check CA/host).
    database_sslmode: str = "disable"
    database_ssl_ca: Path | None = None
    # Production refuses DATABASE_SSLMODE=disable unless this says plainly that the
    # database link is private (e.g. compose's own network): the password and every order
    # would cross it in clear.
    allow_plaintext_database: bool = False

    # OpenTelemetry tracing (off by default); spans to OTLP/HTTP when an endpoint is set.
    otel_enabled: bool = False
    otel_exporter_otlp_endpoint: str | None = None

    # Payload encryption (AES-256-GCM): "key-id:base64-32-bytes,..." and/or a file of such
    # lines; the active key seals new payloads. Empty = payloads stored in plain JSON.
    payload_keys: SecretStr = SecretStr("")
    payload_key_file: Path | None = None
    payload_active_key: str = ""
    # Browser origins allowed to call the codec endpoint (/codec/decode, /codec/encode),
    # comma-separated; empty = the origin of TEMPORAL_UI_URL.
    codec_cors_origins: str = ""

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # "name:key:role1+role2,name2:key2:role"; roles: viewer, operator, reviewer, admin
    api_keys: SecretStr = SecretStr("")
    # Host names the API answers to (the Host header, without port), comma-separated; a
    # request naming another host is refused (403), so a web page on a name that resolves
    # to this machine cannot read or drive the API (DNS rebinding). Empty: loopback names
    # (localhost, 127.0.0.1, ::1) and API_HOST. `*`: any host (behind a proxy that checks
    # it; refused without API_KEYS). The health probes answer whatever the Host.
    api_allowed_hosts: str = ""
    temporal_ui_url: str = "http://127.0.0.1:8233"

    # The embedded stack's own settings (RUN_DIR, its ports, TEMPORAL_NAMESPACE_RETENTION)
    # are devstack's: devstack/stack/config.py, StackSettings.

    # Reconciliation (app/orders/reconciliation): the Temporal Schedule runs it every
    # RECONCILE_INTERVAL_S seconds over the orders of the last RECONCILE_LOOKBACK_S seconds,
    # and keeps its reports RECONCILE_KEEP_DAYS days.
    reconcile_interval_s: float = Field(default=300.0, ge=10.0, le=86400.0)
    reconcile_lookback_s: float = Field(default=86400.0, ge=60.0, le=90 * 86400.0)
    reconcile_keep_days: int = Field(default=30, ge=1)

    # Events retention (app/orders/housekeeping): the Temporal Schedule `housekeeping` runs
    # every EVENTS_RETENTION_INTERVAL_S seconds and deletes the step-by-step events of
    # orders closed more than EVENTS_RETENTION_DAYS days ago (0 = keep them forever),
    # EVENTS_RETENTION_BATCH orders per transaction. The order row, its payments and its
    # money, shipment and outcome events are kept; never inside RECONCILE_LOOKBACK_S.
    events_retention_days: int = Field(default=90, ge=0, le=36500)
    events_retention_interval_s: float = Field(default=3600.0, ge=60.0, le=7 * 86400.0)
    events_retention_batch: int = Field(default=500, ge=1, le=100_000)

    # Worker Versioning (app/versioning.py): each worker build is a version of
    # the Worker Deployment WORKER_DEPLOYMENT_NAME; orders are pinned to the version that
    # started them. WORKER_BUILD_ID: this build's id (image builds set it); empty = the
    # package version and git commit, plus a hash of the code when it differs. False =
    # unversioned workers, which take any task (changes then need workflow.patched).
    worker_versioning: bool = True
    worker_deployment_name: str = Field(default="order-fulfillment", pattern=r"^[A-Za-z0-9_-]+$")
    worker_build_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.+-]*$", max_length=200)

    # Worker tuning
    # Worker /metrics (app + Temporal SDK); 0 = off. Bound to METRICS_HOST.
    worker_metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    max_concurrent_activities: int = 200
    max_concurrent_workflow_tasks: int = 200
    # Run workflow code in Temporal's sandbox in production workers too. Off by default:
    # the unit tests run every workflow path in the strict sandbox, and in a worker it
    # costs a module re-import per workflow run plus an exec per activation.
    workflow_sandbox: bool = False

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @field_validator("database_url")
    @classmethod
    def _parsable_url(cls, v: SecretStr) -> SecretStr:
        # Checked here, in every deployment: SQLAlchemy's own parse errors quote the part
        # of the URL they choke on, which may be the password.
        if parse_database_url(v.get_secret_value()) is None:
            raise ValueError(BAD_DATABASE_URL)
        return v

    @model_validator(mode="after")
    def _production_is_locked_down(self) -> Settings:
        problems = production_problems(self)
        if problems:
            raise ValueError(refusal(problems))
        return self

    @property
    def database_url_plain(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def gateway_database_url_plain(self) -> str:
        return self.gateway_database_url.get_secret_value() or self._sibling(GATEWAY_DB)

    @property
    def carrier_database_url_plain(self) -> str:
        return self.carrier_database_url.get_secret_value() or self._sibling(CARRIER_DB)

    def _sibling(self, database: str) -> str:
        """The app's database URL with another database name."""
        url = parse_database_url(self.database_url_plain)
        if url is None:
            raise ValueError(BAD_DATABASE_URL)
        return url.set(database=database).render_as_string(hide_password=False)


BAD_DATABASE_URL = (
    "DATABASE_URL is not a database URL (driver://user:password@host:port/database; "
    "percent-encode @, :, / and % in the password)"
)


def parse_database_url(url: str) -> URL | None:
    """The URL, or None when it cannot be parsed (the error itself is never shown)."""
    try:
        return make_url(url)
    except Exception:
        return None


# The fault profiles production accepts: none at all.
_NO_FAULTS = "off"
_TLS_MODES = ("require", "verify-full")


def production_problems(settings: Settings) -> list[str]:
    """What DEPLOYMENT=production refuses in these settings, one phrase per setting.

    Judged on parsed values, as the processes will use them (API_KEYS="," is no key),
    and the one guard every process runs: at settings load, in the API's lifespan (so
    `uvicorn --factory` too), in every worker built, and in the CLI. Empty outside
    production."""
    if settings.deployment != "production":
        return []
    problems = []
    url = parse_database_url(settings.database_url_plain)
    if url is None:
        problems.append(BAD_DATABASE_URL)
    elif url.password in (None, "", DEFAULT_DB_PASSWORD):
        problems.append("DATABASE_URL has the default database password")
    try:
        keys = parse_api_keys(settings.api_keys.get_secret_value())
    except ApiKeyConfigError as err:
        problems.append(f"API_KEYS is invalid ({err})")
    else:
        if not keys:
            problems.append("API_KEYS holds no key (every caller would hold every role)")
    if settings.allow_fault_injection:
        problems.append("ALLOW_FAULT_INJECTION is on")
    if settings.fault_profile.strip().lower() != _NO_FAULTS:
        problems.append("FAULT_PROFILE is not off (random faults are for the dev stack)")
    origins = [o.strip() for o in settings.codec_cors_origins.split(",")]
    if any(o in ("*", "null") or "*" in o for o in origins):
        problems.append(
            "CODEC_CORS_ORIGINS allows any origin (* or null) to call /codec with credentials"
        )
    if settings.database_sslmode not in _TLS_MODES and not settings.allow_plaintext_database:
        problems.append(
            f"DATABASE_SSLMODE is {settings.database_sslmode} (set require or verify-full, or "
            "ALLOW_PLAINTEXT_DATABASE=true to say plainly that the database link is private)"
        )
    return problems


def refusal(problems: list[str]) -> str:
    return "DEPLOYMENT=production refuses this: " + "; ".join(problems)


class ProductionRefused(RuntimeError):
    """Settings a production process must not run with (the message is one line)."""


def require_production_ready(settings: Settings) -> None:
    """The production guard, for settings that may not have been validated (copies)."""
    problems = production_problems(settings)
    if problems:
        raise ProductionRefused(refusal(problems))


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_problem(err: ValidationError) -> str:
    """One line for a settings error: the setting named, then what is wrong."""
    first = err.errors()[0]
    message = str(first["msg"]).replace("Value error, ", "")
    if not first["loc"]:  # the production guard: its message names the settings
        return f"invalid settings: {message}"
    return f"invalid setting {str(first['loc'][0]).upper()}: {message}"


def get_settings_or_exit() -> Settings:
    """The settings for a process entry point: a bad one exits with one line, no traceback."""
    try:
        return get_settings()
    except ValidationError as err:
        sys.exit(f"error: {settings_problem(err)}")
