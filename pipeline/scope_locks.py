"""Which kind of run lock a ledger needs: files in the state folder, or PostgreSQL advisory locks.

A ledger in the state folder (SQLite, no URL) is used by one host, so its scope locks are files
there (:mod:`pipeline.locks`); a ledger on a PostgreSQL server (a ``postgresql://`` URL) may be
shared by several hosts, so its scope locks live in that server (:mod:`pipeline.pg_locks`). Both
give the same lock: ``info``, ``taken_over``, ``release()``, and ``LockHeldError`` when held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pipeline.errors import ConfigError
from pipeline.locks import LockInfo, RunLock

__all__ = ["POSTGRES_SCHEMES", "AcquireLock", "ScopeLock", "lock_kind"]

POSTGRES_SCHEMES = ("postgresql", "postgres")  # the two spellings libpq accepts


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
