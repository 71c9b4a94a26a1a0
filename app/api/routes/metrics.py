"""/metrics: the API process's Prometheus metrics (viewer role, like /stats).

Serves prometheus_client's default registry: the request histogram fed by
`observe_request` (registered on `app.state.request_observers`), the app's other families
(app/metrics.py) and the client library's process/runtime collectors.

Why the viewer role and not open like /health: the families carry the same business figures
as /stats (orders per outcome, error types), which already needs it. Prometheus scrapes with
a viewer key (`authorization` in deploy/prometheus.yml). With API_KEYS empty (the embedded
dev stack) every endpoint is open anyway.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from app.api.deps import ServicesIfServing, Viewer, error_responses
from app.api.middleware import RequestInfo
from app.orders.reconciliation.audit import KINDS
from app.platform import metrics
from app.service.layer import ServiceLayer
from app.service.reconciliation import latest_run

log = logging.getLogger("app.api")
router = APIRouter(tags=["metrics"])

# The reconciliation's gauges come from the database: this process serves them.
REGISTRY.register(metrics.RECONCILIATION)
# A scrape never waits longer than this for them (they keep their last values then).
RECONCILIATION_READ_TIMEOUT_S = 2.0

# Label for requests no route matched (404s): keeps scanners' random paths out of the
# label values. Cannot collide with a template, which always starts with "/".
UNMATCHED_ROUTE = "unmatched"


def observe_request(info: RequestInfo) -> None:
    """Request observer (app/api/middleware.py): one latency sample per request."""
    metrics.API_REQUEST_SECONDS.labels(
        route=info.route or UNMATCHED_ROUTE, method=info.method, status=str(info.status)
    ).observe(info.duration_s)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
            "description": "Prometheus text format, or OpenMetrics when the Accept header asks",
        },
        **error_responses(401, 403, 500),
    },
)
async def prometheus_metrics(
    request: Request, _caller: Viewer, layer: ServicesIfServing
) -> Response:
    """Request latency by route template, method and status (`orders_api_request_seconds`),
    the latest reconciliation run's unresolved findings by kind, plus the process's other
    metrics, in the Prometheus text format."""
    await _refresh_reconciliation(layer)
    # Same negotiation as the workers' endpoints (prometheus_client's own server).
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), media_type=content_type)


async def _refresh_reconciliation(layer: ServiceLayer | None) -> None:
    if layer is None:  # not serving (no database): zeros, no last run
        metrics.RECONCILIATION.update(map(str, KINDS), {}, metrics.RECONCILIATION.finished_at)
        return
    try:
        async with asyncio.timeout(RECONCILIATION_READ_TIMEOUT_S):
            run = await latest_run(layer.sessions)
    except Exception as err:  # the figures stay as last read; the scrape goes on
        log.warning("reconciliation gauges not refreshed", extra={"error": type(err).__name__})
        return
    if run is None:
        metrics.RECONCILIATION.update(map(str, KINDS), {}, None)
        return
    by_kind = (run.summary_json or {}).get("unresolved_by_kind", {})
    finished = run.finished_at.replace(tzinfo=UTC).timestamp()
    metrics.RECONCILIATION.update(map(str, KINDS), by_kind, finished)
