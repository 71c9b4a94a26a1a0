"""A visibility query can only narrow the list of this app's orders (issue 24).

`confined_query` parses the caller's text against an allow-list and rebuilds it; what
Temporal gets is always `WorkflowType='OrderWorkflow' AND (<rebuilt>)`, with balanced
parentheses and no quote or backslash of the caller's. The real server's answers to the
break-outs: tests/api/test_hostile.py.
"""

from __future__ import annotations

import re

import pytest

from app.service.errors import InvalidInput
from app.service.visibility import MAX_DEPTH, confined_query

pytestmark = pytest.mark.unit

WRAP = "WorkflowType='OrderWorkflow' AND ({})"


def confined(query: str) -> str:
    return confined_query("OrderWorkflow", query)


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("OrderState='FAILED'", "OrderState = 'FAILED'"),
        ('OrderState="FAILED"', "OrderState = 'FAILED'"),
        (
            "CustomerId='c-1' and OrderStep = 'MANUAL_REVIEW'",
            "CustomerId = 'c-1' AND OrderStep = 'MANUAL_REVIEW'",
        ),
        (
            "NOT (OrderState='FAILED' OR OrderState!='PAID')",
            "NOT (OrderState = 'FAILED' OR OrderState != 'PAID')",
        ),
        ("OrderState IN ('FAILED','PAID')", "OrderState IN ('FAILED', 'PAID')"),
        ("OrderState NOT IN ('FAILED')", "OrderState NOT IN ('FAILED')"),
        ("OrderAmountCents BETWEEN 1 AND 5000", "OrderAmountCents BETWEEN 1 AND 5000"),
        ("OrderAmountCents>=-5", "OrderAmountCents >= -5"),
        ("CustomerId STARTS_WITH 'cust'", "CustomerId STARTS_WITH 'cust'"),
        ("CustomerId IS NOT NULL", "CustomerId IS NOT NULL"),
        ("StartTime > '2026-01-01T00:00:00Z'", "StartTime > '2026-01-01T00:00:00Z'"),
        ("ExecutionStatus='Running'", "ExecutionStatus = 'Running'"),
        (
            "WorkflowId='order-1' AND OrderState='FAILED'",
            "WorkflowId = 'order-1' AND OrderState = 'FAILED'",
        ),
        ("((OrderState='FAILED'))", "((OrderState = 'FAILED'))"),
    ],
)
def test_allowed_queries_are_rebuilt_inside_the_wrapper(query: str, sent: str) -> None:
    assert confined(query) == WRAP.format(sent)


BREAK_OUTS = [
    # The issue's: close the wrapper's parenthesis, open one for the rest.
    "OrderState='x') OR (WorkflowType!='OrderWorkflow'",
    "OrderState='x')) OR ((WorkflowType!='OrderWorkflow'",
    "(OrderState='x')) OR ((WorkflowType!='OrderWorkflow')",
    "OrderState='x') OR (OrderState!='x'",
    "OrderState='x') OR WorkflowType!=('OrderWorkflow'",
    # Quotes and backslashes inside text, to end a string early in another parser.
    "OrderState='x\\') OR (WorkflowType!=\\'OrderWorkflow'",
    "OrderState='x\\' OR WorkflowType!='OrderWorkflow'",
    "OrderState=\"x') OR (WorkflowType!='OrderWorkflow\"",
    "OrderState='x\"') OR (\"'",
    "OrderState='it''s'",
    "OrderState=`x`",
    # Other attributes, functions, clauses.
    "WorkflowType='ShippingWorkflow'",
    "RunId='x'",
    "orderstate='FAILED'",
    "OrderState='x' ORDER BY StartTime",
    "OrderState LIKE 'F%'",
    "OrderState='x'; DROP TABLE orders",
    "OrderState='x' -- comment",
    "OrderState='x' /* c */",
    "1=1",
    "TRUE",
    # Unbalanced and empty.
    "(OrderState='x'",
    "OrderState='x')",
    ")(",
    "()",
    "",
    "   ",
    "NOT",
    "OrderState=",
    "OrderState IN ()",
    # Types: numbers for the amount, text for the rest.
    "OrderAmountCents='5'",
    "OrderState=5",
    "OrderState > 'A'",
    "OrderState BETWEEN 'A' AND 'B'",
    "OrderAmountCents STARTS_WITH 5",
    "OrderAmountCents=1.5",
    "OrderAmountCents=99999999999999999999",
    # Whitespace and characters from elsewhere.
    "OrderState='x'\nOR WorkflowType!='OrderWorkflow'",
    "OrderState='x'\u00a0OR\u2003OrderState='y'",
    "OrderState='caf\u00e9'",
    "OrderState='x\x00'",
    "OrderState\uff1d'x'",
]


@pytest.mark.parametrize("query", BREAK_OUTS)
def test_anything_else_is_a_422_on_query_in_our_words(query: str) -> None:
    with pytest.raises(InvalidInput) as info:
        confined(query)
    err = info.value
    assert err.field == "query" and err.message.startswith("query ")
    assert "WorkflowType='OrderWorkflow'" not in err.message
    assert err.message.isprintable()


def test_nesting_is_bounded() -> None:
    deep = "(" * (MAX_DEPTH + 2) + "OrderState='x'" + ")" * (MAX_DEPTH + 2)
    with pytest.raises(InvalidInput, match="nests deeper"):
        confined(deep)
    fine = "(" * MAX_DEPTH + "OrderState='x'" + ")" * MAX_DEPTH
    assert confined(fine).endswith(")" * (MAX_DEPTH + 1))


def test_whatever_is_accepted_keeps_the_wrapper_balanced() -> None:
    """Every accepted query's parentheses balance inside the wrapper's own pair, and no
    text value holds a quote or backslash."""
    samples = [
        "NOT NOT (OrderState='a' AND (OrderStep='b' OR NOT CustomerId IS NULL))",
        "OrderAmountCents NOT BETWEEN 1 AND 2 OR OrderState IN ('a','b','c')",
    ]
    for query in samples:
        sent = confined(query)
        inner = re.sub(r"'[^']*'", "''", sent.removeprefix("WorkflowType='OrderWorkflow' AND "))
        depth = 0
        for n, char in enumerate(inner):
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth > 0 or n == len(inner) - 1, (query, sent)
        assert depth == 0
        assert "\\" not in sent and '"' not in sent
