"""The application's own Prometheus metrics (names and labels: docs/operations.md).

All live in prometheus_client's default registry, which each process serves on /metrics
(workers: app/worker.py; API: app/api/routes/metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ORDER_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120)

DB_LATENCY = Histogram(
    "orders_db_operation_seconds",
    "Latency of database operations (one transaction each)",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
DB_ERRORS = Counter(
    "orders_db_operation_errors_total", "Failed database operations", ["operation", "error"]
)
ACTIVITY_ATTEMPTS = Counter(
    "orders_activity_attempts_total", "Activity attempts started", ["activity"]
)
ACTIVITY_RETRIES = Counter(
    "orders_activity_retries_total", "Activity attempts after the first", ["activity"]
)
STEP_ERRORS = Counter(
    "orders_step_errors_total", "Failed activity attempts by step and error type", ["step", "error"]
)
STEP_DURATION = Histogram(
    "orders_step_duration_seconds",
    "Duration of one successful activity attempt, by step",
    ["step"],
    buckets=_LATENCY_BUCKETS,
)
ORDERS_TERMINAL = Counter(
    "orders_terminal_total", "Orders that reached a terminal state", ["state", "reason"]
)
ORDER_DURATION = Histogram(
    "orders_execution_seconds",
    "Order execution time from workflow start to its terminal state, by outcome",
    ["outcome"],
    buckets=_ORDER_BUCKETS,
)
API_REQUEST_SECONDS = Histogram(
    "orders_api_request_seconds",
    "REST API request latency by route template, method and status code",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)


class ReconciliationGauges(Collector):
    """The latest reconciliation run's figures, as stored in the database: unresolved
    findings by kind, and when it finished. Served by the API only (it registers this and
    refreshes it from PostgreSQL on each scrape), so every API replica says the same and
    the workers export nothing stale of their own."""

    def __init__(self) -> None:
        self.kinds: tuple[str, ...] = ()
        self.unresolved: dict[str, int] = {}
        self.finished_at: float | None = None

    def update(
        self, kinds: Iterable[str], unresolved: Mapping[str, int], finished_at: float | None
    ) -> None:
        self.kinds = tuple(kinds)
        self.unresolved = dict(unresolved)
        self.finished_at = finished_at

    def collect(self) -> Iterator[Metric]:
        unresolved = GaugeMetricFamily(
            "orders_reconciliation_unresolved",
            "Findings the latest reconciliation run left unresolved, by kind",
            labels=["kind"],
        )
        for kind in self.kinds:
            unresolved.add_metric([kind], self.unresolved.get(kind, 0))
        yield unresolved
        if self.finished_at is not None:
            yield GaugeMetricFamily(
                "orders_reconciliation_last_run_timestamp_seconds",
                "When the latest reconciliation run finished (Unix time)",
                value=self.finished_at,
            )


RECONCILIATION = ReconciliationGauges()
