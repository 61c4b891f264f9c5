"""Variations of one real export as careless tills and spreadsheets write them: each is read to the
cent, or refused naming the file, the line and the field; never read as empty, never wrong money.

The export is the UCI Online Retail sample (tests/fixtures/online_retail, CC BY 4.0) read with its
own feed file; the canonical layout is used where a column it lacks (discount, points) matters.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.transform import TransformResult, transform_files
from tests.core.helpers import NOW, csv_text, feed, row

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "online_retail"


def run_file(tmp_path: Path, name: str, data: bytes | str, **settings: Any) -> TransformResult:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return transform_files([path], feed(**settings), now=NOW)


def own_header(text: str, old: str, new: str) -> str:
    """``text`` with one name of its header line written as ``new``."""
    header, rest = text.split("\n", 1)
    return header.replace(old, new) + "\n" + rest


@pytest.mark.parametrize("written", ["Points_Burned", "POINTS_BURNED", " points_burned ", "Points Burned"])
def test_an_optional_column_named_in_another_case_or_with_blanks_is_read_not_dropped(
    tmp_path: Path, written: str
) -> None:
    """The points a checkout burned, under a header a spreadsheet capitalised, count: before,
    only an exact name was looked up and the points were silently read as none."""
    text = csv_text([row(points_burned="150")])
    result = run_file(tmp_path, "points.csv", own_header(text, "points_burned", written))
    assert not result.unreadable and result.summary["rows_rejected"] == 0
    assert result.checkouts.get_column("points_burned").to_list() == [Decimal(150)]


def test_a_returns_link_under_a_capitalised_header_stays_linked(tmp_path: Path) -> None:
    text = csv_text([row(transaction_id="T1"),
                     row(transaction_id="R1", transaction_type="return", quantity="-2", line_total="-5.00",
                         original_transaction_id="T1")])
    result = run_file(tmp_path, "returns.csv",
                      own_header(text, "original_transaction_id", "Original_Transaction_ID"))
    links = dict(result.checkouts.select("transaction_id", "original_transaction_id").iter_rows())
    assert links == {"T1": None, "R1": "T1"}


def test_a_mapped_column_matches_whatever_its_case(tmp_path: Path) -> None:
    text = (FIXTURE / "online_retail_sample.csv").read_text(encoding="utf-8")
    settings = tomllib.loads((FIXTURE / "online_retail.toml").read_text(encoding="utf-8"))
    settings.pop("source")
    exact = run_file(tmp_path, "exact.csv", text, **settings)
    header, rest = text.split("\n", 1)
    lowered = run_file(tmp_path, "lowered.csv", header.lower() + "\n" + rest, **settings)
    assert not lowered.unreadable, lowered.unreadable
    assert lowered.summary["rows_valid"] == exact.summary["rows_valid"] > 300
    assert (lowered.checkouts.get_column("total").sum() == exact.checkouts.get_column("total").sum())


def test_two_columns_whose_names_differ_only_in_case_make_the_file_unreadable_naming_both(
    tmp_path: Path,
) -> None:
    """Which of ``discount`` and ``Discount`` is the discount would be a guess."""
    text = csv_text([row(discount="1.00", line_total="4.00")])
    header, rest = text.split("\n", 1)
    data = header + ",Discount\n" + rest.replace("\n", ",0\n")
    result = run_file(tmp_path, "two_discounts.csv", data)
    (unreadable,) = result.unreadable
    assert unreadable.file == "two_discounts.csv"
    assert "'discount'" in unreadable.reason and "'Discount'" in unreadable.reason


@pytest.mark.parametrize(("changes", "code"), [
    ({"unit_price": "1" * 3000}, "R026_NUMBER_TOO_LARGE"),  # thousands of digits
    ({"timestamp": "2" * 5000}, "R003_BAD_TIMESTAMP"),
    ({"unit_price": "2.5\n0"}, "R002_BAD_NUMBER"),  # a quoted field holding a line break
    ({"currency": "G\r\nBP"}, "R006_UNKNOWN_CURRENCY"),
])
def test_a_reject_reason_quoting_a_huge_or_multi_line_value_stays_one_short_line(
    tmp_path: Path, changes: dict[str, str], code: str
) -> None:
    """A reason is one line of at most MAX_REASON_CHARS, as rejects.csv, logs and the ledger
    take it: before, the value was quoted whole (a 3000-digit price made a 3000-character reason,
    a line break in a field a reason of two lines)."""
    from pipeline.core.parse import MAX_REASON_CHARS

    result = run_file(tmp_path, "odd.csv", csv_text([row(**changes), row(transaction_id="T2")]))
    lines = result.lines
    assert lines.get_column("reject_code").to_list() == [code, None]
    (reason,) = lines.get_column("reject_reason").drop_nulls().to_list()
    field = next(iter(changes))
    assert reason.startswith(f"{field} '") and "\n" not in reason and "\r" not in reason
    assert len(reason) <= MAX_REASON_CHARS


def test_a_last_line_cut_short_without_a_line_break_is_rejected_not_read_with_its_fields_cut(
    tmp_path: Path,
) -> None:
    """The till's half-written last line (its points 150 cut to 15, the fields after them not yet
    written, no line break after it) is a reject naming the line; before, it was read padded with
    empty fields: 15 points burned instead of 150."""
    text = csv_text([row(transaction_id="T1"), row(transaction_id="T2", points_burned="150")])
    cut = text[: text.rindex(",150,") + len(",15")]  # written up to here when it was fetched
    result = run_file(tmp_path, "till.csv", cut)
    lines = result.lines
    assert lines.select("transaction_id", "source_line", "reject_code").rows() == [
        ("T1", 2, None), ("T2", 3, "R019_WRONG_FIELD_COUNT")]
    reason = lines.get_column("reject_reason").to_list()[1]
    assert "18 fields where the header has 19" in reason and "no line break" in reason
    # the same line complete, without a line break after it, is read
    whole = run_file(tmp_path, "whole.csv", text.rstrip("\n"))
    assert whole.summary["rows_rejected"] == 0
    assert whole.checkouts.get_column("points_burned").to_list() == [Decimal(0), Decimal(150)]


def test_an_excel_sep_line_before_the_header_is_read_as_the_delimiter_it_names(tmp_path: Path) -> None:
    """``sep=;`` on the first line (written for Excel) names the delimiter: the file is read, its
    header on line 2; before, it was unreadable as a file without a header."""
    text = csv_text([row(), row(transaction_id="T2")], delimiter=";")
    excel = "sep=;\r\n" + text.replace("\n", "\r\n")
    result = run_file(tmp_path, "sep.csv", excel, format={"delimiter": ";"})
    assert not result.unreadable, result.unreadable
    assert result.lines.get_column("source_line").to_list() == [3, 4]
    assert result.summary["rows_valid"] == 2
    other = run_file(tmp_path, "sep_comma.csv", "sep=,\n" + text, format={"delimiter": ";"})
    (unreadable,) = other.unreadable
    assert "sep=," in unreadable.reason and "format.delimiter is ';'" in unreadable.reason


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_named_as_such_not_as_binary(
    tmp_path: Path, encoding: str
) -> None:
    result = run_file(tmp_path, "wide.csv", csv_text([row()]).encode(encoding))
    (unreadable,) = result.unreadable
    assert "UTF-16 without a byte order mark" in unreadable.reason and "binary" not in unreadable.reason
