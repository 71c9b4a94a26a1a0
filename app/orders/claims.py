"""A payment id belongs to the first order that uses it, enforced by the database
(`payment_claims`' primary key): the service claims it when an order starts, a retry
claims its own reference, and ReceiveOrder claims it for a run started another way.
A retry's reference (`<payment id>#r<N>`) belongs to the order that owns the payment id
it was made from, and to no other."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.orders.identity import first_reference
from app.platform.sql import Sql
from app.platform.tables import PaymentClaim


class Claim(NamedTuple):
    owner: str  # the order the payment id belongs to
    new: bool  # claimed by this call


# The claim, or the owner's when it was taken before. A claim committed by a concurrent
# statement after this one began is not in this statement's snapshot: then no row, and the
# owner is read again (or, if that order gave its claim back meanwhile, the id claimed again).
_CLAIM = """
WITH claimed AS (
    INSERT INTO payment_claims (payment_id, order_id) VALUES (:payment_id, :order_id)
    ON CONFLICT (payment_id) DO NOTHING
    RETURNING order_id
)
SELECT order_id, true AS new FROM claimed
UNION ALL
SELECT order_id, false AS new FROM payment_claims WHERE payment_id = :payment_id
"""
_OWNER = "SELECT order_id FROM payment_claims WHERE payment_id = :payment_id"


async def claim_payment_id(db: Sql, payment_id: str, order_id: str) -> Claim:
    """Claim the payment id for the order unless another has it. A retry's reference only
    for the order whose payment id it was made from (claimed now if nobody had it: a run
    that failed before its claim); else the owner of that payment id is the answer."""
    first = first_reference(payment_id)
    if first != payment_id:
        base = await _claim(db, first, order_id)
        if base.owner != order_id:
            return Claim(base.owner, False)
    return await _claim(db, payment_id, order_id)


async def _claim(db: Sql, payment_id: str, order_id: str) -> Claim:
    while True:  # another pass only after another order took the id and gave it back
        row = await db.row(_CLAIM, payment_id=payment_id, order_id=order_id)
        if row is not None:
            return Claim(row["order_id"], row["new"])
        owner = await db.value(_OWNER, payment_id=payment_id)
        if owner is not None:
            return Claim(owner, False)


async def release_payment_id(s: AsyncSession, payment_id: str, order_id: str) -> None:
    """Give back a claim a start made for an order that never started."""
    await s.execute(
        delete(PaymentClaim).where(
            PaymentClaim.payment_id == payment_id, PaymentClaim.order_id == order_id
        )
    )
