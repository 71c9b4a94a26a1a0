"""Activities: the external calls of each step plus their database effects.

One class per concern, each given what it uses in its constructor (the order database's
sessions, and the external services it calls); `ActivityDependencies` carries those
handles to a worker, which registers each queue's activities (app/worker.py).

Each step's state change and event are written in the same transaction as its effect, and
every write is idempotent, so a retried or duplicated attempt changes nothing twice.
"""

from app.orders.activities.changes import ChangeActivities
from app.orders.activities.compensation import CompensationActivities
from app.orders.activities.intake import IntakeActivities
from app.orders.activities.payment import PaymentActivities
from app.orders.activities.queues import (
    ActivityDependencies,
    orders_queue_activities,
    shipping_queue_activities,
)
from app.orders.activities.shipping import ShippingActivities

__all__ = [
    "ActivityDependencies",
    "ChangeActivities",
    "CompensationActivities",
    "IntakeActivities",
    "PaymentActivities",
    "ShippingActivities",
    "orders_queue_activities",
    "shipping_queue_activities",
]
