"""Carrier simulator: packages and dispatch bookings in its own ledger (`carrier` db).

Idempotent like the gateway (same key and parameters: the first booking; other
parameters: refused). A dispatch names the keys of the order's earlier shipping attempts:
when one of them already booked the parcel (its answer was lost), that booking is the
answer, and the superseded keys are closed so a late request under them books nothing.
`read_ledger` is for auditors (chaos, tests).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.orders.faults import CallInfo, FaultInjector
from app.orders.providers import ledger
from app.orders.providers.api import (
    Booking,
    BookingRecord,
    CancelShipmentsRequest,
    DispatchRequest,
    KeyClosed,
    Package,
    PrepareRequest,
    ShipmentCancelled,
)
from app.platform.sql import Sql, as_json, driver

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS packages (
        package_id text PRIMARY KEY,
        order_id text NOT NULL,
        shipping_attempt integer NOT NULL,
        idempotency_key text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS bookings (
        tracking_number text PRIMARY KEY,
        order_id text NOT NULL,
        address jsonb NOT NULL,
        idempotency_key text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        cancelled_at timestamptz
    )""",
    "CREATE INDEX IF NOT EXISTS bookings_order ON bookings (order_id)",
    # The bookings export reads them by time.
    "CREATE INDEX IF NOT EXISTS bookings_created ON bookings (created_at)",
    """CREATE TABLE IF NOT EXISTS closed_keys (
        key text PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS cancelled_orders (
        order_id text PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
]


class CarrierSimulator(ledger.Provider):
    def __init__(self, engine: AsyncEngine, faults: FaultInjector) -> None:
        super().__init__(engine, faults, "carrier", SCHEMA, ("prepare", "dispatch", "cancel"))

    async def _for_order(
        self,
        operation: str,
        call: CallInfo,
        req: PrepareRequest | DispatchRequest,
        params: dict[str, Any],
        effect: ledger.Effect,
    ) -> dict[str, Any]:
        """One request about the order's parcel, once per key; `params`: its parameters
        besides the order, which a repeat under the key must match."""
        return await self.once(
            operation,
            call,
            key=req.key,
            request={"order_id": req.order_id, **params},
            resource=f"order:{req.order_id}",
            effect=effect,
        )

    async def prepare(self, req: PrepareRequest, call: CallInfo) -> Package:
        async def pack(db: Sql) -> dict[str, Any]:
            package = Package(f"pkg_{secrets.token_hex(8)}")
            await db.run(
                "INSERT INTO packages (package_id, order_id, shipping_attempt, "
                "idempotency_key) VALUES (:p, :o, :s, :k)",
                p=package.package_id,
                o=req.order_id,
                s=req.shipping_attempt,
                k=req.key,
            )
            return asdict(package)

        params = {"shipping_attempt": req.shipping_attempt}
        return Package(**await self._for_order("prepare", call, req, params, pack))

    async def dispatch(self, req: DispatchRequest, call: CallInfo) -> Booking:
        async def book(db: Sql) -> dict[str, Any]:
            if await ledger.found(db, "SELECT 1 FROM closed_keys WHERE key = :k", k=req.key):
                raise KeyClosed(f"dispatch key {req.key!r} was superseded; nothing booked")
            if await ledger.found(
                db, "SELECT 1 FROM cancelled_orders WHERE order_id = :o", o=req.order_id
            ):
                raise ShipmentCancelled(f"shipments of order {req.order_id} were cancelled")
            earlier = None
            if req.supersedes:
                earlier = await db.row(
                    "SELECT tracking_number, idempotency_key AS key, address "
                    "FROM bookings WHERE idempotency_key = ANY(CAST(:keys AS text[])) "
                    "ORDER BY created_at LIMIT 1",
                    keys=list(req.supersedes),
                )
            if earlier is not None:
                booking = Booking(**earlier)
            else:
                booking = Booking(f"TRK{secrets.token_hex(5).upper()}", req.key, req.address)
                await db.run(
                    "INSERT INTO bookings (tracking_number, order_id, address, "
                    "idempotency_key) VALUES (:t, :o, CAST(:a AS jsonb), :k)",
                    t=booking.tracking_number,
                    o=req.order_id,
                    a=as_json(req.address),
                    k=req.key,
                )
            if req.supersedes:
                await db.run(
                    "INSERT INTO closed_keys (key) SELECT unnest(CAST(:keys AS text[])) "
                    "ON CONFLICT DO NOTHING",
                    keys=list(req.supersedes),
                )
            return asdict(booking)

        params = {"address": req.address}
        return Booking(**await self._for_order("dispatch", call, req, params, book))

    async def cancel(self, req: CancelShipmentsRequest, call: CallInfo) -> list[Booking]:
        faults = self.faults["cancel"].draw(call)
        await faults.before()
        async with driver(self.engine) as db, db.transaction():
            await ledger.lock(db, f"order:{req.order_id}")
            await db.run(
                "INSERT INTO cancelled_orders (order_id) VALUES (:o) ON CONFLICT DO NOTHING",
                o=req.order_id,
            )
            rows = await db.rows(
                "UPDATE bookings SET cancelled_at = now() "
                "WHERE order_id = :o AND cancelled_at IS NULL "
                "RETURNING tracking_number, idempotency_key AS key, address",
                o=req.order_id,
            )
        await faults.after()
        return [Booking(**r) for r in rows]

    async def bookings(
        self, since: datetime, carrier_orders: Sequence[str] | None = None
    ) -> list[BookingRecord]:
        """The merchant's export of bookings made since `since`, read from the carrier's
        own ledger."""
        only, params = ledger.export_filter(since, "order_id", carrier_orders)
        rows = await ledger.read(
            self.engine,
            "SELECT tracking_number, order_id AS carrier_order, "
            "idempotency_key AS key, cancelled_at IS NOT NULL AS cancelled, "
            f"created_at FROM bookings WHERE created_at >= :since{only} "
            "ORDER BY created_at, tracking_number",
            params,
        )
        return [BookingRecord(**r._mapping) for r in rows]


async def read_ledger(
    engine: AsyncEngine, order_ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Order id -> its bookings at the carrier (for auditors only)."""
    ids = list(order_ids)
    bookings = await ledger.audit_rows(
        engine,
        "SELECT order_id, tracking_number, idempotency_key, address, "
        "cancelled_at IS NOT NULL AS cancelled FROM bookings "
        "WHERE order_id = ANY(:ids) ORDER BY created_at",
        ids,
    )
    return ledger.rows_by_order(ids, bookings)
