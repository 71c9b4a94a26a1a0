"""Just enough PromQL reading to check the deploy files' queries: which metrics a query
selects, with which label matchers, and which labels it groups by over which metrics.

Not a parser: string literals and range selectors are blanked out first, then names are
told apart by what follows them (a function or aggregation is followed by `(`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Labels every scraped series carries (deploy/prometheus.yml adds `service`).
TARGET_LABELS = frozenset({"job", "instance", "service"})

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_AGGREGATION = re.compile(r"\b(sum|avg|min|max|count|group|topk|bottomk)\s+by\s*\(([^)]*)\)\s*\(")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\(|\{)?")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


@dataclass(frozen=True)
class Selector:
    metric: str  # as written (histogram suffix kept)
    labels: frozenset[str]  # label names its matchers use

    @property
    def family(self) -> str:
        return family(self.metric)


def family(metric: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def _blank(expr: str) -> str:
    """The expression with string literals emptied and range selectors removed."""
    return _RANGE.sub("", _STRING.sub('""', expr))


def selectors(expr: str) -> list[Selector]:
    """Every metric selector in the expression, with the label names it matches on."""
    text = _GROUPING.sub("", _blank(expr))
    # Matcher blocks out of the way first (label names are not metrics), kept by number.
    blocks: list[frozenset[str]] = []

    def keep(match: re.Match[str]) -> str:
        blocks.append(frozenset(_MATCHER.findall(match.group(1))))
        return f"{{{len(blocks) - 1}}}"

    text = re.sub(r"\{([^}]*)\}", keep, text)
    found = []
    for match in _NAME.finditer(text):
        name, after = match.group(1), match.group(2)
        if after == "(" or name in _KEYWORDS:
            continue
        labels: frozenset[str] = frozenset()
        if after == "{":
            number = text[match.end() : text.index("}", match.end())]
            labels = blocks[int(number)]
        found.append(Selector(name, labels))
    return found


def groupings(expr: str) -> list[tuple[frozenset[str], list[Selector]]]:
    """(labels, selectors inside) of every `agg by (labels) (inner)` in the expression."""
    text = _blank(expr)
    out = []
    for match in _AGGREGATION.finditer(text):
        depth, end = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        labels = frozenset(label.strip() for label in match.group(2).split(",") if label.strip())
        out.append((labels, selectors(text[match.end() : end - 1])))
    return out
