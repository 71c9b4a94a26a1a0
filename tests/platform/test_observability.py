"""Metrics, logs and `cli.py stats` against the real stack the CLI started (`cli_stack`).

Four orders run side by side, each outcome forced deterministically:

- completed: approved in review, ships;
- failed: fault profile `fail=1`, so ReceiveOrder fails its 3 attempts (1 s + 2 s backoff);
- cancelled: cancelled in review with a reason of its own;
- db_error: ChargePayment's transaction is made to wait on a row lock this test holds, and
  its database connection is then killed (`pg_terminate_backend`): a real database error,
  a retried PAY step, then the order completes.

Then the API's and both workers' /metrics are scraped over HTTP and checked against the
metrics table in docs/operations.md (every family present, with samples and exactly the
documented labels), the stack's log files are checked (JSON lines; lines naming an order
carry its order_id), and `cli.py stats --json` is compared with what the database holds.

Metrics and the database are shared with the other e2e modules, so figures are checked as
increases over a scrape taken before the orders start, or against one database snapshot.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.orders.reconciliation.audit import KINDS
from tests.helpers import ADDRESS, CliStack, database_dsn, describe, eventually
from tests.metrics_docs import dashboard_metrics, documented_metrics

TERMINAL = ("COMPLETED", "CANCELLED", "FAILED")
ALL_STATES = ("RECEIVED", "VALIDATED", "PAID", *TERMINAL)
# The success event of each step (app/stats.py); failures are STEP_ATTEMPT_FAILED events.
SUCCESS_EVENTS = {
    "RECEIVED": "RECEIVE",
    "VALIDATED": "VALIDATE",
    "PAYMENT_CHARGED": "PAY",
    "PACKAGE_PREPARED": "SHIP",
    "DISPATCHED": "SHIP",
}
APP_LOGS = ("app", "worker-orders", "worker-shipping")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


# --- helpers -------------------------------------------------------------------------------


def scrape(url: str) -> tuple[Samples, set[str]]:
    """Samples by sample name and label set, and the family names, of a /metrics page."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples, families


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample over the label sets that include `labels`."""
    want = set(labels.items())
    return sum(v for key, v in samples.get(name, {}).items() if want <= key)


def sample_name(name: str, kind: str) -> str:
    # A histogram's sample count is <name>_count; a counter's samples carry its full name.
    return f"{name}_count" if kind == "histogram" else name


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Endpoints:
    api: str
    worker_orders: str
    worker_shipping: str

    @classmethod
    def of(cls, stack: CliStack) -> Endpoints:
        port = int(stack.env["WORKER_METRICS_PORT"])  # shipping: the next port
        return cls(
            f"{stack.api}/metrics",
            f"http://127.0.0.1:{port}/metrics",
            f"http://127.0.0.1:{port + 1}/metrics",
        )

    def scrape_all(self) -> dict[str, Samples]:
        return {name: scrape(url)[0] for name, url in vars(self).items()}


@dataclass
class Orders:
    completed: str
    failed: str
    cancelled: str
    db_error: str
    cancel_reason: str

    @property
    def ids(self) -> list[str]:
        return [self.completed, self.failed, self.cancelled, self.db_error]


@dataclass
class Run:
    orders: Orders
    views: dict[str, dict[str, Any]]
    before: dict[str, Samples]
    after: dict[str, Samples]
    families: dict[str, set[str]]
    db_error_type: str

    def increase(self, endpoint: str, name: str, **labels: str) -> float:
        return total(self.after[endpoint], name, **labels) - total(
            self.before[endpoint], name, **labels
        )


# --- the four orders -----------------------------------------------------------------------


async def start(api: httpx.AsyncClient, oid: str, **extra: Any) -> None:
    body = {"payment_id": f"pmt-{oid}", "address": ADDRESS, **extra}
    response = await api.post(f"/orders/{oid}/start", json=body)
    assert response.status_code == 201, response.text


async def wait_for(
    api: httpx.AsyncClient, oid: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def view() -> dict[str, Any] | None:
        response = await api.get(f"/orders/{oid}/status")
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return body if body and done(body) else None

    result: dict[str, Any] = await eventually(view, timeout=30.0, what=f"order {oid}")
    return result


def in_review(view: dict[str, Any]) -> bool:
    return bool(view["step"] == "MANUAL_REVIEW")


def closed(view: dict[str, Any]) -> bool:
    return view["state"] in TERMINAL and view.get("source") == "database"


CLOSE_EVENTS = {f"WORKFLOW_EXECUTION_{end}" for end in ("COMPLETED", "FAILED", "CANCELED")}


async def workflow_closed(api: httpx.AsyncClient, oid: str) -> None:
    """The row turns terminal inside the last activity, before that activity records its
    metrics and logs; the workflow closes only after the activity has returned."""

    async def last_event_closes() -> bool:
        response = await api.get(f"/orders/{oid}/history")
        assert response.status_code == 200, response.text
        return bool(response.json()["events"][-1]["type"] in CLOSE_EVENTS)

    await eventually(last_event_closes, timeout=30.0, what=f"workflow of {oid} to close")


async def approve(api: httpx.AsyncClient, oid: str) -> None:
    response = await api.post(f"/orders/{oid}/signals/approve", json={"reviewer": "e2e-obs"})
    assert response.status_code == 200, response.text


async def run_completed(api: httpx.AsyncClient, oid: str) -> dict[str, Any]:
    await start(api, oid)
    await wait_for(api, oid, in_review)
    await approve(api, oid)
    return await wait_for(api, oid, closed)


async def run_failed(api: httpx.AsyncClient, oid: str) -> dict[str, Any]:
    await start(api, oid, fault_profile="fail=1")
    return await wait_for(api, oid, closed)


async def run_cancelled(api: httpx.AsyncClient, oid: str, reason: str) -> dict[str, Any]:
    await start(api, oid)
    await wait_for(api, oid, in_review)
    response = await api.post(f"/orders/{oid}/signals/cancel", json={"reason": reason})
    assert response.status_code == 200, response.text
    return await wait_for(api, oid, closed)


async def run_db_error(api: httpx.AsyncClient, dsn: str, oid: str) -> dict[str, Any]:
    await start(api, oid)
    await wait_for(api, oid, in_review)
    holder = await asyncpg.connect(dsn)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", oid)
        await approve(api, oid)
        # ChargePayment's transaction queues behind our row lock; kill its connection.
        # pg_locks, not pg_stat_activity: inside this transaction pg_stat_activity is a
        # snapshot taken at its first read, blind to a connection the worker opens later.
        me = holder.get_server_pid()
        blocked = await eventually(
            lambda: holder.fetchval(
                "SELECT pid FROM pg_locks WHERE NOT granted AND $1 = ANY(pg_blocking_pids(pid))",
                me,
            ),
            timeout=30.0,
            what="ChargePayment to wait on the row lock",
        )
        assert await holder.fetchval("SELECT pg_terminate_backend($1)", blocked)
        await lock.rollback()
    finally:
        await holder.close()
    return await wait_for(api, oid, closed)


@pytest.fixture(scope="module")
async def run(cli_stack: CliStack) -> Run:
    suffix = uuid.uuid4().hex[:8]
    orders = Orders(
        completed=f"obs-ok-{suffix}",
        failed=f"obs-fail-{suffix}",
        cancelled=f"obs-cancel-{suffix}",
        db_error=f"obs-dberr-{suffix}",
        cancel_reason=f"obs_{suffix}",
    )
    endpoints = Endpoints.of(cli_stack)
    before = await asyncio.to_thread(endpoints.scrape_all)
    async with httpx.AsyncClient(base_url=cli_stack.api, timeout=20) as api:
        results = await asyncio.gather(
            run_completed(api, orders.completed),
            run_failed(api, orders.failed),
            run_cancelled(api, orders.cancelled, orders.cancel_reason),
            run_db_error(api, database_dsn(cli_stack), orders.db_error),
        )
        await asyncio.gather(*(workflow_closed(api, oid) for oid in orders.ids))
        # One request no route matches: its latency is labelled without the raw path.
        assert (await api.get(f"/no-such-page/{suffix}")).status_code == 404
    views = dict(zip(orders.ids, results, strict=True))
    db_conn = await asyncpg.connect(database_dsn(cli_stack))
    try:
        kind = await db_conn.fetchval(
            "SELECT payload_json ->> 'kind' FROM events "
            "WHERE order_id = $1 AND type = 'STEP_ATTEMPT_FAILED'",
            orders.db_error,
        )
    finally:
        await db_conn.close()
    pages = {name: scrape(url) for name, url in vars(endpoints).items()}
    return Run(
        orders=orders,
        views=views,
        before=before,
        after={name: page[0] for name, page in pages.items()},
        families={name: page[1] for name, page in pages.items()},
        db_error_type=str(kind),
    )


# --- orders ----------------------------------------------------------------------------------


def test_the_orders_reached_their_outcomes(run: Run) -> None:
    o, v = run.orders, run.views
    assert (v[o.completed]["state"], v[o.completed]["attempts"]["PAY"]) == ("COMPLETED", 1)
    assert (v[o.failed]["state"], v[o.failed]["reason"]) == ("FAILED", "receive_failed")
    assert (v[o.cancelled]["state"], v[o.cancelled]["reason"]) == ("CANCELLED", o.cancel_reason)
    # The killed connection failed the first PAY attempt; the retry charged once.
    assert (v[o.db_error]["state"], v[o.db_error]["attempts"]["PAY"]) == ("COMPLETED", 2)
    assert v[o.db_error]["payment_status"] == "charged"
    assert run.db_error_type not in ("None", "", "timeout", "SimulatedFailure")


# --- metrics -------------------------------------------------------------------------------


def test_every_documented_family_is_served_with_samples_and_its_labels(run: Run) -> None:
    documented = documented_metrics()
    assert "orders_api_request_seconds" in documented
    assert len(documented) >= 9
    for name, (kind, labels) in documented.items():
        series = {
            key: value
            for page in run.after.values()
            for key, value in page.get(sample_name(name, kind), {}).items()
        }
        assert series, f"{name}: no samples on any /metrics endpoint"
        for key in series:
            assert {label for label, _ in key} == labels, (name, dict(key), sorted(labels))
        if name == "orders_reconciliation_unresolved":  # 0 per kind on a healthy stack
            assert len(series) == len(KINDS) and not any(series.values()), series
            continue
        assert any(value > 0 for value in series.values()), name


def test_worker_metrics_cover_the_orders(run: Run) -> None:
    o = run.orders
    orders, shipping = "worker_orders", "worker_shipping"
    # Order execution time by outcome: closes on the orders worker, completion at dispatch.
    assert run.increase(orders, "orders_execution_seconds_count", outcome="FAILED") >= 1
    assert run.increase(orders, "orders_execution_seconds_count", outcome="CANCELLED") >= 1
    assert run.increase(shipping, "orders_execution_seconds_count", outcome="COMPLETED") >= 2
    # Measured from the workflow start: the failed order's retries (1 s + 2 s) are in it.
    assert run.increase(orders, "orders_execution_seconds_sum", outcome="FAILED") >= 2.9
    # Orders by terminal state (and reason).
    assert (
        run.increase(orders, "orders_terminal_total", state="FAILED", reason="receive_failed") >= 1
    )
    assert (
        run.increase(orders, "orders_terminal_total", state="CANCELLED", reason=o.cancel_reason)
        == 1
    )
    assert run.increase(shipping, "orders_terminal_total", state="COMPLETED", reason="") >= 2
    # Step duration (successful attempts) per step.
    for step in ("RECEIVE", "VALIDATE", "PAY"):
        assert run.increase(orders, "orders_step_duration_seconds_count", step=step) >= 1, step
    assert run.increase(shipping, "orders_step_duration_seconds_count", step="SHIP") >= 4
    # Attempts and retries by activity.
    assert run.increase(orders, "orders_activity_attempts_total", activity="ReceiveOrder") >= 6
    assert run.increase(orders, "orders_activity_attempts_total", activity="ChargePayment") >= 3
    for activity in ("PreparePackage", "DispatchCarrier"):
        assert run.increase(shipping, "orders_activity_attempts_total", activity=activity) >= 2
    assert run.increase(orders, "orders_activity_retries_total", activity="ReceiveOrder") >= 2
    assert run.increase(orders, "orders_activity_retries_total", activity="ChargePayment") >= 1
    # Errors by step and error type.
    assert (
        run.increase(orders, "orders_step_errors_total", step="RECEIVE", error="SimulatedFailure")
        >= 3
    )
    assert (
        run.increase(orders, "orders_step_errors_total", step="PAY", error=run.db_error_type) >= 1
    )
    # Database latency and errors by operation.
    for operation in ("receive_order", "charge_payment", "record_attempt_failure", "close_order"):
        assert (
            run.increase(orders, "orders_db_operation_seconds_count", operation=operation) >= 1
        ), operation
    for operation in ("prepare_package", "dispatch_carrier"):
        assert (
            run.increase(shipping, "orders_db_operation_seconds_count", operation=operation) >= 2
        ), operation
    assert (
        run.increase(
            orders,
            "orders_db_operation_errors_total",
            operation="charge_payment",
            error=run.db_error_type,
        )
        >= 1
    )
    # The Temporal SDK's own metrics share each worker's endpoint, among them every one the
    # Grafana dashboard queries.
    used = dashboard_metrics("temporal_")
    assert used
    for worker in (orders, shipping):
        assert "temporal_activity_execution_latency" in run.families[worker], worker
        assert used <= run.families[worker], (worker, sorted(used - run.families[worker]))


def test_api_request_latency_by_route_method_and_status(run: Run) -> None:
    name = "orders_api_request_seconds_count"
    expected = [
        ("/orders/{order_id}/start", "POST", "201", 4),
        ("/orders/{order_id}/status", "GET", "200", 4),
        ("/orders/{order_id}/signals/approve", "POST", "200", 2),
        ("/orders/{order_id}/signals/cancel", "POST", "200", 1),
        ("unmatched", "GET", "404", 1),
    ]
    for route, method, status, at_least in expected:
        assert run.increase("api", name, route=route, method=method, status=status) >= at_least, (
            route,
            method,
            status,
        )
    # Routes are templates: no order id (raw path) ever becomes a label value.
    for key in run.after["api"][name]:
        for _, value in key:
            assert not any(oid in value for oid in run.orders.ids), dict(key)


def test_metrics_endpoint_is_not_in_the_request_log(run: Run, cli_stack: CliStack) -> None:
    # Scrapes are logged at DEBUG like health probes; the stack logs at INFO.
    for entry in log_entries(cli_stack.run_dir / "logs" / "app.log"):
        assert entry.get("route") != "/metrics", entry


# --- logs ----------------------------------------------------------------------------------


def log_entries(path: Path) -> list[dict[str, Any]]:
    """Every line a service wrote, parsed; the supervisor's `=== starting` lines skipped."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("=== "):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]}")
        assert isinstance(entry, dict), (path.name, number, line[:300])
        entry["_line"] = line
        entries.append(entry)
    return entries


def test_service_logs_are_json_and_lines_about_an_order_carry_its_id(
    run: Run, cli_stack: CliStack
) -> None:
    for name in APP_LOGS:
        entries = log_entries(cli_stack.run_dir / "logs" / f"{name}.log")
        assert entries, name
        service = "api" if name == "app" else name
        for entry in entries:
            for key in ("ts", "level", "service", "logger", "msg"):
                assert key in entry, (name, entry)
            assert entry["service"] == service, (name, entry)
            # The ids are unique and none is a prefix of another: a mention is that order.
            for oid in run.orders.ids:
                if oid in entry["_line"]:
                    assert entry.get("order_id") == oid, (name, entry["_line"][:400])


def test_logs_tell_each_orders_story(run: Run, cli_stack: CliStack) -> None:
    o = run.orders
    logs = cli_stack.run_dir / "logs"
    worker = [e for e in log_entries(logs / "worker-orders.log") if e.get("order_id") in o.ids]
    api = [e for e in log_entries(logs / "app.log") if e.get("order_id") in o.ids]

    def lines(oid: str, msg: str) -> list[dict[str, Any]]:
        return [e for e in worker if e["order_id"] == oid and e["msg"] == msg]

    # Retries and failed attempts: step, attempt, activity, workflow id, error type.
    retries = lines(o.failed, "retrying activity")
    assert sorted(e["attempt"] for e in retries) == [2, 3]
    failures = lines(o.failed, "activity attempt failed")
    assert sorted(e["attempt"] for e in failures) == [1, 2, 3]
    for e in retries + failures:
        assert (e["step"], e["activity"], e["workflow_id"]) == (
            "RECEIVE",
            "ReceiveOrder",
            f"order-{o.failed}",
        )
    assert {e["error_type"] for e in failures} == {"SimulatedFailure"}
    assert [e["error_type"] for e in lines(o.db_error, "activity attempt failed")] == [
        run.db_error_type
    ]
    assert [(e["step"], e["attempt"]) for e in lines(o.db_error, "retrying activity")] == [
        ("PAY", 2)
    ]
    # Compensation (CloseOrder) and the final state of the failed order.
    assert [e["reason"] for e in lines(o.failed, "closing order")] == ["receive_failed"]
    assert [e["state"] for e in lines(o.failed, "order closed")] == ["FAILED"]
    # The cancellation, with its reason.
    assert [e["reason"] for e in lines(o.cancelled, "cancel accepted")] == [o.cancel_reason]
    assert "CANCELLED" in [e["state"] for e in lines(o.cancelled, "state changed")]
    # Every state change of a completed order, from the workflow's replay-safe logger.
    states = [e["state"] for e in lines(o.completed, "state changed")]
    assert states == ["RECEIVED", "VALIDATED", "PAID", "COMPLETED"]
    for e in lines(o.completed, "state changed"):
        assert e["workflow_id"] == f"order-{o.completed}" and e["run_id"]
    # The API's request lines: route template, status and the order id.
    starts = [e for e in api if e["msg"] == "request" and e["route"] == "/orders/{order_id}/start"]
    assert {e["order_id"] for e in starts} == set(o.ids)
    assert {e["status"] for e in starts} == {201}


# --- cli.py stats --------------------------------------------------------------------------


async def db_snapshot(dsn: str) -> dict[str, Any]:
    """What the database holds, read directly, in one snapshot."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            states = dict(await conn.fetch("SELECT state, count(*) FROM orders GROUP BY state"))
            reasons = await conn.fetch(
                "SELECT state, coalesce(reason, '') AS reason, count(*) AS n FROM orders "
                "WHERE state = ANY($1::text[]) GROUP BY state, reason",
                list(TERMINAL),
            )
            payments = dict(await conn.fetch("SELECT status, count(*) FROM payments GROUP BY 1"))
            events = await conn.fetch(
                "SELECT id, order_id, type, payload_json ->> 'step' AS step, ts FROM events "
                "WHERE type = 'STEP_ATTEMPT_FAILED' OR type = ANY($1::text[]) ORDER BY id",
                [*SUCCESS_EVENTS, *TERMINAL],
            )
            last_event = await conn.fetchval("SELECT coalesce(max(id), 0) FROM events")
    finally:
        await conn.close()
    return {
        "states": states,
        "reasons": [tuple(r) for r in reasons],
        "payments": payments,
        "events": events,
        "last_event": last_event,
    }


def execution_seconds(events: list[asyncpg.Record]) -> list[float]:
    """Per closed order: its first RECEIVED event to its first terminal event."""
    started: dict[str, datetime] = {}
    ended: dict[str, datetime] = {}
    for e in events:
        if e["type"] == "RECEIVED":
            started.setdefault(e["order_id"], e["ts"])
        elif e["type"] in TERMINAL:
            ended.setdefault(e["order_id"], e["ts"])
    return [
        max((ended[oid] - start).total_seconds(), 0.0)
        for oid, start in started.items()
        if oid in ended
    ]


async def test_cli_stats_json_matches_the_database(run: Run, cli_stack: CliStack) -> None:
    dsn = database_dsn(cli_stack)
    # Other modules' orders may still be moving: use a read the database did not change
    # around (same last event, same counts per state before and after the CLI ran).
    for _ in range(20):
        before = await db_snapshot(dsn)
        result = await asyncio.to_thread(cli_stack.run, "stats", "--json")
        assert result.returncode == 0, describe(result)
        after = await db_snapshot(dsn)
        if (before["last_event"], before["states"]) == (after["last_event"], after["states"]):
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("the database kept changing while `cli.py stats` ran")
    stats = json.loads(result.stdout)
    db = after

    # Outcomes per state.
    by_state = {state: db["states"].get(state, 0) for state in ALL_STATES}
    assert stats["orders"]["by_state"] == by_state
    assert stats["orders"]["total"] == sum(db["states"].values())
    assert stats["orders"]["closed"] == sum(by_state[s] for s in TERMINAL)
    for state in TERMINAL:
        outcome = stats["outcomes"][state]
        assert outcome["total"] == by_state[state], state
        assert sum(outcome["reasons"].values()) == by_state[state], state
    for state, reason, n in db["reasons"]:
        shown = reason or ("none" if state == "COMPLETED" else "unknown")
        assert stats["outcomes"][state]["reasons"][shown] == n, (state, reason)
    assert stats["outcomes"]["CANCELLED"]["reasons"][run.orders.cancel_reason] == 1
    assert stats["payments"] == db["payments"]

    # Attempts, failures and error rate per step.
    for step in stats["steps"]:
        failed = sum(
            1
            for e in db["events"]
            if e["type"] == "STEP_ATTEMPT_FAILED" and e["step"] == step["step"]
        )
        succeeded = sum(1 for e in db["events"] if SUCCESS_EVENTS.get(e["type"]) == step["step"])
        assert (step["failed"], step["succeeded"]) == (failed, succeeded), step
        attempts = failed + succeeded
        assert step["error_rate"] == (round(failed / attempts, 4) if attempts else None), step
    steps = {s["step"]: s for s in stats["steps"]}
    assert steps["RECEIVE"]["failures_by_kind"]["SimulatedFailure"] >= 3
    assert steps["PAY"]["retries"] >= 1 and steps["PAY"]["orders_retried"] >= 1

    # Execution time percentiles, recomputed here from the events.
    seconds = execution_seconds(db["events"])
    execution = stats["execution_time"]
    assert execution["count"] == len(seconds)
    assert execution["without_start"] >= 1  # the failed order never got past RECEIVE
    for key, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert execution["percentiles"][key] == pytest.approx(
            percentile_cont(seconds, fraction), abs=0.0011
        ), key


def test_cli_stats_table(run: Run, cli_stack: CliStack) -> None:
    out = cli_stack.ok("stats")
    for text in ("outcomes per state", "execution time", "p95", "error rate", "RECEIVE"):
        assert text in out
    assert run.orders.cancel_reason in out
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
