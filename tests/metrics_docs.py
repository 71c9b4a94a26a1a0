"""The metric families docs/operations.md documents, and those the Grafana dashboard queries.

Shared by tests/platform/test_observability.py (the families are real) and
tests/deploy/test_observability_deploy.py (the deploy files use them).
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.platform.settings import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "orders.json"
_SUFFIXES = ("_bucket", "_count", "_sum")


def documented_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) from the metrics table in docs/operations.md."""
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`orders_\w+`", cells[0]):
            continue
        # Label names are the backticked words outside parentheses (which list values).
        labels = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cells[2]))
        found[cells[0].strip("`")] = (cells[1], frozenset(labels))
    return found


def dashboard_panels() -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [p for p in data["panels"] if p["type"] != "row"]


def dashboard_metrics(prefix: str) -> set[str]:
    """Family names (histogram suffixes removed) the dashboard's queries use."""
    names: set[str] = set()
    for panel in dashboard_panels():
        for target in panel["targets"]:
            for name in re.findall(rf"\b{prefix}\w+", target["expr"]):
                for suffix in _SUFFIXES:
                    name = name.removesuffix(suffix)
                names.add(name)
    return names
