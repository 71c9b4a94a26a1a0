"""The service layer as a front end holds it: one of each part, on one Temporal client and
one session factory.

- `orders`: the commands (app/service/orders.py);
- `status`: an order's status view, cached once closed (app/service/status.py);
- `inspection`: lists, searches, audit events, workflow description and history
  (app/service/inspection.py).

The commands share the status reader, so a retry drops the order's cached view.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from app.platform.settings import Settings
from app.service.inspection import Inspector
from app.service.orders import OrderService
from app.service.status import StatusReader


@dataclass(frozen=True)
class ServiceLayer:
    orders: OrderService
    status: StatusReader
    inspection: Inspector
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings

    @classmethod
    def build(
        cls, client: Client, sessions: async_sessionmaker[AsyncSession], settings: Settings
    ) -> ServiceLayer:
        reader = StatusReader(client, sessions)
        return cls(
            orders=OrderService(client, sessions, settings, reader),
            status=reader,
            inspection=Inspector(client, sessions, settings),
            sessions=sessions,
            settings=settings,
        )
