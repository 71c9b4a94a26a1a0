"""The simulators a worker runs in-process, each over its own connection pool to its own
database (never the order system's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.orders.faults import FaultInjector
from app.orders.providers.carrier import CarrierSimulator
from app.orders.providers.gateway import GatewaySimulator
from app.platform.db import create_engine
from app.platform.settings import Settings


@dataclass
class Simulators:
    gateway: GatewaySimulator
    carrier: CarrierSimulator


def ledger_engine(settings: Settings, url: str, pool_size: int = 10) -> AsyncEngine:
    return create_engine(
        url,
        pool_size=pool_size,
        pre_ping=False,
        sslmode=settings.database_sslmode,
        ssl_ca=settings.database_ssl_ca,
        application_name="ledger",
    )


@asynccontextmanager
async def open_simulators(settings: Settings, faults: FaultInjector) -> AsyncIterator[Simulators]:
    gateway_engine = ledger_engine(settings, settings.gateway_database_url_plain)
    carrier_engine = ledger_engine(settings, settings.carrier_database_url_plain)
    try:
        sims = Simulators(
            GatewaySimulator(gateway_engine, faults), CarrierSimulator(carrier_engine, faults)
        )
        await sims.gateway.install()
        await sims.carrier.install()
        yield sims
    finally:
        await gateway_engine.dispose()
        await carrier_engine.dispose()
