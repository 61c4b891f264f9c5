"""Recording a file's contents: every transaction occurrence (queued, void, rejected, duplicate,
conflict), its rejected lines and input totals, in one ledger transaction; and what dedup needs
to know of earlier files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pipeline.ledger.db import Db, chunks, marks
from pipeline.ledger.errors import IllegalTransitionError, LedgerError
from pipeline.ledger.records import FileRecord, NewReject, NewTransaction, timestamp
from pipeline.ledger.rejects import insert_rejects
from pipeline.ledger.states import PRIMARY_SQL, PRIMARY_STATES, RECORDABLE, TxnState
from pipeline.ledger.totals import Total, insert_totals
from pipeline.ledger.transitions import ScopeGuard, attach, require_scope_lock, set_state
from pipeline.ledger.voids import post_void


@dataclass(frozen=True)
class Earlier:
    """What the ledger holds under some transaction ids (:meth:`Recording.earlier`)."""

    known: list[tuple[str, str]]  # (transaction_id, content_hash), as :meth:`Recording.known`
    # the lines of the rejected occurrences: (transaction_id, ledger row id of the occurrence,
    # source_file, source_line, reject code, original columns as JSON)
    rejected_lines: list[tuple[str, int, str, int | None, str, str]]


class Recording:
    """Recording files' contents (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db
    _scope_guard: ScopeGuard | None  # see Transitions.guard_scope

    def known(self, scope: str, transaction_ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(transaction_id, content_hash) pairs of ``scope`` for dedup: every primary transaction
        and every version held as a conflict (so a held transaction stays held). With
        ``transaction_ids``, only those ids are looked up (what a run's files contain), so the
        cost does not grow with the ledger's history."""
        sql = (
            f"SELECT DISTINCT transaction_id, content_hash FROM transactions WHERE scope = ? "
            f"AND (state IN {PRIMARY_SQL} OR state = 'conflict') AND content_hash IS NOT NULL"
        )
        if transaction_ids is None:
            return [(r[0], r[1]) for r in self._db.query(sql, (scope,))]
        found: list[tuple[str, str]] = []
        for chunk in chunks(sorted(set(transaction_ids))):
            found.extend((r[0], r[1]) for r in self._db.query(
                f"{sql} AND transaction_id IN ({marks(len(chunk))})", (scope, *chunk)))
        return found

    def earlier(self, scope: str, transaction_ids: Iterable[str]) -> Earlier:
        """What the scope holds under ``transaction_ids`` for a transform: the pairs :meth:`known`
        gives for them (dedup), and the lines of their rejected occurrences (the fragments of
        rejected transactions).

        One query of the transactions (by id, indexed) serves both; the rejected rows' lines are
        then read among those of the run that recorded them (indexed by run), only when there are
        any: no pass over every rejected line the ledger holds."""
        known: dict[tuple[str, str], None] = {}
        rows_of_run: dict[str, list[int]] = {}
        for chunk in chunks(sorted(set(transaction_ids))):
            for tid, content_hash, state, row_id, run_id in self._db.query(
                "SELECT transaction_id, content_hash, state, id, first_run_id FROM transactions "
                f"WHERE scope = ? AND transaction_id IN ({marks(len(chunk))}) AND (state = 'rejected' "
                f"OR ((state IN {PRIMARY_SQL} OR state = 'conflict') AND content_hash IS NOT NULL))",
                (scope, *chunk),
            ):
                if state == TxnState.REJECTED.value:
                    rows_of_run.setdefault(run_id, []).append(int(row_id))
                else:
                    known[(tid, content_hash)] = None
        lines: list[tuple[str, int, str, int | None, str, str]] = []
        for run_id, row_ids in sorted(rows_of_run.items()):
            for chunk_ids in chunks(sorted(row_ids)):
                lines.extend(
                    (r[0], int(r[1]), r[2], r[3], r[4], r[5])
                    for r in self._db.query(
                        "SELECT transaction_id, txn_row_id, source_file, source_line, code, original "
                        f"FROM rejects WHERE run_id = ? AND txn_row_id IN ({marks(len(chunk_ids))}) "
                        "ORDER BY id",
                        (run_id, *chunk_ids),
                    )
                )
        return Earlier(list(known), lines)

    def record_file(
        self,
        run_id: str,
        file: FileRecord,
        *,
        transactions: Iterable[NewTransaction],
        rejects: Iterable[NewReject],
        totals: Iterable[Total],
        post_voided: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        """Record everything a file contained, in one transaction: its occurrences (queued, void,
        rejected, duplicate, conflict), its rejected lines, its input totals per store, business
        date (and currency: a total's optional sixth item); the file becomes 'recorded'.
        Duplicates of a primary left failed_retryable are requeued into this run. ``post_voided``:
        earlier sale rows (id, message) the file's voids name, post-voided in the same transaction
        while they are known not to be on the platform (:func:`~pipeline.ledger.voids.post_void`).
        Returns the ledger ids of rows this run must send."""
        transactions = list(transactions)
        now = timestamp()
        with self._db.transaction() as db:
            require_scope_lock(db, self._scope_guard, file.scope)
            status = db.one("SELECT status FROM files WHERE id = ?", (file.id,))
            if status is None or status[0] != "fetched":
                raise LedgerError(f"file {file.name}: cannot record contents in state {status and status[0]}")
            for txn in transactions:
                if txn.state not in RECORDABLE:
                    raise IllegalTransitionError(txn.transaction_id, "new", txn.state)
            # ids first (in the file's order), so each repeat is written linked to its primary
            row_ids = db.new_ids("transactions", len(transactions))
            repeats = _repeats_of(db, run_id, file.scope, row_ids, transactions)
            db.copy_rows(
                "transactions",
                ("id", "scope", "feed", "transaction_id", "content_hash", "state", "primary_id", "file_id",
                 "source_file", "source_lines", "rows", "store_id", "business_date", "transaction_type",
                 "currency", "amount", "reject_code", "checkout", "last_error_code", "last_error_message",
                 "first_run_id", "last_run_id", "created_at", "updated_at"),
                [
                    (
                        row_id, file.scope, file.feed, txn.transaction_id, txn.content_hash, txn.state.value,
                        repeats.primary_of.get(row_id), file.id, file.name,
                        json.dumps(list(txn.source_lines)), txn.rows, txn.store_id, txn.business_date,
                        txn.transaction_type, txn.currency, str(txn.amount), txn.reject_code, txn.checkout,
                        txn.error_code, txn.error_message, run_id, run_id, now, now,
                    )
                    for row_id, txn in zip(row_ids, transactions, strict=True)
                ],
            )
            # one statement, not one per row: every row of the file is new, to the run too
            attached = db.execute(
                "INSERT INTO run_transactions (run_id, txn_row_id, origin) "
                "SELECT ?, id, 'file' FROM transactions WHERE file_id = ?",
                (run_id, file.id),
            )
            if attached != len(transactions):
                raise LedgerError(f"file {file.name}: {attached} rows, {len(transactions)} given")
            if repeats.linked_after:  # a primary written after its repeat (foreign keys check at once)
                db.executemany("UPDATE transactions SET primary_id = ? WHERE id = ?", repeats.linked_after)
            if repeats.held:  # queued -> conflict is no transition of a sent transaction: nothing was sent
                db.executemany("UPDATE transactions SET state = 'conflict', updated_at = ? WHERE id = ?",
                               [(now, i) for i in repeats.held])
            if repeats.again:
                set_state(db, repeats.again, TxnState.QUEUED, run_id)
                attach(db, run_id, repeats.again, "retry")
            to_send = [i for i, t in zip(row_ids, transactions, strict=True) if t.state is TxnState.QUEUED]
            to_send += repeats.again
            reject_row_of_line = {
                line: row_id
                for row_id, txn in zip(row_ids, transactions, strict=True)
                if txn.state is TxnState.REJECTED
                for line in txn.source_lines
            }
            voided = set(post_void(db, run_id, post_voided))
            to_send = [i for i in to_send if i not in voided]
            insert_rejects(db, run_id, file, rejects, reject_row_of_line)
            rows_in, amount_in = insert_totals(db, file.id, totals)
            db.execute(
                "UPDATE files SET status = 'recorded', rows_in = ?, amount_in = ?, updated_at = ? "
                "WHERE id = ?",
                (rows_in, str(amount_in), now, file.id),
            )
        return to_send


@dataclass
class _Repeats:
    """What a file's duplicates and conflicts do to the ledger (see :func:`_repeats_of`)."""

    primary_of: dict[int, int] = field(default_factory=dict)  # repeat's row id -> its primary's
    linked_after: list[tuple[int, int]] = field(default_factory=list)  # (primary, repeat): primary later
    held: list[int] = field(default_factory=list)  # primaries queued by this run, now conflicts
    again: list[int] = field(default_factory=list)  # primaries failed retryably, queued again


def _repeats_of(
    db: Db,
    run_id: str,
    scope: str,
    row_ids: Sequence[int],
    transactions: Sequence[NewTransaction],
) -> _Repeats:
    """Point each duplicate and conflict row at its primary: the scope's row of that id in a
    primary state, an earlier file's or this one's (versions that disagree from the start have
    none). A primary that failed retryably and comes in again unchanged is queued into this run
    (``again``).

    A conflict with a version that this same run queued from an earlier file (files are
    transformed in groups) holds that version too (``held``): it becomes a conflict, nothing is
    sent, as when both versions come in the same group."""
    repeats = [(row_id, txn) for row_id, txn in zip(row_ids, transactions, strict=True)
               if txn.state in (TxnState.DUPLICATE, TxnState.CONFLICT)]
    out = _Repeats()
    if not repeats:
        return out
    primaries: dict[str, tuple[int, str, str | None, str]] = {}  # id, state, content hash, first run
    for chunk in chunks(list(dict.fromkeys(str(txn.transaction_id) for _, txn in repeats))):
        for row in db.query(
            f"SELECT id, transaction_id, state, content_hash, first_run_id FROM transactions "
            f"WHERE scope = ? AND transaction_id IN ({marks(len(chunk))}) AND state IN {PRIMARY_SQL}",
            (scope, *chunk),
        ):
            primaries[row["transaction_id"]] = (
                row["id"], row["state"], row["content_hash"], row["first_run_id"])
    for row_id, txn in zip(row_ids, transactions, strict=True):  # this file's own primaries
        if txn.state in PRIMARY_STATES:
            primaries[str(txn.transaction_id)] = (row_id, txn.state.value, txn.content_hash, run_id)
    for row_id, txn in repeats:
        primary = primaries.get(str(txn.transaction_id))
        if primary is None:
            continue
        primary_id, state, content_hash, first_run_id = primary
        if txn.state is TxnState.CONFLICT and state == TxnState.QUEUED and first_run_id == run_id:
            out.held.append(primary_id)
            del primaries[str(txn.transaction_id)]  # no primary is left for later versions
            continue
        if primary_id < row_id:
            out.primary_of[row_id] = primary_id
        else:
            out.linked_after.append((primary_id, row_id))
        if (
            txn.state is TxnState.DUPLICATE
            and content_hash == txn.content_hash
            and state == TxnState.FAILED_RETRYABLE
            and primary_id not in out.again
        ):
            out.again.append(primary_id)  # the earlier copy never got through: this run delivers it
    return out
