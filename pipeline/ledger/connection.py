"""The SQLite ledger file: opening it (pragmas, migrations), statements and transactions.

The only module that knows the ledger is SQLite: :class:`SqliteDb` is the :class:`~pipeline.ledger.db.Db`
every other module talks to. The database is one file in the state folder, in WAL mode, opened
with ``isolation_level=None`` so transactions are exactly the ``BEGIN IMMEDIATE`` ... ``COMMIT``
of :meth:`SqliteDb.transaction`. One connection is shared by the threads of a run (the submit
stage's workers), serialized by a re-entrant lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, state_io_error
from pipeline.ledger import schema
from pipeline.ledger.db import Db, Row, fetch_in_pages
from pipeline.ledger.errors import LedgerError, LedgerFileError

# what SQLite says when the file, not posfeed, is the problem, and what to do about it
_FILE_PROBLEMS = (
    ("disk is full", "free disk space there, then run again"),
    ("readonly database", "make the state folder and the ledger writable by this user, then run again"),
    ("unable to open database", "check that the state folder exists and is writable, then run again"),
    ("disk i/o error", "the disk reported an I/O error: check the device and free space, then run again"),
    ("not a database", "the ledger is corrupt: restore it from a backup (or move it away to start an "
                       "empty ledger, which forgets what was sent)"),
    ("malformed", "the ledger is corrupt: restore it from a backup (or move it away to start an empty "
                  "ledger, which forgets what was sent)"),
)


def _file_error(path: Path, exc: sqlite3.Error) -> LedgerFileError | None:
    """A :class:`LedgerFileError` when ``exc`` is about the ledger file itself, else None."""
    text = str(exc).lower()
    for needle, advice in _FILE_PROBLEMS:
        if needle in text:
            return LedgerFileError(path, f"ledger: {exc}", advice)
    return None


class SqliteDb:
    """A :class:`~pipeline.ledger.db.Db` on one SQLite connection."""

    paramstyle = "qmark"  # sqlite3 takes the ledger's ? placeholders as they are
    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection, path: Path | None = None):
        self._connection = connection
        self._path = path  # the ledger file, named by the errors about it
        self._mutex = threading.RLock()

    @contextmanager
    def _file_errors(self) -> Iterator[None]:
        """SQLite errors about the ledger file itself (disk full, read-only, corrupt) become
        :class:`LedgerFileError`; any other error passes as it is."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            problem = _file_error(self._path, exc) if self._path is not None else None
            if problem is None:
                raise
            raise problem from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._mutex:
            return self._connection.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._mutex:
            self._connection.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._mutex, self._file_errors():
            return self._connection.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._mutex, self._file_errors():
            row: Row | None = self._connection.execute(sql, params).fetchone()
            return row

    def stream(self, sql: str, params: Sequence[Any], page_rows: int) -> Iterator[Row]:
        """The rows of a query fetched ``page_rows`` at a time from one cursor (see
        :func:`pipeline.ledger.db.pages`)."""
        with self._file_errors():
            with self._mutex:
                cursor = self._connection.execute(sql, params)
            try:
                yield from fetch_in_pages(cursor, page_rows, self._mutex)
            finally:
                cursor.close()

    def release_memory(self) -> None:
        """Give back the page cache's unused memory (SQLite's ``shrink_memory``)."""
        with self._mutex:
            self._connection.execute("PRAGMA shrink_memory")

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._mutex:
            row_id = self._connection.execute(sql, params).lastrowid
        if row_id is None:
            raise LedgerError(f"no row inserted by {sql.split('(')[0].strip()}")
        return row_id

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append many rows to ``table`` (one prepared INSERT, executed per row)."""
        self.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
        )

    def new_ids(self, table: str, count: int) -> list[int]:
        # what SQLite itself would give (an INTEGER PRIMARY KEY is max + 1); BEGIN IMMEDIATE keeps
        # every other writer out until these rows are in
        row = self.one(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
        first = int(row[0] if row else 0) + 1
        return list(range(first, first + count))

    def table_exists(self, name: str) -> bool:
        return self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def json_read_text(self, column: str, key: str) -> str:
        return self.json_text(column, key)

    def json_set_text(self, column: str, key: str) -> str:
        # SQLite edits the stored JSON in place: no Python decode and encode per checkout
        return f"json_set({column}, '$.{key}', ?)"

    def json_without(self, column: str, key: str) -> str:
        return f"json_remove({column}, '$.{key}')"

    @contextmanager
    def transaction(self) -> Iterator[SqliteDb]:
        """One SQLite transaction: everything inside commits together or not at all."""
        with self._mutex, self._file_errors():
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def close(self) -> None:
        """Close the file (a crash without close loses nothing committed).

        The write-ahead log is checkpointed into the database and truncated first, so the file
        alone holds the ledger's state (and no stale page images linger in the WAL).
        """
        try:
            with self._mutex:
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another connection is reading: it checkpoints later
        self._connection.close()


BUSY_TIMEOUT_SECONDS = 30.0  # how long a connection waits for another one's lock


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the ledger file in WAL mode. Converting a new file needs the file to itself, and SQLite
    does not wait for it (no busy handler) while another connection converts or recovers it: of
    several processes opening a new ledger at once, one failed with "database is locked". WAL is
    a property of the file, so a ledger already in WAL mode is left as it is (no lock taken);
    otherwise a locked conversion is tried again, within the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    delay = 0.01
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


# the oldest SQLite the ledger's statements run on: ``UPDATE ... FROM`` (a run's kept outcomes)
MIN_SQLITE = (3, 33, 0)


def sqlite_too_old(version_info: tuple[int, ...], version: str) -> str | None:
    """Why the SQLite ``version`` Python's ``sqlite3`` uses cannot hold the ledger (None: it can)."""
    if tuple(version_info) >= MIN_SQLITE:
        return None
    return (f"the ledger needs SQLite {'.'.join(map(str, MIN_SQLITE[:2]))} or newer, and this Python's "
            f"sqlite3 module uses SQLite {version}: run posfeed with a Python built against a newer "
            "SQLite, or keep the ledger in PostgreSQL (POSFEED_LEDGER_URL)")


def open_sqlite(path: Path) -> tuple[SqliteDb, int]:
    """Open (or create) the ledger file at ``path`` and bring its schema up to date; returns the
    database and its schema version. An SQLite older than :data:`MIN_SQLITE` is refused first."""
    if (too_old := sqlite_too_old(sqlite3.sqlite_version_info, sqlite3.sqlite_version)) is not None:
        raise ConfigError(too_old)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise state_io_error(exc, path.parent) from exc
    try:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                     timeout=BUSY_TIMEOUT_SECONDS)
        connection.row_factory = sqlite3.Row
        _use_wal(connection)
        # NORMAL, not FULL: in WAL mode every commit still survives a crash of the process
        # (kill -9); only an OS crash or power loss can drop the last commits, and then a
        # transaction that was sent looks queued and is sent again, which the platform answers
        # "transaction ID already used" (settled as accepted), as for in-doubt rows. FULL
        # fsyncs each commit: the in-doubt mark before every request cost 2-9 ms here and
        # serialized the sender behind the disk.
        connection.execute("PRAGMA synchronous=NORMAL")
        # checkpoint (and fsync the database file) every ~40 MiB of WAL, not every ~4 MiB: the
        # sender commits before each request, and a checkpoint inside one holds every request
        connection.execute("PRAGMA wal_autocheckpoint=10000")
        # a 128 MiB page cache (the default is 2 MiB): the ledger of a large chain's day is a
        # million rows whose index pages every lookup before and after a request walks
        connection.execute("PRAGMA cache_size=-131072")
        connection.execute("PRAGMA foreign_keys=ON")
        # overwritten and deleted content is zeroed, so scrubbed customer ids leave no trace
        connection.execute("PRAGMA secure_delete=ON")
        db = SqliteDb(connection, path)
        return db, schema.migrate(db)
    except sqlite3.DatabaseError as exc:
        problem = _file_error(path, exc) or LedgerError(f"{path}: cannot open ledger: {exc}")
        raise problem from exc


def migrate(db: sqlite3.Connection | Db, target: int = schema.SCHEMA_VERSION) -> int:
    """Bring a ledger's schema up to version ``target`` (see :func:`pipeline.ledger.schema.migrate`);
    an open :class:`sqlite3.Connection` in autocommit mode is accepted as it is."""
    return schema.migrate(SqliteDb(db) if isinstance(db, sqlite3.Connection) else db, target)
