"""Visibility queries a caller may send (`GET /orders?query=`, `cli.py list --query`).

The query is parsed here against an allow-list before Temporal sees it: the order's
search attributes (plus the workflow id, start and close times and execution status), the usual
comparison operators, AND/OR/NOT and parentheses. What Temporal then gets is not the
caller's text but the query rebuilt from the parsed tokens, inside parentheses behind
`WorkflowType='OrderWorkflow' AND`: quotes, backslashes and unbalanced parentheses
never reach it, so a query can only ever narrow the list of this app's orders.

    expr      := term (OR term)*
    term      := factor (AND factor)*
    factor    := NOT factor | '(' expr ')' | predicate
    predicate := ATTR op value | ATTR [NOT] IN '(' value (',' value)* ')'
               | ATTR [NOT] BETWEEN value AND value | ATTR STARTS_WITH 'text'
               | ATTR IS [NOT] NULL

Refusals are `InvalidInput` on `query`, in our words (a position, never the caller's
text beyond an attribute-like name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from app.service.errors import InvalidInput

Kind = Literal["keyword", "int", "datetime"]

# What a query may name, and the type of its values.
ATTRIBUTES: dict[str, Kind] = {
    "OrderState": "keyword",
    "OrderStep": "keyword",
    "CustomerId": "keyword",
    "OrderAmountCents": "int",
    "ExecutionStatus": "keyword",
    # Confined by the wrapper's WorkflowType like the rest: an order's own workflow id.
    "WorkflowId": "keyword",
    "StartTime": "datetime",
    "CloseTime": "datetime",
}
_COMPARISONS = {"=", "!=", "<>", "<", "<=", ">", ">="}
_EQUALITY = {"=", "!=", "<>"}
_KEYWORDS = {"AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "STARTS_WITH"}
MAX_DEPTH = 16
MAX_TERMS = 64

# Text values: printable ASCII without quotes, backslash or backtick; quoted with ' or ".
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t]+)
  | (?P<string>'[\x20-\x7e]*?'|"[\x20-\x7e]*?")
  | (?P<number>-?[0-9]{1,18}(?![0-9A-Za-z_.]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]{0,63}(?![A-Za-z0-9_]))
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
_SAFE_TEXT = re.compile(r"[\x20-\x7e]*")
_UNSAFE_IN_TEXT = set("'\"\\`")


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"query {message}", field="query")


@dataclass(frozen=True)
class _Tok:
    kind: str  # string, number, name, keyword, op, punct
    text: str  # canonical text
    pos: int


def _tokens(query: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None:
            raise _refuse(
                f"has a character it does not allow at position {pos + 1} (allowed: "
                "attribute names, 'text', whole numbers, comparisons, parentheses, commas)"
            )
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "string":
            inner = text[1:-1]
            if _UNSAFE_IN_TEXT & set(inner) or not _SAFE_TEXT.fullmatch(inner):
                raise _refuse(
                    f"has a text value at position {pos + 1} with a quote or a backslash "
                    "(text values hold printable ASCII without quotes or backslashes)"
                )
            out.append(_Tok("string", f"'{inner}'", pos))
        elif kind == "name":
            upper = text.upper()
            if upper in _KEYWORDS:
                out.append(_Tok("keyword", upper, pos))
            else:
                out.append(_Tok("name", text, pos))
        elif kind != "space":
            out.append(_Tok(kind, text, pos))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.i = 0
        self.out: list[str] = []
        self.predicates = 0

    # --- helpers ---------------------------------------------------------------------

    def _peek(self) -> _Tok | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _where(self) -> str:
        tok = self._peek()
        return f"at position {tok.pos + 1}" if tok else "at its end"

    def _next(self, what: str) -> _Tok:
        tok = self._peek()
        if tok is None:
            raise _refuse(f"ends where {what} was expected")
        self.i += 1
        return tok

    def _is(self, kind: str, text: str | None = None) -> bool:
        tok = self._peek()
        return tok is not None and tok.kind == kind and (text is None or tok.text == text)

    def _expect(self, kind: str, text: str, what: str) -> None:
        if not self._is(kind, text):
            raise _refuse(f"needs {what} {self._where()}")
        self.out.append(self._next(what).text)

    # --- grammar ---------------------------------------------------------------------

    def parse(self) -> str:
        if not self.tokens:
            raise _refuse("is empty")
        self._expr(0)
        if self._peek() is not None:
            tok = self._peek()
            assert tok is not None
            if tok.kind == "punct" and tok.text == ")":
                raise _refuse(f"closes a parenthesis it did not open {self._where()}")
            raise _refuse(f"needs AND or OR {self._where()}")
        text = ""
        for n, piece in enumerate(self.out):
            glued = n == 0 or piece in (")", ",") or self.out[n - 1] == "("
            text += piece if glued else f" {piece}"
        return text

    def _expr(self, depth: int) -> None:
        self._term(depth)
        while self._is("keyword", "OR"):
            self.out.append(self._next("OR").text)
            self._term(depth)

    def _term(self, depth: int) -> None:
        self._factor(depth)
        while self._is("keyword", "AND"):
            self.out.append(self._next("AND").text)
            self._factor(depth)

    def _factor(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _refuse(f"nests deeper than {MAX_DEPTH} levels")
        if self._is("keyword", "NOT"):
            self.out.append(self._next("NOT").text)
            self._factor(depth + 1)
            return
        if self._is("punct", "("):
            self.out.append(self._next("(").text)
            self._expr(depth + 1)
            if not self._is("punct", ")"):
                raise _refuse(f"leaves a parenthesis open {self._where()}")
            self.out.append(self._next(")").text)
            return
        self._predicate()

    def _predicate(self) -> None:
        tok = self._peek()
        if tok is None or tok.kind != "name":
            raise _refuse(f"needs a search attribute {self._where()}")
        if tok.text not in ATTRIBUTES:
            allowed = ", ".join(ATTRIBUTES)
            raise _refuse(f"names {tok.text}, which is not one of {allowed}")
        self.predicates += 1
        if self.predicates > MAX_TERMS:
            raise _refuse(f"has more than {MAX_TERMS} conditions")
        kind = ATTRIBUTES[tok.text]
        self.out.append(self._next("a search attribute").text)
        nxt = self._peek()
        if nxt is None:
            raise _refuse(f"ends after {tok.text} where a comparison was expected")
        if nxt.kind == "op":
            if kind == "keyword" and nxt.text not in _EQUALITY:
                raise _refuse(f"compares {tok.text} with {nxt.text} (text takes =, != or <>)")
            self.out.append(self._next("a comparison").text)
            self._value(tok.text, kind)
            return
        negated = nxt.kind == "keyword" and nxt.text == "NOT"
        if negated:
            self.out.append(self._next("NOT").text)
        if self._is("keyword", "IN"):
            self.out.append(self._next("IN").text)
            self._expect("punct", "(", "( after IN")
            self._value(tok.text, kind)
            while self._is("punct", ","):
                self.out.append(self._next(",").text)
                self._value(tok.text, kind)
            self._expect("punct", ")", ") to close the IN list")
            return
        if self._is("keyword", "BETWEEN"):
            if kind == "keyword":
                raise _refuse(f"uses BETWEEN on {tok.text} (text takes =, != or IN)")
            self.out.append(self._next("BETWEEN").text)
            self._value(tok.text, kind)
            self._expect("keyword", "AND", "AND inside BETWEEN")
            self._value(tok.text, kind)
            return
        if negated:
            raise _refuse(f"needs IN or BETWEEN after NOT {self._where()}")
        if self._is("keyword", "STARTS_WITH"):
            if kind != "keyword":
                raise _refuse(f"uses STARTS_WITH on {tok.text} (text attributes only)")
            self.out.append(self._next("STARTS_WITH").text)
            self._value(tok.text, kind)
            return
        if self._is("keyword", "IS"):
            self.out.append(self._next("IS").text)
            if self._is("keyword", "NOT"):
                self.out.append(self._next("NOT").text)
            self._expect("keyword", "NULL", "NULL after IS")
            return
        raise _refuse(f"needs a comparison after {tok.text} {self._where()}")

    def _value(self, name: str, kind: Kind) -> None:
        tok = self._peek()
        wanted = "number" if kind == "int" else "string"
        if tok is None or tok.kind != wanted:
            what = "a whole number" if kind == "int" else "a 'quoted' text"
            raise _refuse(f"needs {what} for {name} {self._where()}")
        self.out.append(self._next("a value").text)


def confined_query(workflow_type: str, query: str) -> str:
    """The visibility query Temporal gets for `query`: parsed against the allow-list,
    rebuilt from its tokens, and confined to `workflow_type`'s executions."""
    if not query.strip(" \t"):
        raise _refuse("is empty")
    rebuilt = _Parser(_tokens(query)).parse()
    return f"WorkflowType='{workflow_type}' AND ({rebuilt})"
