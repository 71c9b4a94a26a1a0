"""The hot path's plain SQL on the driver (app/platform/sql.py), attacked as a hostile
caller and an unlucky operator would: claims and ledger requests racing each other, attempts
run twice at once, a cancel mid-transaction, the database restarting under the pools, a
failure mid-statement in the API's start, odd text through the JSON columns and the
idempotency replay, and `:name` parameters parsed as SQLAlchemy parses them (the same
statements also run on ORM sessions: `SessionSql`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from asyncpg.transaction import Transaction
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from app.orders.activities import IntakeActivities, PaymentActivities, ShippingActivities
from app.orders.claims import Claim, claim_payment_id
from app.orders.faults import CallInfo, FaultInjector, SimulatedLostResponse
from app.orders.messages import (
    DEFAULT_ITEMS,
    ActivityContext,
    Address,
    ChargeInput,
    DispatchInput,
    ReceiveInput,
    ValidateInput,
    order_amount_cents,
)
from app.orders.providers.api import (
    CancelShipmentsRequest,
    ChargeRequest,
    DispatchRequest,
    PaymentVoided,
    RefundRequest,
    ShipmentCancelled,
    charge_key,
    dispatch_key,
    refund_key,
)
from app.orders.providers.carrier import read_ledger as carrier_ledger
from app.orders.providers.gateway import GatewaySimulator
from app.orders.providers.gateway import read_ledger as gateway_ledger
from app.orders.providers.intake import OrderIntake
from app.orders.providers.wiring import ledger_engine
from app.platform.sql import Row, Sql, driver, on_session, positional
from app.platform.tables import Order
from tests.helpers import (
    ADDRESS,
    HAPPY_PATH_EVENTS,
    Running,
    eventually,
    fixed_pool,
    payments,
    serving,
)

pytestmark = pytest.mark.integration

OFF = "off"
AMOUNT = order_amount_cents(list(DEFAULT_ITEMS))
SHIP_TO = Address(**ADDRESS)
# Quotes, a backslash, colons that look like parameters and casts, text beyond Latin-1
# and outside the BMP: what JSON encoding, jsonb and the replay comparison must carry as is.
ODD_ADDRESS = Address(
    street='O\'Brien "Apt" 5 \\ :id ::jsonb $1',
    city="Straße 東京 😀",
    state="ÎL",
    zip="62701",
    country="US",
)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _dsn(running: Running) -> str:
    return running.settings.database_url_plain.replace("postgresql+asyncpg://", "postgresql://")


@asynccontextmanager
async def _admin(running: Running) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, outside every pool under test."""
    conn = await asyncpg.connect(_dsn(running))
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def _uncommitted_claim(
    running: Running, payment_id: str, owner: str
) -> AsyncIterator[tuple[asyncpg.Connection, Transaction]]:
    """Another order's claim of `payment_id`, inserted and not committed yet: its connection
    and its transaction (for the test to commit or roll back)."""
    async with _admin(running) as holder:
        claim = holder.transaction()
        await claim.start()
        insert = "INSERT INTO payment_claims (payment_id, order_id) VALUES ($1, $2)"
        await holder.execute(insert, payment_id, owner)
        yield holder, claim


async def _blocked_by(holder: asyncpg.Connection) -> int:
    """The backend waiting on a lock `holder` has."""
    me = holder.get_server_pid()
    pid: int = await eventually(
        lambda: holder.fetchval(
            "SELECT pid FROM pg_locks WHERE NOT granted AND $1 = ANY(pg_blocking_pids(pid))", me
        ),
        timeout=5,
        what="a statement waiting on the test's lock",
    )
    return pid


# --- `:name` parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT :a, :b, :a, CAST(:c AS jsonb), '{}'::jsonb, x::text",
        "SELECT '12:30', :x WHERE y = ANY(CAST(:ys AS text[]))",
        "SELECT :a::text",  # not a parameter for SQLAlchemy: a cast needs CAST()
        "SELECT :a:b",
        "SELECT 'a\\:b', :c",  # an escaped colon
        "SELECT :1",
    ],
)
def test_positional_binds_what_sqlalchemy_binds(sql: str) -> None:
    """`SessionSql` runs the same statements through `text()`: a statement must mean the
    same on both, so `positional` takes parameters exactly where the asyncpg dialect's
    compiler does, and writes the same SQL."""
    compiled = text(sql).compile(dialect=asyncpg_dialect.dialect())  # type: ignore[no-untyped-call]
    assert positional(sql) == (str(compiled), tuple(compiled.positiontup or ()))


# --- payment id claims ------------------------------------------------------------------


def _on_driver(running: Running) -> AbstractAsyncContextManager[Sql]:
    return driver(running.sessions)


@asynccontextmanager
async def _on_orm_transaction(running: Running) -> AsyncIterator[Sql]:
    """As `retry_order` claims: inside an ORM session's transaction."""
    async with running.sessions() as s, s.begin():
        yield on_session(s)


RUNNERS = {"driver": _on_driver, "orm_transaction": _on_orm_transaction}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("first_commits", [True, False])
async def test_a_claim_racing_an_uncommitted_claim_answers_with_the_winner(
    running: Running, runner: str, first_commits: bool
) -> None:
    """The claim statement waits on the other's insert; committed after this statement's
    snapshot, the winner is not in its own SELECT: it must be read again, not missed."""
    payment_id = _new_id("race")
    async with _uncommitted_claim(running, payment_id, "first") as (holder, first):

        async def claim() -> Claim:
            async with RUNNERS[runner](running) as db:
                return await claim_payment_id(db, payment_id, "second")

        second = asyncio.create_task(claim())
        await _blocked_by(holder)
        await (first.commit() if first_commits else first.rollback())
        expected = Claim("first", False) if first_commits else Claim("second", True)
        assert await asyncio.wait_for(second, 5) == expected


class _ReleasedBeforeRead:
    """A claim's statements, with the winner's claim given back (a start that failed
    releases it) just before the claim reads the owner again."""

    def __init__(self, db: Sql, release: Callable[[], Awaitable[Any]]) -> None:
        self.db = db
        self.release = release

    async def rows(self, sql: str, **params: Any) -> list[Row]:
        return await self.db.rows(sql, **params)

    async def row(self, sql: str, **params: Any) -> Row | None:
        return await self.db.row(sql, **params)

    async def value(self, sql: str, **params: Any) -> Any:
        await self.release()
        return await self.db.value(sql, **params)

    async def run(self, sql: str, **params: Any) -> None:
        await self.db.run(sql, **params)


async def test_a_claim_given_back_while_claiming_is_claimed_not_refused(
    running: Running,
) -> None:
    """The other order claimed after this statement's snapshot, then gave its claim back
    (its start failed): nobody owns the payment id, so this order gets it, instead of an
    owner of None that every caller reads as 'taken by another order'."""
    payment_id = _new_id("released")
    async with (
        _uncommitted_claim(running, payment_id, "first") as (holder, first),
        _admin(running) as releaser,
    ):

        async def release() -> None:
            delete = "DELETE FROM payment_claims WHERE payment_id = $1"
            await releaser.execute(delete, payment_id)

        async def claim() -> Claim:
            async with driver(running.sessions) as db:
                return await claim_payment_id(
                    _ReleasedBeforeRead(db, release), payment_id, "second"
                )

        second = asyncio.create_task(claim())
        await _blocked_by(holder)
        await first.commit()
        assert await asyncio.wait_for(second, 5) == Claim("second", True)


# --- the gateway's ledger -----------------------------------------------------------------


async def test_a_charge_racing_cancel_or_refund_never_leaves_the_customer_charged(
    running: Running,
) -> None:
    """The workflow's cancel asks the gateway to void or refund while a straggling charge
    may still arrive: whichever runs first, no money stays taken."""
    gateway = running.providers.gateway
    orders = [_new_id("void-race") for _ in range(6)]

    async def charge(order_id: str) -> bool:
        payment_id = f"pmt-{order_id}"
        request = ChargeRequest(charge_key(order_id, payment_id), payment_id, order_id, AMOUNT)
        try:
            await gateway.charge(request, CallInfo(order_id, 1, OFF))
        except PaymentVoided:
            return False
        return True

    async def cancel(order_id: str) -> None:
        payment_id = f"pmt-{order_id}"
        request = RefundRequest(refund_key(order_id, payment_id), payment_id, order_id, AMOUNT)
        await gateway.cancel_or_refund(request, CallInfo(order_id, 1, OFF))

    charged = await asyncio.gather(*(charge(o) for o in orders))
    await asyncio.gather(*(cancel(o) for o in orders[::2]))
    await asyncio.gather(*(asyncio.gather(charge(o), cancel(o)) for o in orders[1::2]))
    ledger = await gateway_ledger(gateway.engine, orders)
    for order_id, took in zip(orders, charged, strict=True):
        assert took, order_id  # each order's first charge went through
        (only,) = ledger[order_id]
        assert only["refunded_cents"] == only["amount_cents"] == AMOUNT, order_id


async def test_the_same_charge_sent_twice_at_once_takes_money_once(running: Running) -> None:
    gateway = running.providers.gateway
    order_id = _new_id("twice")
    payment_id = f"pmt-{order_id}"
    request = ChargeRequest(charge_key(order_id, payment_id), payment_id, order_id, AMOUNT)
    answers = await asyncio.gather(
        *(gateway.charge(request, CallInfo(order_id, n, OFF)) for n in (1, 2, 3))
    )
    assert len({a.charge_id for a in answers}) == 1
    assert len((await gateway_ledger(gateway.engine, [order_id]))[order_id]) == 1


async def test_a_dispatch_racing_the_cancel_of_shipments_leaves_no_parcel_going(
    running: Running,
) -> None:
    """The carrier's side of a cancel: a booking made first is cancelled, one asked for
    after is refused; never a parcel on its way for a cancelled order."""
    carrier = running.providers.carrier
    orders = [_new_id("ship-race") for _ in range(6)]

    async def dispatch(order_id: str) -> None:
        request = DispatchRequest(dispatch_key(order_id, 1, 1), order_id, ADDRESS)
        with contextlib.suppress(ShipmentCancelled):
            await carrier.dispatch(request, CallInfo(order_id, 1, OFF))

    async def cancel(order_id: str) -> None:
        await carrier.cancel(CancelShipmentsRequest(order_id), CallInfo(order_id, 1, OFF))

    await asyncio.gather(*(asyncio.gather(dispatch(o), cancel(o)) for o in orders))
    bookings = await carrier_ledger(carrier.engine, orders)
    assert all(b["cancelled"] for o in orders for b in bookings[o]), bookings


# --- activities run twice at once ---------------------------------------------------------


def _receive(order_id: str, address: Address = SHIP_TO) -> ReceiveInput:
    now = datetime.now(UTC)
    return ReceiveInput(
        ctx=ActivityContext(order_id=order_id, fault_profile=OFF),
        workflow_id=f"order-{order_id}",
        run_id="run-1",
        payment_id=f"pmt-{order_id}",
        address=address,
        items=list(DEFAULT_ITEMS),
        deadline_iso=(now + timedelta(seconds=60)).isoformat(),
        started_at_iso=now.isoformat(),
    )


def _attempt(attempt: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return env


async def test_every_step_attempt_run_twice_at_once_records_once(running: Running) -> None:
    """A lost completion makes Temporal start the next attempt while the first still runs:
    one RECEIVED, one VALIDATED, one charge and payment row, one booking."""
    sessions, providers = running.sessions, running.providers
    intake = IntakeActivities(sessions, OrderIntake(FaultInjector(OFF)))
    payment = PaymentActivities(sessions, providers.gateway)
    shipping = ShippingActivities(sessions, providers.carrier)
    order_id = _new_id("both")
    ctx = ActivityContext(order_id=order_id, fault_profile=OFF)
    charge = ChargeInput(ctx, f"pmt-{order_id}", AMOUNT, "alice", datetime.now(UTC).isoformat())
    steps: list[tuple[Any, Any]] = [
        (intake.receive_order, _receive(order_id)),
        (intake.validate_order, ValidateInput(ctx=ctx, address=SHIP_TO, items=list(DEFAULT_ITEMS))),
        (payment.charge_payment, charge),
        (shipping.dispatch_carrier, DispatchInput(ctx=ctx, shipping_attempt=1)),
    ]
    for fn, arg in steps:
        both = await asyncio.gather(_attempt(1).run(fn, arg), _attempt(2).run(fn, arg))
    shipped = {outcome.tracking_number for outcome in both}

    assert len((await gateway_ledger(providers.gateway.engine, [order_id]))[order_id]) == 1
    assert [p.status for p in await payments(running, order_id)] == ["charged"]
    (booking,) = (await carrier_ledger(providers.carrier.engine, [order_id]))[order_id]
    assert shipped == {booking["tracking_number"]}
    async with sessions() as s:
        types = "SELECT type FROM events WHERE order_id = :o ORDER BY id"
        events = list((await s.execute(text(types), {"o": order_id})).scalars())
    assert events == [e for e in HAPPY_PATH_EVENTS if e != "PACKAGE_PREPARED"]


# --- JSON: what is stored, and the replay that compares it ---------------------------------


async def test_odd_text_is_stored_as_sent_and_replays_under_its_key(running: Running) -> None:
    """The address goes into orders.address_json (driver), back out of it for the carrier,
    into the ledger's stored request, and is compared with a retry's: any change on the
    way turns the retry into an IdempotencyConflict and the parcel is never booked. The
    reviewer's note goes into an event's payload as written."""
    sessions, providers = running.sessions, running.providers
    intake = IntakeActivities(sessions, OrderIntake(FaultInjector(OFF)))
    payment = PaymentActivities(sessions, providers.gateway)
    shipping = ShippingActivities(sessions, providers.carrier)
    order_id = _new_id("odd")
    await ActivityEnvironment().run(intake.receive_order, _receive(order_id, ODD_ADDRESS))
    note = f"{ODD_ADDRESS.street} {ODD_ADDRESS.city}\n\ttab"
    charge = ChargeInput(
        ActivityContext(order_id=order_id, fault_profile=OFF),
        f"pmt-{order_id}",
        AMOUNT,
        "ålice",
        datetime.now(UTC).isoformat(),
        approval_note=note,
    )
    await ActivityEnvironment().run(payment.charge_payment, charge)
    async with sessions() as s:
        stored = await s.get(Order, order_id)
        assert stored is not None and stored.address_json == ODD_ADDRESS.as_dict()
        approved = await s.scalar(
            text("SELECT payload_json FROM events WHERE order_id = :o AND type = 'APPROVED'"),
            {"o": order_id},
        )
    assert approved == {"by": "ålice", "at": charge.approved_at_iso, "note": note}

    lost = ActivityContext(order_id=order_id, fault_profile="lost_first=1")
    dispatch = DispatchInput(ctx=lost, shipping_attempt=1)
    with pytest.raises(SimulatedLostResponse):  # booked, the answer lost
        await _attempt(1).run(shipping.dispatch_carrier, dispatch)
    outcome = await _attempt(2).run(shipping.dispatch_carrier, dispatch)  # replayed
    assert outcome.address == ODD_ADDRESS
    (booking,) = (await carrier_ledger(providers.carrier.engine, [order_id]))[order_id]
    assert booking["tracking_number"] == outcome.tracking_number
    assert booking["address"] == ODD_ADDRESS.as_dict()
    again = DispatchRequest(dispatch_key(order_id, 1, 1), order_id, ODD_ADDRESS.as_dict())
    replayed = await providers.carrier.dispatch(again, CallInfo(order_id, 3, OFF))
    assert replayed.tracking_number == outcome.tracking_number


# --- cancels, kills and restarts ----------------------------------------------------------


@pytest.fixture
async def small_pool(running: Running) -> AsyncIterator[AsyncEngine]:
    """Four connections, no pre-ping: as the workers' and the simulators' pools are."""
    async with fixed_pool(running.settings, 4) as engine:
        yield engine


async def _sleeping(running: Running, marker: str) -> int:
    """The backend running `SELECT pg_sleep(5) -- <marker>`."""
    find = "SELECT pid FROM pg_stat_activity WHERE query LIKE '%' || $1 AND state = 'active'"
    async with _admin(running) as admin:
        pid: int = await eventually(lambda: admin.fetchval(find, marker), timeout=5)
    return pid


async def _claim_then_sleep(engine: AsyncEngine, payment_id: str) -> None:
    """A transaction that claims, then waits (until cut off)."""
    async with driver(engine) as db, db.transaction():
        await claim_payment_id(db, payment_id, "cut")
        await db.run(f"SELECT pg_sleep(5) -- {payment_id}")


async def test_a_cancel_mid_transaction_commits_nothing_and_stays_a_cancel(
    running: Running, small_pool: AsyncEngine
) -> None:
    payment_id = _new_id("cut")
    task = asyncio.create_task(_claim_then_sleep(small_pool, payment_id))
    await _sleeping(running, payment_id)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # not turned into another error
        await task
    for _ in range(4):  # every connection the pool hands out now is a clean one
        async with driver(small_pool) as db:
            assert not db.conn.is_in_transaction()
            owner = "SELECT order_id FROM payment_claims WHERE payment_id = :p"
            assert await db.value(owner, p=payment_id) is None


async def test_a_statement_cut_off_by_a_cancel_is_cancelled_on_the_server_too(
    running: Running,
) -> None:
    """The caller was told 'cancelled': the statement must not go on without it and land
    later (here a claim, waiting on another start's, would take the payment id for an
    order that never started once that start gave way). SQLAlchemy closed a cancelled
    connection gracefully, which sends PostgreSQL the cancel request first."""
    payment_id = _new_id("ghost")
    async with _uncommitted_claim(running, payment_id, "other") as (holder, other):

        async def claim() -> Claim:
            async with driver(running.sessions) as db:
                return await claim_payment_id(db, payment_id, "cancelled")

        cut = asyncio.create_task(claim())
        me, waiting = holder.get_server_pid(), await _blocked_by(holder)
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        # Given a moment to stop; a statement that does not stop then holds on for good.
        for _ in range(20):
            if not await holder.fetchval("SELECT $1 = ANY(pg_blocking_pids($2))", me, waiting):
                break
            await asyncio.sleep(0.05)
        await other.rollback()
        owner = "SELECT order_id FROM payment_claims WHERE payment_id = $1"
        assert await holder.fetchval(owner, payment_id) is None


async def test_a_transaction_cut_by_the_server_commits_nothing_and_the_pool_recovers(
    running: Running, small_pool: AsyncEngine
) -> None:
    """The database restarts mid-step: the step's transaction is gone whole, and the pool
    hands out working connections again."""
    payment_id = _new_id("killed")
    task = asyncio.create_task(_claim_then_sleep(small_pool, payment_id))
    pid = await _sleeping(running, payment_id)
    async with _admin(running) as admin:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await asyncio.wait_for(task, 5)
        owner = "SELECT order_id FROM payment_claims WHERE payment_id = $1"
        assert await admin.fetchval(owner, payment_id) is None
    for _ in range(4):
        async with driver(small_pool) as db:
            assert await db.value("SELECT 1") == 1


async def _fill_then_restart(running: Running, engine: AsyncEngine) -> None:
    """`engine`'s pool holds four connections, all of them then cut by the server (as a
    restart or a failover does)."""
    async with AsyncExitStack() as held:
        conns = [await held.enter_async_context(driver(engine)) for _ in range(4)]
        pids = [await db.value("SELECT pg_backend_pid()") for db in conns]
    async with _admin(running) as admin:
        await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
        await eventually(
            lambda: admin.fetchval(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            ),
            timeout=5,
            what="the pool's backends to exit",
        )


async def test_after_a_restart_the_pool_hands_out_one_dead_connection_at_most(
    running: Running, small_pool: AsyncEngine
) -> None:
    """What SQLAlchemy does for its own statements: the first disconnect seen retires every
    connection the pool had before it."""
    await _fill_then_restart(running, small_pool)
    failures = 0
    for _ in range(4):
        try:
            async with driver(small_pool) as db:
                assert await db.value("SELECT 1") == 1
        except asyncpg.InterfaceError:
            failures += 1
    assert failures <= 1


async def test_after_a_restart_a_charge_fails_one_attempt_at_most(running: Running) -> None:
    """The gateway's ledger runs on the driver only: were dead connections handed out one
    by one, ChargePayment's three attempts could all meet one and the order would fail
    after the database came back."""
    engine = ledger_engine(running.settings, running.settings.gateway_database_url_plain, 4)
    engine.pool._max_overflow = 0  # type: ignore[attr-defined]
    try:
        gateway = GatewaySimulator(engine, FaultInjector(OFF))
        await _fill_then_restart(running, engine)
        order_id = _new_id("restart")
        payment_id = f"pmt-{order_id}"
        request = ChargeRequest(charge_key(order_id, payment_id), payment_id, order_id, AMOUNT)
        outcomes = []
        for attempt in (1, 2, 3):
            try:
                outcomes.append(await gateway.charge(request, CallInfo(order_id, attempt, OFF)))
            except asyncpg.InterfaceError as err:
                outcomes.append(err)
        assert any(not isinstance(o, Exception) for o in outcomes), outcomes
    finally:
        await engine.dispose()


async def test_a_database_failure_mid_start_is_a_503_not_a_500(running: Running) -> None:
    """The start's claim is cut off by the server (a restart, a failover, an operator's
    pg_terminate_backend): the database is unavailable, the client should come back
    (503, Retry-After), as it was told when these statements ran on ORM sessions."""
    order_id, payment_id = _new_id("cut-start"), _new_id("cut-pmt")
    async with (
        _uncommitted_claim(running, payment_id, "other") as (holder, other),
        serving(running.settings) as api,
    ):
        body = {"payment_id": payment_id, "address": ADDRESS}
        start = asyncio.create_task(api.post(f"/orders/{order_id}/start", json=body))
        await holder.fetchval("SELECT pg_terminate_backend($1)", await _blocked_by(holder))
        await other.rollback()
        answer = await asyncio.wait_for(start, 10)
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("Retry-After")
