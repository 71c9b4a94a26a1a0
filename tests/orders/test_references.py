"""A retry's references (payment id, carrier order) take a form no client id can take."""

from __future__ import annotations

import pytest

from app.orders.identity import first_reference, retry_of, retry_reference
from app.orders.providers.api import charge_key, dispatch_key, refund_key
from app.orders.validation import order_id_problem, payment_id_problem

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("client_id", ["pmt-1", "pmt-1.r2", "K.r3", "a" * 61 + ".r2", "x" * 64])
def test_a_retry_reference_is_never_a_client_id(client_id: str) -> None:
    assert payment_id_problem(client_id) is None and order_id_problem(client_id) is None
    for retry in (2, 3, 12):
        ref = retry_reference(client_id, retry)
        assert ref != client_id
        assert payment_id_problem(ref) is not None and order_id_problem(ref) is not None
        assert (first_reference(ref), retry_of(ref)) == (client_id, retry)
        # A retry of a retry numbers the client's id, never a reference of a reference.
        assert retry_reference(ref, retry + 1) == retry_reference(client_id, retry + 1)
    assert retry_reference(client_id, 1) == client_id and retry_of(client_id) == 1


def test_keys_name_the_order_so_two_orders_never_share_one() -> None:
    assert charge_key("A", "pmt-X") != charge_key("B", "pmt-X")
    assert refund_key("A", "pmt-X") != refund_key("B", "pmt-X")
    # A retry's payment carries its number into its keys.
    assert refund_key("A", "pmt-X#r2") == "refund:A:pmt-X#r2:2" != refund_key("A", "pmt-X")
    # The carrier's retry of K and an order a client named "K.r2" never share a key.
    assert dispatch_key("K", 2, 1) != dispatch_key("K.r2", 1, 1)
