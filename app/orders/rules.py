"""The business rules ValidateOrder checks (a violation fails the order at once, never
retried). What a caller may send at all is another thing: app/orders/validation.py."""

from __future__ import annotations

from app.orders.messages import ValidateInput, order_amount_cents
from app.orders.validation import address_problems

# Business rules checked by ValidateOrder.
MAX_ORDER_CENTS = 1_000_000
# The most of one item we ship in one order (larger quantities are a wholesale order).
MAX_QTY_PER_LINE = 100
SHIPPABLE_COUNTRIES = frozenset({"US", "CA", "GB", "DE", "FR", "NL", "ES", "IT", "AU", "JP"})


def business_problems(inp: ValidateInput) -> dict[str, str]:
    problems: dict[str, str] = {}
    if not inp.items:
        problems["items"] = "must not be empty"
    elif any(i.qty < 1 or i.qty > MAX_QTY_PER_LINE for i in inp.items):
        problems["items"] = f"quantities must be between 1 and {MAX_QTY_PER_LINE}"
    elif any(i.unit_price_cents < 0 for i in inp.items):
        problems["items"] = "prices must not be negative"
    elif order_amount_cents(inp.items) > MAX_ORDER_CENTS:
        problems["amount"] = "exceeds the limit for one order"
    problems.update({f"address.{k}": v for k, v in address_problems(inp.address.as_dict()).items()})
    if "address.country" not in problems and inp.address.country not in SHIPPABLE_COUNTRIES:
        problems["address.country"] = f"we do not ship to {inp.address.country}"
    return problems
