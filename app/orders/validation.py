"""Input rules shared by the API, the CLI and the workflow's update validators.

Pure functions with no third-party imports, so the workflow sandbox can use them cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# An order id becomes part of a workflow id and of URLs: keep it short and plain.
ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PAYMENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ZIP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{1,9}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
ADDRESS_FIELDS = ("street", "city", "state", "zip", "country")
MAX_FIELD_LEN = {"street": 200, "city": 100, "state": 100, "zip": 10, "country": 2}


def order_id_problem(order_id: str) -> str | None:
    if not ORDER_ID_RE.fullmatch(order_id):
        return "must be 1-64 characters: letters, digits, '.', '_' or '-', starting alphanumeric"
    return None


def payment_id_problem(payment_id: str) -> str | None:
    if not PAYMENT_ID_RE.fullmatch(payment_id):
        return "must be 1-64 characters: letters, digits, '.', '_' or '-', starting alphanumeric"
    return None


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
