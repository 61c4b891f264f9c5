"""Checkout rows to Antavo events, and exact JSON numbers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pipeline.sinks.antavo_events import NotSent, dumps, events_for, money_number
from tests.sandbox_fixtures import make_checkout


def test_sale_becomes_a_checkout_with_items_and_original_time() -> None:
    row = make_checkout("T-1", "cust-9", lines=2, unit_price="6.25", quantity="2")
    [event] = events_for(row)  # type: ignore[misc]
    assert json.loads(dumps(event)) == {
        "customer": "cust-9",
        "action": "checkout",
        "data": {
            "transaction_id": "T-1",
            "total": 25.0,
            "currency": "EUR",
            "effective_timestamp": 1795167000,  # 2026-11-20T09:30:00Z
            "store": "S1",
            "items": [
                {"product_id": "P1", "product_name": "Product 1", "price": 6.25, "quantity": 2,
                 "discount": 0, "subtotal": 12.5, "product_category": "Coffee"},
                {"product_id": "P2", "product_name": "Product 2", "price": 6.25, "quantity": 2,
                 "discount": 0, "subtotal": 12.5},
            ],
        },
    }


def test_json_numbers_keep_every_digit() -> None:
    row = make_checkout("T-2", unit_price="0.1", quantity="3")
    row["total"] = Decimal("0.3000")
    body = dumps(events_for(row)[0])  # type: ignore[index]
    assert b'"total":0.30' in body
    assert b'"price":0.10' in body
    assert b'"subtotal":0.30' in body  # 3 * 0.1 exactly, no 0.30000000000000004
    big = {"n": Decimal("12345678901234567890.0123")}
    assert dumps(big) == b'{"n":12345678901234567890.0123}'
    assert json.loads(dumps(big), parse_float=Decimal)["n"] == Decimal("12345678901234567890.0123")


def test_float_money_and_non_finite_amounts_are_refused() -> None:
    row = make_checkout("T-3")
    row["total"] = 12.5
    with pytest.raises(TypeError, match="Decimal"):
        events_for(row)
    with pytest.raises(ValueError):
        dumps({"total": Decimal("NaN")})
    with pytest.raises(TypeError):
        dumps({"when": object()})


def test_text_that_looks_like_a_number_stays_text() -> None:
    tricky = {"product_name": "\x0012.50", "n": Decimal("-0.5")}
    assert json.loads(dumps(tricky), parse_float=Decimal) == {"product_name": "\x0012.50",
                                                               "n": Decimal("-0.5")}


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [("12.5000", "EUR", "12.50"), ("0.0050", "EUR", "0.005"), ("100.0000", "JPY", "100"),
     ("1.2340", "KWD", "1.234"), ("0.0000", "EUR", "0.00"), ("-3.1000", "GBP", "-3.10")],
)
def test_money_drops_zeros_down_to_minor_units_and_never_rounds(value: str, currency: str,
                                                                 shown: str) -> None:
    assert format(money_number(Decimal(value), currency), "f") == shown


def test_guest_has_guest_flag_and_no_customer() -> None:
    [event] = events_for(make_checkout("G-1", None))  # type: ignore[misc]
    assert event["guest"] is True
    assert "customer" not in event


def test_return_refunds_the_original_transaction() -> None:
    row = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="T-1", lines=2)
    [refund] = events_for(row, return_mode="refund")  # type: ignore[misc]
    assert refund == {"customer": "cust-1", "action": "refund", "data": {"transaction_id": "T-1"}}
    items = events_for(row, return_mode="refund_item")
    assert isinstance(items, list)
    assert [e["action"] for e in items] == ["refund_item", "refund_item"]
    assert json.loads(dumps(items[0]["data"])) == {
        "transaction_id": "T-1", "product_id": "P1", "quantity": 2, "subtotal": 12.5}


def test_unmatched_returns_and_voids_are_not_sent() -> None:
    unmatched = events_for(make_checkout("R-2", kind="return"))
    assert isinstance(unmatched, NotSent)
    assert unmatched.code == "unmatched_return"
    void = events_for(make_checkout("V-1", kind="void"))
    assert isinstance(void, NotSent)
    assert void.code == "void"
