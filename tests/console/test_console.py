"""The operator console (/console) in a real headless Chromium, against the real stack.

The API is the real `create_app` served by uvicorn on a free port (a background thread),
with API keys on, talking to the session's Temporal dev server and embedded PostgreSQL;
the `running` fixture's workers run the orders. Screenshots of each page go to
test-artifacts/console/.

Needs the `playwright` package and a Chromium binary (/usr/bin/chromium, or the path in
CONSOLE_CHROMIUM); Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr
from sqlalchemy import select, text

from app.api.app import create_app
from app.platform.settings import PROJECT_ROOT, Settings
from app.platform.tables import Event, Order, Payment
from app.service.reconciliation import reconcile_now
from tests.helpers import (
    ADDRESS,
    RealStack,
    Running,
    eventually,
    wait_for_step,
)
from tests.ports import free_port

CHROMIUM = Path(os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "console"
KEY_NAME = "console-e2e"
API_KEY = "console-e2e-key-7f3a9c"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def start_for_review(running: Running, prefix: str) -> str:
    """A new order with a long review window: a slow browser must not see it time out of
    the review queue."""
    order_id = new_id(prefix)
    await running.service.start_order(order_id, f"pay-{order_id}", ADDRESS, review_timeout_s=600)
    return order_id


@dataclass
class ApiServer:
    url: str
    settings: Settings


@contextmanager
def serve(settings: Settings) -> Iterator[ApiServer]:
    """The real API app under uvicorn in a thread (its own event loop and connections)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name=f"console-api-{port}", daemon=True)
    thread.start()
    give_up = time.monotonic() + 40
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            server.should_exit = True
            pytest.fail("the API server did not start")
        time.sleep(0.05)
    try:
        yield ApiServer(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def api_server(real_stack: RealStack) -> Iterator[ApiServer]:
    """With API keys: the console has to ask for one."""
    settings = real_stack.settings.model_copy(
        update={
            "api_keys": SecretStr(f"{KEY_NAME}:{API_KEY}:admin"),
            "temporal_ui_url": f"http://127.0.0.1:{real_stack.cfg.temporal_ui_port}",
        }
    )
    with serve(settings) as server:
        yield server


def _require_chromium() -> None:
    # scripts/test.sh installs Debian's chromium; a missing browser is a failure, not a skip.
    assert CHROMIUM.exists(), f"no Chromium at {CHROMIUM}: apt-get install chromium"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@asynccontextmanager
async def open_tab(browser: Browser, origin: str) -> AsyncIterator[Page]:
    """A fresh tab (empty sessionStorage: no key yet) that may only talk to `origin` and
    must not throw JavaScript errors."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = await context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.on("request", lambda req: None if req.url.startswith(origin) else foreign.append(req.url))
    try:
        yield tab
    finally:
        await context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"
    assert not foreign, f"the console fetched from elsewhere: {foreign}"


@pytest.fixture
async def page(browser: Browser, api_server: ApiServer) -> AsyncIterator[Page]:
    async with open_tab(browser, api_server.url) as tab:
        yield tab


async def login(page: Page, url: str) -> None:
    """Open `url`; the API refuses without a key, so the page asks for one; enter it."""
    await page.goto(url)
    banner = page.locator("#auth-banner")
    await expect(banner).to_contain_text("needs a key")
    await page.fill("#api-key", API_KEY)
    await page.get_by_role("button", name="Use key").click()
    await expect(banner).to_be_hidden()
    await expect(page.locator("#key-state")).to_have_text("key set for this tab")
    # The key is kept for the tab, not left in the field.
    assert await page.input_value("#api-key") == ""


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def event_rows(running: Running, order_id: str) -> list[Event]:
    async with running.sessions() as s:
        query = select(Event).where(Event.order_id == order_id).order_by(Event.id)
        return list((await s.execute(query)).scalars())


async def test_approve_from_review_queue_until_completed(
    running: Running, api_server: ApiServer, page: Page
) -> None:
    order_id = await start_for_review(running, "con-approve")

    await login(page, f"{api_server.url}/console/review")
    row = page.locator(f'#review-rows tr[data-order-id="{order_id}"]')
    await expect(row).to_be_visible(timeout=15_000)
    # Countdown to the review deadline, ticking in the page.
    await expect(row.locator(".countdown")).to_have_text(re.compile(r"^\d+ s left$"))
    await shot(page, "review-queue")

    await row.get_by_role("button", name="Approve").click()
    await expect(page.locator("#toast")).to_contain_text(f"Order {order_id} approved")
    # The queue drops it once the payment moved it out of VALIDATED (2 s polling).
    await expect(row).to_have_count(0, timeout=15_000)

    # Same tab: the key is still in sessionStorage. The order page polls to the end.
    await page.goto(f"{api_server.url}/console/orders/{order_id}")
    await expect(page.locator("#order-state")).to_have_text("COMPLETED", timeout=20_000)
    await expect(page.locator('#timeline li[data-type="DISPATCHED"]')).to_have_count(1)
    await expect(page.locator("#payment-status")).to_have_attribute("data-status", "charged")
    await expect(page.locator("#summary-tracking")).to_have_text(re.compile(r"^TRK"))
    ui = api_server.settings.temporal_ui_url
    await expect(page.locator("#temporal-link")).to_have_attribute(
        "href", f"{ui}/namespaces/default/workflows/order-{order_id}"
    )
    # No button left, and the box says so; the amount in dollars, as the CLI shows it.
    await expect(page.locator("#actions-none")).to_have_text(
        re.compile(r"^Nothing left to do: the order completed \(tracking TRK")
    )
    await expect(page.locator("#payment")).to_contain_text(re.compile(r"Amount\$\d+\.\d\d"))
    # Closed is COMPLETED's time: the dispatch's events are stamped as its closed_at.
    closed = page.locator("#order-summary dt:text-is('Closed') + dd")
    completed = page.locator('#timeline li[data-type="COMPLETED"] .ev-time')
    assert (await completed.inner_text()).startswith(await closed.inner_text())
    await shot(page, "order-completed")
    rows = await event_rows(running, order_id)
    async with running.sessions() as s:
        order = await s.get(Order, order_id)
    assert order is not None
    stamps = {e.type: e.ts for e in rows}
    assert stamps["DISPATCHED"] == stamps["COMPLETED"] == order.closed_at
    assert [e.ts for e in rows] == sorted(e.ts for e in rows)

    # A timed-out attempt reported once the order had closed (its worker gives up on an
    # attempt after the server has retried it): listed where it was recorded, and said so.
    async with running.sessions() as s, s.begin():
        s.add(
            Event(
                order_id=order_id,
                type="STEP_ATTEMPT_FAILED",
                payload_json={"step": "SHIP", "attempt": 1, "kind": "timeout"},
            )
        )
    await page.reload()
    late = page.locator('#timeline li[data-type="STEP_ATTEMPT_FAILED"]')
    await expect(late).to_have_class(re.compile(r"\blate\b"))
    await expect(late.locator(".ev-note")).to_contain_text("reported after the order closed")

    # Orders list: state filter and search by id find it.
    await page.goto(f"{api_server.url}/console/orders")
    await page.select_option("#state-filter", "COMPLETED")
    await page.fill("#order-search", order_id)
    listed = page.locator(f'#orders-rows tr[data-order-id="{order_id}"]')
    await expect(listed).to_be_visible()
    await expect(listed.locator(".badge")).to_have_text("COMPLETED")
    assert "state=COMPLETED" in page.url
    await shot(page, "orders")

    approved = [e for e in await event_rows(running, order_id) if e.type == "APPROVED"]
    # Approved through the API with the console's key: its name is the reviewer.
    assert [e.payload_json and e.payload_json.get("by") for e in approved] == [KEY_NAME]


async def test_cancel_after_payment_refunds(
    running: Running, api_server: ApiServer, page: Page
) -> None:
    order_id = new_id("con-cancel")
    payment_id = f"pay-{order_id}"
    # Every external call takes 1 s: time to cancel between the charge and the dispatch.
    await running.service.start_order(order_id, payment_id, ADDRESS, fault_profile="delay=1")
    await wait_for_step(running, order_id, "MANUAL_REVIEW")

    await login(page, f"{api_server.url}/console/orders/{order_id}")
    await expect(page.locator("#order-state")).to_have_text("VALIDATED")
    await page.get_by_role("button", name="Approve").click()
    await expect(page.locator("#action-result")).to_contain_text("Approved")
    # Ready to confirm the moment the payment is charged.
    await page.get_by_role("button", name="Cancel order…").click()
    await page.fill("#cancel-reason", "customer_changed_mind")

    async def charged() -> bool:
        async with running.sessions() as s:
            payment = await s.get(Payment, payment_id)
            return payment is not None and payment.status == "charged"

    await eventually(charged, timeout=15, interval=0.05)
    await page.get_by_role("button", name="Confirm cancel").click()
    await expect(page.locator("#action-result")).to_contain_text("Cancel accepted")
    await expect(page.locator("#order-state")).to_have_text("CANCELLED", timeout=20_000)
    await expect(page.locator("#payment-status")).to_have_attribute("data-status", "refunded")
    await expect(page.locator('#timeline li[data-type="PAYMENT_REFUNDED"]')).to_have_count(1)
    await expect(page.locator("#summary-reason")).to_have_text("customer_changed_mind")
    await expect(page.locator("#cancel-btn")).to_be_hidden()
    await shot(page, "order-cancelled-refunded")

    async with running.sessions() as s:
        payment = await s.get(Payment, payment_id)
        order = await s.get(Order, order_id)
    assert payment is not None and payment.status == "refunded"
    assert order is not None and order.state == "CANCELLED" and order.tracking_number is None


async def test_retry_a_failed_order(running: Running, api_server: ApiServer, page: Page) -> None:
    order_id = new_id("con-retry")
    # Every call fails: the order closes FAILED at RECEIVE (and its retry does again).
    await running.service.start_order(order_id, f"pmt-{order_id}", ADDRESS, fault_profile="fail=1")

    async def failed() -> bool | None:
        view = await running.service.reader.status(order_id)
        return (view.state == "FAILED" and view.settled) or None

    await eventually(failed, timeout=30, what="the order failed and settled")
    await login(page, f"{api_server.url}/console/orders/{order_id}")
    await expect(page.locator("#order-state")).to_have_text("FAILED")
    await expect(page.locator("#cancel-btn")).to_be_hidden()
    await expect(page.locator("#actions-none")).to_be_hidden()  # the Retry button says it
    await page.get_by_role("button", name="Retry order").click()
    await expect(page.locator("#action-result")).to_contain_text("Retried: run")
    await expect(page.locator('#timeline li[data-type="RETRIED"]')).to_have_count(1)
    # The new run fails its RECEIVE like the first; the page follows it to its end.
    await expect(page.locator('#timeline li[data-type="FAILED"]')).to_have_count(2, timeout=30_000)
    await expect(page.locator("#retry-btn")).to_be_visible()
    await shot(page, "order-retried")
    types = [e.type for e in await event_rows(running, order_id)]
    assert types.count("RETRIED") == 1 and types.count("FAILED") == 2


async def test_invalid_address_shows_field_errors(
    running: Running, api_server: ApiServer, page: Page
) -> None:
    order_id = await start_for_review(running, "con-addr")
    await wait_for_step(running, order_id, "MANUAL_REVIEW")

    await login(page, f"{api_server.url}/console/orders/{order_id}")
    await expect(page.locator("#addr-street")).to_have_value(ADDRESS["street"])
    submit = page.get_by_role("button", name="Update address")

    # Rejected by the service's address rules (blank street): 422 naming address.street.
    await page.fill("#addr-street", "   ")
    await submit.click()
    street_error = page.locator('[data-error-for="address.street"]')
    await expect(street_error).to_have_text("Street is required")
    await expect(page.locator("#addr-street")).to_have_attribute("aria-invalid", "true")

    # Rejected by the request schema: every bad field gets its own message.
    await page.fill("#addr-street", "742 Evergreen Terrace")
    await page.fill("#addr-zip", "!!")
    await page.fill("#addr-country", "usa")
    await submit.click()
    for name in ("zip", "country"):
        # The wording is the API's; the console's job is to put it at the right field.
        await expect(page.locator(f'[data-error-for="address.{name}"]')).to_have_text(
            re.compile(r"\w+")
        )
    await expect(page.locator("#addr-zip")).to_have_attribute("aria-invalid", "true")
    await expect(street_error).to_be_hidden()
    await expect(page.locator("#address-result")).to_have_text("Please correct the marked fields.")
    await shot(page, "order-address-errors")

    # Corrected: accepted, errors cleared, the page shows the new address.
    await page.fill("#addr-zip", "62704")
    await page.fill("#addr-country", "US")
    await submit.click()
    await expect(page.locator("#address-result")).to_contain_text("Address updated")
    await expect(page.locator('[data-error-for="address.zip"]')).to_be_hidden()
    await expect(page.locator("#address-current")).to_contain_text("742 Evergreen Terrace")
    await expect(page.locator('#timeline li[data-type="ADDRESS_UPDATED"]')).to_have_count(1)

    async with running.sessions() as s:
        order = await s.get(Order, order_id)
    assert order is not None and order.address_json is not None
    assert order.address_json["zip"] == "62704"

    # Done with it: cancel it from the review queue, with a reason.
    await page.goto(f"{api_server.url}/console/review")
    row = page.locator(f'#review-rows tr[data-order-id="{order_id}"]')
    await row.get_by_role("button", name="Cancel…").click()
    await row.get_by_role("textbox").fill("address_test_done")
    await row.get_by_role("button", name="Confirm cancel").click()
    await expect(page.locator("#toast")).to_contain_text(f"Order {order_id} cancelled")
    await expect(row).to_have_count(0, timeout=10_000)

    async def cancelled() -> Order | None:
        async with running.sessions() as s:
            o = await s.get(Order, order_id)
        return o if o is not None and o.state == "CANCELLED" else None

    closed = await eventually(cancelled)
    assert closed.reason == "address_test_done"


async def test_dashboard_draws_charts(running: Running, api_server: ApiServer, page: Page) -> None:
    # Whatever ran before: one order cancelled in review, and one whose first charge
    # attempt crashes after recording the charge (a failed PAY attempt, then a retry).
    cancelled = new_id("con-dash")
    retried = new_id("con-retry")
    await running.service.start_order(cancelled, f"pay-{cancelled}", ADDRESS)
    await running.service.start_order(
        retried, f"pay-{retried}", ADDRESS, fault_profile="lost_first=1"
    )
    await wait_for_step(running, cancelled, "MANUAL_REVIEW")
    await running.service.cancel(cancelled, reason="dashboard_test")
    await wait_for_step(running, retried, "MANUAL_REVIEW")
    await running.service.approve(retried, reviewer="dashboard-test")

    async def closed() -> bool:
        async with running.sessions() as s:
            a = await s.get(Order, cancelled)
            b = await s.get(Order, retried)
        return (a is not None and a.state == "CANCELLED") and (
            b is not None and b.state == "COMPLETED"
        )

    await eventually(closed)

    async with httpx.AsyncClient(base_url=api_server.url) as http:
        refused = await http.get("/stats")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        stats = (await http.get("/stats", headers={"X-API-Key": API_KEY})).json()
    assert stats["orders"]["by_state"]["CANCELLED"] >= 1
    assert stats["outcomes"]["CANCELLED"]["reasons"]["dashboard_test"] >= 1
    assert stats["execution_time"]["count"] >= 2
    pay = next(step for step in stats["steps"] if step["step"] == "PAY")
    assert pay["failed"] >= 1 and pay["retries"] >= 1 and pay["error_rate"] > 0

    await login(page, f"{api_server.url}/console/dashboard")
    for name in ("states", "outcomes", "durations", "steps"):
        await expect(page.locator(f'canvas[data-chart="{name}"]')).to_have_attribute(
            "data-drawn", "true"
        )
    # Each chart drew real marks (bars, slices), not just an empty-state message.
    marks = await page.eval_on_selector_all(
        "canvas[data-chart]", "nodes => nodes.map(n => [n.dataset.chart, Number(n.dataset.marks)])"
    )
    assert len(marks) == 4 and all(n > 0 for _, n in marks), marks
    painted = await page.eval_on_selector_all(
        "canvas[data-chart]",
        """nodes => nodes.map(n => {
            const d = n.getContext('2d').getImageData(0, 0, n.width, n.height).data;
            let painted = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++;
            return painted;
        })""",
    )
    assert all(p > 1000 for p in painted), painted
    await expect(page.locator("#kpi-completion")).to_have_text(re.compile(r"^\d+\.\d%$"))
    await expect(page.locator("#kpi-total")).to_have_text(re.compile(r"^\d+$"))
    await expect(page.locator('#step-rows tr[data-step="PAY"] td').nth(2)).not_to_have_text("0")
    await expect(page.locator("#outcome-rows")).to_contain_text("dashboard_test")
    if stats["execution_time"]["without_start"]:
        # The words of `cli.py stats` for orders that failed at RECEIVE.
        await expect(page.locator("#durations-caption")).to_contain_text(
            "never got past RECEIVE, not counted"
        )
    await shot(page, "dashboard")


async def test_dashboard_shows_the_reconciliation(
    running: Running, api_server: ApiServer, page: Page
) -> None:
    """A cancelled order whose booking the carrier still holds, reported (not healed), then
    healed: the panel shows the latest run each time."""
    order_id = new_id("con-rec")
    async with running.sessions() as s, s.begin():
        s.add(Order(id=order_id, state="CANCELLED", payment_id=f"pay-{order_id}", amount=1))
    async with running.providers.carrier.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bookings (tracking_number, order_id, address, idempotency_key) "
                "VALUES (:t, :o, '{}', :k)"
            ),
            {"t": f"TRK-{order_id}", "o": order_id, "k": f"seed:{order_id}"},
        )
    # A full run (the panel shows the latest one, not one limited to some orders).
    reported = await reconcile_now(running.client, running.settings, heal=False)
    assert reported["unresolved"] >= 1
    await login(page, f"{api_server.url}/console/dashboard")
    row = page.locator(
        f'#reconciliation-rows tr[data-kind="booking_not_completed"]:has-text("{order_id}")'
    )
    await expect(row).to_contain_text("unresolved")
    await expect(page.locator("#reconciliation-meta")).to_contain_text(
        f"{reported['unresolved']} unresolved"
    )
    await shot(page, "dashboard-reconciliation")

    healed = await reconcile_now(running.client, running.settings)
    assert healed["healed"] >= 1
    await expect(row).to_contain_text("healed", timeout=15_000)
    await expect(row).to_have_attribute("data-healed", "true")


async def test_open_api_needs_no_key(
    running: Running, real_stack: RealStack, browser: Browser
) -> None:
    """Without API_KEYS (loopback dev setups) the console works without asking for a key."""
    order_id = await start_for_review(running, "con-open")
    await wait_for_step(running, order_id, "MANUAL_REVIEW")
    settings = real_stack.settings.model_copy(update={"api_keys": SecretStr("")})
    with serve(settings) as server:
        async with open_tab(browser, server.url) as tab:
            await tab.goto(f"{server.url}/console/orders?state=VALIDATED")
            row = tab.locator(f'#orders-rows tr[data-order-id="{order_id}"]')
            await expect(row).to_be_visible()
            await expect(tab.locator("#auth-banner")).to_be_hidden()
            await expect(tab.locator("#key-state")).to_have_text("no key")
    await running.service.cancel(order_id, reason="test_cleanup")


def test_console_pages_carry_no_secrets(api_server: ApiServer) -> None:
    """The shells are served without a key and never contain one; static files come from
    the package; the pages allow scripts and connections to this server only."""
    with httpx.Client(base_url=api_server.url) as http:
        assert http.get("/console").headers["location"].endswith("/console/review")
        for path in (
            "/console/review",
            "/console/orders",
            "/console/orders/x-1",
            "/console/dashboard",
        ):
            response = http.get(path)
            assert response.status_code == 200, path
            assert API_KEY not in response.text
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert "http" not in re.sub(r'"temporalUiUrl":"[^"]*"', "", response.text)
        for name in ("console.js", "chart.js", "console.css"):
            assert http.get(f"/console/static/{name}").status_code == 200
        assert http.get("/console/static/..%2Fpages.py").status_code == 404
        assert http.get("/console/orders/bad%20id").status_code == 404
