"""Committed histories of the main paths must replay against the current workflow code.

A change that alters the commands a workflow issues for an existing history (without
`workflow.patched`) is nondeterministic and would break running orders: these tests catch it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from app.orders.messages import OrderInput, OrderResult
from app.orders.workflows import OrderWorkflow, ShippingWorkflow
from tests.orders.workflows.record_histories import SCENARIOS

pytestmark = pytest.mark.unit

HISTORY_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORY_DIR.glob("*.json"))
# Recorded on the code of `workflow.patched("search-attributes")`: every path the order
# takes (record_histories.py).
CURRENT = "search_attributes"


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_histories_are_committed() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"order_happy_path", "order_review_timeout", "order_cancel_after_payment"} <= names
    assert {f"order_{scenario}_{CURRENT}" for scenario in SCENARIOS} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays_on_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[OrderWorkflow, ShippingWorkflow])
    result = await replayer.replay_workflow(_load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


@workflow.defn(name="OrderWorkflow", sandboxed=False)
class ReorderedOrderWorkflow(OrderWorkflow):
    """A careless edit: a short timer added before the first step, without a patch."""

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderResult:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(inp)


async def test_nondeterministic_change_is_caught() -> None:
    replayer = Replayer(workflows=[ReorderedOrderWorkflow, ShippingWorkflow])
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(_load(HISTORY_DIR / "order_happy_path.json"))
