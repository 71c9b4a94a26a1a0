"""The order's Temporal search attributes: what operators filter orders by in the Temporal
UI and in `temporal workflow list --query "OrderState='FAILED'"`.

The workflow upserts them as the order moves (app/orders/workflows/order.py); the embedded
stack registers them when it starts the dev server, compose's setup service with
`temporal operator search-attribute create`. Names and types are a contract with both.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

ORDER_STATE = SearchAttributeKey.for_keyword("OrderState")
ORDER_STEP = SearchAttributeKey.for_keyword("OrderStep")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_AMOUNT_CENTS = SearchAttributeKey.for_int("OrderAmountCents")

# name -> the type name `temporal` takes (Keyword, Int), for registration.
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: key.indexed_value_type.name.title()
    for key in (ORDER_STATE, ORDER_STEP, CUSTOMER_ID, ORDER_AMOUNT_CENTS)
}
