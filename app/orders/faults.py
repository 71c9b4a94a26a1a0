"""Failure simulation for the external services (their stubs and simulators live in
app/orders/providers/).

Every external call runs `flaky_call()`, which behaves as the failure profile says: under the `seed`
profile about 1/3 of calls raise, 1/3 hang for 300 s (the activity's start-to-close timeout
fires first), 1/3 succeed. Those faults strike *before* the call takes effect. A profile
can add `lost`: the call takes effect at the provider, then its answer is lost (it raises
or hangs). Only the payment gateway and the carrier have effects to lose.
Draws can be made reproducible with a seed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass

HANG_SECONDS = 300.0


class FaultProfileError(ValueError):
    """A fault profile spec that cannot be parsed."""


class SimulatedFailure(RuntimeError):
    """The failure `flaky_call` raises; retryable like any transient outage."""


class SimulatedLostResponse(RuntimeError):
    """The call took effect at the provider, but its answer never arrived."""


@dataclass(frozen=True)
class FaultProfile:
    name: str
    fail_rate: float
    hang_rate: float
    # Seconds every call takes before its outcome: a slow but healthy service.
    delay: float = 0.0
    # Share of calls that take effect and then lose their answer (half raise, half hang).
    lost_rate: float = 0.0
    # The first N attempts of every provider call take effect and then raise: a
    # deterministic lost answer for tests.
    lost_first: int = 0

    @staticmethod
    def parse(spec: str) -> FaultProfile:
        """`seed`, `off`, or custom rates such as `fail=0.2,hang=0.1,lost=0.2,delay=0.5`."""
        spec = spec.strip().lower()
        if spec == "seed":
            return FaultProfile("seed", 1 / 3, 1 / 3)
        if spec == "off":
            return FaultProfile("off", 0.0, 0.0)
        rates = {"fail": 0.0, "hang": 0.0, "lost": 0.0, "lost_first": 0.0, "delay": 0.0}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in rates:
                raise FaultProfileError(
                    f"invalid fault profile {spec!r}: use seed, off or "
                    "fail=R,hang=R,lost=R,delay=S,lost_first=N"
                )
            try:
                rates[key] = float(value)
            except ValueError:
                raise FaultProfileError(f"invalid number {value!r} in fault profile") from None
        fail, hang, lost = rates["fail"], rates["hang"], rates["lost"]
        if not all(0.0 <= r <= 1.0 for r in (fail, hang, lost)) or fail + hang + lost > 1.0:
            raise FaultProfileError("fault rates must be in [0, 1] and sum to at most 1")
        first = rates["lost_first"]
        if first < 0 or first != int(first):
            raise FaultProfileError("lost_first must be a whole number >= 0")
        if not 0.0 <= rates["delay"] <= 60.0:
            raise FaultProfileError("delay must be between 0 and 60 seconds")
        return FaultProfile(spec, fail, hang, rates["delay"], lost, int(first))


class FaultInjector:
    """Draws the outcome of each external call.

    With a seed, a call's draw depends only on (seed, order, service, attempt), so a run is
    reproducible across processes, restarts and retries.
    """

    def __init__(self, default_profile: str = "seed", seed: int | None = None) -> None:
        self.default = FaultProfile.parse(default_profile)
        self.seed = seed
        self._rng = random.Random()

    def profile(self, spec: str | None) -> FaultProfile:
        return self.default if spec is None else FaultProfile.parse(spec)

    def draw(self, key: str) -> float:
        if self.seed is None:
            return self._rng.random()
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64


async def flaky_call(profile: FaultProfile, roll: float) -> None:
    """Fail, hang or succeed according to `roll` in [0, 1), before the call takes effect."""
    if profile.delay:
        await asyncio.sleep(profile.delay)
    if roll < profile.fail_rate:
        raise SimulatedFailure("simulated failure of an external service")
    if roll < profile.fail_rate + profile.hang_rate:
        await asyncio.sleep(HANG_SECONDS)


async def lose_response(profile: FaultProfile, roll: float, attempt: int) -> None:
    """After the call took effect: raise or hang as if the answer was lost.

    The lost band of the roll lies just above fail and hang, so the seed profile (no lost
    band) is unchanged; its lower half raises, its upper half hangs."""
    if attempt <= profile.lost_first:
        raise SimulatedLostResponse("simulated lost response (the call took effect)")
    low = profile.fail_rate + profile.hang_rate
    if not low <= roll < low + profile.lost_rate:
        return
    if roll < low + profile.lost_rate / 2:
        raise SimulatedLostResponse("simulated lost response (the call took effect)")
    await asyncio.sleep(HANG_SECONDS)


# An activity attempt, or "shipping attempt.activity attempt" for the shipping child.
Attempt = int | str


def attempt_number(attempt: Attempt) -> int:
    """The activity attempt of an `Attempt` ("2.3" is the third try of shipping attempt 2)."""
    return attempt if isinstance(attempt, int) else int(str(attempt).rsplit(".", 1)[-1])


@dataclass(frozen=True)
class CallInfo:
    """Who is calling: draws the call's faults (the seeded key) and names it in logs."""

    order_id: str
    attempt: Attempt
    fault_profile: str | None = None


@dataclass(frozen=True)
class Draw:
    """The faults of one call: one roll decides both sides of its effect, so the lost band
    means what the profile says even without a seed."""

    profile: FaultProfile
    roll: float
    attempt: int

    async def before(self) -> None:
        await flaky_call(self.profile, self.roll)

    async def after(self) -> None:
        await lose_response(self.profile, self.roll, self.attempt)


class Faults:
    """The fault injection of one external service."""

    def __init__(self, injector: FaultInjector, service: str) -> None:
        self.injector = injector
        self.service = service

    def draw(self, call: CallInfo) -> Draw:
        roll = self.injector.draw(f"{call.order_id}:{self.service}:{call.attempt}")
        profile = self.injector.profile(call.fault_profile)
        return Draw(profile, roll, attempt_number(call.attempt))
