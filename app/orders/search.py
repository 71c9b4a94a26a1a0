"""The order's Temporal search attributes: what operators filter orders by in the Temporal
UI and in `temporal workflow list --query "OrderState='FAILED'"`.

A start sets them (PENDING, RECEIVE, amount, customer); the workflow upserts state and step
when the order settles where an operator acts or waits: the review, shipping, its end
(app/orders/workflows/order.py). Receiving, validating and charging last milliseconds and
are not published: each upsert is a history event and a visibility write, about 9 ms of
the dev server's CPU (docs/performance.md). The embedded stack registers the attributes
when it starts the dev server, compose's setup job with `temporal operator
search-attribute create`. Names and types are a contract with both.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

from app.orders.messages import OrderInput, OrderState, Step, order_amount_cents

ORDER_STATE = SearchAttributeKey.for_keyword("OrderState")
ORDER_STEP = SearchAttributeKey.for_keyword("OrderStep")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_AMOUNT_CENTS = SearchAttributeKey.for_int("OrderAmountCents")

# name -> the type name `temporal` takes (Keyword, Int), for registration.
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: key.indexed_value_type.name.title()
    for key in (ORDER_STATE, ORDER_STEP, CUSTOMER_ID, ORDER_AMOUNT_CENTS)
}


def start_attributes(inp: OrderInput) -> TypedSearchAttributes:
    """What a start sets at once (in the start request: no workflow command): a new order,
    its amount and its customer."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(ORDER_STATE, OrderState.PENDING),
        SearchAttributePair(ORDER_STEP, Step.RECEIVE),
        SearchAttributePair(ORDER_AMOUNT_CENTS, order_amount_cents(inp.items)),
    ]
    if inp.customer_id:
        pairs.append(SearchAttributePair(CUSTOMER_ID, inp.customer_id))
    return TypedSearchAttributes(pairs)


def upsert_search_attributes(state: str, step: str | None, inp: OrderInput | None = None) -> None:
    """From the workflow: the order's state and step now; with `inp`, also what the start
    did not set (a run started by another client than ours)."""
    updates: list[SearchAttributeUpdate[Any]] = [
        ORDER_STATE.value_set(state),
        ORDER_STEP.value_set(step or ""),
    ]
    if inp is not None:
        updates.append(ORDER_AMOUNT_CENTS.value_set(order_amount_cents(inp.items)))
        if inp.customer_id:
            updates.append(CUSTOMER_ID.value_set(inp.customer_id))
    workflow.upsert_search_attributes(updates)
