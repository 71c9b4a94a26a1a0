"""Free text in requests (address lines, reasons, notes), as the server checks it and as
the OpenAPI document says it.

The server's rule is Python's: text is printable (`str.isprintable()`: letters, marks,
numbers, punctuation, symbols and the ASCII space; no control, format, private-use,
unassigned or surrogate code point, no other space or line separator), and an address
line holds something besides spaces. JSON Schema has no Unicode categories, so the same
rule is written out as a character class built from this interpreter's Unicode tables,
once, in two shared components (`PrintableText`, `NonBlankText`) that each field
references with its own length limits: a schema-valid string is exactly one the server
accepts, which is what a schema fuzzer checks.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

PRINTABLE = "PrintableText"
NON_BLANK = "NonBlankText"
_REF = "#/components/schemas/{}"
_CLASS_SPECIAL = set("\\]^-[")


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must not contain control characters or other unprintable ones")
    return value


def _non_blank(value: str) -> str:
    _printable(value)
    if not value.strip():
        # The service's own words for it (app/orders/validation.py), which the console shows.
        raise ValueError("is required")
    return value


@functools.cache
def _ranges(skip_space: bool) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    start: int | None = None
    for cp in range(sys.maxunicode + 2):
        ok = cp <= sys.maxunicode and chr(cp).isprintable() and not (skip_space and cp == 0x20)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    return tuple(out)


def _char_class(skip_space: bool = False) -> str:
    def one(cp: int) -> str:
        char = chr(cp)
        return f"\\{char}" if char in _CLASS_SPECIAL else char

    body = "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in _ranges(skip_space))
    return f"[{body}]"


@functools.cache
def text_components() -> dict[str, dict[str, Any]]:
    """The two shared string schemas, for the OpenAPI document's components."""
    printable = _char_class()
    return {
        PRINTABLE: {
            "type": "string",
            "pattern": f"^{printable}*$",
            "description": "Printable text: letters, marks, numbers, punctuation, symbols "
            "and the space (Python's str.isprintable); no control, format, private-use or "
            "unassigned character, no other space or line break",
        },
        NON_BLANK: {
            "type": "string",
            "pattern": f"^ *{_char_class(skip_space=True)}{printable}*$",
            "description": f"{PRINTABLE} with something besides spaces",
        },
    }


@dataclass(frozen=True)
class Text:
    """`Annotated[str, Text(...)]`: a request's free text, checked as the schema component
    it references says, with its own length limits."""

    max_length: int
    min_length: int = 0
    non_blank: bool = False
    description: str | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        inner = core_schema.str_schema(
            min_length=self.min_length or None, max_length=self.max_length
        )
        check = _non_blank if self.non_blank else _printable
        return core_schema.no_info_after_validator_function(check, inner)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out: dict[str, Any] = {
            "allOf": [{"$ref": _REF.format(NON_BLANK if self.non_blank else PRINTABLE)}],
            "maxLength": self.max_length,
        }
        if self.min_length:
            out["minLength"] = self.min_length
        if self.description:
            out["description"] = self.description
        return out
