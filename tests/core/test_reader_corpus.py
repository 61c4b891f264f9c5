"""A corpus of awkward export files, each read into exactly the records it holds.

Every file is built here (no binary fixtures to rot): line-ending styles, blank lines, ragged
rows, quotes, encodings, NULs, huge fields, duplicate headers, odd ids and offsets, numeric JSON
ids, empty and header-only files. Each case states what must come out: the rows read, the reject
code of each rejected line, or the one-line reason a whole file is unreadable.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.core.parse import MAX_REASON_CHARS, read_file
from pipeline.core.rejects import RejectCode
from pipeline.core.transform import transform_files
from pipeline.errors import UnreadableFileError
from pipeline.records import CANONICAL_COLUMNS
from tests.core.helpers import NOW, feed, row

R = RejectCode
HEADER = ",".join(CANONICAL_COLUMNS)


def line(n: int, **changes: object) -> str:
    """One canonical CSV record of its own transaction ``T<n>``."""
    values = row(**{"transaction_id": f"T{n}", **changes})

    def cell(value: str) -> str:
        if any(ch in value for ch in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    return ",".join(cell(values[c]) for c in CANONICAL_COLUMNS)


def good(count: int, start: int = 1) -> list[str]:
    return [line(n) for n in range(start, start + count)]


def text(lines: list[str], ending: str = "\n", *, final: bool = True) -> bytes:
    return (ending.join(lines) + (ending if final else "")).encode()


@dataclass(frozen=True)
class Case:
    """One corpus file and what reading it must give."""

    name: str
    data: bytes
    rows: int = 0  # rows read (valid + rejected)
    rejects: dict[int, RejectCode] = field(default_factory=dict)  # source_line -> code of that line
    lines: list[int] | None = None  # the source_line of every row read, when it matters
    unreadable: str | None = None  # a word the unreadable file's reason holds
    settings: dict[str, object] = field(default_factory=dict)


def _nul_after_8k() -> bytes:
    lines = [HEADER, *good(200)]
    lines[150] = line(150, product_name="Tea\x00leaves")
    return text(lines)


def _huge_field() -> bytes:
    return text([HEADER, line(1, product_name="x" * 2_000_000), *good(2, 2)])


def _xml_one_line() -> bytes:
    body = b"<Transaction>secret-customer-4711</Transaction>" * 2000
    return b"<?xml version='1.0'?><POSLog>" + body + b"</POSLog>"


def _numeric_ids() -> bytes:
    base = {k: v for k, v in row().items() if v}
    one = {**base, "transaction_id": 12345678901234567890, "line_no": 1, "quantity": 2, "unit_price": 2.50}
    two = {**base, "transaction_id": 12345678901234567891, "line_no": 1, "quantity": 2, "unit_price": 2.5}
    three = {**base, "transaction_id": 1.5e3, "customer_id": 17850.0, "quantity": 2, "unit_price": 2.5}
    body = "\n".join(json.dumps(r) for r in (one, two, three))
    return body.replace('"unit_price": 2.5,', '"unit_price": 2.50,', 1).encode() + b"\n"


def _jsonl(records: list[dict[str, str]], ending: str = "\n") -> bytes:
    body = ending.join(json.dumps({k: v for k, v in r.items() if v}) for r in records)
    return (body + ending).encode()


CASES: list[Case] = [
    Case("lf.csv", text([HEADER, *good(3)]), rows=3, lines=[2, 3, 4]),
    Case("crlf.csv", text([HEADER, *good(3)], "\r\n"), rows=3, lines=[2, 3, 4]),
    Case("cr_only.csv", text([HEADER, *good(3)], "\r"), rows=3, lines=[2, 3, 4]),
    Case("cr_only_no_final_break.csv", text([HEADER, *good(3)], "\r", final=False), rows=3, lines=[2, 3, 4]),
    Case(
        "mixed_endings.csv",
        (HEADER + "\r\n" + line(1) + "\n" + line(2) + "\r" + line(3) + "\r\n").encode(),
        rows=3,
        lines=[2, 3, 4],
    ),
    Case("crlf_and_lf.csv", (HEADER + "\r\n" + line(1) + "\n" + line(2) + "\r\n").encode(), rows=2,
         lines=[2, 3]),
    Case("no_final_newline.csv", text([HEADER, *good(2)], final=False), rows=2, lines=[2, 3]),
    Case("blank_first_line.csv", text(["", HEADER, *good(2)]), rows=2, lines=[3, 4]),
    Case("blank_first_line_cr.csv", text(["", HEADER, *good(2)], "\r"), rows=2, lines=[3, 4]),
    Case("blank_lines_between.csv", text([HEADER, line(1), "", "", line(2), "", line(3)]), rows=3,
         lines=[2, 5, 7]),
    Case("whitespace_lines.csv", text([HEADER, line(1), "   ", "\t", line(2)]), rows=2, lines=[2, 5]),
    Case("empty_fields_line.csv", text([HEADER, line(1), "," * 18, line(2)]), rows=2, lines=[2, 4]),
    Case("trailing_blank_lines.csv", text([HEADER, *good(2), "", "", ""]), rows=2),
    Case("two_extra_fields.csv", text([HEADER, line(1), line(2) + ",x,y", line(3)]), rows=3,
         rejects={3: R.WRONG_FIELD_COUNT}),
    Case("two_extra_fields_cr.csv", text([HEADER, line(1), line(2) + ",x,y", line(3)], "\r"), rows=3,
         rejects={3: R.WRONG_FIELD_COUNT}),
    Case("trailing_delimiter_one_row.csv", text([HEADER, line(1) + ",", line(2)]), rows=2),
    Case("trailing_delimiter_everywhere.csv", text([HEADER + ",", line(1) + ",", line(2) + ","]), rows=2),
    Case("short_row.csv", text([HEADER, line(1), "T2,S1", line(3)]), rows=3, rejects={3: R.MISSING_FIELD}),
    Case("stray_quote_in_unquoted_field.csv", text([HEADER, line(1).replace("Tea", '12" pizza'), line(2)]),
         rows=2),
    Case("unclosed_quote_middle.csv", text([HEADER, line(1), line(2).replace("Tea", '"Tea'), line(3)]),
         rows=3, rejects={3: R.UNBALANCED_QUOTE}),
    Case("unclosed_quote_last_line.csv", text([HEADER, *good(2), line(3).replace("Tea", '"Tea')]), rows=3,
         rejects={4: R.UNBALANCED_QUOTE}),
    Case("text_after_closing_quote.csv", text([HEADER, line(1).replace("Tea", '"Tea"s'), line(2)]), rows=2,
         rejects={2: R.UNBALANCED_QUOTE}),
    Case("quoted_multiline.csv", text([HEADER, line(1, product_name="Tea\nwith\nmilk"), line(2)]), rows=2,
         lines=[2, 5]),
    Case("quoted_multiline_crlf.csv",
         text([HEADER, line(1, product_name="Tea\r\nwith milk"), line(2)], "\r\n"), rows=2, lines=[2, 4]),
    Case("quoted_multiline_cr.csv", text([HEADER, line(1, product_name="Tea\rmilk"), line(2)], "\r"),
         rows=2, lines=[2, 4]),
    Case("quoted_delimiters_and_quotes.csv",
         text([HEADER, line(1, product_name='Tea, "Earl" Grey'), line(2)]), rows=2),
    Case("utf8_bom_crlf.csv", b"\xef\xbb\xbf" + text([HEADER, *good(2)], "\r\n"), rows=2),
    Case("utf16le_bom.csv", b"\xff\xfe" + "\r\n".join([HEADER, *good(2)]).encode("utf-16-le"), rows=2),
    Case("utf16be_bom.csv", b"\xfe\xff" + "\n".join([HEADER, *good(2)]).encode("utf-16-be"), rows=2),
    Case("utf32le_bom.csv", b"\xff\xfe\x00\x00" + "\n".join([HEADER, *good(2)]).encode("utf-32-le"), rows=2),
    Case("cp1252_without_setting.csv", text([HEADER, line(1, product_name="Café")]).replace(
        "é".encode(), b"\xe9"), unreadable="not valid UTF-8"),
    Case("nul_after_8k.csv", _nul_after_8k(), rows=200, rejects={151: R.NUL_IN_ROW}),
    Case("nul_in_small_file.csv", text([HEADER, line(1, product_id="P\x001"), line(2)]), rows=2,
         rejects={2: R.NUL_IN_ROW}),
    Case("binary_noise.csv", random.Random(7).randbytes(4096), unreadable="binary"),
    Case("png_as_csv.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), unreadable="PNG"),
    Case("gzip_as_csv.csv", gzip.compress(text([HEADER, *good(2)])), unreadable="gzip"),
    Case("xlsx_as_csv.csv", b"PK\x03\x04" + bytes(200), unreadable="ZIP"),
    Case("xml_as_csv.csv", _xml_one_line(), unreadable="required columns missing"),
    Case("huge_field.csv", _huge_field(), rows=3, rejects={2: R.FIELD_TOO_LONG}),  # read, then too long
    Case("duplicate_header.csv", text([HEADER.replace("register_id", "store_id"), *good(1)]),
         unreadable="store_id"),
    Case("duplicate_header_after_strip.csv", text([HEADER.replace("register_id", " store_id "), *good(1)]),
         unreadable="twice"),
    Case("empty.csv", b"", unreadable="empty"),
    Case("only_blank_lines.csv", b"\r\n\r\n  \n\r", unreadable="empty"),
    Case("bom_only.csv", b"\xef\xbb\xbf", unreadable="empty"),
    Case("header_only.csv", text([HEADER]), rows=0),
    Case("header_only_no_break.csv", HEADER.encode(), rows=0),
    Case("header_only_cr.csv", text([HEADER], "\r"), rows=0),
    Case("zero_width_space_in_id.csv", text([HEADER, line(1, transaction_id="T\u200b1"), line(2)]), rows=2,
         rejects={2: R.CONTROL_CHARACTER_IN_ID}),
    Case("bidi_override_in_customer.csv", text([HEADER, line(1, customer_id="\u202e1C"), line(2)]), rows=2,
         rejects={2: R.CONTROL_CHARACTER_IN_ID}),
    Case("leading_zero_ids.csv", text([HEADER, line(1, store_id="007", product_id="000123")]), rows=1),
    Case("offset_plus_25.csv", text([HEADER, line(1, timestamp="2026-11-20T10:00:00+25:00"), line(2)]),
         rows=2, rejects={2: R.OFFSET_OUT_OF_RANGE}),
    Case("offset_plus_14_is_fine.csv", text([HEADER, line(1, timestamp="2026-11-20T23:00:00+14:00")]),
         rows=1),
    Case("year_1970.csv", text([HEADER, line(1, timestamp="1970-01-01 00:00:00", business_date="")]),
         rows=1, rejects={2: R.DATE_TOO_EARLY}),
    Case("wrong_delimiter.csv", text([HEADER.replace(",", ";"), *(g.replace(",", ";") for g in good(2))]),
         unreadable="wrong delimiter"),
    Case("numeric_ids.jsonl", _numeric_ids(), rows=3, settings={"format": {"kind": "jsonl"}}),
    Case("jsonl_bad_line.jsonl", _jsonl([row(transaction_id="T1")]) + b"{not json\n"
         + _jsonl([row(transaction_id="T3")]), rows=3, rejects={2: R.NOT_JSON},
         settings={"format": {"kind": "jsonl"}}),
    Case("jsonl_array_line.jsonl", _jsonl([row(transaction_id="T1")]) + b"[1, 2]\n", rows=2,
         rejects={2: R.NOT_JSON}, settings={"format": {"kind": "jsonl"}}),
    Case("jsonl_cr_only.jsonl", _jsonl([row(transaction_id="T1"), row(transaction_id="T2")], "\r"), rows=2,
         lines=[1, 2], settings={"format": {"kind": "jsonl"}}),
    Case("jsonl_nul_escape.jsonl", _jsonl([row(transaction_id="T1", product_name="a\x00b"),
                                           row(transaction_id="T2")]), rows=2, rejects={1: R.NUL_IN_ROW},
         settings={"format": {"kind": "jsonl"}}),
    Case("jsonl_utf16.jsonl", b"\xff\xfe" + _jsonl([row(transaction_id="T1")]).decode().encode("utf-16-le"),
         rows=1, settings={"format": {"kind": "jsonl"}}),
]


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_file(tmp_path: Path, case: Case) -> None:
    path = tmp_path / case.name
    path.write_bytes(case.data)
    the_feed = feed(**case.settings)
    result = transform_files([path], the_feed, now=NOW)
    summary = result.summary
    if case.unreadable is not None:
        assert [e.file for e in result.unreadable] == [case.name]
        reason = result.unreadable[0].reason
        assert case.unreadable.lower() in reason.lower()
        assert "\n" not in reason and len(reason) <= MAX_REASON_CHARS
        assert "secret-customer" not in reason
        assert summary["rows_in"] == 0
        return
    assert not result.unreadable, result.unreadable
    assert summary["rows_in"] == case.rows == summary["rows_valid"] + summary["rows_rejected"]
    lines = result.lines
    failing = lines.filter(lines.get_column("reject_code").is_not_null())
    own = {
        n: c
        for n, c in zip(failing.get_column("source_line"), failing.get_column("reject_code"), strict=True)
        if c != R.SIBLING_REJECTED
    }
    assert own == {n: c.value for n, c in case.rejects.items()}
    if case.lines is not None:
        assert lines.get_column("source_line").to_list() == case.lines
    for reason in failing.get_column("reject_reason").to_list():
        assert "\n" not in reason and len(reason) <= MAX_REASON_CHARS


def test_numeric_json_ids_keep_every_digit(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_bytes(_numeric_ids())
    lines = read_file(path, feed(format={"kind": "jsonl"}))
    assert lines.get_column("transaction_id").to_list() == [
        "12345678901234567890", "12345678901234567891", "1500.0"
    ]
    assert lines.get_column("customer_id").to_list()[2] == "17850.0"
    assert lines.get_column("unit_price").to_list()[:2] == ["2.50", "2.5"]  # as written
    result = transform_files([path], feed(format={"kind": "jsonl"}), now=NOW)
    ids = sorted(result.checkouts.get_column("transaction_id").to_list())
    assert ids[:2] == ["12345678901234567890", "12345678901234567891"]  # two sales stay two


def test_float_customer_ids_are_normalised_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "float_ids.csv"
    path.write_bytes(text([HEADER, line(1, customer_id="17850.0"), line(2, customer_id="12.50")]))
    plain = read_file(path, feed())
    assert plain.get_column("customer_id").to_list() == ["17850.0", "12.50"]
    asked = read_file(path, feed(format={"normalize_float_customer_ids": True}))
    assert asked.get_column("customer_id").to_list() == ["17850", "12.50"]
    assert asked.get_column("src:customer_id").to_list() == ["17850.0", "12.50"]  # as the file had it


def test_clean_files_read_the_same_by_both_readers(tmp_path: Path) -> None:
    """The fast reader and the careful one agree on every clean file of the corpus."""
    from pipeline.core import parse

    fmt = feed().format
    for case in CASES:
        if case.unreadable or case.settings or case.rejects:
            continue
        data = parse._decode(case.data, fmt, case.name)
        fast = parse._read_csv(data, fmt, case.name)
        careful = parse._careful_csv(data, fmt, case.name)
        columns = [c for c in careful.columns if c not in (parse.READ_CODE, parse.READ_REASON)]
        assert fast.select(columns).rows() == careful.select(columns).rows(), case.name


def test_a_merged_quote_never_swallows_records() -> None:
    """An unclosed quote that a later record's quote seems to close leaves those records alone."""
    from pipeline.core.careful_csv import records

    body = "\n".join([line(1).replace("Tea", '"Tea'), line(2), line(3).replace("Tea", '12"'), line(4)])
    found = list(records(body, delimiter=",", quote='"', width=len(CANONICAL_COLUMNS), first_line=2))
    assert [r.line for r in found] == [2, 3, 4, 5]
    assert Counter(r.code for r in found) == Counter({None: 3, R.UNBALANCED_QUOTE: 1})


def test_unreadable_reason_is_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(_xml_one_line())
    with pytest.raises(UnreadableFileError) as caught:
        read_file(path, feed())
    assert len(caught.value.reason) <= MAX_REASON_CHARS and "\n" not in caught.value.reason
