"""A day is read and written in pages: the ledger's paging readers, reports that stream, submit's
batches made one at a time. Each gives what its whole-day counterpart gives, on both ledger
backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.ledger import Ledger, NewReject, NewTransaction, TxnRecord, TxnState
from pipeline.reports import build_report, write_report
from pipeline.stages.report import day_report, run_report
from pipeline.stages.submit import sales_first, sales_first_batches

SCOPE = "acme"
DAY = "2026-11-20"


def _txn(tid: str, state: TxnState = TxnState.QUEUED, *, line: int, kind: str = "sale",
         amount: str = "10.50") -> NewTransaction:
    return NewTransaction(
        transaction_id=tid, state=state, source_lines=(line,), rows=1, amount=Decimal(amount),
        store_id="S1", business_date=DAY, transaction_type=kind, currency="GBP",
        content_hash=f"h-{tid}", checkout=json.dumps({"transaction_id": tid}),
        reject_code="R002_BAD_NUMBER" if state is TxnState.REJECTED else None,
    )


def _reject(line: int, tid: str, original: dict[str, Any]) -> NewReject:
    return NewReject(line, tid, "S1", DAY, "R002_BAD_NUMBER", "Qty", "not a number", Decimal("1.25"),
                     original)


@pytest.fixture
def ledger(ledger_location: Path | str) -> Iterator[Ledger]:
    """A fresh ledger on each backend (tests/ledger_backends.py)."""
    with Ledger(ledger_location) as opened:
        yield opened


def _run_with_two_files(ledger: Ledger) -> str:
    """A run of two files: sales, returns, a void and rejected lines whose exports differ in columns."""
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    for number, name in enumerate(("a.csv", "b.csv")):
        file = ledger.register_file(run_id, scope=SCOPE, feed="hourly", name=name, size=10, mtime=1.0,
                                    sha256=str(number) * 64)
        tids = [f"{name}-{i}" for i in range(7)]
        transactions = [
            _txn(tids[0], line=2), _txn(tids[1], line=3, kind="return", amount="-2.00"),
            _txn(tids[2], line=4), _txn(tids[3], TxnState.VOID, line=5), _txn(tids[4], line=6),
            _txn(tids[5], TxnState.REJECTED, line=7), _txn(tids[6], line=8, kind="return", amount="-1.00"),
        ]
        ledger.record_file(
            run_id, file, transactions=transactions,
            rejects=[_reject(7, tids[5], {"TxnNo": tids[5], "Qty": "x",
                                          **({"Note": "=1+1"} if number else {})})],
            totals=[("S1", DAY, 7, 7, sum((t.amount for t in transactions), Decimal(0)), "GBP")],
        )
    return run_id


def test_paging_readers_give_what_the_whole_day_readers_give(ledger: Ledger) -> None:
    run_id = _run_with_two_files(ledger)
    whole = ledger.run_transactions(run_id)
    assert len(whole) == 14
    assert list(ledger.iter_run_transactions(run_id, page_rows=3)) == whole
    assert list(ledger.iter_run_transactions(run_id, at_end=False, page_rows=4)) == \
        ledger.run_transactions(run_id, at_end=False)
    assert list(ledger.iter_day_transactions("hourly", DAY, page_rows=5)) == \
        ledger.day_transactions("hourly", DAY)
    assert list(ledger.iter_rejects(run_id=run_id, page_rows=1)) == ledger.rejects(run_id=run_id)
    assert list(ledger.iter_rejects(feed="hourly", business_date=DAY, page_rows=1)) == \
        ledger.rejects(feed="hourly", business_date=DAY)
    assert ledger.run_file_ids(run_id) == {t.file_id for t in whole if t.origin == "file"} == {1, 2}
    assert ledger.day_file_ids("hourly", DAY) == {1, 2}
    assert ledger.day_file_ids("hourly", "2026-11-21") == set()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_report_from_the_ledger_is_byte_for_byte_the_one_built_from_lists(ledger: Ledger, tmp_path: Path
                                                                            ) -> None:
    run_id = _run_with_two_files(ledger)
    streamed = run_report(ledger, run_id, extra={"status": "finished"})
    write_report(streamed, tmp_path / "streamed")
    names = {i: ledger.file(i).name for i in ledger.run_file_ids(run_id)}
    totals = [(names[f], store, day, rows, count, amount, currency)
              for f, store, day, currency, rows, count, amount in ledger.currency_totals(names)]
    listed = build_report(
        report_id=run_id, feed="hourly", transactions=ledger.run_transactions(run_id), file_totals=totals,
        rejects=ledger.rejects(run_id=run_id), extra={**streamed.summary, "status": "finished"},
    )
    write_report(listed, tmp_path / "listed")
    assert _files(tmp_path / "streamed") == _files(tmp_path / "listed")
    assert streamed.summary["transactions_rejected"] == 2 and streamed.summary["rejects_by_code"] == {
        "R002_BAD_NUMBER": 2}
    rejects_csv = (tmp_path / "streamed" / "rejects.csv").read_text().splitlines()
    assert rejects_csv[0].startswith("TxnNo,Qty,Note,reject_code") and "'=1+1" in rejects_csv[2]

    day = day_report(ledger, "hourly", DAY)
    write_report(day, tmp_path / "day")
    detail = (tmp_path / "day" / "detail.csv").read_text().splitlines()
    assert len(detail) == 1 + 14


class _Counted:
    """A source of rows that counts how often it is read and never hands out a list."""

    def __init__(self, items: list[Any]):
        self.items = items
        self.reads = 0

    def __call__(self) -> Iterable[Any]:
        self.reads += 1
        return (item for item in self.items)


def test_a_report_keeps_totals_and_reads_its_rows_again_while_writing(ledger: Ledger, tmp_path: Path) -> None:
    run_id = _run_with_two_files(ledger)
    transactions = _Counted(ledger.run_transactions(run_id))
    rejects = _Counted(ledger.rejects(run_id=run_id))
    source: Callable[[], Iterable[TxnRecord]] = transactions
    report = build_report(report_id=run_id, feed="hourly", transactions=source, file_totals=[],
                          rejects=rejects)
    assert transactions.reads == 1  # the totals, in one pass
    assert not isinstance(report.detail_rows, list) and not isinstance(report.reject_rows, list)
    write_report(report, tmp_path / "out")
    assert transactions.reads == 2  # detail.csv, read again as it is written; the page uses the totals
    detail = (tmp_path / "out" / "detail.csv").read_text().splitlines()
    assert len(detail) == 1 + 14
    # the page's rejected amount per code comes from the totals pass: both rejected rows, 2 × 10.50
    assert report.rejected_amounts == {"R002_BAD_NUMBER": {"GBP": Decimal("21.00")}}
    assert "21.00" in (tmp_path / "out" / "report.html").read_text()


def test_sales_first_batches_are_the_batches_of_the_sales_first_order(ledger: Ledger) -> None:
    run_id = _run_with_two_files(ledger)
    ids = [t.id for t in ledger.run_transactions(run_id) if t.state is TxnState.QUEUED]
    ordered = sales_first(ledger, ids)
    assert ordered[-4:] != ids[-4:]  # the returns moved to the end
    for size in (1, 3, 4, 100):
        assert list(sales_first_batches(ledger, ids, size)) == [
            ordered[i : i + size] for i in range(0, len(ordered), size)]
    assert list(sales_first_batches(ledger, [], 3)) == []


def test_pages_join_up_exactly_whatever_their_size(ledger: Ledger) -> None:
    run_id = _run_with_two_files(ledger)
    whole = [t.id for t in ledger.run_transactions(run_id)]
    for size in range(1, 16):
        assert [t.id for t in ledger.iter_run_transactions(run_id, page_rows=size)] == whole


def test_the_database_hands_rows_over_a_page_at_a_time(ledger: Ledger) -> None:
    """The paging reader is a cursor read page by page (SQLite's fetchmany, PostgreSQL's server-side
    cursor), not one query whose rows all arrive at once; a second reader and a ledger query in the
    middle of a page do not disturb it."""
    from pipeline.ledger.db import pages

    run_id = _run_with_two_files(ledger)
    db = ledger._db
    assert callable(getattr(db, "stream", None)), "this backend reads every row of a report in one query"
    sql = "SELECT id FROM transactions ORDER BY id"
    whole = [row[0] for row in db.query(sql)]
    first, second = pages(db, sql, page_rows=2), pages(db, sql, page_rows=3)
    seen = [next(first)[0], next(second)[0]]
    assert ledger.run_transactions(run_id)  # another query between pages
    seen += [row[0] for row in first]
    assert seen[:1] + seen[2:] == whole and [row[0] for row in second] == whole[1:]
