"""The housekeeping workflow's input and names (light: the workflow sandbox imports it)."""

from __future__ import annotations

from dataclasses import dataclass

HOUSEKEEPING_WORKFLOW = "HousekeepingWorkflow"
PRUNE_EVENTS_ACTIVITY = "PruneEvents"
# The Temporal Schedule that runs it every EVENTS_RETENTION_INTERVAL_S (created with the
# reconciliation's by `cli.py start` and compose's setup job).
SCHEDULE_ID = "housekeeping"

# What an order keeps for good: its outcome, its money and its shipments (what the
# reconciliation and an auditor read). Every other event type of a closed order is
# pruned once the order has been closed EVENTS_RETENTION_DAYS days.
KEPT_EVENT_TYPES = (
    "PAYMENT_CHARGED",
    "PAYMENT_REFUNDED",
    "DISPATCHED",
    "SHIPMENTS_CANCELLED",
    "RETRIED",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
)


@dataclass
class HousekeepingInput:
    # Days a closed order keeps all its events; None = EVENTS_RETENTION_DAYS (0 = forever).
    retention_days: int | None = None
    # Orders whose events one transaction deletes; None = EVENTS_RETENTION_BATCH.
    batch_orders: int | None = None
