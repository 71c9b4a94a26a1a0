"""Activities: the external calls of each step plus their database effects.

Each step's state change and event are written in the same transaction as its effect, and
every write is idempotent, so a retried or duplicated attempt changes nothing twice.
"""

from app.orders.activities.order import OrderActivities
from app.orders.activities.shipping import ShippingActivities

__all__ = ["OrderActivities", "ShippingActivities"]
