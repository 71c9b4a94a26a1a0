"""Exactly once across a worker crash, judged on the payment gateway's own ledger.

The orders worker is SIGKILLed after the gateway charged and before our database recorded
it: ChargePayment queues behind a row lock this test holds, so the charge is at the
gateway and not with us when the process dies. The retry (on the restarted worker) must
get the first charge back: one charge at the gateway, one payment row, the order PAID and
shipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import asyncpg
import httpx
import psutil
import pytest

from app.orders.providers.api import charge_key
from tests.helpers import ADDRESS, CliStack, database_dsn, eventually

pytestmark = pytest.mark.e2e


async def test_worker_killed_between_gateway_charge_and_our_write(cli_stack: CliStack) -> None:
    oid = f"kill-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=cli_stack.api, timeout=20) as api:

        async def status() -> dict[str, object]:
            response = await api.get(f"/orders/{oid}/status")
            return response.json() if response.status_code == 200 else {}

        body = {"payment_id": f"pmt-{oid}", "address": ADDRESS, "deadline_s": 120}
        assert (await api.post(f"/orders/{oid}/start", json=body)).status_code in (200, 201)
        await eventually(
            lambda: _in_step(status, "MANUAL_REVIEW"), timeout=30.0, what="the review step"
        )

        app_db = await asyncpg.connect(database_dsn(cli_stack))
        gateway = await asyncpg.connect(database_dsn(cli_stack, "gateway"))
        try:
            holder = app_db.transaction()
            await holder.start()
            await app_db.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", oid)
            approved = await api.post(f"/orders/{oid}/signals/approve", json={"reviewer": "e2e"})
            assert approved.status_code == 200, approved.text

            async def charged_at_gateway() -> int:
                return int(
                    await gateway.fetchval("SELECT count(*) FROM charges WHERE order_id = $1", oid)
                )

            await eventually(charged_at_gateway, timeout=30.0, what="the gateway to charge")
            recorded = await app_db.fetchval(
                "SELECT count(*) FROM payments WHERE order_id = $1", oid
            )
            assert recorded == 0  # charged there, not yet with us

            pid = _worker_pid(cli_stack)
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: _gone(pid), timeout=10, what="the worker to die")
            await holder.rollback()
            started = await asyncio.to_thread(cli_stack.run, "start")
            assert started.returncode == 0, started.stderr

            done = await eventually(
                lambda: _in_state(status, "COMPLETED"), timeout=60, what="the order to complete"
            )
            charges = await gateway.fetch(
                "SELECT idempotency_key, amount_cents FROM charges WHERE order_id = $1", oid
            )
            payments = await app_db.fetch(
                "SELECT payment_id, status, amount FROM payments WHERE order_id = $1", oid
            )
        finally:
            await gateway.close()
            await app_db.close()
    assert [c["idempotency_key"] for c in charges] == [charge_key(oid, f"pmt-{oid}")]
    assert [(p["payment_id"], p["status"]) for p in payments] == [(f"pmt-{oid}", "charged")]
    assert int(payments[0]["amount"] * 100) == charges[0]["amount_cents"]
    assert done["attempts"]["PAY"] >= 2  # the killed attempt, then the one that recorded it


def _worker_pid(stack: CliStack) -> int:
    rows = json.loads(stack.ok("ps", "--json"))
    return next(int(r["pid"]) for r in rows if r["service"] == "worker-orders" and r["pid"])


async def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _in_step(status, step: str):  # type: ignore[no-untyped-def]
    view = await status()
    return view if view.get("step") == step else None


async def _in_state(status, state: str):  # type: ignore[no-untyped-def]
    view = await status()
    return view if view.get("state") == state else None
