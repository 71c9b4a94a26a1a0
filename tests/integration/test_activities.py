"""The step activities against the real database: each write lands once, whatever retries.

Activities run in Temporal's ActivityEnvironment (no workflow), so an attempt can be
repeated on purpose, as a retry after a lost completion would.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from app.activities import OrderActivities, ShippingActivities
from app.db import Order, Payment
from app.models import (
    DEFAULT_ITEMS,
    ActivityContext,
    Address,
    ChargeInput,
    DispatchInput,
    PrepareInput,
    ReceiveInput,
    ValidateInput,
    order_amount_cents,
)
from app.stubs import FaultInjector, OrderIntake
from tests.conftest import ADDRESS, HAPPY_PATH_EVENTS, Running, order_events

SHIP_TO = Address(**ADDRESS)
ITEMS = list(DEFAULT_ITEMS)


@pytest.fixture
def acts(running: Running) -> tuple[OrderActivities, ShippingActivities]:
    intake = OrderIntake(FaultInjector("off"))
    return (
        OrderActivities(running.sessions, intake, running.providers.gateway),
        ShippingActivities(running.sessions, running.providers.carrier),
    )


def _receive(order_id: str, run_id: str = "run-1") -> ReceiveInput:
    now = datetime.now(UTC)
    return ReceiveInput(
        ctx=ActivityContext(order_id=order_id, fault_profile="off"),
        workflow_id=f"order-{order_id}",
        run_id=run_id,
        payment_id=f"pmt-{order_id}",
        address=SHIP_TO,
        items=ITEMS,
        deadline_iso=(now + timedelta(seconds=60)).isoformat(),
        started_at_iso=now.isoformat(),
    )


async def _row(running: Running, order_id: str) -> Any:
    async with running.sessions() as s:
        return await s.get(Order, order_id)


async def test_every_step_recorded_once_when_each_attempt_runs_twice(
    running: Running, acts: tuple[OrderActivities, ShippingActivities]
) -> None:
    orders, shipping = acts
    env = ActivityEnvironment()
    order_id = f"acts-{uuid.uuid4().hex[:10]}"
    ctx = ActivityContext(order_id=order_id, fault_profile="off")
    steps: list[tuple[Any, Any]] = [
        (orders.receive_order, _receive(order_id)),
        (orders.validate_order, ValidateInput(ctx=ctx, address=SHIP_TO, items=ITEMS)),
        (
            orders.charge_payment,
            ChargeInput(
                ctx=ctx,
                payment_id=f"pmt-{order_id}",
                amount_cents=order_amount_cents(ITEMS),
                approved_by="alice",
                approved_at_iso=datetime.now(UTC).isoformat(),
            ),
        ),
        (shipping.prepare_package, PrepareInput(ctx=ctx, shipping_attempt=1)),
        (shipping.dispatch_carrier, DispatchInput(ctx=ctx, shipping_attempt=1)),
    ]
    outcomes = []
    for fn, arg in steps:
        outcomes.append(await env.run(fn, arg))
        if fn != shipping.prepare_package:  # preparing twice is two packing slips
            assert await env.run(fn, arg) == outcomes[-1]

    assert await order_events(running, order_id) == HAPPY_PATH_EVENTS
    order = await _row(running, order_id)
    assert (order.state, order.step, order.run_id) == ("COMPLETED", "SHIP", "run-1")
    assert order.tracking_number == outcomes[-1].tracking_number and order.closed_at
    async with running.sessions() as s:
        payments = (await s.execute(select(Payment).where(Payment.order_id == order_id))).all()
    assert len(payments) == 1 and payments[0][0].status == "charged"


async def test_order_id_of_another_run_is_refused(
    running: Running, acts: tuple[OrderActivities, ShippingActivities]
) -> None:
    orders, _ = acts
    env = ActivityEnvironment()
    order_id = f"acts-{uuid.uuid4().hex[:10]}"
    await env.run(orders.receive_order, _receive(order_id, run_id="run-1"))
    with pytest.raises(ApplicationError) as err:
        await env.run(orders.receive_order, _receive(order_id, run_id="run-2"))
    assert err.value.non_retryable and "another workflow run" in str(err.value)
    assert (await _row(running, order_id)).run_id == "run-1"
    assert await order_events(running, order_id) == ["RECEIVED", "STEP_ATTEMPT_FAILED"]


async def test_validating_an_unknown_order_is_retryable(
    acts: tuple[OrderActivities, ShippingActivities],
) -> None:
    orders, _ = acts
    ctx = ActivityContext(order_id=f"acts-{uuid.uuid4().hex[:10]}", fault_profile="off")
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(
            orders.validate_order, ValidateInput(ctx=ctx, address=SHIP_TO, items=ITEMS)
        )
    assert err.value.type == "OrderNotFound" and not err.value.non_retryable
