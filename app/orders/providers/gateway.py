"""Payment gateway simulator: charges, refunds and voided payments in its own ledger
(database `gateway`).

It behaves like a real gateway with idempotency keys (think Stripe): a repeated request
returns its first result and moves no money; a key reused with other parameters, a refund
of a charge it does not have, or one larger than what is left of the charge, is refused.
The order system reaches it only through `PaymentGateway`; `read_ledger` is for auditors
(chaos, tests).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.orders.faults import CallInfo, FaultInjector
from app.orders.providers import ledger
from app.orders.providers.api import (
    Charge,
    ChargeNotFound,
    ChargeRequest,
    PaymentVoided,
    Refund,
    RefundExceedsCharge,
    RefundRequest,
    SettledCharge,
    Settlement,
    VoidedPayment,
)
from app.platform.sql import Sql

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS charges (
        charge_id text PRIMARY KEY,
        payment_id text NOT NULL,
        order_id text NOT NULL,
        amount_cents bigint NOT NULL CHECK (amount_cents > 0),
        refunded_cents bigint NOT NULL DEFAULT 0,
        idempotency_key text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS charges_payment ON charges (payment_id, order_id)",
    # The settlement export reads charges by time and by order.
    "CREATE INDEX IF NOT EXISTS charges_created ON charges (created_at)",
    "CREATE INDEX IF NOT EXISTS charges_order ON charges (order_id)",
    """CREATE TABLE IF NOT EXISTS refunds (
        refund_id text PRIMARY KEY,
        charge_id text NOT NULL REFERENCES charges,
        amount_cents bigint NOT NULL CHECK (amount_cents > 0),
        idempotency_key text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS voided_payments (
        payment_id text NOT NULL,
        order_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (payment_id, order_id)
    )""",
]


class GatewaySimulator(ledger.Provider):
    def __init__(self, engine: AsyncEngine, faults: FaultInjector) -> None:
        super().__init__(
            engine, faults, "gateway", SCHEMA, ("charge", "refund", "cancel_or_refund")
        )

    async def _for_payment(
        self,
        operation: str,
        call: CallInfo,
        req: ChargeRequest | RefundRequest,
        effect: ledger.Effect,
    ) -> dict[str, Any]:
        """One request about the order's payment, once per key."""
        request = {
            "payment_id": req.payment_id,
            "order_id": req.order_id,
            "amount": req.amount_cents,
        }
        resource = f"payment:{req.payment_id}:{req.order_id}"
        return await self.once(
            operation,
            call,
            key=req.key,
            request=request,
            resource=resource,
            effect=effect,
        )

    async def charge(self, req: ChargeRequest, call: CallInfo) -> Charge:
        async def take_money(db: Sql) -> dict[str, Any]:
            if await _voided(db, req.payment_id, req.order_id):
                raise PaymentVoided(f"payment {req.payment_id} was voided; not charged")
            charge = Charge(f"ch_{secrets.token_hex(8)}", req.payment_id, req.amount_cents)
            await db.run(
                "INSERT INTO charges (charge_id, payment_id, order_id, amount_cents, "
                "idempotency_key) VALUES (:c, :p, :o, :a, :k)",
                c=charge.charge_id,
                p=req.payment_id,
                o=req.order_id,
                a=req.amount_cents,
                k=req.key,
            )
            return asdict(charge)

        stored = await self._for_payment("charge", call, req, take_money)
        return Charge(**stored)

    async def refund(self, req: RefundRequest, call: CallInfo) -> Refund:
        async def give_back(db: Sql) -> dict[str, Any]:
            return asdict(await _refund_charge(db, req))

        stored = await self._for_payment("refund", call, req, give_back)
        return Refund(**stored)

    async def cancel_or_refund(self, req: RefundRequest, call: CallInfo) -> Refund | None:
        async def settle(db: Sql) -> dict[str, Any]:
            if await _charge_of(db, req.payment_id, req.order_id) is not None:
                return asdict(await _refund_charge(db, req))
            await db.run(
                "INSERT INTO voided_payments (payment_id, order_id) VALUES (:p, :o) "
                "ON CONFLICT DO NOTHING",
                p=req.payment_id,
                o=req.order_id,
            )
            return {}  # voided: nothing was charged, and nothing can be now

        stored = await self._for_payment("cancel_or_refund", call, req, settle)
        return Refund(**stored) if stored else None

    async def settlements(
        self, since: datetime, order_ids: Sequence[str] | None = None
    ) -> Settlement:
        """The merchant's settlement export, read from the gateway's own ledger: charges
        made since `since` with their refunds, and payments voided since then."""
        only, params = ledger.export_filter(since, "c.order_id", order_ids)
        charges = await ledger.read(
            self.engine,
            "SELECT c.charge_id, c.payment_id, c.order_id, c.amount_cents, "
            "c.refunded_cents, c.idempotency_key AS key, c.created_at, "
            "coalesce(array_agg(r.idempotency_key ORDER BY r.created_at) "
            "FILTER (WHERE r.refund_id IS NOT NULL), '{}') AS refund_keys "
            "FROM charges c LEFT JOIN refunds r USING (charge_id) "
            f"WHERE c.created_at >= :since{only} "
            "GROUP BY c.charge_id ORDER BY c.created_at, c.charge_id",
            params,
        )
        voids = await ledger.read(
            self.engine,
            "SELECT payment_id, order_id, created_at FROM voided_payments c "
            f"WHERE c.created_at >= :since{only} ORDER BY created_at",
            params,
        )
        return Settlement(
            charges=[
                SettledCharge(**{**r._mapping, "refund_keys": tuple(r.refund_keys)})
                for r in charges
            ],
            voids=[VoidedPayment(**r._mapping) for r in voids],
        )


async def _refund_charge(db: Sql, req: RefundRequest) -> Refund:
    charge = await _charge_of(db, req.payment_id, req.order_id)
    if charge is None:
        raise ChargeNotFound(f"no charge for payment {req.payment_id} of order {req.order_id}")
    left = charge["amount_cents"] - charge["refunded_cents"]
    if not 0 < req.amount_cents <= left:
        raise RefundExceedsCharge(
            f"refund of {req.amount_cents} cents: must be more than 0 and at most the "
            f"{left} cents left on charge {charge['charge_id']}"
        )
    refund = Refund(f"re_{secrets.token_hex(8)}", charge["charge_id"], req.amount_cents)
    await db.run(
        "INSERT INTO refunds (refund_id, charge_id, amount_cents, idempotency_key) "
        "VALUES (:r, :c, :a, :k)",
        r=refund.refund_id,
        c=refund.charge_id,
        a=req.amount_cents,
        k=req.key,
    )
    await db.run(
        "UPDATE charges SET refunded_cents = refunded_cents + :a WHERE charge_id = :c",
        a=req.amount_cents,
        c=refund.charge_id,
    )
    return refund


async def _voided(db: Sql, payment_id: str, order_id: str) -> bool:
    return await ledger.found(
        db,
        "SELECT 1 FROM voided_payments WHERE payment_id = :p AND order_id = :o",
        p=payment_id,
        o=order_id,
    )


async def _charge_of(db: Sql, payment_id: str, order_id: str) -> dict[str, Any] | None:
    row = await db.row(
        "SELECT charge_id, amount_cents, refunded_cents FROM charges "
        "WHERE payment_id = :p AND order_id = :o ORDER BY created_at LIMIT 1",
        p=payment_id,
        o=order_id,
    )
    return dict(row) if row is not None else None


async def read_ledger(
    engine: AsyncEngine, order_ids: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Order id -> its charges at the gateway, each with its refunds (for auditors only)."""
    ids = list(order_ids)
    return ledger.rows_by_order(ids, await charges_with_refunds(engine, ids))


async def charges_with_refunds(
    engine: AsyncEngine, ids: list[str], order_of: Callable[[str], str] = str
) -> list[dict[str, Any]]:
    """The charges whose order is one of `ids`, oldest first, each with its refunds (the
    auditors' read). `order_of(column)`: the SQL that gives a charge's order from its
    order_id column (an auditor that counts every run of an order maps retries to it)."""
    charges = await ledger.audit_rows(
        engine,
        "SELECT charge_id, payment_id, order_id, amount_cents, refunded_cents, idempotency_key "
        f"FROM charges WHERE {order_of('order_id')} = ANY(:ids) ORDER BY created_at",
        ids,
    )
    refunds = await ledger.audit_rows(
        engine,
        "SELECT r.charge_id, r.refund_id, r.amount_cents, r.idempotency_key "
        "FROM refunds r JOIN charges c USING (charge_id) "
        f"WHERE {order_of('c.order_id')} = ANY(:ids) ORDER BY r.created_at",
        ids,
    )
    by_charge: dict[str, list[dict[str, Any]]] = {}
    for refund in refunds:
        by_charge.setdefault(refund["charge_id"], []).append(refund)
    for charge in charges:
        charge["refunds"] = by_charge.get(charge["charge_id"], [])
    return charges
