"""flaky_call follows its fault profile: 1/3 fail, 1/3 hang, 1/3 succeed under `seed`."""

from __future__ import annotations

import asyncio
import math

import pytest

from app.orders.faults import (
    CallInfo,
    FaultInjector,
    FaultProfile,
    FaultProfileError,
    Faults,
    SimulatedFailure,
    SimulatedLostResponse,
    flaky_call,
    lose_response,
)

pytestmark = pytest.mark.unit

N = 3000


async def _outcome(profile: FaultProfile, roll: float) -> str:
    try:
        await asyncio.wait_for(flaky_call(profile, roll), timeout=0.05)
    except SimulatedFailure:
        return "fail"
    except TimeoutError:
        return "hang"
    return "ok"


async def test_seed_profile_is_a_third_each() -> None:
    injector = FaultInjector("seed", seed=1234)
    profile = injector.profile(None)
    counts = {"fail": 0, "hang": 0, "ok": 0}
    # Hanging calls are cut short by wait_for; the decision is what is counted.
    outcomes = await asyncio.gather(
        *(_outcome(profile, injector.draw(f"order-{i}:charge:1")) for i in range(N))
    )
    for outcome in outcomes:
        counts[outcome] += 1
    # Binomial(3000, 1/3): sd ~ 25.8; 5 sd bounds fail only if the odds are wrong.
    sd = math.sqrt(N * (1 / 3) * (2 / 3))
    for outcome, count in counts.items():
        assert abs(count - N / 3) < 5 * sd, (outcome, counts)


async def test_off_profile_never_fails() -> None:
    injector = FaultInjector("off", seed=None)
    for i in range(500):
        assert await _outcome(injector.profile(None), injector.draw(str(i))) == "ok"


def test_seeded_draws_are_reproducible() -> None:
    a, b = FaultInjector("seed", seed=7), FaultInjector("seed", seed=7)
    keys = [f"o{i}:validate:{i % 3 + 1}" for i in range(50)]
    assert [a.draw(k) for k in keys] == [b.draw(k) for k in keys]
    assert [a.draw(k) for k in keys] != [FaultInjector("seed", seed=8).draw(k) for k in keys]


def test_custom_profiles_parse_and_bad_ones_are_refused() -> None:
    p = FaultProfile.parse("fail=0.2,hang=0.1,lost=0.3,delay=0.5,lost_first=1")
    assert (p.fail_rate, p.hang_rate, p.lost_rate, p.delay, p.lost_first) == (
        0.2,
        0.1,
        0.3,
        0.5,
        1,
    )
    for bad in (
        "sometimes",
        "fail=2",
        "fail=0.6,hang=0.6",
        "fail=0.4,hang=0.3,lost=0.4",
        "fail=x",
        "lost_first=1.5",
        "charge_crash_attempts=1",
    ):
        with pytest.raises(FaultProfileError):
            FaultProfile.parse(bad)


async def test_delay_profile_slows_but_succeeds() -> None:
    profile = FaultProfile.parse("delay=0.05")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await flaky_call(profile, 0.0)
    assert loop.time() - started >= 0.05


async def _after(profile: FaultProfile, roll: float, attempt: int = 1) -> str:
    try:
        await asyncio.wait_for(lose_response(profile, roll, attempt), timeout=0.05)
    except SimulatedLostResponse:
        return "lost-fail"
    except TimeoutError:
        return "lost-hang"
    return "ok"


async def test_lost_band_lies_above_fail_and_hang() -> None:
    profile = FaultProfile.parse("fail=0.2,hang=0.2,lost=0.2")
    # Before the effect: fail and hang; after it: the lost band, half raise, half hang.
    assert [await _outcome(profile, r) for r in (0.1, 0.3, 0.45, 0.7)] == [
        "fail",
        "hang",
        "ok",
        "ok",
    ]
    assert [await _after(profile, r) for r in (0.1, 0.3, 0.45, 0.55, 0.7)] == [
        "ok",
        "ok",
        "lost-fail",
        "lost-hang",
        "ok",
    ]


async def test_seed_profile_loses_no_answers_and_lost_first_loses_early_ones() -> None:
    seed = FaultProfile.parse("seed")
    assert {await _after(seed, r / 100) for r in range(100)} == {"ok"}
    first = FaultProfile.parse("lost_first=2")
    assert [await _after(first, 0.9, attempt) for attempt in (1, 2, 3)] == [
        "lost-fail",
        "lost-fail",
        "ok",
    ]


async def test_one_call_is_one_draw_without_a_seed_too() -> None:
    """Half the calls fail before the effect, the other half take effect and lose their
    answer: with one roll per call, no call can pass both sides (two rolls would let a
    quarter of them through)."""
    faults = Faults(FaultInjector("fail=0.5,lost=0.5", seed=None), "charge")
    answered = 0
    for attempt in range(1, 201):
        draw = faults.draw(CallInfo("o1", attempt))
        if await _outcome(draw.profile, draw.roll) == "ok":
            answered += await _after(draw.profile, draw.roll, attempt=2) == "ok"
    assert answered == 0
