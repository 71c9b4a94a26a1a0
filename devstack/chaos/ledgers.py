"""The chaos run's reads of the providers' ledgers, as an auditor: every run of an order
(a retry ships as `<order id>#r<N>`), and the idempotency keys whose request names one of
the orders, so keys shared across orders show.

The order system never reads these databases; only auditors (chaos, tests) do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.orders.identity import RETRY_MARK, first_reference
from app.orders.providers.gateway import charges_with_refunds
from app.orders.providers.ledger import audit_rows

# The client's id a reference was made from, in SQL (app/orders/identity.first_reference).
_RETRY_SUFFIX = RETRY_MARK + "[0-9]+$"


def _first(expr: str) -> str:
    return f"regexp_replace({expr}, '{_RETRY_SUFFIX}', '')"


def _by_order(
    ids: list[str], rows: list[dict[str, Any]], *cols: str
) -> dict[str, list[dict[str, Any]]]:
    """Rows per order: the first of `cols` whose value is (a reference of) one of `ids`."""
    out: dict[str, list[dict[str, Any]]] = {oid: [] for oid in ids}
    for row in rows:
        owners = [first_reference(row[c] or "") for c in cols]
        owner = next((o for o in owners if o in out), None)
        if owner is not None:
            out[owner].append(row)
    return out


async def gateway_ledger(
    engine: AsyncEngine, order_ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Order id -> its charges at the gateway (every run's), each with its refunds."""
    ids = list(order_ids)
    charges = await charges_with_refunds(engine, ids, _first)
    return _by_order(ids, charges, "order_id")


async def carrier_ledger(
    engine: AsyncEngine, order_ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Order id -> its bookings at the carrier, every run's (order_id: the reference)."""
    ids = list(order_ids)
    bookings = await audit_rows(
        engine,
        "SELECT order_id, tracking_number, idempotency_key, address, "
        "cancelled_at IS NOT NULL AS cancelled FROM bookings "
        f"WHERE {_first('order_id')} = ANY(:ids) ORDER BY created_at",
        ids,
    )
    return _by_order(ids, bookings, "order_id")


async def ledger_keys(
    engine: AsyncEngine, provider: str, order_ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Order id -> the idempotency keys at `provider` whose request names it (any run), or
    that name it themselves (`<operation>:<order>:...`) while sent for another order."""
    ids = list(order_ids)
    by_request = _first("request->>'order_id'")
    by_key = _first("split_part(key, ':', 2)")
    rows = await audit_rows(
        engine,
        "SELECT key, operation, request->>'order_id' AS order_ref, "
        "request->>'payment_id' AS payment_id, split_part(key, ':', 2) AS key_order "
        "FROM idempotency_keys "
        f"WHERE {by_request} = ANY(:ids) OR {by_key} = ANY(:ids) "
        "ORDER BY created_at",
        ids,
    )
    for row in rows:
        row["provider"] = provider
    return _by_order(ids, rows, "order_ref", "key_order")
