"""Request and response bodies of the REST API (what /openapi.json documents).

Requests forbid unknown fields, so a misspelt field is a 422 instead of being silently
dropped. Length limits and patterns come from app/orders/validation.py, and free text says
in the schema what the server checks (app/api/text.py), so what the schema allows the
server accepts; the service re-checks the same rules, so the API and the CLI refuse the
same input.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
)

from app.api.text import Text
from app.orders.messages import DEFAULT_CANCEL_REASON, OrderState, PaymentStatus, Step
from app.orders.validation import (
    COUNTRY_RE,
    MAX_FIELD_LEN,
    MAX_ITEMS,
    MAX_OVERRIDE_S,
    MAX_QTY_ACCEPTED,
    MAX_UNIT_PRICE_CENTS,
    PAYMENT_ID_RE,
    SKU_RE,
    ZIP_RE,
)
from app.service.listing import MAX_COUNTED, MAX_OFFSET
from app.service.views import EXAMPLE_ADDRESS, EXAMPLE_RUN

MAX_TEXT_LEN = 200

Street = Annotated[str, Text(MAX_FIELD_LEN["street"], min_length=1, non_blank=True)]
City = Annotated[str, Text(MAX_FIELD_LEN["city"], min_length=1, non_blank=True)]
Region = Annotated[str, Text(MAX_FIELD_LEN["state"], min_length=1, non_blank=True)]
Reason = Annotated[str, Text(MAX_TEXT_LEN, min_length=1)]
ReviewerName = Annotated[
    str,
    Text(
        100,
        min_length=1,
        description="A name to keep with the approval, as a note (`reviewer named: ...`). "
        "The approver is always the caller: the API key's name, or `anonymous` while the "
        "API runs without keys",
    ),
]
Note = Annotated[str, Text(500)]
ReasonFilter = Annotated[str, Text(MAX_TEXT_LEN)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ------------------------------------------------------------------------------


class AddressIn(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_ADDRESS]})

    street: Street
    city: City
    state: Region
    zip: str = Field(pattern=ZIP_RE.pattern, max_length=MAX_FIELD_LEN["zip"])
    country: str = Field(
        pattern=COUNTRY_RE.pattern,
        max_length=MAX_FIELD_LEN["country"],
        description="ISO 3166-1 alpha-2 code, in capitals",
    )


class LineItemIn(_Request):
    sku: str = Field(pattern=SKU_RE.pattern, examples=["SKU-DEMO-1"])
    qty: int = Field(ge=1, le=MAX_QTY_ACCEPTED, examples=[1])
    unit_price_cents: int = Field(ge=0, le=MAX_UNIT_PRICE_CENTS, examples=[1999])


def _override_s(what: str) -> Any:
    """A test and demo knob: seconds, bounded like the service bounds them."""
    return Field(
        default=None,
        gt=0,
        le=MAX_OVERRIDE_S,
        allow_inf_nan=False,
        description=f"{what} (only with fault injection allowed)",
    )


class StartOrderRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"payment_id": "pmt-123", "address": EXAMPLE_ADDRESS},
                {
                    "payment_id": "pmt-124",
                    "address": EXAMPLE_ADDRESS,
                    "items": [{"sku": "SKU-DEMO-1", "qty": 2, "unit_price_cents": 1999}],
                },
            ]
        },
    )

    payment_id: str = Field(pattern=PAYMENT_ID_RE.pattern, examples=["pmt-123"])
    address: AddressIn
    customer_id: str | None = Field(
        default=None,
        pattern=PAYMENT_ID_RE.pattern,
        description="Who ordered (an opaque id, not an e-mail: it is the CustomerId search "
        "attribute, visible in the Temporal UI)",
        examples=["cust-42"],
    )
    items: list[LineItemIn] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ITEMS,
        description="Line items; one demo item when omitted",
    )
    # Test and demo knobs: refused with 403 unless the server allows fault injection.
    fault_profile: str | None = Field(
        default=None,
        max_length=200,
        description="Failure simulation for this order: seed, off, or e.g. fail=0.2,hang=0.1,"
        "delay=1 (only where ALLOW_FAULT_INJECTION is on, else 403)",
        examples=["off"],
    )
    review_timeout_s: float | None = _override_s("Manual review wait for this order")
    deadline_s: float | None = _override_s("Time limit for this order")


class UpdateAddressRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "address": {
                        "street": "456 New St",
                        "city": "New City",
                        "state": "NS",
                        "zip": "54321",
                        "country": "US",
                    }
                }
            ]
        },
    )

    address: AddressIn


class CancelRequestIn(_Request):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": DEFAULT_CANCEL_REASON}]}
    )

    reason: Reason = DEFAULT_CANCEL_REASON


class ApproveRequestIn(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reviewer": "alice", "note": "checked by phone"}]},
    )

    reviewer: ReviewerName | None = None
    note: Note | None = None


# --- responses -----------------------------------------------------------------------------


class StartOrderResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **EXAMPLE_RUN,
                    "state": "PENDING",
                    "step": "RECEIVE",
                }
            ]
        }
    )

    order_id: str
    workflow_id: str
    run_id: str | None
    state: str
    step: str | None = None


class OrderSummary(BaseModel):
    order_id: str
    workflow_id: str | None
    state: str
    step: str | None
    payment_id: str | None
    reason: str | None
    created_at: str | None
    updated_at: str | None
    deadline_at: str | None = Field(
        default=None, description="When the order must have ended (orders listed from the database)"
    )


class OrderList(BaseModel):
    items: list[OrderSummary]
    total: int | None = Field(
        description=f"Orders matching the filters, counted up to {MAX_COUNTED} (then "
        "total_capped is true); null for a visibility query: Temporal does not count them"
    )
    total_capped: bool = Field(
        default=False, description=f"More than {MAX_COUNTED} orders match: total is a floor"
    )
    limit: int
    offset: int
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page"
    )


def _iso_text(value: object) -> object:
    # Pydantic would also take a number as seconds since the epoch; the schema says ISO 8601.
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ].+", value):
        raise ValueError("must be an ISO 8601 date and time with an offset")
    return value


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


class OrderListQuery(BaseModel):
    """GET /orders parameters. Unknown ones are refused (422), not ignored."""

    model_config = ConfigDict(extra="forbid")

    state: OrderState | None = Field(default=None, description="Only orders in this state")
    step: Step | None = Field(
        default=None,
        description="Only orders at this step (MANUAL_REVIEW: the review queue, open orders "
        "waiting for a decision, oldest deadline first)",
    )
    payment_status: PaymentStatus | None = Field(
        default=None, description="Only orders whose payment is in this status"
    )
    created_after: IsoDatetime | None = Field(
        default=None, description="Created strictly after (ISO 8601 with offset)"
    )
    created_before: IsoDatetime | None = Field(
        default=None, description="Created strictly before (ISO 8601 with offset)"
    )
    reason: ReasonFilter | None = Field(
        default=None, description="Only orders closed for this reason"
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="A Temporal visibility query over the order's search attributes "
        "(OrderState, OrderStep, CustomerId, OrderAmountCents), e.g. \"OrderState='FAILED'\"; "
        "takes the place of the other filters",
    )
    limit: int = Field(default=20, ge=1, le=100)
    offset: int = Field(
        default=0,
        ge=0,
        le=MAX_OFFSET,
        description=f"Rows to skip, up to {MAX_OFFSET}; page further with cursor",
    )
    cursor: str | None = Field(
        default=None, max_length=2000, description="next_cursor of the previous page"
    )


class EventOut(BaseModel):
    id: int
    type: str
    payload: dict[str, Any] | None
    ts: str | None


class EventList(BaseModel):
    order_id: str
    events: list[EventOut]


class HistoryEventOut(BaseModel):
    event_id: int
    time: str | None
    type: str
    detail: str | None


class HistoryOut(BaseModel):
    order_id: str
    workflow_id: str
    events: list[HistoryEventOut]


class DependencyHealth(BaseModel):
    status: str = Field(description="up or down")
    latency_ms: float | None = None
    error: str | None = None


# Temporal and PostgreSQL answering, as the health endpoints' examples show them.
EXAMPLE_DEPENDENCIES_UP: dict[str, JsonValue] = {
    "temporal": {"status": "up", "latency_ms": 2.1},
    "database": {"status": "up", "latency_ms": 1.4},
}


class HealthResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "dependencies": EXAMPLE_DEPENDENCIES_UP}]}
    )

    status: str = Field(description="ok when every dependency is up, else unavailable")
    dependencies: dict[str, DependencyHealth]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_input"])
    message: str
    field: str | None = Field(default=None, description="The offending input, dotted (address.zip)")
    # Conflicts on start name the order that already exists.
    order_id: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    reason: str | None = Field(default=None, description="Why a request was refused")
    problems: dict[str, str] | None = Field(
        default=None, description="Every invalid field and its problem"
    )


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_input",
                        "message": "address.zip must be 2-10 letters, digits, spaces or dashes",
                        "field": "address.zip",
                    }
                }
            ]
        }
    )

    error: ErrorDetail
