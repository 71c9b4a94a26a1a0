"""`bench --data-scale` at a tiny size: it seeds its scratch database and every operator
read answers (the real run is a benchmark, not a test)."""

from __future__ import annotations

import pytest

from devstack.bench.data_scale import EVENTS_PER_ORDER, IN_REVIEW, format_data_scale, run_data_scale
from tests.helpers import RealStack

pytestmark = pytest.mark.integration


async def test_data_scale_smoke(real_stack: RealStack) -> None:
    result = await run_data_scale(real_stack.settings, 500)
    assert (result["orders"], result["events"]) == (500, 500 * EVENTS_PER_ORDER)
    assert result["in_review"] == IN_REVIEW
    endpoints = result["endpoints"]
    assert "GET /orders?step=MANUAL_REVIEW (review queue)" in endpoints
    assert all(f["p50_ms"] > 0 for f in endpoints.values())
    assert "p99 ms" in format_data_scale(result)
    dashboard = result["dashboard"]
    assert dashboard["cpu_ms_per_poll"] > 0 and dashboard["poll_interval_s"] == 2.0
    assert 0 < dashboard["share_of_machine_pct"] < 100
    assert "one open dashboard" in format_data_scale(result)
