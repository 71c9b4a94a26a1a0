"""What both simulators share: their own database, and Stripe-style idempotency keys.

A key is claimed in the same transaction as the effect it guards, so a request either
leaves its effect and its stored answer, or neither. A repeat of the request (same key,
same parameters) gets the stored answer; other parameters under the key are refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.orders.faults import CallInfo, FaultInjector, Faults
from app.orders.providers.api import IdempotencyConflict
from app.platform.sql import Sql, as_json, driver

IDEMPOTENCY_TABLE = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key text PRIMARY KEY,
    operation text NOT NULL,
    request jsonb NOT NULL,
    response jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""


async def install_schema(engine: AsyncEngine, name: str, statements: list[str]) -> None:
    """Create the ledger's tables if missing; workers starting together take turns."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
        for statement in [IDEMPOTENCY_TABLE, *statements]:
            await conn.execute(text(statement))


async def lock(db: Sql, *resources: str) -> None:
    """Serialise requests about these resources (a key, a payment, an order) until commit,
    taking their locks in the order given."""
    locks = ", ".join(f"pg_advisory_xact_lock(hashtext(:r{i}))" for i in range(len(resources)))
    await db.run(f"SELECT {locks}", **{f"r{i}": r for i, r in enumerate(resources)})


async def replay(
    db: Sql, key: str, operation: str, request: dict[str, Any]
) -> dict[str, Any] | None:
    """The stored answer for a repeated request, or None for a new key.

    Call under the resource's lock: a concurrent first request has then committed."""
    row = await db.row(
        "SELECT operation, request, response FROM idempotency_keys WHERE key = :k", k=key
    )
    if row is None:
        return None
    if row["operation"] != operation or row["request"] != request:
        # Like a real gateway: the earlier request (another customer's) is not revealed.
        raise IdempotencyConflict(f"idempotency key {key!r} was already used with other parameters")
    response: dict[str, Any] = row["response"]
    return response


async def remember(
    db: Sql,
    key: str,
    operation: str,
    request: dict[str, Any],
    response: dict[str, Any],
) -> None:
    await db.run(
        "INSERT INTO idempotency_keys (key, operation, request, response) "
        "VALUES (:k, :o, CAST(:req AS jsonb), CAST(:resp AS jsonb))",
        k=key,
        o=operation,
        req=as_json(request),
        resp=as_json(response),
    )


# A request's effect, on its transaction's connection.
Effect = Callable[[Sql], Awaitable[dict[str, Any]]]


class Provider:
    """A simulated provider over its own database: each request runs its faults, then its
    effect once per key."""

    def __init__(
        self,
        engine: AsyncEngine,
        injector: FaultInjector,
        name: str,
        schema: list[str],
        services: tuple[str, ...],
    ) -> None:
        self.engine = engine
        self.name = name
        self.schema = schema
        # One fault draw per (order, service, attempt), as for the other external services.
        self.faults = {service: Faults(injector, service) for service in services}

    async def install(self) -> None:
        await install_schema(self.engine, self.name, self.schema)

    async def once(
        self,
        operation: str,
        call: CallInfo,
        *,
        key: str,
        request: dict[str, Any],
        resource: str,
        effect: Effect,
    ) -> dict[str, Any]:
        """The profile's fail and hang strike before the effect; a lost answer after its commit.

        The key and the resource it acts on (a payment, an order) are locked until commit,
        so a concurrent repeat waits and then replays the stored answer."""
        faults = self.faults[operation].draw(call)
        await faults.before()
        async with driver(self.engine) as db, db.transaction():
            await lock(db, key, resource)
            response = await replay(db, key, operation, request)
            if response is None:
                response = await effect(db)
                await remember(db, key, operation, request, response)
        await faults.after()
        return response


async def found(db: Sql, sql: str, **params: Any) -> bool:
    """Whether the query finds a row."""
    return await db.row(sql, **params) is not None


def export_filter(
    since: datetime, column: str, only: Sequence[str] | None
) -> tuple[str, dict[str, Any]]:
    """An export's rows made since `since`, only those whose `column` is one of `only`
    when given: the condition to add after `created_at >= :since`, and its parameters."""
    params: dict[str, Any] = {"since": since}
    if only is None:
        return "", params
    params["only"] = list(only)
    return f" AND {column} = ANY(:only)", params


async def read(engine: AsyncEngine, sql: str, params: dict[str, Any]) -> Sequence[Row[Any]]:
    """The rows of one query (the merchant's exports, the auditors' reads)."""
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).all()


async def audit_rows(engine: AsyncEngine, sql: str, order_ids: list[str]) -> list[dict[str, Any]]:
    """Rows of a ledger query over `:ids` (the auditors' read: chaos, tests)."""
    return [dict(r._mapping) for r in await read(engine, sql, {"ids": order_ids})]


def rows_by_order(
    order_ids: list[str], rows: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Order id -> its rows, in their order (an empty list for an order with none)."""
    out: dict[str, list[dict[str, Any]]] = {oid: [] for oid in order_ids}
    for row in rows:
        out.setdefault(row["order_id"], []).append(row)
    return out
