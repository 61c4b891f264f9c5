"""While a ledger commit waits for the database, the submit stage goes on reading answers, and no
request goes out before its in-doubt mark is committed.

The ledger's write lock is taken by another connection (SQLite: ``BEGIN IMMEDIATE`` on the file;
PostgreSQL: the ledger's write advisory lock) the moment the second request is built, so the next
commit stalls in the database. The sandbox holds that second request's answer until a commit is
stalled; then the answer arrives and is read while the commit still waits. Shown to fail with the
commits on the event loop's thread: the loop waits inside the commit, so the answer is read only
once the commit is over (PostgreSQL: never, until the lock is let go).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline import runner
from pipeline.config import Feed
from pipeline.ledger import Ledger
from pipeline.ledger.postgres import WRITE_LOCK
from pipeline.records import EventResult
from pipeline.runner import RunSummary
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import make_sink
from pipeline.sinks.base import Sink
from tests.runner_helpers import credentials, delivered_ids, sample_feed, settings_in, stats

HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)
SALES = [f"S-{n}" for n in range(8)]
WAIT = 120.0  # seconds: only a failsafe for a broken run (nothing here waits this long when it works)


class WriteLock:
    """The ledger's write lock, held by a connection of its own."""

    def __init__(self, location: Path | str):
        self._location = location
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None

    def take(self) -> None:
        if isinstance(self._location, Path):
            self._sqlite = sqlite3.connect(self._location, isolation_level=None, check_same_thread=False,
                                           timeout=WAIT)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            self._pg = psycopg.connect(self._location, autocommit=True)
            self._pg.execute("SELECT pg_advisory_lock(%s, %s)", WRITE_LOCK)

    def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


class Watch:
    """What the run did around the held lock: commits (the answers each settled), requests built,
    answers read."""

    def __init__(self, lock: WriteLock):
        self.lock = lock
        self.mutex = threading.Lock()
        self.held = False  # the lock is held (taken, not yet released)
        self.commits: list[set[str]] = []  # the answers each commit settled, in the order they began
        self.running: set[int] = set()  # commits begun and not over
        self.built = 0
        self.built_while_held: list[list[str]] = []
        self.stalled = threading.Event()  # a commit is running while the lock is held
        self.read_during: dict[str, set[int]] = {}  # answers read while the lock held a commit
        self.read_while_stalled = threading.Event()

    def commit(self, original: Any, answers: Sequence[EventResult], /, *args: Any, **kwargs: Any) -> None:
        with self.mutex:
            number = len(self.commits)
            self.commits.append({r.transaction_id for r in answers})
            self.running.add(number)
            if self.held:
                self.stalled.set()
        try:
            original(*args, **kwargs)
        finally:
            with self.mutex:
                self.running.discard(number)

    def release(self) -> None:
        with self.mutex:
            self.held = False
        self.lock.release()

    def sink(self, feed: Feed) -> Sink:
        sink: Any = make_sink(feed)
        adapter = sink.adapter
        build, parse = adapter.build_request, adapter.parse_response

        async def build_request(batch: Any, client: Any) -> Any:
            request = await build(batch, client)
            with self.mutex:
                self.built += 1
                if self.held:
                    self.built_while_held.append(batch.transaction_ids)
                take = self.built == 2
            if take:  # both requests in flight are marked in doubt: the next commit stalls
                self.lock.take()
                with self.mutex:
                    self.held = True
            return request

        def parse_response(batch: Any, *args: Any) -> Any:
            with self.mutex:
                if self.held and self.running:
                    self.read_during.update({t: set(self.running) for t in batch.transaction_ids})
                    self.read_while_stalled.set()
            return parse(batch, *args)

        adapter.build_request, adapter.parse_response = build_request, parse_response
        return sink  # type: ignore[no-any-return]


def _wait(event: threading.Event, run: threading.Thread) -> bool:
    """Whether ``event`` happened (False when the run ended first, or after the failsafe)."""
    deadline = time.monotonic() + WAIT
    while not event.wait(0.05):
        if not run.is_alive() or time.monotonic() > deadline:
            return False
    return True


def test_answers_are_read_while_a_commit_waits_and_no_request_outruns_its_mark(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [f"{tid},LON01,R1,2026-11-20 10:{n:02d}:00,2026-11-20,M{n},sale,1,P1,Tea,drinks,1,2.50,,2.50,"
            "GBP,2.50,," for n, tid in enumerate(SALES)]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    watch = Watch(WriteLock(ledger_location))
    start_sending, apply_results = Ledger.start_sending, Ledger.apply_results

    def watched_start_sending(self: Ledger, *args: Any, settled: Sequence[EventResult] = (),
                              **kwargs: Any) -> None:
        watch.commit(start_sending, settled, self, *args, settled=settled, **kwargs)

    def watched_apply_results(self: Ledger, scope: str, results: Sequence[EventResult], *args: Any,
                              **kwargs: Any) -> None:
        watch.commit(apply_results, results, self, scope, results, *args, **kwargs)

    monkeypatch.setattr(Ledger, "start_sending", watched_start_sending)
    monkeypatch.setattr(Ledger, "apply_results", watched_apply_results)
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)
    summaries: list[RunSummary] = []
    with SandboxServer() as sandbox, credentials(sandbox):
        # the first request is answered; the second (and any later one) waits until released
        sandbox.config.hold_ms, sandbox.config.hold_after = WAIT * 1000, ("requests", 2)
        feed = sample_feed("acme_hourly", sandbox, folder=drop, max_concurrency=2, bulk_size=1)
        run = threading.Thread(target=lambda: summaries.append(runner.run_feed(
            feed, settings, business_dates=[date(2026, 11, 20)], make_sink=watch.sink)))
        run.start()
        try:
            stalled = _wait(watch.stalled, run)
            sandbox.config.hold_after = None  # the second request's answer comes back now
            read = stalled and _wait(watch.read_while_stalled, run)
            requests_while_held = stats(sandbox)["requests"]
        finally:
            watch.release()
            run.join(WAIT)
        assert stalled, "no commit ran while the ledger's write lock was held"
        assert read, "no answer was read while a commit waited for the ledger's write lock"
        # nothing went out while every commit waited: a request goes only once its mark is in
        assert watch.built_while_held == []
        assert requests_while_held == 2
        delivered = sorted(delivered_ids(sandbox))
    assert summaries and summaries[0].to_dict()["accepted"] == len(SALES)
    assert delivered == sorted(SALES)  # each once
    # the answers read during the waiting commit(s) are settled by a commit that began later
    for tid, during in watch.read_during.items():
        assert all(tid not in watch.commits[number] for number in during)
        assert any(tid in settled for settled in watch.commits[max(during) + 1:]), tid


def test_a_request_whose_mark_was_committed_while_credentials_were_refused_does_not_go_out(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests at once: the second's in-doubt mark waits for the ledger's write lock while the
    first is answered 401. Before, once its mark was committed the second went out all the same
    (credentials already refused); now it is not sent: its sale is settled failed_retryable
    (credentials), as a batch left unsent is, and the next run sends it."""
    sales = SALES[:2]
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [f"{tid},LON01,R1,2026-11-20 10:{n:02d}:00,2026-11-20,M{n},sale,1,P1,Tea,drinks,1,2.50,,2.50,"
            "GBP,2.50,," for n, tid in enumerate(sales)]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    lock = WriteLock(ledger_location)
    marks: list[list[str]] = []
    sent_before: list[int] = []
    released: list[list[str]] = []
    start_sending = Ledger.start_sending
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)
    with SandboxServer() as sandbox, credentials(sandbox):
        key = sandbox.config.api_key

        def watched_start_sending(self: Ledger, scope: str, transaction_ids: Sequence[str], *args: Any,
                                  **kwargs: Any) -> None:
            marks.append(list(transaction_ids))
            if len(marks) == 1:  # the first request is held by the sandbox, then refused (401)
                sent_before.append(stats(sandbox)["requests"])
                sandbox.config.api_key = "another-key"
                sandbox.config.hold_ms = WAIT * 1000
                sandbox.config.hold_after = ("requests", sent_before[0] + 1)
            elif len(marks) == 2:  # this mark's commit waits for the lock while the 401 comes back
                lock.take()
                sandbox.config.hold_after = None
            start_sending(self, scope, transaction_ids, *args, **kwargs)

        def sink(feed: Feed) -> Sink:
            made: Any = make_sink(feed)
            parse = made.adapter.parse_response

            def parse_response(batch: Any, status: int, *args: Any) -> Any:
                answer = parse(batch, status, *args)
                if status == 401 and not released:  # taken in before the stalled mark is committed
                    released.append(batch.transaction_ids)
                    lock.release()
                return answer

            made.adapter.parse_response = parse_response
            return made  # type: ignore[no-any-return]

        monkeypatch.setattr(Ledger, "start_sending", watched_start_sending)
        feed = sample_feed("acme_hourly", sandbox, folder=drop, max_concurrency=2, bulk_size=1)
        refused = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)], make_sink=sink)
        assert len(marks) == 2, marks
        assert stats(sandbox)["requests"] == sent_before[0] + 1, "a request went out after the 401"
        with Ledger(ledger_location) as ledger:
            states = {r["transaction_id"]: (r["state"], r["retry_class"]) for r in ledger._db.query(
                "SELECT transaction_id, state, retry_class FROM transactions WHERE transaction_id IN (?, ?)",
                tuple(sales))}
            attempts = {r["transaction_id"]: r["attempts"] for r in ledger._db.query(
                "SELECT transaction_id, attempts FROM transactions WHERE transaction_id IN (?, ?)",
                tuple(sales))}
        # each settled failed_retryable (credentials), then put back in the queue for the next run,
        # as every batch left unsent by a refusal is (Ledger.requeue_refused takes only those)
        assert states == {tid: ("queued", "credentials") for tid in sales}, states
        # the refused request counts; the one never sent gives back the attempt its mark added
        assert attempts == {released[0][0]: 1, marks[1][0]: 0}, attempts
        assert refused.to_dict()["accepted"] == 0
        monkeypatch.undo()
        sandbox.config.api_key = key
        again = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert again.to_dict()["accepted"] == len(sales), again.to_dict()
        assert sorted(delivered_ids(sandbox)) == sorted(sales)  # each once


def test_a_request_whose_mark_was_committed_while_a_stop_arrived_gives_its_attempt_back(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop arrives while a request's in-doubt mark is being committed (attempts + 1): the
    request does not go out and its sale is settled failed_retryable (stopped) with the attempt
    its mark added given back (attempts count requests that could have reached the platform);
    the next run sends it once, as its first attempt."""
    sales = SALES[:1]
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [f"{tid},LON01,R1,2026-11-20 10:{n:02d}:00,2026-11-20,M{n},sale,1,P1,Tea,drinks,1,2.50,,2.50,"
            "GBP,2.50,," for n, tid in enumerate(sales)]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    stop = threading.Event()
    marks: list[list[str]] = []
    start_sending = Ledger.start_sending
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)

    def watched_start_sending(self: Ledger, scope: str, transaction_ids: Sequence[str], *args: Any,
                              **kwargs: Any) -> None:
        marks.append(list(transaction_ids))
        start_sending(self, scope, transaction_ids, *args, **kwargs)
        stop.set()  # the stop arrives while the mark commits: seen once it is in

    with SandboxServer() as sandbox, credentials(sandbox):
        monkeypatch.setattr(Ledger, "start_sending", watched_start_sending)
        feed = sample_feed("acme_hourly", sandbox, folder=drop, bulk_size=1)
        stopped = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)], stop=stop)
        assert marks == [sales], marks
        assert delivered_ids(sandbox) == [], "a request went out after the stop"
        assert stopped.to_dict()["accepted"] == 0
        with Ledger(ledger_location) as ledger:
            rows_left = [(r["state"], r["retry_class"], r["attempts"]) for r in ledger._db.query(
                "SELECT state, retry_class, attempts FROM transactions WHERE transaction_id = ?",
                tuple(sales))]
        assert rows_left == [("failed_retryable", "stopped", 0)], rows_left
        monkeypatch.undo()
        again = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert again.to_dict()["accepted"] == len(sales), again.to_dict()
        assert sorted(delivered_ids(sandbox)) == sorted(sales)
        with Ledger(ledger_location) as ledger:
            assert ledger._db.one("SELECT attempts FROM transactions WHERE transaction_id = ?",
                                  tuple(sales))[0] == 1


def _attempts(location: Path | str, tids: Sequence[str]) -> dict[str, tuple[str, int]]:
    with Ledger(location) as ledger:
        return {r["transaction_id"]: (r["state"], r["attempts"]) for r in ledger._db.query(
            f"SELECT transaction_id, state, attempts FROM transactions WHERE transaction_id IN "
            f"({', '.join('?' for _ in tids)}) AND state <> 'duplicate'", tuple(tids))}


def test_a_request_whose_crmcom_token_call_was_refused_gives_its_attempt_back(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRM.COM refuses the token call made after a request's in-doubt mark (attempts + 1): the
    purchase never goes out, so the attempt its mark added is given back (attempts 0); the next
    run, once the password is right again, sends it once, as its first attempt."""
    sales = SALES[:2]
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [f"{tid},LON01,R1,2026-11-20 10:{n:02d}:00,2026-11-20,M{n},sale,1,P1,Tea,drinks,1,2.50,,2.50,"
            "GBP,2.50,," for n, tid in enumerate(sales)]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)
    start_sending = Ledger.start_sending
    with SandboxServer() as sandbox, credentials(sandbox, "crmcom"):
        platform = sandbox.state.platforms["crmcom"].config
        password = platform.password

        def watched_start_sending(self: Ledger, *args: Any, **kwargs: Any) -> None:
            start_sending(self, *args, **kwargs)
            platform.password = "another-password"  # the token call after this mark is refused

        monkeypatch.setattr(Ledger, "start_sending", watched_start_sending)
        feed = sample_feed("acme_hourly", sandbox, folder=drop, target_kind="crmcom", bulk_size=1)
        refused = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert refused.to_dict()["accepted"] == 0
        assert delivered_ids(sandbox) == []
        assert {tid: n for tid, (_, n) in _attempts(ledger_location, sales).items()} == {t: 0 for t in sales}
        monkeypatch.undo()
        platform.password = password
        again = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert again.to_dict()["accepted"] == len(sales), again.to_dict()
        assert sorted(delivered_ids(sandbox)) == sorted(sales)
        assert _attempts(ledger_location, sales) == {t: ("accepted", 1) for t in sales}


def test_a_return_decided_when_its_request_is_built_gives_its_attempt_back(
    tmp_path: Path, ledger_location: Path | str
) -> None:
    """A whole return whose sale CRM.COM refused earlier in the same submission is settled when its
    request is built, after its in-doubt mark (attempts + 1): nothing of it is sent, so the attempt
    its mark added is given back (attempts 0), while the refused sale keeps its one."""
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = ["S-X,LON01,R1,2026-11-20 10:00:00,2026-11-20,unknown-0001,sale,1,P1,Tea,drinks,1,2.50,,2.50,"
            "GBP,2.50,,",
            "R-X,LON01,R1,2026-11-20 10:30:00,2026-11-20,unknown-0001,return,1,P1,Tea,drinks,-1,2.50,,-2.50,"
            "GBP,-2.50,,S-X"]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)
    with SandboxServer() as sandbox, credentials(sandbox, "crmcom"):
        feed = sample_feed("acme_hourly", sandbox, folder=drop, target_kind="crmcom", bulk_size=1)
        runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert delivered_ids(sandbox) == []
        rows_left = _attempts(ledger_location, ["S-X", "R-X"])
        assert rows_left == {"S-X": ("failed_permanent", 1), "R-X": ("failed_permanent", 0)}, rows_left


def test_a_refund_left_out_of_its_request_gives_its_attempt_back(
    tmp_path: Path, ledger_location: Path | str
) -> None:
    """Two refunds marked in doubt for one bulk request (attempts + 1 each): Antavo refused the
    sale of one earlier in the submission, so the request carries only the other; the one left
    out gives its attempt back (attempts 0), the one carried keeps it (attempts 1)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [
        "S-A,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,1,P1,Tea,drinks,2,2.50,,5.00,GBP,5.00,,",
        "S-B,LON01,R1,2026-11-20 10:01:00,2026-11-20,unknown-0001,sale,1,P1,Tea,drinks,2,2.50,,5.00,"
        "GBP,5.00,,",
        "R-A,LON01,R1,2026-11-20 10:30:00,2026-11-20,M1,return,1,P1,Tea,drinks,-1,2.50,,-2.50,GBP,-2.50,,S-A",
        "R-B,LON01,R1,2026-11-20 10:31:00,2026-11-20,unknown-0001,return,1,P1,Tea,drinks,-1,2.50,,-2.50,"
        "GBP,-2.50,,S-B",
    ]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)
    marks: list[list[str]] = []
    start_sending = Ledger.start_sending

    def watched_start_sending(self: Ledger, scope: str, transaction_ids: Sequence[str], *args: Any,
                              **kwargs: Any) -> None:
        marks.append(sorted(transaction_ids))
        start_sending(self, scope, transaction_ids, *args, **kwargs)

    with SandboxServer() as sandbox, credentials(sandbox), pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ledger, "start_sending", watched_start_sending)
        feed = sample_feed("acme_hourly", sandbox, folder=drop, bulk_size=10)
        runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert ["R-A", "R-B"] in marks, marks  # both marked for one request
        rows_left = _attempts(ledger_location, ["S-A", "S-B", "R-A", "R-B"])
        assert rows_left == {"S-A": ("accepted", 1), "S-B": ("failed_permanent", 1),
                             "R-A": ("accepted", 1), "R-B": ("failed_permanent", 0)}, rows_left


def test_a_request_that_may_have_landed_keeps_its_attempt(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRM.COM answers a purchase with an empty 2xx (it may have landed): that request keeps the
    attempt its mark added; the next attempt's mark is given back when its lookup finds the
    purchase and nothing is sent again (attempts 1: one request carried it)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = ["S-L,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,1,P1,Tea,drinks,1,2.50,,2.50,GBP,2.50,,"]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = dataclasses.replace(settings, ledger_url=ledger_location)
    marks: list[list[str]] = []
    start_sending = Ledger.start_sending
    with SandboxServer() as sandbox, credentials(sandbox, "crmcom"):
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("empty_answer",)

        def watched_start_sending(self: Ledger, scope: str, transaction_ids: Sequence[str], *args: Any,
                                  **kwargs: Any) -> None:
            marks.append(list(transaction_ids))
            if len(marks) == 2:  # only the first request's answer is lost
                sandbox.config.fault_rate = 0.0
            start_sending(self, scope, transaction_ids, *args, **kwargs)

        monkeypatch.setattr(Ledger, "start_sending", watched_start_sending)
        feed = sample_feed("acme_hourly", sandbox, folder=drop, target_kind="crmcom", bulk_size=1)
        runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert delivered_ids(sandbox) == ["S-L"]
        assert marks == [["S-L"], ["S-L"]], marks  # the second mark's lookup found it: nothing sent
        assert stats(sandbox)["faults_injected"] == 1
        assert _attempts(ledger_location, ["S-L"]) == {"S-L": ("accepted", 1)}
