"""Report builders and writers: balancing, spreadsheet safety, exact money, atomic files."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.csvsafe import safe_cell, write_csv
from pipeline.ledger import TxnRecord, TxnState
from pipeline.reports import (
    DETAIL_COLUMNS,
    SUMMARY_COLUMNS,
    build_report,
    points_text,
    unaccounted_words,
    write_report,
)
from pipeline.runner import exit_cause, exit_code_of


def _txn(tid: str, state: TxnState, amount: str, *, rows: int = 1, file: str = "a.csv", store: str = "S1",
         origin: str = "file", points: str | None = None, currency: str = "GBP") -> TxnRecord:
    return TxnRecord(
        id=hash(tid) % 10_000, scope="acme", feed="hourly", transaction_id=tid, content_hash="h",
        state=state, primary_id=None, attempts=1, last_error_code=None, last_error_message=None,
        event_ids=("ev",) if state is TxnState.ACCEPTED else (), points=Decimal(points) if points else None,
        file_id=1, source_file=file, source_lines=tuple(range(2, 2 + rows)), rows=rows, store_id=store,
        business_date="2026-11-20", transaction_type="sale", currency=currency, amount=Decimal(amount),
        reject_code="R002_BAD_NUMBER" if state is TxnState.REJECTED else None, first_run_id="r1",
        last_run_id="r1", origin=origin,
    )


TOTALS = [("a.csv", "S1", "2026-11-20", 4, 3, Decimal("16.50"), "GBP")]
TXNS = [
    _txn("T1", TxnState.ACCEPTED, "10.00", rows=2, points="10"),
    _txn("T2", TxnState.REJECTED, "2.50"),
    _txn("T3", TxnState.DUPLICATE, "4.00"),
]
REJECTS = [{"original": {"TxnNo": "T2", "Note": "=HYPERLINK(\"x\")"}, "code": "R002_BAD_NUMBER",
            "reason": "bad", "field": "Qty", "source_file": "a.csv", "source_line": 4}]


def test_a_complete_run_balances() -> None:
    report = build_report(report_id="r1", feed="hourly", transactions=TXNS, file_totals=TOTALS,
                          rejects=REJECTS)
    (row,) = report.summary_rows
    cells = dict(zip(SUMMARY_COLUMNS, row, strict=True))
    assert cells["balanced"] == "true"
    accepted = (cells["accepted_count"], cells["accepted_amount"], cells["points_awarded"])
    assert accepted == (1, "10.00", "10")
    s = report.summary
    assert (s["rows_in"], s["transactions_in"], s["amount_in"]) == (4, 3, "16.50")
    assert (s["amount_valid"], s["amount_rejected"], s["amount_accepted"]) == ("14.00", "2.50", "10.00")
    assert s["rejects_by_code"] == {"R002_BAD_NUMBER": 1} and s["balanced"] is True


def test_every_total_is_per_currency() -> None:
    totals = [*TOTALS, ("a.csv", "S1", "2026-11-20", 2, 2, Decimal("1500"), "JPY"),
              ("b.csv", "S2", "2026-11-20", 1, 1, Decimal("7.125"), "KWD")]
    transactions = [*TXNS, _txn("J1", TxnState.ACCEPTED, "1000", currency="JPY"),
                    _txn("J2", TxnState.REJECTED, "500.0000", currency="JPY"),
                    _txn("K1", TxnState.NOT_SENT, "7.125", currency="KWD", file="b.csv", store="S2")]
    report = build_report(report_id="r1", feed="hourly", transactions=transactions, file_totals=totals,
                          rejects=[])
    rows = [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in report.summary_rows]
    assert [(r["source_file"], r["currency"], r["amount_in"], r["balanced"]) for r in rows] == [
        ("a.csv", "GBP", "16.50", "true"), ("a.csv", "JPY", "1500", "true"),
        ("b.csv", "KWD", "7.125", "true"),
    ]
    s = report.summary
    assert s["currencies"] == {
        "GBP": {"amount_in": "16.50", "amount_valid": "14.00", "amount_rejected": "2.50",
                "amount_accepted": "10.00", "amount_partly_refunded": "0.00",
                "amount_void_of_sent_sale": "0.00"},
        "JPY": {"amount_in": "1500", "amount_valid": "1000", "amount_rejected": "500",
                "amount_accepted": "1000", "amount_partly_refunded": "0",
                "amount_void_of_sent_sale": "0"},
        "KWD": {"amount_in": "7.125", "amount_valid": "7.125", "amount_rejected": "0.000",
                "amount_accepted": "0.000", "amount_partly_refunded": "0.000",
                "amount_void_of_sent_sale": "0.000"},
    }
    # a sum of three currencies means nothing: no top-level amounts
    assert [s[k] for k in ("amount_in", "amount_valid", "amount_rejected", "amount_accepted")] == [None] * 4
    assert s["balanced"] is True
    detail = {row[DETAIL_COLUMNS.index("transaction_id")]: row[DETAIL_COLUMNS.index("amount")]
              for row in report.detail_rows}
    assert (detail["J2"], detail["K1"], detail["T1"]) == ("500", "7.125", "10.00")


def test_the_balance_holds_per_currency() -> None:
    """A GBP amount missing and the same EUR amount too many do not cancel out."""
    totals = [("a.csv", "S1", "2026-11-20", 1, 1, Decimal("10.00"), "GBP"),
              ("a.csv", "S1", "2026-11-20", 1, 1, Decimal("5.00"), "EUR")]
    transactions = [_txn("G", TxnState.ACCEPTED, "5.00"),
                    _txn("E", TxnState.ACCEPTED, "10.00", currency="EUR")]
    report = build_report(report_id="r1", feed="hourly", transactions=transactions, file_totals=totals,
                          rejects=[])
    assert report.summary["balanced"] is False
    assert [row[SUMMARY_COLUMNS.index("balanced")] for row in report.summary_rows] == ["false", "false"]


@pytest.mark.parametrize(
    ("transactions", "why"),
    [
        (TXNS[:2], "a transaction is missing"),
        ([*TXNS[:2], _txn("T3", TxnState.DUPLICATE, "4.01")], "a cent is missing"),
        ([*TXNS[:2], _txn("T3", TxnState.SENDING, "4.00")], "one is still in doubt"),
        ([*TXNS[:2], _txn("T3", TxnState.QUEUED, "4.00")], "one was never sent"),
    ],
)
def test_what_does_not_balance(transactions: list[TxnRecord], why: str) -> None:
    report = build_report(report_id="r1", feed="hourly", transactions=transactions, file_totals=TOTALS,
                          rejects=[])
    assert report.summary["balanced"] is False, why


@pytest.mark.parametrize(
    ("transactions", "unaccounted", "words"),
    [
        (TXNS[:2], {"summary_rows": 1, "rows": 1, "transactions": 1, "amounts": {"GBP": "4.00"}},
         "1 transaction, 1 row and 4.00 GBP came in that no state counts (1 summary.csv row with "
         "balanced false)"),
        ([*TXNS[:2], _txn("T3", TxnState.DUPLICATE, "4.01")],
         {"summary_rows": 1, "amounts": {"GBP": "-0.01"}},
         "0.01 GBP more counted in the states than came in (1 summary.csv row with balanced false)"),
        ([*TXNS[:2], _txn("T3", TxnState.DUPLICATE, "4.00", rows=3), _txn("T4", TxnState.DUPLICATE, "0.00")],
         {"summary_rows": 1, "rows": -3, "transactions": -1},
         "1 transaction and 3 rows more counted in the states than came in (1 summary.csv row with "
         "balanced false)"),
    ],
)
def test_a_report_that_does_not_balance_says_what_is_missing(
    transactions: list[TxnRecord], unaccounted: dict[str, object], words: str
) -> None:
    report = build_report(report_id="r1", feed="hourly", transactions=transactions, file_totals=TOTALS,
                          rejects=[])
    s = report.summary
    assert s["balanced"] is False and s["unaccounted"] == unaccounted
    assert unaccounted_words(s["unaccounted"]) == words
    # a bug: exit 70 before the rejected row's 65, and the words say what is missing
    assert exit_code_of(s) == 70
    assert exit_cause(s, 70) == ("1 transaction rejected (see rejects.csv); the run's report does not "
                                 f"balance: {words} (a bug: please report it with the log and summary.csv)")


@pytest.mark.parametrize(("in_doubt", "queued"), [(1, 0), (0, 1), (2, 3)])
def test_what_a_run_leaves_for_the_next_is_counted_not_called_unbalanced(in_doubt: int, queued: int) -> None:
    """Queued and in doubt are counted in their state columns: the report does not balance *yet*;
    the words say how many, and what the next run does with them; no "does not balance"."""
    left = ([_txn(f"D{i}", TxnState.SENDING, "1.00") for i in range(in_doubt)]
            + [_txn(f"Q{i}", TxnState.QUEUED, "2.00") for i in range(queued)])
    totals = [("a.csv", "S1", "2026-11-20", in_doubt + queued, in_doubt + queued,
               Decimal(in_doubt) + 2 * Decimal(queued), "GBP")]
    report = build_report(report_id="r1", feed="hourly", transactions=left, file_totals=totals, rejects=[])
    s = report.summary
    assert s["balanced"] is False and s["unaccounted"] == {}
    said = {1: "1 transaction", 2: "2 transactions", 3: "3 transactions"}
    expected = ([f"{said[in_doubt]} in doubt (sent, no answer recorded): the next run asks the platform "
                 "before sending anything"] if in_doubt else []) + (
        [f"{said[queued]} queued, not sent yet: the next run sends {'it' if queued == 1 else 'them'}"]
        if queued else [])
    (row,) = report.summary_rows
    assert row[SUMMARY_COLUMNS.index("reason")] == "; ".join(expected)
    for code in (70, 75):  # a crash (an unexpected error) or a run that ended early
        cause = exit_cause({**s, "error": "RuntimeError: boom"} if code == 70 else s, code)
        assert "balance" not in cause and cause.endswith("; ".join(expected)), cause


def test_queued_is_final_in_a_dry_run() -> None:
    transactions = [*TXNS[:2], _txn("T3", TxnState.QUEUED, "4.00")]
    report = build_report(report_id="r1", feed="hourly", transactions=transactions, file_totals=TOTALS,
                          rejects=[], pending_is_final=True)
    assert report.summary["balanced"] is True and report.summary["queued"] == 1


def test_transactions_from_the_ledger_are_their_own_input() -> None:
    settled = [_txn("T9", TxnState.ACCEPTED, "3.00", origin="settle", file="old.csv")]
    report = build_report(report_id="r2", feed="hourly", transactions=settled, file_totals=[], rejects=[])
    (row,) = report.summary_rows
    assert row[SUMMARY_COLUMNS.index("origin")] == "ledger"
    assert report.summary["balanced"] is True and report.summary["rows_in"] == 1


def test_written_files_are_spreadsheet_safe_utf8(tmp_path: Path) -> None:
    report = build_report(report_id="r1", feed="hourly", transactions=TXNS, file_totals=TOTALS,
                          rejects=REJECTS, extra={"note": "café"})
    write_report(report, tmp_path)
    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["Note"] == "'=HYPERLINK(\"x\")"
    assert list(rows[0]) == ["TxnNo", "Note", "reject_code", "reject_reason", "reject_field", "source_file",
                             "source_line"]
    with (tmp_path / "detail.csv").open(encoding="utf-8", newline="") as handle:
        assert next(csv.reader(handle)) == list(DETAIL_COLUMNS)
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["note"] == "café"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("=SUM(A1)", "'=SUM(A1)"), ("+1+1", "'+1+1"), ("-2+3", "'-2+3"), ("@cmd", "'@cmd"), ("\tx", "'\tx"),
     ("-12.50", "-12.50"), ("+3", "+3"), ("plain", "plain"), (None, ""), (Decimal("1.20"), "1.20")],
)
def test_safe_cell(value: object, expected: str) -> None:
    assert safe_cell(value) == expected


def test_write_csv_writes_every_cell_as_safe_cell_does(tmp_path: Path) -> None:
    cells = [None, "", "plain", "=1+2", "-12.50", "-x", "+", "@sum", "\tx", "\rx", 5, -5, 0, True, 1.5,
             -1e-05, Decimal("-1E+2"), Decimal("-1.5"), "'x", "ü", date(2026, 11, 20)]
    write_csv(tmp_path / "x.csv", ["=h", "h2"], [[cell, cell] for cell in cells])
    expected = io.StringIO(newline="")
    writer = csv.writer(expected)
    writer.writerow(["'=h", "h2"])
    writer.writerows([safe_cell(cell), safe_cell(cell)] for cell in cells)
    assert (tmp_path / "x.csv").read_bytes().decode("utf-8") == expected.getvalue()


def test_points_are_shown_as_given_not_as_money() -> None:
    assert points_text(Decimal("100")) == "100"
    assert points_text(Decimal("-25")) == "-25"
    assert points_text(Decimal("12.5")) == "12.5"
    assert points_text(Decimal("-0")) == "0"
    assert points_text(None) == ""


def test_write_csv_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_csv(path, ["a"], [["1"]])
    write_csv(path, ["a"], [["2"]])
    assert path.read_text(encoding="utf-8").splitlines() == ["a", "2"]


def test_vectorized_checkout_json_decodes_like_the_row_encoder() -> None:
    from datetime import UTC, datetime

    from pipeline.checkout_codec import decode_checkout, encode_checkout, encode_checkouts
    from pipeline.config import load_feed
    from pipeline.core.transform import transform_files
    from pipeline.demo import repo_root

    root = repo_root()
    feed = load_feed(root / "feeds" / "acme_daily.toml")
    result = transform_files(sorted((root / "sample_data" / "acme").glob("pos_NYC01_*_daily.csv")), feed,
                             now=datetime(2026, 11, 21, tzinfo=UTC))
    vectorized = encode_checkouts(result.checkouts).to_list()
    by_row = [encode_checkout(row) for row in result.checkouts.iter_rows(named=True)]
    assert len(vectorized) == len(by_row) > 100
    for fast, slow in zip(vectorized, by_row, strict=True):
        assert decode_checkout(fast) == decode_checkout(slow)
    sample = decode_checkout(vectorized[0])
    assert isinstance(sample["total"], Decimal) and sample["timestamp_utc"].tzinfo is not None


def test_a_file_not_read_has_a_row_in_the_reports_currency_and_no_money_group_of_its_own() -> None:
    """summary.csv: the currency column and the reason column together; a file not read takes the
    report's currency when all its money is in one, none with several; the page leaves it out of
    its money (it lists it with its reason)."""
    from pipeline.report_page import page_data

    not_read = [("bad.csv", "unreadable", "not UTF-8\nat byte 3")]
    one = build_report(report_id="r1", feed="hourly", transactions=TXNS, file_totals=TOTALS, rejects=[],
                       extra={"unreadable_files": [{"file": "bad.csv", "reason": "not UTF-8"}]},
                       files_not_read=not_read)
    rows = [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in one.summary_rows]
    assert [(r["source_file"], r["currency"], r["origin"], r["amount_in"], r["balanced"], r["reason"])
            for r in rows] == [("a.csv", "GBP", "file", "16.50", "true", ""),
                               ("bad.csv", "GBP", "unreadable", "0.00", "true", "not UTF-8 at byte 3")]
    assert [c["currency"] for c in page_data(one)["currencies"]] == ["GBP"]
    files = [(f["name"], f["status"]) for f in page_data(one)["files"]]
    assert files == [("a.csv", "read"), ("bad.csv", "unreadable: not UTF-8 at byte 3")]  # summary.csv's

    several = build_report(
        report_id="r1", feed="hourly",
        transactions=[*TXNS, _txn("Y1", TxnState.ACCEPTED, "1500", currency="JPY")],
        file_totals=[*TOTALS, ("a.csv", "S1", "2026-11-20", 1, 1, Decimal("1500"), "JPY")],
        rejects=[], files_not_read=not_read)
    last = dict(zip(SUMMARY_COLUMNS, several.summary_rows[-1], strict=True))
    assert (last["source_file"], last["currency"], last["amount_in"]) == ("bad.csv", "", "0.00")
    assert [c["currency"] for c in page_data(several)["currencies"]] == ["GBP", "JPY"]


def test_a_file_without_rows_has_a_zero_row_and_no_money_group_of_its_own() -> None:
    """A file read with no data rows: origin ``file``, zero counts and money, balanced, the reason
    ``no data rows``; in the report's currency when it has one, none with several, and never a
    currency of the JSON summary or of the page."""
    from pipeline.report_page import page_data

    several = build_report(
        report_id="r1", feed="hourly",
        transactions=[*TXNS, _txn("Y1", TxnState.ACCEPTED, "1500", currency="JPY")],
        file_totals=[*TOTALS, ("a.csv", "S1", "2026-11-20", 1, 1, Decimal("1500"), "JPY")],
        rejects=[], files_without_rows=["empty.csv"])
    last = dict(zip(SUMMARY_COLUMNS, several.summary_rows[-1], strict=True))
    assert (last["source_file"], last["origin"], last["store_id"], last["business_date"], last["currency"]) \
        == ("empty.csv", "file", "", "", "")
    assert (last["rows_in"], last["transactions_in"], last["amount_in"], last["accepted_count"]) \
        == (0, 0, "0.00", 0)
    assert (last["amount_accounted"], last["balanced"], last["reason"]) == ("0.00", "true", "no data rows")
    assert sorted(several.summary["currencies"]) == ["GBP", "JPY"] and several.summary["balanced"] is True
    page = page_data(several)
    assert [c["currency"] for c in page["currencies"]] == ["GBP", "JPY"]
    assert [s["store_id"] for s in page["stores"]] == ["S1", "S1"]
    assert [(f["name"], f["status"], f["rows_in"], f["balanced"]) for f in page["files"]] == [
        ("a.csv", "read", 5, True), ("empty.csv", "read: no data rows", 0, True)]

    one = build_report(report_id="r1", feed="hourly", transactions=TXNS, file_totals=TOTALS, rejects=[],
                       files_without_rows=["empty.csv"])
    last = dict(zip(SUMMARY_COLUMNS, one.summary_rows[-1], strict=True))
    assert (last["currency"], last["amount_in"]) == ("GBP", "0.00")
    assert one.summary["rows_in"] == 4 and one.summary["amount_in"] == "16.50"


def _documented_columns(heading: str) -> list[str]:
    """The columns of the docs/REPORTS.md table after ``heading``, in order (`<state>_count` rows
    expanded over the states the row names)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "REPORTS.md").read_text(encoding="utf-8")
    after = text.split(heading, 1)[1]
    table = re.search(r"\n\| column \| meaning \|\n\|---\|---\|\n((?:\|.*\n)+)", after)
    assert table, f"docs/REPORTS.md: no column table after {heading}"
    columns: list[str] = []
    for line in table.group(1).splitlines():
        names, meaning = line.split("|")[1], line.split("|")[2]
        for name in re.findall(r"`([^`]+)`", names):
            if name.startswith("<state>_"):
                states = re.findall(r"`([a-z_]+)`", meaning.split(":")[-1])
                columns += [f"{state}_{name.split('_', 1)[1]}" for state in states]
            else:
                columns.append(name)
    return columns


def test_the_csv_columns_are_the_ones_reports_md_lists(tmp_path: Path) -> None:
    """summary.csv's and detail.csv's header, as written, is docs/REPORTS.md's table, in its order
    (summary: the `<state>_count`, `<state>_amount` pairs state by state)."""
    report = build_report(report_id="r1", feed="hourly", transactions=TXNS, file_totals=TOTALS,
                          rejects=REJECTS)
    write_report(report, tmp_path)
    for name, heading in (("summary.csv", "**`summary.csv`**"), ("detail.csv", "**`detail.csv`**")):
        with (tmp_path / name).open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle))
        documented = _documented_columns(heading)
        if name == "summary.csv":  # the table lists the pairs in one row: count, amount per state
            pairs = [c for c in documented if c.endswith(("_count", "_amount"))]
            states = [c[: -len("_count")] for c in pairs if c.endswith("_count")]
            start = documented.index(pairs[0])
            documented[start:start + len(pairs)] = [f"{s}_{w}" for s in states for w in ("count", "amount")]
        assert header == documented, f"{name}: written {header}, documented {documented}"
