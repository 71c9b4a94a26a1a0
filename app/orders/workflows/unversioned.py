"""The workflows as unversioned workers (WORKER_VERSIONING=false) register them: the same
code without a versioning behavior, which the server refuses from a worker that is not
part of a versioned Worker Deployment. Module-level classes, so the sandbox can import them;
the SDK wants `run` declared on each class.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from app.orders.housekeeping.workflow import HousekeepingWorkflow
from app.orders.reconciliation.workflow import ReconciliationWorkflow
from app.orders.workflows.order import OrderWorkflow
from app.orders.workflows.shipping import ShippingWorkflow

with workflow.unsafe.imports_passed_through():
    from app.orders.housekeeping.messages import HOUSEKEEPING_WORKFLOW, HousekeepingInput
    from app.orders.messages import (
        ORDER_WORKFLOW,
        SHIPPING_WORKFLOW,
        OrderInput,
        OrderResult,
        ShippingInput,
        ShippingResult,
    )
    from app.orders.reconciliation.messages import RECONCILIATION_WORKFLOW, ReconcileInput


@workflow.defn(name=ORDER_WORKFLOW)
class UnversionedOrderWorkflow(OrderWorkflow):
    @workflow.run
    async def run(self, inp: OrderInput) -> OrderResult:
        return await super().run(inp)


@workflow.defn(name=SHIPPING_WORKFLOW)
class UnversionedShippingWorkflow(ShippingWorkflow):
    @workflow.run
    async def run(self, inp: ShippingInput) -> ShippingResult:
        return await super().run(inp)


@workflow.defn(name=RECONCILIATION_WORKFLOW)
class UnversionedReconciliationWorkflow(ReconciliationWorkflow):
    @workflow.run
    async def run(self, inp: ReconcileInput | None = None) -> dict[str, Any]:
        return await super().run(inp)


@workflow.defn(name=HOUSEKEEPING_WORKFLOW)
class UnversionedHousekeepingWorkflow(HousekeepingWorkflow):
    @workflow.run
    async def run(self, inp: HousekeepingInput | None = None) -> dict[str, Any]:
        return await super().run(inp)
