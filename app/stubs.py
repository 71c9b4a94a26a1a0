"""External services (order intake, validation, payment gateway, warehouse, carrier).

Each one calls `flaky_call()`, which behaves as the guide says: about 1/3 of calls raise,
1/3 hang for 300 s (the activity's start-to-close timeout fires first), 1/3 succeed. The
odds come from a fault profile; draws can be made reproducible with a seed.
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


@dataclass(frozen=True)
class FaultProfile:
    name: str
    fail_rate: float
    hang_rate: float
    # The first N ChargePayment attempts fail *after* the charge is written: proves a
    # retried charge is not charged twice.
    charge_crash_attempts: int = 0
    # Seconds every call takes before its outcome: a slow but healthy service.
    delay: float = 0.0

    @staticmethod
    def parse(spec: str) -> FaultProfile:
        """`seed`, `off`, or custom rates such as `fail=0.2,hang=0.1,delay=0.5,charge_crash_attempts=1`."""
        spec = spec.strip().lower()
        if spec == "seed":
            return FaultProfile("seed", 1 / 3, 1 / 3)
        if spec == "off":
            return FaultProfile("off", 0.0, 0.0)
        rates = {"fail": 0.0, "hang": 0.0, "charge_crash_attempts": 0.0, "delay": 0.0}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in rates:
                raise FaultProfileError(
                    f"invalid fault profile {spec!r}: use seed, off or fail=R,hang=R"
                )
            try:
                rates[key] = float(value)
            except ValueError:
                raise FaultProfileError(f"invalid number {value!r} in fault profile") from None
        fail, hang, crashes = rates["fail"], rates["hang"], rates["charge_crash_attempts"]
        if not (0.0 <= fail <= 1.0 and 0.0 <= hang <= 1.0 and fail + hang <= 1.0):
            raise FaultProfileError("fault rates must be in [0, 1] and sum to at most 1")
        if crashes < 0 or crashes != int(crashes):
            raise FaultProfileError("charge_crash_attempts must be a whole number >= 0")
        if not 0.0 <= rates["delay"] <= 60.0:
            raise FaultProfileError("delay must be between 0 and 60 seconds")
        return FaultProfile(spec, fail, hang, int(crashes), rates["delay"])


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
    """Fail, hang or succeed according to `roll` in [0, 1)."""
    if profile.delay:
        await asyncio.sleep(profile.delay)
    if roll < profile.fail_rate:
        raise SimulatedFailure("simulated failure of an external service")
    if roll < profile.fail_rate + profile.hang_rate:
        await asyncio.sleep(HANG_SECONDS)


# An activity attempt, or "shipping attempt.activity attempt" for the shipping child.
Attempt = int | str


class ExternalServices:
    """The five services of the guide plus the refund side of the payment gateway."""

    def __init__(self, faults: FaultInjector) -> None:
        self.faults = faults

    async def _call(
        self, service: str, order_id: str, attempt: Attempt, profile: str | None
    ) -> None:
        roll = self.faults.draw(f"{order_id}:{service}:{attempt}")
        await flaky_call(self.faults.profile(profile), roll)

    async def receive_order(self, order_id: str, attempt: Attempt, profile: str | None) -> None:
        await self._call("receive", order_id, attempt, profile)

    async def validate_order(self, order_id: str, attempt: Attempt, profile: str | None) -> None:
        await self._call("validate", order_id, attempt, profile)

    async def charge(self, order_id: str, attempt: Attempt, profile: str | None) -> str:
        """Charge through the gateway, keyed by payment id; returns the gateway reference."""
        await self._call("charge", order_id, attempt, profile)
        return f"ch_{order_id}"

    async def refund(self, order_id: str, attempt: Attempt, profile: str | None) -> None:
        await self._call("refund", order_id, attempt, profile)

    async def prepare_package(self, order_id: str, attempt: Attempt, profile: str | None) -> None:
        await self._call("prepare", order_id, attempt, profile)

    async def dispatch_carrier(self, order_id: str, attempt: Attempt, profile: str | None) -> str:
        await self._call("dispatch", order_id, attempt, profile)
        digest = hashlib.sha1(order_id.encode()).hexdigest()[:10].upper()
        return f"TRK{digest}"
