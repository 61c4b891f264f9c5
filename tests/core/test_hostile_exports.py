"""Variations of one real export as careless tills and spreadsheets write them: each is read to the
cent, or refused naming the file, the line and the field; never read as empty, never wrong money.

The export is the UCI Online Retail sample (tests/fixtures/online_retail, CC BY 4.0) read with its
own feed file; the canonical layout is used where a column it lacks (discount, points) matters.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tomllib
from dataclasses import dataclass, field
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


@pytest.mark.parametrize(("field", "value"), [
    ("timestamp", "2026-11-20\n10:00:00"),
    ("business_date", "2026-11-20\r\n"),
    ("currency", "GBP\n"),
    ("transaction_type", "sale\n"),
    ("quantity", "\n2"),
    ("unit_price", "2.50\n"),
    ("discount", "0\r\n"),
    ("line_total", "5.00\n"),
    ("transaction_total", "5.00\n"),
    ("points_burned", "\n10"),
    ("line_no", "1\n"),
    ("transaction_id", "T1\n"),
    ("store_id", "S1\n"),
    ("register_id", "\nR1"),
    ("customer_id", "C1\n"),
    ("product_id", "P1\n"),
    ("original_transaction_id", "T0\n"),
])
def test_a_line_break_in_a_field_that_cannot_hold_one_is_a_reject_naming_file_line_and_field(
    tmp_path: Path, field: str, value: str
) -> None:
    """A quoted field holding a line break where no till writes one (a timestamp, an amount, a
    code, an id): before, the value was read with the break trimmed or taken as a blank, and sent.
    The reject names the file, the line and the field, never quotes the value, and the lines
    before and after it are read."""
    text = csv_text([row(transaction_id="T0"), row(**{field: value}), row(transaction_id="T2")])
    result = run_file(tmp_path, "breaks.csv", text)
    lines = result.lines
    rejected = lines.filter(lines.get_column("reject_code").is_not_null())
    assert rejected.select("source_file", "source_line", "reject_code", "reject_field").rows() == [
        ("breaks.csv", 3, "R036_LINE_BREAK_IN_FIELD", field)]
    (reason,) = rejected.get_column("reject_reason").to_list()
    assert reason.startswith(f"{field} holds a line break") and "\n" not in reason
    assert value.strip() not in reason.removeprefix(field)
    assert sorted(result.checkouts.get_column("transaction_id").to_list()) == ["T0", "T2"]


@pytest.mark.parametrize("field", ["product_name", "product_category"])
def test_a_line_break_in_free_text_is_read_as_written(tmp_path: Path, field: str) -> None:
    """A product's name or category may be written on two lines: it is text, not a code."""
    result = run_file(tmp_path, "names.csv", csv_text([row(**{field: "Earl Grey\nloose leaf"})]))
    assert result.summary["rows_rejected"] == 0 and result.summary["rows_valid"] == 1


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


def test_control_bytes_before_utf16_text_are_binary_not_utf16(tmp_path: Path) -> None:
    """Found by the reader's property test: every other byte NUL, the others control bytes, is
    binary garbage, not UTF-16 text."""
    garbage = bytes(range(32)) * 16 + csv_text([row()] * 50).encode("utf-16")
    (unreadable,) = run_file(tmp_path, "garbage.csv", garbage).unreadable
    assert "binary" in unreadable.reason and "UTF-16" not in unreadable.reason


# ---- variations that already read right, or are refused naming file, line and field -------------

RETAIL_TEXT = (FIXTURE / "online_retail_sample.csv").read_text(encoding="utf-8")
RETAIL_ROWS = list(csv.reader(io.StringIO(RETAIL_TEXT)))
PRICE = RETAIL_ROWS[0].index("UnitPrice")
NAME = RETAIL_ROWS[0].index("Description")
DATE = RETAIL_ROWS[0].index("InvoiceDate")
GZ = gzip.compress(RETAIL_TEXT.encode())


def retail(rows: list[list[str]] | None = None, *, delimiter: str = ",", ending: str = "\n",
           quote_all: bool = False, decimal_comma: bool = False, final: bool = True) -> str:
    """The Online Retail sample (or ``rows`` of it) written as another tool would write it."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=ending,
                        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    for number, values in enumerate(rows or RETAIL_ROWS):
        values = list(values)
        if decimal_comma and number:
            values[PRICE] = values[PRICE].replace(".", ",")
        writer.writerow(values)
    text = out.getvalue()
    return text if final else text[: -len(ending)]


def changed(line: int, column: int, value: str) -> list[list[str]]:
    """The sample's rows with the value of ``column`` on physical ``line`` (header: 1) replaced."""
    rows = [list(r) for r in RETAIL_ROWS]
    rows[line - 1][column] = value
    return rows


def reordered() -> list[list[str]]:
    order = list(reversed(range(len(RETAIL_ROWS[0]))))
    return [[r[i] for i in order] for r in RETAIL_ROWS]


@dataclass(frozen=True)
class Variation:
    """One variation of the export: its bytes, the format settings it needs, and what reading it
    gives: every transaction read with the sample's own total, and these lines rejected (the
    sample's own rejects aside), or the file unreadable with this word in its reason."""

    name: str
    data: bytes
    format: dict[str, object] = field(default_factory=dict)
    rejects: dict[int, str] = field(default_factory=dict)
    unreadable: str | None = None
    shift: tuple[int, int] = (0, 0)  # the sample's lines after the first are this many lines later
    extra_rows: int = 0  # records the sample does not have (a repeated header)


def retail_jsonl(ending: str = "\n", *, last: str = "") -> list[str]:
    """The sample as JSON Lines, numbers as JSON numbers (prices as floats: ``2.55``), one line each;
    ``last`` ends the last line (``,`` for a trailing comma)."""
    header, *rows = RETAIL_ROWS
    numbers = {"Quantity": int, "UnitPrice": float, "CustomerID": float}
    def value(key: str, text: str) -> object:
        return numbers[key](text) if key in numbers and text else text or None

    lines = [json.dumps({k: value(k, v) for k, v in zip(header, r, strict=True)}) for r in rows]
    lines[-1] += last
    return [line + ending for line in lines]


EXCEL = {"delimiter": ";", "decimal_comma": True}
JSONL = {"kind": "jsonl"}
VARIATIONS = [
    Variation("excel_bom_crlf_semicolon_comma_trailing_column_blank_lines.csv",
              b"\xef\xbb\xbf" + (retail(delimiter=";", ending=";\r\n", decimal_comma=True)
                                 + "\r\n\r\n").encode(), EXCEL),
    Variation("excel_quoted_numbers_no_final_newline.csv",
              retail(delimiter=";", ending="\r\n", quote_all=True, decimal_comma=True, final=False).encode(),
              EXCEL),
    Variation("utf16le_bom_tabs.csv", b"\xff\xfe" + retail(delimiter="\t", ending="\r\n").encode("utf-16-le"),
              {"delimiter": "\t"}),
    Variation("latin1_accents.csv", retail(changed(2, NAME, "CAFÉ CRÈME NOËL")).encode("latin-1"),
              {"encoding": "latin-1"}),
    Variation("latin1_read_as_utf8.csv", retail(changed(2, NAME, "CAFÉ")).encode("latin-1"),
              unreadable="not valid UTF-8 (byte 0xc9 on line 2"),
    Variation("gzip_named_gz.csv.gz", gzip.compress(RETAIL_TEXT.encode())),
    Variation("gzip_of_two_members.csv.gz",  # a till appending to its export one gzip member at a time
              gzip.compress(RETAIL_TEXT[:5000].encode()) + gzip.compress(RETAIL_TEXT[5000:].encode())),
    Variation("gzip_json.jsonl.gz", gzip.compress("".join(retail_jsonl()).encode()), JSONL, shift=(0, -1)),
    Variation("gzip_cut_short.csv.gz", gzip.compress(RETAIL_TEXT.encode())[:-200],
              unreadable="gzip data ends before its end (cut short"),
    Variation("gzip_corrupt.csv.gz", GZ[:40] + bytes(b ^ 0xFF for b in GZ[40:80]) + GZ[80:],
              unreadable="gzip data is corrupt"),
    Variation("text_named_gz.csv.gz", RETAIL_TEXT.encode(), unreadable="named .gz but not gzip-compressed"),
    Variation("gzip_bomb.csv.gz", gzip.compress(RETAIL_TEXT.encode() + b"\n" * 100_000),
              {"max_decompressed_bytes": 65536}, unreadable="decompresses to more than 65536 bytes"),
    Variation("gzip_of_gzip.csv.gz", gzip.compress(gzip.compress(RETAIL_TEXT.encode())),
              unreadable="gzip-compressed"),
    Variation("gzip_named_csv.csv", gzip.compress(RETAIL_TEXT.encode()), unreadable="gzip-compressed"),
    Variation("columns_in_another_order.csv", retail(reordered()).encode()),
    Variation("extra_unknown_column.csv",
              retail([[*r, "Till" if i == 0 else "7"] for i, r in enumerate(RETAIL_ROWS)]).encode()),
    Variation("header_again_mid_file.csv",
              retail([*RETAIL_ROWS[:101], RETAIL_ROWS[0], *RETAIL_ROWS[101:]]).encode(),
              rejects={102: "R035_REPEATED_HEADER"}, shift=(101, 1), extra_rows=1),
    Variation("quoted_line_break_in_a_timestamp.csv",
              retail(changed(2, DATE, RETAIL_ROWS[1][DATE].replace(" ", "\n"))).encode(),
              rejects={2: "R036_LINE_BREAK_IN_FIELD"}, shift=(2, 1)),
    Variation("quoted_line_break_after_a_price.csv",
              retail(changed(3, PRICE, RETAIL_ROWS[2][PRICE] + "\r\n")).encode(),
              rejects={3: "R036_LINE_BREAK_IN_FIELD"}, shift=(3, 1)),
    Variation("quoted_line_break_in_a_name.csv", retail(changed(2, NAME, "HEART\nHOLDER")).encode(),
              shift=(2, 1)),
    Variation("nul_in_a_name.csv", retail(changed(3, NAME, "LAN\x00TERN")).encode(),
              rejects={3: "R022_NUL_IN_ROW"}),
    Variation("very_long_line.csv", retail(changed(4, NAME, "X" * 200_000)).encode(),
              rejects={4: "R031_FIELD_TOO_LONG"}),
    Variation("unterminated_quote_at_the_end.csv",
              (retail(final=False) + ',"UNFINISHED').encode(), rejects={328: "R020_UNBALANCED_QUOTE"}),
    Variation("price_with_a_pound_sign.csv", retail(changed(2, PRICE, "£2.55")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_in_parentheses.csv", retail(changed(2, PRICE, "(2.55)")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_with_a_trailing_minus.csv", retail(changed(2, PRICE, "2.55-")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_in_scientific_notation.csv", retail(changed(2, PRICE, "2.55e0")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_grouped_with_a_comma.csv", retail(changed(2, PRICE, "1,234.56")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_decimal_comma_not_set.csv", retail(changed(2, PRICE, "2,55")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_of_thousands_of_digits.csv", retail(changed(2, PRICE, "9" * 3000)).encode(),
              rejects={2: "R026_NUMBER_TOO_LARGE"}),
    Variation("price_float_noise.csv", retail(changed(2, PRICE, "2.5500000000000003")).encode(),
              rejects={2: "R002_BAD_NUMBER"}),
    Variation("price_padded_with_blanks.csv", retail(changed(2, PRICE, " 2.55 ")).encode()),
    Variation("price_with_trailing_zeros.csv", retail(changed(2, PRICE, "2.5500")).encode()),
    # JSON Lines has no header: each of the sample's lines is one line earlier
    Variation("json_floats.jsonl", "".join(retail_jsonl()).encode(), JSONL, shift=(0, -1)),
    Variation("json_bom_crlf.jsonl", b"\xef\xbb\xbf" + "".join(retail_jsonl("\r\n")).encode(), JSONL,
              shift=(0, -1)),
    Variation("json_trailing_comma.jsonl", "".join(retail_jsonl(last=",")).encode(), JSONL,
              rejects={327: "R021_NOT_JSON"}, shift=(0, -1)),
    Variation("json_float_noise.jsonl",
              "".join(retail_jsonl()).replace('"UnitPrice": 2.55,', '"UnitPrice": 2.5500000000000003,', 1)
              .encode(), JSONL, rejects={1: "R002_BAD_NUMBER"}, shift=(0, -1)),
    Variation("json_top_level_array.jsonl",
              ("[" + ",".join(line.strip() for line in retail_jsonl()) + "]").encode(), JSONL,
              unreadable="line 1 is JSON but not an object"),
]


def _totals(result: TransformResult) -> dict[str, Decimal]:
    return dict(result.checkouts.select("transaction_id", "total").iter_rows())


@pytest.mark.parametrize("variation", VARIATIONS, ids=[v.name for v in VARIATIONS])
def test_a_variation_of_a_real_export_reads_to_the_cent_or_is_refused_by_file_line_and_field(
    tmp_path: Path, variation: Variation
) -> None:
    settings = tomllib.loads((FIXTURE / "online_retail.toml").read_text(encoding="utf-8"))
    settings.pop("source")
    plain = run_file(tmp_path, "plain.csv", RETAIL_TEXT, **settings)
    own = {line: code for line, code in plain.lines.select("source_line", "reject_code").iter_rows() if code}
    settings["format"] = {**settings["format"], **variation.format}
    result = run_file(tmp_path, variation.name, variation.data, **settings)
    if variation.unreadable is not None:
        (unreadable,) = result.unreadable
        assert unreadable.file == variation.name and variation.unreadable in unreadable.reason
        return
    assert not result.unreadable, result.unreadable
    lines = result.lines
    rejected = {line: code for line, code in lines.select("source_line", "reject_code").iter_rows()
                if code and code != "R099_SIBLING_REJECTED"}
    after, by = variation.shift
    assert {n: c for n, c in rejected.items() if n not in variation.rejects} == {
        n + (by if n > after else 0): c for n, c in own.items()}
    assert {n: rejected.get(n) for n in variation.rejects} == variation.rejects
    for line in variation.rejects:  # the reason names the field it is about
        reason, reject_field = lines.filter(lines.get_column("source_line") == line).select(
            "reject_reason", "reject_field").row(0)
        assert reason and "\n" not in reason and (reject_field == "record" or reason.startswith(reject_field))
    read, expected = _totals(result), _totals(plain)
    assert read == {t: expected[t] for t in read}  # every transaction read to the cent
    # and only the rejected ones are not (a line not read has no id: the sample's line tells it)
    at = dict(plain.lines.select("source_line", "transaction_id").iter_rows())
    hit = {at.get(n - (by if n > after else 0)) for n, c in variation.rejects.items()
           if c != "R035_REPEATED_HEADER"} | set(
        lines.filter(lines.get_column("reject_code").is_not_null()).get_column("transaction_id").drop_nulls())
    assert set(expected) - set(read) == set(expected) & hit
    assert result.summary["rows_in"] == plain.summary["rows_in"] + variation.extra_rows
