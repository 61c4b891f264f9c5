"""The sandbox's ``--state`` file: its records as SQLite rows, one small transaction per change.

Each record is a row keyed by ``(kind, key)`` (accepted transactions are kind
``<platform>.transaction``; a platform may keep other kinds), its body JSON in which every
:class:`~decimal.Decimal` is an exact number literal (``12.50``, ``3E0``): read back with
``parse_float=Decimal``, Decimals come back as Decimals and ints as ints. A change is one
upsert committed before the platform answers, so a restart (or a crash) keeps every record the
platform accepted, and the cost of a change does not grow with the number of records stored.

A ``--state`` file written by earlier versions (one JSON document) is imported on open and kept
beside the database as ``<name>.old``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["RecordStore", "StateFileError", "decode", "encode"]

logger = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
OPEN_TIMEOUT_MS = 5000  # what opening a state file waits at most for another process to let go
CHECKPOINT_EVERY = 500  # changes between two background checkpoints (see RecordStore)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
)
"""


class StateFileError(Exception):
    """The state file cannot be opened or written (with its path)."""


_MARK = re.compile(r'"\\u0000D([-+0-9.E]+)\\u0000"')


def encode(record: Any) -> str:
    """``record`` as JSON text, Decimals as exact number literals; ValueError if it cannot be.

    Decimals are written with a ``.`` or an exponent so that reading gives a Decimal again;
    non-finite numbers, floats and NUL characters in strings are refused.
    """
    marks = 0

    def mark(value: Any) -> Any:
        nonlocal marks
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"cannot store the number {value}")
            text = str(value)
            marks += 1
            return f"\x00D{text if any(c in text for c in '.E') else text + 'E0'}\x00"
        raise TypeError(f"cannot store a {type(value).__name__}")

    text = json.dumps(record, default=mark, separators=(",", ":"), allow_nan=False,
                      check_circular=False)
    if text.count("\\u0000") != 2 * marks:
        raise ValueError("cannot store a string with a NUL character")
    return _MARK.sub(r"\1", text)


def decode(text: str) -> Any:
    """The record :func:`encode` wrote."""
    return json.loads(text, parse_float=Decimal)


class RecordStore:
    """Records in one SQLite file (WAL journal); not thread-safe: the state's lock guards it."""

    checkpoint_every = CHECKPOINT_EVERY

    def __init__(self, path: Path, *, busy_timeout_ms: int = OPEN_TIMEOUT_MS,
                 background_checkpoints: bool = False):
        """Open (or create) ``path``; a change waits ``busy_timeout_ms`` at most for a file another
        process holds, then raises :class:`StateFileError` (opening waits :data:`OPEN_TIMEOUT_MS`).

        With ``background_checkpoints`` no change copies the WAL into the file (and syncs it to
        disk) itself: a thread of its own does, on its own connection, after every
        :attr:`checkpoint_every` changes, so a change costs no disk sync (the server's changes
        are made in its event loop)."""
        self.path = path
        self._checkpointer: _Checkpointer | None = None
        self._changes = 0
        legacy = _legacy_document(path)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=OPEN_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a crash of the process
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout_ms))}")
            if background_checkpoints:
                self._db.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise StateFileError(f"cannot open the sandbox state file {path}: {exc}") from exc
        if legacy is not None:
            self._import(legacy)
        if background_checkpoints:
            self._checkpointer = _Checkpointer(path)
            self._checkpointer.start()

    def put(self, kind: str, key: str, record: Any) -> None:
        """Insert or replace one record, committed when this returns."""
        body = encode(record)  # before touching the file: a record that cannot be stored is refused
        self._write("INSERT INTO records (kind, key, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body", (kind, key, body))

    def delete(self, kind: str, key: str) -> None:
        """Forget one record."""
        self._write("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    def clear(self) -> None:
        """Forget every record."""
        self._write("DELETE FROM records", ())

    def _write(self, sql: str, parameters: tuple[str, ...]) -> None:
        try:
            self._db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise StateFileError(f"cannot write the sandbox state file {self.path}: {exc}") from exc
        self._changes += 1
        if self._checkpointer is not None and self._changes % self.checkpoint_every == 0:
            self._checkpointer.wake.set()

    def autocheckpoint_pages(self) -> int:
        """WAL pages after which a change checkpoints the file itself (0: never, a thread does)."""
        return int(self._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    def busy_timeout_ms(self) -> int:
        """How long a change waits for a file another process holds (SQLite's busy timeout)."""
        return int(self._db.execute("PRAGMA busy_timeout").fetchone()[0])

    def rows(self) -> Iterator[tuple[str, str, Any]]:
        """Every record as ``(kind, key, record)`` in the order first stored."""
        for kind, key, body in self._db.execute("SELECT kind, key, body FROM records ORDER BY rowid"):
            yield kind, key, decode(body)

    def count(self) -> int:
        """How many records are stored."""
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def close(self) -> None:
        """Close the file (every change is already committed)."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self._db.close()

    def _import(self, document: dict[str, Any]) -> None:
        transactions = document.get("transactions") or {}
        self._db.execute("BEGIN")
        for platform, records in transactions.items():
            for key, record in records.items():
                self._db.execute("INSERT OR REPLACE INTO records (kind, key, body) VALUES (?, ?, ?)",
                                 (f"{platform}.transaction", key, encode(_revive(record))))
        self._db.execute("COMMIT")
        logger.info("imported %d transactions from the JSON state file %s",
                    sum(len(r) for r in transactions.values()), self.path)


class _Checkpointer(threading.Thread):
    """Copies a state file's WAL into the file, on its own connection, each time it is woken
    (a passive checkpoint: it never holds up a change)."""

    def __init__(self, path: Path):
        super().__init__(name=f"sandbox-checkpoints-{path.name}", daemon=True)
        self.path = path
        self.wake = threading.Event()
        self._stopping = False

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=OPEN_TIMEOUT_MS / 1000)
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self._stopping:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # the next wake tries again
                    logger.warning("cannot checkpoint the sandbox state file %s: %s", self.path, exc)
        finally:
            db.close()

    def stop(self) -> None:
        """End the thread and wait for it."""
        self._stopping = True
        self.wake.set()
        self.join()


def _legacy_document(path: Path) -> dict[str, Any] | None:
    """A JSON state file of earlier versions, moved aside to ``<name>.old``; None otherwise."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read the sandbox state file {path}: {exc}") from exc
    if not head or head == _SQLITE_MAGIC:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError(f"{path} is neither a sandbox state database nor a JSON state file") from exc
    if not isinstance(document, dict):
        raise StateFileError(f"{path} is not a sandbox state file")
    path.replace(path.with_name(path.name + ".old"))
    return document


_MONEY_KEYS = frozenset({"total", "refunded", "subtotal", "price", "discount", "amount", "quantity"})


def _revive(value: Any, key: str | None = None) -> Any:
    """Money written as strings by the JSON state file, as Decimals again."""
    if isinstance(value, dict):
        return {k: _revive(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_revive(v, key) for v in value]
    if key in _MONEY_KEYS and isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value
