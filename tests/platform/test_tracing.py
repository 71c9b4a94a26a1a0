"""With tracing on, one trace follows an order from the caller's span to every activity."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.orders.messages import SIGNAL_APPROVE
from app.platform.temporal import connect_client
from app.platform.tracing import setup_tracing
from app.service.orders import OrderService
from tests.helpers import ADDRESS, Running, own_queues, run_workers

pytestmark = pytest.mark.integration


async def test_one_trace_from_request_to_activities(running: Running) -> None:
    suffix = uuid.uuid4().hex[:6]
    settings = own_queues(running.settings, f"otel-{suffix}", otel_enabled=True)
    exporter = InMemorySpanExporter()
    setup_tracing(settings, "test", exporter=exporter)
    client = await connect_client(settings)
    service = OrderService(client, running.sessions, settings)
    order_id = f"otel-{suffix}"
    async with AsyncExitStack() as workers:
        await run_workers(workers, running, settings, client)
        with trace.get_tracer("test").start_as_current_span(
            "POST /orders/{order_id}/start"
        ) as root:
            await service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
        handle = client.get_workflow_handle(f"order-{order_id}")
        await handle.signal(SIGNAL_APPROVE)
        assert (await handle.result())["state"] == "COMPLETED"
    trace_id = root.get_span_context().trace_id
    names = {s.name for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
    for expected in (
        "StartWorkflow:OrderWorkflow",
        "RunWorkflow:OrderWorkflow",
        "RunActivity:ReceiveOrder",
        "RunActivity:ChargePayment",
        "StartChildWorkflow:ShippingWorkflow",
        "RunActivity:DispatchCarrier",
    ):
        assert expected in names, (expected, sorted(names))
