"""Which activities each task queue serves, built from the handles they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.orders.activities.changes import ChangeActivities
from app.orders.activities.compensation import CompensationActivities
from app.orders.activities.intake import IntakeActivities
from app.orders.activities.payment import PaymentActivities
from app.orders.activities.shipping import ShippingActivities
from app.orders.providers.api import Carrier, PaymentGateway
from app.orders.providers.intake import OrderIntake


@dataclass(frozen=True)
class ActivityDependencies:
    """The order database and the external services, as the activities reach them."""

    sessions: async_sessionmaker[AsyncSession]
    intake: OrderIntake
    gateway: PaymentGateway
    carrier: Carrier


def orders_queue_activities(deps: ActivityDependencies) -> list[Callable[..., Any]]:
    """OrderWorkflow's activities: its steps up to payment, the caller's changes, and
    the close with its compensation."""
    intake = IntakeActivities(deps.sessions, deps.intake)
    payment = PaymentActivities(deps.sessions, deps.gateway)
    changes = ChangeActivities(deps.sessions)
    compensation = CompensationActivities(deps.sessions, deps.gateway, deps.carrier)
    return [
        intake.receive_order,
        intake.validate_order,
        payment.charge_payment,
        changes.apply_address_change,
        changes.mark_cancel_requested,
        compensation.close_order,
        compensation.refund_payment,
    ]


def shipping_queue_activities(deps: ActivityDependencies) -> list[Callable[..., Any]]:
    """ShippingWorkflow's activities."""
    shipping = ShippingActivities(deps.sessions, deps.carrier)
    return [shipping.prepare_package, shipping.dispatch_carrier]
