"""Plain data passed between the API, workflows and activities.

Kept free of heavy imports: the workflow sandbox re-imports this module for every run.
One dataclass per workflow/activity/update input so fields can be added without breaking
running workflows or callers.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Step(StrEnum):
    RECEIVE = "RECEIVE"
    VALIDATE = "VALIDATE"
    MANUAL_REVIEW = "MANUAL_REVIEW"
    PAY = "PAY"
    SHIP = "SHIP"


class EventType(StrEnum):
    """The `events` table's types: the audit trail of an order."""

    RECEIVED = "RECEIVED"
    VALIDATED = "VALIDATED"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    APPROVED = "APPROVED"
    PAYMENT_CHARGED = "PAYMENT_CHARGED"
    PAYMENT_REFUNDED = "PAYMENT_REFUNDED"
    PACKAGE_PREPARED = "PACKAGE_PREPARED"
    DISPATCHED = "DISPATCHED"
    SHIPMENTS_CANCELLED = "SHIPMENTS_CANCELLED"
    ADDRESS_UPDATED = "ADDRESS_UPDATED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    STEP_ATTEMPT_FAILED = "STEP_ATTEMPT_FAILED"
    # An operator started a FAILED order again: a new run, a new payment (see retry_order).
    RETRIED = "RETRIED"
    # Terminal: named like the state they record.
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


class OrderState(StrEnum):
    """`orders.state`: where the order is; the last three are terminal."""

    RECEIVED = "RECEIVED"
    VALIDATED = "VALIDATED"  # validated, waiting for manual review
    PAID = "PAID"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    # Before ReceiveOrder has written the row, the workflow reports this.
    PENDING = "PENDING"


TERMINAL_STATES = frozenset({OrderState.COMPLETED, OrderState.CANCELLED, OrderState.FAILED})


def is_settled(view: Mapping[str, object]) -> bool:
    """Closed and compensated. A cancelled or failed order is recorded as closed first and
    refunded right after, so it is settled once its charge is no longer just "charged"."""
    if view.get("state") not in TERMINAL_STATES:
        return False
    return view.get("state") == OrderState.COMPLETED or view.get("payment_status") != "charged"


class PaymentStatus(StrEnum):
    NONE = "none"
    CHARGED = "charged"
    REFUNDED = "refunded"
    # A free order (total 0): PAY recorded that nothing was due; the gateway never saw it.
    NOT_DUE = "not_due"


# ApplicationError types. Business refusals are non-retryable and map to HTTP 409/422.
ERR_INVALID_ORDER = "InvalidOrder"
ERR_ORDER_DISPATCHED = "OrderAlreadyDispatched"
ERR_ORDER_CLOSED = "OrderClosed"
ERR_ORDER_CANCELLED = "OrderCancelled"
ERR_REVIEW_OVER = "ReviewNotPending"
ERR_PAYMENT_CONFLICT = "PaymentIdInUse"
ERR_DISPATCH_FAILED = "DispatchFailed"
# The order's run failing once its compensation is done (what the Temporal UI shows).
ERR_ORDER_FAILED = "OrderFailed"

# What clients are shown of a failure (status errors, events, history, 409 bodies): a fixed
# text for its kind. Kinds whose messages we write ourselves from ids and our own rules
# keep them; anything else (a driver's or SQL text, a stack's message) goes to the logs only.
OWN_MESSAGE_KINDS = frozenset(
    {
        ERR_INVALID_ORDER,
        ERR_ORDER_DISPATCHED,
        ERR_ORDER_CLOSED,
        ERR_ORDER_CANCELLED,
        ERR_REVIEW_OVER,
        ERR_PAYMENT_CONFLICT,
        ERR_DISPATCH_FAILED,
        ERR_ORDER_FAILED,
        "OrderNotFound",
        "SimulatedFailure",
        "SimulatedLostResponse",
        "ProviderRefused",
        "IdempotencyConflict",
        "ChargeNotFound",
        "RefundExceedsCharge",
        "PaymentVoided",
        "ShipmentCancelled",
        "DispatchSuperseded",
    }
)
_KIND_TEXTS = {
    "timeout": "activity timed out",
    "cancelled": "activity cancelled",
}
UNEXPECTED_ERROR_TEXT = "unexpected error (details are in the worker logs)"
MAX_SHOWN_MESSAGE = 500
# An order's status shows its most recent errors, this many at most (the workflow keeps
# no more, and the view merges them with the database's).
MAX_ERRORS_SHOWN = 20


def shown_message(kind: str | None, message: str | None) -> str:
    """The text a client may see for a failure of `kind` (see OWN_MESSAGE_KINDS)."""
    if kind in OWN_MESSAGE_KINDS and message:
        return message[:MAX_SHOWN_MESSAGE]
    return _KIND_TEXTS.get(kind or "", UNEXPECTED_ERROR_TEXT)


# Workflow message names: real Temporal signals/queries/updates, usable from `temporal`.
SIGNAL_APPROVE = "approve_order"
SIGNAL_CANCEL = "cancel_order"
SIGNAL_UPDATE_ADDRESS = "update_address"
SIGNAL_DISPATCH_FAILED = "dispatch_failed"
UPDATE_APPROVE = "approve"
UPDATE_CANCEL = "cancel"
UPDATE_ADDRESS = "change_address"
QUERY_STATUS = "status"

ORDER_WORKFLOW = "OrderWorkflow"
SHIPPING_WORKFLOW = "ShippingWorkflow"


def order_workflow_id(order_id: str) -> str:
    return f"order-{order_id}"


# The example address: what the API's examples, the demo, the CLI's defaults, chaos and
# bench ship to.
DEMO_ADDRESS = {
    "street": "123 Main St",
    "city": "Test City",
    "state": "TS",
    "zip": "12345",
    "country": "US",
}


@dataclass
class Address:
    street: str
    city: str
    state: str
    zip: str
    country: str

    def as_dict(self) -> dict[str, str]:
        return {
            "street": self.street,
            "city": self.city,
            "state": self.state,
            "zip": self.zip,
            "country": self.country,
        }


@dataclass
class LineItem:
    sku: str
    qty: int
    unit_price_cents: int


DEFAULT_ITEMS = [LineItem(sku="SKU-DEMO-1", qty=1, unit_price_cents=1999)]
# The product's limits: the review waits 30 s, the whole order finishes within 60 s. The
# one home of both (REVIEW_TIMEOUT_S / ORDER_DEADLINE_S in the settings only override them).
REVIEW_TIMEOUT_S = 30.0
ORDER_DEADLINE_S = 60.0


@dataclass
class OrderInput:
    order_id: str
    payment_id: str
    address: Address
    items: list[LineItem] = field(default_factory=lambda: list(DEFAULT_ITEMS))
    # Fault profile spec for this order's external calls; None = the worker's default.
    fault_profile: str | None = None
    shipping_task_queue: str = "shipping-tq"
    # None = REVIEW_TIMEOUT_S / ORDER_DEADLINE_S above.
    review_timeout_s: float | None = None
    deadline_s: float | None = None
    # Who ordered, when the caller says (the CustomerId search attribute).
    customer_id: str | None = None
    # A retry of a FAILED order: the run it takes the order over from, and the order as
    # the carrier knows it from now on (see ActivityContext).
    retry_of_run_id: str | None = None
    carrier_order: str | None = None
    # Which run of the order this is: 1, then 2, 3... for an operator's retries. Every
    # provider key names it (app/orders/providers/api.py).
    retry: int = 1


@dataclass
class OrderResult:
    order_id: str
    state: str
    reason: str | None = None
    tracking_number: str | None = None
    payment_status: str = PaymentStatus.NONE


@dataclass
class ShippingInput:
    order_id: str
    address: Address
    # Which shipping attempt this child is (1 = first); part of its workflow id.
    attempt: int = 1
    fault_profile: str | None = None
    carrier_order: str | None = None  # see ActivityContext
    retry: int = 1  # see OrderInput


@dataclass
class ShippingResult:
    tracking_number: str
    attempt: int
    dispatched_address: Address


@dataclass
class ApproveRequest:
    reviewer: str = "unknown"
    note: str | None = None


# Why an order is cancelled when the request does not say.
DEFAULT_CANCEL_REASON = "customer_request"


@dataclass
class CancelRequest:
    reason: str = DEFAULT_CANCEL_REASON
    requested_by: str = "unknown"


@dataclass
class AddressChange:
    address: Address
    requested_by: str = "unknown"


@dataclass
class DispatchFailure:
    reason: str
    attempt: int = 1


# --- activity inputs/outputs -------------------------------------------------------------


@dataclass
class ActivityContext:
    """What every activity call carries besides its own fields."""

    order_id: str
    fault_profile: str | None = None
    # The order as the carrier knows it: the order id, or `<order id>#r<N>` for a retry
    # (app/orders/identity.py), since the carrier closed the failed run's shipments for good.
    carrier_order: str | None = None
    retry: int = 1  # see OrderInput

    @property
    def shipment_ref(self) -> str:
        return self.carrier_order or self.order_id


@dataclass
class ReceiveInput:
    ctx: ActivityContext
    workflow_id: str
    run_id: str
    payment_id: str
    address: Address
    items: list[LineItem]
    deadline_iso: str
    # Workflow start, stored as orders.created_at: where the order's execution time (and
    # its orders_execution_seconds sample) begins, whatever RECEIVE retries take. None from
    # runs started before this field existed (the row then gets the insert time).
    started_at_iso: str | None = None
    # Set on a retry: the FAILED run whose row this run takes over.
    retry_of_run_id: str | None = None


@dataclass
class ValidateInput:
    ctx: ActivityContext
    address: Address
    items: list[LineItem]


@dataclass
class ChargeInput:
    ctx: ActivityContext
    payment_id: str
    amount_cents: int
    approved_by: str
    approved_at_iso: str
    # The reviewer's note, kept with the APPROVED event.
    approval_note: str | None = None


@dataclass
class StepOutcome:
    """What a step activity reports back: its attempt number feeds the status view."""

    attempt: int


@dataclass
class AddressChangeInput:
    ctx: ActivityContext
    address: Address
    requested_by: str


@dataclass
class CancelMarkInput:
    ctx: ActivityContext
    reason: str
    requested_by: str


@dataclass
class StepError:
    step: str
    attempt: int
    message: str
    at: str
    kind: str = "error"  # error | timeout


@dataclass
class CloseInput:
    """Terminal bookkeeping: refund if charged (compensation), then record the end state."""

    ctx: ActivityContext
    payment_id: str
    state: str
    reason: str | None
    # The step the order was in when it stopped (recorded in orders.step).
    step: str | None = None
    # Workflow start: created_at of a row this activity has to insert (RECEIVE never
    # succeeded), so that order still gets its execution time.
    started_at_iso: str | None = None
    # Record the end state only and leave the refund to RefundPayment, so a flaky payment
    # gateway cannot hold the order open past its deadline (workflows since the
    # "refund-after-close" patch).
    defer_refund: bool = False
    # The workflow's attempt count per step and its recent errors, kept with the terminal
    # event: a closed order's status is final from there on, even when a timed-out attempt
    # records its failure seconds later (Core cancels it 5 s past its timeout).
    attempts: dict[str, int] = field(default_factory=dict)
    errors: list[StepError] = field(default_factory=list)
    # What the order was started with, for a row this activity has to insert.
    address: Address | None = None
    items: list[LineItem] | None = None
    deadline_iso: str | None = None


@dataclass
class CloseOutcome:
    state: str
    payment_status: str
    refunded: bool
    # A charge is waiting for RefundPayment (defer_refund).
    refund_pending: bool = False


@dataclass
class RefundInput:
    ctx: ActivityContext
    payment_id: str


@dataclass
class PrepareInput:
    ctx: ActivityContext
    shipping_attempt: int


@dataclass
class DispatchInput:
    ctx: ActivityContext
    shipping_attempt: int


@dataclass
class DispatchOutcome:
    attempt: int
    tracking_number: str
    address: Address


# --- status view -------------------------------------------------------------------------


@dataclass
class OrderStatus:
    order_id: str
    workflow_id: str
    state: str
    step: str | None
    address: Address
    payment_id: str
    payment_status: str
    amount_cents: int
    attempts: dict[str, int]
    errors: list[StepError]
    created_at: str
    updated_at: str
    deadline_at: str
    review_deadline_at: str | None = None
    approved: bool = False
    approved_by: str | None = None
    cancel_requested: bool = False
    reason: str | None = None
    shipping_attempts: int = 0
    tracking_number: str | None = None


def order_amount_cents(items: list[LineItem]) -> int:
    return sum(i.qty * i.unit_price_cents for i in items)
