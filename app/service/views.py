"""The one status view of an order, as every front end shows it.

The API documents it (response model of GET /orders/{id} and the update endpoints), the CLI
prints its JSON form, the console reads it from the API. The workflow's `OrderStatus` query
result (app/orders/messages.py) is a Temporal message, part of the workflow's compatibility
contract; it becomes this view in one place, `OrderView.from_workflow`, with what only the
service knows (run, pending activities, the database's attempts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.orders.messages import DEMO_ADDRESS, OrderStatus

# The order, run and address the API's examples show.
EXAMPLE_RUN: dict[str, JsonValue] = {
    "order_id": "order-123",
    "workflow_id": "order-order-123",
    "run_id": "0198a7c4-5b1e-7f3a-9d2c-6e4b8a1f0c3d",
}
EXAMPLE_ADDRESS: dict[str, JsonValue] = {**DEMO_ADDRESS}


class AddressView(BaseModel):
    street: str
    city: str
    state: str
    zip: str
    country: str


class StepErrorView(BaseModel):
    step: str | None
    attempt: int | None
    message: str | None
    at: str | None
    kind: str | None = None


class PendingActivityView(BaseModel):
    activity: str
    attempt: int
    last_failure: str | None


class OrderView(BaseModel):
    """The order's live view (docs/architecture.md, "Status"): from the workflow while it runs, from
    the database once it has closed (`source` says which)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **EXAMPLE_RUN,
                    "state": "VALIDATED",
                    "step": "MANUAL_REVIEW",
                    "address": EXAMPLE_ADDRESS,
                    "payment_id": "pmt-123",
                    "payment_status": "none",
                    "amount_cents": 1999,
                    "attempts": {"RECEIVE": 1, "VALIDATE": 2},
                    "errors": [
                        {
                            "step": "VALIDATE",
                            "attempt": 1,
                            "message": "simulated failure of an external service",
                            "at": "2025-01-01T12:00:01+00:00",
                            "kind": "error",
                        }
                    ],
                    "created_at": "2025-01-01T12:00:00+00:00",
                    "updated_at": "2025-01-01T12:00:02+00:00",
                    "deadline_at": "2025-01-01T12:01:00+00:00",
                    "review_deadline_at": "2025-01-01T12:00:32+00:00",
                    "source": "workflow",
                }
            ]
        }
    )

    order_id: str
    workflow_id: str
    run_id: str | None = None
    state: str
    step: str | None = Field(description="Current (or last) step")
    address: AddressView | None
    payment_id: str | None
    payment_status: str
    amount_cents: int | None
    attempts: dict[str, int] = Field(description="Attempts per step")
    errors: list[StepErrorView] = Field(description="Recent errors, newest first")
    created_at: str | None
    updated_at: str | None
    closed_at: str | None = None
    deadline_at: str | None
    review_deadline_at: str | None = None
    approved: bool | None = None
    approved_by: str | None = None
    cancel_requested: bool = False
    reason: str | None = None
    shipping_attempts: int | None = None
    tracking_number: str | None = None
    workflow_status: str | None = None
    pending_activities: list[PendingActivityView] = Field(default_factory=list)
    source: str = Field(description="workflow (live query), database (closed) or update")
    settled: bool = Field(
        default=False,
        description="Closed and compensated: nothing about this order changes any more",
    )

    @classmethod
    def from_workflow(cls, status: OrderStatus, **service_fields: Any) -> OrderView:
        return cls.model_validate({**dataclasses.asdict(status), **service_fields})
