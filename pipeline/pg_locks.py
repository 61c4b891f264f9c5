"""Run locks in a PostgreSQL ledger: one run per dedup scope at a time, across hosts.

The PostgreSQL counterpart of :mod:`pipeline.locks`, with the same interface. A lock is a
session-level advisory lock (``pg_try_advisory_lock``) on a stable 64-bit key derived from the
scope's name (:func:`lock_key`), taken on a connection of its own that stays open while the lock
is held. The server frees it when the lock is released, when that connection closes, or when the
server sees the session is gone: a killed holder's socket is closed by its kernel, so that is
at once; a host that vanishes without closing its connections is found by TCP keepalives, set on
each lock session (:data:`SESSION_SETTINGS`: first probe after 30 s idle, then every 10 s, gone
after 3 unanswered, about a minute), and ``idle_session_timeout`` is turned off for the session
so a server setting never drops a lock that is still wanted.

Who holds a lock is written to the table ``scope_lock_holders`` (pid, host, start time, feed and
the holding session's backend pid), so a refused run names the holder as the file lock does; a
row whose session is gone is a stale record, logged as taken over by the next holder. The row is
trusted only while its backend pid is the one holding the advisory lock; otherwise the holder is
described from ``pg_stat_activity``. The backend pid is the server's (``pg_backend_pid()``, read
with the lock), not the one the client saw at login, which a pooler makes up; a lock session whose
statements reach another server session (a pooler in transaction mode) cannot hold the lock,
which :meth:`PgRunLock.acquire` (ConfigError) and :meth:`PgRunLock.still_held` say when they
see it. A live holder makes :meth:`PgRunLock.acquire` raise
:class:`~pipeline.errors.LockHeldError` (exit 75); an unreachable server raises
:class:`~pipeline.errors.TransientError` (exit 75 too). Who holds which scope's lock now is read
from ``pg_locks`` without taking any (:func:`live_holders`, for ``posfeed runs``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pipeline.errors import ConfigError, LockHeldError, TransientError
from pipeline.ledger.location import masked_url
from pipeline.ledger.postgres import LOGIN_REFUSED, WAIT_ENDED, limit_waits, scrub_password
from pipeline.locks import LockInfo

__all__ = ["HOLDERS_TABLE", "SESSION_SETTINGS", "PgRunLock", "live_holders", "lock_key"]

log = logging.getLogger(__name__)

HOLDERS_TABLE = "scope_lock_holders"
KEY_NAMESPACE = b"posfeed scope lock\x00"  # keeps posfeed's keys apart from other advisory lock users
# server settings of each lock session: find a vanished client within about a minute, never time out
SESSION_SETTINGS = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "idle_session_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}
SCHEMA_LOCK_KEY = (0x706F7366, 1)  # ("posf", 1): held while the holders table is made
APPLICATION_NAME_MAX = 63  # longer names are cut by the server

_CREATE_HOLDERS = f"""
CREATE TABLE IF NOT EXISTS {HOLDERS_TABLE} (
    scope       TEXT PRIMARY KEY,
    backend_pid INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    feed        TEXT NOT NULL
)"""
# the advisory lock's row in pg_locks: a bigint key shows as classid (high 32 bits), objid (low 32)
_HOLDER_QUERY = f"""
SELECT l.pid, h.backend_pid, h.pid, h.host, h.started_at, h.feed,
       a.application_name, host(a.client_addr), a.backend_start
FROM pg_locks l
LEFT JOIN {HOLDERS_TABLE} h ON h.scope = %(scope)s
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = %(classid)s::bigint::oid AND l.objid = %(objid)s::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def lock_key(scope: str) -> int:
    """The advisory lock key of a scope: the first 8 bytes of a sha256 of its name, as a signed bigint."""
    digest = hashlib.sha256(KEY_NAMESPACE + scope.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _key_parts(key: int) -> dict[str, int]:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return {"classid": unsigned >> 32, "objid": unsigned & 0xFFFF_FFFF}


# every advisory lock of this database held now, with the holder record of its session if any
_HELD_QUERY = f"""
SELECT l.classid::bigint, l.objid::bigint, h.scope, h.pid, h.host, h.started_at, h.feed
FROM pg_locks l
LEFT JOIN {HOLDERS_TABLE} h ON h.backend_pid = l.pid AND h.scope = ANY(%(scopes)s)
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _connect(url: str, feed: str, *, purpose: str = "lock") -> psycopg.Connection[Any]:
    # after the options libpq would use without ours (the URL's, else PGOPTIONS: an explicit options
    # parameter replaces PGOPTIONS), so a lock_timeout there holds here too; these override them
    given = conninfo_to_dict(url).get("options") or os.environ.get("PGOPTIONS", "")
    ours = (f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())
    options = " ".join([str(given), *ours]).strip()
    connection: psycopg.Connection[Any] | None = None
    try:
        connection = psycopg.connect(url, autocommit=True, options=options,
                                     application_name=f"posfeed {purpose}: {feed}"[:APPLICATION_NAME_MAX],
                                     connect_timeout=30,
                                     # the same probing from the client's side, for a vanished server
                                     keepalives=1, keepalives_idle=30, keepalives_interval=10,
                                     keepalives_count=3)
        limit_waits(connection)  # making the holders table or writing its row never waits forever
        return connection
    except psycopg.OperationalError as exc:
        if connection is not None:
            connection.close()
        text = f"({masked_url(url)}): {scrub_password(str(exc), url)}"
        if any(words in str(exc) for words in LOGIN_REFUSED):
            raise ConfigError(f"the ledger's PostgreSQL server refused the login for the run lock {text}; "
                              "check the ledger's user and password (in the URL, PGPASSWORD or ~/.pgpass)"
                              ) from None
        if "unsupported startup parameter" in str(exc):  # PgBouncer's words
            raise ConfigError(f"a pooler between posfeed and the ledger's PostgreSQL server refused the "
                              f"run lock's session settings {text}; let it pass them on or drop them "
                              "(PgBouncer: ignore_startup_parameters = options) and pool in session mode"
                              ) from None
        raise TransientError(
            f"the ledger's PostgreSQL server could not be reached for the run lock {text}") from None


def _ensure_holders_table(conn: psycopg.Connection[Any]) -> None:
    # one session at a time: two concurrent CREATE TABLE IF NOT EXISTS can both try to create it. The
    # two-int4 key form is a key space apart from the scopes' bigint keys, so no scope can clash.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", SCHEMA_LOCK_KEY)
        conn.execute(_CREATE_HOLDERS)


def _moved(holder: int, now: int | None) -> str:
    """Why a lock session whose statements reach another server session cannot hold a lock."""
    return (f"the lock session's statements reached server session {now} after session {holder} took "
            "the lock: the ledger URL goes through a pooler in transaction mode (PgBouncer's pool_mode "
            "= transaction), which cannot keep a session advisory lock; connect to the server directly "
            "or through a pooler in session mode")


def _describe_holder(conn: psycopg.Connection[Any], scope: str, key: int) -> str:
    row = conn.execute(_HOLDER_QUERY, {"scope": scope, **_key_parts(key)}).fetchone()
    if row is None:
        return "another process"  # released between our attempt and this look
    (holder_backend, row_backend, pid, host, started_at, feed, application_name, client_addr,
     backend_start) = row
    if row_backend == holder_backend and pid is not None:
        return LockInfo(pid, host, started_at, feed).describe()
    where = client_addr or "a local socket"
    since = backend_start.isoformat() if backend_start else "an unknown time"
    return f"session {holder_backend} ({application_name or 'no name'}) from {where} since {since}"


class PgRunLock:
    """An acquired run lock; release it with :meth:`release` (or let the process end)."""

    def __init__(self, conn: psycopg.Connection[Any], scope: str, info: LockInfo,
                 taken_over: LockInfo | None, backend_pid: int):
        self._conn: psycopg.Connection[Any] | None = conn
        self.scope = scope
        self.key = lock_key(scope)
        self.backend_pid = backend_pid  # the holding session, which the ledger checks before each send
        self.info = info
        self.taken_over = taken_over  # the stale holder whose lock was taken over, if any

    def still_held(self) -> bool:
        """Whether the lock's session is alive and holds the lock (a lost connection loses it).
        A statement answered by another server session than the one that took the lock (a pooler
        in transaction mode) is logged as such: the lock is not this run's to hold then."""
        if self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT pg_backend_pid(), count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                "AND locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid = %(classid)s::bigint::oid AND objid = %(objid)s::bigint::oid",
                _key_parts(self.key)).fetchone()
        except psycopg.Error:
            return False
        if row is not None and row[0] != self.backend_pid:
            log.error("the run lock of scope %r: %s", self.scope, _moved(self.backend_pid, row[0]))
            return False
        return row is not None and row[1] == 1

    def release(self) -> None:
        """Clear the holder record, drop the lock and close its session."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(f"DELETE FROM {HOLDERS_TABLE} WHERE scope = %s AND backend_pid = pg_backend_pid()",
                         (self.scope,))
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error as exc:  # the session is gone, and the lock with it
            log.warning("releasing the lock of scope %r: %s", self.scope, exc)
        finally:
            conn.close()

    @classmethod
    def acquire(cls, url: str, scope: str, *, feed: str) -> PgRunLock:
        """Take the scope's lock without waiting; raise LockHeldError when a live run holds it,
        TransientError when the server cannot be reached or its holders table cannot be written
        within the session's wait limits."""
        conn = _connect(url, feed)
        try:
            return cls._acquire(conn, scope, feed)
        except psycopg.Error as exc:
            ended = WAIT_ENDED.get(exc.sqlstate or "")
            raise TransientError(
                f"the run lock of scope {scope!r} could not be taken in the ledger's PostgreSQL database "
                f"{masked_url(url)}: {ended or 'the server failed'} ({scrub_password(str(exc), url)})"
            ) from None

    @classmethod
    def _acquire(cls, conn: psycopg.Connection[Any], scope: str, feed: str) -> PgRunLock:
        try:
            _ensure_holders_table(conn)
            key = lock_key(scope)
            # the server session that holds it (a pooler gives the connection a process id of its own)
            got = conn.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,)).fetchone()
            if not (got and got[0]):
                raise LockHeldError(scope, _describe_holder(conn, scope, key))
            backend_pid = int(got[1])
            stale = conn.execute(
                f"SELECT pid, host, started_at, feed FROM {HOLDERS_TABLE} WHERE scope = %s", (scope,)
            ).fetchone()
            previous = LockInfo(*stale) if stale else None
            if previous is not None:
                log.warning(
                    "taking over the lock of scope %r left by a run that ended without releasing it: %s",
                    scope,
                    previous.describe(),
                )
            info = LockInfo(os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat(), feed)
            written = conn.execute(
                f"INSERT INTO {HOLDERS_TABLE} (scope, backend_pid, pid, host, started_at, feed) "
                "VALUES (%s, pg_backend_pid(), %s, %s, %s, %s) ON CONFLICT (scope) DO UPDATE SET "
                "backend_pid = excluded.backend_pid, pid = excluded.pid, host = excluded.host, "
                "started_at = excluded.started_at, feed = excluded.feed RETURNING backend_pid",
                (scope, info.pid, info.host, info.started_at, info.feed),
            ).fetchone()
            if written is None or written[0] != backend_pid:
                raise ConfigError(f"the run lock of scope {scope!r}: "
                                  f"{_moved(backend_pid, written[0] if written else None)}")
        except BaseException:
            conn.close()
            raise
        return cls(conn, scope, info, previous, backend_pid)


def live_holders(url: str, scopes: Iterable[str]) -> dict[str, LockInfo]:
    """The holder of each of ``scopes`` whose lock is held now (by the session its holder record
    names), read from ``pg_locks`` on a short session of its own, without taking any lock; a
    scope held by a session with no record of its own (one that has just taken it) is left out.
    An unreachable server raises :class:`~pipeline.errors.TransientError`."""
    wanted = {scope: _key_parts(lock_key(scope)) for scope in dict.fromkeys(scopes)}
    if not wanted:
        return {}
    conn = _connect(url, "runs", purpose="look")
    try:
        if conn.execute("SELECT to_regclass(%s)", (HOLDERS_TABLE,)).fetchone() == (None,):
            return {}  # no run ever took a lock here
        rows = conn.execute(_HELD_QUERY, {"scopes": list(wanted)}).fetchall()
    except psycopg.Error as exc:
        raise TransientError(f"the run locks in the ledger's PostgreSQL database {masked_url(url)} could not "
                             f"be read: {scrub_password(str(exc), url)}") from None
    finally:
        conn.close()
    held: dict[str, LockInfo] = {}
    for classid, objid, scope, pid, host, started_at, feed in rows:
        if scope is not None and wanted.get(scope) == {"classid": classid, "objid": objid}:
            held[scope] = LockInfo(pid, host, started_at, feed)
    return held
