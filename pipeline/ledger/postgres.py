"""The PostgreSQL ledger: opening it from a ``postgresql://`` URL, statements and transactions.

The only module that knows the ledger is PostgreSQL (psycopg 3): :class:`PgDb` is the
:class:`~pipeline.ledger.db.Db` the ledger's parts talk to, so they keep their one set of queries.
What differs from SQLite is translated here:

* placeholders: the ledger's ``?`` become psycopg's ``%s`` (a literal ``%`` is doubled);
* ``insert``: ``RETURNING id`` instead of SQLite's ``lastrowid``;
* JSON in TEXT columns: ``jsonb`` operators instead of ``json_extract`` / ``json_set`` /
  ``json_remove`` (the stored text is re-serialized by ``jsonb``: same keys and values);
* paging readers: a server-side cursor ``WITH HOLD`` (:meth:`PgDb.stream`), fetched a page at
  a time, so a report of a large day never holds the day in Python;
* bulk writes: ``COPY ... FROM STDIN`` (:meth:`PgDb.copy_rows`), ``executemany`` pipelined; a
  table this connection has grown by ANALYZE_AFTER_ROWS rows, and again each time what it appended
  has doubled since, is ANALYZEd after the commit (on a sample of ANALYZE_STATISTICS_TARGET x 300
  rows), so the lookups that follow are planned on the table as it now is (a run's own rows are
  never more than half unseen by the planner);
* transactions: SQLite's ``BEGIN IMMEDIATE`` lets one writer in at a time; here every write
  transaction first takes one transaction-level advisory lock (:data:`WRITE_LOCK`), so writers
  from any number of processes and hosts are serialized the same way and read-then-write steps
  (recording a file, settling results) see what they change. Migrations run inside such
  transactions, so two workers starting at once never both migrate. A write transaction runs in
  psycopg's pipeline mode: its statements are sent without waiting, and the client waits only
  where it needs an answer (a query, a row count) and at ``COMMIT``: settling the answers read
  and marking the next request in doubt (one transaction) is three round trips: the lookup with
  ``BEGIN`` and the lock, the updates, the ``COMMIT``. ``COPY`` leaves the pipeline for its own
  round trip. After a write transaction fails, the connection runs its statements unprepared
  (:meth:`PgDb._stop_preparing`): psycopg may count as prepared a statement the failed pipeline
  never ran;
* ids: :meth:`PgDb.new_ids` takes a file's row ids from the table's identity sequence before its
  ``COPY``, so rows of one ``COPY`` can name each other (a duplicate its primary).

No statement waits forever: each session sets ``lock_timeout`` and ``statement_timeout``
(:data:`WAIT_LIMITS`) unless they are configured in PostgreSQL's own ways (:func:`limit_waits`),
and turns off a server-wide ``idle_session_timeout`` (:data:`IDLE_LIMITS`); a limit reached, like
a lost connection or a session the server ended, is :class:`LedgerUnavailableError` (exit 75), and
every error names the ledger by its URL without the password.

Money stays decimal TEXT as in SQLite, so every value round-trips exactly. The connection runs
in autocommit mode outside :meth:`PgDb.transaction`; one connection is shared by the threads of a
run, serialized by a re-entrant lock. The URL's password never appears in messages
(:func:`masked_url`).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, overload

import psycopg
from psycopg import sql as pgsql

from pipeline.errors import ConfigError
from pipeline.ledger import schema
from pipeline.ledger.db import Row, fetch_in_pages, round_trips
from pipeline.ledger.errors import LedgerError, LedgerUnavailableError
from pipeline.ledger.location import masked_url, password_forms, register_url_secret

# (classid, objid) of the advisory lock every write transaction takes: the two-int4 key space, apart
# from the scope locks' bigint keys; ("posf", 2) next to pipeline.pg_locks's ("posf", 1)
WRITE_LOCK = (0x706F7366, 2)
# the ledger's tables, which a dry run copies (a test checks these are all the migrations make)
TABLES = ("schema_version", "runs", "files", "transactions", "rejects", "run_transactions", "file_totals",
          "problems", "alert_outbox", "swept_scopes")
_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
# how long a ledger or lock session waits, unless configured elsewhere (see limit_waits)
WAIT_LIMITS = {"lock_timeout": "2min", "statement_timeout": "15min"}
# a session kept for the whole run idles while the run waits on the platform or the source: no
# server-wide idle limit ends it, unless one is set for posfeed itself (see limit_waits)
IDLE_LIMITS = {"idle_session_timeout": "0"}
# where a setting is posfeed's own: the URL's options or PGOPTIONS, ALTER ROLE / DATABASE ... SET
OWN_SOURCES = ("client", "user", "database", "database user")
# pipeline mode needs libpq 14 or later (psycopg[binary] brings its own; a system libpq may be older)
_PIPELINE_MODE = psycopg.Pipeline.is_supported()
ANALYZE_AFTER_ROWS = 1000  # rows appended to a table before its statistics are first refreshed
# the sample and the statistics of that refresh: 300 x 10 rows, up to 10 common values and 10
# histogram buckets a column (the server's default, 100, took ~9x as long at 200k rows), enough to
# keep every lookup of the ledger on its index (set for the ANALYZE alone: SET LOCAL)
ANALYZE_STATISTICS_TARGET = 10
# the columns the ledger's lookups filter, join and sort on, where a table has wide ones the planner
# never needs (statistics of every column of transactions took 2.6x as long); others: every column
ANALYZE_COLUMNS = {
    "transactions": ("id", "scope", "state", "transaction_id", "file_id", "primary_id", "feed",
                     "business_date", "transaction_type"),
}
_QMARK = re.compile(r"\?")
_CURSOR_NAMES = (f"posfeed_pages_{n}" for n in itertools.count(1))  # server-side cursors of this process


def scrub_password(message: str, url: str) -> str:
    """``message`` without the URL's password in any spelling."""
    for form in password_forms(url):
        message = message.replace(form, "***")
    return message


def to_pyformat(sql: str) -> str:
    """A ledger query (``?`` placeholders) in psycopg's style (``%s``; a literal ``%`` doubled)."""
    return _QMARK.sub("%s", sql.replace("%", "%%"))


class PgRow(Sequence[Any]):
    """One result row: by position (``row[0]``, ``row[:n]``) or by column name (``row["id"]``)."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]):
        self._values = tuple(values)
        self._index = index

    @overload
    def __getitem__(self, key: int | str, /) -> Any: ...
    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...
    def __getitem__(self, key: int | str | slice, /) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        """Each value by its column's name; by its position where a later column has the same
        name (``SELECT a.id, b.id``: ``row["id"]`` is the last one)."""
        names: dict[int, str] = {i: name for name, i in self._index.items()}
        shown = {names.get(i, i): value for i, value in enumerate(self._values)}
        return f"PgRow({shown!r})"


def _row_factory(cursor: Any) -> Any:
    names = [column.name for column in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(values, index)

    return make


# what the server says when it refuses the login itself (a credentials error, not a temporary one);
# libpq gives no SQLSTATE for a failed connection
LOGIN_REFUSED = ("password authentication failed", "no password supplied", "authentication failed for user")
# what a wait limit's SQLSTATE means, and what to do about it
WAIT_ENDED = {
    "55P03": "waited longer than lock_timeout for a lock another session holds (another posfeed's "
             "write, an ALTER TABLE, VACUUM FULL or a session left in a transaction: see "
             "pg_stat_activity); what was committed stays, run again once it is free",
    "57014": "a statement ran longer than statement_timeout (or was cancelled); what was committed "
             "stays, run again",
    "57P05": "the server ended the session after idle_session_timeout, which is set for posfeed's role "
             "or database or in the URL's options (a run's session idles while it waits on the platform "
             "or the source): unset it for posfeed (ALTER ROLE ... RESET idle_session_timeout) or set it "
             "to 0 in the URL's options; what was committed stays, run again",
    "25P03": "the server ended the session after idle_in_transaction_session_timeout (a transaction "
             "that waited longer than that between its statements: a very slow or stopped posfeed "
             "process); what was committed stays, run again",
}


@contextmanager
def _translated(what: str, url: str = "") -> Iterator[None]:
    """psycopg's errors as the ledger's, naming the ledger (its URL without the password): a lost
    server or connection, or a wait limit reached, is LedgerUnavailableError (exit 75: committed
    work stays, the next run settles the rest), anything else LedgerError."""
    where = f" {masked_url(url)}" if url else ""
    try:
        yield
    except psycopg.Error as exc:
        text = scrub_password(str(exc), url) if url else str(exc)
        ended = WAIT_ENDED.get(exc.sqlstate or "")
        if ended:
            raise LedgerUnavailableError(f"the PostgreSQL ledger{where}, {what}: {ended} ({text})") from exc
        if isinstance(exc, psycopg.OperationalError):
            raise LedgerUnavailableError(f"the ledger's PostgreSQL server{where}, {what}: {text}") from exc
        raise LedgerError(f"the PostgreSQL ledger{where}, {what}: {text}") from exc


def limit_waits(connection: psycopg.Connection[Any]) -> None:
    """Bound how long this session waits (:data:`WAIT_LIMITS`), for each limit nobody configured:
    one set in the URL (``?options=-c lock_timeout=30s``), ``PGOPTIONS``, ``ALTER ROLE/DATABASE
    ... SET`` or postgresql.conf is kept as it is (``0`` there: wait without limit). And keep it
    while it idles (:data:`IDLE_LIMITS`): a server-wide ``idle_session_timeout`` (postgresql.conf,
    ALTER SYSTEM) is meant for forgotten sessions, not for one a run keeps while it waits on the
    platform, so it is turned off here; one set for posfeed itself (:data:`OWN_SOURCES`) is kept.
    ``idle_in_transaction_session_timeout`` is left as configured: no transaction of posfeed waits
    on anything but the database, and that limit frees the write lock of a stuck process."""
    rows = [(name, value, True) for name, value in WAIT_LIMITS.items()]
    rows += [(name, value, False) for name, value in IDLE_LIMITS.items()]
    values = pgsql.SQL(", ").join(pgsql.SQL("({}, {}, {})").format(*map(pgsql.Literal, row)) for row in rows)
    own = pgsql.SQL(", ").join(map(pgsql.Literal, OWN_SOURCES))
    connection.execute(pgsql.SQL(  # one round trip
        "SELECT set_config(s.name, l.value, false) FROM pg_settings s "
        "JOIN (VALUES {}) AS l (name, value, unless_set) ON l.name = s.name "
        "WHERE CASE WHEN l.unless_set THEN s.source = 'default' ELSE s.source NOT IN ({}) END"
    ).format(values, own))


class PgDb:
    """A :class:`~pipeline.ledger.db.Db` on one PostgreSQL connection."""

    paramstyle = "qmark"  # what the ledger hands in; rewritten to psycopg's %s here
    dialect = "postgresql"

    def __init__(self, connection: psycopg.Connection[Any], *, private: bool = False, url: str = ""):
        self._connection = connection
        self._url = url  # named (without its password) by errors
        self._mutex = threading.RLock()
        self._private = private  # temporary tables only (a dry run): no other writer to wait for
        self._depth = 0  # open transactions (nested ones are savepoints)
        self._appended: dict[str, int] = {}  # rows appended per table by this connection
        self._analyzed_at: dict[str, int] = {}  # ... as of its last ANALYZE here
        # a write transaction's statements are pipelined (see transaction())
        self._pipeline: psycopg.Pipeline | None = None
        self._pipeline_exit: contextlib.ExitStack | None = None

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _translated(what, self._url)

    # -- statements ---------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._errors("statement"), self._mutex, self._connection.cursor() as cursor:
            cursor.execute(to_pyformat(sql), params)
            self._wait()
            return cursor.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Many rows of one statement, pipelined (one round trip, not one per row); in a
        transaction they go with its next statement or its ``COMMIT`` (a failure surfaces there
        and the transaction rolls back whole)."""
        rows = list(rows)
        if not rows:
            return
        with self._errors("statement"), self._mutex, self._connection.cursor() as cursor:
            cursor.executemany(to_pyformat(sql), rows)
            if self._pipeline is None:
                round_trips.add()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._errors("query"), self._mutex, self._connection.cursor(row_factory=_row_factory) as cursor:
            cursor.execute(to_pyformat(sql), params)
            self._wait()
            return list(cursor.fetchall())

    def _wait(self) -> None:
        """A statement was sent: in a transaction's pipeline, collect everything queued so far
        (one round trip for ``BEGIN``, the write lock, deferred writes and this); outside one
        psycopg has waited already."""
        round_trips.add()
        if self._pipeline is not None:
            self._pipeline.sync()

    def _leave_pipeline(self, *, quietly: bool = False) -> None:
        """Out of the transaction's pipeline (what is queued is collected: one round trip), for
        what pipeline mode cannot do (``COPY``, a server-side cursor) or at the end."""
        stack, self._pipeline_exit = self._pipeline_exit, None
        self._pipeline = None
        if stack is None:
            return
        round_trips.add()
        if quietly:  # the transaction failed already: this is cleaning up
            with contextlib.suppress(psycopg.Error):
                stack.close()
        else:
            stack.close()

    def _control(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """``BEGIN``, the write lock, ``COMMIT``: queued in the transaction's pipeline, or sent
        and waited for where there is none (its answer is on the cursor once collected)."""
        cursor = self._connection.execute(sql, params)
        if self._pipeline is None:
            round_trips.add()
        return cursor

    def _enter_pipeline(self) -> None:
        if not _PIPELINE_MODE:  # a libpq older than 14: every statement waits for its answer
            return
        stack = contextlib.ExitStack()
        self._pipeline = stack.enter_context(self._connection.pipeline())
        self._pipeline_exit = stack

    def stream(self, sql: str, params: Sequence[Any], page_rows: int) -> Iterator[Row]:
        """The rows of a query fetched ``page_rows`` at a time from a server-side cursor (see
        :func:`pipeline.ledger.db.pages`). ``WITH HOLD`` keeps it open across the autocommit
        statements between pages; the server keeps the result, this process one page of it."""
        with self._errors("query"):
            with self._mutex:
                self._leave_pipeline()
                cursor = self._connection.cursor(next(_CURSOR_NAMES), row_factory=_row_factory, withhold=True)
                cursor.execute(to_pyformat(sql), params)
            rows = 0
            try:
                for row in fetch_in_pages(cursor, page_rows, self._mutex):
                    rows += 1
                    yield row
            finally:
                round_trips.add(rows // page_rows + 3)  # declare, each page, the empty last one, close
                with self._mutex, contextlib.suppress(psycopg.Error):
                    cursor.close()

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._errors("query"), self._mutex, self._connection.cursor(row_factory=_row_factory) as cursor:
            cursor.execute(to_pyformat(sql), params)
            self._wait()
            row: Row | None = cursor.fetchone()
            return row

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._errors("insert"), self._mutex, self._connection.cursor() as cursor:
            cursor.execute(to_pyformat(sql) + " RETURNING id", params)
            self._wait()
            row = cursor.fetchone()
        if row is None:
            raise LedgerError(f"no row inserted by {sql.split('(')[0].strip()}")
        return int(row[0])

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append many rows to ``table`` with one ``COPY ... FROM STDIN``."""
        statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
            pgsql.Identifier(table), pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns)
        )
        count = 0
        with self._errors("copy"), self._mutex:
            in_pipeline = self._pipeline is not None
            self._leave_pipeline()  # COPY has no pipeline mode
            round_trips.add()
            with self._connection.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            if in_pipeline:
                self._enter_pipeline()
            self._appended[table] = self._appended.get(table, 0) + count
        if self._depth == 0:
            self._analyze_grown()

    def new_ids(self, table: str, count: int) -> list[int]:
        """``count`` consecutive ids of ``table``'s identity sequence (the session's temporary
        table first: a dry run's copy), taken in one step: call it inside a write transaction,
        whose lock keeps every other writer of the table from taking ids meanwhile."""
        if count == 0:
            return []
        row = self.one("SELECT setval(pg_get_serial_sequence(?, 'id'), "
                       "nextval(pg_get_serial_sequence(?, 'id')) + ? - 1)", (table, table, count))
        last = int(row[0]) if row else 0
        return list(range(last - count + 1, last + 1))

    def _analyze_grown(self) -> None:
        """Refresh the planner's statistics of the tables this connection grew enough: once it has
        appended ANALYZE_AFTER_ROWS rows to a table, then whenever what it appended has doubled
        since the last ANALYZE. Without it, the lookups right after a large file is recorded are
        planned on the table as it was (autovacuum analyzes only later, and never a dry run's
        temporary tables): every lookup by transaction id became a scan of the scope, ~15x slower
        at 20k rows. Doubling keeps a run's rows at least half known to the planner while a day
        of n rows costs log2(n / ANALYZE_AFTER_ROWS) ANALYZEs, not one per file (each samples up
        to 300 x :data:`ANALYZE_STATISTICS_TARGET` rows of the whole table, 3,000: ~15 ms on a
        ledger of 200k rows, ~140 ms with the server's default target); only the columns the
        lookups need (:data:`ANALYZE_COLUMNS`), the row count (``reltuples``) with them."""
        for table, appended in list(self._appended.items()):
            before = self._analyzed_at.get(table, 0)
            if appended - before < max(ANALYZE_AFTER_ROWS, before):
                continue
            statement = pgsql.SQL("ANALYZE {}").format(pgsql.Identifier(table))
            if table in ANALYZE_COLUMNS:
                statement = pgsql.SQL("ANALYZE {} ({})").format(pgsql.Identifier(table), pgsql.SQL(", ").join(
                    pgsql.Identifier(column) for column in ANALYZE_COLUMNS[table]))
            round_trips.add(4)  # BEGIN, the target, ANALYZE, COMMIT
            with self._errors("analyze"), self._mutex, self._connection.transaction():
                self._connection.execute(pgsql.SQL("SET LOCAL default_statistics_target = {}").format(
                    pgsql.Literal(ANALYZE_STATISTICS_TARGET)))
                self._connection.execute(statement)
            self._analyzed_at[table] = appended

    def table_exists(self, name: str) -> bool:
        row = self.one("SELECT to_regclass(?) IS NOT NULL", (name,))  # this session's temporary ones first
        return bool(row and row[0])

    # -- dialect: JSON kept as TEXT -----------------------------------------------------------

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text of top-level ``key`` of the JSON in ``column`` (NULL when absent)."""
        return f"({column}::jsonb ->> '{key}')"

    def json_read_text(self, column: str, key: str) -> str:
        """:meth:`json_text` for a read no index serves: ``json`` is parsed without building a
        ``jsonb`` value (about a fifth less server time per checkout; for duplicate keys both
        read the last one)."""
        return f"({column}::json ->> '{key}')"

    def json_set_text(self, column: str, key: str) -> str:
        """SQL for the JSON in ``column`` with ``key`` set to the string of one ``?`` parameter."""
        return f"(jsonb_set({column}::jsonb, '{{{key}}}', to_jsonb(CAST(? AS TEXT)))::text)"

    def json_without(self, column: str, key: str) -> str:
        """SQL for the JSON in ``column`` without top-level ``key``."""
        return f"(({column}::jsonb - '{key}')::text)"

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[PgDb]:
        """One write transaction, after every other writer's (see the module docstring). Its
        statements are pipelined: ``BEGIN`` and the write lock go with its first statement that
        waits for an answer, an ``executemany`` with the next one or the ``COMMIT``, so a
        transaction of a query, a bulk update and its commit makes two round trips. A nested one
        is a savepoint."""
        with self._mutex:
            if self._depth:
                try:
                    with self._errors("transaction"), self._connection.transaction():
                        self._depth += 1
                        try:
                            yield self
                        finally:
                            self._depth -= 1
                except BaseException:
                    self._stop_preparing()
                    raise
                return
            self._depth = 1
            try:
                with self._errors("transaction"):
                    self._enter_pipeline()
                    self._control("BEGIN")
                    if not self._private:
                        self._control(_LOCK, WRITE_LOCK)
                    yield self
                self._depth = 0
                with self._errors("commit"):
                    committed = self._control("COMMIT")
                    self._leave_pipeline()  # a deferred write that failed raises here; nothing is committed
                    if committed.statusmessage != "COMMIT":
                        # a failed statement's error was caught: the server answered COMMIT with
                        # ROLLBACK, without an error (judged by that answer, not by the connection's
                        # status, which a pipeline may not have brought up to date yet)
                        raise LedgerError("the PostgreSQL ledger: a statement of the transaction failed; "
                                          "rolled back")
            except BaseException:
                self._depth = 0
                self._stop_preparing()
                self._leave_pipeline(quietly=True)
                with contextlib.suppress(psycopg.Error):  # a lost connection has nothing to roll back
                    self._connection.execute("ROLLBACK")
                raise
            self._analyze_grown()  # committed: outside the write lock, so no writer waits for it

    def _stop_preparing(self) -> None:
        """After a failed write transaction, run every statement unprepared on this connection.
        psycopg prepares a statement on the server once it has run it ``prepare_threshold`` times
        (and an ``executemany`` at once), and may record it as prepared before the server answers:
        in a pipeline, what is queued after a failed statement never runs, its preparation with it,
        so the name psycopg keeps (``_pg3_N``) would fail every later use of the statement ("does
        not exist"), ``COMMIT`` included. Turning preparation off is psycopg's public way never to
        use those names again; it costs nothing until a transaction fails, and after one it lasts
        as long as this connection (the rest of the run, which ends with that error)."""
        self._connection.prepare_threshold = None

    def close(self) -> None:
        """Close the connection (what is committed stays)."""
        with self._mutex, contextlib.suppress(psycopg.Error):
            self._connection.close()


def _connect(url: str) -> psycopg.Connection[Any]:
    register_url_secret(url)
    connection: psycopg.Connection[Any] | None = None
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=30,
                                     application_name="posfeed ledger")
        limit_waits(connection)
        return connection
    except psycopg.Error as exc:
        if connection is not None:
            connection.close()  # down, unreachable, refused: the URL's password is never shown
        text = f"{masked_url(url)}: cannot open ledger: {scrub_password(str(exc), url)}"
        if any(words in str(exc) for words in LOGIN_REFUSED):
            raise ConfigError(f"{text}; check the ledger's user and password (in the URL, PGPASSWORD or "
                              "~/.pgpass)") from None
        raise LedgerUnavailableError(text) from None


def open_postgres(url: str) -> tuple[PgDb, int]:
    """Connect to the ledger database at ``url`` and bring its schema up to date; returns the
    database and its schema version."""
    db = PgDb(_connect(url), url=url)
    try:
        return db, schema.migrate(db)
    except BaseException:
        db.close()
        raise


def open_postgres_copy(url: str) -> tuple[PgDb, int]:
    """A private copy of the ledger at ``url`` for a dry run: temporary tables of this session
    (searched before the real ones) filled from the real tables, which are only read. Nothing
    written reaches the real ledger or waits for its writers; it is gone when the session ends."""
    db, version = open_postgres(url)
    connection = db._connection
    try:
        home = _schema_of(connection)
        with connection.transaction():
            for table in TABLES:
                real = pgsql.SQL("{}.{}").format(pgsql.Identifier(home), pgsql.Identifier(table))
                connection.execute(pgsql.SQL("CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING ALL)").format(
                    pgsql.Identifier(table), real))
                connection.execute(pgsql.SQL("INSERT INTO pg_temp.{} SELECT * FROM {}").format(
                    pgsql.Identifier(table), real))
            identities = [row[0] for row in connection.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = %s "
                "AND column_name = 'id' AND is_identity = 'YES'", (home,))]
            for table in (t for t in identities if t in TABLES):  # new ids go on after the copied ones
                connection.execute(pgsql.SQL(
                    "SELECT setval(pg_get_serial_sequence({name}, 'id'), "
                    "COALESCE((SELECT max(id) FROM pg_temp.{table}), 0) + 1, false)"
                ).format(name=pgsql.Literal(f"pg_temp.{table}"), table=pgsql.Identifier(table)))
        for table in TABLES:  # autovacuum never analyzes temporary tables
            connection.execute(pgsql.SQL("ANALYZE pg_temp.{}").format(pgsql.Identifier(table)))
    except psycopg.Error as exc:
        db.close()
        raise LedgerError(f"{masked_url(url)}: cannot copy the ledger for a dry run: "
                          f"{scrub_password(str(exc), url)}") from None
    return PgDb(connection, private=True, url=url), version


def _schema_of(connection: psycopg.Connection[Any]) -> str:
    row = connection.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise LedgerError("the ledger database has no current schema (search_path)")
    return str(row[0])
