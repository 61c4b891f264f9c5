"""The one seam between the ledger's queries and a database: :class:`Db`.

Every statement the ledger runs goes through a :class:`Db` (``connection.py`` holds the SQLite
one, ``postgres.py`` the PostgreSQL one). Queries are written once, with ``?`` placeholders
(:attr:`Db.paramstyle` ``"qmark"``); a backend whose driver takes another style rewrites them
inside its own ``Db``, the one place that knows. What the dialects spell differently is asked of
the ``Db`` too: JSON expressions over TEXT columns (:meth:`Db.json_text` ...), bulk appends
(:meth:`Db.copy_rows`), the new row's id (:meth:`Db.insert`) and how a write transaction keeps
other writers out (:meth:`Db.transaction`). Rows are read by position or by column name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, overload


class RoundTrips:
    """How many times this process's ledger connections have waited for a database server (a
    statement, a pipelined ``executemany``, a ``COPY``, a page of a cursor, ``BEGIN``/``COMMIT``;
    SQLite, in the process, makes none): what ``posfeed bench ledger --postgres-url`` weighs each
    stage's time against."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._count += count

    def __call__(self) -> int:
        """The count so far."""
        return self._count


round_trips = RoundTrips()


class _Cursor(Protocol):
    def fetchmany(self, size: int, /) -> Sequence[Any]: ...


class Row(Protocol):
    """One result row: by position (``row[0]``, ``row[:n]``) or by column name (``row["id"]``)."""

    @overload
    def __getitem__(self, key: int | str, /) -> Any: ...
    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...


class Db(Protocol):
    """An open ledger database: statements, queries and transactions, nothing dialect-specific
    in between."""

    paramstyle: str  # how the queries handed in mark their parameters: always "qmark" (?)
    dialect: str  # "sqlite" or "postgresql": queries never branch on it (a migration picks its text)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns how many rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (bulk writes)."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query (None when there is none)."""
        ...

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Insert one row into a table with an integer ``id`` key; returns the new row's id."""
        ...

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append many rows to ``table`` (the backend's fastest bulk path)."""
        ...

    def new_ids(self, table: str, count: int) -> list[int]:
        """``count`` new ``id`` values of ``table``, ascending, for rows this write transaction
        inserts with their ids given (so rows of one bulk write can name each other)."""
        ...

    def table_exists(self, name: str) -> bool:
        """Whether the ledger has a table of this name (the catalogs differ)."""
        ...

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text of top-level ``key`` of the JSON stored as TEXT in ``column``."""
        ...

    def json_read_text(self, column: str, key: str) -> str:
        """:meth:`json_text` for a read no index serves (PostgreSQL parses the text as ``json``,
        cheaper than ``jsonb``; an indexed expression must stay :meth:`json_text`'s)."""
        ...

    def json_set_text(self, column: str, key: str) -> str:
        """SQL for the JSON in ``column`` with ``key`` set to the string of one ``?`` parameter."""
        ...

    def json_without(self, column: str, key: str) -> str:
        """SQL for the JSON in ``column`` without top-level ``key``."""
        ...

    def transaction(self) -> AbstractContextManager[Db]:
        """One write transaction: everything inside commits together or not at all."""
        ...

    def close(self) -> None:
        """Close the database (what is committed stays)."""
        ...


def marks(count: int) -> str:
    """``?, ?, ...``: the placeholders of an IN list of ``count`` items."""
    return ",".join("?" * count)


def chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size`` (an IN list stays under the driver's limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# rows read at a time by the ledger's paging readers (iter_run_transactions, ...)
PAGE_ROWS = 5000


def fetch_in_pages(cursor: _Cursor, page_rows: int, mutex: AbstractContextManager[Any]) -> Iterator[Row]:
    """The rows of an executed ``cursor``, fetched ``page_rows`` at a time, each fetch under
    ``mutex`` (the connection is free for other statements between pages)."""
    while True:
        with mutex:
            rows = cursor.fetchmany(page_rows)
        if not rows:
            return
        yield from rows


def pages(db: Db, sql: str, params: Sequence[Any] = (), page_rows: int = PAGE_ROWS) -> Iterator[Row]:
    """The rows of a query, ``page_rows`` at a time where the database can stream them (a
    ``stream(sql, params, page_rows)`` method, as :class:`~pipeline.ledger.connection.SqliteDb`
    has); otherwise every row of one :meth:`Db.query`. Consume it (or close it) before the next
    write to the ledger."""
    stream = getattr(db, "stream", None)
    if stream is None:
        yield from db.query(sql, params)
    else:
        yield from stream(sql, params, page_rows)
