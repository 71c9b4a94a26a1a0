"""The activities' timeouts and retry policies, and the workflows' other limits."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    pass


# The steps' activity timeouts (start-to-close) and retry policy, as the product specifies.
RECEIVE_TIMEOUT = timedelta(seconds=3)
VALIDATE_TIMEOUT = timedelta(seconds=3)
CHARGE_TIMEOUT = timedelta(seconds=4)
PREPARE_TIMEOUT = timedelta(seconds=5)
DISPATCH_TIMEOUT = timedelta(seconds=5)
STEP_RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
)
# Bookkeeping behind a caller's request (cancel, address change): short, bounded.
GATE_TIMEOUT = timedelta(seconds=5)
GATE_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=200))
# Compensation must eventually happen, so it retries until it does.
CLOSE_TIMEOUT = timedelta(seconds=5)
CLOSE_RETRY = RetryPolicy(
    maximum_attempts=0,
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=5),
)
MAX_SHIPPING_ATTEMPTS = 3
PATCH_REFUND_AFTER_CLOSE = "refund-after-close"
# Histories recorded before the order published its search attributes replay without.
PATCH_SEARCH_ATTRIBUTES = "search-attributes"
# A Temporal-level cancel that arrives while the order closes no longer cuts the close and
# its compensation off (histories where it did replay as they were recorded).
PATCH_CLOSE_OUTLIVES_CANCEL = "close-outlives-cancel"
