"""Which kind of run lock a ledger needs: files in the state folder, or PostgreSQL advisory locks.

A ledger in the state folder (SQLite, no URL) is used by one host, so its scope locks are files
there (:mod:`pipeline.locks`); a ledger on a PostgreSQL server (a ``postgresql://`` URL) may be
shared by several hosts, so its scope locks live in that server (:mod:`pipeline.pg_locks`). Both
give the same lock: ``info``, ``taken_over``, ``release()``, and ``LockHeldError`` when held.

A file lock lasts as long as the process, unless its file is removed or replaced (the next run
then locks a new file): :meth:`~pipeline.locks.RunLock.still_held` says so, checked by
:class:`LockWatch` and before every in-doubt mark
(:meth:`~pipeline.ledger.transitions.Transitions.guard_lock_file`). An advisory lock lasts as long
as its PostgreSQL session, which a restarted server or a cut connection ends while the run goes
on; another host may then take the scope. The ledger checks such a lock before every request it
marks in doubt (:meth:`~pipeline.ledger.transitions.Transitions.guard_scope`), so a run that lost
it sends nothing more, and in each write a run makes once it has sent (files finished, problems
and their alerts, its end), so a loss after the last request writes nothing over the next holder
either; :class:`LockWatch` also checks it on a thread of its own and :class:`RunStop` turns its
loss into the run's stop. Either ends the run with :class:`~pipeline.errors.LockLostError` (exit
75).

:func:`runs_alive` tells, for ``posfeed runs``, whether runs the ledger records as running still
hold their scope's lock, without taking it (taking it even briefly could refuse a run starting then).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pipeline.errors import ConfigError, TransientError
from pipeline.ledger.records import RunRecord
from pipeline.locks import LockInfo, RunLock, run_holds_lock

__all__ = ["LOCK_CHECK_SECONDS", "POSTGRES_SCHEMES", "AcquireLock", "LockWatch", "RunStop", "ScopeLock",
           "lock_kind", "runs_alive"]

log = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql", "postgres")  # the two spellings libpq accepts
LOCK_CHECK_SECONDS = 2.0  # how often a lock that can be lost is checked while a run holds it


class ScopeLock(Protocol):
    """A held run lock of either kind."""

    info: LockInfo
    taken_over: LockInfo | None

    def release(self) -> None: ...


class AcquireLock(Protocol):
    """Takes a scope's lock without waiting (``LockHeldError`` when a live run holds it)."""

    def __call__(self, scope: str, *, feed: str) -> ScopeLock: ...


def lock_kind(ledger_url: str | None, state_dir: Path) -> AcquireLock:
    """The lock taker for a ledger: file locks in ``state_dir`` without a URL, advisory locks with one."""
    if not ledger_url:
        def acquire_file_lock(scope: str, *, feed: str) -> ScopeLock:
            return RunLock.acquire(state_dir, scope, feed=feed)

        return acquire_file_lock
    scheme = urlsplit(ledger_url).scheme.lower()
    if scheme not in POSTGRES_SCHEMES:
        raise ConfigError(
            f"ledger URL scheme {scheme or '(none)'!r} is not supported: use postgresql://host/database "
            "or no URL for the ledger in the state folder"
        )
    try:
        from pipeline.pg_locks import PgRunLock
    except ImportError as exc:
        raise ConfigError(
            f"a PostgreSQL ledger needs the driver psycopg ({exc}): pip install 'posfeed[postgres]'"
        ) from exc

    def acquire_pg_lock(scope: str, *, feed: str) -> ScopeLock:
        return PgRunLock.acquire(ledger_url, scope, feed=feed)

    return acquire_pg_lock


def runs_alive(ledger_url: str | None, state_dir: Path, runs: Sequence[RunRecord]) -> dict[str, bool | None]:
    """For each run (one the ledger records as running), by id: whether its process still holds
    its scope's lock, seen without taking it. False: it died (the next run of its scope marks it
    crashed); None: it cannot be told from here (a file lock of another host, a run with no
    recorded process, a PostgreSQL server that cannot be reached for it)."""
    if not ledger_url:
        return {run.id: None if run.pid is None or run.host is None
                else run_holds_lock(state_dir, run.scope, pid=run.pid, host=run.host) for run in runs}
    if not runs:
        return {}
    lock_kind(ledger_url, state_dir)  # the URL's scheme and the driver, checked as for a run
    from pipeline.pg_locks import live_holders

    try:
        held = live_holders(ledger_url, [run.scope for run in runs])
    except TransientError as exc:  # the history is still worth showing
        log.warning("whether the running runs are alive cannot be told: %s", exc)
        return {run.id: None for run in runs}
    alive: dict[str, bool | None] = {}
    for run in runs:
        holder = held.get(run.scope)
        alive[run.id] = None if run.pid is None else (
            holder is not None and (holder.pid, holder.host) == (run.pid, run.host))
    return alive


class LockWatch:
    """Checks every ``interval`` seconds, on a thread of its own, that ``lock`` is still held, if
    it is a lock that can be lost (one with ``still_held()``); ``lost`` is set when it is not.
    :meth:`close` it before releasing the lock."""

    def __init__(self, lock: ScopeLock, *, scope: str, interval: float = LOCK_CHECK_SECONDS):
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        still_held: Callable[[], bool] | None = getattr(lock, "still_held", None)
        if still_held is not None:
            self._thread = threading.Thread(target=self._watch, args=(still_held, scope, interval),
                                            name=f"lock watch {scope}", daemon=True)
            self._thread.start()

    def _watch(self, still_held: Callable[[], bool], scope: str, interval: float) -> None:
        while not self._done.wait(interval):
            if not still_held():
                log.error("the run lock of scope %r is lost: stopping before anything more is sent", scope)
                self.lost.set()
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class RunStop(threading.Event):
    """The stop flag a run's stages consult with ``is_set()``: set when the caller's ``stop`` is
    (a signal, the scheduler) or when the run's lock is ``lost``."""

    def __init__(self, stop: threading.Event | None, lost: threading.Event):
        super().__init__()
        self._stop, self._lost = stop, lost

    def is_set(self) -> bool:
        return self._lost.is_set() or (self._stop is not None and self._stop.is_set())

    def lock_lost(self) -> bool:
        """Whether the stop is the lock's loss."""
        return self._lost.is_set()
