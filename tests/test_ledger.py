"""The ledger: every transition, reopening after a crash, migrating an older schema; each test
against both backends (``ledger_location`` of tests/ledger_backends.py: a SQLite file, a fresh
PostgreSQL database).

Shown to fail: without the version read again inside each migration's transaction, processes
opening a new ledger at once both migrate and one fails (a race: most runs); with PostgreSQL's
JSON edits left as the column unchanged, the scrub tests fail on PostgreSQL only."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.ledger import (
    SCHEMA_VERSION,
    FileRecord,
    IllegalTransitionError,
    Ledger,
    NewReject,
    NewTransaction,
    TxnState,
    migrate,
    postgres,
)
from pipeline.ledger.connection import SqliteDb, open_sqlite
from pipeline.ledger.db import Db, round_trips
from pipeline.ledger.errors import LedgerError, LedgerUnavailableError
from pipeline.ledger.postgres import ANALYZE_AFTER_ROWS, ANALYZE_STATISTICS_TARGET, TABLES, PgDb
from pipeline.ledger.schema import ORIGINAL_SQL, ORIGINAL_SQL_POSTGRES
from pipeline.ledger.states import PRIMARY_SQL
from pipeline.problems import Change, Observation, Plan
from pipeline.sinks.base import EventResult, Outcome
from pipeline.stages.report import run_report
from tests.ledger_backends import stored_bytes

SCOPE = "acme"


def _txn(tid: str | None, state: TxnState = TxnState.QUEUED, *, line: int = 2, content: str = "h",
         amount: str = "10.50", store: str = "S1", day: str = "2026-11-20") -> NewTransaction:
    return NewTransaction(
        transaction_id=tid,
        state=state,
        source_lines=(line,),
        rows=1,
        amount=Decimal(amount),
        store_id=store,
        business_date=day,
        transaction_type="sale",
        currency="GBP",
        content_hash=f"{content}-{tid}",
        checkout=json.dumps({"transaction_id": tid}),
    )


def _file(ledger: Ledger, run_id: str, name: str = "f.csv", sha: str = "a" * 64) -> FileRecord:
    return ledger.register_file(run_id, scope=SCOPE, feed="hourly", name=name, size=10, mtime=1.0, sha256=sha)


@pytest.fixture
def ledger(ledger_location: Path | str) -> Iterator[Ledger]:
    with Ledger(ledger_location) as opened:
        yield opened


def _raw(ledger_location: Path | str) -> Db:
    """The ledger's database without the ledger (no migrations): for setting up old or odd states."""
    if isinstance(ledger_location, Path):
        ledger_location.parent.mkdir(parents=True, exist_ok=True)
        return SqliteDb(sqlite3.connect(ledger_location, isolation_level=None))
    return PgDb(psycopg.connect(ledger_location, autocommit=True))


def _queued(ledger: Ledger, *tids: str) -> str:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    file = _file(ledger, run_id)
    ledger.record_file(
        run_id,
        file,
        transactions=[_txn(t, line=i + 2) for i, t in enumerate(tids)],
        rejects=[],
        totals=[("S1", "2026-11-20", len(tids), len(tids), Decimal("10.50") * len(tids))],
    )
    return run_id


def _state(ledger: Ledger, tid: str) -> TxnState:
    states = {
        t.transaction_id: t.state for t in ledger.transactions_by_row_id(list(range(1, 100)))
        if t.state not in (TxnState.DUPLICATE, TxnState.CONFLICT)
    }
    return states[tid]


def test_new_ledger_is_at_current_version(ledger: Ledger, ledger_location: Path | str) -> None:
    assert ledger.schema_version == SCHEMA_VERSION
    assert ledger.backend == ("sqlite" if isinstance(ledger_location, Path) else "postgresql")


def test_new_sqlite_ledger_is_wal(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.path is not None
        mode = sqlite3.connect(ledger.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _record_t1_t2_and_rejected_t9(
    ledger: Ledger, run_id: str, file: FileRecord, *, totals: list[tuple[str, str, int, int, Decimal]]
) -> list[int]:
    """A file of T1 (queued), T2 (void, line 3) and T9 rejected at its lines 5 and 6."""
    rejected = NewTransaction("T9", TxnState.REJECTED, (5, 6), 2, Decimal("3.00"), "S1", "2026-11-20",
                              reject_code="BAD_QUANTITY")
    return ledger.record_file(
        run_id, file,
        transactions=[_txn("T1"), _txn("T2", TxnState.VOID, line=3), rejected],
        rejects=[
            NewReject(5, "T9", "S1", "2026-11-20", "BAD_QUANTITY", "quantity", "not a number",
                      Decimal("1.00"), {"TxnNo": "T9", "Qty": "x"}),
            NewReject(6, "T9", "S1", "2026-11-20", "TXN_HAS_REJECTED_LINE", None, "sibling",
                      Decimal("2.00"), {"TxnNo": "T9", "Qty": "1"}),
        ],
        totals=totals,
    )


def test_record_file_queues_and_records_everything_together(ledger: Ledger) -> None:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    file = _file(ledger, run_id)
    to_send = _record_t1_t2_and_rejected_t9(ledger, run_id, file,
                                            totals=[("S1", "2026-11-20", 4, 3, Decimal("24.00"))])
    assert len(to_send) == 1
    assert ledger.file(file.id).status == "recorded"
    run_rows = ledger.run_transactions(run_id, at_end=False)
    assert {t.transaction_id: t.state for t in run_rows} == {
        "T1": TxnState.QUEUED, "T2": TxnState.VOID, "T9": TxnState.REJECTED}
    assert all(t.origin == "file" for t in run_rows)
    rejects = ledger.rejects(run_id=run_id)
    assert [r["source_line"] for r in rejects] == [5, 6]
    assert {r["txn_row_id"] for r in rejects} == {next(t.id for t in run_rows if t.transaction_id == "T9")}
    assert rejects[0]["original"] == {"TxnNo": "T9", "Qty": "x"}
    assert ledger.file_totals([file.id]) == [(file.id, "S1", "2026-11-20", 4, 3, Decimal("24.00"))]
    assert sorted(ledger.known(SCOPE)) == [("T1", "h-T1"), ("T2", "h-T2")]
    assert ledger.known(SCOPE, ["T2", "T9", "nope"]) == [("T2", "h-T2")]  # rejected ids are not known


def test_what_dedup_and_the_fragment_check_know_of_earlier_ids_is_one_lookup(
        ledger: Ledger, ledger_location: Path | str) -> None:
    """``earlier``: the known (id, content hash) pairs and the lines of rejected occurrences under
    the ids, from one query of the transactions (and one of the rejects when one was rejected)."""
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    file = _file(ledger, run_id)
    _record_t1_t2_and_rejected_t9(ledger, run_id, file, totals=[])
    t9 = next(t.id for t in ledger.run_transactions(run_id, at_end=False) if t.transaction_id == "T9")
    postgresql = not isinstance(ledger_location, Path)
    before = round_trips()
    found = ledger.earlier(SCOPE, ["T2", "T9", "nope"])
    assert round_trips() - before == (2 if postgresql else 0)
    assert found.known == [("T2", "h-T2")]  # rejected ids are not known
    assert found.rejected_lines == [
        ("T9", t9, "f.csv", 5, "BAD_QUANTITY", json.dumps({"TxnNo": "T9", "Qty": "x"})),
        ("T9", t9, "f.csv", 6, "TXN_HAS_REJECTED_LINE", json.dumps({"TxnNo": "T9", "Qty": "1"})),
    ]
    before = round_trips()
    found = ledger.earlier(SCOPE, ["T1", "T2", "nope"])  # none rejected: the rejects are not asked
    assert round_trips() - before == (1 if postgresql else 0)
    assert sorted(found.known) == [("T1", "h-T1"), ("T2", "h-T2")]
    assert found.rejected_lines == []
    assert ledger.earlier(SCOPE, []).known == []


def test_record_file_is_all_or_nothing(ledger: Ledger) -> None:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    file = _file(ledger, run_id)
    with pytest.raises(IllegalTransitionError):
        ledger.record_file(run_id, file, transactions=[_txn("T1"), _txn("T7", TxnState.ACCEPTED)],
                           rejects=[], totals=[])
    assert ledger.state_counts(SCOPE) == {}
    assert ledger.file(file.id).status == "fetched"


def test_happy_path_queued_sending_accepted(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1")
    ledger.start_sending(SCOPE, ["T1"], run_id)
    assert _state(ledger, "T1") is TxnState.SENDING
    ledger.accept(SCOPE, "T1", run_id, event_ids=["ev1"], points=Decimal("12"))
    (row,) = ledger.run_transactions(run_id, at_end=False)
    assert (row.state, row.event_ids, row.points, row.attempts) == (
        TxnState.ACCEPTED, ("ev1",), Decimal("12"), 1)



def test_event_ids_found_later_go_only_to_accepted_rows_without_any(ledger: Ledger) -> None:
    """A platform id a lookup found is kept on an accepted row that recorded none; a row with ids,
    one not accepted, or an unknown id are left alone, and nothing else of a row changes."""
    run_id = _queued(ledger, "T1", "T2", "T3")
    ledger.start_sending(SCOPE, ["T1", "T2", "T3"], run_id)
    ledger.accept(SCOPE, "T1", run_id)  # answered without an id
    ledger.accept(SCOPE, "T2", run_id, event_ids=["ev2"])
    ledger.fail_retryable(SCOPE, "T3", run_id, code="http_503", message="HTTP 503")
    before = {t.transaction_id: t for t in ledger.run_transactions(run_id, at_end=False)}
    written = ledger.record_found_event_ids(SCOPE, {"T1": ("ev1",), "T2": ("other",), "T3": ("ev3",),
                                                    "T404": ("ev4",)})
    assert written == 1
    after = {t.transaction_id: t for t in ledger.run_transactions(run_id, at_end=False)}
    assert {t: r.event_ids for t, r in after.items()} == {"T1": ("ev1",), "T2": ("ev2",), "T3": ()}
    assert after["T1"] == replace(before["T1"], event_ids=("ev1",))


def test_answers_read_so_far_are_settled_with_the_next_in_doubt_mark(ledger: Ledger) -> None:
    """One commit before a request goes out: the answers read since the last one, then the new
    request's in-doubt mark. A request that cannot be marked takes those answers back with it
    (they stay in doubt, settled by the next run as after a crash)."""
    run_id = _queued(ledger, "T1", "T2", "T3")
    ledger.start_sending(SCOPE, ["T1"], run_id)
    accepted = EventResult("T1", Outcome.ACCEPTED, ("ev1",), None, None, None)
    ledger.start_sending(SCOPE, ["T2"], run_id, settled=[accepted])
    assert [_state(ledger, t) for t in ("T1", "T2", "T3")] == [
        TxnState.ACCEPTED, TxnState.SENDING, TxnState.QUEUED]
    refused = EventResult("T2", Outcome.REJECTED, (), None, "400", "no")
    with pytest.raises(IllegalTransitionError):  # T1 was accepted: it is never sent again
        ledger.start_sending(SCOPE, ["T1", "T3"], run_id, settled=[refused])
    assert [_state(ledger, t) for t in ("T1", "T2", "T3")] == [
        TxnState.ACCEPTED, TxnState.SENDING, TxnState.QUEUED]

def test_scrub_masks_the_customer_of_checkouts_never_sent_again(ledger: Ledger) -> None:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    checkouts = {"T1": {"transaction_id": "T1", "customer_id": "c-1", "total": "1.50"},
                 "T2": {"transaction_id": "T2", "customer_id": "c-2", "items": [{"q": "1"}]},
                 "T3": {"transaction_id": "T3", "customer_id": None}}
    transactions = [replace(_txn(tid, line=i + 2), checkout=json.dumps(c))
                    for i, (tid, c) in enumerate(checkouts.items())]
    ledger.record_file(run_id, _file(ledger, run_id), transactions=transactions, rejects=[],
                       totals=[("S1", "2026-11-20", 3, 3, Decimal("31.50"))])
    for tid in ("T1", "T3"):
        ledger.start_sending(SCOPE, [tid], run_id)
        ledger.accept(SCOPE, tid, run_id)
    assert ledger.scrub_customer_ids(SCOPE, lambda c: f"cust:{c[::-1]}", run_id=run_id) == 1  # T2 may be sent
    stored = {r.transaction_id: json.loads(r.checkout or "{}")
              for r in ledger.transactions_by_row_id([1, 2, 3], with_checkout=True)}
    assert stored["T1"] == {**checkouts["T1"], "customer_id": "cust:1-c"}
    assert stored["T2"] == checkouts["T2"] and stored["T3"] == checkouts["T3"]
    assert ledger.scrub_customer_ids(SCOPE, lambda c: f"cust:{c}", run_id=run_id) == 0  # masked ones stay


def test_scrub_reads_the_customer_id_as_it_was_stored_escaped_nested_or_a_number(ledger: Ledger) -> None:
    """The end-of-run mask read takes each checkout's top-level customer id, whatever JSON spells
    it (escapes, a number, a member's nested id beside it; PostgreSQL reads it as ``json``), and
    masks every one it masked before; the ids it still finds in clear are the same."""
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    checkouts = ['{"transaction_id": "T1", "customer_id": "caf\\u00e9-1"}',
                 json.dumps({"transaction_id": "T2", "customer_id": 4711}),
                 json.dumps({"transaction_id": "T3", "profile": {"customer_id": "cust:x"},
                             "customer_id": "c-3"}),
                 json.dumps({"transaction_id": "T4", "customer_id": "c-4"})]
    transactions = [replace(_txn(f"T{i}", line=i + 1), checkout=c) for i, c in enumerate(checkouts, start=1)]
    ledger.record_file(run_id, _file(ledger, run_id), transactions=transactions, rejects=[],
                       totals=[("S1", "2026-11-20", 4, 4, Decimal("42.00"))])
    assert ledger.run_customer_ids(SCOPE, run_id=run_id) == {"caf\u00e9-1", "4711", "c-3", "c-4"}
    for tid in ("T1", "T2", "T3"):
        ledger.start_sending(SCOPE, [tid], run_id)
        ledger.accept(SCOPE, tid, run_id)
    assert ledger.scrub_customer_ids(SCOPE, lambda c: f"cust:{c[::-1]}", run_id=run_id) == 3
    stored = {r.transaction_id: json.loads(r.checkout or "{}")["customer_id"]
              for r in ledger.transactions_by_row_id([1, 2, 3, 4], with_checkout=True)}
    assert stored == {"T1": "cust:1-\u00e9fac", "T2": "cust:1174", "T3": "cust:3-c", "T4": "c-4"}
    assert ledger.run_customer_ids(SCOPE, run_id=run_id) == {"c-4"}


def test_scrub_masks_a_customer_id_quoted_in_clear_in_the_kept_messages(ledger: Ledger) -> None:
    # messages kept while hashing was off (or by a version that did not mask them)
    from pipeline.logs import mask_customer_id

    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    checkouts = {"T1": "c-1", "T2": "c-12", "T3": "c-3"}
    transactions = [replace(_txn(tid, line=i + 2),
                            checkout=json.dumps({"transaction_id": tid, "customer_id": c, "total": "1"}))
                    for i, (tid, c) in enumerate(checkouts.items())]
    ledger.record_file(run_id, _file(ledger, run_id), transactions=transactions, rejects=[],
                       totals=[("S1", "2026-11-20", 3, 3, Decimal("3"))])
    ledger.start_sending(SCOPE, list(checkouts), run_id)
    ledger.apply_results(SCOPE, [
        EventResult("T1", Outcome.REJECTED, (), None, "404", "Customer c-1 not found (c-12 neither)"),
        EventResult("T2", Outcome.RETRYABLE, (), None, "500", "for c-12: try again"),
        EventResult("T3", Outcome.REJECTED, (), None, "400", "no customer named"),
    ], run_id)
    ledger.finish_run(run_id, status="finished", exit_code=65, counts={})

    assert ledger.scrub_quoted_customer_ids(SCOPE) == 4  # T1 and T2, last and at the run's end

    rows = {r.transaction_id: r for r in ledger.transactions_by_row_id([1, 2, 3], with_checkout=True)}
    # each row's own customer; another one it quotes is not its own to mask
    assert rows["T1"].last_error_message == f"Customer {mask_customer_id('c-1')} not found (c-12 neither)"
    assert rows["T2"].last_error_message == f"for {mask_customer_id('c-12')}: try again"
    assert rows["T3"].last_error_message == "no customer named"
    assert json.loads(rows["T2"].checkout or "{}")["customer_id"] == "c-12"  # a resend needs it
    assert ledger.scrub_quoted_customer_ids(SCOPE) == 0


def test_the_sweep_reads_no_history_for_a_scopes_first_run_but_reads_it_once_there_is_some(
        ledger: Ledger) -> None:
    """A scope whose only run is the one asking (with hashing on, it writes nothing in clear) and
    that holds no problem has no history to sweep: marked swept, nothing read (its first run does
    not pay a scan of its own rows). Another run of the scope, or a problem, is history: read."""
    from pipeline.logs import mask_customer_id

    def run_with_a_clear_message(tid: str, customer: str) -> str:
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        ledger.record_file(run_id, _file(ledger, run_id, name=f"{tid}.csv", sha=tid[-1] * 64), rejects=[],
                           transactions=[replace(_txn(tid, line=2), checkout=json.dumps(
                               {"transaction_id": tid, "customer_id": customer, "total": "1"}))],
                           totals=[("S1", "2026-11-20", 1, 1, Decimal("1"))])
        ledger.start_sending(SCOPE, [tid], run_id)
        ledger.apply_results(SCOPE, [EventResult(tid, Outcome.RETRYABLE, (), None, "500",
                                                 f"for {customer}: again")], run_id)
        return run_id

    first = run_with_a_clear_message("T1", "c-0")
    assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}, running=first) == 0
    assert ledger.transactions_by_row_id([1])[0].last_error_message == "for c-0: again"  # not read
    ledger.forget_sweep(SCOPE)  # as after a run with hashing off: the next run's sweep reads it
    second = run_with_a_clear_message("T2", "c-1")
    assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}, running=second) == 2
    assert [r.last_error_message for r in ledger.transactions_by_row_id([1, 2])] == [
        f"for {mask_customer_id('c-0')}: again", f"for {mask_customer_id('c-1')}: again"]
    assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}, running=second) == 0  # once


def test_the_sweep_for_clear_customer_ids_reads_a_scope_once_until_a_run_keeps_them(ledger: Ledger) -> None:
    """The sweep reads the scope's whole history: once, not at every run; a run with hashing off
    (forget_sweep) may keep ids in clear, so the next sweep reads it again."""
    from pipeline.logs import mask_customer_id

    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    transactions = [replace(_txn(tid, line=i + 2), checkout=json.dumps(
                        {"transaction_id": tid, "customer_id": f"c-{i}", "total": "1"}))
                    for i, tid in enumerate(("T1", "T2"))]
    ledger.record_file(run_id, _file(ledger, run_id), transactions=transactions, rejects=[],
                       totals=[("S1", "2026-11-20", 2, 2, Decimal("2"))])
    ledger.start_sending(SCOPE, ["T1", "T2"], run_id)
    ledger.apply_results(SCOPE, [EventResult("T1", Outcome.RETRYABLE, (), None, "500", "for c-0: again")],
                         run_id)

    assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}) == 1
    (first,) = ledger.transactions_by_row_id([1])
    assert first.last_error_message == f"for {mask_customer_id('c-0')}: again"
    # written in clear afterwards (as a run with hashing off does): not read again...
    ledger.apply_results(SCOPE, [EventResult("T2", Outcome.RETRYABLE, (), None, "500", "for c-1: again")],
                         run_id)
    assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}) == 0
    assert ledger.transactions_by_row_id([2])[0].last_error_message == "for c-1: again"
    # ...until that run says so
    ledger.forget_sweep(SCOPE)
    assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}) == 1
    (second,) = ledger.transactions_by_row_id([2])
    assert second.last_error_message == f"for {mask_customer_id('c-1')}: again"


@pytest.mark.parametrize("page_rows", [None, 1], ids=["pages", "a-row-a-page"])
def test_the_sweep_masks_clear_customer_ids_in_every_text_the_ledger_keeps(
        ledger_location: Path | str, page_rows: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts quoting customer ids in clear, as a run with hashing off or an older version kept them:
    a problem's summary, subject and counts, an alert's payload and last error, a run's summary,
    a file's error, the messages of a row whose checkout an older version masked already, and the
    checkouts never sent again. One sweep masks them all (a scope an older sweep marked included):
    the ids are nowhere in what the ledger stores. Rows and texts are written through the ledger
    where it still writes them so; the masked checkout and the old sweep's mark are SQL as an
    older version left them. Read a page at a time, and a row a page (each row after a page's end)."""
    from pipeline.logs import mask_customer_id as masked

    if page_rows is not None:
        monkeypatch.setattr("pipeline.ledger.scrub.PAGE_ROWS", page_rows)
        monkeypatch.setattr("pipeline.ledger.scrub.TEXT_PAGE_ROWS", page_rows)

    known, hidden, elsewhere = "M4411-7", "K9ZZ3", "Q-207x"  # hidden: its checkout is masked already
    with Ledger(ledger_location) as ledger:
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        ledger.record_file(run_id, _file(ledger, run_id), transactions=[
            replace(_txn(tid, line=i + 2), checkout=json.dumps({"transaction_id": tid, "customer_id": c}))
            for i, (tid, c) in enumerate((("T1", known), ("T2", hidden)))
        ], rejects=[], totals=[("S1", "2026-11-20", 2, 2, Decimal("21.00"))])
        ledger.start_sending(SCOPE, ["T1", "T2"], run_id)
        ledger.apply_results(SCOPE, [
            EventResult("T1", Outcome.NOT_SENT, (), None, "404", f"Customer {known} unknown"),
            EventResult("T2", Outcome.NOT_SENT, (), None, "409", f"member {hidden}: closed"),
        ], run_id)
        broken = _file(ledger, run_id, name="g.xml", sha="b" * 64)
        ledger.mark_file_unreadable(broken.id, f"bad XML near <![CDATA[{hidden} {known}]]>")
        members = f"unknown members [{known},{hidden}]"
        seen = Observation(kind="run_failed", key="hourly:run_failed", feed="hourly", scope=SCOPE,
                           summary=f"the run stopped: {members}", action="look", subject=known,
                           counts={"members": [hidden, known]})
        (problem,) = ledger.apply_problems(Plan((Change("opened", None, seen),)), run_id=run_id,
                                           alert=lambda p, e: {"event": e, "text": p.summary})
        # no run of its own (a refused start): its id is known from the other texts
        alone = replace(seen, key="hourly:credentials", kind="credentials_refused",
                        summary=f"refused for {known}", subject=None, counts={})
        ledger.apply_problems(Plan((Change("opened", None, alone),)), run_id=None, alert=lambda p, e: None)
        (alert,) = ledger.pending_alerts(SCOPE)
        ledger.alert_failed(alert["id"], f"webhook answered 400: {hidden}?", "2999-01-01T00:00:00+00:00")
        ledger.finish_run(run_id, status="failed", exit_code=70, counts={
            "error": f"RuntimeError: {members}", "causes": [{"message": f"Customer {known} unknown"}],
            "problems": [{"summary": seen.summary}], "note": f"{elsewhere} is no customer of this scope"})
    raw = _raw(ledger_location)
    try:  # an older version masked T2's checkout, not its messages; an older sweep marked the scope
        raw.execute("UPDATE transactions SET checkout = ? WHERE transaction_id = 'T2'",
                    (json.dumps({"transaction_id": "T2", "customer_id": masked(hidden)}),))
        raw.execute("INSERT INTO swept_scopes (scope, swept_at) VALUES (?, ?)",
                    (SCOPE, "2026-12-01T00:00:00.000000+00:00"))
    finally:
        raw.close()
    before = stored_bytes(ledger_location)
    assert known.encode() in before and hidden.encode() in before

    with Ledger(ledger_location) as ledger:
        assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}) > 0
        assert ledger.sweep_clear_customer_ids(SCOPE, {"customer_id"}) == 0  # once
        (problem, alone_problem) = ledger.problems(scope=SCOPE)
        assert problem.summary == f"the run stopped: unknown members [{masked(known)},{masked(hidden)}]"
        assert problem.subject == masked(known)
        assert problem.counts == {"members": [masked(hidden), masked(known)]}
        assert alone_problem.summary == f"refused for {masked(known)}"
        (alert,) = ledger.pending_alerts(SCOPE)
        assert alert["payload"]["text"] == problem.summary
        assert alert["last_error"] == f"webhook answered 400: {masked(hidden)}?"
        counts = json.loads(ledger._db.query("SELECT counts FROM runs")[0][0])
        assert counts["error"] == f"RuntimeError: unknown members [{masked(known)},{masked(hidden)}]"
        assert counts["note"] == f"{elsewhere} is no customer of this scope"  # not a customer: kept
        (error,) = [r[0] for r in ledger._db.query("SELECT error FROM files WHERE error IS NOT NULL")]
        assert error == f"bad XML near <![CDATA[{masked(hidden)} {masked(known)}]]>"
        rows = {r.transaction_id: r for r in ledger.transactions_by_row_id([1, 2], with_checkout=True)}
        assert rows["T2"].last_error_message == f"member {masked(hidden)}: closed"
        assert json.loads(rows["T1"].checkout or "{}")["customer_id"] == masked(known)  # never sent again
    stored = stored_bytes(ledger_location)
    assert known.encode() not in stored and hidden.encode() not in stored
    assert elsewhere.encode() in stored


@pytest.mark.parametrize("column", ["CustNo", "Cust No."])  # a JSON path spells the second one badly
def test_scrub_masks_customer_ids_rejected_lines_kept_in_clear(ledger: Ledger, column: str) -> None:
    from pipeline.logs import mask_customer_id

    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    rejected = NewTransaction("T9", TxnState.REJECTED, (5, 6, 7), 2, Decimal("3.00"), "S1", "2026-11-20",
                              reject_code="BAD_QUANTITY")
    ledger.record_file(run_id, _file(ledger, run_id), transactions=[rejected], rejects=[
        NewReject(5, "T9", "S1", "2026-11-20", "BAD_QUANTITY", "quantity", "not a number (c-9, line 5)",
                  Decimal("1.00"), {"TxnNo": "T9", column: "c-9", "Qty": "x"}),
        NewReject(6, "T9", "S1", "2026-11-20", "TXN_HAS_REJECTED_LINE", None, "sibling",
                  Decimal("1.00"), {"TxnNo": "T9", column: mask_customer_id("c-9"), "Qty": "1"}),
        NewReject(7, "T9", "S1", "2026-11-20", "TXN_HAS_REJECTED_LINE", None, "sibling",
                  Decimal("1.00"), {"TxnNo": "T9", column: "", "Qty": "1"}),
    ], totals=[("S1", "2026-11-20", 3, 0, Decimal("0"))])

    assert ledger.scrub_reject_customers(SCOPE, {"customer_id", column}) == 1

    rows = {r["source_line"]: r for r in ledger.rejects(run_id=run_id)}
    assert rows[5]["original"] == {"TxnNo": "T9", column: mask_customer_id("c-9"), "Qty": "x"}
    assert rows[5]["reason"] == f"not a number ({mask_customer_id('c-9')}, line 5)"
    assert rows[6]["original"][column] == mask_customer_id("c-9") and rows[7]["original"][column] == ""
    assert ledger.scrub_reject_customers(SCOPE, {"customer_id", column}) == 0


def test_scrub_profiles_removes_member_details_of_rows_never_sent_again(ledger: Ledger) -> None:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    profile = {"email": "a@example.com", "phone": "+44 1"}
    transactions = [replace(_txn(tid, line=i + 2),
                            checkout=json.dumps({"transaction_id": tid, "total": "1.50", "profile": profile}))
                    for i, tid in enumerate(("T1", "T2"))]
    ledger.record_file(run_id, _file(ledger, run_id), transactions=transactions, rejects=[],
                       totals=[("S1", "2026-11-20", 2, 2, Decimal("21.00"))])
    ledger.start_sending(SCOPE, ["T1"], run_id)
    ledger.accept(SCOPE, "T1", run_id)
    assert ledger.scrub_profiles(SCOPE, run_id=run_id) == 1  # T2 is still queued: it keeps its profile
    stored = {r.transaction_id: json.loads(r.checkout or "{}")
              for r in ledger.transactions_by_row_id([1, 2], with_checkout=True)}
    assert stored["T1"] == {"transaction_id": "T1", "total": "1.50"}
    assert stored["T2"]["profile"] == profile
    assert ledger.scrub_profiles(SCOPE, run_id=run_id) == 0


def _with_customers(ledger: Ledger, *tids: str, name: str = "f.csv", sha: str = "a" * 64) -> str:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    transactions = [
        replace(_txn(t, line=i + 2), checkout=json.dumps({"transaction_id": t, "customer_id": f"c-{t}"}))
        for i, t in enumerate(tids)
    ]
    totals = [("S1", "2026-11-20", len(tids), len(tids), Decimal("10.50") * len(tids))]
    ledger.record_file(run_id, _file(ledger, run_id, name=name, sha=sha), transactions=transactions,
                       rejects=[], totals=totals)
    return run_id


def _customers(ledger: Ledger) -> dict[str | None, str]:
    rows = ledger.transactions_by_row_id(list(range(1, 100)), with_checkout=True)
    return {r.transaction_id: json.loads(r.checkout or "{}")["customer_id"] for r in rows}


def test_a_settled_transaction_stores_its_mask_in_the_same_write(ledger: Ledger) -> None:
    run_id = _with_customers(ledger, "T1", "T2", "T3", "T4")
    ledger.start_sending(SCOPE, ["T1", "T2", "T3", "T4"], run_id)
    masks = {t: f"cust:{t}" for t in ("T1", "T2", "T3")}  # T4: no mask given, e.g. masking off
    ledger.apply_results(SCOPE, [
        EventResult("T1", Outcome.ACCEPTED, ("ev1",)),
        EventResult("T2", Outcome.RETRYABLE, error_code="timeout"),  # sent again: needs the real id
        EventResult("T3", Outcome.NOT_SENT, error_code="unsupported"),
        EventResult("T4", Outcome.ACCEPTED, ("ev4",)),
    ], run_id, masks=masks)
    assert _customers(ledger) == {"T1": "cust:T1", "T2": "c-T2", "T3": "cust:T3", "T4": "c-T4"}
    assert _state(ledger, "T1") is TxnState.ACCEPTED and _state(ledger, "T2") is TxnState.FAILED_RETRYABLE


def test_a_runs_customer_ids_in_clear_are_those_of_its_own_rows_not_yet_masked(ledger: Ledger) -> None:
    first = _with_customers(ledger, "T1", "T2")
    second = _with_customers(ledger, "T3", name="g.csv", sha="b" * 64)
    ledger.start_sending(SCOPE, ["T1"], first)
    ledger.accept(SCOPE, "T1", first)
    ledger.scrub_customer_ids(SCOPE, lambda c: f"cust:{c}", run_id=first)
    assert ledger.run_customer_ids(SCOPE, run_id=first) == {"c-T2"}  # T1's is masked now
    assert ledger.run_customer_ids(SCOPE, run_id=second) == {"c-T3"}
    assert ledger.run_customer_ids("elsewhere", run_id=second) == set()


def test_scrubbing_one_run_leaves_the_other_runs_rows_alone(ledger: Ledger) -> None:
    first = _with_customers(ledger, "T1")
    second = _with_customers(ledger, "T2", name="g.csv", sha="b" * 64)
    for run_id, tid in ((first, "T1"), (second, "T2")):
        ledger.start_sending(SCOPE, [tid], run_id)
        ledger.accept(SCOPE, tid, run_id)
    assert ledger.scrub_customer_ids(SCOPE, lambda c: f"cust:{c}", run_id=second) == 1
    assert _customers(ledger) == {"T1": "c-T1", "T2": "cust:c-T2"}
    assert ledger.scrub_customer_ids(SCOPE, lambda c: f"cust:{c}", run_id=first) == 1
    assert _customers(ledger) == {"T1": "cust:c-T1", "T2": "cust:c-T2"}


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (Outcome.RETRYABLE, TxnState.FAILED_RETRYABLE),
        (Outcome.REJECTED, TxnState.FAILED_PERMANENT),
        (Outcome.NOT_SENT, TxnState.NOT_SENT),
        (Outcome.ALREADY_ACCEPTED, TxnState.ACCEPTED),
    ],
)
def test_settling_outcomes(ledger: Ledger, outcome: Outcome, state: TxnState) -> None:
    run_id = _queued(ledger, "T1")
    ledger.start_sending(SCOPE, ["T1"], run_id)
    ledger.apply_results(SCOPE, [EventResult("T1", outcome, error_code="E1", error_message="why")], run_id)
    (row,) = ledger.run_transactions(run_id, at_end=False)
    assert row.state is state
    if outcome is Outcome.ALREADY_ACCEPTED:
        assert row.last_error_code == "E1"  # the platform's evidence of the earlier acceptance


def test_named_failure_verbs(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1", "T2", "T3")
    ledger.start_sending(SCOPE, ["T1", "T2"], run_id)
    ledger.fail_retryable(SCOPE, "T1", run_id, code="429", message="rate limited")
    ledger.fail_permanent(SCOPE, "T2", run_id, code="400", message="bad customer")
    ledger.mark_not_sent(SCOPE, "T3", run_id, code="unmatched_return", message="no original")  # from queued
    rows = ledger.run_transactions(run_id, at_end=False)
    states = {t.transaction_id: (t.state, t.last_error_code) for t in rows}
    assert states == {
        "T1": (TxnState.FAILED_RETRYABLE, "429"),
        "T2": (TxnState.FAILED_PERMANENT, "400"),
        "T3": (TxnState.NOT_SENT, "unmatched_return"),
    }


def test_in_doubt_is_resent_and_attempts_count(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1")
    ledger.start_sending(SCOPE, ["T1"], run_id)
    ledger.start_sending(SCOPE, ["T1"], run_id)  # re-sent after a crash
    ledger.accept(SCOPE, "T1", run_id)
    (row,) = ledger.run_transactions(run_id, at_end=False)
    assert row.attempts == 2


def test_illegal_transitions_raise(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1", "T2")
    with pytest.raises(IllegalTransitionError):
        ledger.accept(SCOPE, "T1", run_id)  # never accepted without having been sent
    ledger.start_sending(SCOPE, ["T1"], run_id)
    ledger.accept(SCOPE, "T1", run_id)
    with pytest.raises(IllegalTransitionError):
        ledger.start_sending(SCOPE, ["T1"], run_id)  # accepted is never resent
    with pytest.raises(IllegalTransitionError):
        rows = ledger.run_transactions(run_id, at_end=False)
        ledger.requeue([t.id for t in rows if t.transaction_id == "T1"], run_id)
    with pytest.raises(IllegalTransitionError):
        ledger.fail_retryable(SCOPE, "T1", run_id, code=None, message=None)
    # a failed transition leaves nothing half done
    assert _state(ledger, "T1") is TxnState.ACCEPTED


def test_requeue_and_rerun_selection(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1", "T2", "T3")
    ledger.start_sending(SCOPE, ["T1", "T2", "T3"], run_id)
    ledger.fail_retryable(SCOPE, "T1", run_id, code="503", message="down")
    ledger.fail_permanent(SCOPE, "T2", run_id, code="400", message="bad")
    ledger.accept(SCOPE, "T3", run_id)
    assert len(ledger.select_for_rerun(SCOPE, run_id=run_id)) == 1
    ids = ledger.select_for_rerun(SCOPE, run_id=run_id, include_permanent=True)
    assert len(ids) == 2
    assert ledger.select_for_rerun(SCOPE, store_id="S2") == []
    rerun = ledger.start_run(feed="hourly", scope=SCOPE, kind="rerun")
    ledger.requeue(ids, rerun)
    rows = ledger.run_transactions(rerun, at_end=False)
    assert {(t.transaction_id, t.state, t.origin) for t in rows} == {
        ("T1", TxnState.QUEUED, "retry"), ("T2", TxnState.QUEUED, "retry")}


def test_duplicates_conflicts_and_requeue_of_failed_primary(ledger: Ledger) -> None:
    first = _queued(ledger, "T1", "T2")
    ledger.start_sending(SCOPE, ["T1", "T2"], first)
    ledger.accept(SCOPE, "T1", first)
    ledger.fail_retryable(SCOPE, "T2", first, code="503", message="down")
    ledger.finish_run(first, status="finished", exit_code=75, counts={})
    second = ledger.start_run(feed="daily", scope=SCOPE)
    file = _file(ledger, second, name="daily.csv", sha="b" * 64)
    to_send = ledger.record_file(
        second,
        file,
        transactions=[
            _txn("T1", TxnState.DUPLICATE),
            _txn("T2", TxnState.DUPLICATE, line=3),
            _txn("T1", TxnState.CONFLICT, line=4, content="other"),
        ],
        rejects=[],
        totals=[("S1", "2026-11-20", 3, 3, Decimal("31.50"))],
    )
    rows = ledger.run_transactions(second, at_end=False)
    t2 = next(t for t in rows if t.transaction_id == "T2" and t.origin == "retry")
    assert to_send == [t2.id] and t2.state is TxnState.QUEUED
    assert sorted((t.state.value, t.origin) for t in rows) == [
        ("conflict", "file"), ("duplicate", "file"), ("duplicate", "file"), ("queued", "retry")]
    # the first run's report keeps the state the run ended with
    assert {t.transaction_id: t.state for t in ledger.run_transactions(first)} == {
        "T1": TxnState.ACCEPTED, "T2": TxnState.FAILED_RETRYABLE}



def test_repeats_are_linked_to_their_primary_wherever_it_is(ledger: Ledger) -> None:
    """A repeat names its primary: one of an earlier file, one earlier in the same file, and one
    later in the same file (linked once the primary is written). Rows keep the file's order."""
    first = _queued(ledger, "T1")
    second = ledger.start_run(feed="daily", scope=SCOPE)
    to_send = ledger.record_file(
        second, _file(ledger, second, name="daily.csv", sha="b" * 64),
        transactions=[
            _txn("T1", TxnState.DUPLICATE, line=2),  # T1's primary: the first run's file
            _txn("T2", TxnState.DUPLICATE, line=3),  # T2's primary: line 4, after it
            _txn("T2", TxnState.QUEUED, line=4),
            _txn("T3", TxnState.QUEUED, line=5),
            _txn("T3", TxnState.DUPLICATE, line=6),  # T3's primary: line 5, before it
        ],
        rejects=[], totals=[("S1", "2026-11-20", 5, 5, Decimal("52.50"))],
    )
    rows = ledger.run_transactions(second, at_end=False)
    assert [(r.transaction_id, r.state.value) for r in rows] == [
        ("T1", "duplicate"), ("T2", "duplicate"), ("T2", "queued"), ("T3", "queued"), ("T3", "duplicate")]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    (t1_primary,) = ledger.run_transactions(first, at_end=False)
    ids = {(r.transaction_id, r.state.value): r.id for r in rows}
    assert [r.primary_id for r in rows] == [
        t1_primary.id, ids["T2", "queued"], None, None, ids["T3", "queued"]]
    assert to_send == [ids["T2", "queued"], ids["T3", "queued"]]

def test_files_superseded_and_finishable(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1")
    first = ledger.files(scope=SCOPE)[0]
    assert ledger.finishable_files(SCOPE) == []
    ledger.start_sending(SCOPE, ["T1"], run_id)
    ledger.accept(SCOPE, "T1", run_id)
    assert [f.id for f in ledger.finishable_files(SCOPE)] == [first.id]
    ledger.finish_file(first.id, "archive")
    assert ledger.file(first.id).status == "finished"
    newer = _file(ledger, run_id, name=first.name, sha="c" * 64)
    assert newer.supersedes_file_id == first.id
    assert ledger.file(first.id).superseded_by_file_id == newer.id
    assert ledger.file_by_sha(SCOPE, "c" * 64) == newer
    assert ledger.file_by_identity(SCOPE, first.name, 10, 1.0) is not None


def test_unrecorded_file_is_reused_after_a_crash(ledger: Ledger) -> None:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    file = _file(ledger, run_id)
    again = _file(ledger, run_id)
    assert again.id == file.id and again.status == "fetched"
    ledger.mark_file_unreadable(file.id, "binary")
    assert _file(ledger, run_id).id == file.id


def test_adopt_pending_and_abandoned_runs(ledger: Ledger) -> None:
    crashed = _queued(ledger, "T1", "T2")
    ledger.start_sending(SCOPE, ["T1"], crashed)
    assert ledger.close_abandoned_runs(SCOPE) == [crashed]
    assert ledger.run(crashed).status == "crashed"  # type: ignore[union-attr]
    nxt = ledger.start_run(feed="hourly", scope=SCOPE)
    ids = ledger.adopt_pending(SCOPE, nxt)
    assert len(ids) == 2
    assert {t.origin for t in ledger.run_transactions(nxt, at_end=False)} == {"settle"}


def test_runs_listing_and_finish(ledger: Ledger) -> None:
    run_id = _queued(ledger, "T1")
    ledger.finish_run(run_id, status="finished", exit_code=0, counts={"rows_in": 1})
    (run,) = ledger.runs(feed="hourly")
    assert (run.id, run.status, run.exit_code, run.counts) == (run_id, "finished", 0, {"rows_in": 1})
    assert ledger.runs(feed="other") == []


def test_reopen_after_a_killed_process(ledger_location: Path | str) -> None:
    """A process killed mid-run leaves every committed transition readable by the next."""
    path = str(ledger_location)
    script = textwrap.dedent(
        f"""
        import json, os, signal
        from decimal import Decimal
        from pipeline.ledger import Ledger, NewTransaction, TxnState
        ledger = Ledger({path!r})
        run_id = ledger.start_run(feed="hourly", scope="acme")
        f = ledger.register_file(run_id, scope="acme", feed="hourly", name="f.csv", size=1, mtime=1.0,
                                 sha256="a" * 64)
        ledger.record_file(run_id, f, transactions=[
            NewTransaction("T1", TxnState.QUEUED, (2,), 1, Decimal("1.00"), content_hash="x"),
            NewTransaction("T2", TxnState.QUEUED, (3,), 1, Decimal("2.00"), content_hash="y")],
            rejects=[], totals=[("", "", 2, 2, Decimal("3.00"))])
        ledger.start_sending("acme", ["T1", "T2"], run_id)
        ledger.accept("acme", "T1", run_id)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    with Ledger(ledger_location) as reopened:
        assert reopened.state_counts("acme") == {"accepted": 1, "sending": 1}
        assert reopened.close_abandoned_runs("acme")


def test_migration_from_an_older_version(ledger_location: Path | str) -> None:
    db = _raw(ledger_location)
    assert migrate(db, target=1) == 1
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'finished', '2026-11-20')")
    db.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, updated_at) "
               "VALUES ('acme', 'hourly', 'f.csv', 1, 1.0, 'abc', 'recorded', 'r1', 'now')")
    db.execute("INSERT INTO transactions (scope, feed, transaction_id, content_hash, state, file_id, "
               "source_file, source_lines, rows, amount, first_run_id, last_run_id, created_at, updated_at) "
               "VALUES ('acme', 'hourly', 'T1', 'h', 'failed_retryable', 1, 'f.csv', '[2]', 1, '9.99', "
               "'r1', 'r1', 'now', 'now')")
    db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES ('r1', 1, 'file')")
    db.close()
    with Ledger(ledger_location) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert ledger.known("acme") == [("T1", "h")]
        assert ledger.file_totals([1]) == []
        rerun = ledger.start_run(feed="hourly", scope="acme", kind="rerun")
        ledger.requeue(ledger.select_for_rerun("acme"), rerun)
        ledger.finish_run(rerun, status="finished", exit_code=0, counts={})
        (row,) = ledger.run_transactions(rerun)
        assert row.state is TxnState.QUEUED and row.amount == Decimal("9.99")


def test_migration_keeps_input_totals_with_their_currency(ledger_location: Path | str) -> None:
    """Totals recorded before they were kept per currency take their transactions' one currency."""
    db = _raw(ledger_location)
    assert migrate(db, target=3) == 3
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'finished', '2026-11-20')")
    for name in ("f.csv", "g.csv"):
        db.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, "
                   "updated_at) VALUES ('acme', 'hourly', ?, 1, 1.0, ?, 'recorded', 'r1', 'now')",
                   (name, name))
    for tid, file_id, currency in (("T1", 1, "EUR"), ("T2", 1, "EUR"), ("T3", 2, "EUR"), ("T4", 2, "GBP")):
        db.execute("INSERT INTO transactions (scope, feed, transaction_id, state, file_id, source_file, "
                   "source_lines, rows, store_id, business_date, currency, amount, first_run_id, "
                   "last_run_id, created_at, updated_at) VALUES ('acme', 'hourly', ?, 'accepted', ?, "
                   "'f.csv', '[2]', 1, 'S1', '2026-11-20', ?, '1.00', 'r1', 'r1', 'now', 'now')",
                   (tid, file_id, currency))
    for file_id in (1, 2):
        db.execute("INSERT INTO file_totals VALUES (?, 'S1', '2026-11-20', 2, 2, '2.00')", (file_id,))
    db.close()
    with Ledger(ledger_location) as ledger:
        assert ledger.currency_totals([1, 2]) == [
            (1, "S1", "2026-11-20", "EUR", 2, 2, Decimal("2.00")),
            (2, "S1", "2026-11-20", "", 2, 2, Decimal("2.00")),  # two currencies: cannot be split
        ]


def test_migration_dates_each_files_fetch_by_its_first_run(ledger_location: Path | str) -> None:
    """Files recorded before fetched_at existed take their first run's start: no later than their
    fetch, so the racily-clean rule stays on the safe side."""
    db = _raw(ledger_location)
    assert migrate(db, target=8) == 8
    started = "2026-11-20T03:15:00.000000+00:00"
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'finished', ?)", (started,))
    db.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, updated_at) "
               "VALUES ('acme', 'hourly', 'f.csv', 1, 1.0, 'abc', 'finished', 'r1', 'now')")
    db.close()
    with Ledger(ledger_location) as ledger:
        (record,) = ledger.files(scope="acme")
        assert record.fetched_at == started
        run = ledger.start_run(feed="hourly", scope="acme")
        new = ledger.register_file(run, scope="acme", feed="hourly", name="g.csv", size=1, mtime=2.0,
                                   sha256="def", fetched_at="2026-11-21T03:15:00.000000+00:00")
        assert ledger.file(new.id).fetched_at == "2026-11-21T03:15:00.000000+00:00"


def test_migration_keeps_the_money_partly_refunded_returns_did_refund(ledger_location: Path | str) -> None:
    """Returns settled partly refunded before the ledger kept the money refunded in a column of its
    own (version 11) take it from their messages when migrated, as exact text with the currency,
    and so does each run's kept outcome: their reports keep their figures, whatever the messages
    say later. A return whose landed lines were found by a read-back has no amount (None)."""
    db = _raw(ledger_location)
    assert migrate(db, target=11) == 11
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at, counts) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'finished', '2026-11-20', '{}')")
    db.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, updated_at) "
               "VALUES ('acme', 'hourly', 'f.csv', 1, 1.0, 'abc', 'finished', 'r1', 'now')")
    in_part = ("partly refunded: the platform refunded 1.20 of 4.20 (MILK x1 (1.20)) and refused BREAD x1 "
               "(3.00): 112204 nope; once the cause is fixed, `posfeed rerun --feed acme_hourly --failed "
               "--include-permanent` sends only what was refused (what landed is read back)")
    read_back = ("partly refunded: the platform holds 1 refund event(s) of it (read back) and refused the "
                 "rest: 112204 nope")
    rows = (("R-1", "JPY", "-4200", in_part.replace("1.20 of 4.20", "1200 of 4200")),
            ("R-2", "GBP", "-4.20", in_part), ("R-3", "GBP", "-4.20", read_back))
    for n, (tid, currency, amount, message) in enumerate(rows, start=1):
        db.execute("INSERT INTO transactions (scope, feed, transaction_id, state, file_id, source_file, "
                   "source_lines, rows, store_id, business_date, transaction_type, currency, amount, "
                   "last_error_code, last_error_message, attempts, first_run_id, last_run_id, created_at, "
                   "updated_at) VALUES ('acme', 'hourly', ?, 'failed_permanent', 1, 'f.csv', ?, 2, 'S1', "
                   "'2026-11-20', 'return', ?, ?, 'partly_refunded', ?, 1, 'r1', 'r1', 'now', 'now')",
                   (tid, f"[{2 * n}, {2 * n + 1}]", currency, amount, message))
        db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin, state_at_end, attempts_at_end, "
                   "error_code_at_end, error_message_at_end, last_run_id_at_end) "
                   "VALUES ('r1', ?, 'file', 'failed_permanent', 1, 'partly_refunded', ?, 'r1')",
                   (n, message))
    db.close()
    with Ledger(ledger_location) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        kept = [tuple(r) for r in ledger._db.query(
            "SELECT t.transaction_id, t.refunded, rt.refunded_at_end FROM transactions t "
            "JOIN run_transactions rt ON rt.txn_row_id = t.id ORDER BY t.id")]
        assert kept == [("R-1", "1200 JPY", "1200 JPY"), ("R-2", "1.20 GBP", "1.20 GBP"),
                        ("R-3", None, None)]
        with ledger._db.transaction() as db:  # a sweep or a new wording rewrites the messages
            db.execute("UPDATE transactions SET last_error_message = 'partly refunded'")
            db.execute("UPDATE run_transactions SET error_message_at_end = 'partly refunded'")
        assert {r.transaction_id: r.refunded for r in ledger.run_transactions("r1")} == {
            "R-1": Decimal("1200"), "R-2": Decimal("1.20"), "R-3": None}
        summary = run_report(ledger, "r1").summary
    assert summary["partly_refunded"] == 3
    assert summary["currencies"]["GBP"]["amount_partly_refunded"] == "-1.20"
    assert summary["currencies"]["JPY"]["amount_partly_refunded"] == "-1200"


def test_a_run_keeps_its_own_outcomes(ledger: Ledger) -> None:
    """A later run's attempts, errors and event ids do not change what an earlier run reports."""
    first = ledger.start_run(feed="hourly", scope="acme")
    file = ledger.register_file(first, scope="acme", feed="hourly", name="f.csv", size=1, mtime=1.0,
                                sha256="abc")
    ledger.record_file(first, file, transactions=[_txn("T1")], rejects=[],
                       totals=[("S1", "2026-11-20", 1, 1, Decimal("10.50"), "GBP")])
    ledger.start_sending("acme", ["T1"], first)
    ledger.fail_retryable("acme", "T1", first, code="503", message="busy")
    ledger.finish_run(first, status="finished", exit_code=75, counts={})
    second = ledger.start_run(feed="hourly", scope="acme", kind="rerun")
    ledger.requeue(ledger.select_for_rerun("acme"), second)
    ledger.start_sending("acme", ["T1"], second)
    ledger.accept("acme", "T1", second, event_ids=["ev-1"], points=Decimal("10"))
    ledger.finish_run(second, status="finished", exit_code=0, counts={})
    (mine,) = ledger.run_transactions(first)
    kept = (mine.state, mine.attempts, mine.last_error_code, mine.last_error_message, mine.event_ids,
            mine.points, mine.last_run_id)
    assert kept == (TxnState.FAILED_RETRYABLE, 1, "503", "busy", (), None, first)
    (theirs,) = ledger.run_transactions(second)
    now = (theirs.state, theirs.attempts, theirs.last_error_code, theirs.event_ids, theirs.last_run_id)
    assert now == (TxnState.ACCEPTED, 2, None, ("ev-1",), second)


def test_a_crashed_run_closed_later_keeps_its_own_outcomes_and_no_other_runs(ledger: Ledger) -> None:
    """Closing a crashed run keeps the outcomes of its rows as it left them, and only its own: the
    finished run before it (same row) keeps what it reported."""
    first = ledger.start_run(feed="hourly", scope="acme")
    file = ledger.register_file(first, scope="acme", feed="hourly", name="f.csv", size=1, mtime=1.0,
                                sha256="abc")
    ledger.record_file(first, file, transactions=[_txn("T1"), _txn("T2", line=3)], rejects=[],
                       totals=[("S1", "2026-11-20", 2, 2, Decimal("21.00"), "GBP")])
    ledger.start_sending("acme", ["T1", "T2"], first)
    ledger.fail_retryable("acme", "T1", first, code="503", message="busy")
    ledger.accept("acme", "T2", first, event_ids=["ev-2"], points=Decimal("2"))
    ledger.finish_run(first, status="finished", exit_code=75, counts={})
    crashed = ledger.start_run(feed="hourly", scope="acme", kind="rerun")
    ledger.requeue(ledger.select_for_rerun("acme"), crashed)
    ledger.start_sending("acme", ["T1"], crashed)
    ledger.accept("acme", "T1", crashed, event_ids=["ev-1"], points=Decimal("10"))
    assert ledger.close_abandoned_runs("acme") == [crashed]
    with ledger._db.transaction() as db:  # later changes to the rows are not the runs' outcomes
        db.execute("UPDATE transactions SET attempts = 9, last_error_message = 'later'")

    def kept(run_id: str) -> list[tuple[object, ...]]:
        return [(r.transaction_id, r.state, r.attempts, r.last_error_code, r.last_error_message,
                 r.event_ids, r.points, r.last_run_id) for r in ledger.run_transactions(run_id)]

    assert kept(first) == [("T1", TxnState.FAILED_RETRYABLE, 1, "503", "busy", (), None, first),
                           ("T2", TxnState.ACCEPTED, 1, None, None, ("ev-2",), Decimal("2"), first)]
    assert kept(crashed) == [("T1", TxnState.ACCEPTED, 2, None, None, ("ev-1",), Decimal("10"), crashed)]


def test_migration_leaves_room_for_each_runs_outcomes(ledger_location: Path | str) -> None:
    """Version 13: on PostgreSQL the run membership table is filled to 30% of each page
    (``fillfactor``), so keeping a run's outcomes rewrites each row within its page (a HOT update,
    no new index entry); rows and kept outcomes recorded before are unchanged, and runs after it
    keep theirs. SQLite's table is as it was."""
    db = _raw(ledger_location)
    assert migrate(db, target=12) == 12
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at, counts) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'finished', '2026-11-20', '{}')")
    db.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, updated_at) "
               "VALUES ('acme', 'hourly', 'f.csv', 1, 1.0, 'abc', 'finished', 'r1', 'now')")
    db.execute("INSERT INTO transactions (scope, feed, transaction_id, content_hash, state, file_id, "
               "source_file, source_lines, rows, amount, attempts, last_error_code, last_error_message, "
               "first_run_id, last_run_id, created_at, updated_at) VALUES ('acme', 'hourly', 'T1', 'h', "
               "'failed_retryable', 1, 'f.csv', '[2]', 1, '9.99', 1, '503', 'busy', 'r1', 'r1', 'now', "
               "'now')")
    db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin, state_at_end, attempts_at_end, "
               "error_code_at_end, error_message_at_end, last_run_id_at_end) "
               "VALUES ('r1', 1, 'file', 'failed_retryable', 1, '503', 'busy', 'r1')")
    db.close()
    with Ledger(ledger_location) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        if isinstance(ledger_location, str):
            (options,) = ledger._db.one("SELECT reloptions FROM pg_class WHERE relname = 'run_transactions' "
                                        "AND relnamespace = to_regnamespace(current_schema())::oid")
            assert options == ["fillfactor=30"]
        rerun = ledger.start_run(feed="hourly", scope="acme", kind="rerun")
        ledger.requeue(ledger.select_for_rerun("acme"), rerun)
        ledger.start_sending("acme", ["T1"], rerun)
        ledger.accept("acme", "T1", rerun, event_ids=["ev-1"])
        ledger.finish_run(rerun, status="finished", exit_code=0, counts={})
        (before,) = ledger.run_transactions("r1")
        assert (before.state, before.attempts, before.last_error_message, before.last_run_id) == (
            TxnState.FAILED_RETRYABLE, 1, "busy", "r1")
        (after,) = ledger.run_transactions(rerun)
        assert (after.state, after.attempts, after.event_ids, after.last_run_id) == (
            TxnState.ACCEPTED, 2, ("ev-1",), rerun)


def test_a_newer_schema_is_refused(ledger_location: Path | str) -> None:
    Ledger(ledger_location).close()
    db = _raw(ledger_location)
    db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(Exception, match="newer"):
        Ledger(ledger_location)


def test_money_round_trips_exactly(ledger: Ledger) -> None:
    """Amounts and points are decimal strings in both backends: what goes in comes out, digit for digit."""
    amounts = ("123456789012345.123456789", "-0.10", "0.00", "1E+3")
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    ledger.record_file(run_id, _file(ledger, run_id),
                       transactions=[_txn(f"T{i}", line=i + 2, amount=a) for i, a in enumerate(amounts)],
                       rejects=[],
                       totals=[("S1", "2026-11-20", 4, 4, Decimal("123456789012345.023456789"))])
    ledger.start_sending(SCOPE, ["T0"], run_id)
    ledger.accept(SCOPE, "T0", run_id, points=Decimal("0.0001"))
    rows = ledger.transactions_by_row_id([1, 2, 3, 4])
    assert [str(r.amount) for r in rows] == list(amounts)
    assert str(rows[0].points) == "0.0001"
    assert ledger.file_totals([1])[0][5] == Decimal("123456789012345.023456789")


_OPEN_AT_ONCE = """
import sys
from pipeline.ledger import Ledger
sys.stdin.readline()  # both processes are started before either opens the ledger
with Ledger(sys.argv[1]) as ledger:
    print(ledger.schema_version)
"""


def test_two_processes_opening_a_new_ledger_at_once_migrate_it_once(ledger_location: Path | str) -> None:
    pipe = subprocess.PIPE
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(ledger_location)],
                              stdin=pipe, stdout=pipe, stderr=pipe, text=True) for _ in range(4)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == [str(SCHEMA_VERSION)] * 4
    db = _raw(ledger_location)
    assert [tuple(r) for r in db.query("SELECT version FROM schema_version")] == [(SCHEMA_VERSION,)]
    db.close()


def test_a_private_copy_of_a_postgresql_ledger_changes_nothing_shared(postgres_db: str) -> None:
    """A dry run's ledger: the real rows are there to read; what it writes stays in its session."""
    with Ledger(postgres_db) as real:
        _queued(real, "T1")
    with Ledger(postgres_db, private_copy=True) as copy:
        assert copy.state_counts(SCOPE) == {"queued": 1}
        run_id = copy.start_run(feed="hourly", scope=SCOPE, dry_run=True)
        copy.record_file(run_id, _file(copy, run_id, name="g.csv", sha="b" * 64),
                         transactions=[_txn("T2")], rejects=[], totals=[])
        copy.start_sending(SCOPE, ["T1"], run_id)
        assert copy.state_counts(SCOPE) == {"queued": 1, "sending": 1}
        assert [r.id for r in copy.transactions_by_row_id([2])] == [2]  # ids go on after the real ones
        with Ledger(postgres_db) as meanwhile:
            assert meanwhile.state_counts(SCOPE) == {"queued": 1}
    with Ledger(postgres_db) as real:
        assert real.state_counts(SCOPE) == {"queued": 1} and len(real.runs()) == 1


def test_a_lost_postgresql_connection_is_a_temporary_failure(postgres_db: str) -> None:
    """The server ends the session (restart, failover): exit 75, try again later; nothing half-done."""
    ledger = Ledger(postgres_db)
    backend = ledger._db.one("SELECT pg_backend_pid()")
    assert backend is not None
    with psycopg.connect(postgres_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend[0],))
    with pytest.raises(LedgerUnavailableError) as caught:
        ledger.start_run(feed="hourly", scope=SCOPE)
    assert caught.value.exit_code == 75
    with pytest.raises(LedgerUnavailableError):
        ledger.runs()
    ledger.close()
    with Ledger(postgres_db) as reopened:
        assert reopened.runs() == []


def test_a_large_file_refreshes_the_postgresql_planner_statistics(postgres_db: str) -> None:
    """After a file of ANALYZE_AFTER_ROWS transactions or more, the next lookups are planned on the
    table as it now is (``reltuples`` is what ANALYZE measured; -1 is a table never analyzed)."""
    count = ANALYZE_AFTER_ROWS + 5
    with Ledger(postgres_db) as ledger:
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        ledger.record_file(run_id, _file(ledger, run_id),
                           transactions=[_txn(f"T{i}", line=i + 2) for i in range(count)], rejects=[],
                           totals=[("S1", "2026-11-20", count, count, Decimal("10.50") * count)])
        with psycopg.connect(postgres_db) as conn:
            row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'transactions'").fetchone()
    assert row is not None and row[0] == count


def test_postgresql_statistics_are_refreshed_when_a_runs_rows_have_doubled(postgres_db: str) -> None:
    """Not after every file: after ANALYZE_AFTER_ROWS rows, then each time what the connection
    appended has doubled (a day of n rows costs log2(n / ANALYZE_AFTER_ROWS) ANALYZEs)."""
    size = ANALYZE_AFTER_ROWS

    def reltuples() -> float:
        with psycopg.connect(postgres_db) as conn:
            row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'transactions'").fetchone()
        assert row is not None
        return float(row[0])

    seen = []
    with Ledger(postgres_db) as ledger:
        with psycopg.connect(postgres_db, autocommit=True) as admin:  # only the ledger analyzes here
            admin.execute("ALTER TABLE transactions SET (autovacuum_enabled = false)")
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        for number in range(4):
            ledger.record_file(
                run_id, _file(ledger, run_id, name=f"f{number}.csv", sha=str(number) * 64),
                transactions=[_txn(f"T{number}-{i}", line=i + 2) for i in range(size)], rejects=[],
                totals=[("S1", "2026-11-20", size, size, Decimal("10.50") * size)])
            seen.append(reltuples())
    assert seen == [size, 2 * size, 2 * size, 4 * size]


def test_postgresql_statistics_are_refreshed_on_a_small_sample_and_lookups_keep_their_index(
    postgres_db: str,
) -> None:
    """The ledger's own refresh samples with ANALYZE_STATISTICS_TARGET (at most that many histogram
    buckets, one bound more, for a listed column), not the server's default of 100, and the
    dedup lookup of a chunk of transaction ids planned on those statistics still uses its index;
    the session keeps its own target."""
    count = 32 * ANALYZE_AFTER_ROWS
    with Ledger(postgres_db) as ledger:
        with psycopg.connect(postgres_db, autocommit=True) as admin:  # only the ledger analyzes here
            admin.execute("ALTER TABLE transactions SET (autovacuum_enabled = false)")
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        ledger.record_file(run_id, _file(ledger, run_id),
                           transactions=[_txn(f"T{i}", line=i + 2) for i in range(count)], rejects=[],
                           totals=[("S1", "2026-11-20", count, count, Decimal("10.50") * count)])
        session_target = ledger._db.one("SHOW default_statistics_target")  # the ANALYZE's alone
    ids = [f"T{i}" for i in range(0, count, count // 500)][:500]
    with psycopg.connect(postgres_db) as conn:
        bounds = conn.execute("SELECT array_length(histogram_bounds, 1) FROM pg_stats "
                              "WHERE tablename = 'transactions' AND attname = 'id'").fetchone()
        plan = conn.execute(
            f"EXPLAIN (FORMAT JSON) SELECT id, transaction_id, state, content_hash, first_run_id "
            f"FROM transactions WHERE scope = %s AND transaction_id IN ({', '.join(['%s'] * len(ids))}) "
            f"AND state IN {PRIMARY_SQL}", (SCOPE, *ids)).fetchone()
    assert bounds is not None and 2 <= bounds[0] <= ANALYZE_STATISTICS_TARGET + 1
    assert session_target is not None and session_target[0] == "100"
    assert plan is not None

    def indexes(node: dict[str, Any]) -> set[str]:
        return {node.get("Index Name", "")}.union(*(indexes(child) for child in node.get("Plans", [])))

    assert indexes(plan[0][0]["Plan"]) & {"transactions_primary", "transactions_tid"}


def test_a_dry_run_copies_every_table_of_the_postgresql_ledger(postgres_db: str) -> None:
    """A table the migrations add but the dry run's copy misses would be written for real."""
    Ledger(postgres_db).close()
    with psycopg.connect(postgres_db) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == set(TABLES)


def test_returns_are_looked_up_with_the_indexed_expression(
    ledger: Ledger, ledger_location: Path | str
) -> None:
    """returns_of repeats the expression migration 6 indexes, in the database's own words."""
    expected = ORIGINAL_SQL if isinstance(ledger_location, Path) else ORIGINAL_SQL_POSTGRES
    assert ledger._db.json_text("checkout", "original_transaction_id") == expected


def test_problems_open_escalate_and_resolve_with_their_alerts(ledger: Ledger) -> None:
    """The problem life cycle and its alert outbox, in one transaction per change (both backends)."""
    seen = Observation(kind="missing_file", key="acme:missing:S1", feed="hourly", scope=SCOPE,
                       summary="S1 10:00 missing", action="ask the store", counts={"files": 1})
    (opened,) = ledger.apply_problems(Plan((Change("opened", None, seen),)), run_id=None,
                                      alert=lambda p, e: {"event": e, "id": p.id})
    worse = replace(seen, stage=1, counts={"files": 2})
    (escalated,) = ledger.apply_problems(Plan((Change("escalated", opened, worse),)), run_id=None,
                                         alert=lambda p, e: {"event": e, "id": p.id})
    assert (escalated.id, escalated.stage, escalated.counts) == (opened.id, 1, {"files": 2})
    assert escalated.escalated_at is not None and ledger.problems(scope=SCOPE) == [escalated]
    pending = ledger.pending_alerts(SCOPE)
    assert [a["payload"] for a in pending] == [{"event": "opened", "id": opened.id},
                                               {"event": "escalated", "id": opened.id}]
    ledger.alert_delivered(pending[0]["id"])
    ledger.alert_failed(pending[1]["id"], "timeout", "2999-01-01T00:00:00+00:00")
    assert ledger.pending_alerts(SCOPE, due_by="2100-01-01T00:00:00+00:00") == []
    (resolved,) = ledger.apply_problems(Plan((Change("resolved", escalated, None),)), run_id=None,
                                        alert=lambda p, e: None)
    assert resolved.status == "resolved" and ledger.problems(scope=SCOPE) == []
    assert ledger.last_resolved_at(seen.key) == resolved.resolved_at


def test_returns_are_found_by_the_sale_they_name(ledger: Ledger) -> None:
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)

    def row(tid: str, line: int, kind: str, original: str | None = None) -> NewTransaction:
        checkout = {"transaction_id": tid, **({"original_transaction_id": original} if original else {})}
        return replace(_txn(tid, line=line), transaction_type=kind, checkout=json.dumps(checkout))

    ledger.record_file(run_id, _file(ledger, run_id), rejects=[], totals=[],
                       transactions=[row("S1", 2, "sale"), row("R1", 3, "return", "S1"),
                                     row("S2", 4, "sale"), row("R2", 5, "return", "S1"),
                                     row("R3", 6, "return", "S2")])
    found = ledger.returns_of(SCOPE, ["S1", "S9"])
    assert {k: [r.record.transaction_id for r in v] for k, v in found.items()} == {"S1": ["R1", "R2"]}
    assert ledger.returns_naming(SCOPE, ["S2"])["S2"][0].transaction_id == "R3"


# a statement that fails on the server: run_transactions names a transaction row that is not there
_ATTACH_A_MISSING_ROW = "INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES (?, ?, 'file')"
_MISSING_ROW = 424242


def _finished_at(ledger: Ledger, run_id: str) -> object:
    row = ledger._db.one("SELECT finished_at FROM runs WHERE id = ?", (run_id,))
    assert row is not None
    return row[0]


def test_a_failed_bulk_write_rolls_back_its_whole_transaction(ledger: Ledger) -> None:
    """PostgreSQL collects a transaction's bulk write with its commit (or its next statement):
    when that write fails, the commit raises and nothing of the transaction stays."""
    run_id = ledger.start_run(feed="hourly", scope=SCOPE)
    with pytest.raises((LedgerError, sqlite3.IntegrityError)), ledger._db.transaction() as db:
        db.execute("UPDATE runs SET finished_at = 'then' WHERE id = ?", (run_id,))
        db.executemany(_ATTACH_A_MISSING_ROW, [(run_id, _MISSING_ROW)])
    assert _finished_at(ledger, run_id) is None
    with pytest.raises((LedgerError, sqlite3.IntegrityError)), ledger._db.transaction() as db:
        db.executemany(_ATTACH_A_MISSING_ROW, [(run_id, _MISSING_ROW)])
        db.execute("UPDATE runs SET finished_at = 'then' WHERE id = ?", (run_id,))
    assert _finished_at(ledger, run_id) is None
    assert ledger.runs()[0].id == run_id


def test_a_caught_failure_inside_a_postgresql_transaction_is_never_committed(postgres_db: str) -> None:
    """PostgreSQL answers COMMIT of a failed transaction with a silent rollback: it is an error."""
    with Ledger(postgres_db) as ledger:
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        with pytest.raises(LedgerError, match="rolled back"), ledger._db.transaction() as db:
            db.execute("UPDATE runs SET finished_at = 'then' WHERE id = ?", (run_id,))
            with contextlib.suppress(LedgerError):
                db.execute(_ATTACH_A_MISSING_ROW, (run_id, _MISSING_ROW))
        assert _finished_at(ledger, run_id) is None


def test_a_postgresql_write_transaction_waits_for_the_server_twice(postgres_db: str) -> None:
    """BEGIN and the write lock go with the first statement that waits for an answer, a bulk
    write with the COMMIT: a lookup, a bulk update and the commit are two round trips."""
    with Ledger(postgres_db) as ledger:
        run_id = _queued(ledger, "T1")
        before = round_trips()
        with ledger._db.transaction() as db:
            rows = db.query("SELECT id FROM transactions WHERE scope = ?", (SCOPE,))
            db.executemany("UPDATE transactions SET last_run_id = ? WHERE id = ?",
                           [(run_id, r[0]) for r in rows])
        assert round_trips() - before == 2
        before = round_trips()
        ledger.start_sending(SCOPE, ["T1"], run_id)
        ledger.accept(SCOPE, "T1", run_id)
        assert round_trips() - before == 4  # in doubt: update, commit; settled: lookup, update + commit
        assert _state(ledger, "T1") is TxnState.ACCEPTED
        second = _queued(ledger, "T2", "T3")
        ledger.start_sending(SCOPE, ["T2"], second)
        before = round_trips()  # the answer read and the next request's mark: one commit
        ledger.start_sending(SCOPE, ["T3"], second,
                             settled=[EventResult("T2", Outcome.ACCEPTED, (), None, None, None)])
        assert round_trips() - before == 3  # lookup; settling update with the in-doubt one; commit
        assert (_state(ledger, "T2"), _state(ledger, "T3")) == (TxnState.ACCEPTED, TxnState.SENDING)


def test_a_postgresql_ledger_without_pipeline_mode_waits_for_each_statement(
        postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A libpq older than 14 has no pipeline mode: the same work, every statement waited for."""
    monkeypatch.setattr(postgres, "_PIPELINE_MODE", False)
    with Ledger(postgres_db) as ledger:
        run_id = _queued(ledger, "T1")
        before = round_trips()
        ledger.start_sending(SCOPE, ["T1"], run_id)
        ledger.accept(SCOPE, "T1", run_id)
        # BEGIN, lock, update, COMMIT; BEGIN, lock, lookup, updates, COMMIT
        assert round_trips() - before == 9
        assert _state(ledger, "T1") is TxnState.ACCEPTED
        with pytest.raises(LedgerError), ledger._db.transaction() as db:
            db.execute("UPDATE runs SET finished_at = 'then' WHERE id = ?", (run_id,))
            db.executemany(_ATTACH_A_MISSING_ROW, [(run_id, _MISSING_ROW)])
        assert _finished_at(ledger, run_id) is None


def test_a_connection_lost_before_commit_leaves_nothing_of_the_transaction(postgres_db: str) -> None:
    """The server ends the session while a transaction's bulk write waits for its COMMIT in the
    pipeline: exit 75 (try again), and nothing of the transaction is in the ledger."""
    with Ledger(postgres_db) as setup:
        run_id = _queued(setup, "T1")
    ledger = Ledger(postgres_db)
    backend = ledger._db.one("SELECT pg_backend_pid()")
    assert backend is not None
    with pytest.raises(LedgerUnavailableError) as caught, ledger._db.transaction() as db:
        db.execute("UPDATE runs SET finished_at = 'then' WHERE id = ?", (run_id,))
        db.executemany("UPDATE transactions SET last_error_code = ? WHERE id = ?", [("lost", 1)])
        with psycopg.connect(postgres_db, autocommit=True) as admin:  # waits until it has ended
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (backend[0],))
    assert caught.value.exit_code == 75
    ledger.close()
    with Ledger(postgres_db) as reopened:
        assert _finished_at(reopened, run_id) is None
        (row,) = reopened.transactions_by_row_id([1])
        assert row.last_error_code is None


def _sqlite_schema(path: Path) -> tuple[dict[str, list[tuple[str, str, bool]]], set[str]]:
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = {t: [(r[1], r[2], bool(r[3]) or (bool(r[5]) and r[2] != "INTEGER")) for r in
                   db.execute(f"PRAGMA table_info({t})")] for t in tables}
    indexes = {r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'")}
    db.close()
    return columns, indexes


def test_both_backends_build_the_same_schema(tmp_path: Path, postgres_db: str) -> None:
    """One set of migrations, written for SQLite and translated for PostgreSQL: the same tables,
    columns in the same order, the same NOT NULLs and indexes; ids are identity columns, and an
    integer that names a row or counts rows, bytes or lines is BIGINT there."""
    Ledger(tmp_path / "ledger.sqlite").close()
    Ledger(postgres_db).close()
    sqlite_columns, sqlite_indexes = _sqlite_schema(tmp_path / "ledger.sqlite")
    with psycopg.connect(postgres_db) as pg:
        pg_columns: dict[str, list[tuple[str, str, bool]]] = {}
        for table, name, kind, nullable, identity in pg.execute(
                "SELECT table_name, column_name, data_type, is_nullable, is_identity "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position"):
            if identity == "YES":
                kind = "identity " + kind
            pg_columns.setdefault(table, []).append((name, kind, nullable == "NO"))
        pg_indexes = {r[0] for r in pg.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey'")}
    assert set(sqlite_columns) == set(pg_columns) == set(TABLES)
    assert sqlite_indexes == pg_indexes
    wide = {"size", "rows", "rows_in", "transactions", "source_line"}
    for table, columns in sqlite_columns.items():
        expected = []
        for name, kind, not_null in columns:
            if kind == "INTEGER" and name == "id":
                expected.append((name, "identity bigint", True))
                continue
            if kind == "INTEGER":
                kind = "bigint" if name.endswith("_id") or name in wide else "integer"
            expected.append((name, {"TEXT": "text", "REAL": "double precision"}.get(kind, kind), not_null))
        assert pg_columns[table] == expected, table


def test_many_openers_of_a_new_sqlite_ledger_all_open_it(tmp_path: Path) -> None:
    """Eight threads open one new ledger file at once, 150 times over: every open succeeds. SQLite
    does not wait for a file another connection is converting to WAL; before the conversion was
    retried, about one round in twelve had an opener fail with "database is locked"."""
    failures: list[str] = []
    for round_number in range(150):
        path = tmp_path / f"{round_number}" / "ledger.sqlite"
        start = threading.Barrier(8)

        def open_it(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                db, _ = open_sqlite(path)
                db.close()
            except Exception as exc:  # every failure is collected and shown (its path names the round)
                failures.append(str(exc))

        openers = [threading.Thread(target=open_it) for _ in range(8)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    assert failures == []
