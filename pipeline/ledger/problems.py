"""Problems with a life cycle (opened, escalated, resolved) and the alerts they owe, kept in an
outbox written in the same transaction as the change that owes them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pipeline.errors import LockLostError
from pipeline.ledger.db import Db, Row
from pipeline.ledger.records import timestamp
from pipeline.ledger.transitions import ScopeGuard, lock_held, while_held
from pipeline.problems import Plan, Problem


class Problems:
    """Problems and their alerts (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db
    _scope_guard: ScopeGuard | None  # see Transitions.guard_scope
    _file_guard: tuple[str, Callable[[], bool]] | None  # see Transitions.guard_lock_file

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
        return [_problem(r) for r in self._db.query(sql + " ORDER BY opened_at, id", params)]

    def last_resolved_at(self, key: str) -> str | None:
        """When the latest problem with this key was resolved (None: never)."""
        rows = self._db.query("SELECT MAX(resolved_at) FROM problems WHERE key = ? AND status = 'resolved'",
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
        problems as they are after the change, in the plan's order. A run of a guarded scope
        (see :meth:`~pipeline.ledger.transitions.Transitions.guard_scope`) whose lock is lost
        changes nothing (LockLostError): the scope's holder keeps its problems up to date. The
        lock is read with each changed problem, in the transaction that writes it.
        """
        now = timestamp()
        out: list[Problem] = []
        with self._db.transaction() as db:
            held, lock = lock_held(db, self._scope_guard)
            reread = f"SELECT *, {held} AS lock_held FROM problems WHERE id = ?" if held else \
                "SELECT * FROM problems WHERE id = ?"
            for change in plan.changes:
                obs, current = change.observation, change.problem
                if change.event == "opened":
                    assert obs is not None
                    problem_id = db.insert(
                        "INSERT INTO problems (key, kind, feed, scope, status, stage, summary, action, "
                        "store_id, business_date, subject, counts, opened_at, escalated_at, "
                        "opened_run_id, last_run_id) "
                        "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (obs.key, obs.kind, obs.feed, obs.scope, obs.stage, obs.summary, obs.action,
                         obs.store_id, obs.business_date, obs.subject,
                         json.dumps(dict(obs.counts), sort_keys=True, default=str), now,
                         now if obs.stage > 0 else None, run_id, run_id),
                    )
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
                row = db.one(reread, (*lock, problem_id))
                assert row is not None
                if held and not row["lock_held"]:  # the transaction is rolled back
                    assert self._scope_guard is not None
                    raise LockLostError(self._scope_guard[0])
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
        first: ``id``, ``attempts``, ``payload`` (decoded), ``last_error``, ``next_attempt_at``.
        None for a run of a guarded scope whose lock is lost (they are the holder's to send)."""
        held, lock = while_held(self._db, self._scope_guard)
        sql = ("SELECT id, attempts, payload, last_error, next_attempt_at FROM alert_outbox "
               "WHERE scope = ? AND delivered_at IS NULL" + held)
        params: list[Any] = [scope, *lock]
        if due_by is not None:
            sql += " AND next_attempt_at <= ?"
            params.append(due_by)
        return [{"id": r[0], "attempts": r[1], "payload": json.loads(r[2]), "last_error": r[3],
                 "next_attempt_at": r[4]}
                for r in self._db.query(sql + " ORDER BY id", params)]

    def claim_alert(self, alert_id: int, listed_due: str, until: str) -> bool:
        """Take an alert to post now: its next attempt is moved to ``until``, so a run listing the
        scope's due alerts meanwhile (another host's, once this run's lock is lost) leaves it to
        this one. Only while it is undelivered and due as listed (``listed_due``: its
        ``next_attempt_at`` when read; another run has not taken it since), and, for a run of a
        guarded scope (see :meth:`~pipeline.ledger.transitions.Transitions.guard_scope`), while
        its lock is held (in the same statement). False: not this run's to post."""
        guard = self._file_guard
        with self._db.transaction() as db:
            held, lock = while_held(db, self._scope_guard)
            if guard is not None and not guard[1]():
                return False
            taken = db.execute(
                "UPDATE alert_outbox SET next_attempt_at = ? WHERE id = ? AND delivered_at IS NULL "
                "AND next_attempt_at = ?" + held, (until, alert_id, listed_due, *lock))
        return taken == 1

    def alert_delivered(self, alert_id: int) -> None:
        """An alert reached its webhook."""
        with self._db.transaction() as db:
            db.execute("UPDATE alert_outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
                       "WHERE id = ?", (timestamp(), alert_id))

    def drop_alerts(self, problem_id: int) -> list[str]:
        """Take a problem's undelivered alerts out of the outbox (no run can post them: their feed
        is gone or has no webhook); returns their events, oldest first."""
        with self._db.transaction() as db:
            rows = db.query("SELECT id, event FROM alert_outbox WHERE problem_id = ? "
                            "AND delivered_at IS NULL ORDER BY id", (problem_id,))
            db.executemany("DELETE FROM alert_outbox WHERE id = ?", [(row[0],) for row in rows])
        return [str(row[1]) for row in rows]

    def alert_failed(self, alert_id: int, error: str, next_attempt_at: str) -> None:
        """An attempt to deliver an alert failed; it is tried again from ``next_attempt_at``."""
        with self._db.transaction() as db:
            db.execute("UPDATE alert_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                       "WHERE id = ?", (error, next_attempt_at, alert_id))


def _problem(row: Row) -> Problem:
    return Problem(
        id=row["id"], kind=row["kind"], key=row["key"], feed=row["feed"], scope=row["scope"],
        status=row["status"], stage=row["stage"], summary=row["summary"], action=row["action"],
        store_id=row["store_id"], business_date=row["business_date"], subject=row["subject"],
        counts=json.loads(row["counts"]) if row["counts"] else {}, opened_at=row["opened_at"],
        escalated_at=row["escalated_at"], resolved_at=row["resolved_at"],
        opened_run_id=row["opened_run_id"], last_run_id=row["last_run_id"],
    )
