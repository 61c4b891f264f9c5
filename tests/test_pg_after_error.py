"""A PostgreSQL ledger's connection after a write transaction the server refused.

psycopg prepares a statement on the server once it has run it a few times on a connection, and
remembers that it did. In a pipeline, a statement queued after the refused one never reaches the
server, its preparation with it, while psycopg may still count it as prepared: the same ledger
must go on working all the same.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import psycopg
import pytest

from pipeline.errors import EXIT_INTERNAL
from pipeline.ledger import Ledger
from pipeline.ledger.errors import LedgerError
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer
from tests.test_ledger import _ATTACH_A_MISSING_ROW, _MISSING_ROW, SCOPE, _finished_at, _queued

_STAMP = "UPDATE runs SET finished_at = ? WHERE id = ?"


def _refused(ledger: Ledger, run_id: str) -> None:
    """A write transaction whose bulk write a foreign key refuses (its row names no transaction):
    the refusal comes back once the ``COMMIT`` is queued behind it."""
    with pytest.raises(LedgerError, match="run_transactions"), ledger._db.transaction() as db:
        db.executemany(_ATTACH_A_MISSING_ROW, [(run_id, _MISSING_ROW)])


@pytest.mark.parametrize("good", range(8))
def test_writes_after_a_refused_bulk_write_work_on_the_same_ledger(postgres_db: str, good: int) -> None:
    """Refused writes with ``good`` write transactions between them (psycopg prepares a statement
    on its sixth run: for one of these counts that lands on the refused transaction's ``COMMIT``);
    after them, the same Ledger writes, reads and settles as before."""
    with Ledger(postgres_db) as ledger:
        run_id = _queued(ledger, "T1")
        _refused(ledger, run_id)
        _refused(ledger, run_id)
        for i in range(good):
            with ledger._db.transaction() as db:
                db.executemany(_STAMP, [(f"good {i}", run_id)])
        _refused(ledger, run_id)
        for i in range(8):
            with ledger._db.transaction() as db:
                db.executemany(_STAMP, [(f"after {i}", run_id)])
            assert _finished_at(ledger, run_id) == f"after {i}"
        ledger.start_sending(SCOPE, ["T1"], run_id)
        ledger.accept(SCOPE, "T1", run_id)
        assert ledger.state_counts(SCOPE) == {"accepted": 1}
        assert [r.id for r in ledger.runs()] == [run_id]


def test_a_row_with_two_columns_of_one_name_can_be_shown(postgres_db: str) -> None:
    """A join's two ``id`` columns: the row shows both (the first by its position), and by name
    reads the last, as psycopg's own rows do."""
    with Ledger(postgres_db) as ledger:
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        row = ledger._db.one("SELECT r.id, r.feed, 7 AS id FROM runs r WHERE r.id = ?", (run_id,))
        assert row is not None
        assert repr(row) == f"PgRow({ {0: run_id, 'feed': 'hourly', 'id': 7}!r})"
        assert row["id"] == 7 and row[0] == run_id and row.keys() == ["id", "feed"]


def test_a_settling_write_refused_mid_submission_fails_the_run_and_the_next_run_settles_it(
        postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A constraint of the server (one an operator added) refuses writing the platform's answers
    after the first request went out: the run fails with an error that names the refusal, and is
    recorded as failed on the same ledger; once the constraint is gone, the next run settles the
    checkouts in doubt and sends the rest: the platform holds each checkout once. Only the failed
    run's connection stopped preparing statements: the next run in the same process (as in
    `posfeed schedule`) opens its own and prepares them again."""
    from pipeline.ledger.postgres import PgDb
    from tests.runner_helpers import SAMPLE_ACME, credentials, delivered_ids, sample_feed, settings_in, stats

    preparing: list[bool] = []  # of each ledger connection closed: whether it still prepared statements
    close = PgDb.close

    def noted(db: PgDb) -> None:
        preparing.append(db._connection.prepare_threshold is not None)
        close(db)

    monkeypatch.setattr(PgDb, "close", noted)

    settings = replace(settings_in(tmp_path), ledger_url=postgres_db)
    Ledger(postgres_db).close()  # the tables, to add the constraint to
    with psycopg.connect(postgres_db, autocommit=True) as admin:
        admin.execute("ALTER TABLE transactions ADD CONSTRAINT no_accepted_yet "
                      "CHECK (state <> 'accepted') NOT VALID")
    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
        with pytest.raises(LedgerError, match="no_accepted_yet") as caught:
            run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert caught.value.exit_code == EXIT_INTERNAL and "does not exist" not in str(caught.value)
        assert stats(sandbox)["events_accepted"] > 0  # refused after the platform took them
        with Ledger(postgres_db) as ledger:
            assert [r.status for r in ledger.runs()] == ["failed"]
            in_doubt = ledger.state_counts("acme").get("sending", 0)
        assert in_doubt > 0
        assert False in preparing  # the failed run's
        with psycopg.connect(postgres_db, autocommit=True) as admin:
            admin.execute("ALTER TABLE transactions DROP CONSTRAINT no_accepted_yet")
        before = len(preparing)
        again = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert preparing[before:] and all(preparing[before:])  # the next run's own connection prepares
        ids = delivered_ids(sandbox)
        after = stats(sandbox)
    assert again.summary["balanced"] is True
    # an in-doubt checkout the platform has may be offered again: it refuses it as a duplicate
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] <= in_doubt
    with Ledger(postgres_db) as ledger:
        counts = ledger.state_counts("acme")
        assert counts.get("queued", 0) == counts.get("sending", 0) == 0
        assert sorted(r.status for r in ledger.runs()) == ["failed", "finished"]



def test_a_dry_runs_copy_holds_no_statement_prepared_against_the_real_tables(postgres_db: str) -> None:
    """A statement psycopg prepared before the dry run's temporary tables existed stays bound to
    the real table it named (the server re-plans on DDL of that table or a new search_path, not on
    a temporary table now found first), so the dry run could read or write the real ledger
    through it. Opening an older ledger migrates it first (migration 12 settles its returns with
    an ``executemany``, which psycopg prepares at once); the copy must start with nothing prepared."""
    from pipeline.ledger.schema import migrate
    from tests.test_ledger import _raw

    db = _raw(postgres_db)
    assert migrate(db, target=11) == 11
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at, counts) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'finished', '2026-11-20', '{}')")
    db.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, updated_at) "
               "VALUES ('acme', 'hourly', 'f.csv', 1, 1.0, 'abc', 'finished', 'r1', 'now')")
    db.execute("INSERT INTO transactions (scope, feed, transaction_id, state, file_id, source_file, "
               "source_lines, rows, store_id, business_date, transaction_type, currency, amount, "
               "last_error_code, last_error_message, attempts, first_run_id, last_run_id, created_at, "
               "updated_at) VALUES ('acme', 'hourly', 'R-1', 'failed_permanent', 1, 'f.csv', '[2]', 1, "
               "'S1', '2026-11-20', 'return', 'GBP', '-4.20', 'partly_refunded', "
               "'partly refunded: the platform refunded 1.20 of 4.20 (MILK x1 (1.20))', 1, 'r1', 'r1', "
               "'now', 'now')")
    db.close()
    with Ledger(postgres_db, private_copy=True) as ledger:
        prepared = ledger._db.one("SELECT count(*) FROM pg_prepared_statements")
        assert prepared is not None and prepared[0] == 0, prepared
        run_id = ledger.start_run(feed="hourly", scope="acme")  # and it works as a ledger
        with ledger._db.transaction() as write:
            write.executemany("UPDATE transactions SET refunded = ? WHERE id = ?", [("9.99 GBP", 1)])
        assert ledger.run(run_id) is not None
    with Ledger(postgres_db) as real:  # nothing of the dry run reached the real ledger
        assert [r.id for r in real.runs()] == ["r1"]
        refunded = real._db.one("SELECT refunded FROM transactions WHERE id = 1")
        assert refunded is not None and refunded[0] == "1.20 GBP", refunded
