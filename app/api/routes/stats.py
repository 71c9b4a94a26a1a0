"""/stats: order statistics for the console's dashboard (app/service/stats.py computes them)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import Stats, Viewer, error_responses

router = APIRouter(tags=["stats"])


class OrderCounts(BaseModel):
    total: int
    open: int = Field(description="Orders not yet COMPLETED, CANCELLED or FAILED")
    closed: int
    by_state: dict[str, int]


class Outcome(BaseModel):
    total: int
    reasons: dict[str, int] = Field(description="Reason -> orders, most frequent first")


class DurationBucket(BaseModel):
    lower_s: float | None
    upper_s: float | None = Field(description="Exclusive upper bound; null = open-ended")
    label: str
    count: int
    by_outcome: dict[str, int]


class ExecutionTime(BaseModel):
    count: int = Field(description="Closed orders measured (first RECEIVED to terminal event)")
    without_start: int = Field(description="Closed orders with no RECEIVED event (not measured)")
    mean_s: float | None
    max_s: float | None
    percentiles: dict[str, float | None] = Field(
        description="p50, p95, p99 in seconds, from histogram buckets 5% wide"
    )
    percentile_error: float = Field(
        description="The percentiles are within this fraction of the exact figures"
    )
    buckets: list[DurationBucket]


class StepStats(BaseModel):
    step: str
    attempts: int = Field(description="Finished activity attempts (succeeded + failed)")
    succeeded: int = Field(description="Attempts that recorded the step's success event")
    failed: int
    retries: int = Field(
        description="Failed attempts after which the order went on (the step was retried)"
    )
    orders_retried: int = Field(description="Orders with at least one retry of this step")
    error_rate: float | None = Field(description="failed / attempts; null without attempts")
    failures_by_kind: dict[str, int]


class StatsWindow(BaseModel):
    name: str = Field(description="1h, 24h, 30d or all")
    since: str | None = Field(
        description="Start of the first bucket counted (the window covers up to one bucket "
        "more than its name); null for all"
    )
    resolution: str = Field(description="Width of the buckets the window is summed from")


class StatsResponse(BaseModel):
    generated_at: str
    window: StatsWindow
    orders: OrderCounts
    completion_rate: float | None = Field(description="COMPLETED / closed orders")
    outcomes: dict[str, Outcome] = Field(description="Per terminal state")
    payments: dict[str, int] = Field(description="Payments per status (charged, refunded)")
    execution_time: ExecutionTime
    steps: list[StepStats]


@router.get(
    "/stats",
    summary="Order statistics",
    response_model=StatsResponse,
    responses=error_responses(401, 403, 500, 503),
)
async def stats(
    cache: Stats,
    _caller: Viewer,
    window: Annotated[
        Literal["1h", "24h", "30d", "all"],
        Query(
            description="Orders created, closed or attempted in the last hour, day, "
            "30 days, or ever (the default)"
        ),
    ] = "all",
) -> StatsResponse:
    """Counts per state, completion rate, execution-time distribution, retries and error
    rate per step, outcomes with reasons, over a window. Summed from rollups the database
    keeps as orders change, when its tables have changed, at most once a second per window
    (`generated_at` says when)."""
    return StatsResponse.model_validate(await cache.get(window))
