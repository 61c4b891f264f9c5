"""CSV exports joined or damaged on the way: a header again mid-file, mixed line breaks, a UTF-16
byte order mark, a stray quote. Each bad record is named by file, line and field (or the file is
unreadable, naming the line, when the rest cannot be read safely); the rest of the file is read.

Expected figures come from the rows the test writes, never from the reader.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.config import Feed
from pipeline.core.transform import TransformResult, transform_files
from pipeline.records import CANONICAL_COLUMNS
from tests.core.helpers import NOW, csv_text, row

FEED = Feed.model_validate({"name": "joined", "timezone": "Europe/London", "format": {"kind": "csv"}})
ROWS = [row(transaction_id=f"T{n}", line_total="5.00") for n in range(1, 5)]  # 5.00 each


def run(tmp_path: Path, data: bytes, name: str = "pos.csv") -> TransformResult:
    path = tmp_path / name
    path.write_bytes(data)
    good = tmp_path / "good.csv"
    good.write_text(csv_text([row(transaction_id="G1", line_total="5.00")]), encoding="utf-8")
    result = transform_files([path, good], FEED, now=NOW)
    assert "good.csv" not in {e.file for e in result.unreadable}
    return result


def rejects(result: TransformResult) -> list[tuple[str, int, str, str]]:
    return [(r["source_file"], r["source_line"], r["reject_code"], r["reject_reason"])
            for r in result.rejects.iter_rows(named=True)]


def valid_ids(result: TransformResult) -> list[str]:
    return sorted(result.checkouts.get_column("transaction_id").to_list())


@pytest.mark.parametrize(
    ("header", "line_break"),
    [
        pytest.param(",".join(CANONICAL_COLUMNS), "\n", id="same"),
        pytest.param(",".join(f" {c.upper()}" for c in CANONICAL_COLUMNS), "\n", id="other_case_and_blanks"),
        pytest.param(",".join(CANONICAL_COLUMNS), "\r", id="careful_reader"),
    ],
)
def test_the_header_again_mid_file_is_one_reject_and_the_rest_is_read(
    tmp_path: Path, header: str, line_break: str
) -> None:
    first, second = csv_text(ROWS[:2]), csv_text(ROWS[2:])
    text = first + header + "\n" + second.split("\n", 1)[1]  # two exports, joined
    result = run(tmp_path, text.replace("\n", line_break, 1).encode())
    assert valid_ids(result) == ["G1", "T1", "T2", "T3", "T4"]
    assert Decimal(result.summary["currencies"]["GBP"]["amount_valid"]) == Decimal("25.00")
    # the header's names are no currency: its line counts among lines without one, with no money
    assert set(result.summary["currencies"]) == {"GBP", ""}
    assert result.summary["currencies"][""]["amount_in"] == "0.00"
    [(file, line, code, reason)] = rejects(result)
    assert (file, line, code) == ("pos.csv", 4, "R035_REPEATED_HEADER")
    assert "repeats the header" in reason


def test_a_header_in_another_order_mid_file_makes_the_file_unreadable_naming_its_line(tmp_path: Path) -> None:
    columns = list(CANONICAL_COLUMNS)
    swapped = columns.copy()
    swapped[columns.index("quantity")], swapped[columns.index("unit_price")] = "unit_price", "quantity"
    second = [",".join(r[c] for c in swapped) for r in ROWS[2:]]
    text = csv_text(ROWS[:2]) + ",".join(swapped) + "\n" + "\n".join(second) + "\n"
    result = run(tmp_path, text.encode())
    [error] = result.unreadable
    assert error.file == "pos.csv"
    assert "line 4 is a header other than the file's first" in error.reason
    assert valid_ids(result) == ["G1"]  # never the quantity read as the price


def test_crlf_mixed_with_lf_reads_every_record_on_its_line(tmp_path: Path) -> None:
    lines = csv_text(ROWS).split("\n")
    text = "\r\n".join(lines[:3]) + "\n" + "\n".join(lines[3:])
    result = run(tmp_path, text.encode())
    assert valid_ids(result) == ["G1", "T1", "T2", "T3", "T4"] and not rejects(result)
    lines_of = dict(zip(result.lines.get_column("transaction_id"), result.lines.get_column("source_line"),
                        strict=True))
    assert [lines_of[f"T{n}"] for n in range(1, 5)] == [2, 3, 4, 5]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-8-sig"])
def test_a_byte_order_mark_reads_as_plain_utf8_does(tmp_path: Path, encoding: str) -> None:
    text = csv_text([*ROWS[:3], row(transaction_id="T4", product_name="Caf\u00e9", line_total="5.00")])
    data = b"\xfe\xff" + text.encode("utf-16-be") if encoding == "utf-16-be-bom" else text.encode(encoding)
    plain = run(tmp_path, text.encode(), "plain.csv")
    result = run(tmp_path, data)
    assert not result.unreadable and not rejects(result)
    assert result.items.drop("source_file").equals(plain.items.drop("source_file"))


@pytest.mark.parametrize(
    ("value", "why"),
    [('"Tea', "a quoted field is not closed"), ('"Tea"s', "text follows a closing quote")],
)
def test_a_stray_quote_names_file_line_and_column_and_the_rest_is_read(
    tmp_path: Path, value: str, why: str
) -> None:
    lines = csv_text(ROWS).split("\n")
    lines[2] = lines[2].replace(",Tea,", f",{value},", 1)
    result = run(tmp_path, "\n".join(lines).encode())
    assert valid_ids(result) == ["G1", "T1", "T3", "T4"]
    [(file, line, code, reason)] = rejects(result)
    assert (file, line, code) == ("pos.csv", 3, "R020_UNBALANCED_QUOTE")
    assert why in reason and "line 3, column 'product_name'" in reason


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_file_not_in_its_encoding_names_the_line_of_the_first_bad_byte(tmp_path: Path, kind: str) -> None:
    import json

    rows = [*ROWS[:2], row(transaction_id="T3", product_name="Caf\u00e9", line_total="5.00")]
    if kind == "csv":
        text = csv_text(rows)
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    path = tmp_path / f"pos.{kind}"
    path.write_bytes(text.encode("latin-1"))  # the feed reads UTF-8
    the_feed = Feed.model_validate({"name": "enc", "timezone": "Europe/London", "format": {"kind": kind}})
    [error] = transform_files([path], the_feed, now=NOW).unreadable
    assert "not valid UTF-8 (byte 0xe9 on line 4," in error.reason if kind == "csv" else (
        "not valid UTF-8 (byte 0xe9 on line 3," in error.reason)


def test_a_repeated_header_with_an_unnamed_column_is_still_a_repeat(tmp_path: Path) -> None:
    first, second = csv_text(ROWS[:2]), csv_text(ROWS[2:])
    header = first.split("\n", 1)[0] + ","  # an unnamed last column (a trailing delimiter)
    lines = [line + "," for line in (first + second.split("\n", 1)[1]).rstrip("\n").split("\n")[1:]]
    text = "\n".join([header, *lines[:2], header, *lines[2:]]) + "\n"
    result = run(tmp_path, text.encode())
    assert not result.unreadable and valid_ids(result) == ["G1", "T1", "T2", "T3", "T4"]
    assert [(r[1], r[2]) for r in rejects(result)] == [(4, "R035_REPEATED_HEADER")]
