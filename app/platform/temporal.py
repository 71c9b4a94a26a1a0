"""The one way this service connects to Temporal (same options for API, workers and CLI).

Where to connect follows Temporal's environment configuration (the SDK's envconfig: a
profile of a `temporal.toml`, TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE, and TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_* in the environment), so a Temporal
Cloud or cluster profile works as it does for the `temporal` CLI. This service's own
TEMPORAL_TARGET and TLS file settings, when set, win over the profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import TLSConfig

from app.platform.codec import EncryptionCodec, SealedFailures, load_keys
from app.platform.settings import Settings
from app.platform.tracing import setup_tracing

log = logging.getLogger("app.temporal")


def data_converter(settings: Settings) -> DataConverter:
    """Default JSON conversion, encrypted (payloads and failure messages) when payload
    keys are configured."""
    spec = settings.payload_keys.get_secret_value()
    if not spec and settings.payload_key_file is None:
        return DataConverter.default
    keys = load_keys(spec, settings.payload_key_file)
    active = settings.payload_active_key or next(iter(keys))
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=EncryptionCodec(keys, active),
        # Failure messages sealed as well: they name orders and payment ids.
        failure_converter_class=SealedFailures,
    )


def runtime_with_core_logs(metrics: PrometheusConfig | None = None) -> Runtime:
    """A Temporal runtime whose core (Rust) logs go through Python logging.

    By default the core writes its warnings straight to stderr in its own coloured text
    format, the only non-JSON lines a worker's log would otherwise have.
    """
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                # The SDK's default levels.
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(
                    logger=logging.getLogger("temporalio.core"), append_target_to_name=False
                ),
            ),
            metrics=metrics,
        )
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    files = (settings.temporal_tls_ca, settings.temporal_tls_cert, settings.temporal_tls_key)
    if not any(files) and not settings.temporal_tls_server_name:
        return False
    ca, cert, key = (f.read_bytes() if f else None for f in files)
    return TLSConfig(
        server_root_ca_cert=ca,
        client_cert=cert,
        client_private_key=key,
        domain=settings.temporal_tls_server_name,
    )


@dataclasses.dataclass(frozen=True)
class ConnectOptions:
    target: str
    namespace: str
    api_key: str | None
    tls: TLSConfig | bool


def connect_options(settings: Settings) -> ConnectOptions:
    """Settings merged with the envconfig profile: what is set here explicitly wins, the
    profile fills the rest. An API key (Temporal Cloud) turns TLS on."""
    try:
        profile = ClientConfigProfile.load()
    except Exception as err:  # the SDK raises its own errors for a bad temporal.toml
        raise RuntimeError(f"Temporal client configuration is not usable: {err}") from None
    explicit = settings.model_fields_set
    target = settings.temporal_target
    if "temporal_target" not in explicit and profile.address:
        target = profile.address
    namespace = settings.temporal_namespace
    if "temporal_namespace" not in explicit and profile.namespace:
        namespace = profile.namespace
    tls: TLSConfig | bool = tls_config(settings)
    if tls is False and profile.tls is not None:
        tls = profile.tls.to_connect_tls_config()
    elif tls is False and profile.api_key:
        tls = True
    return ConnectOptions(target, namespace, profile.api_key or None, tls)


async def connect_client(
    settings: Settings, *, runtime: Runtime | None = None, service: str = "client"
) -> Client:
    options = connect_options(settings)
    return await Client.connect(
        options.target,
        namespace=options.namespace,
        api_key=options.api_key,
        runtime=runtime,
        data_converter=data_converter(settings),
        tls=options.tls,
        # Workers built from this client inherit the interceptors.
        interceptors=setup_tracing(settings, service),
    )


async def connect_with_retry(
    settings: Settings,
    *,
    timeout: float,
    runtime: Runtime | None = None,
    service: str = "client",
) -> Client:
    """`connect_client`, retried with backoff for up to `timeout` seconds: a process may
    start before Temporal does (compose, the embedded stack, a restart)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    delay = 0.5
    while True:
        try:
            return await connect_client(settings, runtime=runtime, service=service)
        except Exception as err:
            if loop.time() + delay > give_up:
                raise RuntimeError(
                    f"Temporal not reachable at {connect_options(settings).target} after "
                    f"{timeout:.0f}s: {err}"
                ) from None
            log.warning(
                "Temporal not reachable yet, retrying",
                extra={
                    "target": connect_options(settings).target,
                    "error": str(err),
                    "service": service,
                },
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
