"""With payload keys configured, Temporal's stored history holds no readable address."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
from temporalio.client import Client

from app.orders.messages import SIGNAL_APPROVE
from app.platform.temporal import connect_client
from app.service.orders import OrderService
from tests.helpers import Running, run_workers, sealed_queues

pytestmark = pytest.mark.integration

STREET = "742 Evergreen Terrace"


async def test_history_is_encrypted_at_rest(running: Running) -> None:
    suffix = uuid.uuid4().hex[:6]
    settings = sealed_queues(running.settings, f"enc-{suffix}")
    client = await connect_client(settings)
    service = OrderService(client, running.sessions, settings)
    order_id = f"enc-{suffix}"
    address = {
        "street": STREET,
        "city": "Springfield",
        "state": "OR",
        "zip": "97475",
        "country": "US",
    }
    async with AsyncExitStack() as workers:
        await run_workers(workers, running, settings, client)
        await service.start_order(order_id, f"pmt-{order_id}", address)
        handle = client.get_workflow_handle(f"order-{order_id}")
        await handle.signal(SIGNAL_APPROVE)
        result = await handle.result()
        assert result["state"] == "COMPLETED"
        # The keyed client read the result; the stored history, read without the key, holds
        # only sealed payloads: no event's bytes contain the street.
        plain_client = await Client.connect(settings.temporal_target)
        raw = await plain_client.get_workflow_handle(handle.id).fetch_history()
        started = raw.events[0].workflow_execution_started_event_attributes.input.payloads[0]
        assert started.metadata["encoding"] == b"binary/encrypted"
        assert all(STREET.encode() not in e.SerializeToString() for e in raw.events)
        # Control: the same bytes check does find the street in an unencrypted history.
        other = f"plain-{suffix}"
        await running.service.start_order(other, f"pmt-{other}", address)
        await running.client.get_workflow_handle(f"order-{other}").cancel()
        plain = await plain_client.get_workflow_handle(f"order-{other}").fetch_history()
        assert any(STREET.encode() in e.SerializeToString() for e in plain.events)
