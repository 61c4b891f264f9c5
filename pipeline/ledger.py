"""The ledger: every run, file and transaction of every feed, in one SQLite file.

Work is handed from stage to stage through named states with verb-named transitions, each one a
single SQLite transaction together with what it records (dlt's load packages are the model)::

    queued ──start_sending──▶ sending (in doubt) ──accept──────────▶ accepted
       │  ▲                     │   ▲  └──fail_retryable──▶ failed_retryable ──requeue──▶ queued
       │  └──────requeue────────┼───┘  └──fail_permanent──▶ failed_permanent ──requeue──▶ queued
       │                        └─────mark_not_sent───▶ not_sent
       └──mark_not_sent / fail_* (the sink decided without sending)

    rejected, duplicate, conflict, void: recorded once when a file is recorded; never sent.

A transaction row is one *occurrence* of a transaction id in one file. Per ``(scope,
transaction_id)`` at most one row is the *primary* record (states queued … void): the one that is
delivered. Later occurrences are recorded as ``duplicate`` (same content) or ``conflict``
(different content, held for review) pointing at the primary. Rows whose lines were rejected are
``rejected`` rows; each rejected line is also kept in ``rejects`` with its original columns.

Money is stored as decimal TEXT and summed in Python with :class:`decimal.Decimal`, never by
SQLite (which would use floats). The ledger never stores secrets; the normalized checkout (needed
to resend after the source file is gone) is kept as JSON with decimal strings.

The schema is versioned (``schema_version``); opening an older file migrates it step by step
(:data:`MIGRATIONS`, version N to N+1), each step in one transaction.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline.errors import PosfeedError, StateIOError, state_io_error
from pipeline.logs import MASK_PREFIX
from pipeline.problems import Plan, Problem
from pipeline.records import EventResult, Outcome, RetryClass

__all__ = [
    "FINAL_STATES",
    "MIGRATIONS",
    "PRIMARY_STATES",
    "SCHEMA_VERSION",
    "Backlog",
    "FileRecord",
    "IllegalTransitionError",
    "Ledger",
    "LedgerError",
    "LedgerFileError",
    "NewReject",
    "NewTransaction",
    "ReturnOf",
    "RunRecord",
    "TxnRecord",
    "TxnState",
    "new_run_id",
]

log = logging.getLogger(__name__)


class TxnState(StrEnum):
    """The state of one transaction row."""

    QUEUED = "queued"
    SENDING = "sending"  # in doubt: a request may have reached the platform
    ACCEPTED = "accepted"
    FAILED_RETRYABLE = "failed_retryable"
    FAILED_PERMANENT = "failed_permanent"
    NOT_SENT = "not_sent"  # the target cannot express it (e.g. an unmatched return)
    VOID = "void"  # cancelled at the till: counted, never sent
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


PRIMARY_STATES: frozenset[TxnState] = frozenset(
    {
        TxnState.QUEUED,
        TxnState.SENDING,
        TxnState.ACCEPTED,
        TxnState.FAILED_RETRYABLE,
        TxnState.FAILED_PERMANENT,
        TxnState.NOT_SENT,
        TxnState.VOID,
    }
)
PENDING_STATES: frozenset[TxnState] = frozenset({TxnState.QUEUED, TxnState.SENDING})
FINAL_STATES: frozenset[TxnState] = frozenset(TxnState) - PENDING_STATES

_TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.QUEUED: frozenset(
        {TxnState.SENDING, TxnState.NOT_SENT, TxnState.FAILED_RETRYABLE, TxnState.FAILED_PERMANENT}
    ),
    # sending -> sending: an in-doubt transaction is re-sent
    TxnState.SENDING: frozenset(
        {
            TxnState.SENDING,
            TxnState.ACCEPTED,
            TxnState.FAILED_RETRYABLE,
            TxnState.FAILED_PERMANENT,
            TxnState.NOT_SENT,
        }
    ),
    TxnState.FAILED_RETRYABLE: frozenset({TxnState.QUEUED}),
    TxnState.FAILED_PERMANENT: frozenset({TxnState.QUEUED}),
}

# In the order of the partial index `transactions_primary` (migration 1): SQLite uses a partial
# index only when the query repeats its WHERE term, IN-list order included. Any other order falls
# back to a scan of (scope, state), which made every per-request lookup of the submit stage O(n).
_PRIMARY_ORDER = ("queued", "sending", "accepted", "failed_retryable", "failed_permanent", "not_sent", "void")
_PRIMARY_SQL = "(" + ",".join(f"'{state}'" for state in _PRIMARY_ORDER) + ")"
# the states a transaction may be sent from
_SENDABLE_SQL = "(" + ",".join(
    f"'{state.value}'" for state, targets in _TRANSITIONS.items() if TxnState.SENDING in targets
) + ")"
# the states whose stored checkout no request needs again: its customer id may be masked
_NEVER_SENT_AGAIN = (TxnState.ACCEPTED, TxnState.NOT_SENT, TxnState.CONFLICT)
_NEVER_SENT_AGAIN_SQL = "(" + ",".join(f"'{state.value}'" for state in _NEVER_SENT_AGAIN) + ")"
# the states a file's transaction is recorded in
_RECORDABLE = frozenset(
    {TxnState.QUEUED, TxnState.VOID, TxnState.REJECTED, TxnState.DUPLICATE, TxnState.CONFLICT}
)
assert {TxnState(state) for state in _PRIMARY_ORDER} == PRIMARY_STATES
# the sale a return names, inside its stored checkout (indexed by migration 4)
_ORIGINAL_SQL = "json_extract(checkout, '$.original_transaction_id')"


class LedgerError(PosfeedError):
    """The ledger file cannot be used (corrupt, newer schema, locked for too long)."""


class LedgerFileError(LedgerError, StateIOError):
    """The ledger file cannot be written or read: disk full, read-only, corrupt (exit 74)."""


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


class IllegalTransitionError(LedgerError):
    """A transition that the state machine does not allow (a bug, never bad input)."""

    def __init__(self, transaction_id: str | None, state: str, target: str):
        self.transaction_id = transaction_id
        self.state = state
        self.target = target
        super().__init__(f"transaction {transaction_id!r}: illegal transition {state} -> {target}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261120T031500Z-3f9a1c``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# ---- schema and migrations ---------------------------------------------------------------------


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the caller's transaction (``executescript`` would commit)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    """The first schema: runs, files, transactions, rejects, run membership."""
    _script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            feed TEXT NOT NULL,
            scope TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('run', 'rerun')),
            dry_run INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            exit_code INTEGER,
            selection TEXT,
            counts TEXT,
            host TEXT,
            pid INTEGER
        );
        CREATE INDEX runs_feed ON runs (feed, started_at);
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            feed TEXT NOT NULL,
            name TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            first_run_id TEXT NOT NULL REFERENCES runs (id),
            supersedes_file_id INTEGER REFERENCES files (id),
            superseded_by_file_id INTEGER REFERENCES files (id),
            rows_in INTEGER,
            amount_in TEXT,
            finished_action TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX files_sha ON files (scope, sha256);
        CREATE INDEX files_name ON files (scope, name);
        CREATE TABLE transactions (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            feed TEXT NOT NULL,
            transaction_id TEXT,
            content_hash TEXT,
            state TEXT NOT NULL,
            primary_id INTEGER REFERENCES transactions (id),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error_code TEXT,
            last_error_message TEXT,
            event_ids TEXT,
            points TEXT,
            file_id INTEGER NOT NULL REFERENCES files (id),
            source_file TEXT NOT NULL,
            source_lines TEXT NOT NULL,
            rows INTEGER NOT NULL,
            store_id TEXT,
            business_date TEXT,
            transaction_type TEXT,
            currency TEXT,
            amount TEXT NOT NULL,
            reject_code TEXT,
            checkout TEXT,
            first_run_id TEXT NOT NULL REFERENCES runs (id),
            last_run_id TEXT NOT NULL REFERENCES runs (id),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX transactions_primary ON transactions (scope, transaction_id)
            WHERE state IN ('queued', 'sending', 'accepted', 'failed_retryable',
                            'failed_permanent', 'not_sent', 'void');
        CREATE INDEX transactions_file ON transactions (file_id);
        CREATE TABLE rejects (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            file_id INTEGER NOT NULL REFERENCES files (id),
            txn_row_id INTEGER REFERENCES transactions (id),
            source_file TEXT NOT NULL,
            source_line INTEGER,
            transaction_id TEXT,
            store_id TEXT,
            business_date TEXT,
            code TEXT NOT NULL,
            field TEXT,
            reason TEXT,
            amount TEXT NOT NULL,
            original TEXT NOT NULL
        );
        CREATE INDEX rejects_run ON rejects (run_id);
        CREATE TABLE run_transactions (
            run_id TEXT NOT NULL REFERENCES runs (id),
            txn_row_id INTEGER NOT NULL REFERENCES transactions (id),
            origin TEXT NOT NULL,
            PRIMARY KEY (run_id, txn_row_id)
        );
        """
    )


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Per-file input totals (for balancing) and each run's end state of its transactions."""
    _script(
        db,
        """
        CREATE TABLE file_totals (
            file_id INTEGER NOT NULL REFERENCES files (id),
            store_id TEXT NOT NULL,
            business_date TEXT NOT NULL,
            rows INTEGER NOT NULL,
            transactions INTEGER NOT NULL,
            amount TEXT NOT NULL,
            PRIMARY KEY (file_id, store_id, business_date)
        );
        ALTER TABLE run_transactions ADD COLUMN state_at_end TEXT;
        CREATE INDEX transactions_scope_state ON transactions (scope, state);
        CREATE INDEX transactions_day ON transactions (feed, business_date);
        """
    )


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """A plain index on (scope, transaction_id): lookups by id whatever the state (SQLite cannot
    use the partial unique index unless a query repeats its WHERE clause word for word)."""
    _script(db, "CREATE INDEX transactions_tid ON transactions (scope, transaction_id)")


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """Input totals per currency: ``file_totals`` gains ``currency`` (in its key), so a file whose
    rows are in several currencies has one total per currency. Existing totals take the currency
    of their transactions when those have exactly one (else '')."""
    _script(
        db,
        """
        CREATE TABLE file_totals_by_currency (
            file_id INTEGER NOT NULL REFERENCES files (id),
            store_id TEXT NOT NULL,
            business_date TEXT NOT NULL,
            currency TEXT NOT NULL DEFAULT '',
            rows INTEGER NOT NULL,
            transactions INTEGER NOT NULL,
            amount TEXT NOT NULL,
            PRIMARY KEY (file_id, store_id, business_date, currency)
        );
        INSERT INTO file_totals_by_currency
            (file_id, store_id, business_date, currency, rows, transactions, amount)
        SELECT ft.file_id, ft.store_id, ft.business_date, COALESCE((
                SELECT MIN(COALESCE(t.currency, '')) FROM transactions t WHERE t.file_id = ft.file_id
                AND COALESCE(t.store_id, '') = ft.store_id
                AND COALESCE(t.business_date, '') = ft.business_date
                HAVING COUNT(DISTINCT COALESCE(t.currency, '')) = 1), ''),
            ft.rows, ft.transactions, ft.amount
        FROM file_totals ft;
        DROP TABLE file_totals;
        ALTER TABLE file_totals_by_currency RENAME TO file_totals
        """,
    )


def _migrate_4_to_5(db: sqlite3.Connection) -> None:
    """Each run's own outcome of its transactions (attempts, error, event ids, points, last run)
    as that run left them, next to ``state_at_end``: a run's report is reproduced from them
    whatever later runs did. Runs finished before this step have none (their report shows the
    current values)."""
    _script(
        db,
        """
        ALTER TABLE run_transactions ADD COLUMN attempts_at_end INTEGER;
        ALTER TABLE run_transactions ADD COLUMN error_code_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN error_message_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN event_ids_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN points_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN last_run_id_at_end TEXT
        """,
    )


def _migrate_5_to_6(db: sqlite3.Connection) -> None:
    """An index of returns by the sale they name: deciding a return reads its sale's earlier
    returns (the expression and the WHERE term are repeated word for word by
    :meth:`Ledger.returns_of`, so SQLite uses the index)."""
    _script(
        db,
        f"CREATE INDEX transactions_returns_of ON transactions (scope, {_ORIGINAL_SQL}) "
        "WHERE transaction_type = 'return'",
    )


def _migrate_6_to_7(db: sqlite3.Connection) -> None:
    """Why a failed-retryable transaction was not delivered (``transient``, ``stopped``,
    ``credentials``, ``deferred``): a plain run resends all but ``deferred`` by itself."""
    _script(db, "ALTER TABLE transactions ADD COLUMN retry_class TEXT")


def _migrate_7_to_8(db: sqlite3.Connection) -> None:
    """Problems with a life cycle, the alerts they owe (an outbox), and quarantined files."""
    _script(
        db,
        """
        CREATE TABLE problems (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            feed TEXT NOT NULL,
            scope TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
            stage INTEGER NOT NULL DEFAULT 0,
            summary TEXT NOT NULL,
            action TEXT NOT NULL,
            store_id TEXT,
            business_date TEXT,
            subject TEXT,
            counts TEXT,
            opened_at TEXT NOT NULL,
            escalated_at TEXT,
            resolved_at TEXT,
            opened_run_id TEXT,
            last_run_id TEXT
        );
        CREATE UNIQUE INDEX problems_open ON problems (key) WHERE status = 'open';
        CREATE INDEX problems_feed ON problems (feed, status);
        CREATE TABLE alert_outbox (
            id INTEGER PRIMARY KEY,
            problem_id INTEGER NOT NULL REFERENCES problems (id),
            feed TEXT NOT NULL,
            scope TEXT NOT NULL,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            delivered_at TEXT,
            last_error TEXT
        );
        CREATE INDEX alert_outbox_pending ON alert_outbox (scope, delivered_at);
        ALTER TABLE files ADD COLUMN quarantined_to TEXT;
        ALTER TABLE files ADD COLUMN quarantined_at TEXT
        """
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
    _migrate_4_to_5,
    _migrate_5_to_6,
    _migrate_6_to_7,
    _migrate_7_to_8,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema of ``db`` up to version ``target``, one step per transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger schema version {version} is newer than this posfeed understands ({SCHEMA_VERSION})"
        )
    while version < target:
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            if version == 0:
                db.execute("INSERT INTO schema_version (version) VALUES (1)")
            else:
                db.execute("UPDATE schema_version SET version = ?", (version + 1,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("ledger migrated to schema version %d", version + 1)
        version += 1
    return version


# ---- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run as the ledger knows it."""

    id: str
    feed: str
    scope: str
    kind: str
    dry_run: bool
    status: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    selection: dict[str, Any] | None
    counts: dict[str, Any] | None


@dataclass(frozen=True)
class FileRecord:
    """One fetched file (one content, identified by sha256 within a scope)."""

    id: int
    scope: str
    feed: str
    name: str
    size: int
    mtime: float
    sha256: str
    status: str  # fetched | recorded | unreadable | quarantined | superseded | finished
    first_run_id: str
    supersedes_file_id: int | None = None
    superseded_by_file_id: int | None = None
    error: str | None = None
    finished_action: str | None = None
    quarantined_to: str | None = None  # where a quarantined file was moved (None: left in place)


@dataclass(frozen=True)
class NewTransaction:
    """A transaction occurrence to record when its file is recorded."""

    transaction_id: str | None
    state: TxnState  # queued, void, rejected, duplicate or conflict
    source_lines: tuple[int, ...]
    rows: int
    amount: Decimal
    store_id: str | None = None
    business_date: str | None = None
    transaction_type: str | None = None
    currency: str | None = None
    content_hash: str | None = None
    reject_code: str | None = None
    checkout: str | None = None  # JSON; only for rows that are (or may be) sent or reviewed


@dataclass(frozen=True)
class NewReject:
    """One rejected input line."""

    source_line: int | None
    transaction_id: str | None
    store_id: str | None
    business_date: str | None
    code: str
    field: str | None
    reason: str | None
    amount: Decimal
    original: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TxnRecord:
    """One transaction row, as reports and the submit stage read it."""

    id: int
    scope: str
    feed: str
    transaction_id: str | None
    content_hash: str | None
    state: TxnState
    primary_id: int | None
    attempts: int
    last_error_code: str | None
    last_error_message: str | None
    event_ids: tuple[str, ...]
    points: Decimal | None
    file_id: int
    source_file: str
    source_lines: tuple[int, ...]
    rows: int
    store_id: str | None
    business_date: str | None
    transaction_type: str | None
    currency: str | None
    amount: Decimal
    reject_code: str | None
    first_run_id: str
    last_run_id: str
    origin: str | None = None  # in a run's listing: file | settle | retry
    checkout: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ReturnOf:
    """A return row naming a sale, with its stored checkout and when its row last changed (for an
    in-doubt row: when its last request went out)."""

    record: TxnRecord
    updated_at: str


_TXN_COLUMNS = (
    "t.id, t.scope, t.feed, t.transaction_id, t.content_hash, t.state, t.primary_id, t.attempts, "
    "t.last_error_code, t.last_error_message, t.event_ids, t.points, t.file_id, t.source_file, "
    "t.source_lines, t.rows, t.store_id, t.business_date, t.transaction_type, t.currency, t.amount, "
    "t.reject_code, t.first_run_id, t.last_run_id"
)
_TXN_WIDTH = _TXN_COLUMNS.count(",") + 1
# the same columns with a run's kept outcome (run_transactions rt) where the run ended and kept one
_AT_END = {
    "t.attempts": "attempts_at_end",
    "t.last_error_code": "error_code_at_end",
    "t.last_error_message": "error_message_at_end",
    "t.event_ids": "event_ids_at_end",
    "t.points": "points_at_end",
    "t.last_run_id": "last_run_id_at_end",
}
_TXN_COLUMNS_AT_END = ", ".join(
    f"CASE WHEN rt.attempts_at_end IS NULL THEN {c} ELSE rt.{_AT_END[c]} END" if c in _AT_END else c
    for c in _TXN_COLUMNS.split(", ")
)


_STATES = {state.value: state for state in TxnState}


def _txn(
    row: Sequence[Any], *, origin: str | None = None, state: str | None = None, checkout: str | None = None
) -> TxnRecord:
    """A :class:`TxnRecord` from a row that starts with :data:`_TXN_COLUMNS` (read by position:
    a report builds one per transaction of its run)."""
    (row_id, scope, feed, transaction_id, content_hash, stored_state, primary_id, attempts,
     last_error_code, last_error_message, event_ids, points, file_id, source_file, source_lines,
     rows, store_id, business_date, transaction_type, currency, amount, reject_code, first_run_id,
     last_run_id) = row[:_TXN_WIDTH]
    return TxnRecord(
        row_id, scope, feed, transaction_id, content_hash, _STATES[state or stored_state], primary_id,
        attempts, last_error_code, last_error_message,
        tuple(json.loads(event_ids)) if event_ids else (),
        Decimal(points) if points is not None else None,
        file_id, source_file, tuple(json.loads(source_lines)), rows, store_id, business_date,
        transaction_type, currency, Decimal(amount), reject_code, first_run_id, last_run_id,
        origin, checkout,
    )


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        id=row["id"],
        scope=row["scope"],
        feed=row["feed"],
        name=row["name"],
        size=row["size"],
        mtime=row["mtime"],
        sha256=row["sha256"],
        status=row["status"],
        first_run_id=row["first_run_id"],
        supersedes_file_id=row["supersedes_file_id"],
        superseded_by_file_id=row["superseded_by_file_id"],
        error=row["error"],
        finished_action=row["finished_action"],
        quarantined_to=row["quarantined_to"] if "quarantined_to" in row.keys() else None,  # noqa: SIM118
    )


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        feed=row["feed"],
        scope=row["scope"],
        kind=row["kind"],
        dry_run=bool(row["dry_run"]),
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        exit_code=row["exit_code"],
        selection=json.loads(row["selection"]) if row["selection"] else None,
        counts=json.loads(row["counts"]) if row["counts"] else None,
    )


# rows read at a time by the ledger's paging readers (iter_run_transactions, ...)
PAGE_ROWS = 5000


def _chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# a run's own outcome of each of its transactions, kept when it ends (its report reads them)
_KEEP_OUTCOMES = (
    "UPDATE run_transactions SET (state_at_end, attempts_at_end, error_code_at_end, "
    "error_message_at_end, event_ids_at_end, points_at_end, last_run_id_at_end) = "
    "(SELECT t.state, t.attempts, t.last_error_code, t.last_error_message, t.event_ids, t.points, "
    "t.last_run_id FROM transactions t WHERE t.id = run_transactions.txn_row_id) "
)


@dataclass(frozen=True)
class Backlog:
    """A scope's transactions that are not final (see :meth:`Ledger.backlog`)."""

    waiting: int  # the next plain run sends them (queued, in doubt, resumable failures)
    waiting_since: str | None  # when the oldest of them was first recorded (ISO 8601, UTC)
    needs_rerun: int  # failed-retryable that only `posfeed rerun` sends (past the caps, or deferred)


# a failed-retryable row a plain run resends by itself (parameters: max attempts, cutoff time)
_RESUMABLE_SQL = (
    "(state = 'failed_retryable' AND COALESCE(retry_class, 'transient') IN "
    "('transient', 'stopped', 'credentials') AND attempts < ? AND created_at >= ?)"
)


def _cutoff(now: datetime | None, max_age_hours: float) -> str:
    from datetime import timedelta

    moment = (now or datetime.now(UTC)) - timedelta(hours=max_age_hours)
    return moment.isoformat(timespec="microseconds")


# ---- the ledger ---------------------------------------------------------------------------------


class Ledger:
    """The SQLite ledger file: open it, change it only through its verb-named transitions."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise state_io_error(exc, self.path.parent) from exc
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not FULL: in WAL mode every commit still survives a crash of the process
            # (kill -9); only an OS crash or power loss can drop the last commits, and then a
            # transaction that was sent looks queued and is sent again, which the platform answers
            # "transaction ID already used" (settled as accepted), as for in-doubt rows. FULL
            # fsyncs each commit: the in-doubt mark before every request cost 2-9 ms here and
            # serialized the sender behind the disk.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # checkpoint (and fsync the database file) every ~40 MiB of WAL, not every ~4 MiB: the
            # sender commits before each request, and a checkpoint inside one holds every request
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            # a 128 MiB page cache (the default is 2 MiB): the ledger of a large chain's day is a
            # million rows whose index pages every lookup before and after a request walks
            self._db.execute("PRAGMA cache_size=-131072")
            self._db.execute("PRAGMA foreign_keys=ON")
            # overwritten and deleted content is zeroed, so scrubbed customer ids leave no trace
            self._db.execute("PRAGMA secure_delete=ON")
            self.schema_version = migrate(self._db)
        except sqlite3.DatabaseError as exc:
            problem = _file_error(self.path, exc) or LedgerError(f"{self.path}: cannot open ledger: {exc}")
            raise problem from exc
        self._mutex = threading.RLock()

    def close(self) -> None:
        """Close the file (a crash without close loses nothing committed).

        The write-ahead log is checkpointed into the database and truncated first, so the file
        alone holds the ledger's state (and no stale page images linger in the WAL).
        """
        try:
            with self._mutex:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another connection is reading: it checkpoints later
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction: everything inside commits together or not at all."""
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                problem = _file_error(self.path, exc)
                if problem is None:
                    raise
                raise problem from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                problem = _file_error(self.path, exc)
                if problem is None:
                    raise
                raise problem from exc

    # ---- runs ---------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        feed: str,
        scope: str,
        kind: str = "run",
        dry_run: bool = False,
        selection: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record that a run started; returns its id."""
        run_id = run_id or new_run_id()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, feed, scope, kind, dry_run, status, started_at, selection, "
                "host, pid) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    run_id,
                    feed,
                    scope,
                    kind,
                    int(dry_run),
                    _now(),
                    json.dumps(selection, sort_keys=True) if selection else None,
                    socket.gethostname(),
                    os.getpid(),
                ),
            )
        return run_id

    def finish_run(self, run_id: str, *, status: str, exit_code: int, counts: dict[str, Any]) -> None:
        """Record how a run ended, its counts, and the state each of its transactions ended in."""
        with self._tx() as db:
            db.execute(_KEEP_OUTCOMES + "WHERE run_id = ?", (run_id,))
            db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, counts = ?, finished_at = ? WHERE id = ?",
                (status, exit_code, json.dumps(counts, sort_keys=True, default=str), _now(), run_id),
            )

    def close_abandoned_runs(self, scope: str) -> list[str]:
        """Mark runs of ``scope`` still 'running' (their process died) as 'crashed'."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id FROM runs WHERE scope = ? AND status = 'running'", (scope,)
            ).fetchall()
            db.execute(
                _KEEP_OUTCOMES
                + "WHERE run_id IN (SELECT id FROM runs WHERE scope = ? AND status = 'running')",
                (scope,),
            )
            db.execute(
                "UPDATE runs SET status = 'crashed', finished_at = ? WHERE scope = ? AND status = 'running'",
                (_now(), scope),
            )
        return [r["id"] for r in rows]

    def run(self, run_id: str) -> RunRecord | None:
        """One run by id (None when unknown)."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def runs(self, *, feed: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally of one feed."""
        sql = "SELECT * FROM runs"
        params: list[Any] = []
        if feed:
            sql += " WHERE feed = ?"
            params.append(feed)
        sql += " ORDER BY started_at DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_run(r) for r in self._query(sql, params)]

    # ---- files --------------------------------------------------------------------------------

    def file_by_sha(self, scope: str, sha256: str) -> FileRecord | None:
        """The recorded file of ``scope`` with this content, if any (newest first)."""
        rows = self._query(
            "SELECT * FROM files WHERE scope = ? AND sha256 = ? ORDER BY id DESC", (scope, sha256)
        )
        return _file(rows[0]) if rows else None

    def file_by_identity(self, scope: str, name: str, size: int, mtime: float) -> FileRecord | None:
        """A file of ``scope`` seen with this exact name, size and mtime, if any."""
        rows = self._query(
            "SELECT * FROM files WHERE scope = ? AND name = ? AND size = ? AND mtime = ? "
            "ORDER BY id DESC",
            (scope, name, size, mtime),
        )
        return _file(rows[0]) if rows else None

    def file(self, file_id: int) -> FileRecord:
        """One file by its ledger id."""
        return _file(self._query("SELECT * FROM files WHERE id = ?", (file_id,))[0])

    def files(self, *, scope: str | None = None, run_id: str | None = None) -> list[FileRecord]:
        """Files of a scope or first seen in a run."""
        sql, params = "SELECT * FROM files WHERE 1=1", []
        if scope:
            sql += " AND scope = ?"
            params.append(scope)
        if run_id:
            sql += " AND first_run_id = ?"
            params.append(run_id)
        return [_file(r) for r in self._query(sql + " ORDER BY id", params)]

    def register_file(
        self, run_id: str, *, scope: str, feed: str, name: str, size: int, mtime: float, sha256: str
    ) -> FileRecord:
        """Record a fetched file; an earlier recorded file of the same name and other content
        becomes superseded by it. A file fetched but never recorded (a crash) is reused."""
        with self._tx() as db:
            old = db.execute(
                "SELECT * FROM files WHERE scope = ? AND sha256 = ? AND status IN ('fetched', 'unreadable')",
                (scope, sha256),
            ).fetchone()
            if old is not None:
                db.execute(
                    "UPDATE files SET status = 'fetched', name = ?, size = ?, mtime = ?, error = NULL, "
                    "updated_at = ? WHERE id = ?",
                    (name, size, mtime, _now(), old["id"]),
                )
                return _file(db.execute("SELECT * FROM files WHERE id = ?", (old["id"],)).fetchone())
            previous = db.execute(
                "SELECT id FROM files WHERE scope = ? AND name = ? AND sha256 != ? "
                "AND status IN ('recorded', 'finished') AND superseded_by_file_id IS NULL "
                "ORDER BY id DESC LIMIT 1",
                (scope, name, sha256),
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, "
                "supersedes_file_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'fetched', ?, ?, ?)",
                (
                    scope, feed, name, size, mtime, sha256, run_id,
                    previous["id"] if previous else None, _now(),
                ),
            )
            file_id = cursor.lastrowid
            if previous is not None:
                db.execute(
                    "UPDATE files SET superseded_by_file_id = ?, updated_at = ? WHERE id = ?",
                    (file_id, _now(), previous["id"]),
                )
            return _file(db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone())

    def mark_file_unreadable(self, file_id: int, reason: str) -> None:
        """A fetched file could not be read at all; it is offered again by the next run."""
        with self._tx() as db:
            db.execute(
                "UPDATE files SET status = 'unreadable', error = ?, updated_at = ? WHERE id = ?",
                (reason, _now(), file_id),
            )

    def finish_file(self, file_id: int, action: str) -> None:
        """Every row of the file reached a final state and the source file was kept/archived/deleted."""
        with self._tx() as db:
            db.execute(
                "UPDATE files SET status = 'finished', finished_action = ?, finished_at = ?, "
                "updated_at = ? WHERE id = ? AND status = 'recorded'",
                (action, _now(), _now(), file_id),
            )

    def finishable_files(self, scope: str) -> list[FileRecord]:
        """Recorded files whose every transaction is final with no failure (nor its primary's)."""
        rows = self._query(
            """
            SELECT f.* FROM files f WHERE f.scope = ? AND f.status = 'recorded'
            AND NOT EXISTS (
                SELECT 1 FROM transactions t LEFT JOIN transactions p ON p.id = t.primary_id
                WHERE t.file_id = f.id AND (
                    t.state IN ('queued', 'sending', 'failed_retryable', 'failed_permanent')
                    OR (t.state = 'duplicate' AND p.state IN
                        ('queued', 'sending', 'failed_retryable', 'failed_permanent'))))
            ORDER BY f.id
            """,
            (scope,),
        )
        return [_file(r) for r in rows]

    # ---- recording a file's contents ----------------------------------------------------------

    def known(self, scope: str, transaction_ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(transaction_id, content_hash) pairs of ``scope`` for dedup: every primary transaction
        and every version held as a conflict (so a held transaction stays held). With
        ``transaction_ids``, only those ids are looked up (what a run's files contain), so the
        cost does not grow with the ledger's history."""
        sql = (
            f"SELECT DISTINCT transaction_id, content_hash FROM transactions WHERE scope = ? "
            f"AND (state IN {_PRIMARY_SQL} OR state = 'conflict') AND content_hash IS NOT NULL"
        )
        if transaction_ids is None:
            return [(r[0], r[1]) for r in self._query(sql, (scope,))]
        found: list[tuple[str, str]] = []
        for chunk in _chunks(sorted(set(transaction_ids))):
            marks = ",".join("?" * len(chunk))
            found.extend((r[0], r[1]) for r in self._query(f"{sql} AND transaction_id IN ({marks})",
                                                           (scope, *chunk)))
        return found

    def record_file(
        self,
        run_id: str,
        file: FileRecord,
        *,
        transactions: Iterable[NewTransaction],
        rejects: Iterable[NewReject],
        totals: Iterable[tuple[str, str, int, int, Decimal] | tuple[str, str, int, int, Decimal, str]],
    ) -> list[int]:
        """Record everything a file contained, in one transaction: its occurrences (queued, void,
        rejected, duplicate, conflict), its rejected lines, its input totals per store, business
        date (and currency: a total's optional sixth item); the file becomes 'recorded'.
        Duplicates of a primary left failed_retryable are requeued into this run. Returns the
        ledger ids of rows this run must send."""
        transactions = list(transactions)
        now = _now()
        with self._tx() as db:
            status = db.execute("SELECT status FROM files WHERE id = ?", (file.id,)).fetchone()
            if status is None or status[0] != "fetched":
                raise LedgerError(f"file {file.name}: cannot record contents in state {status and status[0]}")
            for txn in transactions:
                if txn.state not in _RECORDABLE:
                    raise IllegalTransitionError(txn.transaction_id, "new", txn.state)
            db.executemany(
                "INSERT INTO transactions (scope, feed, transaction_id, content_hash, state, "
                "file_id, source_file, source_lines, rows, store_id, business_date, "
                "transaction_type, currency, amount, reject_code, checkout, first_run_id, "
                "last_run_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        file.scope, file.feed, txn.transaction_id, txn.content_hash, txn.state.value,
                        file.id, file.name, json.dumps(list(txn.source_lines)), txn.rows, txn.store_id,
                        txn.business_date, txn.transaction_type, txn.currency, str(txn.amount),
                        txn.reject_code, txn.checkout, run_id, run_id, now, now,
                    )
                    for txn in transactions
                ],
            )
            # the file's rows, in insertion order (ids only grow, and no other file has this id)
            row_ids = [r[0] for r in db.execute(
                "SELECT id FROM transactions WHERE file_id = ? ORDER BY id", (file.id,))]
            if len(row_ids) != len(transactions):
                raise LedgerError(f"file {file.name}: {len(row_ids)} rows, {len(transactions)} given")
            self._attach(db, run_id, row_ids, "file")
            to_send = [i for i, t in zip(row_ids, transactions, strict=True) if t.state is TxnState.QUEUED]
            to_send += self._link_repeats(db, run_id, file.scope, row_ids, transactions)
            reject_row_of_line = {
                line: row_id
                for row_id, txn in zip(row_ids, transactions, strict=True)
                if txn.state is TxnState.REJECTED
                for line in txn.source_lines
            }
            db.executemany(
                "INSERT INTO rejects (run_id, file_id, txn_row_id, source_file, source_line, "
                "transaction_id, store_id, business_date, code, field, reason, amount, original) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        file.id,
                        reject_row_of_line.get(r.source_line) if r.source_line is not None else None,
                        file.name,
                        r.source_line,
                        r.transaction_id,
                        r.store_id,
                        r.business_date,
                        r.code,
                        r.field,
                        r.reason,
                        str(r.amount),
                        json.dumps(r.original, ensure_ascii=False, default=str),
                    )
                    for r in rejects
                ],
            )
            rows_in, amount_in = 0, Decimal(0)
            for store_id, business_date, rows, count, amount, *rest in totals:
                currency = (rest[0] if rest else "") or ""
                db.execute(
                    "INSERT INTO file_totals (file_id, store_id, business_date, currency, rows, "
                    "transactions, amount) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (file.id, store_id, business_date, currency, rows, count, str(amount)),
                )
                rows_in += rows
                amount_in += amount
            db.execute(
                "UPDATE files SET status = 'recorded', rows_in = ?, amount_in = ?, updated_at = ? "
                "WHERE id = ?",
                (rows_in, str(amount_in), now, file.id),
            )
        return to_send

    def _link_repeats(
        self,
        db: sqlite3.Connection,
        run_id: str,
        scope: str,
        row_ids: Sequence[int],
        transactions: Sequence[NewTransaction],
    ) -> list[int]:
        """Point each duplicate and conflict row at its primary (the scope's row of that id in a
        primary state; versions that disagree from the start have none). A primary that failed
        retryably and comes in again unchanged is queued into this run: returns those ids.

        A conflict with a version that this same run queued from an earlier file (files are
        transformed in groups) holds that version too: it becomes a conflict, nothing is sent,
        as when both versions come in the same group."""
        repeats = [(row_id, txn) for row_id, txn in zip(row_ids, transactions, strict=True)
                   if txn.state in (TxnState.DUPLICATE, TxnState.CONFLICT)]
        primaries: dict[str, sqlite3.Row] = {}
        for chunk in _chunks(list(dict.fromkeys(str(txn.transaction_id) for _, txn in repeats))):
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                f"SELECT id, transaction_id, state, content_hash, first_run_id FROM transactions "
                f"WHERE scope = ? AND transaction_id IN ({marks}) AND state IN {_PRIMARY_SQL}",
                (scope, *chunk),
            ):
                primaries[row["transaction_id"]] = row
        links: list[tuple[int, int]] = []
        again: list[int] = []
        held: list[int] = []
        for row_id, txn in repeats:
            primary = primaries.get(str(txn.transaction_id))
            if primary is None:
                continue
            if (
                txn.state is TxnState.CONFLICT
                and primary["state"] == TxnState.QUEUED
                and primary["first_run_id"] == run_id
            ):
                held.append(primary["id"])
                del primaries[str(txn.transaction_id)]  # no primary is left for later versions
                continue
            links.append((primary["id"], row_id))
            if (
                txn.state is TxnState.DUPLICATE
                and primary["content_hash"] == txn.content_hash
                and primary["state"] == TxnState.FAILED_RETRYABLE
                and primary["id"] not in again
            ):
                again.append(primary["id"])  # the earlier copy never got through: this run delivers it
        db.executemany("UPDATE transactions SET primary_id = ? WHERE id = ?", links)
        if held:  # queued -> conflict is no transition of a sent transaction: nothing was sent yet
            db.executemany("UPDATE transactions SET state = 'conflict', updated_at = ? WHERE id = ?",
                           [(_now(), i) for i in held])
        if again:
            self._set_state(db, again, TxnState.QUEUED, run_id)
            self._attach(db, run_id, again, "retry")
        return again

    # ---- transitions --------------------------------------------------------------------------

    def _attach(self, db: sqlite3.Connection, run_id: str, row_ids: Sequence[int], origin: str) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO run_transactions (run_id, txn_row_id, origin) VALUES (?, ?, ?)",
            [(run_id, i, origin) for i in row_ids],
        )

    def _set_state(
        self,
        db: sqlite3.Connection,
        row_ids: Sequence[int],
        target: TxnState,
        run_id: str,
        *,
        extra: str = "",
        params: Sequence[Any] = (),
    ) -> None:
        for chunk in _chunks(row_ids):
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT id, transaction_id, state FROM transactions WHERE id IN ({marks})", chunk
            ).fetchall()
            if len(rows) != len(set(chunk)):
                raise LedgerError(f"unknown transaction rows among {list(chunk)[:5]}")
            for row in rows:
                if target not in _TRANSITIONS.get(TxnState(row["state"]), frozenset()):
                    raise IllegalTransitionError(row["transaction_id"], row["state"], target)
            db.execute(
                f"UPDATE transactions SET state = ?, last_run_id = ?, updated_at = ?{extra} "
                f"WHERE id IN ({marks})",
                (target.value, run_id, _now(), *params, *chunk),
            )

    def _row_ids(self, db: sqlite3.Connection, scope: str, transaction_ids: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for chunk in _chunks(transaction_ids):
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT id FROM transactions WHERE scope = ? AND transaction_id IN ({marks}) "
                f"AND state IN {_PRIMARY_SQL}",
                (scope, *chunk),
            ).fetchall()
            ids.extend(r[0] for r in rows)
        if len(ids) != len(set(transaction_ids)):
            raise LedgerError(f"unknown transactions among {list(transaction_ids)[:5]} in scope {scope!r}")
        return ids

    def start_sending(self, scope: str, transaction_ids: Sequence[str], run_id: str) -> None:
        """Mark transactions in doubt before their request goes out (attempts + 1).

        One guarded UPDATE per request (it runs before every request, so it is kept cheap); when
        it does not touch exactly these transactions, the precise checks name what is wrong."""
        unique = list(dict.fromkeys(transaction_ids))
        with self._tx() as db:
            updated = 0
            for chunk in _chunks(unique):
                marks = ",".join("?" * len(chunk))
                updated += db.execute(
                    f"UPDATE transactions SET state = 'sending', last_run_id = ?, updated_at = ?, "
                    f"attempts = attempts + 1 WHERE scope = ? AND transaction_id IN ({marks}) "
                    f"AND state IN {_PRIMARY_SQL} AND state IN {_SENDABLE_SQL}",
                    (run_id, _now(), scope, *chunk),
                ).rowcount
            if updated != len(unique):
                ids = self._row_ids(db, scope, unique)  # raises for an unknown transaction
                self._set_state(db, ids, TxnState.SENDING, run_id)  # raises for an illegal one
                raise LedgerError(f"could not mark {unique[:5]} in doubt in scope {scope!r}")

    def accept(
        self,
        scope: str,
        transaction_id: str,
        run_id: str,
        *,
        event_ids: Sequence[str] = (),
        points: Decimal | None = None,
        note: str | None = None,
    ) -> None:
        """The platform accepted the transaction (or confirmed an earlier acceptance)."""
        self.apply_results(
            scope,
            [EventResult(transaction_id, Outcome.ACCEPTED, tuple(event_ids), points, note, None)],
            run_id,
        )

    def fail_retryable(
        self, scope: str, transaction_id: str, run_id: str, *, code: str | None, message: str | None
    ) -> None:
        """Not delivered this time; a later rerun may deliver it."""
        self.apply_results(
            scope, [EventResult(transaction_id, Outcome.RETRYABLE, (), None, code, message)], run_id
        )

    def fail_permanent(
        self, scope: str, transaction_id: str, run_id: str, *, code: str | None, message: str | None
    ) -> None:
        """The platform refused it for a reason retrying will not fix."""
        self.apply_results(
            scope, [EventResult(transaction_id, Outcome.REJECTED, (), None, code, message)], run_id
        )

    def mark_not_sent(
        self, scope: str, transaction_id: str, run_id: str, *, code: str | None, message: str | None
    ) -> None:
        """The target cannot express this transaction; it is counted, never sent."""
        self.apply_results(
            scope, [EventResult(transaction_id, Outcome.NOT_SENT, (), None, code, message)], run_id
        )

    def apply_results(
        self,
        scope: str,
        results: Sequence[EventResult],
        run_id: str,
        *,
        masks: Mapping[str, str] | None = None,
    ) -> None:
        """Settle a batch of sink outcomes in one transaction (accept / fail_* / mark_not_sent).

        ``masks`` (transaction id to masked customer id): a transaction that settles accepted or
        not sent, so is never sent again, keeps the mask in its stored checkout instead of the
        customer id (in the same write; :meth:`scrub_customer_ids` finds nothing left to do).
        """
        if not results:
            return
        now = _now()
        with self._tx() as db:
            current: dict[str, tuple[int, str]] = {}
            tids = [r.transaction_id for r in results]
            for chunk in _chunks(list(dict.fromkeys(tids))):
                marks = ",".join("?" * len(chunk))
                for row in db.execute(
                    f"SELECT id, transaction_id, state FROM transactions WHERE scope = ? "
                    f"AND transaction_id IN ({marks}) AND state IN {_PRIMARY_SQL}",
                    (scope, *chunk),
                ):
                    current[row["transaction_id"]] = (row["id"], row["state"])
            updates: list[tuple[Any, ...]] = []
            for result in results:
                if result.transaction_id not in current:
                    raise LedgerError(f"unknown transaction {result.transaction_id!r} in scope {scope!r}")
                row_id, state = current[result.transaction_id]
                if result.outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED):
                    # an earlier send landed: keep the platform's evidence (e.g. code 5003)
                    already = result.outcome is Outcome.ALREADY_ACCEPTED
                    target = TxnState.ACCEPTED
                    code = (result.error_code or "already_accepted") if already else None
                    message = result.error_message if already else None
                else:
                    target = {
                        Outcome.RETRYABLE: TxnState.FAILED_RETRYABLE,
                        Outcome.REJECTED: TxnState.FAILED_PERMANENT,
                        Outcome.NOT_SENT: TxnState.NOT_SENT,
                    }[result.outcome]
                    code, message = result.error_code, result.error_message
                if target not in _TRANSITIONS.get(TxnState(state), frozenset()):
                    raise IllegalTransitionError(result.transaction_id, state, target)
                current[result.transaction_id] = (row_id, target.value)
                final = target in _NEVER_SENT_AGAIN
                mask = masks.get(result.transaction_id) if masks and final else None
                retry_class = (
                    str(result.retry_class or RetryClass.TRANSIENT)
                    if target is TxnState.FAILED_RETRYABLE else None
                )
                updates.append(
                    (
                        target.value,
                        retry_class,
                        run_id,
                        now,
                        json.dumps(list(result.event_ids)) if target is TxnState.ACCEPTED else None,
                        str(result.points) if result.points is not None else None,
                        code,
                        message,
                        mask,
                        mask,
                        row_id,
                    )
                )
            db.executemany(
                "UPDATE transactions SET state = ?, retry_class = ?, last_run_id = ?, updated_at = ?, "
                "event_ids = COALESCE(?, event_ids), points = COALESCE(?, points), "
                "last_error_code = ?, last_error_message = ?, checkout = CASE WHEN ? IS NULL "
                "THEN checkout ELSE json_set(checkout, '$.customer_id', ?) END WHERE id = ?",
                updates,
            )

    def requeue(self, row_ids: Sequence[int], run_id: str, *, origin: str = "retry") -> None:
        """Put failed (or in-doubt) transactions back in the queue of ``run_id``."""
        with self._tx() as db:
            self._set_state(db, row_ids, TxnState.QUEUED, run_id)
            self._attach(db, run_id, row_ids, origin)

    def adopt_pending(self, scope: str, run_id: str) -> list[int]:
        """Attach the queued and in-doubt transactions left by earlier runs to ``run_id``
        (origin 'settle'); they are sent before anything new. Returns their row ids."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id FROM transactions WHERE scope = ? AND state IN ('queued', 'sending') ORDER BY id",
                (scope,),
            ).fetchall()
            ids = [r[0] for r in rows]
            self._attach(db, run_id, ids, "settle")
        return ids

    def carry_over(self, scope: str, run_id: str, *, max_attempts: int, max_age_hours: float,
                   now: datetime | None = None) -> list[int]:
        """Attach to ``run_id`` (origin 'settle') what earlier runs of ``scope`` left unsent, to be
        sent before anything new: queued and in-doubt transactions, and failed-retryable ones
        whose failure was transient, a stop or refused credentials (put back in the queue), as
        long as they had fewer than ``max_attempts`` attempts and were first recorded less than
        ``max_age_hours`` ago. Returns their row ids (in-doubt and queued first)."""
        cutoff = _cutoff(now, max_age_hours)
        with self._tx() as db:
            pending = [r[0] for r in db.execute(
                "SELECT id FROM transactions WHERE scope = ? AND state IN ('queued', 'sending') ORDER BY id",
                (scope,),
            )]
            failed = [r[0] for r in db.execute(
                f"SELECT id FROM transactions WHERE scope = ? AND state = 'failed_retryable' "
                f"AND {_RESUMABLE_SQL} ORDER BY id",
                (scope, max_attempts, cutoff),
            )]
            self._attach(db, run_id, pending, "settle")
            if failed:
                self._set_state(db, failed, TxnState.QUEUED, run_id)
                self._attach(db, run_id, failed, "settle")
        return pending + failed

    def requeue_refused(self, row_ids: Sequence[int], run_id: str) -> list[int]:
        """Put back in the queue the transactions among ``row_ids`` left failed because the
        platform refused our credentials (they wait for the next run, not for a rerun)."""
        ids: list[int] = []
        for chunk in _chunks(row_ids):
            marks = ",".join("?" * len(chunk))
            ids.extend(r[0] for r in self._query(
                f"SELECT id FROM transactions WHERE id IN ({marks}) AND state = 'failed_retryable' "
                "AND retry_class = 'credentials'", chunk))
        if ids:
            with self._tx() as db:
                self._set_state(db, ids, TxnState.QUEUED, run_id)
        return ids

    def backlog(self, scope: str, *, max_attempts: int, max_age_hours: float,
                now: datetime | None = None) -> Backlog:
        """What of ``scope`` is not final: what the next plain run sends (``waiting``, and when
        the oldest of it was first recorded) and what only `posfeed rerun` sends (``needs_rerun``:
        failed-retryable past the caps, or whose request was refused as such)."""
        cutoff = _cutoff(now, max_age_hours)
        rows = self._query(
            f"SELECT CASE WHEN state IN ('queued', 'sending') OR {_RESUMABLE_SQL} THEN 'waiting' "
            f"ELSE 'needs_rerun' END AS kind, COUNT(*), MIN(created_at) FROM transactions "
            f"WHERE scope = ? AND state IN ('queued', 'sending', 'failed_retryable') GROUP BY kind",
            (max_attempts, cutoff, scope),
        )
        found = {r[0]: (int(r[1]), r[2]) for r in rows}
        waiting, oldest = found.get("waiting", (0, None))
        needs_rerun = found.get("needs_rerun", (0, None))[0]
        return Backlog(waiting=waiting, waiting_since=oldest, needs_rerun=needs_rerun)

    def failure_causes(self, run_id: str, limit: int = 3) -> list[dict[str, Any]]:
        """The most frequent reasons among the transactions ``run_id`` left failed, with counts
        (``state``, ``code``, ``message``, ``count``): what a console says when a run did not end
        clean."""
        rows = self._query(
            "SELECT t.state, t.last_error_code, t.last_error_message, COUNT(*) AS n FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? "
            "AND t.state IN ('failed_retryable', 'failed_permanent') "
            "GROUP BY t.state, t.last_error_code, t.last_error_message ORDER BY n DESC LIMIT ?",
            (run_id, limit),
        )
        return [{"state": r[0], "code": r[1], "message": r[2], "count": r[3]} for r in rows]

    # ---- reading ------------------------------------------------------------------------------

    def originals(self, scope: str, transaction_ids: Sequence[str]) -> dict[str, TxnRecord]:
        """The primary rows of ``transaction_ids`` in ``scope``, by transaction id (e.g. the sales
        that returns name; a target that cancels purchases needs their platform event ids)."""
        found: dict[str, TxnRecord] = {}
        for chunk in _chunks(list(dict.fromkeys(transaction_ids))):
            marks = ",".join("?" * len(chunk))
            for row in self._query(
                f"SELECT {_TXN_COLUMNS} FROM transactions t WHERE t.scope = ? "
                f"AND t.transaction_id IN ({marks}) AND t.state IN {_PRIMARY_SQL}",
                (scope, *chunk),
            ):
                found[row["transaction_id"]] = _txn(row)
        return found

    def returns_of(self, scope: str, original_ids: Sequence[str]) -> dict[str, list[ReturnOf]]:
        """Every return row of ``scope`` (any state, repeats included) naming one of
        ``original_ids``, by the original's id, in ledger order, with its stored checkout."""
        found: dict[str, list[ReturnOf]] = {}
        for chunk in _chunks(list(dict.fromkeys(original_ids))):
            marks = ",".join("?" * len(chunk))
            for row in self._query(
                f"SELECT {_TXN_COLUMNS}, t.checkout, t.updated_at, {_ORIGINAL_SQL} AS original "
                f"FROM transactions t WHERE t.scope = ? AND {_ORIGINAL_SQL} IN ({marks}) "
                "AND transaction_type = 'return' ORDER BY t.id",
                (scope, *chunk),
            ):
                found.setdefault(row["original"], []).append(
                    ReturnOf(_txn(row, checkout=row["checkout"]), row["updated_at"]))
        for rows in found.values():
            rows.sort(key=lambda r: r.record.id)
        return found

    def sales_with_checkouts(self, scope: str, transaction_ids: Sequence[str]) -> dict[str, TxnRecord]:
        """Like :meth:`originals`, with the stored checkout (a return is checked against its lines)."""
        found: dict[str, TxnRecord] = {}
        for chunk in _chunks(list(dict.fromkeys(transaction_ids))):
            marks = ",".join("?" * len(chunk))
            for row in self._query(
                f"SELECT {_TXN_COLUMNS}, t.checkout FROM transactions t WHERE t.scope = ? "
                f"AND t.transaction_id IN ({marks}) AND t.state IN {_PRIMARY_SQL}",
                (scope, *chunk),
            ):
                found[row["transaction_id"]] = _txn(row, checkout=row["checkout"])
        return found

    def returns_naming(self, scope: str, original_ids: Sequence[str]) -> dict[str, list[TxnRecord]]:
        """The recorded returns (primary rows, with checkouts) that name each of ``original_ids``
        as their sale, oldest first (:meth:`returns_of` without repeats and final duplicates)."""
        return {
            original: primary
            for original, rows in self.returns_of(scope, original_ids).items()
            if (primary := [r.record for r in rows if r.record.state in PRIMARY_STATES])
        }

    def transactions_by_row_id(
        self, row_ids: Sequence[int], *, with_checkout: bool = False
    ) -> list[TxnRecord]:
        """Transaction rows by ledger id, in the given order."""
        cols = _TXN_COLUMNS + (", t.checkout" if with_checkout else "")
        found: dict[int, TxnRecord] = {}
        for chunk in _chunks(row_ids):
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT {cols} FROM transactions t WHERE t.id IN ({marks})", chunk):
                found[row["id"]] = _txn(row, checkout=row["checkout"] if with_checkout else None)
        return [found[i] for i in row_ids if i in found]

    def rows_in_state(self, row_ids: Sequence[int], state: TxnState) -> set[int]:
        """The ledger ids among ``row_ids`` whose transaction is in ``state``."""
        return self._ids_among(row_ids, "state", state.value)

    def rows_of_type(self, row_ids: Sequence[int], transaction_type: str) -> set[int]:
        """The ledger ids among ``row_ids`` whose transaction is of ``transaction_type``."""
        return self._ids_among(row_ids, "transaction_type", transaction_type)

    def _ids_among(self, row_ids: Sequence[int], column: str, value: str) -> set[int]:
        found: set[int] = set()
        for chunk in _chunks(row_ids):
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._query(
                f"SELECT id FROM transactions WHERE id IN ({marks}) AND {column} = ?", (*chunk, value)
            ))
        return found

    def run_transactions(self, run_id: str, *, at_end: bool = True) -> list[TxnRecord]:
        """The transactions a run handled, with their origin and (``at_end``) the outcome the run
        left them in: state, attempts, error, event ids, points and last run as of its end (the
        current ones while the run is still going), whatever later runs did."""
        columns = _TXN_COLUMNS_AT_END if at_end else _TXN_COLUMNS
        rows = self._query(
            f"SELECT {columns}, rt.origin, rt.state_at_end FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? ORDER BY t.file_id, t.id",
            (run_id,),
        )
        return [
            _txn(r, origin=r["origin"], state=(r["state_at_end"] if at_end else None) or None)
            for r in rows
        ]

    def day_transactions(self, feed: str, business_date: str) -> list[TxnRecord]:
        """Every transaction row of a feed's files for one business date, in its current state."""
        rows = self._query(
            f"SELECT {_TXN_COLUMNS} FROM transactions t WHERE t.feed = ? AND t.business_date = ? "
            "ORDER BY t.file_id, t.id",
            (feed, business_date),
        )
        return [_txn(r, origin="file") for r in rows]

    def file_totals(self, file_ids: Iterable[int]) -> list[tuple[int, str, str, int, int, Decimal]]:
        """Input totals (file_id, store_id, business_date, rows, transactions, amount), all
        currencies of a store and day together (:meth:`currency_totals` keeps them apart)."""
        merged: dict[tuple[int, str, str], tuple[int, int, Decimal]] = {}
        for file_id, store, day, _currency, rows, count, amount in self.currency_totals(file_ids):
            before = merged.get((file_id, store, day), (0, 0, Decimal(0)))
            merged[(file_id, store, day)] = (before[0] + rows, before[1] + count, before[2] + amount)
        return [(*key, *value) for key, value in merged.items()]

    def currency_totals(self, file_ids: Iterable[int]) -> list[tuple[int, str, str, str, int, int, Decimal]]:
        """Input totals per currency (file_id, store_id, business_date, currency, rows,
        transactions, amount); currency '' where the rows name none."""
        ids = sorted(set(file_ids))
        out: list[tuple[int, str, str, str, int, int, Decimal]] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for r in self._query(
                f"SELECT * FROM file_totals WHERE file_id IN ({marks}) "
                "ORDER BY file_id, store_id, business_date, currency", chunk
            ):
                out.append(
                    (r["file_id"], r["store_id"], r["business_date"], r["currency"], r["rows"],
                     r["transactions"], Decimal(r["amount"]))
                )
        return out

    def rejects(
        self, *, run_id: str | None = None, feed: str | None = None, business_date: str | None = None
    ) -> list[dict[str, Any]]:
        """Rejected lines of a run, or of a feed's business date."""
        sql = "SELECT r.* FROM rejects r JOIN files f ON f.id = r.file_id WHERE 1=1"
        params: list[Any] = []
        if run_id:
            sql += " AND r.run_id = ?"
            params.append(run_id)
        if feed:
            sql += " AND f.feed = ?"
            params.append(feed)
        if business_date:
            sql += " AND r.business_date = ?"
            params.append(business_date)
        out = []
        for r in self._query(sql + " ORDER BY r.file_id, r.source_line, r.id", params):
            item = dict(r)
            item["original"] = json.loads(item["original"])
            item["amount"] = Decimal(item["amount"])
            out.append(item)
        return out

    # ---- reading a day one page at a time (reports stream with these) ------------------------

    def iter_run_transactions(self, run_id: str, *, at_end: bool = True,
                              page_rows: int = PAGE_ROWS) -> Iterator[TxnRecord]:
        """:meth:`run_transactions`, read ``page_rows`` rows at a time: only one page is in memory.
        Consume it (or close it) before the next write to the ledger."""
        columns = _TXN_COLUMNS_AT_END if at_end else _TXN_COLUMNS
        for r in self._pages(
            f"SELECT {columns}, rt.origin, rt.state_at_end FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? ORDER BY t.file_id, t.id",
            (run_id,), page_rows,
        ):
            yield _txn(r, origin=r["origin"], state=(r["state_at_end"] if at_end else None) or None)

    def iter_day_transactions(self, feed: str, business_date: str, *,
                              page_rows: int = PAGE_ROWS) -> Iterator[TxnRecord]:
        """:meth:`day_transactions`, read ``page_rows`` rows at a time."""
        for r in self._pages(
            f"SELECT {_TXN_COLUMNS} FROM transactions t WHERE t.feed = ? AND t.business_date = ? "
            "ORDER BY t.file_id, t.id",
            (feed, business_date), page_rows,
        ):
            yield _txn(r, origin="file")

    def iter_rejects(
        self, *, run_id: str | None = None, feed: str | None = None, business_date: str | None = None,
        page_rows: int = PAGE_ROWS,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`rejects`, read ``page_rows`` rows at a time."""
        sql = "SELECT r.* FROM rejects r JOIN files f ON f.id = r.file_id WHERE 1=1"
        params: list[Any] = []
        for column, value in (("r.run_id", run_id), ("f.feed", feed), ("r.business_date", business_date)):
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        for r in self._pages(sql + " ORDER BY r.file_id, r.source_line, r.id", params, page_rows):
            item = dict(r)
            item["original"] = json.loads(item["original"])
            item["amount"] = Decimal(item["amount"])
            yield item

    def run_file_ids(self, run_id: str) -> set[int]:
        """The files whose rows came in with a run (its transactions of origin ``file``)."""
        return {r[0] for r in self._query(
            "SELECT DISTINCT t.file_id FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
            "WHERE rt.run_id = ? AND rt.origin = 'file'", (run_id,))}

    def day_file_ids(self, feed: str, business_date: str) -> set[int]:
        """The files with rows of a feed's business date."""
        return {r[0] for r in self._query(
            "SELECT DISTINCT file_id FROM transactions WHERE feed = ? AND business_date = ?",
            (feed, business_date))}

    def release_memory(self) -> None:
        """Give back the page cache's unused memory (SQLite's ``shrink_memory``): between the
        groups of a stage, so the cache holds what the next group reads, not what earlier ones did."""
        with self._mutex:
            self._db.execute("PRAGMA shrink_memory")

    def _pages(self, sql: str, params: Sequence[Any], page_rows: int) -> Iterator[sqlite3.Row]:
        """The rows of one query, fetched ``page_rows`` at a time from one cursor."""
        try:
            with self._mutex:
                cursor = self._db.execute(sql, params)
            try:
                while True:
                    with self._mutex:
                        rows = cursor.fetchmany(page_rows)
                    if not rows:
                        return
                    yield from rows
            finally:
                cursor.close()
        except sqlite3.DatabaseError as exc:
            problem = _file_error(self.path, exc)
            if problem is None:
                raise
            raise problem from exc

    def select_for_rerun(
        self,
        scope: str,
        *,
        run_id: str | None = None,
        file: str | None = None,
        store_id: str | None = None,
        business_date: str | None = None,
        include_permanent: bool = False,
        feed: str | None = None,
    ) -> list[int]:
        """Primary rows of ``scope`` matching the selection whose state a rerun may resend:
        failed_retryable (and failed_permanent with ``include_permanent``). Never accepted."""
        states = ["failed_retryable"] + (["failed_permanent"] if include_permanent else [])
        sql = (
            f"SELECT t.id FROM transactions t WHERE t.scope = ? AND t.state IN "
            f"({','.join('?' * len(states))})"
        )
        params: list[Any] = [scope, *states]
        if run_id:
            sql += " AND t.id IN (SELECT txn_row_id FROM run_transactions WHERE run_id = ?)"
            params.append(run_id)
        if file:
            sql += " AND t.source_file = ?"
            params.append(file)
        if store_id:
            sql += " AND t.store_id = ?"
            params.append(store_id)
        if business_date:
            sql += " AND t.business_date = ?"
            params.append(business_date)
        if feed:
            sql += " AND t.feed = ?"
            params.append(feed)
        return [r[0] for r in self._query(sql + " ORDER BY t.id", params)]

    def scrub_customer_ids(self, scope: str, mask: Callable[[str], str], *, run_id: str) -> int:
        """Replace the customer id in the stored checkout of every transaction of ``run_id`` in
        ``scope`` that is never sent again (accepted, not sent, conflict) by ``mask(id)``; returns
        how many changed.

        Checkouts that may still be sent (queued, in doubt, failed) keep the real id they need.
        A run scrubs its own transactions when it ends, so no run reads the whole ledger.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT t.id, json_extract(t.checkout, '$.customer_id') FROM run_transactions rt "
                "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? AND t.scope = ? "
                f"AND t.state IN {_NEVER_SENT_AGAIN_SQL} AND t.checkout IS NOT NULL",
                (run_id, scope),
            ).fetchall()
            masked = [(mask(str(customer)), row_id) for row_id, customer in rows
                      if customer is not None and not str(customer).startswith(MASK_PREFIX)]
            # SQLite edits the stored JSON in place: no Python decode and encode per checkout
            db.executemany(
                "UPDATE transactions SET checkout = json_set(checkout, '$.customer_id', ?) WHERE id = ?",
                masked,
            )
        return len(masked)

    def scrub_profiles(self, scope: str, *, run_id: str) -> int:
        """Remove the member details (``$.profile`` of an enrollment's stored JSON: email, phone,
        names, birth date) from every row of ``run_id`` in ``scope`` that is never sent again;
        returns how many changed. Pending rows keep what a resend needs."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE transactions SET checkout = json_remove(checkout, '$.profile') WHERE id IN ("
                "SELECT t.id FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
                f"WHERE rt.run_id = ? AND t.scope = ? AND t.state IN {_NEVER_SENT_AGAIN_SQL} "
                "AND t.checkout IS NOT NULL AND json_extract(t.checkout, '$.profile') IS NOT NULL)",
                (run_id, scope),
            )
            return cursor.rowcount

    def state_counts(self, scope: str) -> dict[str, int]:
        """How many rows of ``scope`` are in each state."""
        rows = self._query(
            "SELECT state, COUNT(*) FROM transactions WHERE scope = ? GROUP BY state", (scope,)
        )
        return {r[0]: r[1] for r in rows}

    # ---- quarantine ---------------------------------------------------------------------------

    def quarantine_file(self, file_id: int, location: str | None) -> None:
        """An unreadable file is set aside: later runs skip it. ``location`` is where it was moved
        (None: left in place and only recorded)."""
        with self._tx() as db:
            db.execute(
                "UPDATE files SET status = 'quarantined', quarantined_to = ?, quarantined_at = ?, "
                "updated_at = ? WHERE id = ?",
                (location, _now(), _now(), file_id),
            )

    def quarantined_files(self, scope: str | None = None, *, feed: str | None = None,
                          name: str | None = None) -> list[FileRecord]:
        """Files in quarantine, optionally of one scope, feed or name."""
        sql, params = "SELECT * FROM files WHERE status = 'quarantined'", []
        for column, value in (("scope", scope), ("feed", feed), ("name", name)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_file(r) for r in self._query(sql + " ORDER BY id", params)]

    def release_file(self, file_id: int) -> None:
        """Take a file out of quarantine: the next run reads it again."""
        with self._tx() as db:
            db.execute(
                "UPDATE files SET status = 'unreadable', quarantined_to = NULL, updated_at = ? "
                "WHERE id = ? AND status = 'quarantined'",
                (_now(), file_id),
            )

    def supersede_quarantined(self, scope: str, name: str, new_file_id: int) -> list[int]:
        """A new file under the name of quarantined ones replaces them; returns their ids."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id FROM files WHERE scope = ? AND name = ? AND status = 'quarantined' AND id != ?",
                (scope, name, new_file_id),
            ).fetchall()
            ids = [r[0] for r in rows]
            for file_id in ids:
                db.execute(
                    "UPDATE files SET status = 'superseded', superseded_by_file_id = ?, updated_at = ? "
                    "WHERE id = ?",
                    (new_file_id, _now(), file_id),
                )
        return ids

    # ---- backlog ------------------------------------------------------------------------------

    def carried(self, run_id: str) -> int:
        """How many transactions ``run_id`` took over from earlier runs (not from its own files)."""
        rows = self._query(
            "SELECT COUNT(*) FROM run_transactions WHERE run_id = ? AND origin != 'file'", (run_id,)
        )
        return int(rows[0][0])

    def run_codes(self, run_id: str, state: str) -> dict[str, int]:
        """How many of ``run_id``'s transactions are now in ``state``, by last error code."""
        rows = self._query(
            "SELECT t.last_error_code, COUNT(*) FROM run_transactions rt JOIN transactions t "
            "ON t.id = rt.txn_row_id WHERE rt.run_id = ? AND t.state = ? GROUP BY 1",
            (run_id, state),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def conflicts_since(self, feed: str, since: str | None) -> int:
        """Conflicts of ``feed`` recorded after ``since`` (all when None): held for review."""
        sql, params = "SELECT COUNT(*) FROM transactions WHERE feed = ? AND state = 'conflict'", [feed]
        if since is not None:
            sql += " AND created_at > ?"
            params.append(since)
        return int(self._query(sql, params)[0][0])

    # ---- problems and their alerts ------------------------------------------------------------

    def problems(self, *, feed: str | None = None, scope: str | None = None, open_only: bool = True,
                 problem_id: int | None = None) -> list[Problem]:
        """Problems (open ones by default), oldest first."""
        sql, params = "SELECT * FROM problems WHERE 1=1", []
        if open_only:
            sql += " AND status = 'open'"
        for column, value in (("feed", feed), ("scope", scope), ("id", problem_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_problem(r) for r in self._query(sql + " ORDER BY opened_at, id", params)]

    def last_resolved_at(self, key: str) -> str | None:
        """When the latest problem with this key was resolved (None: never)."""
        rows = self._query("SELECT MAX(resolved_at) FROM problems WHERE key = ? AND status = 'resolved'",
                           (key,))
        return rows[0][0] if rows else None

    def apply_problems(
        self,
        plan: Plan,
        *,
        run_id: str | None,
        alert: Callable[[Problem, str], dict[str, Any] | None],
    ) -> list[Problem]:
        """Record a run's problem changes, and in the same transaction the alerts they owe.

        ``alert(problem, event)`` returns the payload to send (None: not sent). Returns the
        problems as they are after the change, in the plan's order.
        """
        now = _now()
        out: list[Problem] = []
        with self._tx() as db:
            for change in plan.changes:
                obs, current = change.observation, change.problem
                if change.event == "opened":
                    assert obs is not None
                    problem_id = db.execute(
                        "INSERT INTO problems (key, kind, feed, scope, status, stage, summary, action, "
                        "store_id, business_date, subject, counts, opened_at, escalated_at, "
                        "opened_run_id, last_run_id) "
                        "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (obs.key, obs.kind, obs.feed, obs.scope, obs.stage, obs.summary, obs.action,
                         obs.store_id, obs.business_date, obs.subject,
                         json.dumps(dict(obs.counts), sort_keys=True, default=str), now,
                         now if obs.stage > 0 else None, run_id, run_id),
                    ).lastrowid
                elif change.event == "resolved":
                    assert current is not None
                    problem_id = current.id
                    db.execute("UPDATE problems SET status = 'resolved', resolved_at = ?, last_run_id = ? "
                               "WHERE id = ?", (now, run_id, problem_id))
                else:
                    assert obs is not None and current is not None
                    problem_id = current.id
                    escalated = change.event == "escalated"
                    db.execute(
                        "UPDATE problems SET stage = ?, summary = ?, action = ?, counts = ?, "
                        "last_run_id = ?, "
                        "escalated_at = CASE WHEN ? THEN ? ELSE escalated_at END WHERE id = ?",
                        (max(obs.stage, current.stage), obs.summary, obs.action,
                         json.dumps(dict(obs.counts), sort_keys=True, default=str), run_id,
                         escalated, now, problem_id),
                    )
                row = db.execute("SELECT * FROM problems WHERE id = ?", (problem_id,)).fetchone()
                problem = _problem(row)
                out.append(problem)
                if change.event == "refreshed":
                    continue
                payload = alert(problem, change.event)
                if payload is not None:
                    db.execute(
                        "INSERT INTO alert_outbox (problem_id, feed, scope, event, payload, created_at, "
                        "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (problem_id, problem.feed, problem.scope, change.event,
                         json.dumps(payload, sort_keys=True, default=str), now, now),
                    )
        return out

    def pending_alerts(self, scope: str, *, due_by: str | None = None) -> list[dict[str, Any]]:
        """Alerts of ``scope`` not delivered yet (whose next attempt is due by ``due_by``), oldest
        first: ``id``, ``attempts``, ``payload`` (decoded)."""
        sql = "SELECT id, attempts, payload FROM alert_outbox WHERE scope = ? AND delivered_at IS NULL"
        params: list[Any] = [scope]
        if due_by is not None:
            sql += " AND next_attempt_at <= ?"
            params.append(due_by)
        return [{"id": r[0], "attempts": r[1], "payload": json.loads(r[2])}
                for r in self._query(sql + " ORDER BY id", params)]

    def alert_delivered(self, alert_id: int) -> None:
        """An alert reached its webhook."""
        with self._tx() as db:
            db.execute("UPDATE alert_outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
                       "WHERE id = ?", (_now(), alert_id))

    def alert_failed(self, alert_id: int, error: str, next_attempt_at: str) -> None:
        """An attempt to deliver an alert failed; it is tried again from ``next_attempt_at``."""
        with self._tx() as db:
            db.execute("UPDATE alert_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                       "WHERE id = ?", (error, next_attempt_at, alert_id))


def _problem(row: sqlite3.Row) -> Problem:
    return Problem(
        id=row["id"], kind=row["kind"], key=row["key"], feed=row["feed"], scope=row["scope"],
        status=row["status"], stage=row["stage"], summary=row["summary"], action=row["action"],
        store_id=row["store_id"], business_date=row["business_date"], subject=row["subject"],
        counts=json.loads(row["counts"]) if row["counts"] else {}, opened_at=row["opened_at"],
        escalated_at=row["escalated_at"], resolved_at=row["resolved_at"],
        opened_run_id=row["opened_run_id"], last_run_id=row["last_run_id"],
    )
