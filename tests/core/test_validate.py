"""Every reject code, the first-rule-wins order, atomic transactions and timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest

from pipeline.core.rejected_copies import EARLIER_REJECTS_SCHEMA, customer_columns, line_key
from pipeline.core.rejects import CATALOG, MEMBER_CODES, RejectCode
from pipeline.core.transform import TransformResult, transform
from pipeline.core.validate import validate
from tests.core.helpers import NOW, codes, feed, lines_of, row, run

R = RejectCode

# (case name, rows, feed settings, expected code of the first line)
CASES: list[tuple[str, list[dict[str, str]], dict[str, object], RejectCode]] = [
    ("missing_store", [row(store_id="")], {}, R.MISSING_FIELD),
    ("blank_quantity", [row(quantity="  ")], {}, R.MISSING_FIELD),
    ("missing_transaction_id", [row(transaction_id="")], {}, R.MISSING_FIELD),
    ("bad_quantity", [row(quantity="two")], {}, R.BAD_NUMBER),
    ("too_many_decimals", [row(unit_price="2.50001", line_total="")], {}, R.BAD_NUMBER),
    ("thousands_separator", [row(unit_price="1,000.00", line_total="")], {}, R.BAD_NUMBER),
    ("bad_line_no", [row(line_no="1.5")], {}, R.BAD_NUMBER),
    # digits of other scripts are not read as numbers (before: taken for an empty value, so a
    # required quantity was "missing" and a discount silently none)
    ("arabic_indic_quantity", [row(quantity="\u0662", line_total="")], {}, R.BAD_NUMBER),
    ("fullwidth_discount", [row(discount="\uff11", line_total="5.00")], {}, R.BAD_NUMBER),
    ("fullwidth_total", [row(transaction_total="\uff15.00")], {}, R.BAD_NUMBER),
    ("arabic_indic_line_no", [row(line_no="\u0661")], {}, R.BAD_NUMBER),
    ("price_of_13_digits", [row(unit_price="1000000000000", line_total="")], {}, R.NUMBER_TOO_LARGE),
    ("quantity_of_10_digits", [row(quantity="1000000000", line_total="")], {}, R.NUMBER_TOO_LARGE),
    ("line_of_a_million_million", [row(quantity="1000000", unit_price="1000000", line_total="")], {},
     R.NUMBER_TOO_LARGE),
    ("bad_timestamp", [row(timestamp="20/11/2026 10:00")], {}, R.BAD_TIMESTAMP),
    ("bad_business_date", [row(business_date="yesterday")], {}, R.BAD_BUSINESS_DATE),
    ("unknown_type", [row(transaction_type="layaway")], {}, R.UNKNOWN_TRANSACTION_TYPE),
    ("unknown_currency", [row(currency="XYZ")], {}, R.UNKNOWN_CURRENCY),
    (
        "currency_not_allowed",
        [row(currency="EUR")],
        {"validation": {"currencies": ["GBP"]}},
        R.UNKNOWN_CURRENCY,
    ),
    ("zero_quantity", [row(quantity="0", line_total="0")], {}, R.NON_POSITIVE_QUANTITY),
    (
        "negative_sale_without_return_rule",
        [row(quantity="-2", line_total="-5")],
        {"validation": {"treat_negative_quantity_as_return": False}},
        R.NON_POSITIVE_QUANTITY,
    ),
    ("negative_price", [row(unit_price="-2.50", line_total="-5.00")], {}, R.NEGATIVE_PRICE),
    ("negative_discount", [row(discount="-1", line_total="6.00")], {}, R.NEGATIVE_DISCOUNT),
    ("discount_beyond_line", [row(discount="5.01", line_total="-0.01", transaction_total="")], {},
     R.DISCOUNT_EXCEEDS_LINE),
    ("return_discount_beyond_line", [row(transaction_type="return", quantity="-2", discount="5.01",
                                         line_total="")], {}, R.DISCOUNT_EXCEEDS_LINE),
    ("negative_points_burned", [row(points_burned="-5")], {}, R.NEGATIVE_POINTS_BURNED),
    ("line_total_off", [row(line_total="5.02")], {}, R.LINE_TOTAL_MISMATCH),
    ("future", [row(timestamp="2026-11-21 13:00:00", business_date="2026-11-21")], {}, R.TIMESTAMP_IN_FUTURE),
    ("far_from_business_date", [row(business_date="2026-11-10")], {}, R.TIMESTAMP_FAR_FROM_BUSINESS_DATE),
    ("repeated_line_no", [row(), row(product_id="P2")], {}, R.REPEATED_LINE_NUMBER),
    ("mixed_stores", [row(), row(line_no="2", store_id="S2")], {}, R.MIXED_STORES),
    ("mixed_customers", [row(), row(line_no="2", customer_id="C2")], {}, R.MIXED_CUSTOMERS),
    ("mixed_currencies", [row(), row(line_no="2", currency="EUR")], {}, R.MIXED_CURRENCIES),
    ("mixed_types", [row(), row(line_no="2", transaction_type="void")], {}, R.MIXED_TRANSACTION_TYPES),
    ("mixed_originals", [row(transaction_type="return", quantity="-2", line_total="-5",
                             original_transaction_id="S1"),
                         row(line_no="2", transaction_type="return", quantity="-2", line_total="-5",
                             original_transaction_id="S2")], {}, R.MIXED_TRANSACTION_VALUES),
    ("transaction_total_off", [row(transaction_total="9.99")], {}, R.TRANSACTION_TOTAL_MISMATCH),
    ("product_name_of_1001_characters", [row(product_name="x" * 1001)], {}, R.FIELD_TOO_LONG),
    ("customer_id_longer_than_set", [row(customer_id="C" * 11)], {"validation": {"max_field_chars": 10}},
     R.FIELD_TOO_LONG),
    ("nul_in_a_field", [row(product_name="Tea\x00")], {}, R.NUL_IN_ROW),
    ("zero_width_space_in_id", [row(transaction_id="T\u200b1")], {}, R.CONTROL_CHARACTER_IN_ID),
    ("bidi_mark_in_customer", [row(customer_id="\u202eC1")], {}, R.CONTROL_CHARACTER_IN_ID),
    ("tab_inside_product_id", [row(product_id="P\t1")], {}, R.CONTROL_CHARACTER_IN_ID),
    ("control_in_store", [row(store_id="S\x071")], {}, R.CONTROL_CHARACTER_IN_ID),
    ("line_break_after_a_timestamp", [row(timestamp="2026-11-20 10:00:00\n")], {}, R.LINE_BREAK_IN_FIELD),
    ("customer_id_saved_by_a_spreadsheet", [row(customer_id="1.23457E+11")], {}, R.ID_IN_SCIENTIFIC_NOTATION),
    ("offset_plus_25", [row(timestamp="2026-11-20T10:00:00+25:00")], {}, R.OFFSET_OUT_OF_RANGE),
    ("offset_minus_1430", [row(timestamp="2026-11-20T10:00:00-14:30")], {}, R.OFFSET_OUT_OF_RANGE),
    ("offset_in_arabic_indic_digits", [row(timestamp="2026-11-20T10:00:00+\u0660\u0661:\u0660\u0660")], {},
     R.BAD_TIMESTAMP),
    ("offset_minutes_75", [row(timestamp="2026-11-20T10:00:00+01:75")], {}, R.OFFSET_OUT_OF_RANGE),
    ("year_1999", [row(timestamp="1999-12-31 10:00:00", business_date="")], {}, R.DATE_TOO_EARLY),
    ("business_date_1999", [row(business_date="1999-12-31", timestamp="2026-11-20 10:00:00")],
     {"validation": {"max_days_from_business_date": 100000}}, R.DATE_TOO_EARLY),
    ("earliest_date_configured", [row()], {"validation": {"earliest_date": "2026-11-21"}}, R.DATE_TOO_EARLY),
]

# codes only a reader gives (the CSV text itself is broken): (case name, CSV text, settings, code)
READER_CASES: list[tuple[str, str, dict[str, object], RejectCode]] = [
    ("two_extra_fields", "{header}\n{line},x,y\n", {}, R.WRONG_FIELD_COUNT),
    ("unclosed_quote", '{header}\n"{line}\n', {}, R.UNBALANCED_QUOTE),
    ("text_after_quote", '{header}\n"T1"x,{rest}\n', {}, R.UNBALANCED_QUOTE),
    ("repeated_header", "{header}\n{header}\n", {}, R.REPEATED_HEADER),  # two exports joined
    ("not_json", "[1, 2]\n", {"format": {"kind": "jsonl"}}, R.NOT_JSON),
    # before: read as the text '{"id":"C1"}' and sent as the member's id
    ("json_object_in_customer_id", json.dumps({**row(), "customer_id": {"id": "C1"}}).replace("{", "{{")
     .replace("}", "}}") + "\n", {"format": {"kind": "jsonl"}}, R.JSON_VALUE_NOT_TEXT),
]


@pytest.mark.parametrize(("rows", "settings", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_reject_code(
    rows: list[dict[str, str]], settings: dict[str, object], expected: RejectCode
) -> None:
    result = run(rows, feed(**settings))
    assert codes(result)[0] == expected.value
    line = result.lines.row(0, named=True)
    assert line["reject_field"]
    assert line["reject_reason"]
    assert result.checkouts.height == 0


def test_every_code_has_a_case() -> None:
    covered = {c[3] for c in CASES} | {c[3] for c in READER_CASES} | {R.SIBLING_REJECTED, R.COPY_OF_REJECTED}
    covered.add(R.NO_ITEMS)  # the POSLog reader's alone: tests/core/test_poslog.py
    assert covered == set(CATALOG) - MEMBER_CODES  # enrollment and claim codes: tests/core/test_members.py


@pytest.mark.parametrize(
    ("text", "settings", "expected"), [c[1:] for c in READER_CASES], ids=[c[0] for c in READER_CASES]
)
def test_each_reader_code(text: str, settings: dict[str, object], expected: RejectCode) -> None:
    from pipeline.core.parse import read_bytes
    from pipeline.core.transform import transform
    from tests.core.helpers import csv_text

    header, line = csv_text([row()]).splitlines()
    good = csv_text([row(transaction_id="T2")]).splitlines()[1]
    data = text.format(header=header, line=line, rest=line.split(",", 1)[1])
    if settings.get("format") == {"kind": "jsonl"}:
        import json

        data += json.dumps(row(transaction_id="T2")) + "\n"
    else:
        data += good + "\n"
    the_feed = feed(**settings)
    result = transform(read_bytes(data.encode(), the_feed, source_name="r.csv"), the_feed, now=NOW)
    assert codes(result)[0] == expected.value
    first = result.lines.row(0, named=True)
    assert first["reject_field"] == "record"
    assert first["reject_reason"] and "\n" not in first["reject_reason"]
    assert first["source_line"] in (1, 2)
    assert result.checkouts.get_column("transaction_id").to_list() == ["T2"]  # the rest is read


def test_reason_names_the_value() -> None:
    result = run([row(quantity="two")])
    line = result.lines.row(0, named=True)
    assert line["reject_field"] == "quantity"
    assert "'two'" in line["reject_reason"]
    assert line["source_line"] == 2


def test_siblings_are_rejected_with_the_transaction() -> None:
    rows = [row(), row(line_no="2", product_id="P2", unit_price="-1"), row(line_no="3", product_id="P3")]
    result = run([*rows, row(transaction_id="T2")])
    assert codes(result) == [R.SIBLING_REJECTED, R.NEGATIVE_PRICE, R.SIBLING_REJECTED, None]
    sibling = result.lines.row(0, named=True)
    assert "line 3" in sibling["reject_reason"]
    assert result.checkouts.get_column("transaction_id").to_list() == ["T2"]


def test_first_rule_in_catalog_order_wins() -> None:
    result = run([row(quantity="x", currency="XYZ", timestamp="never")])
    assert codes(result) == [R.BAD_NUMBER]


def test_transaction_total_is_not_blamed_for_a_broken_sibling() -> None:
    rows = [
        row(transaction_total="7.50"),
        row(line_no="2", product_id="P2", quantity="x", transaction_total="7.50"),
    ]
    assert codes(run(rows)) == [R.SIBLING_REJECTED, R.BAD_NUMBER]


def test_amount_tolerance_is_honoured() -> None:
    loose = feed(validation={"amount_tolerance": "0.05"})
    assert codes(run([row(line_total="5.04")], loose)) == [None]
    assert codes(run([row(line_total="5.06")], loose)) == [R.LINE_TOTAL_MISMATCH]


def test_transaction_total_matches_sum_of_lines() -> None:
    rows = [
        row(transaction_total="7.50"),
        row(line_no="2", product_id="P2", quantity="1", line_total="2.50", transaction_total="7.50"),
    ]
    result = run(rows)
    assert codes(result) == [None, None]
    assert str(result.checkouts.get_column("total")[0]) == "7.5000"


def test_exact_repeated_block_is_a_duplicate_not_a_reject() -> None:
    block = [row(), row(line_no="2", product_id="P2", quantity="1", line_total="2.50")]
    result = run(block + block)
    assert codes(result) == [None] * 4
    assert result.checkouts.get_column("dedup_status").to_list() == ["new", "duplicate"]
    assert result.summary["duplicates"] == 1


def test_partial_repeat_is_a_conflict() -> None:
    block = [row(), row(line_no="2", product_id="P2", quantity="1", line_total="2.50")]
    result = run(block + block[:1])
    assert result.checkouts.get_column("dedup_status").to_list() == ["conflict", "conflict"]


# a transaction T4 whose line 2 is bad (quantity 0), and its good line 1 repeated on its own
_T4_GOOD = row(transaction_id="T4", quantity="1", unit_price="2.00", line_total="2.00")
_T4_BAD = row(transaction_id="T4", line_no="2", product_id="P2", quantity="0", line_total="0")


def _balanced(result: TransformResult) -> None:
    """Every line and transaction is counted once, and the money balances per currency."""
    s = result.summary
    assert s["rows_in"] == s["rows_valid"] + s["rows_rejected"]
    assert s["transactions_in"] == s["transactions_valid"] + s["transactions_rejected"]
    assert s["transactions_valid"] == s["new"] + s["duplicates"] + s["conflicts"]
    for amounts in s["currencies"].values():
        assert Decimal(amounts["amount_in"]) == Decimal(amounts["amount_valid"]) + Decimal(
            amounts["amount_rejected"]
        )


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # before: line 3 became a valid T4 of its own and was sent (2.00) while T4 was rejected
        ([_T4_GOOD, _T4_BAD, _T4_GOOD], [R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY, R.COPY_OF_REJECTED]),
        ([_T4_GOOD, _T4_GOOD, _T4_BAD], [R.SIBLING_REJECTED, R.COPY_OF_REJECTED, R.NON_POSITIVE_QUANTITY]),
        # the bad line repeated: each copy fails on its own
        ([_T4_GOOD, _T4_BAD, _T4_BAD],
         [R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY, R.NON_POSITIVE_QUANTITY]),
        # the whole block repeated: the repeat fails on its own line 2, its line 1 with it
        ([_T4_GOOD, _T4_BAD, _T4_GOOD, _T4_BAD],
         [R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY, R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY]),
    ],
    ids=["repeat_after_the_bad_line", "repeat_before_the_bad_line", "bad_line_repeated", "block_repeated"],
)
def test_a_copy_of_a_rejected_transaction_in_its_file_is_never_sent(
    rows: list[dict[str, str]], expected: list[RejectCode]
) -> None:
    other = row(transaction_id="T5")
    result = run([*rows, other])
    assert codes(result) == [*[c.value for c in expected], None]
    assert result.checkouts.get_column("transaction_id").to_list() == ["T5"]
    assert result.sendable.get_column("transaction_id").to_list() == ["T5"]
    copies = result.lines.filter(pl.col("reject_code") == R.COPY_OF_REJECTED)
    bad_lines = result.lines.filter(pl.col("reject_code") == R.NON_POSITIVE_QUANTITY)
    bad_line = bad_lines.get_column("source_line").min()
    for reason in copies.get_column("reject_reason"):
        assert reason.startswith(f"transaction T4 was rejected (line {bad_line} of this file)")
    _balanced(result)
    assert result.summary["currencies"]["GBP"]["amount_valid"] == "5.00"


def test_a_full_copy_is_rejected_with_a_partial_copy_its_file_rejected() -> None:
    # the partial repeat breaks transaction_total (R018) while the full block is valid: neither is
    # sent (without the total both would be held as conflicts)
    block = [row(transaction_total="7.50"),
             row(line_no="2", product_id="P2", quantity="1", line_total="2.50", transaction_total="7.50")]
    result = run(block + block[:1])
    assert codes(result) == [R.COPY_OF_REJECTED, R.COPY_OF_REJECTED, R.TRANSACTION_TOTAL_MISMATCH]
    assert result.checkouts.height == 0
    _balanced(result)


def test_a_copy_in_another_file_is_not_a_copy_in_its_file() -> None:
    # the rule of this file does not reach the next one (across files: tests/test_rejected_copies.py)
    f = feed()
    lines = pl.concat(
        [lines_of([_T4_GOOD, _T4_BAD], f, "a.csv"), lines_of([row(transaction_id="T9")], f, "b.csv")]
    )
    result = transform(lines, f, now=NOW)
    assert codes(result) == [R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY, None]


def test_identical_lines_without_line_no_are_two_items() -> None:
    line = row(line_no="")
    result = run([line, line])
    assert codes(result) == [None, None]
    assert result.checkouts.height == 1
    assert result.checkouts.get_column("line_count")[0] == 2
    assert result.items.get_column("line_no").to_list() == [1, 2]


def test_timestamp_future_tolerance() -> None:
    # NOW is 12:00 UTC; London is on GMT in November; 10 minutes of tolerance by default
    ok = row(timestamp="2026-11-21 12:09:00", business_date="2026-11-21")
    late = row(timestamp="2026-11-21 12:11:00", business_date="2026-11-21", transaction_id="T2")
    result = run([ok, late], feed(timezone="Europe/London"))
    assert codes(result) == [None, R.TIMESTAMP_IN_FUTURE]


def test_naive_now_is_utc() -> None:
    lines = lines_of([row(timestamp="2026-11-21 12:30:00", business_date="2026-11-21")])
    checked = validate(lines, feed(), now=datetime(2026, 11, 21, 12, 25))
    assert checked.get_column("reject_code").to_list() == [None]


class TestTimestamps:
    def test_offset_is_honoured(self) -> None:
        result = run([row(timestamp="2026-11-20T10:00:00+01:00")], feed(timezone="America/New_York"))
        checkout = result.checkouts.row(0, named=True)
        assert checkout["timestamp_utc"] == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
        assert checkout["timestamp_local"] == "2026-11-20T10:00:00+01:00"

    @pytest.mark.parametrize(
        "text", ["2026-11-20T09:00:00Z", "2026-11-20 09:00:00+0000", "2026-11-20T09:00Z"]
    )
    def test_utc_spellings(self, text: str) -> None:
        result = run([row(timestamp=text)], feed(timezone="Asia/Tokyo"))
        assert result.checkouts.get_column("timestamp_utc")[0] == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

    def test_two_timezones_per_store(self) -> None:
        the_feed = feed(timezone="Europe/London", store_timezones={"NY1": "America/New_York"})
        rows = [row(transaction_id="L"), row(transaction_id="N", store_id="NY1")]
        result = run(rows, the_feed)
        got = {r["transaction_id"]: r for r in result.checkouts.iter_rows(named=True)}
        assert got["L"]["timestamp_utc"] == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
        assert got["N"]["timestamp_utc"] == datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
        assert got["N"]["timestamp_local"] == "2026-11-20T10:00:00-05:00"
        assert got["N"]["timezone"] == "America/New_York"

    def test_dst_gap_moves_forward(self) -> None:
        # 01:30 does not exist in London on 2026-03-29 (clocks go 01:00 GMT -> 02:00 BST)
        result = run(
            [row(timestamp="2026-03-29 01:30:00", business_date="2026-03-29")],
            feed(timezone="Europe/London"),
            now=datetime(2026, 3, 30, tzinfo=UTC),
        )
        checkout = result.checkouts.row(0, named=True)
        assert checkout["timestamp_utc"] == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
        assert checkout["timestamp_local"] == "2026-03-29T02:30:00+01:00"

    def test_dst_overlap_takes_the_earlier_instant(self) -> None:
        # 01:30 happens twice in London on 2026-10-25; the first time is BST (00:30 UTC)
        result = run(
            [row(timestamp="2026-10-25 01:30:00", business_date="2026-10-25")],
            feed(timezone="Europe/London"),
            now=datetime(2026, 10, 26, tzinfo=UTC),
        )
        checkout = result.checkouts.row(0, named=True)
        assert checkout["timestamp_utc"] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
        assert checkout["timestamp_local"] == "2026-10-25T01:30:00+01:00"

    def test_business_date_defaults_to_local_date(self) -> None:
        # 23:30 in New York on the 19th is the 20th in UTC: the business date is the local one
        result = run(
            [row(timestamp="2026-11-19 23:30:00", business_date="")], feed(timezone="America/New_York")
        )
        assert result.checkouts.get_column("business_date")[0].isoformat() == "2026-11-19"

    def test_custom_formats(self) -> None:
        the_feed = feed(format={"timestamp_format": "%d/%m/%Y %H:%M", "date_format": "%d.%m.%Y"})
        result = run([row(timestamp="20/11/2026 10:00", business_date="20.11.2026")], the_feed)
        assert codes(result) == [None]
        assert result.checkouts.get_column("business_date")[0].isoformat() == "2026-11-20"


def test_validate_adds_typed_columns_and_keeps_every_row() -> None:
    lines = lines_of([row(), row(transaction_id="T2", quantity="x")])
    checked = validate(lines, feed(), now=NOW)
    assert checked.height == 2
    assert checked.schema["amount"] == pl.Decimal(38, 4)
    assert {"reject_code", "reject_field", "reject_reason", "business_day"} <= set(checked.columns)


def test_reason_is_never_empty_when_the_value_is() -> None:
    rows = [row(customer_id=""), row(line_no="2", customer_id="C1"), row(line_no="3", customer_id="C2")]
    reasons = run(rows).lines.get_column("reject_reason").to_list()
    assert all(reasons)
    assert "this line: ''" in reasons[0] or "R099" not in reasons[0]


def test_number_too_large_for_money_is_rejected_not_dropped() -> None:
    huge = "9" * 36
    assert codes(run([row(discount=huge, line_total="")])) == [R.NUMBER_TOO_LARGE]


def test_empty_input() -> None:
    from pipeline.core.transform import empty_lines, transform, transform_files

    result = transform(empty_lines(), feed(), now=NOW)
    assert result.summary["rows_in"] == 0
    assert result.summary["amount_in"] == "0.00"
    assert transform_files([], feed(), now=NOW).checkouts.height == 0
    header_only = run([])
    assert header_only.summary["transactions_in"] == 0
    assert header_only.rejects.height == 0


def test_computed_amounts_in_reasons_read_as_money() -> None:
    """The computed side of a mismatch shows 2 decimals unless it has more (not the 4 it is kept in)."""
    reasons = run([row(line_total="5.02"), row(transaction_id="T2", quantity="3", unit_price="0.0125",
                                               line_total="0.05", transaction_total="")]).lines
    first, second = reasons.get_column("reject_reason").to_list()
    assert first == "line_total 5.02 but quantity × unit_price − discount = 5.00"
    assert second == "line_total 0.05 but quantity × unit_price − discount = 0.0375"
    sums = run([row(transaction_total="9.99")]).lines.get_column("reject_reason").to_list()
    assert sums == ["transaction_total 9.99 but the lines sum to 5.00"]


def test_a_decimal_comma_export_reads_its_own_notation_in_every_reason() -> None:
    """A reason of a decimal-comma export writes each amount as the export does: the value quoted
    as the file had it and the computed side with a comma too (before: ``8,50 ... = 6.50``)."""
    comma = feed(format={"decimal_comma": True})
    rows = [
        row(transaction_id="T1", unit_price="2,50", line_total="5,02"),
        row(transaction_id="T2", quantity="3", unit_price="0,0125", line_total="0,05"),
        row(transaction_id="T3", unit_price="2,50", discount="5,01", line_total="-0,01"),
        row(transaction_id="T4", quantity="1000", unit_price="999999999999", line_total=""),
        row(transaction_id="T5", quantity="-2", unit_price="2,50", discount="5,01", line_total="",
            transaction_type="return"),
    ]
    reasons = run(rows, comma).lines.get_column("reject_reason").to_list()
    assert reasons == [
        "line_total 5,02 but quantity × unit_price − discount = 5,00",
        "line_total 0,05 but quantity × unit_price − discount = 0,0375",
        "discount 5,01 is more than quantity × unit_price = 5,00",
        "quantity × unit_price − discount = 999999999999000,00 reaches 1.000.000.000.000",
        "discount 5,01 is more than quantity × unit_price = 5,00",
    ]
    sums = run([row(unit_price="2,50", line_total="5,00", transaction_total="9,99")], comma)
    assert sums.lines.get_column("reject_reason").to_list() == [
        "transaction_total 9,99 but the lines sum to 5,00"]
    negative = run([row(transaction_type="return", quantity="-2", unit_price="2,50", line_total="-5,00",
                        transaction_total="-9,99")], comma)
    assert negative.lines.get_column("reject_reason").to_list() == [
        "transaction_total -9,99 but the lines sum to -5,00"]


def test_numbers_too_large_to_keep_are_rejected_not_a_crash_or_a_wrapped_sum() -> None:
    # a product that would not fit the money type (it raised mid-transform), a unit price Python's
    # decimals could not round (it failed at send time), two lines whose sum wrapped to a negative
    # total: each is a reject naming its field, and the good transaction beside them goes through
    big = "1" + "0" * 20
    nines = "9" * 34
    rows = [
        row(transaction_id="T1", quantity=big, unit_price=big, line_total=""),
        row(transaction_id="T2", unit_price="99999999999999999999999999999.50", line_total=""),
        row(transaction_id="T3", line_no="1", quantity="1", unit_price=nines, line_total=""),
        row(transaction_id="T3", line_no="2", quantity="1", unit_price=nines, line_total=""),
        row(transaction_id="T4"),
    ]
    result = run(rows)
    assert codes(result) == [R.NUMBER_TOO_LARGE.value] * 4 + [None]
    assert result.lines.get_column("reject_field").to_list()[:4] == ["quantity", "unit_price", "unit_price",
                                                                   "unit_price"]
    assert "more than 9 whole digits" in result.lines.get_column("reject_reason")[0]
    assert result.checkouts.get_column("transaction_id").to_list() == ["T4"]
    assert all(amount >= 0 for amount in result.lines.get_column("amount").to_list())


def test_a_line_worth_a_million_million_is_rejected_with_its_amount() -> None:
    result = run([row(quantity="1000", unit_price="999999999999", line_total="")])
    assert codes(result) == [R.NUMBER_TOO_LARGE.value]
    assert result.lines.get_column("reject_reason")[0] == (
        "quantity × unit_price − discount = 999999999999000.00 reaches 1,000,000,000,000")
    just_below = run([row(quantity="1", unit_price="999999999999.9999", line_total="")])
    assert codes(just_below) == [None]


@pytest.mark.parametrize(
    ("text", "read"),
    [("2,50", "2.5000"), ("1.234,50", "1234.5000"), ("1.500", "1500.0000"), ("12.345", "12345.0000"),
     ("1.234.567,5", "1234567.5000"), (",5", "0.5000"), ("+3,20", "3.2000"), ("7", "7.0000")],
)
def test_decimal_comma_reads_dots_as_thousands(text: str, read: str) -> None:
    result = run([row(unit_price=text, quantity="1", line_total="")], feed(format={"decimal_comma": True}))
    assert codes(result) == [None]
    assert str(result.items.get_column("unit_price")[0]) == read


@pytest.mark.parametrize("text", ["1,000.0", "1,234.5", "2.50", "12.34,50", "1.2345,6", "1,2,3", "1.5"])
def test_decimal_comma_rejects_a_dot_that_does_not_group_thousands(text: str) -> None:
    # read before as 1.0, 1.2345, 2.50 and 1234.50: a price off by a thousand, without a word
    result = run([row(unit_price=text, quantity="1", line_total="")], feed(format={"decimal_comma": True}))
    assert codes(result) == [R.BAD_NUMBER.value]
    assert result.lines.get_column("reject_field")[0] == "unit_price"
    assert result.lines.get_column("reject_reason")[0] == (
        f"unit_price '{text}' is not a number with at most 4 decimal places written with a decimal comma "
        "(dots only between thousands: 1.234,50)")


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [("business_date", "2026-11-20", "2026-11-19"), ("register_id", "R1", "R2"),
     ("original_transaction_id", "S1", "S2"), ("transaction_total", "10.00", "10.01"),
     ("points_burned", "1", "2")],
)
def test_lines_that_disagree_on_a_value_of_their_transaction_reject_it(field: str, first: str,
                                                                       second: str) -> None:
    # normalize takes such a value from the transaction's first line: a return naming two sales was
    # checked against the first only, a second total was sent and not the one reported
    rows = [row(**{field: first}), row(line_no="2", **{field: second})]
    result = run(rows)
    assert codes(result) == [R.MIXED_TRANSACTION_VALUES.value] * 2
    assert result.lines.get_column("reject_field").to_list() == [field, field]
    assert f"2 different values of {field}" in result.lines.get_column("reject_reason")[0]
    blank = run([row(**{field: first}), row(line_no="2", **{field: ""})])  # empty agrees with any
    assert codes(blank)[0] != R.MIXED_TRANSACTION_VALUES.value


@pytest.mark.parametrize(
    ("rows", "code"),
    [
        ([row(customer_id="LOY-71"), row(line_no="2", customer_id="LOY-72")], RejectCode.MIXED_CUSTOMERS),
        ([row(customer_id="LOY\u200b71")], RejectCode.CONTROL_CHARACTER_IN_ID),
    ],
)
def test_a_reason_about_a_customer_id_shows_it_hashed_as_the_feed_does(
    rows: list[dict[str, str]], code: RejectCode
) -> None:
    from pipeline.logs import mask_customer_id

    hashed = run(rows).lines
    assert hashed.get_column("reject_code").to_list()[0] == code
    for customer, text in zip(hashed.get_column("customer_id"), hashed.get_column("reject_reason"),
                              strict=True):
        assert "LOY" not in text and f"'{mask_customer_id(customer)}'" in text
    clear = run(rows, feed(logging={"hash_customer_ids": False})).lines.get_column("reject_reason")
    assert all("LOY" in text for text in clear)


def test_a_discount_of_the_whole_line_is_a_free_item_not_a_reject() -> None:
    result = run([row(discount="5.00", line_total="0.00")], feed())
    assert codes(result) == [None]
    assert result.checkouts.get_column("total").to_list()[0] == 0


def test_keys_a_feed_does_not_read_may_hold_anything_but_the_ones_it_reads_may_not() -> None:
    from pipeline.core.parse import read_bytes
    from pipeline.core.transform import transform

    lines = [{**row(), "basket": {"lines": [1, 2]}, "flags": [True]},  # not read: fine
             {**row(transaction_id="T2"), "receipt": ["R", "9"]},  # read by the template: not fine
             {**row(transaction_id="T3"), "store_id": True}]
    the_feed = feed(format={"kind": "jsonl", "transaction_id_template": "{transaction_id}-{receipt}"})
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    result = transform(read_bytes(data, the_feed, source_name="r.jsonl"), the_feed, now=NOW)
    assert codes(result)[1:] == [R.JSON_VALUE_NOT_TEXT.value] * 2
    reasons = result.lines.get_column("reject_reason").to_list()
    assert "field 'receipt' holds an array" in reasons[1] and "holds true" in reasons[2]


def test_a_field_of_exactly_the_limit_is_kept_and_a_long_one_is_named_by_length_only() -> None:
    settings = feed(validation={"max_field_chars": 12})
    rows = [row(customer_id="C" * 12), row(transaction_id="T2", customer_id="SECRET-MEMBER-1")]
    result = run(rows, settings)
    assert codes(result) == [None, R.FIELD_TOO_LONG.value]
    reason = result.lines.get_column("reject_reason").to_list()[1]
    assert reason == "customer_id is 15 characters long; at most 12 are kept (validation.max_field_chars)"


def test_a_customer_id_a_spreadsheet_turned_into_scientific_notation_is_rejected() -> None:
    # 123456789012 saved by a spreadsheet: the real id is lost, sending it would credit nobody
    result = run([row(customer_id="1.23457E+11"), row(transaction_id="T2", customer_id="1.2e+5"),
                  row(transaction_id="T3", customer_id="12E45"), row(transaction_id="T4", customer_id="")])
    assert codes(result) == [RejectCode.ID_IN_SCIENTIFIC_NOTATION, RejectCode.ID_IN_SCIENTIFIC_NOTATION,
                             None, None]
    reasons = result.lines.get_column("reject_reason").to_list()
    assert "scientific notation" in reasons[0] and "1.23457E+11" not in reasons[0]  # hashed


def test_a_fragment_of_a_transaction_rejected_in_another_file_is_rejected() -> None:
    # T4 rejected in a.csv; b.csv repeats its good line alone (before: sent), c.csv corrects it
    f = feed()
    fixed = row(transaction_id="T4", line_no="2", product_id="P2", quantity="1", line_total="2.50")
    lines = pl.concat([
        lines_of([_T4_GOOD, _T4_BAD], f, "a.csv"),
        lines_of([_T4_GOOD, row(transaction_id="T5")], f, "b.csv"),
    ])
    result = transform(lines, f, now=NOW)
    assert codes(result) == [R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY, R.COPY_OF_REJECTED, None]
    reason = result.lines.get_column("reject_reason")[2]
    assert reason.startswith("transaction T4 was rejected (a.csv line 3)")
    assert result.sendable.get_column("transaction_id").to_list() == ["T5"]
    _balanced(result)
    # a correction (a line of its own) is judged afresh, in any file order
    lines = pl.concat([lines_of([_T4_GOOD, fixed], f, "c.csv"), lines_of([_T4_GOOD, _T4_BAD], f, "a.csv")])
    result = transform(lines, f, now=NOW)
    assert codes(result) == [None, None, R.SIBLING_REJECTED, R.NON_POSITIVE_QUANTITY]
    assert result.sendable.get_column("transaction_id").to_list() == ["T4"]
    _balanced(result)


def test_a_fragment_of_a_transaction_rejected_before_is_rejected() -> None:
    f = feed()
    earlier = pl.DataFrame(
        {
            "transaction_id": ["T4", "T4"],
            "occurrence": ["7", "7"],
            # as the ledger keeps a rejected line: the export's columns
            "line_key": [line_key(r, customer_columns(f)) for r in (_T4_GOOD, _T4_BAD)],
            "source_file": ["a.csv", "a.csv"],
            "source_line": [2, 3],
            "reject_code": [R.SIBLING_REJECTED.value, R.NON_POSITIVE_QUANTITY.value],
        },
        schema=EARLIER_REJECTS_SCHEMA,
    )
    fragment = run([_T4_GOOD], f, rejected_before=earlier)
    assert codes(fragment) == [R.COPY_OF_REJECTED]
    reason = fragment.lines.get_column("reject_reason")[0]
    assert reason.startswith("transaction T4 was rejected (a.csv line 3)")
    _balanced(fragment)
    # the customer id is not compared (the ledger may keep it hashed)
    assert codes(run([row(**{**_T4_GOOD, "customer_id": "cust:abc"})], f, rejected_before=earlier)) == [
        R.COPY_OF_REJECTED]
    fixed = row(transaction_id="T4", line_no="2", product_id="P2", quantity="1", line_total="2.50")
    assert codes(run([_T4_GOOD, fixed], f, rejected_before=earlier)) == [None, None]
    assert codes(run([row(transaction_id="T4", quantity="3", line_total="7.50")], f,
                     rejected_before=earlier)) == [None]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_reader_reason_quoting_a_line_leaves_its_content_out_when_customer_ids_are_hashed(
        kind: str) -> None:
    """A line the reader cannot read is rejected with where it broke; the excerpt of it the reason
    quotes holds the customer id, so with hashing on the reason ends before the excerpt."""
    from pipeline.core.parse import read_bytes
    from pipeline.core.transform import transform

    good = row()
    if kind == "csv":
        header = ",".join(good)
        broken = [",".join({**good, "transaction_id": "T3", "customer_id": "LOY-78"}.values()) + ",LOY-78",
                  ",".join({**good, "transaction_id": "T2", "customer_id": '"LOY-77'}.values())]
        data = "\n".join([header, ",".join(good.values()), *broken]).encode() + b"\n"
    else:
        data = (json.dumps(good) + "\n" + '{"customer_id": "LOY-77", "transaction_id": \n'
                + json.dumps(["LOY-78", "T3"]) + "\n").encode()
    for hashing in (True, False):
        the_feed = feed(format={"kind": kind}, logging={"hash_customer_ids": hashing})
        result = transform(read_bytes(data, the_feed, source_name=f"r.{kind}"), the_feed, now=NOW)
        reasons = [r for r in result.lines.get_column("reject_reason").to_list() if r]
        assert len(reasons) == 2, reasons
        if hashing:
            assert not [r for r in reasons if "LOY" in r or "T2," in r], reasons
            assert all("line " in r or "fields where" in r for r in reasons), reasons
        else:  # the excerpt is there
            assert all(": '" in r for r in reasons) and any("LOY" in r for r in reasons), reasons
