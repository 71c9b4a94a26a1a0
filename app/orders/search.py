"""The order's Temporal search attributes: what operators filter orders by in the Temporal
UI and in `temporal workflow list --query "OrderState='FAILED'"`.

The workflow upserts them as the order moves (app/orders/workflows/order.py); the embedded
stack registers them when it starts the dev server, compose's setup service with
`temporal operator search-attribute create`. Names and types are a contract with both.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate

from app.orders.models import OrderInput, order_amount_cents

ORDER_STATE = SearchAttributeKey.for_keyword("OrderState")
ORDER_STEP = SearchAttributeKey.for_keyword("OrderStep")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_AMOUNT_CENTS = SearchAttributeKey.for_int("OrderAmountCents")

# name -> the type name `temporal` takes (Keyword, Int), for registration.
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: key.indexed_value_type.name.title()
    for key in (ORDER_STATE, ORDER_STEP, CUSTOMER_ID, ORDER_AMOUNT_CENTS)
}


def upsert_search_attributes(
    inp: OrderInput, state: str, step: str | None, *, first: bool = False
) -> None:
    """From the workflow: the order's state and step now (and, the first time, what does
    not change: amount and customer)."""
    updates: list[SearchAttributeUpdate[Any]] = [
        ORDER_STATE.value_set(state),
        ORDER_STEP.value_set(step or ""),
    ]
    if first:
        updates.append(ORDER_AMOUNT_CENTS.value_set(order_amount_cents(inp.items)))
        if inp.customer_id:
            updates.append(CUSTOMER_ID.value_set(inp.customer_id))
    workflow.upsert_search_attributes(updates)
