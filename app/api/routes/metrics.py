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

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from app.api.deps import Viewer, error_responses
from app.api.middleware import RequestInfo
from app.platform import metrics

router = APIRouter(tags=["metrics"])

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
def prometheus_metrics(request: Request, _caller: Viewer) -> Response:
    """Request latency by route template, method and status (`orders_api_request_seconds`),
    plus the process's other metrics, in the Prometheus text format."""
    # Same negotiation as the workers' endpoints (prometheus_client's own server).
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), media_type=content_type)
