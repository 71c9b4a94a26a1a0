"""The adversarial chaos mix (devstack/chaos/adversarial.py), without a stack: drawn from
the seed, every kind present, ids legal for clients and colliding where they should."""

from __future__ import annotations

import random

import pytest

from app.orders.faults import FaultProfile
from app.orders.identity import RETRY_MARK
from app.orders.validation import order_id_problem, payment_id_problem
from app.service.errors import OrderConflict
from app.service.inputs import parse_line_items
from devstack.chaos.adversarial import KINDS, counts, plain_orders, plan_orders
from devstack.chaos.report import count
from devstack.chaos.run import _names_payment

pytestmark = pytest.mark.unit

PREFIX = "chaos-e2e"


def test_the_mix_is_a_function_of_the_seed() -> None:
    first = plan_orders(PREFIX, 20, 8.0, 40.0, random.Random(7))
    assert first == plan_orders(PREFIX, 20, 8.0, 40.0, random.Random(7))
    assert first != plan_orders(PREFIX, 20, 8.0, 40.0, random.Random(8))


@pytest.mark.parametrize(("n", "seed"), [(20, 7), (40, 42), (8, 1), (100, 3)])
def test_every_kind_is_in_the_mix_and_every_id_is_legal(n: int, seed: int) -> None:
    plan = plan_orders(PREFIX, n, n / 2, 40.0, random.Random(seed))
    assert len(plan) == n
    ids = [o.order_id for o in plan]
    assert len(set(ids)) == n
    for o in plan:
        assert order_id_problem(o.order_id) is None, o.order_id
        assert payment_id_problem(o.payment_id) is None, o.payment_id
        assert RETRY_MARK not in o.order_id + o.payment_id  # a retry's form, never a client's
        if o.items is not None:
            assert sum(i.qty * i.unit_price_cents for i in parse_line_items(o.items)) == 0
    planned = counts(plan)
    # Cancels while closing and retries happen in the run; the rest is planned.
    for kind in set(KINDS) - {"cancels", "cancels_during_close", "retries"}:
        assert planned[kind] > 0, (kind, planned)
    assert sum(o.cancel_after_s is not None for o in plan) > 0
    assert [o.at_s for o in plan] == sorted(o.at_s for o in plan)


def test_reuses_and_pairs_collide_with_an_earlier_plain_order() -> None:
    plan = plan_orders(PREFIX, 40, 20.0, 40.0, random.Random(42))
    by_id = {o.order_id: o for o in plan}
    reusers = [o for o in plan if "reused_payment_ids" in o.tags]
    pairs = [o for o in plan if "retry_like_pairs" in o.tags]
    assert reusers and pairs
    for o in reusers:
        owner = by_id[o.of or ""]
        assert o.payment_id == owner.payment_id and not owner.tags
        assert owner.at_s <= o.at_s
        assert o.cancel_after_s is None  # it is refused: nothing to cancel
    # About half the reuses race their owner (the same moment), over a few seeds.
    races = []
    for seed in range(10):
        other = plan_orders(PREFIX, 40, 20.0, 40.0, random.Random(seed))
        starts = {o.order_id: o.at_s for o in other}
        races += [o.at_s == starts[o.of or ""] for o in other if "reused_payment_ids" in o.tags]
    assert any(races) and not all(races)
    for o in pairs:
        base = by_id[o.of or ""]
        # What a retry of the base would have used had retries taken a client's form.
        assert o.order_id == f"{base.order_id}.r2"
        assert o.payment_id == f"{base.payment_id}.r2"
        assert base.at_s < o.at_s and not base.tags


def test_some_orders_fail_by_design_so_there_is_something_to_retry() -> None:
    plan = plan_orders(PREFIX, 20, 8.0, 40.0, random.Random(7))
    doomed = [o for o in plan if o.fault_profile is not None]
    assert doomed and all("fails_by_design" in o.tags for o in doomed)
    for o in doomed:
        # Every provider answer of the first three attempts is lost: PAY fails after
        # the gateway charged, the refund lands on the fourth attempt.
        profile = FaultProfile.parse(o.fault_profile or "")
        assert profile.lost_first == 3 and profile.fail_rate == profile.hang_rate == 0
        assert o.cancel_after_s is None and not o.free


def test_a_small_or_plain_run_has_no_mix() -> None:
    assert all(not o.tags for o in plan_orders(PREFIX, 3, 2.0, 40.0, random.Random(1)))
    plain = plain_orders(PREFIX, 3, 3.0)
    assert [(o.order_id, o.payment_id, o.at_s) for o in plain] == [
        (f"{PREFIX}-0000", f"pmt-{PREFIX}-0000", 0.0),
        (f"{PREFIX}-0001", f"pmt-{PREFIX}-0001", 1.0),
        (f"{PREFIX}-0002", f"pmt-{PREFIX}-0002", 2.0),
    ]


def test_a_payment_id_refusal_is_told_from_an_order_that_exists() -> None:
    held = OrderConflict("payment id p already belongs to another order", field="payment_id")
    assert _names_payment(held)
    assert not _names_payment(OrderConflict("order o already exists", order_id="o"))


def test_report_counts_are_numbers_or_lists() -> None:
    assert [count(3), count([1, 2]), count(None), count({}), count("x")] == [3, 2, 0, 0, 1]
