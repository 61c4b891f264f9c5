"""The backlog: what of a scope is not final yet, what a run carried over, and why a run left
transactions failed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.ledger.db import Db, marks
from pipeline.ledger.records import cutoff
from pipeline.ledger.states import RESUMABLE_SQL


@dataclass(frozen=True)
class Backlog:
    """A scope's transactions that are not final (see :meth:`Ledger.backlog`)."""

    waiting: int  # the next plain run sends them (queued, in doubt, resumable failures)
    waiting_since: str | None  # when the oldest of them was first recorded (ISO 8601, UTC)
    needs_rerun: int  # failed-retryable that only `posfeed rerun` sends (past the caps, or deferred)
    waiting_for_sales: int = 0  # of ``waiting``: returns whose sale has not arrived (original_not_found)


class Backlogs:
    """What is left to deliver (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def backlog(self, scope: str, *, max_attempts: int, max_age_hours: float,
                now: datetime | None = None) -> Backlog:
        """What of ``scope`` is not final: what the next plain run sends (``waiting``, and when
        the oldest of it was first recorded) and what only `posfeed rerun` sends (``needs_rerun``:
        failed-retryable past the caps, or whose request was refused as such); ``waiting_for_sales``:
        the returns among what waits whose sale has not arrived."""
        since = cutoff(now, max_age_hours)
        rows = self._db.query(
            f"SELECT CASE WHEN state IN ('queued', 'sending') OR {RESUMABLE_SQL} THEN 'waiting' "
            f"ELSE 'needs_rerun' END AS kind, COUNT(*), MIN(created_at), "
            f"SUM(CASE WHEN last_error_code = 'original_not_found' THEN 1 ELSE 0 END) FROM transactions "
            f"WHERE scope = ? AND state IN ('queued', 'sending', 'failed_retryable') GROUP BY kind",
            (max_attempts, since, scope),
        )
        found = {r[0]: (int(r[1]), r[2], int(r[3] or 0)) for r in rows}
        waiting, oldest, for_sales = found.get("waiting", (0, None, 0))
        needs_rerun = found.get("needs_rerun", (0, None, 0))[0]
        return Backlog(waiting=waiting, waiting_since=oldest, needs_rerun=needs_rerun,
                       waiting_for_sales=for_sales)

    def failure_causes(self, run_id: str, limit: int = 3) -> list[dict[str, Any]]:
        """The most frequent reasons among the transactions ``run_id`` left failed, with counts
        (``state``, ``code``, ``message``, ``count``): what a console says when a run did not end
        clean. Returns waiting for their sale (``failed_retryable``, ``original_not_found``) are left
        out: they are not why a run fails, and :meth:`waiting_for_sales` counts them."""
        rows = self._db.query(
            "SELECT t.state, t.last_error_code, t.last_error_message, COUNT(*) AS n FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? "
            "AND t.state IN ('failed_retryable', 'failed_permanent') "
            "AND NOT (t.state = 'failed_retryable' "
            "AND COALESCE(t.last_error_code, '') = 'original_not_found') "
            "GROUP BY t.state, t.last_error_code, t.last_error_message ORDER BY n DESC LIMIT ?",
            (run_id, limit),
        )
        return [{"state": r[0], "code": r[1], "message": r[2], "count": r[3]} for r in rows]

    def refused_with(self, run_id: str, code: str) -> int:
        """How many of ``run_id``'s transactions it left ``failed_permanent`` with ``code`` (every
        one, whichever their message: :meth:`failure_causes` names only the most frequent)."""
        row = self._db.query(
            "SELECT COUNT(*) FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
            "WHERE rt.run_id = ? AND t.state = 'failed_permanent' AND t.last_error_code = ?",
            (run_id, code),
        )[0]
        return int(row[0])

    def waiting_for_sales(self, run_id: str) -> tuple[int, str | None]:
        """How many of ``run_id``'s transactions are returns waiting for their sale
        (``failed_retryable``, ``original_not_found``), and when the first recorded of them was
        recorded (ISO 8601, UTC; None when there are none)."""
        row = self._db.query(
            "SELECT COUNT(*), MIN(t.created_at) FROM run_transactions rt JOIN transactions t "
            "ON t.id = rt.txn_row_id WHERE rt.run_id = ? AND t.state = 'failed_retryable' "
            "AND t.last_error_code = 'original_not_found'",
            (run_id,),
        )[0]
        return int(row[0]), row[1]

    def carried(self, run_id: str) -> int:
        """How many transactions ``run_id`` took over from earlier runs (not from its own files)."""
        rows = self._db.query(
            "SELECT COUNT(*) FROM run_transactions WHERE run_id = ? AND origin != 'file'", (run_id,)
        )
        return int(rows[0][0])

    def run_codes(self, run_id: str, *states: str) -> dict[str, dict[str, int]]:
        """How many of ``run_id``'s transactions are now in each of ``states``, by last error
        code (one read of the run's rows for all of them)."""
        rows = self._db.query(
            "SELECT t.state, t.last_error_code, COUNT(*) FROM run_transactions rt JOIN transactions t "
            f"ON t.id = rt.txn_row_id WHERE rt.run_id = ? AND t.state IN ({marks(len(states))}) "
            "GROUP BY 1, 2",
            (run_id, *states),
        )
        codes: dict[str, dict[str, int]] = {state: {} for state in states}
        for state, code, count in rows:
            codes[str(state)][str(code)] = int(count)
        return codes

    def conflicts_since(self, feed: str, since: str | None) -> int:
        """Conflicts of ``feed`` recorded after ``since`` (all when None): held for review."""
        sql, params = "SELECT COUNT(*) FROM transactions WHERE feed = ? AND state = 'conflict'", [feed]
        if since is not None:
            sql += " AND created_at > ?"
            params.append(since)
        return int(self._db.query(sql, params)[0][0])
