"""The reconciliation workflow's input and names (light: the workflow sandbox imports it)."""

from __future__ import annotations

from dataclasses import dataclass

RECONCILIATION_WORKFLOW = "ReconciliationWorkflow"
RECONCILE_ACTIVITY = "Reconcile"
# The Temporal Schedule that runs it every RECONCILE_INTERVAL_S (cli.py start and compose's
# setup job create it), and the prefix of the ids of runs asked for now (reconcile_now).
SCHEDULE_ID = "reconciliation"
MANUAL_ID_PREFIX = "reconciliation-now-"


@dataclass
class ReconcileInput:
    # Who asked: "schedule" or "manual" (CLI, API, chaos).
    trigger: str = "schedule"
    # Heal the safe findings (refunds, booking cancellations); False: report only.
    heal: bool = True
    # Seconds back from now the run looks; None = RECONCILE_LOOKBACK_S.
    lookback_s: float | None = None
    # Only these orders (and what the providers report for them); None = every order in
    # the window.
    order_ids: list[str] | None = None
    # The fault profile of the heals' provider calls (the dev stack's simulators: tests,
    # chaos); None = the worker's FAULT_PROFILE.
    fault_profile: str | None = None
