"""What the ledger stores and hands back: runs, files, transactions and rejects as records, the
converters from result rows, run ids and timestamps."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.ledger.db import Row
from pipeline.ledger.states import TxnState


def timestamp() -> str:
    """The current time as the ledger stores it (ISO 8601, UTC, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def cutoff(now: datetime | None, max_age_hours: float) -> str:
    """The ledger timestamp ``max_age_hours`` before ``now`` (default: the current time)."""
    moment = (now or datetime.now(UTC)) - timedelta(hours=max_age_hours)
    return moment.isoformat(timespec="microseconds")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261120T031500Z-3f9a1c``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


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
    host: str | None = None  # where the run's process ran, and its pid (None in rows older than that)
    pid: int | None = None


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
    fetched_at: str | None = None  # when the fetch that read this content began (None: unknown)


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
    error_code: str | None = None  # recorded as the row's last error code (e.g. a void to act on)
    error_message: str | None = None
    names: str | None = None  # a void's original_transaction_id (not stored: the sale it names)


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
    # a return the platform took in part: the money (a magnitude, in its currency) it refunded,
    # lines a read-back found landed included; None otherwise, and when not known (a return settled
    # by a version that kept no money for lines found by a read-back)
    refunded: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ReturnOf:
    """A return row naming a sale, with its stored checkout and when its row last changed (for an
    in-doubt row: when its last request went out)."""

    record: TxnRecord
    updated_at: str


# the columns :func:`txn_record` reads, in its order, from ``transactions t``
TXN_COLUMNS = (
    "t.id, t.scope, t.feed, t.transaction_id, t.content_hash, t.state, t.primary_id, t.attempts, "
    "t.last_error_code, t.last_error_message, t.event_ids, t.points, t.file_id, t.source_file, "
    "t.source_lines, t.rows, t.store_id, t.business_date, t.transaction_type, t.currency, t.amount, "
    "t.reject_code, t.first_run_id, t.last_run_id, t.refunded"
)
_TXN_WIDTH = TXN_COLUMNS.count(",") + 1
# the same columns with a run's kept outcome (run_transactions rt) where the run ended and kept one
_AT_END = {
    "t.attempts": "attempts_at_end",
    "t.last_error_code": "error_code_at_end",
    "t.last_error_message": "error_message_at_end",
    "t.event_ids": "event_ids_at_end",
    "t.points": "points_at_end",
    "t.last_run_id": "last_run_id_at_end",
    "t.refunded": "refunded_at_end",
}
TXN_COLUMNS_AT_END = ", ".join(
    f"CASE WHEN rt.attempts_at_end IS NULL THEN {c} ELSE rt.{_AT_END[c]} END" if c in _AT_END else c
    for c in TXN_COLUMNS.split(", ")
)


_STATES = {state.value: state for state in TxnState}


def txn_record(
    row: Row, *, origin: str | None = None, state: str | None = None, checkout: str | None = None
) -> TxnRecord:
    """A :class:`TxnRecord` from a row that starts with :data:`TXN_COLUMNS` (read by position:
    a report builds one per transaction of its run)."""
    (row_id, scope, feed, transaction_id, content_hash, stored_state, primary_id, attempts,
     last_error_code, last_error_message, event_ids, points, file_id, source_file, source_lines,
     rows, store_id, business_date, transaction_type, currency, amount, reject_code, first_run_id,
     last_run_id, refunded) = row[:_TXN_WIDTH]
    return TxnRecord(
        row_id, scope, feed, transaction_id, content_hash, _STATES[state or stored_state], primary_id,
        attempts, last_error_code, last_error_message,
        tuple(json.loads(event_ids)) if event_ids else (),
        Decimal(points) if points is not None else None,
        file_id, source_file, tuple(json.loads(source_lines)), rows, store_id, business_date,
        transaction_type, currency, Decimal(amount), reject_code, first_run_id, last_run_id,
        origin, checkout, refunded_amount(refunded),
    )


def refunded_text(amount: Decimal, currency: str | None) -> str:
    """How the ledger keeps the money refunded of a return taken in part: exact decimal text and
    its currency (``1.20 GBP``; the amount alone when the row has no currency)."""
    return f"{amount:f} {currency}" if currency else f"{amount:f}"


def refunded_amount(text: str | None) -> Decimal | None:
    """The amount of a kept :func:`refunded_text` (None: none kept)."""
    return Decimal(text.split(" ", 1)[0]) if text else None


def file_record(row: Row) -> FileRecord:
    """A :class:`FileRecord` from a ``SELECT *`` row of ``files``."""
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
        fetched_at=row["fetched_at"] if "fetched_at" in row.keys() else None,  # noqa: SIM118
    )


def run_record(row: Row) -> RunRecord:
    """A :class:`RunRecord` from a ``SELECT *`` row of ``runs``."""
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
        host=row["host"],
        pid=row["pid"],
    )
