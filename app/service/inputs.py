"""Parsing and bounding what callers send (order id, payment id, address, line items),
before anything reaches a workflow, by the input rules of app/orders/validation.py. The
business rules ValidateOrder applies are app/orders/rules.py."""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

from app.orders.faults import FaultProfile, FaultProfileError
from app.orders.messages import (
    DEFAULT_ITEMS,
    Address,
    LineItem,
    OrderInput,
)
from app.orders.validation import (
    ADDRESS_FIELDS,
    MAX_ITEMS,
    MAX_OVERRIDE_S,
    MAX_QTY_ACCEPTED,
    MAX_UNIT_PRICE_CENTS,
    SKU_RE,
    address_problems,
    order_id_problem,
    payment_id_problem,
)
from app.platform.settings import Settings
from app.service.errors import Forbidden, InvalidInput


def validate_order_id(order_id: str) -> None:
    problem = order_id_problem(order_id)
    if problem:
        raise InvalidInput(f"order_id {problem}", field="order_id")


def parse_line_items(items: list[dict[str, Any]]) -> list[LineItem]:
    """Line items from plain dicts (the CLI sends what the user typed), checked."""
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidInput(f"items must hold 1 to {MAX_ITEMS} entries", field="items")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"sku", "qty", "unit_price_cents"}:
            raise InvalidInput(
                f"items[{n}] must have exactly sku, qty and unit_price_cents", field=f"items[{n}]"
            )
        sku, qty, price = item["sku"], item["qty"], item["unit_price_cents"]
        if not isinstance(sku, str) or not SKU_RE.fullmatch(sku):
            raise InvalidInput(f"items[{n}].sku is invalid", field=f"items[{n}].sku")
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_QTY_ACCEPTED:
            raise InvalidInput(
                f"items[{n}].qty must be a whole number from 1 to {MAX_QTY_ACCEPTED}",
                field=f"items[{n}].qty",
            )
        if (
            not isinstance(price, int)
            or isinstance(price, bool)
            or not 0 <= price <= MAX_UNIT_PRICE_CENTS
        ):
            raise InvalidInput(
                f"items[{n}].unit_price_cents must be a whole number from 0 to "
                f"{MAX_UNIT_PRICE_CENTS}",
                field=f"items[{n}].unit_price_cents",
            )
        out.append(LineItem(sku=sku, qty=qty, unit_price_cents=price))
    return out


def validate_address(address: dict[str, Any], prefix: str = "address") -> Address:
    problems = address_problems(address)
    if problems:
        name, problem = next(iter(problems.items()))
        raise InvalidInput(
            f"{prefix}.{name} {problem}",
            field=f"{prefix}.{name}",
            problems={f"{prefix}.{k}": v for k, v in problems.items()},
        )
    return Address(**{k: str(address[k]) for k in ADDRESS_FIELDS})


def refuse_test_knobs(settings: Settings, **knobs: object) -> None:
    """Test and demo knobs (a fault profile, timing overrides) need ALLOW_FAULT_INJECTION:
    the one check behind the API's and the service's refusals."""
    if settings.allow_fault_injection:
        return
    for name, value in knobs.items():
        if value is not None:
            raise Forbidden(
                f"{name} is refused: fault injection and timing overrides are disabled on "
                "this server (ALLOW_FAULT_INJECTION=false)",
                field=name,
            )


def check_fault_profile(settings: Settings, fault_profile: str | None) -> None:
    """A run's own fault profile (a start's, or a retry's): allowed and well formed."""
    if fault_profile is None:
        return
    refuse_test_knobs(settings, fault_profile=fault_profile)
    try:
        FaultProfile.parse(fault_profile)
    except FaultProfileError as err:
        raise InvalidInput(str(err), field="fault_profile") from None


class OrderOptions(TypedDict, total=False):
    """What a start request may add to its order id, payment id and address."""

    items: list[dict[str, Any]] | None  # one demo item when omitted
    fault_profile: str | None
    review_timeout_s: float | None
    deadline_s: float | None
    customer_id: str | None


def order_input(
    settings: Settings,
    order_id: str,
    payment_id: str,
    address: dict[str, Any],
    **options: Unpack[OrderOptions],
) -> OrderInput:
    """A start request checked field by field, as the workflow's input."""
    items = options.get("items")
    fault_profile = options.get("fault_profile")
    review_timeout_s = options.get("review_timeout_s")
    deadline_s = options.get("deadline_s")
    customer_id = options.get("customer_id")
    validate_order_id(order_id)
    # Customer ids share the payment id's alphabet: both end up in Temporal's visibility.
    for name, value in (("payment_id", payment_id), ("customer_id", customer_id)):
        problem = payment_id_problem(value) if value is not None else None
        if problem:
            raise InvalidInput(f"{name} {problem}", field=name)
    addr = validate_address(address)
    check_fault_profile(settings, fault_profile)
    for name, seconds in (("review_timeout_s", review_timeout_s), ("deadline_s", deadline_s)):
        if seconds is not None and not 0 < seconds <= MAX_OVERRIDE_S:
            raise InvalidInput(
                f"{name} must be more than 0 and at most {MAX_OVERRIDE_S:g} seconds",
                field=name,
            )
    return OrderInput(
        order_id=order_id,
        payment_id=payment_id,
        address=addr,
        items=parse_line_items(items) if items is not None else list(DEFAULT_ITEMS),
        fault_profile=fault_profile,
        shipping_task_queue=settings.shipping_task_queue,
        review_timeout_s=(
            review_timeout_s if review_timeout_s is not None else settings.review_timeout_s
        ),
        deadline_s=deadline_s if deadline_s is not None else settings.order_deadline_s,
        customer_id=customer_id,
    )
