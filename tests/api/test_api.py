"""The REST API on the real stack: dev server, embedded PostgreSQL, in-process workers.

The app is built by `create_app` and its own lifespan (its own Temporal client and engine),
driven in-process with httpx's ASGI transport on the session's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.api.app import create_app, startup_problem
from app.api.auth import ApiKeyConfigError
from app.api.middleware import MAX_BODY_BYTES
from app.platform.settings import PROJECT_ROOT, Settings
from tests.helpers import ADDRESS, NEW_ADDRESS, Running, eventually, serving, until_answering
from tests.ports import free_port

pytestmark = pytest.mark.integration

ADMIN_KEY = "adm-0123456789"
OPS_KEY = "ops-0123456789"
VIEW_KEY = "view-0123456789"
REVIEW_KEY = "rev-0123456789"
API_KEYS = (
    f"root:{ADMIN_KEY}:admin,ops-bot:{OPS_KEY}:operator,"
    f"dashboard:{VIEW_KEY}:viewer,alice:{REVIEW_KEY}:reviewer"
)


def new_id() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def keyed_settings(running: Running) -> Settings:
    return running.settings.model_copy(update={"api_keys": SecretStr(API_KEYS)})


@pytest.fixture(scope="module")
async def api(keyed_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Auth on; sends the admin key unless a test sends another."""
    async with serving(keyed_settings, **{"X-API-Key": ADMIN_KEY}) as client:
        yield client


async def start(api: httpx.AsyncClient, order_id: str, **extra: Any) -> httpx.Response:
    body = {"payment_id": f"pmt-{order_id}", "address": ADDRESS, **extra}
    return await api.post(f"/orders/{order_id}/start", json=body)


async def wait_for(
    api: httpx.AsyncClient, order_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def poll() -> dict[str, Any] | None:
        r = await api.get(f"/orders/{order_id}/status")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if check(body) else None

    result: dict[str, Any] = await eventually(poll, timeout=30)
    return result


def in_review(s: dict[str, Any]) -> bool:
    return bool(s["step"] == "MANUAL_REVIEW")


def closed(s: dict[str, Any]) -> bool:
    """Closed and compensated (a cancelled order is closed first, refunded right after)."""
    return bool(s["settled"])


def assert_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error["field"] == field, error


# --- happy paths -----------------------------------------------------------------------


async def test_order_lifecycle_through_the_api(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    r = await start(api, order_id)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/orders/{order_id}/status"
    started = r.json()
    assert started["order_id"] == order_id
    assert started["workflow_id"] == f"order-{order_id}"
    assert started["run_id"] and started["state"] == "PENDING"

    status = await wait_for(api, order_id, in_review)
    assert status["state"] == "VALIDATED" and status["source"] == "workflow"
    assert status["address"] == ADDRESS and status["payment_status"] == "none"
    assert status["attempts"] == {"RECEIVE": 1, "VALIDATE": 1}
    assert status["errors"] == [] and status["deadline_at"] and status["run_id"]

    r = await api.post(f"/orders/{order_id}/signals/approve")
    assert r.status_code == 200, r.text
    # No reviewer given: the API key's name.
    assert r.json()["approved"] is True and r.json()["approved_by"] == "root"

    final = await wait_for(api, order_id, closed)
    assert final["state"] == "COMPLETED" and final["source"] == "database"
    assert final["payment_status"] == "charged" and final["tracking_number"]

    r = await api.get(f"/orders/{order_id}/events")
    assert r.status_code == 200
    types = [e["type"] for e in r.json()["events"]]
    assert types[0] == "RECEIVED" and "APPROVED" in types and types[-1] == "COMPLETED"

    async def closed_history() -> dict[str, Any] | None:
        # The row says COMPLETED a moment before the workflow's last task closes it.
        r = await api.get(f"/orders/{order_id}/history")
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        return body if body["events"][-1]["type"] == "WORKFLOW_EXECUTION_COMPLETED" else None

    history = await eventually(closed_history)
    assert history["workflow_id"] == f"order-{order_id}"
    kinds = [e["type"] for e in history["events"]]
    assert kinds[0] == "WORKFLOW_EXECUTION_STARTED" and "ACTIVITY_TASK_COMPLETED" in kinds

    r = await api.get("/orders", params={"state": "COMPLETED", "limit": 100})
    assert r.status_code == 200
    page = r.json()
    assert order_id in [o["order_id"] for o in page["items"]]
    assert all(o["state"] == "COMPLETED" for o in page["items"])

    # After dispatch: refused, and the caller is told.
    r = await api.post(f"/orders/{order_id}/signals/cancel")
    assert_error(r, 409, "conflict")
    r = await api.post(f"/orders/{order_id}/signals/update-address", json={"address": NEW_ADDRESS})
    assert_error(r, 409, "conflict")
    r = await api.post(f"/orders/{order_id}/signals/approve", json={"reviewer": "bob"})
    assert_error(r, 409, "conflict")


async def test_list_is_newest_first_and_paginated(api: httpx.AsyncClient) -> None:
    ids = [new_id() for _ in range(3)]
    for order_id in ids:
        assert (await start(api, order_id)).status_code == 201
        # created_at comes from the workflow's ReceiveOrder: wait so the order is defined.
        await wait_for(api, order_id, lambda s: s["state"] != "PENDING")

    r = await api.get("/orders", params={"limit": 2})
    assert r.status_code == 200
    first = r.json()
    assert first["limit"] == 2 and first["offset"] == 0 and first["total"] >= 3
    assert [o["order_id"] for o in first["items"]] == [ids[2], ids[1]]
    r = await api.get("/orders", params={"limit": 2, "offset": 2})
    assert r.json()["items"][0]["order_id"] == ids[0]
    for order_id in ids:
        r = await api.post(f"/orders/{order_id}/signals/cancel", json={"reason": "test cleanup"})
        assert r.status_code == 200, r.text


async def test_address_change_and_cancel_during_review(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    assert (await start(api, order_id)).status_code == 201
    await wait_for(api, order_id, in_review)

    r = await api.post(f"/orders/{order_id}/signals/update-address", json={"address": NEW_ADDRESS})
    assert r.status_code == 200, r.text
    assert r.json()["address"] == NEW_ADDRESS and r.json()["source"] == "update"

    r = await api.post(
        f"/orders/{order_id}/signals/update-address",
        json={"address": {**NEW_ADDRESS, "zip": "!!"}},
    )
    assert_error(r, 422, "invalid_input", "address.zip")
    # Blank text passes the schema's length rule; the shared validation still names it.
    r = await api.post(
        f"/orders/{order_id}/signals/update-address",
        json={"address": {**NEW_ADDRESS, "street": "   "}},
    )
    assert_error(r, 422, "invalid_input", "address.street")

    r = await api.post(f"/orders/{order_id}/signals/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200, r.text
    assert r.json()["cancel_requested"] is True

    final = await wait_for(api, order_id, closed)
    assert (final["state"], final["reason"]) == ("CANCELLED", "changed my mind")
    assert final["address"] == NEW_ADDRESS and final["payment_status"] == "none"
    events = (await api.get(f"/orders/{order_id}/events")).json()["events"]
    assert "ADDRESS_UPDATED" in [e["type"] for e in events]


async def test_approval_after_review_and_cancel_after_payment(api: httpx.AsyncClient) -> None:
    """Slow but healthy services (1 s a call) leave time to act between the steps."""
    order_id = new_id()
    r = await start(api, order_id, fault_profile="delay=1")
    assert r.status_code == 201, r.text
    await wait_for(api, order_id, in_review)
    r = await api.post(
        f"/orders/{order_id}/signals/approve",
        headers={"X-API-Key": REVIEW_KEY},
        json={"note": "called the customer"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["approved_by"] == "alice"

    await wait_for(api, order_id, lambda s: s["step"] == "PAY")
    r = await api.post(f"/orders/{order_id}/signals/approve", headers={"X-API-Key": REVIEW_KEY})
    assert_error(r, 409, "conflict")
    assert r.json()["error"]["reason"] == "ReviewNotPending"

    await wait_for(api, order_id, lambda s: s["state"] == "PAID")
    r = await api.post(f"/orders/{order_id}/signals/cancel", headers={"X-API-Key": OPS_KEY})
    assert r.status_code == 200, r.text
    final = await wait_for(api, order_id, closed)
    assert (final["state"], final["payment_status"]) == ("CANCELLED", "refunded")


async def test_approval_after_review_timeout_is_refused(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    assert (await start(api, order_id, review_timeout_s=0.5)).status_code == 201
    final = await wait_for(api, order_id, closed)
    assert (final["state"], final["reason"]) == ("CANCELLED", "review_timeout")
    r = await api.post(f"/orders/{order_id}/signals/approve")
    assert_error(r, 409, "conflict")


# --- errors ----------------------------------------------------------------------------


async def test_duplicate_start_names_the_existing_run(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    first = (await start(api, order_id)).json()
    r = await start(api, order_id)
    assert_error(r, 409, "conflict")
    error = r.json()["error"]
    assert (error["workflow_id"], error["run_id"]) == (first["workflow_id"], first["run_id"])
    await api.post(f"/orders/{order_id}/signals/cancel")


async def test_unknown_order_is_404(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    for method, path, body in [
        ("GET", "status", None),
        ("GET", "events", None),
        ("GET", "history", None),
        ("POST", "signals/cancel", None),
        ("POST", "signals/approve", None),
        ("POST", "signals/update-address", {"address": ADDRESS}),
    ]:
        r = await api.request(method, f"/orders/{order_id}/{path}", json=body)
        assert_error(r, 404, "order_not_found")


async def test_no_route_and_wrong_method(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/nowhere"), 404, "not_found")
    r = await api.get(f"/orders/{new_id()}/start")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": ADDRESS}, "payment_id"),
        ({"payment_id": "p1"}, "address"),
        ({"payment_id": "p1", "address": {**ADDRESS, "zip": "1"}}, "address.zip"),
        ({"payment_id": "p1", "address": {**ADDRESS, "country": "usa"}}, "address.country"),
        ({"payment_id": "p1", "address": {**ADDRESS, "street": "x" * 201}}, "address.street"),
        ({"payment_id": "p 1", "address": ADDRESS}, "payment_id"),
        ({"payment_id": "p1", "address": ADDRESS, "coupon": "FREE"}, "coupon"),
        ({"payment_id": "p1", "address": {**ADDRESS, "floor": "3"}}, "address.floor"),
        (
            {"payment_id": "p1", "address": ADDRESS, "items": [{"sku": "A", "qty": 0}]},
            "items[0].qty",
        ),
        ({"payment_id": "p1", "address": ADDRESS, "review_timeout_s": -1}, "review_timeout_s"),
        ({"payment_id": "p1", "address": ADDRESS, "fault_profile": "boom"}, "fault_profile"),
    ],
)
async def test_invalid_start_body_names_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    r = await api.post(f"/orders/{new_id()}/start", json=body)
    assert_error(r, 422, "invalid_input", field)
    assert "problems" in r.json()["error"] or field == "fault_profile"


async def test_invalid_json_order_id_and_query(api: httpx.AsyncClient) -> None:
    r = await api.post(
        f"/orders/{new_id()}/start",
        content=b'{"payment_id": ',
        headers={"content-type": "application/json"},
    )
    assert_error(r, 422, "invalid_input", "body")
    r = await api.post(f"/orders/{new_id()}/signals/cancel", json={"reason": "x", "force": True})
    assert_error(r, 422, "invalid_input", "force")
    r = await api.post(f"/orders/{new_id()}/signals/cancel", json={"reason": "bad\x00"})
    assert_error(r, 422, "invalid_input", "reason")

    for bad in ["bad!id", "-leading-dash", "x" * 65, "ü"]:
        r = await api.get(f"/orders/{bad}/status")
        assert_error(r, 422, "invalid_input", "order_id")
    r = await api.post("/orders/bad!id/start", json={"payment_id": "p1", "address": ADDRESS})
    assert_error(r, 422, "invalid_input", "order_id")

    assert_error(await api.get("/orders?state=SHIPPED"), 422, "invalid_input", "state")
    assert_error(await api.get("/orders?limit=0"), 422, "invalid_input", "limit")
    assert_error(await api.get("/orders?offset=-1"), 422, "invalid_input", "offset")
    assert (await api.get("/orders?state=CANCELLED&limit=1")).status_code == 200


async def test_body_size_limit(api: httpx.AsyncClient) -> None:
    big = {"payment_id": "p1", "address": {**ADDRESS, "street": "x" * MAX_BODY_BYTES}}
    r = await api.post(f"/orders/{new_id()}/start", json=big)
    assert_error(r, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold for a chunked body too.
        for _ in range(20):
            yield b" " * 4096
        yield json.dumps({"payment_id": "p1", "address": ADDRESS}).encode()

    r = await api.post(
        f"/orders/{new_id()}/start",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large")

    async def small() -> AsyncIterator[bytes]:
        yield b'{"reason": '
        yield b'"chunked"}'

    r = await api.post(
        f"/orders/{new_id()}/signals/cancel",
        content=small(),
        headers={"content-type": "application/json"},
    )
    assert_error(r, 404, "order_not_found")  # the small chunked body got through


# --- auth ------------------------------------------------------------------------------


async def test_auth_required_and_roles(api: httpx.AsyncClient) -> None:
    order_id = new_id()
    status_url = f"/orders/{order_id}/status"
    # No key, an unknown key (both header styles), and a Basic credential.
    for headers in [
        {"X-API-Key": ""},
        {"X-API-Key": "wrong-key-123"},
        {"X-API-Key": "", "Authorization": "Bearer wrong-key-123"},
        {"X-API-Key": "", "Authorization": f"Basic {ADMIN_KEY}"},
    ]:
        r = await api.get(status_url, headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    # 401 before anything else is looked at.
    r = await api.post("/orders/bad!id/start", json={}, headers={"X-API-Key": "nope-nope"})
    assert_error(r, 401, "unauthorized")

    # A valid key by either header.
    bearer = {"X-API-Key": "", "Authorization": f"Bearer {VIEW_KEY}"}
    assert_error(await api.get(status_url, headers=bearer), 404, "order_not_found")
    assert_error(await api.get(status_url, headers={"X-API-Key": VIEW_KEY}), 404, "order_not_found")

    # Roles: viewer reads only, operator cannot approve or read, reviewer only approves.
    viewer, operator, reviewer = (
        {"X-API-Key": VIEW_KEY},
        {"X-API-Key": OPS_KEY},
        {"X-API-Key": REVIEW_KEY},
    )
    body = {"payment_id": "p1", "address": ADDRESS}
    assert_error(
        await api.post(f"/orders/{order_id}/start", json=body, headers=viewer), 403, "forbidden"
    )
    assert_error(
        await api.post(f"/orders/{order_id}/signals/cancel", headers=viewer), 403, "forbidden"
    )
    assert_error(
        await api.post(f"/orders/{order_id}/signals/approve", headers=operator), 403, "forbidden"
    )
    assert_error(await api.get("/orders", headers=operator), 403, "forbidden")
    assert_error(await api.get(status_url, headers=reviewer), 403, "forbidden")
    assert_error(
        await api.post(f"/orders/{order_id}/signals/cancel", headers=reviewer), 403, "forbidden"
    )
    # ...and each may do its own job (404: the order does not exist, but access was granted).
    assert_error(
        await api.post(f"/orders/{order_id}/signals/cancel", headers=operator),
        404,
        "order_not_found",
    )
    assert_error(
        await api.post(f"/orders/{order_id}/signals/approve", headers=reviewer),
        404,
        "order_not_found",
    )

    # Open endpoints.
    for path in ["/health", "/docs", "/openapi.json"]:
        r = await api.get(path, headers={"X-API-Key": ""})
        assert r.status_code == 200, (path, r.text)


async def test_openapi_documents_security_and_examples(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerKey"]["scheme"] == "bearer"
    assert schemes["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key as `X-API-Key: <key>`",
    }
    start_op = spec["paths"]["/orders/{order_id}/start"]["post"]
    assert start_op["security"]
    assert {"201", "401", "403", "409", "413", "422", "503"} <= set(start_op["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]
    start_schema = spec["components"]["schemas"]["StartOrderRequest"]
    assert start_schema["additionalProperties"] is False and start_schema["examples"]
    assert spec["components"]["schemas"]["AddressIn"]["properties"]["zip"]["maxLength"] == 10


async def test_fault_injection_fields_refused_unless_allowed(running: Running) -> None:
    settings = running.settings.model_copy(update={"allow_fault_injection": False})
    async with serving(settings) as api:
        for field, value in [("fault_profile", "off"), ("review_timeout_s", 5), ("deadline_s", 9)]:
            r = await start(api, new_id(), **{field: value})
            assert_error(r, 403, "forbidden", field)


async def test_open_mode_without_keys(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.api"):
        async with serving(running.settings) as api:
            order_id = new_id()
            assert (await start(api, order_id)).status_code == 201
            await wait_for(api, order_id, in_review)
            r = await api.post(f"/orders/{order_id}/signals/approve")
            assert r.json()["approved_by"] == "anonymous"
            await wait_for(api, order_id, closed)
    assert any("authentication is off" in r.getMessage() for r in caplog.records)
    lines = [r for r in caplog.records if r.getMessage() == "request"]
    assert any(
        getattr(r, "order_id", None) == order_id and getattr(r, "status", None) == 201
        for r in lines
    )


async def test_request_log_never_carries_keys(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="app.api"):
        await api.get(f"/orders/{new_id()}/status", headers={"Authorization": "Bearer x-secret-1"})
        await api.get("/orders", headers={"X-API-Key": VIEW_KEY})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "x-secret-1" not in text and VIEW_KEY not in text and ADMIN_KEY not in text
    principals = [
        getattr(r, "principal", None) for r in caplog.records if r.getMessage() == "request"
    ]
    assert "dashboard" in principals


# --- dependencies down, unexpected errors ---------------------------------------------


async def test_database_down_is_503(running: Running) -> None:
    dead = f"postgresql+asyncpg://app:app@127.0.0.1:{free_port()}/app"
    settings = running.settings.model_copy(update={"database_url": SecretStr(dead)})
    async with serving(settings) as api:
        r = await api.get("/health")
        assert r.status_code == 503
        deps = r.json()["dependencies"]
        assert deps["temporal"]["status"] == "up" and deps["database"]["status"] == "down"
        r = await api.get("/orders")
        assert_error(r, 503, "unavailable")
        assert "127.0.0.1" not in r.text
        assert_error(await api.get(f"/orders/{new_id()}/status"), 503, "unavailable")


async def test_health_when_up(api: httpx.AsyncClient) -> None:
    r = await api.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert {d["status"] for d in body["dependencies"].values()} == {"up"}


async def test_unexpected_error_is_a_bare_500(running: Running) -> None:
    app = create_app(running.settings)

    async def boom(order_id: str) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.add_api_route("/orders/{order_id}/boom", boom)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        r = await client.get("/orders/o-1/boom")
    assert_error(r, 500, "internal_error")
    assert "hunter2" not in r.text and "Traceback" not in r.text


async def test_service_unavailable_before_startup(running: Running) -> None:
    app = create_app(running.settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        assert_error(await client.get("/orders"), 503, "unavailable")
        assert (await client.get("/health")).status_code == 503


# --- python -m app.api -----------------------------------------------------------------


def test_startup_refuses_open_non_loopback(running: Running) -> None:
    s = running.settings
    assert startup_problem(s.model_copy(update={"api_host": "127.0.0.1"})) is None
    assert startup_problem(s.model_copy(update={"api_host": "localhost"})) is None
    assert startup_problem(s.model_copy(update={"api_host": "::1"})) is None
    problem = startup_problem(s.model_copy(update={"api_host": "0.0.0.0"}))
    assert problem and "API_KEYS" in problem
    keyed = s.model_copy(update={"api_host": "0.0.0.0", "api_keys": SecretStr(API_KEYS)})
    assert startup_problem(keyed) is None
    bad = s.model_copy(update={"api_keys": SecretStr("root:short:admin")})
    problem = startup_problem(bad)
    assert problem and "short" not in problem


async def test_invalid_api_keys_stop_startup(running: Running) -> None:
    bad = running.settings.model_copy(update={"api_keys": SecretStr("root:k:admin")})
    app = create_app(bad)  # importing and building never fail...
    with pytest.raises(ApiKeyConfigError) as info:
        async with app.router.lifespan_context(app):
            pass  # ...serving does
    assert "root" in str(info.value) and ":k:" not in str(info.value)


def _env(tmp_path: Path, settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "API_HOST")}
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        DATABASE_URL=settings.database_url_plain,
        TEMPORAL_TARGET=settings.temporal_target,
        LOG_FORMAT="json",
        **extra,
    )
    return env


def test_main_exits_2_when_open_on_a_public_address(running: Running, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.api"],
        env=_env(tmp_path, running.settings, API_HOST="0.0.0.0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "API_KEYS" in lines[0]


async def test_main_serves_over_http(running: Running, tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.api",
        env=_env(tmp_path, running.settings, API_PORT=str(port), API_KEYS=API_KEYS),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await until_answering(client, "/health")
            order_id = new_id()
            r = await client.get(f"/orders/{order_id}/status", headers={"X-API-Key": VIEW_KEY})
            assert_error(r, 404, "order_not_found")
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert proc.returncode in (0, -signal.SIGTERM), stderr.decode()
    assert "Application shutdown complete." in stderr.decode()
    records = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    requests = [r for r in records if r.get("msg") == "request" and r.get("order_id") == order_id]
    assert requests and requests[0]["status"] == 404 and requests[0]["principal"] == "dashboard"
    assert VIEW_KEY not in stderr.decode()
