"""Transitions: the verb-named moves of a transaction between states (see ``states.py``), each
one ledger transaction, and which run each transaction belongs to (``run_transactions``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.errors import LockLostError
from pipeline.ledger.db import Db, chunks, marks
from pipeline.ledger.errors import IllegalTransitionError, LedgerError
from pipeline.ledger.records import cutoff, refunded_text, timestamp
from pipeline.ledger.states import (
    NEVER_SENT_AGAIN,
    PRIMARY_SQL,
    RESUMABLE_SQL,
    SENDABLE_SQL,
    TRANSITIONS,
    TxnState,
)
from pipeline.records import ORIGINAL_NOT_FOUND, EventResult, Outcome, RetryClass


def attach(db: Db, run_id: str, row_ids: Sequence[int], origin: str) -> None:
    """Make transaction rows part of ``run_id`` (``origin``: file, settle or retry); a row already
    part of it stays as it was. One statement per :func:`chunks` of rows, not one per row (on
    PostgreSQL the keys are checked once per statement: see schema migration 14)."""
    for chunk in chunks(row_ids):
        db.executemany(
            "INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES "
            f"{', '.join(['(?, ?, ?)'] * len(chunk))} ON CONFLICT DO NOTHING",
            [tuple(value for i in chunk for value in (run_id, i, origin))],
        )


def set_state(
    db: Db,
    row_ids: Sequence[int],
    target: TxnState,
    run_id: str,
    *,
    extra: str = "",
    params: Sequence[Any] = (),
) -> None:
    """Move rows to ``target`` for ``run_id``, checking each move against the state machine
    (``extra``/``params``: more ``, column = ?`` assignments and their values)."""
    for chunk in chunks(row_ids):
        in_list = marks(len(chunk))
        rows = db.query(f"SELECT id, transaction_id, state FROM transactions WHERE id IN ({in_list})", chunk)
        if len(rows) != len(set(chunk)):
            raise LedgerError(f"unknown transaction rows among {list(chunk)[:5]}")
        for row in rows:
            if target not in TRANSITIONS.get(TxnState(row["state"]), frozenset()):
                raise IllegalTransitionError(row["transaction_id"], row["state"], target)
        db.execute(
            f"UPDATE transactions SET state = ?, last_run_id = ?, updated_at = ?{extra} "
            f"WHERE id IN ({in_list})",
            (target.value, run_id, timestamp(), *params, *chunk),
        )


def primary_row_ids(db: Db, scope: str, transaction_ids: Sequence[str]) -> list[int]:
    """The primary rows of ``transaction_ids`` in ``scope``; every one must exist."""
    ids: list[int] = []
    for chunk in chunks(transaction_ids):
        rows = db.query(
            f"SELECT id FROM transactions WHERE scope = ? AND transaction_id IN ({marks(len(chunk))}) "
            f"AND state IN {PRIMARY_SQL}",
            (scope, *chunk),
        )
        ids.extend(r[0] for r in rows)
    if len(ids) != len(set(transaction_ids)):
        raise LedgerError(f"unknown transactions among {list(transaction_ids)[:5]} in scope {scope!r}")
    return ids


def _settle(
    db: Db, scope: str, results: Sequence[EventResult], run_id: str, masks: Mapping[str, str] | None,
    lock: tuple[int, ...] = (),
) -> None:
    """Settle sink outcomes inside the caller's transaction (see :meth:`Transitions.apply_results`);
    with ``lock`` (the scope lock's parameters of :data:`_LOCK_HELD`), only while it is held: the
    rows' lookup tells it too (no round trip more), else LockLostError and nothing is written.

    A return that waits for its sale (``original_not_found``) went nowhere: when this run marked
    it in doubt to look for its sale, that mark is taken back from its ``attempts`` (a look
    sends nothing of it; ``attempts`` counts the requests that could have carried it)."""
    now = timestamp()
    current: dict[str, tuple[int, str]] = {}
    currency: dict[str, str | None] = {}
    marked_here: set[str] = set()  # in doubt by this run's mark
    tids = [r.transaction_id for r in results]
    held = _LOCK_HELD if lock else "1 = 1"
    for chunk in chunks(list(dict.fromkeys(tids))):
        for row in db.query(
            f"SELECT id, transaction_id, state, currency, last_run_id, {held} AS held FROM transactions "
            f"WHERE scope = ? AND transaction_id IN ({marks(len(chunk))}) AND state IN {PRIMARY_SQL}",
            (*lock, scope, *chunk),
        ):
            if not row["held"]:
                raise LockLostError(scope)
            current[row["transaction_id"]] = (row["id"], row["state"])
            currency[row["transaction_id"]] = row["currency"]
            if row["state"] == TxnState.SENDING and row["last_run_id"] == run_id:
                marked_here.add(row["transaction_id"])
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
        if target not in TRANSITIONS.get(TxnState(state), frozenset()):
            raise IllegalTransitionError(result.transaction_id, state, target)
        current[result.transaction_id] = (row_id, target.value)
        unmark = state == TxnState.SENDING and result.transaction_id in marked_here and (
            result.error_code == ORIGINAL_NOT_FOUND)
        final = target in NEVER_SENT_AGAIN
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
                # a refund refused in part keeps the ids of the events that landed
                json.dumps(list(result.event_ids)) if target is TxnState.ACCEPTED or result.event_ids
                else None,
                str(result.points) if result.points is not None else None,
                code,
                message,
                mask,
                mask,
                # the money a return taken in part did refund, kept apart from its message
                refunded_text(result.refunded, currency[result.transaction_id])
                if result.refunded is not None and target is TxnState.FAILED_PERMANENT else None,
                # marks in doubt whose request never carried it, or this run's mark of a return
                # that looked for its sale: the attempts they added are given back (only while it
                # is in doubt: a row settled since keeps its count)
                *(2 * [max(result.withdrawn, 1 if unmark else 0) if state == TxnState.SENDING else 0]),
                row_id,
            )
        )
    db.executemany(
        "UPDATE transactions SET state = ?, retry_class = ?, last_run_id = ?, updated_at = ?, "
        "event_ids = COALESCE(?, event_ids), points = COALESCE(?, points), "
        "last_error_code = ?, last_error_message = ?, checkout = CASE WHEN CAST(? AS TEXT) IS NULL "
        f"THEN checkout ELSE {db.json_set_text('checkout', 'customer_id')} END, refunded = ?, "
        "attempts = CASE WHEN attempts > ? THEN attempts - ? ELSE 0 END WHERE id = ?",
        updates,
    )


# the scope lock's advisory lock, held by the session of a backend pid (see Transitions.guard_scope)
_LOCK_HELD = ("EXISTS (SELECT 1 FROM pg_locks WHERE pid = ? AND locktype = 'advisory' AND granted "
              "AND objsubid = 1 AND classid = CAST(? AS bigint)::oid AND objid = CAST(? AS bigint)::oid)")
# a guarded scope and its lock: (scope, (backend pid, classid, objid))
ScopeGuard = tuple[str, tuple[int, int, int]]


def while_held(db: Db, guard: ScopeGuard | None, column: str = "scope") -> tuple[str, tuple[Any, ...]]:
    """A condition to add to a statement's WHERE, and its parameters: a row of the guarded scope
    (its ``column``) is touched only while the scope's lock is held, in the statement itself (no
    round trip more). Empty when nothing is guarded (SQLite, a dry run, a command)."""
    if guard is None or db.dialect != "postgresql":
        return "", ()
    return f" AND ({column} <> ? OR {_LOCK_HELD})", (guard[0], *guard[1])


def lock_held(db: Db, guard: ScopeGuard | None) -> tuple[str, tuple[Any, ...]]:
    """An expression, and its parameters, that is true while the guarded scope's lock is held, to
    read along with a statement's own columns (empty when nothing is guarded)."""
    if guard is None or db.dialect != "postgresql":
        return "", ()
    return _LOCK_HELD, guard[1]


def require_held(db: Db, guard: ScopeGuard | None) -> None:
    """Inside a write transaction: raise LockLostError when a scope is guarded and its lock is lost."""
    if guard is not None:
        require_scope_lock(db, guard, guard[0])


def require_scope_lock(db: Db, guard: ScopeGuard | None, scope: str) -> None:
    """Inside a write transaction: raise LockLostError when ``scope`` is guarded (see
    :meth:`Transitions.guard_scope`) and its lock session no longer holds the lock."""
    if guard is None or guard[0] != scope or db.dialect != "postgresql":
        return
    row = db.one(f"SELECT {_LOCK_HELD}", guard[1])
    if row is None or not row[0]:
        raise LockLostError(scope)


class Transitions:
    """Sending and settling transactions (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db
    _scope_guard: ScopeGuard | None = None
    _file_guard: tuple[str, Callable[[], bool]] | None = None  # see guard_lock_file

    def guard_scope(self, scope: str, backend_pid: int, key: int) -> None:
        """Mark nothing of ``scope`` in doubt (so send nothing) unless the PostgreSQL session
        ``backend_pid`` still holds the scope's advisory lock ``key``: checked in the in-doubt
        mark's own transaction, so a run whose lock session ended (and whose scope another host
        may hold now) stops before its next request, not at its lock watch's next look. Taking
        a file (:meth:`~pipeline.ledger.files.Files.register_file`) and recording one check it too,
        and so does every write a run makes once it has sent (:func:`while_held` in the statement,
        or :func:`require_held` in the transaction): refused checkouts put back in the queue,
        files finished, confirmed or set aside, problems and their alerts, the run's end; the
        alerts to post and the files to finish are listed only while it is held."""
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        self._scope_guard = (scope, (backend_pid, unsigned >> 32, unsigned & 0xFFFF_FFFF))

    def guard_lock_file(self, scope: str, still_held: Callable[[], bool]) -> None:
        """Mark nothing of ``scope`` in doubt (so send nothing) unless ``still_held()``: a file
        lock (:meth:`~pipeline.locks.RunLock.still_held`) whose file was removed or replaced may
        be another run's now. Checked inside the in-doubt mark's write transaction, which the
        next holder's writes wait for."""
        self._file_guard = (scope, still_held)

    def _lock_check(self, scope: str) -> tuple[str, tuple[int, ...]]:
        """The in-doubt mark's extra condition and its parameters for ``scope`` (none unguarded)."""
        guard = self._scope_guard
        if guard is None or guard[0] != scope or self._db.dialect != "postgresql":
            return "", ()
        return f" AND {_LOCK_HELD}", guard[1]

    def start_sending(
        self,
        scope: str,
        transaction_ids: Sequence[str],
        run_id: str,
        *,
        settled: Sequence[EventResult] = (),
        masks: Mapping[str, str] | None = None,
    ) -> None:
        """Mark transactions in doubt before their request goes out (attempts + 1); ``settled``:
        answers read since the last commit, settled first in the same commit (see
        :meth:`apply_results`), so the next request costs one commit, not two.

        One guarded UPDATE per request (it runs before every request, so it is kept cheap); when
        it does not touch exactly these transactions, the precise checks name what is wrong."""
        unique = list(dict.fromkeys(transaction_ids))
        held, lock = self._lock_check(scope)
        with self._db.transaction() as db:
            if self._file_guard is not None and self._file_guard[0] == scope and not self._file_guard[1]():
                # nothing written: the answers stay in doubt too
                raise LockLostError(scope, LockLostError.LOCK_FILE)
            if settled:
                _settle(db, scope, settled, run_id, masks, lock)
            updated = 0
            for chunk in chunks(unique):
                updated += db.execute(
                    f"UPDATE transactions SET state = 'sending', last_run_id = ?, updated_at = ?, "
                    f"attempts = attempts + 1 WHERE scope = ? AND transaction_id IN ({marks(len(chunk))}) "
                    f"AND state IN {PRIMARY_SQL} AND state IN {SENDABLE_SQL}{held}",
                    (run_id, timestamp(), scope, *chunk, *lock),
                )
            if updated != len(unique):
                # another host may run the scope now: nothing of it is written, the answers
                # settled here neither (their rows stay in doubt: the next run asks the platform)
                require_scope_lock(db, self._scope_guard, scope)
                ids = primary_row_ids(db, scope, unique)  # raises for an unknown transaction
                set_state(db, ids, TxnState.SENDING, run_id)  # raises for an illegal one
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
        A guarded scope (:meth:`guard_scope`) whose lock is lost settles nothing (LockLostError):
        the rows are the next holder's, which asks the platform about those in doubt.
        """
        if results:
            lock = self._lock_check(scope)[1]
            with self._db.transaction() as db:
                _settle(db, scope, results, run_id, masks, lock)

    def record_found_event_ids(self, scope: str, found: Mapping[str, Sequence[str]]) -> int:
        """Keep platform event ids found by a lookup (transaction id -> ids) on accepted rows that
        recorded none (the platform's answer named none): a later return names the event by them
        instead of looking it up again. Rows with ids, or not accepted, are left alone; state,
        run and timestamps are not touched. Returns how many rows took ids."""
        rows = [(json.dumps(list(ids)), scope, tid) for tid, ids in found.items() if ids]
        if not rows:
            return 0
        written = 0
        with self._db.transaction() as db:
            for row in rows:
                written += db.execute(
                    "UPDATE transactions SET event_ids = ? WHERE scope = ? AND transaction_id = ? "
                    "AND state = 'accepted' AND (event_ids IS NULL OR event_ids = '[]')",
                    row,
                )
        return written

    def requeue(self, row_ids: Sequence[int], run_id: str, *, origin: str = "retry") -> None:
        """Put failed (or in-doubt) transactions back in the queue of ``run_id``."""
        with self._db.transaction() as db:
            set_state(db, row_ids, TxnState.QUEUED, run_id)
            attach(db, run_id, row_ids, origin)

    def adopt_pending(self, scope: str, run_id: str) -> list[int]:
        """Attach the queued and in-doubt transactions left by earlier runs to ``run_id``
        (origin 'settle'); they are sent before anything new. Returns their row ids."""
        with self._db.transaction() as db:
            rows = db.query(
                "SELECT id FROM transactions WHERE scope = ? AND state IN ('queued', 'sending') ORDER BY id",
                (scope,),
            )
            ids = [r[0] for r in rows]
            attach(db, run_id, ids, "settle")
        return ids

    def carry_over(self, scope: str, run_id: str, *, max_attempts: int, max_age_hours: float,
                   now: datetime | None = None) -> list[int]:
        """Attach to ``run_id`` (origin 'settle') what earlier runs of ``scope`` left unsent, to be
        sent before anything new: queued and in-doubt transactions, and failed-retryable ones
        whose failure was transient, a stop or refused credentials (put back in the queue), as
        long as they had fewer than ``max_attempts`` attempts and were first recorded less than
        ``max_age_hours`` ago. Returns their row ids (in-doubt and queued first)."""
        since = cutoff(now, max_age_hours)
        with self._db.transaction() as db:
            pending = [r[0] for r in db.query(
                "SELECT id FROM transactions WHERE scope = ? AND state IN ('queued', 'sending') ORDER BY id",
                (scope,),
            )]
            failed = [r[0] for r in db.query(
                f"SELECT id FROM transactions WHERE scope = ? AND state = 'failed_retryable' "
                f"AND {RESUMABLE_SQL} ORDER BY id",
                (scope, max_attempts, since),
            )]
            attach(db, run_id, pending, "settle")
            if failed:
                set_state(db, failed, TxnState.QUEUED, run_id)
                attach(db, run_id, failed, "settle")
        return pending + failed

    def requeue_refused(self, row_ids: Sequence[int], run_id: str) -> list[int]:
        """Put back in the queue the transactions among ``row_ids`` left failed because the
        platform refused our credentials (they wait for the next run, not for a rerun)."""
        ids: list[int] = []
        for chunk in chunks(row_ids):
            ids.extend(r[0] for r in self._db.query(
                f"SELECT id FROM transactions WHERE id IN ({marks(len(chunk))}) "
                "AND state = 'failed_retryable' AND retry_class = 'credentials'", chunk))
        if ids:
            with self._db.transaction() as db:
                require_held(db, self._scope_guard)  # a lost scope's rows are the next holder's
                set_state(db, ids, TxnState.QUEUED, run_id)
        return ids
