"""The ledger refuses a row naming a run, file or transaction that does not exist, on both
backends: SQLite by its FOREIGN KEYs, PostgreSQL (from schema version 14) by checks once per
statement on the tables a run writes in bulk; a run, file or transaction other rows name is never
removed. Each statement goes as the ledger sends it: a ``COPY`` (``copy_rows``), a pipelined
``executemany``, a plain statement."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.ledger import Ledger
from pipeline.ledger.db import Db
from pipeline.ledger.errors import LedgerError
from pipeline.ledger.schema import SCHEMA_VERSION, migrate
from pipeline.ledger.transitions import attach
from tests.test_ledger import _raw

NOW = "2026-12-07T00:00:00Z"
MISSING = 424242
TXN_COLUMNS = ("scope", "feed", "transaction_id", "state", "primary_id", "file_id", "source_file",
               "source_lines", "rows", "amount", "first_run_id", "last_run_id", "created_at", "updated_at")


def _txn(tid: str, file_id: int, run: str = "r1", primary: int | None = None) -> tuple[Any, ...]:
    state = "duplicate" if primary else "queued"
    return ("acme", "hourly", tid, state, primary, file_id, "f.csv", "[2]", 1, "1.00", run, run, NOW, NOW)


def _insert_txn(db: Db, tid: str, file_id: int, run: str = "r1", primary: int | None = None) -> int:
    return db.insert(f"INSERT INTO transactions ({', '.join(TXN_COLUMNS)}) "
                     f"VALUES ({', '.join('?' * len(TXN_COLUMNS))})", _txn(tid, file_id, run, primary))


def _parents(db: Db) -> tuple[int, int]:
    """Run r1, a file of it and a transaction of that file: (file id, transaction row id)."""
    db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) "
               "VALUES ('r1', 'hourly', 'acme', 'run', 'running', ?)", (NOW,))
    file_id = db.insert("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, "
                        "updated_at) VALUES ('acme', 'hourly', 'f.csv', 1, 1.0, 'abc', 'fetched', 'r1', ?)",
                        (NOW,))
    return file_id, _insert_txn(db, "T1", file_id)


@pytest.fixture
def ledger(ledger_location: Path | str) -> Iterator[Ledger]:
    with Ledger(ledger_location) as opened:
        yield opened


def _counts(db: Db) -> list[int]:
    tables = ("transactions", "run_transactions", "rejects")
    return [int(db.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables]


def _refused(ledger: Ledger, write: Callable[[Db], object], *, column: str | None = None) -> None:
    """``write`` in a transaction of the ledger fails with the backend's foreign-key error (on
    PostgreSQL naming ``column``) and leaves nothing."""
    db = ledger._db
    counts = _counts(db)
    with pytest.raises((LedgerError, sqlite3.IntegrityError)) as caught, db.transaction():
        write(db)
    if db.dialect == "postgresql":
        assert isinstance(caught.value.__cause__, psycopg.errors.ForeignKeyViolation), caught.value
        assert column is None or f"Key ({column})=" in str(caught.value), caught.value
    else:
        assert "FOREIGN KEY" in str(caught.value)
    assert _counts(db) == counts


def _setup(ledger: Ledger) -> tuple[int, int]:
    with ledger._db.transaction() as db:
        return _parents(db)


@pytest.mark.parametrize("how", ["copy", "executemany", "execute"])
def test_a_transaction_naming_a_missing_file_or_run_or_primary_is_refused(ledger: Ledger, how: str) -> None:
    file_id, txn = _setup(ledger)

    def write(*rows: tuple[Any, ...]) -> Callable[[Db], object]:
        def go(db: Db) -> object:
            if how == "copy":
                return db.copy_rows("transactions", TXN_COLUMNS, rows)
            sql = (f"INSERT INTO transactions ({', '.join(TXN_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(TXN_COLUMNS))})")
            if how == "executemany":
                return db.executemany(sql, rows)
            return [db.execute(sql, row) for row in rows]
        return go

    fine = _txn("T2", file_id)
    _refused(ledger, write(fine, _txn("T3", MISSING)), column="file_id")
    _refused(ledger, write(fine, _txn("T3", file_id, run="r9")), column="first_run_id")
    _refused(ledger, write(_txn("T1", file_id, primary=MISSING), fine), column="primary_id")
    with ledger._db.transaction() as db:  # the same rows naming what exists are taken
        write(fine, _txn("T1", file_id, primary=txn))(db)
    assert ledger._db.one("SELECT COUNT(*) FROM transactions")[0] == 3  # type: ignore[index]


@pytest.mark.parametrize("how", ["copy", "executemany", "insert_select"])
def test_run_transactions_and_rejects_naming_what_is_missing_are_refused(
    ledger: Ledger, ledger_location: Path | str, how: str
) -> None:
    location = ledger_location
    file_id, txn = _setup(ledger)
    columns = ("run_id", "txn_row_id", "origin")

    def attach(*rows: tuple[Any, ...]) -> Callable[[Db], object]:
        def go(db: Db) -> object:
            if how == "copy":
                return db.copy_rows("run_transactions", columns, rows)
            if how == "executemany":
                return db.executemany("INSERT INTO run_transactions (run_id, txn_row_id, origin) "
                                      "VALUES (?, ?, ?)", rows)
            return [db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) "
                               "SELECT ?, ?, ? FROM files", row) for row in rows]
        return go

    _refused(ledger, attach(("r1", txn, "file"), ("r9", txn, "file")), column="run_id")
    _refused(ledger, attach(("r1", txn, "file"), ("r1", MISSING, "file")), column="txn_row_id")
    reject = ("source_file", "source_line", "code", "amount", "original")

    def rejects(run: str, file: int, row: int | None) -> Callable[[Db], object]:
        values = (run, file, row, "f.csv", 3, "bad", "0", "x")
        if how == "copy":
            return lambda db: db.copy_rows("rejects", ("run_id", "file_id", "txn_row_id", *reject),
                                           [values])
        return lambda db: db.executemany("INSERT INTO rejects (run_id, file_id, txn_row_id, source_file, "
                                         "source_line, code, amount, original) "
                                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                         [values])

    _refused(ledger, rejects("r9", file_id, None), column="run_id")
    _refused(ledger, rejects("r1", MISSING, None), column="file_id")
    _refused(ledger, rejects("r1", file_id, MISSING), column="txn_row_id")
    # the same rows naming what exists are taken (by a connection of its own: after failed pipelined
    # writes, one of the connection's prepared statements may be gone, with or without these checks)
    with Ledger(location) as again, again._db.transaction() as db:
        attach(("r1", txn, "file"))(db)
        rejects("r1", file_id, txn)(db)
    assert _counts(ledger._db)[1:] == [1, 1]


def test_an_update_naming_a_missing_run_or_file_is_refused(ledger: Ledger) -> None:
    _, txn = _setup(ledger)
    _refused(ledger, lambda db: db.execute("UPDATE transactions SET last_run_id = 'r9' WHERE id = ?", (txn,)),
             column="last_run_id")
    _refused(ledger, lambda db: db.executemany("UPDATE transactions SET file_id = ? WHERE id = ?",
                                               [(MISSING, txn)]), column="file_id")
    _refused(ledger, lambda db: db.execute("UPDATE transactions SET primary_id = ? WHERE id = ?",
                                           (MISSING, txn)), column="primary_id")
    with ledger._db.transaction() as db:  # an update leaving the keys alone, or naming what exists
        db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) "
                   "VALUES ('r2', 'hourly', 'acme', 'run', 'running', ?)", (NOW,))
        db.execute("UPDATE transactions SET state = 'sending', last_run_id = 'r2' WHERE id = ?", (txn,))
        db.execute("UPDATE transactions SET state = 'accepted' WHERE id = ?", (txn,))
    assert ledger._db.one("SELECT last_run_id FROM transactions")[0] == "r2"  # type: ignore[index]


@pytest.mark.parametrize("table", ["runs", "files", "transactions"])
def test_a_run_file_or_transaction_that_rows_name_cannot_be_removed(ledger: Ledger, table: str) -> None:
    file_id, txn = _setup(ledger)
    with ledger._db.transaction() as db:
        db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES ('r1', ?, 'file')",
                   (txn,))
    key = {"runs": "r1", "files": file_id, "transactions": txn}[table]
    with pytest.raises((LedgerError, sqlite3.IntegrityError)), ledger._db.transaction() as db:
        db.execute(f"DELETE FROM {table} WHERE id = ?", (key,))
    if ledger._db.dialect == "postgresql":
        with pytest.raises(LedgerError, match="never removed nor renumbered"), ledger._db.transaction() as db:
            db.execute("UPDATE runs SET id = id || '-2'" if table == "runs"
                       else f"UPDATE {table} SET id = id + 1000")
        with pytest.raises(LedgerError, match="never removed"), ledger._db.transaction() as db:
            db.execute(f"TRUNCATE {table} CASCADE")
    assert ledger._db.one(f"SELECT COUNT(*) FROM {table}")[0] == 1  # type: ignore[index]


def test_a_ledger_at_version_13_with_rows_migrates_and_keeps_checking(ledger_location: Path | str) -> None:
    """A ledger written before the checks moved (version 13) migrates with its rows, which stay
    as they were; on PostgreSQL its per-row foreign keys of those tables are gone, and a row
    naming a missing run is refused all the same."""
    db = _raw(ledger_location)
    assert migrate(db, target=13) == 13
    file_id, txn = _parents(db)
    db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES ('r1', ?, 'file')", (txn,))
    db.close()
    with Ledger(ledger_location) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION == 15
        rows = ledger._db.query("SELECT t.transaction_id, t.file_id, rt.run_id FROM transactions t "
                                "JOIN run_transactions rt ON rt.txn_row_id = t.id")
        assert [tuple(r) for r in rows] == [("T1", file_id, "r1")]
        if ledger._db.dialect == "postgresql":
            left = ledger._db.query("SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
                                    "ORDER BY 1")
            assert {r[0] for r in left} == {"alert_outbox", "file_totals", "files"}
        _refused(ledger, lambda db: db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) "
                                               "VALUES ('r9', ?, 'retry')", (txn,)), column="run_id")


def test_attaching_many_rows_to_a_run_checks_their_keys_once_per_statement(postgres_db: str) -> None:
    """Rows carried over or requeued join a run by one statement per 500, not one per row: on
    PostgreSQL each statement runs the check of its keys once (counted by the server)."""
    with Ledger(postgres_db) as ledger:
        file_id, _ = _setup(ledger)
        with ledger._db.transaction() as db:
            db.copy_rows("transactions", TXN_COLUMNS, [_txn(f"T{n}", file_id) for n in range(2, 1202)])
        ids = [int(r[0]) for r in ledger._db.query("SELECT id FROM transactions ORDER BY id")]
        ledger._db.execute("SET track_functions = 'pl'")
        with ledger._db.transaction() as db:
            attach(db, "r1", ids, "settle")
        ledger._db.query("SELECT pg_stat_force_next_flush()")
    with psycopg.connect(postgres_db) as conn:
        calls = conn.execute("SELECT calls FROM pg_stat_user_functions "
                             "WHERE funcname = 'posfeed_check_run_transactions_inserted'").fetchone()
        attached = conn.execute("SELECT COUNT(*) FROM run_transactions").fetchone()
    assert attached == (1201,)
    assert calls == (3,)
