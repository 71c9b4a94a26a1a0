"""The order system's tables (orders, payments, events) as SQLAlchemy models.

Tables are created by the Alembic migrations (app/platform/migrations); these mirror them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    state: Mapped[str] = mapped_column(String, nullable=False)
    address_json: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    # Beyond the core columns above: what status and the dispatch gate need.
    step: Mapped[str | None] = mapped_column(String)
    workflow_id: Mapped[str | None] = mapped_column(String)
    run_id: Mapped[str | None] = mapped_column(String)
    payment_id: Mapped[str | None] = mapped_column(String)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    items_json: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    reason: Mapped[str | None] = mapped_column(String)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default="false")
    tracking_number: Mapped[str | None] = mapped_column(String)
    # DispatchCarrier asked the carrier (committed before the call; migration 0012).
    dispatch_requested_at: Mapped[datetime | None] = mapped_column(DateTime)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Closed and compensated (refund, booking cancellation done): migration 0004.
    settled_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_orders_state_created", "state", "created_at"),
        Index("ix_orders_created", "created_at"),  # the reconciliation's window (0003)
        # The list filters, the review queue and the events retention (0007).
        Index("ix_orders_step_created", "step", "created_at"),
        Index("ix_orders_reason_created", "reason", "created_at"),
        Index(
            "ix_orders_review_queue",
            func.coalesce(deadline_at, created_at),
            "id",
            postgresql_where=text(
                "step = 'MANUAL_REVIEW' AND state NOT IN ('CANCELLED', 'COMPLETED', 'FAILED')"
            ),
        ),  # 0010
        Index("ix_orders_closed", "closed_at", postgresql_where=closed_at.isnot(None)),
    )


class Payment(Base):
    __tablename__ = "payments"

    payment_id: Mapped[str] = mapped_column(String, primary_key=True)
    order_id: Mapped[str] = mapped_column(String, ForeignKey("orders.id"), nullable=False)
    status: Mapped[str] = mapped_column(String, nullable=False)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    gateway_ref: Mapped[str | None] = mapped_column(String)
    refunded_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_payments_status", "status", "order_id"),)  # 0007


class PaymentClaim(Base):
    """Which order a payment id belongs to: the first that used it (migration 0002)."""

    __tablename__ = "payment_claims"

    payment_id: Mapped[str] = mapped_column(String, primary_key=True)
    order_id: Mapped[str] = mapped_column(String, nullable=False)
    claimed_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    __table_args__ = (Index("ix_payment_claims_order", "order_id"),)


class IdempotencyKey(Base):
    """The start request an Idempotency-Key was first sent with (migration 0005)."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    order_id: Mapped[str] = mapped_column(String, nullable=False)
    fingerprint: Mapped[str] = mapped_column(String, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    order_id: Mapped[str] = mapped_column(String, nullable=False)
    type: Mapped[str] = mapped_column(String, nullable=False)
    payload_json: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # When the event was written: the statement's clock, not now() (the start of its
    # transaction, which may have waited on a provider's answer before the write).
    ts: Mapped[datetime] = mapped_column(
        DateTime, server_default=func.now(), default=func.clock_timestamp()
    )

    __table_args__ = (Index("ix_events_order_ts", "order_id", "ts"),)


class ReconciliationRun(Base):
    """One run of the reconciliation (migration 0003): its window and counts."""

    __tablename__ = "reconciliation_runs"

    id: Mapped[str] = mapped_column(String, primary_key=True)  # the workflow's run id
    workflow_id: Mapped[str] = mapped_column(String, nullable=False)
    trigger: Mapped[str] = mapped_column(String, nullable=False)
    # Limited to some orders (`cli.py reconcile --order`): kept, but not the latest report.
    scoped: Mapped[bool] = mapped_column(Boolean, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    since: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    healed: Mapped[int] = mapped_column(Integer, nullable=False)
    unresolved: Mapped[int] = mapped_column(Integer, nullable=False)
    settling: Mapped[int] = mapped_column(Integer, nullable=False)
    # Everything else of the report (what was checked, the settling orders, options).
    summary_json: Mapped[dict[str, Any] | None] = mapped_column(JsonType)

    __table_args__ = (Index("ix_reconciliation_runs_finished", "scoped", "finished_at"),)


class ReconciliationFinding(Base):
    __tablename__ = "reconciliation_findings"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        String, ForeignKey("reconciliation_runs.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String, nullable=False)
    order_id: Mapped[str] = mapped_column(String, nullable=False)
    reference: Mapped[str] = mapped_column(String, nullable=False)
    detail: Mapped[str] = mapped_column(String, nullable=False)
    safe: Mapped[bool] = mapped_column(Boolean, nullable=False)
    healed: Mapped[bool] = mapped_column(Boolean, nullable=False)

    __table_args__ = (
        Index("ix_reconciliation_findings_run", "run_id"),
        Index("ix_reconciliation_findings_order", "order_id"),
    )
