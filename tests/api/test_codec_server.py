"""The codec endpoint (/codec/encode, /codec/decode) the Temporal Web UI and CLI use.

Most tests drive the app without its lifespan: the codec needs neither Temporal nor the
database. The last one decodes a payload from a real encrypted history on the real stack.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from pydantic import SecretStr
from temporalio.client import Client

from app.api.app import create_app
from app.platform.settings import Settings
from app.platform.temporal import connect_client
from app.service.orders import OrderService
from tests.helpers import ADDRESS, Running, own_queues, run_workers

pytestmark = pytest.mark.integration

KEY = base64.b64encode(os.urandom(32)).decode()
OLD_KEY = base64.b64encode(os.urandom(32)).decode()
VIEW_KEY = "view-0123456789"
OPS_KEY = "ops-0123456789"
REVIEW_KEY = "rev-0123456789"
API_KEYS = f"ui:{VIEW_KEY}:viewer,ops:{OPS_KEY}:operator,alice:{REVIEW_KEY}:reviewer"
UI_ORIGIN = "http://ui.example:8233"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain_payload(value: Any) -> dict[str, Any]:
    """A payload as the default JSON converter writes it, in proto3 JSON."""
    return {
        "metadata": {"encoding": b64(b"json/plain")},
        "data": b64(json.dumps(value).encode()),
    }


def keyed(base: Settings, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "payload_keys": SecretStr(f"k2:{KEY},k1:{OLD_KEY}"),
        "payload_active_key": "k2",
        "api_keys": SecretStr(API_KEYS),
        "temporal_ui_url": UI_ORIGIN,
    }
    values.update(update)
    return base.model_copy(update=values)


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(keyed(Settings()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        yield client


async def encode(api: httpx.AsyncClient, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = await api.post("/codec/encode", json={"payloads": payloads}, headers={"X-API-Key": OPS_KEY})
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["payloads"]
    return out


async def test_encode_decode_round_trip(api: httpx.AsyncClient) -> None:
    sent = [plain_payload(ADDRESS), plain_payload({"payment_id": "pmt-1"}), plain_payload(None)]
    sealed = await encode(api, sent)
    assert len(sealed) == 3
    for p in sealed:
        assert p["metadata"]["encoding"] == b64(b"binary/encrypted")
        assert p["metadata"]["encryption-key-id"] == b64(b"k2")
        assert ADDRESS["street"].encode() not in base64.b64decode(p["data"])
    # The UI sends X-Namespace and a bearer token; both are fine.
    r = await api.post(
        "/codec/decode",
        json={"payloads": sealed},
        headers={"Authorization": f"Bearer {VIEW_KEY}", "X-Namespace": "default"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"payloads": sent}


async def test_decode_leaves_plain_payloads_alone_and_reads_old_keys(
    api: httpx.AsyncClient,
) -> None:
    old_app = create_app(keyed(Settings(), payload_active_key="k1"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=old_app), base_url="http://127.0.0.1"
    ) as old_api:
        sealed_with_old = await encode(old_api, [plain_payload("old")])
    assert sealed_with_old[0]["metadata"]["encryption-key-id"] == b64(b"k1")
    mixed = [plain_payload("clear"), *sealed_with_old]
    r = await api.post("/codec/decode", json={"payloads": mixed}, headers={"X-API-Key": VIEW_KEY})
    assert r.status_code == 200, r.text
    assert r.json()["payloads"] == [plain_payload("clear"), plain_payload("old")]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/codec/decode", {}, 401),
        ("/codec/decode", {"X-API-Key": "not-a-key-at-all"}, 401),
        ("/codec/decode", {"Authorization": "Bearer not-a-key-at-all"}, 401),
        ("/codec/decode", {"X-API-Key": REVIEW_KEY}, 403),  # reviewer is not viewer
        ("/codec/encode", {}, 401),
        ("/codec/encode", {"X-API-Key": VIEW_KEY}, 403),  # encode needs operator
        ("/codec/encode", {"X-API-Key": REVIEW_KEY}, 403),
    ],
)
async def test_keys_and_roles(
    api: httpx.AsyncClient, path: str, headers: dict[str, str], status: int
) -> None:
    r = await api.post(path, json={"payloads": [plain_payload(1)]}, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]
    assert "payloads" not in r.json()


async def test_bad_payloads(api: httpx.AsyncClient) -> None:
    sealed = (await encode(api, [plain_payload(ADDRESS)]))[0]
    raw = bytearray(base64.b64decode(sealed["data"]))
    raw[-1] ^= 1
    tampered = {**sealed, "data": b64(bytes(raw))}
    unknown_key = {**sealed, "metadata": {**sealed["metadata"], "encryption-key-id": b64(b"k9")}}
    headers = {"X-API-Key": VIEW_KEY}
    for bad in (tampered, unknown_key):
        r = await api.post("/codec/decode", json={"payloads": [bad]}, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "undecodable_payload"
        assert ADDRESS["street"] not in r.text
    r = await api.post(
        "/codec/decode", json={"payloads": [{"data": "***not base64***"}]}, headers=headers
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "payloads[0].data"
    r = await api.post("/codec/decode", json={"nope": []}, headers=headers)
    assert r.status_code == 422, r.text


async def test_without_keys_the_codec_is_the_identity() -> None:
    app = create_app(keyed(Settings(), payload_keys=SecretStr(""), payload_active_key=""))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as api:
        sent = [plain_payload(ADDRESS)]
        assert await encode(api, sent) == sent


async def test_cors_for_the_ui_origin_only(api: httpx.AsyncClient) -> None:
    preflight = {
        "Origin": UI_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    r = await api.options("/codec/decode", headers=preflight)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "x-namespace" in r.headers["access-control-allow-headers"].lower()

    r = await api.options("/codec/decode", headers={**preflight, "Origin": "http://evil.example"})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers

    # Actual requests: the header is on answers to the UI, errors included (so the UI can
    # tell "unauthorized" from a network error), and never elsewhere in the API.
    r = await api.post(
        "/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN, "X-API-Key": VIEW_KEY}
    )
    assert r.status_code == 200 and r.json() == {"payloads": []}
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    r = await api.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    r = await api.get("/health", headers={"Origin": UI_ORIGIN})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_setting() -> None:
    from app.api.routes.codec import cors_origins

    assert cors_origins(Settings(temporal_ui_url="http://127.0.0.1:8233/")) == [
        "http://127.0.0.1:8233"
    ]
    configured = Settings(codec_cors_origins=" https://ui.example.com/ , http://localhost:8233")
    assert cors_origins(configured) == ["https://ui.example.com", "http://localhost:8233"]


async def test_decodes_a_real_encrypted_history(running: Running) -> None:
    """What the UI does: take the sealed input of a stored workflow and decode it here."""
    suffix = uuid.uuid4().hex[:6]
    settings = own_queues(keyed(running.settings), f"codec-{suffix}")
    client = await connect_client(settings)
    service = OrderService(client, running.sessions, settings)
    order_id = f"codec-{suffix}"
    async with AsyncExitStack() as workers:
        await run_workers(workers, running, settings, client)
        await service.start_order(order_id, f"pmt-{order_id}", ADDRESS)
        handle = client.get_workflow_handle(f"order-{order_id}")
        await handle.cancel()
        await handle.result()
    plain_client = await Client.connect(settings.temporal_target)
    history = await plain_client.get_workflow_handle(handle.id).fetch_history()
    sealed = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert sealed.metadata["encoding"] == b"binary/encrypted"

    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as api:
        r = await api.post(
            "/codec/decode",
            json={"payloads": [json_format.MessageToDict(sealed)]},
            headers={"X-API-Key": VIEW_KEY},
        )
    assert r.status_code == 200, r.text
    decoded = r.json()["payloads"][0]
    assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain"
    order_input = json.loads(base64.b64decode(decoded["data"]))
    assert order_input["order_id"] == order_id
    assert order_input["address"] == ADDRESS
