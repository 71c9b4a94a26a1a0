"""Input rules: what a caller may send, shared by the API's schemas, the service (API and
CLI alike) and the workflow's update validators. The business rules ValidateOrder applies
to a well-formed order are app/orders/rules.py; app/service/inputs.py applies these to a
request.

Pure functions with no third-party imports, so the workflow sandbox can use them cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Ids (order, payment, customer, SKU) become parts of workflow ids, URLs and search
# attributes: short and plain, one alphabet for all of them.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ORDER_ID_RE = PAYMENT_ID_RE = SKU_RE = ID_RE
ID_PROBLEM = "must be 1-64 characters: letters, digits, '.', '_' or '-', starting alphanumeric"
ZIP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{1,9}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
ADDRESS_FIELDS = ("street", "city", "state", "zip", "country")
MAX_FIELD_LEN = {"street": 200, "city": 100, "state": 100, "zip": 10, "country": 2}

# Bounds on what one order may ask for (the amount must fit orders.amount NUMERIC(12,2)).
MAX_ITEMS = 50
# Anything above is refused as malformed (422) before it reaches a workflow; between the
# business rule's MAX_QTY_PER_LINE (app/orders/rules.py) and this, ValidateOrder fails the
# order.
MAX_QTY_ACCEPTED = 1000
MAX_UNIT_PRICE_CENTS = 10_000_000
# The most a test or demo may set an order's review timeout or deadline to.
MAX_OVERRIDE_S = 3600.0


def id_problem(value: str) -> str | None:
    """What is wrong with an order, payment or customer id; None when nothing is."""
    return None if ID_RE.fullmatch(value) else ID_PROBLEM


# Named for what their callers check (one rule behind both).
order_id_problem = payment_id_problem = id_problem


def _printable(value: str) -> bool:
    return value.isprintable()


def address_problems(address: Mapping[str, object]) -> dict[str, str]:
    """Field name -> problem, empty when the address is acceptable."""
    problems: dict[str, str] = {}
    for name in ADDRESS_FIELDS:
        value = address.get(name)
        if not isinstance(value, str) or not value.strip():
            problems[name] = "is required"
        elif len(value) > MAX_FIELD_LEN[name]:
            problems[name] = f"must be at most {MAX_FIELD_LEN[name]} characters"
        elif not _printable(value):
            problems[name] = "must not contain control characters"
    zip_code = address.get("zip")
    if "zip" not in problems and isinstance(zip_code, str) and not ZIP_RE.fullmatch(zip_code):
        problems["zip"] = "must be 2-10 letters, digits, spaces or dashes"
    country = address.get("country")
    if "country" not in problems and isinstance(country, str) and not COUNTRY_RE.fullmatch(country):
        problems["country"] = "must be a two-letter ISO country code in capitals, like US"
    return problems
