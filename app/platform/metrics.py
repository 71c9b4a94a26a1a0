"""The application's own Prometheus metrics (names and labels: docs/operations.md).

All live in prometheus_client's default registry, which each process serves on /metrics
(workers: app/worker.py; API: app/api/routes/metrics.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
