"""A payment id belongs to the first order that uses it, enforced by the database
(`payment_claims`' primary key): the service claims it when an order starts, a retry
claims its own reference, and ReceiveOrder claims it for a run started another way."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.platform.tables import PaymentClaim


class Claim(NamedTuple):
    owner: str  # the order the payment id belongs to
    new: bool  # claimed by this call


async def claim_payment_id(s: AsyncSession, payment_id: str, order_id: str) -> Claim:
    """Claim the payment id for the order unless another has it."""
    claimed = (
        await s.execute(
            pg_insert(PaymentClaim)
            .values(payment_id=payment_id, order_id=order_id)
            .on_conflict_do_nothing(index_elements=[PaymentClaim.payment_id])
            .returning(PaymentClaim.order_id)
        )
    ).scalar_one_or_none()
    if claimed is not None:
        return Claim(claimed, True)
    owner: str = (
        await s.execute(select(PaymentClaim.order_id).where(PaymentClaim.payment_id == payment_id))
    ).scalar_one()
    return Claim(owner, False)


async def release_payment_id(s: AsyncSession, payment_id: str, order_id: str) -> None:
    """Give back a claim a start made for an order that never started."""
    await s.execute(
        delete(PaymentClaim).where(
            PaymentClaim.payment_id == payment_id, PaymentClaim.order_id == order_id
        )
    )
