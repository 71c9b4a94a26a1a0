"""The one way this service connects to Temporal (same options for API, workers and CLI)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.runtime import Runtime

from app.config import Settings


async def connect_client(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        runtime=runtime,
    )
