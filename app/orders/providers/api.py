"""What the order system knows of its providers: typed interfaces, requests, results,
refusals, and the idempotency keys it sends.

Keys are chosen by us and stable across attempts, restarts and duplicate requests, so a
provider that sees a key again answers with its first result and moves nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from app.orders.faults import CallInfo
from app.orders.identity import retry_of


# Every key names the order and the run's retry number (order and payment ids never hold
# ':'), so two orders never share a key, whatever ids their clients chose. A run pays with
# its own payment id, which carries its retry number (app/orders/identity.py): the money
# keys take it from there, so the order's compensation and the reconciliation build the
# same key for a payment, by construction.
def charge_key(order_id: str, payment_id: str) -> str:
    return f"charge:{order_id}:{payment_id}:{retry_of(payment_id)}"


def refund_key(order_id: str, payment_id: str) -> str:
    return f"refund:{order_id}:{payment_id}:{retry_of(payment_id)}"


def prepare_key(order_id: str, retry: int, shipping_attempt: int) -> str:
    return f"prepare:{order_id}:{retry}:{shipping_attempt}"


def dispatch_key(order_id: str, retry: int, shipping_attempt: int) -> str:
    return f"dispatch:{order_id}:{retry}:{shipping_attempt}"


class ProviderRefusal(Exception):
    """A provider said no. Never retryable: the same request gets the same answer.

    `code` names the refusal where it fails an activity (its error type); each kind of
    refusal states its own: `class Refused(ProviderRefusal, code="Refused")`."""

    code = "ProviderRefused"

    def __init_subclass__(cls, *, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code


class IdempotencyConflict(ProviderRefusal, code="IdempotencyConflict"):
    """The key was used before with other parameters."""


class ChargeNotFound(ProviderRefusal, code="ChargeNotFound"):
    """A refund of a charge the gateway does not have (for this payment and order)."""


class RefundExceedsCharge(ProviderRefusal, code="RefundExceedsCharge"):
    """A refund of more than what is left of the charge."""


class PaymentVoided(ProviderRefusal, code="PaymentVoided"):
    """The payment was voided (the order closed without a charge); no charge is taken."""


class ShipmentCancelled(ProviderRefusal, code="ShipmentCancelled"):
    """The order's shipments were cancelled (the order closed unshipped); nothing is booked."""


class KeyClosed(ProviderRefusal, code="DispatchSuperseded"):
    """A dispatch key superseded by a later shipping attempt; it books nothing any more."""


@dataclass(frozen=True)
class ChargeRequest:
    key: str
    payment_id: str
    order_id: str
    amount_cents: int


@dataclass(frozen=True)
class Charge:
    charge_id: str
    payment_id: str
    amount_cents: int


@dataclass(frozen=True)
class RefundRequest:
    key: str
    payment_id: str
    order_id: str
    amount_cents: int


@dataclass(frozen=True)
class Refund:
    refund_id: str
    charge_id: str
    amount_cents: int


@dataclass(frozen=True)
class PrepareRequest:
    key: str
    order_id: str
    shipping_attempt: int


@dataclass(frozen=True)
class Package:
    package_id: str


@dataclass(frozen=True)
class DispatchRequest:
    key: str
    order_id: str
    address: dict[str, Any]
    # Keys of earlier shipping attempts of this order: if one of them already booked the
    # parcel (its answer was lost), that booking is the answer; the rest are closed.
    supersedes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CancelShipmentsRequest:
    order_id: str


@dataclass(frozen=True)
class Booking:
    tracking_number: str
    key: str
    address: dict[str, Any]


# --- Settlement exports: what a provider reports to its merchant (reconciliation) --------


@dataclass(frozen=True)
class SettledCharge:
    """A charge as the gateway's settlement export shows it, with what was refunded of it."""

    charge_id: str
    payment_id: str
    order_id: str
    amount_cents: int
    refunded_cents: int
    key: str
    created_at: datetime
    refund_keys: tuple[str, ...] = ()

    @property
    def kept_cents(self) -> int:
        return self.amount_cents - self.refunded_cents


@dataclass(frozen=True)
class VoidedPayment:
    payment_id: str
    order_id: str
    created_at: datetime


@dataclass(frozen=True)
class Settlement:
    """The gateway's export: charges made since a time (with their refunds) and voids."""

    charges: list[SettledCharge]
    voids: list[VoidedPayment]


@dataclass(frozen=True)
class BookingRecord:
    """A booking as the carrier's export shows it; `carrier_order` is the order as the
    carrier knows it (the order id, or a retry's reference)."""

    tracking_number: str
    carrier_order: str
    key: str
    cancelled: bool
    created_at: datetime


class PaymentGateway(Protocol):
    async def charge(self, req: ChargeRequest, call: CallInfo) -> Charge:
        """Take the money once per key."""
        ...

    async def refund(self, req: RefundRequest, call: CallInfo) -> Refund:
        """Give back (part of) the order's charge under this payment id, once per key."""
        ...

    async def cancel_or_refund(self, req: RefundRequest, call: CallInfo) -> Refund | None:
        """Refund the order's charge under this payment id, or, when there is none, void
        the payment so no charge can be taken for it any more (None).

        For an order that ends while its charge's answer may have been lost (like Adyen's
        cancelOrRefund): one call settles it whichever way the charge went."""
        ...

    async def settlements(
        self, since: datetime, order_ids: Sequence[str] | None = None
    ) -> Settlement:
        """The settlement export: charges made since `since` (only these orders' when
        given), each with what was refunded of it, and the payments voided since then.

        A report the gateway gives its merchant, like a settlement file: the order system
        reads the gateway's side of the money only through this (reconciliation)."""
        ...


class Carrier(Protocol):
    async def prepare(self, req: PrepareRequest, call: CallInfo) -> Package: ...

    async def dispatch(self, req: DispatchRequest, call: CallInfo) -> Booking:
        """Book the parcel once per key (or return an earlier attempt's booking)."""
        ...

    async def cancel(self, req: CancelShipmentsRequest, call: CallInfo) -> list[Booking]:
        """Cancel the order's bookings and refuse new ones; the bookings it cancelled.

        For an order that ends unshipped while a dispatch's answer may have been lost."""
        ...

    async def bookings(
        self, since: datetime, carrier_orders: Sequence[str] | None = None
    ) -> list[BookingRecord]:
        """The carrier's export: bookings made since `since` (only these carrier orders'
        when given), cancelled or not."""
        ...
