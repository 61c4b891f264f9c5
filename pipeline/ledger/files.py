"""Files: each fetched file (one content per sha256 within a scope) and its life cycle, from
fetched to recorded to finished (or set aside in quarantine), and which file superseded which."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.ledger.db import Db, chunks, marks
from pipeline.ledger.records import FileRecord, file_record, timestamp
from pipeline.ledger.transitions import ScopeGuard, require_held, require_scope_lock, while_held


class Files:
    """The ledger's files (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db
    _scope_guard: ScopeGuard | None  # see Transitions.guard_scope

    def file_by_sha(self, scope: str, sha256: str) -> FileRecord | None:
        """The recorded file of ``scope`` with this content, if any (newest first)."""
        row = self._db.one(
            "SELECT * FROM files WHERE scope = ? AND sha256 = ? ORDER BY id DESC", (scope, sha256)
        )
        return file_record(row) if row else None

    def file_by_identity(self, scope: str, name: str, size: int, mtime: float) -> FileRecord | None:
        """A file of ``scope`` seen with this exact name, size and mtime, if any (newest first).
        Whether that identity may stand for its content is the caller's rule (``fetched_at``)."""
        row = self._db.one(
            "SELECT * FROM files WHERE scope = ? AND name = ? AND size = ? AND mtime = ? "
            "ORDER BY id DESC",
            (scope, name, size, mtime),
        )
        return file_record(row) if row else None

    def file(self, file_id: int) -> FileRecord:
        """One file by its ledger id."""
        return file_record(self._db.query("SELECT * FROM files WHERE id = ?", (file_id,))[0])

    def files_without_rows(self, scope: str, names: Iterable[str]) -> set[str]:
        """Those of ``names`` recorded in ``scope`` with no rows: read, with nothing in them (a
        header-only file)."""
        found: set[str] = set()
        for chunk in chunks(sorted(set(names))):
            found.update(r[0] for r in self._db.query(
                f"SELECT DISTINCT name FROM files WHERE scope = ? AND rows_in = 0 "
                f"AND name IN ({marks(len(chunk))})", (scope, *chunk)))
        return found

    def files_without_day(self, feed: str) -> list[FileRecord]:
        """Files of ``feed`` that hold no row, so no business date: read with no data rows, or
        unreadable (set aside in quarantine too)."""
        rows = self._db.query(
            "SELECT * FROM files WHERE feed = ? AND (status IN ('unreadable', 'quarantined') "
            "OR (status IN ('recorded', 'finished') AND rows_in = 0)) ORDER BY id", (feed,))
        return [file_record(r) for r in rows]

    def files(self, *, scope: str | None = None, run_id: str | None = None) -> list[FileRecord]:
        """Files of a scope or first seen in a run."""
        sql, params = "SELECT * FROM files WHERE 1=1", []
        if scope:
            sql += " AND scope = ?"
            params.append(scope)
        if run_id:
            sql += " AND first_run_id = ?"
            params.append(run_id)
        return [file_record(r) for r in self._db.query(sql + " ORDER BY id", params)]

    def register_file(
        self, run_id: str, *, scope: str, feed: str, name: str, size: int, mtime: float, sha256: str,
        fetched_at: str | None = None,
    ) -> FileRecord:
        """Record a fetched file (``fetched_at``: when the fetch that read it began, a ledger
        timestamp); an earlier recorded file of the same name and other content becomes
        superseded by it. A file fetched but never recorded (a crash) is reused."""
        with self._db.transaction() as db:
            require_scope_lock(db, self._scope_guard, scope)
            old = db.one(
                "SELECT * FROM files WHERE scope = ? AND sha256 = ? AND status IN ('fetched', 'unreadable')",
                (scope, sha256),
            )
            if old is not None:
                db.execute(
                    "UPDATE files SET status = 'fetched', name = ?, size = ?, mtime = ?, error = NULL, "
                    "fetched_at = ?, updated_at = ? WHERE id = ?",
                    (name, size, mtime, fetched_at, timestamp(), old["id"]),
                )
                return _reread(db, old["id"])
            previous = db.one(
                "SELECT id FROM files WHERE scope = ? AND name = ? AND sha256 != ? "
                "AND status IN ('recorded', 'finished') AND superseded_by_file_id IS NULL "
                "ORDER BY id DESC LIMIT 1",
                (scope, name, sha256),
            )
            file_id = db.insert(
                "INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, "
                "supersedes_file_id, fetched_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'fetched', ?, ?, ?, ?)",
                (
                    scope, feed, name, size, mtime, sha256, run_id,
                    previous["id"] if previous else None, fetched_at, timestamp(),
                ),
            )
            if previous is not None:
                db.execute(
                    "UPDATE files SET superseded_by_file_id = ?, updated_at = ? WHERE id = ?",
                    (file_id, timestamp(), previous["id"]),
                )
            return _reread(db, file_id)

    def confirm_file(self, file_id: int, fetched_at: str, *, mtime: float | None = None) -> None:
        """The file's content was read again, under the name and size it was recorded with (and
        ``mtime``, when it has moved since), by a fetch that began at ``fetched_at`` (a ledger
        timestamp)."""
        self._guarded_update("UPDATE files SET fetched_at = ?, mtime = COALESCE(?, mtime), updated_at = ? "
                             "WHERE id = ?", (fetched_at, mtime, timestamp(), file_id))

    def mark_file_unreadable(self, file_id: int, reason: str) -> None:
        """A fetched file could not be read at all; it is offered again by the next run."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE files SET status = 'unreadable', error = ?, updated_at = ? WHERE id = ?",
                (reason, timestamp(), file_id),
            )

    def finish_file(self, file_id: int, action: str) -> None:
        """Every row of the file reached a final state and the source file was kept/archived/deleted."""
        self._guarded_update(
            "UPDATE files SET status = 'finished', finished_action = ?, finished_at = ?, "
            "updated_at = ? WHERE id = ? AND status = 'recorded'",
            (action, timestamp(), timestamp(), file_id),
        )

    def _guarded_update(self, sql: str, params: tuple[Any, ...]) -> None:
        """One UPDATE of ``files`` that, in a guarded scope (see
        :meth:`~pipeline.ledger.transitions.Transitions.guard_scope`), touches its file only while
        the scope's lock is held (in the statement itself); raises LockLostError when it is not."""
        with self._db.transaction() as db:
            held, lock = while_held(db, self._scope_guard)
            if not db.execute(sql + held, (*params, *lock)) and held:
                require_held(db, self._scope_guard)  # or the row was not there to change

    def finishable_files(self, scope: str) -> list[FileRecord]:
        """Recorded files whose every transaction is final with no failure (nor its primary's);
        none in a guarded scope whose lock is lost (the check is part of the query)."""
        held, lock = while_held(self._db, self._scope_guard, "f.scope")
        rows = self._db.query(
            f"""
            SELECT f.* FROM files f WHERE f.scope = ? AND f.status = 'recorded'
            AND NOT EXISTS (
                SELECT 1 FROM transactions t LEFT JOIN transactions p ON p.id = t.primary_id
                WHERE t.file_id = f.id AND (
                    t.state IN ('queued', 'sending', 'failed_retryable', 'failed_permanent')
                    OR (t.state = 'duplicate' AND p.state IN
                        ('queued', 'sending', 'failed_retryable', 'failed_permanent'))))
            {held}
            ORDER BY f.id
            """,
            (scope, *lock),
        )
        return [file_record(r) for r in rows]


    def quarantine_file(self, file_id: int, location: str | None) -> None:
        """An unreadable file is set aside: later runs skip it. ``location`` is where it was moved
        (None: left in place and only recorded)."""
        self._guarded_update(
            "UPDATE files SET status = 'quarantined', quarantined_to = ?, quarantined_at = ?, "
            "updated_at = ? WHERE id = ?",
            (location, timestamp(), timestamp(), file_id),
        )

    def quarantined_files(self, scope: str | None = None, *, feed: str | None = None,
                          name: str | None = None) -> list[FileRecord]:
        """Files in quarantine, optionally of one scope, feed or name."""
        sql, params = "SELECT * FROM files WHERE status = 'quarantined'", []
        for column, value in (("scope", scope), ("feed", feed), ("name", name)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [file_record(r) for r in self._db.query(sql + " ORDER BY id", params)]

    def release_file(self, file_id: int) -> None:
        """Take a file out of quarantine: the next run reads it again."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE files SET status = 'unreadable', quarantined_to = NULL, updated_at = ? "
                "WHERE id = ? AND status = 'quarantined'",
                (timestamp(), file_id),
            )

    def supersede_quarantined(self, scope: str, name: str, new_file_id: int) -> list[int]:
        """A new file under the name of quarantined ones replaces them; returns their ids."""
        with self._db.transaction() as db:
            rows = db.query(
                "SELECT id FROM files WHERE scope = ? AND name = ? AND status = 'quarantined' AND id != ?",
                (scope, name, new_file_id),
            )
            ids = [r[0] for r in rows]
            for file_id in ids:
                db.execute(
                    "UPDATE files SET status = 'superseded', superseded_by_file_id = ?, updated_at = ? "
                    "WHERE id = ?",
                    (new_file_id, timestamp(), file_id),
                )
        return ids

def _reread(db: Db, file_id: int) -> FileRecord:
    """A file's record as just written (inside the writing transaction)."""
    row = db.one("SELECT * FROM files WHERE id = ?", (file_id,))
    assert row is not None
    return file_record(row)
