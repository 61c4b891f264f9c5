"""Readers: every format option, column mapping, defaults, templates, source lines, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.core.parse import READ_CODE, READ_REASON, read_file
from pipeline.errors import ConfigError, UnreadableFileError
from pipeline.records import CANONICAL_COLUMNS
from tests.core.helpers import csv_text, feed, row, run, write

EXPORT = (
    "TxnNo;Shop;When;Item;Name;Qty;Price;Cur\n"
    "A-1;S1;2026-11-20 10:00:00;P1;Café crème;2;2,50;EUR\n"
    "A-1;S1;2026-11-20 10:00:00;P2;Crêpe €;1;3,00;EUR\n"
)
MAPPING = {
    "transaction_id": "TxnNo",
    "store_id": "Shop",
    "timestamp": "When",
    "product_id": "Item",
    "product_name": "Name",
    "quantity": "Qty",
    "unit_price": "Price",
    "currency": "Cur",
}


def export_feed(**fmt: object) -> object:
    settings = {"delimiter": ";", "decimal_comma": True, "columns": MAPPING, **fmt}
    return feed(format=settings, timezone="Europe/Paris")


def test_canonical_csv_reads_every_column_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "pos.csv", csv_text([row(), row(line_no="2")]))
    lines = read_file(path, feed())
    assert lines.columns[: len(CANONICAL_COLUMNS)] == list(CANONICAL_COLUMNS)
    assert all(lines.schema[c] == pl.String for c in CANONICAL_COLUMNS)
    assert lines.get_column("source_line").to_list() == [2, 3]
    assert lines.get_column("source_file").to_list() == ["pos.csv", "pos.csv"]
    assert lines.get_column("unit_price").to_list() == ["2.50", "2.50"]  # not 2.5: text as exported


def test_source_name_overrides_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "staged-123.csv", csv_text([row()]))
    assert read_file(path, feed(), source_name="pos_20261120.csv").get_column("source_file")[0] == (
        "pos_20261120.csv"
    )


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiters(tmp_path: Path, delimiter: str) -> None:
    path = write(
        tmp_path, "pos.csv", csv_text([row(product_name="Tea; Earl | Grey\tx")], delimiter=delimiter)
    )
    lines = read_file(path, feed(format={"delimiter": delimiter}))
    assert lines.get_column("product_name")[0] == "Tea; Earl | Grey\tx"


def test_quote_char(tmp_path: Path) -> None:
    text = csv_text([row()]).replace("Tea", "'Tea, large'")
    lines = read_file(write(tmp_path, "q.csv", text), feed(format={"quote_char": "'"}))
    assert lines.get_column("product_name")[0] == "Tea, large"


def test_quoted_multiline_field_keeps_physical_lines(tmp_path: Path) -> None:
    rows = [row(product_name="Tea\nwith\nmilk"), row(line_no="2"), row(line_no="3", product_name="a\nb")]
    path = write(tmp_path, "ml.csv", csv_text(rows) + csv_text([row(line_no="4")]).split("\n", 1)[1])
    lines = read_file(path, feed())
    assert lines.get_column("source_line").to_list() == [2, 5, 6, 8]


def test_blank_lines_are_counted_and_dropped(tmp_path: Path) -> None:
    text = csv_text([row()]) + "\n" + csv_text([row(line_no="2")]).split("\n", 1)[1]
    lines = read_file(write(tmp_path, "blank.csv", text), feed())
    assert lines.get_column("source_line").to_list() == [2, 4]


def test_no_header_maps_positions(tmp_path: Path) -> None:
    text = "S1,A-1,2026-11-20 10:00:00,P1,2,2.50,GBP\n" * 2
    columns = {
        "store_id": "1",
        "transaction_id": "2",
        "timestamp": "3",
        "product_id": "4",
        "quantity": "5",
        "unit_price": "6",
        "currency": "7",
    }
    lines = read_file(write(tmp_path, "nh.csv", text), feed(format={"has_header": False, "columns": columns}))
    assert lines.get_column("transaction_id").to_list() == ["A-1", "A-1"]
    assert lines.get_column("source_line").to_list() == [1, 2]


def test_no_header_without_mapping_is_canonical_order(tmp_path: Path) -> None:
    text = csv_text([row()]).split("\n", 1)[1]
    lines = read_file(write(tmp_path, "nh.csv", text), feed(format={"has_header": False}))
    assert lines.select(CANONICAL_COLUMNS).row(0) == tuple(v or None for v in row().values())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "latin-1"])
def test_encodings(tmp_path: Path, encoding: str) -> None:
    text = EXPORT if encoding != "latin-1" else EXPORT.replace("€", "EUR")  # latin-1 has no euro sign
    data = text.encode(encoding)
    lines = read_file(write(tmp_path, "enc.csv", data), export_feed(encoding=encoding))
    names = lines.get_column("product_name").to_list()
    assert names[0] == "Café crème"
    assert names[1] == ("Crêpe €" if encoding != "latin-1" else "Crêpe EUR")
    assert lines.get_column("transaction_id").to_list() == ["A-1", "A-1"]  # BOM not in the header


def test_bom_is_stripped_even_when_encoding_says_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + csv_text([row()]).encode())
    lines = read_file(path, feed(format={"encoding": "utf-8"}))
    assert lines.get_column("transaction_id").to_list() == ["T1"]


def test_cp1252_file_transforms_with_exact_money(tmp_path: Path) -> None:
    path = write(tmp_path, "cp.csv", EXPORT.encode("cp1252"))
    from pipeline.core.transform import transform_files
    from tests.core.helpers import NOW

    result = transform_files([path], export_feed(encoding="cp1252"), now=NOW)
    assert result.summary["rows_rejected"] == 0
    assert result.summary["amount_in"] == "8.00"  # 2 × 2,50 + 3,00
    assert result.items.get_column("product_name").to_list() == ["Café crème", "Crêpe €"]


def test_decimal_comma_with_thousands_dots() -> None:
    result = run(
        [row(unit_price="1.234,50", quantity="1", line_total="1.234,50")],
        feed(format={"decimal_comma": True}),
    )
    assert str(result.items.get_column("unit_price")[0]) == "1234.5000"


def test_jsonl(tmp_path: Path) -> None:
    records = [
        {
            "transaction_id": "T1",
            "store_id": "S1",
            "timestamp": "2026-11-20T10:00:00",
            "product_id": "P1",
            "quantity": 2,
            "unit_price": 2.5,
            "currency": "GBP",
            "line_no": 1,
        },
        {
            "transaction_id": "T1",
            "store_id": "S1",
            "timestamp": "2026-11-20T10:00:00",
            "product_id": "P2",
            "quantity": 1,
            "unit_price": "19.99",
            "currency": "GBP",
            "line_no": 2,
        },
    ]
    text = json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n"
    lines = read_file(write(tmp_path, "pos.jsonl", text), feed(format={"kind": "jsonl"}))
    assert lines.get_column("source_line").to_list() == [1, 3]
    assert lines.get_column("unit_price").to_list() == ["2.5", "19.99"]
    assert lines.get_column("quantity").to_list() == ["2", "1"]


def test_parquet(tmp_path: Path) -> None:
    from datetime import datetime
    from decimal import Decimal

    frame = pl.DataFrame(
        {
            "transaction_id": ["T1", "T1"],
            "store_id": ["S1", "S1"],
            "timestamp": [datetime(2026, 11, 20, 10), datetime(2026, 11, 20, 10)],
            "product_id": ["P1", "P2"],
            "quantity": [2, 1],
            "unit_price": [Decimal("2.50"), Decimal("19.99")],
            "currency": ["GBP", "GBP"],
        }
    )
    path = tmp_path / "pos.parquet"
    frame.write_parquet(path)
    the_feed = feed(format={"kind": "parquet"})
    lines = read_file(path, the_feed)
    assert lines.get_column("source_line").to_list() == [1, 2]
    assert lines.get_column("unit_price").to_list() == ["2.50", "19.99"]
    from pipeline.core.transform import transform
    from tests.core.helpers import NOW

    result = transform(lines, the_feed, now=NOW)
    assert result.summary["rows_rejected"] == 0
    assert result.summary["amount_in"] == "24.99"


def test_defaults_fill_missing_columns_and_empty_cells(tmp_path: Path) -> None:
    text = (
        "transaction_id,store_id,timestamp,product_id,quantity,unit_price,currency\n"
        "T1,,2026-11-20 10:00:00,P1,1,2.5,\nT2,S9,2026-11-20 10:00:00,P1,1,2.5,EUR\n"
    )
    the_feed = feed(format={"defaults": {"currency": "GBP", "store_id": "S1", "register_id": "R0"}})
    lines = read_file(write(tmp_path, "d.csv", text), the_feed)
    assert lines.get_column("currency").to_list() == ["GBP", "EUR"]
    assert lines.get_column("store_id").to_list() == ["S1", "S9"]
    assert lines.get_column("register_id").to_list() == ["R0", "R0"]


def test_transaction_id_template(tmp_path: Path) -> None:
    text = "Shop,Till,Receipt,When,Item,Qty,Price\nS1,3,0042,2026-11-20 10:00:00,P1,1,2.5\n"
    the_feed = feed(
        format={
            "columns": {
                "store_id": "Shop",
                "register_id": "Till",
                "timestamp": "When",
                "product_id": "Item",
                "quantity": "Qty",
                "unit_price": "Price",
            },
            "defaults": {"currency": "GBP"},
            "transaction_id_template": "{store_id}-{register_id}-{Receipt}",
        }
    )
    lines = read_file(write(tmp_path, "t.csv", text), the_feed)
    assert lines.get_column("transaction_id").to_list() == ["S1-3-0042"]


def test_template_with_a_missing_column_is_unreadable(tmp_path: Path) -> None:
    the_feed = feed(format={"transaction_id_template": "{store_id}-{receipt}"})
    with pytest.raises(UnreadableFileError, match="receipt"):
        read_file(write(tmp_path, "t.csv", csv_text([row()])), the_feed)


def test_template_with_format_spec_is_a_config_error(tmp_path: Path) -> None:
    """A feed file with it is refused when it loads (tests/test_config.py); a feed built past
    validation still never reads a file with it."""
    base = feed()
    the_feed = base.model_copy(update={"format": base.format.model_copy(
        update={"transaction_id_template": "{store_id:>5}"})})
    with pytest.raises(ConfigError, match="format spec"):
        read_file(write(tmp_path, "t.csv", csv_text([row()])), the_feed)


def test_unmapped_columns_are_kept_for_rejects(tmp_path: Path) -> None:
    text = EXPORT.replace("Cur\n", "Cur;Till\n").replace("EUR\n", "EUR;7\n")
    lines = read_file(write(tmp_path, "x.csv", text), export_feed())
    assert lines.get_column("src:Till").to_list() == ["7", "7"]


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    lines = read_file(write(tmp_path, "h.csv", csv_text([])), feed())
    assert lines.height == 0


@pytest.mark.parametrize(
    ("name", "data", "settings", "reason"),
    [
        ("empty.csv", b"", {}, "empty"),
        ("blank.csv", b"\n\n  \n", {}, "empty"),
        ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {}, "binary"),
        ("wrong_delimiter.csv", csv_text([row()]).encode(), {"delimiter": ";"}, "wrong delimiter"),
        ("no_columns.csv", b"a,b,c\n1,2,3\n", {}, "required columns missing"),
        ("not_utf8.csv", csv_text([row(product_name="Caf\xe9")]).encode("cp1252"), {}, "not valid UTF-8"),
        (
            "undefined_cp1252.csv",
            csv_text([row()]).encode() + b"\x81\n",
            {"encoding": "cp1252"},
            "not valid cp1252",
        ),
        ("bad.jsonl", b"{not json\n[1, 2]\n", {"kind": "jsonl"}, "JSON Lines"),
        ("bad.parquet", b"PAR1 not really", {"kind": "parquet"}, "Parquet"),
        ("parquet_as_csv.csv", b"PAR1\x15\x04\x15", {}, "Parquet"),
    ],
)
def test_unreadable_files(
    tmp_path: Path, name: str, data: bytes, settings: dict[str, object], reason: str
) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(UnreadableFileError, match=reason) as caught:
        read_file(path, feed(format=settings))
    assert caught.value.file == name
    assert reason in caught.value.reason or reason.lower() in caught.value.reason.lower()


@pytest.mark.parametrize(("data", "found"), [(b"1\n2\n", "1 column"), (b"1,2\n3,4\n", "2 columns")])
def test_a_first_line_naming_no_known_column_is_counted_in_words_that_agree(
    tmp_path: Path, data: bytes, found: str
) -> None:
    """"found 1 column, none a column name ...", "found 2 columns, ...": never "column(s)"."""
    with pytest.raises(UnreadableFileError) as caught:
        read_file(write(tmp_path, "values.csv", data), feed())
    assert f"; found {found}, none a column name this feed knows (is the first line a data row, the " \
           "header missing? its values are not shown)" in caught.value.reason, caught.value.reason


def test_unreadable_file_does_not_stop_the_others(tmp_path: Path) -> None:
    from pipeline.core.transform import transform_files
    from tests.core.helpers import NOW

    good = write(tmp_path, "good.csv", csv_text([row()]))
    bad = write(tmp_path, "bad.csv", b"\x00\x01\x02")
    result = transform_files([bad, good], feed(), now=NOW)
    assert [e.file for e in result.unreadable] == ["bad.csv"]
    assert result.summary["unreadable_files"][0]["file"] == "bad.csv"
    assert result.checkouts.height == 1


def test_same_content_in_every_format_reads_the_same(tmp_path: Path) -> None:
    rows = [row(), row(line_no="2", product_id="P2")]
    csv_lines = read_file(write(tmp_path, "a.csv", csv_text(rows)), feed())
    text = "\n".join(json.dumps({k: v for k, v in r.items() if v != ""}) for r in rows)
    jsonl_lines = read_file(write(tmp_path, "a.jsonl", text), feed(format={"kind": "jsonl"}))
    columns = list(CANONICAL_COLUMNS)
    assert_frame_equal(csv_lines.select(columns), jsonl_lines.select(columns))


def _parquet_bytes(columns: dict[str, object]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _hostile_files() -> list[tuple[str, bytes, dict[str, object]]]:
    """Files on which a reader itself failed (each crashed the run, and every run after it)."""
    import pyarrow as pa

    base = {k: v for k, v in row().items() if v != ""}
    line = json.dumps(base)
    return [
        ("surrogate.jsonl", line.replace('"T1"', '"T\\ud800"').encode(), {"kind": "jsonl"}),
        ("spaced_keys.jsonl", (line[:-1] + ', " transaction_id": "T9"}').encode(), {"kind": "jsonl"}),
        ("list_column.parquet", _parquet_bytes({**{k: [v] for k, v in base.items()},
                                                "extra": pa.array([[1, 2]])}), {"kind": "parquet"}),
        ("offset_zone.parquet", _parquet_bytes({**{k: [v] for k, v in base.items() if k != "timestamp"},
                                                "timestamp": pa.array([0], pa.timestamp("s", tz="+05:30"))}),
         {"kind": "parquet"}),
    ]


@pytest.mark.parametrize(("name", "data", "settings"), [pytest.param(*f, id=f[0]) for f in _hostile_files()])
def test_a_reader_failing_on_a_file_makes_it_unreadable_not_the_run_crash(
    tmp_path: Path, name: str, data: bytes, settings: dict[str, object]
) -> None:
    from pipeline.core.transform import transform_files
    from tests.core.helpers import NOW

    suffix = name.rsplit(".", 1)[1]
    good_rows = {k: v for k, v in row(transaction_id="G1").items() if v != ""}
    good = write(tmp_path, f"good.{suffix}", json.dumps(good_rows) if suffix == "jsonl"
                 else _parquet_bytes({k: [v] for k, v in good_rows.items()}))
    bad = write(tmp_path, name, data)
    result = transform_files([bad, good], feed(format=settings), now=NOW)
    assert [e.file for e in result.unreadable] == [name]
    # keys differing only in blanks are told as such (they once crashed the reader)
    told = "differ only in case or blanks" if name == "spaced_keys.jsonl" else "the reader failed on it"
    assert told in result.unreadable[0].reason
    assert result.checkouts.get_column("transaction_id").to_list() == ["G1"]


def test_a_jsonl_line_repeating_a_key_is_rejected_not_read_as_its_last_value(tmp_path: Path) -> None:
    # json kept the last value: a price of 200.00 and customer B, with no word
    from pipeline.core.rejects import RejectCode

    base = {k: v for k, v in row().items() if v != ""}
    line = json.dumps(base)[:-1] + ', "unit_price": "200.00"}'
    lines = read_file(write(tmp_path, "dup.jsonl", line + "\n" + json.dumps(base) + "\n"),
                      feed(format={"kind": "jsonl"}))
    assert lines.get_column(READ_CODE).to_list() == [RejectCode.NOT_JSON.value, None]
    assert lines.get_column(READ_REASON)[0] == (
        "line 1 repeats the key 'unit_price': which value counts would be a guess")


def test_a_jsonl_file_with_too_many_different_keys_is_unreadable(tmp_path: Path) -> None:
    # each key is a column as long as the file: 12,000 lines of one new key each took 3.7 GB
    from pipeline.core.parse import MAX_JSONL_KEYS

    base = {k: v for k, v in row().items() if v != ""}
    text = "\n".join(json.dumps({**base, f"k{i}": "x"}) for i in range(MAX_JSONL_KEYS))
    with pytest.raises(UnreadableFileError, match=f"more than {MAX_JSONL_KEYS} different keys"):
        read_file(write(tmp_path, "keys.jsonl", text), feed(format={"kind": "jsonl"}))


def test_a_parquet_column_the_feed_reads_holding_objects_or_booleans_makes_the_file_unreadable(
    tmp_path: Path,
) -> None:
    # before: a struct column of customer ids was sent as the member id '{"id":"C1"}'
    import pyarrow as pa

    base = {k: [v] for k, v in row().items() if v != ""}
    the_feed = feed(format={"kind": "parquet"})
    for column, values in (("customer_id", pa.array([{"id": "C1"}])), ("store_id", pa.array([True]))):
        path = write(tmp_path, f"{column}.parquet", _parquet_bytes({**base, column: values}))
        with pytest.raises(UnreadableFileError, match=f"column '{column}' holds"):
            read_file(path, the_feed)
    # a column the feed does not read may hold anything
    extra = write(tmp_path, "extra.parquet", _parquet_bytes({**base, "basket": pa.array([{"n": 1}])}))
    assert read_file(extra, the_feed).height == 1


def test_a_file_without_its_header_is_unreadable_without_quoting_its_first_row(tmp_path: Path) -> None:
    # the first line is a sale (a customer id, an e-mail): the reason reaches reports, logs and the
    # ledger, so it says what the line may be, never what it holds
    first = "T1,LON01,R1,2026-11-20 10:00:00,CUST-884213,jane.doe@example.com,sale,P1,1,3.80,GBP\n"
    path = write(tmp_path, "headless.csv", (first * 2).encode())
    with pytest.raises(UnreadableFileError) as caught:
        read_file(path, feed())
    assert "data row" in caught.value.reason
    assert "CUST-884213" not in caught.value.reason and "jane.doe" not in caught.value.reason


@pytest.mark.parametrize("line", ['["CUST-884213", "jane.doe@example.com"]',
                                  '{"customer_id": "CUST-884213", "email": "jane.doe@example.com"'])
def test_a_json_lines_file_of_no_object_is_unreadable_without_quoting_a_line(
        tmp_path: Path, line: str) -> None:
    # every line is JSON but no object, or no JSON at all: the reason says what is wrong with the
    # first, never what it holds (it reaches reports, logs, the ledger and problems)
    path = write(tmp_path, "orders.jsonl", (line + "\n").encode() * 2)
    with pytest.raises(UnreadableFileError) as caught:
        read_file(path, feed(format={"kind": "jsonl"}))
    assert "not readable as JSON Lines: line 1 is" in caught.value.reason
    assert "CUST-884213" not in caught.value.reason and "jane.doe" not in caught.value.reason


def test_the_fast_csv_reader_s_refusal_quotes_no_value_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # polars refuses a field with a stray quote by quoting the field ("could not parse
    # `"jane.roe@example.com,...` as dtype `str`"), which went to the log at -v
    import logging

    text = csv_text([row(), row(line_no="2", customer_id="C-7741")]).replace(",C-7741,", ',"C-7741 x,')
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        lines = read_file(write(tmp_path, "quote.csv", text), feed())

    assert lines.height >= 1  # read record by record instead
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "fast reader refused" in logged
    assert "C-7741" not in logged, logged


def test_a_reader_failing_on_a_customer_s_value_quotes_it_nowhere(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the unforeseen failures found: a lone surrogate in a JSON Lines customer id, a Parquet
    # customer_id column of bytes that are not UTF-8; their reason and log (traceback too) name
    # the kind of error, never the value
    import logging

    import pyarrow as pa

    secret = "C-7741-jane.roe@example.com"
    base = {k: v for k, v in row().items() if v != ""}
    jsonl = json.dumps({**base, "customer_id": secret})[:-2] + '\\ud800"}'
    parquet = _parquet_bytes({**{k: [v] for k, v in base.items()},
                              "customer_id": pa.array([secret.encode() + b"\xff"], pa.binary())})
    for name, data, kind in (("s.jsonl", jsonl.encode(), "jsonl"), ("b.parquet", parquet, "parquet")):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pipeline"), pytest.raises(UnreadableFileError) as raised:
            read_file(write(tmp_path, name, data), feed(format={"kind": kind}))
        assert "the reader failed on it" in str(raised.value)
        assert secret not in str(raised.value) and "jane" not in str(raised.value)
        assert caplog.records and "jane" not in caplog.text
