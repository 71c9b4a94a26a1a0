"""Who an identity belongs to, and the references a retry pays and ships under.

An order id and a payment id are chosen by clients from letters, digits, '.', '_' and '-'
(app/orders/validation.py). A retry's references add `#r<N>`: a form no client-chosen id
can take, so a retry's payment or carrier order never names another order's. The first
run of an order is retry 1 and keeps the client's ids as they are.

Pure functions with no third-party imports: the workflow sandbox uses them.
"""

from __future__ import annotations

import re

RETRY_MARK = "#r"
_RETRY_SUFFIX = re.compile(r"#r(\d+)$")


def retry_reference(first: str, retry: int) -> str:
    """The reference (payment id, carrier order) retry `retry` uses for `first`."""
    return first if retry <= 1 else f"{first_reference(first)}{RETRY_MARK}{retry}"


def first_reference(reference: str) -> str:
    """The client's id a retry reference was made from (itself for a client's id)."""
    return _RETRY_SUFFIX.sub("", reference)


def retry_of(reference: str) -> int:
    """The retry number a reference belongs to (1 for a client's id)."""
    found = _RETRY_SUFFIX.search(reference)
    return int(found.group(1)) if found else 1
