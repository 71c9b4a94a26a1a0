"""The order's workflows: OrderWorkflow (the state machine, order.py; its state's groups in
order_state.py, what it tells each activity in calls.py) and its child ShippingWorkflow
(shipping.py). Type names, signals, updates and queries are the compatibility contract with
running orders and the committed replay histories."""

from app.orders.workflows.order import OrderWorkflow
from app.orders.workflows.shipping import ShippingWorkflow

__all__ = ["OrderWorkflow", "ShippingWorkflow"]
