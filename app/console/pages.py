"""Routes of the console: one HTML shell per page and the package's static files."""

from __future__ import annotations

import json
from functools import cache
from html import escape
from importlib import resources
from string import Template
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from app.api.deps import AppSettings
from app.orders.validation import MAX_FIELD_LEN, ORDER_ID_RE
from app.platform.settings import Settings
from app.service.stats import STATE_ORDER

# Kept out of /openapi.json: these are pages, not API (and API fuzzers need not crawl them).
router = APIRouter(prefix="/console", include_in_schema=False)

_STATIC_TYPES = {
    "console.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

# Only this server's own files and API: anything injected into a page cannot load or send
# anything elsewhere. `data:` for the empty favicon.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The shell embeds per-deployment config; it is tiny, so never serve a stale one.
    "Cache-Control": "no-store",
}
_STATIC_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Revalidate every time (ETag/Last-Modified): an upgrade is picked up at once.
    "Cache-Control": "no-cache",
}

_NAV = (("review", "Review queue"), ("orders", "Orders"), ("dashboard", "Dashboard"))
_ADDRESS_LABELS = {
    "street": "Street",
    "city": "City",
    "state": "State / region",
    "zip": "ZIP / postal code",
    "country": "Country (ISO code, e.g. US)",
}


@cache
def _asset(name: str) -> str:
    return resources.files("app.console").joinpath(name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no `</script>` or `<!--` can form)."""
    return (
        json.dumps(value, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def _address_form() -> str:
    rows = []
    for name, label in _ADDRESS_LABELS.items():
        max_len = MAX_FIELD_LEN[name]
        rows.append(
            f'<div class="field"><label for="addr-{name}">{label}</label>'
            f'<input id="addr-{name}" name="{name}" maxlength="{max_len * 2}" '
            f'autocomplete="off" spellcheck="false" aria-describedby="err-{name}">'
            f'<p class="field-error" id="err-{name}" data-error-for="address.{name}" hidden>'
            "</p></div>"
        )
    return "\n".join(rows)


def _state_options() -> str:
    return "".join(f'<option value="{s.value}">{s.value}</option>' for s in STATE_ORDER)


def _render(
    request: Request, settings: Settings, page: str, title: str, body: str, **extra: Any
) -> HTMLResponse:
    base = str(request.scope.get("root_path", "")).rstrip("/")
    config = {
        "page": page,
        "base": base,
        "temporalUiUrl": settings.temporal_ui_url.rstrip("/"),
        "namespace": settings.temporal_namespace,
        **extra,
    }
    nav = "".join(
        f'<a href="{escape(base)}/console/{name}"'
        + (' aria-current="page"' if name == page or (page == "order" and name == "orders") else "")
        + f">{label}</a>"
        for name, label in _NAV
    )
    html = Template(_asset("shell.html")).substitute(
        title=escape(title),
        base=escape(base),
        page=escape(page),
        config=_script_json(config),
        nav=nav,
        body=Template(body).substitute(base=escape(base), state_options=_state_options()),
    )
    return HTMLResponse(html, headers=_PAGE_HEADERS)


@router.get("")
@router.get("/")
async def console_home(request: Request) -> RedirectResponse:
    base = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{base}/console/review", status_code=307)


@router.get("/review")
async def review_page(request: Request, settings: AppSettings) -> HTMLResponse:
    return _render(request, settings, "review", "Review queue", _asset("review.html"))


@router.get("/orders")
async def orders_page(request: Request, settings: AppSettings) -> HTMLResponse:
    return _render(request, settings, "orders", "Orders", _asset("orders.html"))


@router.get("/orders/{order_id}")
async def order_page(request: Request, settings: AppSettings, order_id: str) -> HTMLResponse:
    if not ORDER_ID_RE.fullmatch(order_id):
        raise HTTPException(404, "no such order page: invalid order id")
    body = _asset("order.html").replace("$address_fields", _address_form())
    # The id is escaped for the title; the page script reads it from the JSON config.
    return _render(request, settings, "order", f"Order {order_id}", body, orderId=order_id)


@router.get("/dashboard")
async def dashboard_page(request: Request, settings: AppSettings) -> HTMLResponse:
    return _render(request, settings, "dashboard", "Dashboard", _asset("dashboard.html"))


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    media_type = _STATIC_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404, "no such file")
    # Only the names above, so no path from the request ever reaches the filesystem.
    return Response(_asset(f"static/{name}"), media_type=media_type, headers=_STATIC_HEADERS)
