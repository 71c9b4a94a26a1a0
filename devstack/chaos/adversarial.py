"""The adversarial mix of `cli.py chaos --adversarial`: orders whose ids and payments try to
collide, drawn from the run's seed (pure: no I/O).

What the mix holds besides plain orders:

- `reused_payment_ids`: an order started with the payment id of an earlier order of the
  run (half of them at the same moment as it). The product refuses the second start (409
  naming `payment_id`); such a refusal is expected, not a failure.
- `dotted_ids`: order and payment ids with dots and retry-like suffixes (`X.r3`), legal
  for clients; a retry's own references use `#r<N>`, which no client id can take.
- `retry_like_pairs`: an order `K` and another `K.r2` paying with `<K's payment>.r2`: what
  a retry of `K` would have used if retries took a client-legal form.
- `zero_totals`: every item at 0 cents: nothing is due, the gateway never sees it.
- `cancels`: a cancel at a random moment of an order's life (during review, payment,
  shipping, or after it ended); the run also cancels every order it sees closing (its
  row terminal, its workflow still compensating): `cancels_during_close`.
- `retries`: the run retries FAILED orders once compensation settled them (counted when
  the retry started), approves the new run, and sometimes cancels it too. So that some
  order fails whatever the faults drew, a few orders lose every provider answer of their
  first attempts (`lost_first=3`): the gateway charges them, PAY fails, the refund lands
  on its fourth attempt (seconds of closing, for the cancels while closing), and their
  retry goes the same way under a payment reference of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# The counts `adversarial` reports, one per kind.
KINDS = (
    "reused_payment_ids",
    "dotted_ids",
    "retry_like_pairs",
    "zero_totals",
    "cancels",
    "cancels_during_close",
    "retries",
)
FREE_ITEMS: list[dict[str, Any]] = [
    {"sku": "FREE-SAMPLE", "qty": 2, "unit_price_cents": 0},
    {"sku": "FREE-LEAFLET", "qty": 1, "unit_price_cents": 0},
]
# Share of the orders given each role (at least one each once there are enough orders).
SHARES = {"reuse": 0.1, "pair": 0.1, "dotted": 0.1, "free": 0.1, "doomed": 0.05}
# The fault profile of the orders that fail by design: each provider call's first three
# answers are lost after the call took effect (app/orders/faults.py).
DOOMED_PROFILE = "lost_first=3"
CANCEL_SHARE = 0.25
# A retried run is cancelled at a random moment this often.
RETRY_CANCEL_SHARE = 0.3
# Cancels land this long after the start at most (scaled down for short deadlines).
CANCEL_WITHIN_S = 20.0


@dataclass
class PlannedOrder:
    order_id: str
    payment_id: str
    # When it starts, in seconds from the run's start.
    at_s: float
    # What it is in the mix (KINDS), empty for a plain order.
    tags: set[str] = field(default_factory=set)
    items: list[dict[str, Any]] | None = None
    # Seconds after its start when the run cancels it (None: not cancelled on purpose).
    cancel_after_s: float | None = None
    # The order whose payment id it reuses, or whose `.r2` twin it is.
    of: str | None = None
    # Its own fault profile (None: the run's).
    fault_profile: str | None = None

    @property
    def free(self) -> bool:
        return self.items is not None and all(i["unit_price_cents"] == 0 for i in self.items)


def plain_orders(prefix: str, n: int, window_s: float) -> list[PlannedOrder]:
    """The plain run: PREFIX-NNNN paying pmt-PREFIX-NNNN, spread over the window."""
    return [
        PlannedOrder(f"{prefix}-{i:04d}", f"pmt-{prefix}-{i:04d}", window_s * i / max(n, 1))
        for i in range(n)
    ]


def plan_orders(
    prefix: str, n: int, window_s: float, deadline_s: float, rng: random.Random
) -> list[PlannedOrder]:
    """N orders, some of them in the adversarial roles, in start order.

    Reuses and pairs sit in the second half and refer to a plain order of the first, so
    their owner is under way first (or, for half the reuses, starts at the same moment);
    dotted ids and free orders go anywhere else."""
    orders = plain_orders(prefix, n, window_s)
    k = {role: max(1, round(share * n)) if n >= 8 else 0 for role, share in SHARES.items()}
    first, second = list(range(n // 2)), list(range(n // 2, n))
    rng.shuffle(first)
    rng.shuffle(second)
    taken: set[int] = set()
    for role in ("reuse", "pair"):
        for _ in range(k[role]):
            if not second or not first:
                break
            i, owner = orders[second.pop()], orders[first.pop()]
            taken.update({orders.index(i), orders.index(owner)})
            i.of = owner.order_id
            if role == "reuse":
                i.payment_id = owner.payment_id
                i.tags.add("reused_payment_ids")
                if rng.random() < 0.5:
                    i.at_s = owner.at_s  # both starts race for the payment id
            else:
                i.order_id, i.payment_id = f"{owner.order_id}.r2", f"{owner.payment_id}.r2"
                i.tags.update({"retry_like_pairs", "dotted_ids"})
    rest = [j for j in range(n) if j not in taken]
    rng.shuffle(rest)
    for _ in range(k["dotted"]):
        if rest:
            o = orders[rest.pop()]
            suffix = rng.choice([".r2", ".r3", ".v1.r2", ".r10"])
            o.order_id += suffix
            o.payment_id += rng.choice([suffix, ".r1", ""])
            o.tags.add("dotted_ids")
    for _ in range(k["free"]):
        if rest:
            o = orders[rest.pop()]
            o.items = [dict(item) for item in FREE_ITEMS]
            o.tags.add("zero_totals")
    for _ in range(k["doomed"]):
        if rest:
            o = orders[rest.pop()]
            o.fault_profile = DOOMED_PROFILE
            o.tags.add("fails_by_design")
    within = min(CANCEL_WITHIN_S, deadline_s * 0.75)
    # Not cancelled on purpose: a refused start, or an order meant to fail (and be retried).
    candidates = [o for o in orders if not o.tags & {"reused_payment_ids", "fails_by_design"}]
    n_cancels = max(1, round(CANCEL_SHARE * n)) if n >= 4 else 0
    for o in rng.sample(candidates, min(n_cancels, len(candidates))):
        o.cancel_after_s = round(rng.uniform(0.0, within), 2)
    return sorted(orders, key=lambda o: o.at_s)


def counts(planned: list[PlannedOrder]) -> dict[str, int]:
    """How many orders of the plan hold each tag (the mix as planned)."""
    return {kind: sum(1 for o in planned if kind in o.tags) for kind in KINDS}
