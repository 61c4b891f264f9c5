"""Normalization: schemas, exact money, guests, returns, voids, content hashes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import polars as pl

from pipeline.records import CHECKOUT_ITEM_SCHEMA, CHECKOUT_SCHEMA
from tests.core.helpers import feed, row, run


def test_frames_match_the_record_schemas() -> None:
    result = run([row(), row(line_no="2", product_id="P2", quantity="1", line_total="2.50")])
    assert dict(result.checkouts.drop("dedup_status").schema) == CHECKOUT_SCHEMA
    assert dict(result.items.schema) == CHECKOUT_ITEM_SCHEMA
    assert result.checkouts.columns[-1] == "dedup_status"


def test_money_is_exact_decimal() -> None:
    rows = [
        row(quantity="3", unit_price="0.10", line_total="0.30"),
        row(line_no="2", product_id="P2", quantity="1", unit_price="0.20", line_total="0.20"),
    ]
    result = run(rows)
    checkout = result.checkouts.row(0, named=True)
    assert checkout["total"] == Decimal("0.5000")
    items = checkout["items"]
    assert [i["line_total"] for i in items] == [Decimal("0.3000"), Decimal("0.2000")]
    assert items[0]["quantity"] == Decimal("3.000")


def test_line_total_defaults_to_quantity_times_price_minus_discount() -> None:
    result = run([row(quantity="3", unit_price="1.99", discount="0.50", line_total="")])
    assert result.items.get_column("line_total")[0] == Decimal("5.4700")


def test_checkout_carries_items_in_line_order() -> None:
    rows = [row(line_no="2", product_id="P2"), row(line_no="1", product_id="P1")]
    items = run(rows).checkouts.get_column("items")[0]
    assert [i["product_id"] for i in items] == ["P1", "P2"]
    assert [i["source_line"] for i in items] == [3, 2]


def test_items_inherit_checkout_attributes() -> None:
    result = run([row(customer_id=""), row(line_no="2", product_id="P2", customer_id="")])
    items = result.items
    assert items.get_column("is_guest").to_list() == [True, True]
    assert items.get_column("customer_id").to_list() == [None, None]
    assert items.get_column("timestamp_local").to_list() == ["2026-11-20T10:00:00+00:00"] * 2


def test_guest_checkout() -> None:
    checkout = run([row(customer_id="  ")]).checkouts.row(0, named=True)
    assert checkout["customer_id"] is None
    assert checkout["is_guest"] is True


def test_customer_on_first_line_only_is_the_checkouts() -> None:
    checkout = run([row(), row(line_no="2", product_id="P2", customer_id="")]).checkouts.row(0, named=True)
    assert checkout["customer_id"] == "C1"
    assert checkout["is_guest"] is False


def test_matched_return() -> None:
    result = run(
        [row(transaction_type="return", original_transaction_id="T0", quantity="2", line_total="5.00")]
    )
    checkout = result.checkouts.row(0, named=True)
    assert checkout["transaction_type"] == "return"
    assert checkout["return_status"] == "matched"
    assert checkout["original_transaction_id"] == "T0"
    assert checkout["total"] == Decimal("-5.0000")
    assert checkout["items"][0]["quantity"] == Decimal("-2.000")
    assert result.summary["returns"] == 1
    assert result.summary["amount_valid"] == "-5.00"


def test_negative_quantities_make_an_unmatched_return() -> None:
    rows = [
        row(transaction_type="", quantity="-2", line_total="-5.00"),
        row(transaction_type="", line_no="2", product_id="P2", quantity="-1", line_total="-2.50"),
    ]
    checkout = run(rows).checkouts.row(0, named=True)
    assert checkout["transaction_type"] == "return"
    assert checkout["return_status"] == "unmatched"
    assert checkout["total"] == Decimal("-7.5000")


def test_return_with_discount_refunds_the_net() -> None:
    result = run(
        [row(transaction_type="return", quantity="-2", unit_price="5", discount="1", line_total="-9")]
    )
    assert result.items.get_column("line_total")[0] == Decimal("-9.0000")


def test_void_is_kept_and_counted_but_not_sendable() -> None:
    result = run([row(transaction_type="VOID"), row(transaction_id="T2")])
    assert result.checkouts.get_column("transaction_type").to_list() == ["void", "sale"]
    assert result.summary["voids"] == 1
    assert result.sendable.get_column("transaction_id").to_list() == ["T2"]


def test_transaction_total_column_wins_when_given() -> None:
    rows = [
        row(transaction_total="7.49"),
        row(line_no="2", product_id="P2", quantity="1", line_total="2.50", transaction_total="7.49"),
    ]
    assert run(rows).checkouts.get_column("total")[0] == Decimal("7.4900")


def test_points_burned() -> None:
    assert run([row(points_burned="150")]).checkouts.get_column("points_burned")[0] == Decimal("150")


def test_content_hash_ignores_formatting_and_position() -> None:
    hourly = run([row(unit_price="2.5", line_total="5"), row(line_no="2", product_id="P2")])
    daily = run(
        [
            row(line_no="2", product_id="P2", unit_price="2.50", line_total="5.00"),
            row(unit_price="2.50", line_total="5.0"),
        ],
        the_feed=None,
    )
    a = hourly.checkouts.get_column("content_hash")[0]
    b = daily.checkouts.get_column("content_hash")[0]
    assert a == b
    assert len(a) == 64


def test_content_hash_changes_with_content() -> None:
    a = run([row()]).checkouts.get_column("content_hash")[0]
    b = run([row(quantity="3", line_total="7.50")]).checkouts.get_column("content_hash")[0]
    assert a != b


def test_local_time_keeps_the_stores_offset() -> None:
    result = run(
        [row(timestamp="2026-07-01 09:15:00", business_date="2026-07-01")],
        feed(timezone="Europe/Berlin"),
        now=datetime(2026, 7, 2, tzinfo=UTC),
    )
    checkout = result.checkouts.row(0, named=True)
    assert checkout["timestamp_local"] == "2026-07-01T09:15:00+02:00"
    assert checkout["timezone"] == "Europe/Berlin"


def test_checkouts_keep_file_order() -> None:
    rows = [row(transaction_id=t) for t in ["Z9", "A1", "M5"]]
    result = run(rows)
    assert result.checkouts.get_column("transaction_id").to_list() == ["Z9", "A1", "M5"]
    assert result.items.get_column("transaction_id").to_list() == ["Z9", "A1", "M5"]


def test_ids_are_stripped() -> None:
    result = run([row(transaction_id=" T1 ", store_id=" S1")])
    assert result.checkouts.select("transaction_id", "store_id").row(0) == ("T1", "S1")
    assert result.items.schema["line_no"] == pl.Int64
