"""One thread at a time in `ast.parse`, for the whole test process.

CPython 3.11 counts the AST constructor's recursion depth in one counter per interpreter,
not per call (gh-106905). A parse that lets another thread run midway (a finalizer during
one of its allocations hands over the GIL) and meets that thread's own parse ends with the
other's depth and fails: `SystemError: AST constructor recursion depth mismatch`. The API
fuzz hit it: Hypothesis parsed a module of schemathesis' to describe one of its lambdas
while a shallow thread parsed too (the app's, most likely, formatting a logged traceback:
3.11's traceback parses each line for its carets). Every caller goes through `ast.parse`
(traceback, inspect, Hypothesis, pytest's assertion rewriting), so one lock there is
enough. Re-entrant: a parse a finalizer starts on the thread that holds it must not wait
for itself.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

_LOCK = threading.RLock()
_parse = ast.parse


def _serialized_parse(*args: Any, **kwargs: Any) -> Any:
    with _LOCK:
        return _parse(*args, **kwargs)


def serialize_ast_parsing() -> None:
    """Route `ast.parse` through the lock (idempotent)."""
    ast.parse = _serialized_parse
