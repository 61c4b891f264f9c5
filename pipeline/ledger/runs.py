"""Runs: when each run started and ended, how, and the state it left its transactions in."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from pipeline.ledger.db import Db
from pipeline.ledger.records import RunRecord, new_run_id, run_record, timestamp
from pipeline.ledger.transitions import ScopeGuard, require_held, while_held

# a run's own outcome of each of its transactions, kept when it ends (its report reads them); a
# join, not a subquery per row: on PostgreSQL the per-row subplan cost more server time than the
# update itself (with the room migration 13 leaves on each page, 2.4 against 6.9 µs per row)
_KEEP_OUTCOMES = (
    "UPDATE run_transactions SET (state_at_end, attempts_at_end, error_code_at_end, "
    "error_message_at_end, event_ids_at_end, points_at_end, last_run_id_at_end, refunded_at_end) = "
    "(t.state, t.attempts, t.last_error_code, t.last_error_message, t.event_ids, t.points, "
    "t.last_run_id, t.refunded) FROM transactions t WHERE t.id = run_transactions.txn_row_id "
)


class Runs:
    """The ledger's runs (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db
    _scope_guard: ScopeGuard | None  # see Transitions.guard_scope

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
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, feed, scope, kind, dry_run, status, started_at, selection, "
                "host, pid) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    run_id,
                    feed,
                    scope,
                    kind,
                    int(dry_run),
                    timestamp(),
                    json.dumps(selection, sort_keys=True) if selection else None,
                    socket.gethostname(),
                    os.getpid(),
                ),
            )
        return run_id

    def finish_run(self, run_id: str, *, status: str, exit_code: int, counts: dict[str, Any],
                   only_if_running: bool = False) -> bool:
        """Record how a run ended, its counts, and the state each of its transactions ended in;
        with ``only_if_running``, only while the ledger still records it as running (not yet
        closed as crashed by the next run of its scope): whether it was recorded.

        Otherwise, in a guarded scope (see
        :meth:`~pipeline.ledger.transitions.Transitions.guard_scope`), only while the scope's
        lock is held (checked in the UPDATE itself): LockLostError when it is not, and nothing
        is written (the run that lost it records its end with ``only_if_running``)."""
        with self._db.transaction() as db:
            # the write transaction (and the row's lock) keeps close_abandoned_runs out meanwhile
            held, lock = ("", ()) if only_if_running else while_held(db, self._scope_guard)
            written = db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, counts = ?, finished_at = ? WHERE id = ?"
                + (" AND status = 'running'" if only_if_running else "") + held,
                (status, exit_code, json.dumps(counts, sort_keys=True, default=str), timestamp(), run_id,
                 *lock),
            )
            if not written:
                if only_if_running:
                    return False
                if held:
                    require_held(db, self._scope_guard)  # or no such run: nothing to keep
            db.execute(_KEEP_OUTCOMES + "AND run_transactions.run_id = ?", (run_id,))
        return True

    def close_abandoned_runs(self, scope: str) -> list[str]:
        """Mark runs of ``scope`` still 'running' (their process died) as 'crashed'."""
        with self._db.transaction() as db:
            rows = db.query("SELECT id FROM runs WHERE scope = ? AND status = 'running'", (scope,))
            db.execute(
                _KEEP_OUTCOMES
                + "AND run_transactions.run_id IN "
                "(SELECT id FROM runs WHERE scope = ? AND status = 'running')",
                (scope,),
            )
            db.execute(
                "UPDATE runs SET status = 'crashed', finished_at = ? WHERE scope = ? AND status = 'running'",
                (timestamp(), scope),
            )
        return [r["id"] for r in rows]

    def run(self, run_id: str) -> RunRecord | None:
        """One run by id (None when unknown)."""
        row = self._db.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        return run_record(row) if row else None

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
        return [run_record(r) for r in self._db.query(sql, params)]
