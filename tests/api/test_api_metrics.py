"""GET /metrics of the API: access, format and the request histogram's labels.

In process and without the lifespan: /metrics needs neither Temporal nor PostgreSQL (order
routes answer 503 here, which is still a request to count). The stack-wide check of every
family is tests/platform/test_observability.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from app.api.app import create_app
from app.platform.settings import Settings

pytestmark = pytest.mark.integration

VIEW_KEY = "view-0123456789"
OPS_KEY = "ops-0123456789"
KEYS = SecretStr(f"dashboard:{VIEW_KEY}:viewer,ops-bot:{OPS_KEY}:operator")


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(api_keys=KEYS))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        yield client


def request_counts(text: str) -> dict[tuple[str, str, str], float]:
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "orders_api_request_seconds_count":
                counts[(s.labels["route"], s.labels["method"], s.labels["status"])] = s.value
    return counts


async def test_metrics_need_the_viewer_role(api: httpx.AsyncClient) -> None:
    assert (await api.get("/metrics")).status_code == 401
    assert (await api.get("/metrics", headers={"X-API-Key": "wrong-key-123"})).status_code == 401
    assert (await api.get("/metrics", headers={"X-API-Key": OPS_KEY})).status_code == 403
    ok = await api.get("/metrics", headers={"Authorization": f"Bearer {VIEW_KEY}"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")


async def test_openmetrics_when_asked(api: httpx.AsyncClient) -> None:
    r = await api.get(
        "/metrics",
        headers={"X-API-Key": VIEW_KEY, "Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


async def test_requests_are_counted_by_route_template_method_and_status(
    api: httpx.AsyncClient,
) -> None:
    view = {"X-API-Key": VIEW_KEY}
    before = request_counts((await api.get("/metrics", headers=view)).text)
    order_id = "metrics-probe-7c1d"
    assert (await api.get(f"/orders/{order_id}/status", headers=view)).status_code == 503
    assert (await api.get("/metrics")).status_code == 401
    assert (await api.get(f"/nothing/here/{order_id}")).status_code == 404
    assert (await api.delete("/health")).status_code == 405
    text = (await api.get("/metrics", headers=view)).text
    after = request_counts(text)

    def increase(key: tuple[str, str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert increase(("/orders/{order_id}/status", "GET", "503")) == 1
    assert increase(("/metrics", "GET", "401")) == 1
    assert increase(("unmatched", "GET", "404")) == 1
    assert increase(("/health", "DELETE", "405")) == 1
    assert increase(("/metrics", "GET", "200")) == 1  # the first scrape
    assert order_id not in text  # raw paths never become label values


def test_metrics_route_is_documented_with_its_security(api: httpx.AsyncClient) -> None:
    spec = create_app(Settings(api_keys=KEYS)).openapi()
    operation = spec["paths"]["/metrics"]["get"]
    assert operation["security"]
    assert set(operation["responses"]["200"]["content"]) == {
        "text/plain",
        "application/openmetrics-text",
    }
