"""The ledger's key checks (tests/test_ledger_keys.py) against what a careless writer or an
unusual setup does: rows of one statement naming each other (a duplicate and its primary, in
either order), an update naming a row written earlier in the same transaction, and a PostgreSQL
ledger kept in a schema of its own (``search_path`` in the URL), whose checks find its tables
through the session's ``search_path``."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from pipeline.ledger import Ledger
from pipeline.ledger.errors import LedgerError
from pipeline.ledger.schema import SCHEMA_VERSION, migrate
from tests.test_ledger import _raw
from tests.test_ledger_keys import MISSING, TXN_COLUMNS, _insert_txn, _parents, _refused, _setup, _txn

INSERT = f"INSERT INTO transactions (id, {', '.join(TXN_COLUMNS)}) VALUES "
ROW = f"({', '.join('?' * (len(TXN_COLUMNS) + 1))})"


@pytest.mark.parametrize("primary_first", [True, False])
def test_a_duplicate_and_its_primary_written_by_one_statement_are_taken(
    ledger_location: Path | str, primary_first: bool
) -> None:
    """The ids come from the table (new_ids) before the statement, so a duplicate names its
    primary of the same statement; on PostgreSQL (checks over the statement's rows) also when
    written before it, by a COPY as by one INSERT of many rows."""
    with Ledger(ledger_location) as ledger:
        file_id, _ = _setup(ledger)
        db = ledger._db
        copied = db.dialect == "postgresql" or primary_first  # SQLite copies one statement per row
        with db.transaction():
            primary, duplicate, primary2, duplicate2 = db.new_ids("transactions", 4)

            def pair(tid: str, first: int, second: int) -> list[tuple[object, ...]]:
                rows = [(first, *_txn(tid, file_id)), (second, *_txn(tid, file_id, primary=first))]
                return rows if primary_first else rows[::-1]

            if copied:
                db.copy_rows("transactions", ("id", *TXN_COLUMNS), pair("T2", primary, duplicate))
            db.execute(INSERT + ", ".join([ROW] * 2),
                       [value for row in pair("T3", primary2, duplicate2) for value in row])
        named = db.query("SELECT d.id, d.primary_id FROM transactions d WHERE d.primary_id IS NOT NULL "
                         "ORDER BY d.id")
        expected = [(duplicate, primary)] if copied else []
        expected.append((duplicate2, primary2))
        assert [tuple(r) for r in named] == expected


def test_an_update_may_name_a_row_written_earlier_in_its_transaction_not_one_rolled_back(
    ledger_location: Path | str
) -> None:
    with Ledger(ledger_location) as ledger:
        file_id, txn = _setup(ledger)
        with ledger._db.transaction() as db:
            later = _insert_txn(db, "T2", file_id)
            db.execute("UPDATE transactions SET primary_id = ?, state = 'duplicate' WHERE id = ?",
                       (later, txn))
        named = ledger._db.one("SELECT primary_id FROM transactions WHERE id = ?", (txn,))
        assert named is not None and named[0] == later
        gone: list[int] = []
        with pytest.raises(RuntimeError), ledger._db.transaction() as db:  # written, then rolled back
            gone.append(_insert_txn(db, "T3", file_id))
            raise RuntimeError("undo")
        _refused(ledger, lambda db: db.execute("UPDATE transactions SET primary_id = ? WHERE id = ?",
                                               (gone[0], later)), column="primary_id")
        _refused(ledger, lambda db: db.execute("UPDATE transactions SET primary_id = ? WHERE id = ?",
                                               (MISSING, later)), column="primary_id")


def test_a_postgresql_ledger_in_a_schema_of_its_own_checks_its_keys_there(postgres_db: str) -> None:
    """``?options=-c search_path=books``: the ledger's tables, and the functions checking their
    keys, are made in that schema; a session with that search_path writes and is checked like
    one on ``public``, and ``public`` holds nothing of it."""
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA books")
    url = postgres_db + ("&" if "?" in postgres_db else "?") + "options=" + quote("-c search_path=books")
    with Ledger(url) as ledger:
        file_id, txn = _setup(ledger)
        _refused(ledger, lambda db: db.copy_rows("transactions", TXN_COLUMNS, [_txn("T2", MISSING)]),
                 column="file_id")
        _refused(ledger, lambda db: db.execute("UPDATE transactions SET primary_id = ? WHERE id = ?",
                                               (MISSING, txn)), column="primary_id")
        with pytest.raises(LedgerError, match="never removed"), ledger._db.transaction() as db:
            db.execute("DELETE FROM runs")
        with ledger._db.transaction() as db:
            db.copy_rows("transactions", TXN_COLUMNS, [_txn("T2", file_id, primary=txn)])
    with psycopg.connect(postgres_db) as conn:
        where = conn.execute("SELECT DISTINCT n.nspname FROM pg_proc p JOIN pg_namespace n "
                             "ON n.oid = p.pronamespace WHERE p.proname LIKE 'posfeed_%'").fetchall()
        tables = conn.execute("SELECT table_schema, COUNT(*) FROM information_schema.tables "
                              "WHERE table_name = 'transactions' GROUP BY 1").fetchall()
    assert where == [("books",)] and tables == [("books", 1)]


def test_sqlite_refuses_the_same(tmp_path: Path) -> None:
    """(SQLite keeps its FOREIGN KEYs: a row naming a missing primary is refused there too.)"""
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        _, txn = _setup(ledger)
        with pytest.raises(sqlite3.IntegrityError), ledger._db.transaction() as db:
            db.execute("UPDATE transactions SET primary_id = ? WHERE id = ?", (MISSING, txn))


def test_a_ledger_at_version_12_with_rows_migrated_by_two_processes_at_once(
    ledger_location: Path | str
) -> None:
    """Two hosts (here two connections) opening a version-12 ledger together: one migrates it
    (13: room per page, 14: the statement checks), the other waits for the write lock and finds
    the work done; the rows stay, the checks exist once and refuse a missing run."""
    db = _raw(ledger_location)
    assert migrate(db, target=12) == 12
    file_id, txn = _parents(db)
    db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES ('r1', ?, 'file')", (txn,))
    db.close()
    start = threading.Barrier(2)
    versions: list[int] = []

    def open_it() -> None:
        start.wait()
        with Ledger(ledger_location) as opened:
            versions.append(opened.schema_version)

    both = [threading.Thread(target=open_it) for _ in range(2)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join(timeout=120)
    assert versions == [SCHEMA_VERSION, SCHEMA_VERSION]
    with Ledger(ledger_location) as ledger:
        rows = ledger._db.query("SELECT t.transaction_id, t.file_id, rt.run_id FROM transactions t "
                                "JOIN run_transactions rt ON rt.txn_row_id = t.id")
        assert [tuple(r) for r in rows] == [("T1", file_id, "r1")]
        if ledger._db.dialect == "postgresql":
            triggers = ledger._db.query("SELECT tgname, COUNT(*) FROM pg_trigger WHERE NOT tgisinternal "
                                        "GROUP BY tgname")
            assert {r[0] for r in triggers} >= {"transactions_keys_inserted", "runs_kept", "runs_id_kept"}
            assert all(r[1] == 1 for r in triggers)
            options = ledger._db.one("SELECT reloptions FROM pg_class WHERE relname = 'run_transactions'")
            assert options is not None and "fillfactor=30" in list(options[0])
        _refused(ledger, lambda db: db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) "
                                               "VALUES ('r9', ?, 'retry')", (txn,)), column="run_id")


def test_a_session_with_another_search_path_is_checked_against_the_ledgers_own_tables(
    postgres_db: str
) -> None:
    """pg_dump and pg_restore run with an empty ``search_path``, an operator's session may have
    another: a write naming the ledger's tables by schema is checked against the ledger's own
    ``runs``, ``files`` and ``transactions`` (not refused with 'relation "runs" does not exist',
    nor checked against a table of that name elsewhere on the path)."""
    with Ledger(postgres_db) as ledger:
        file_id, txn = _setup(ledger)
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA elsewhere")
        conn.execute("CREATE TABLE elsewhere.runs (id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO elsewhere.runs VALUES ('r9')")
        for path in ("''", "elsewhere, public"):
            conn.execute(f"SET search_path = {path}")
            conn.execute("INSERT INTO public.run_transactions (run_id, txn_row_id, origin) "
                         "VALUES ('r1', %s, 'file')", (txn,))
            with pytest.raises(psycopg.errors.ForeignKeyViolation, match="run_id"):
                conn.execute("INSERT INTO public.run_transactions (run_id, txn_row_id, origin) "
                             "VALUES ('r9', %s, 'retry')", (txn,))
            with pytest.raises(psycopg.errors.ForeignKeyViolation, match="file_id"):
                conn.execute("UPDATE public.transactions SET file_id = %s WHERE id = %s", (MISSING, txn))
            conn.execute("DELETE FROM public.run_transactions")
    assert file_id


def test_a_ledger_at_version_14_names_its_tables_in_its_checks_once_migrated(postgres_db: str) -> None:
    db = _raw(postgres_db)
    assert migrate(db, target=14) == 14
    db.close()
    with Ledger(postgres_db) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        bodies = ledger._db.query("SELECT prosrc FROM pg_proc WHERE proname LIKE 'posfeed_check_%'")
    assert bodies and all('FROM "public".' in str(b[0]) and "FROM runs " not in str(b[0]) for b in bodies)
