"""Run locks: one run per dedup scope at a time, across processes (cron, the scheduler, a shell).

A lock is an ``flock`` on ``STATE_DIR/locks/<scope>.lock``; the file also holds a JSON record of
the holder (pid, host, start time, feed). The kernel drops an ``flock`` when its process dies, so a
lock left by a crashed (even SIGKILLed) process is free again: the next run sees the stale record,
logs that it takes the lock over, and writes its own. A live holder makes :func:`acquire` raise
:class:`~pipeline.errors.LockHeldError` (exit 75).

The lock is the file the path names: a file removed (an operator cleaning ``locks/``) or replaced
while locked leaves its holder locking a file no run will open again, and lets the next run lock a
new one. So :meth:`RunLock.acquire` keeps a lock only when the path still names the file it
locked (else it tries again), and :meth:`RunLock.still_held` tells the holder when it no longer
does: its lock watch, and the in-doubt mark before every request, stop the run (exit 75) as a
lost PostgreSQL lock does.

Whether a run still holds its lock is told without taking it (:func:`run_holds_lock`, for
``posfeed runs``): an ``flock`` has no test that leaves it alone, so the kernel's lock table
(``/proc/locks``) is read; where there is none, the holder record must name the run and its process
must be alive.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import LockHeldError, state_io_error

__all__ = ["PROC_LOCKS", "LockInfo", "RunLock", "flock_holders", "lock_path", "run_holds_lock", "run_lock"]

log = logging.getLogger(__name__)

PROC_LOCKS = Path("/proc/locks")  # the kernel's table of held file locks (Linux)


def lock_path(state_dir: Path, scope: str) -> Path:
    """The lock file of a scope (its name made safe for a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", scope)
    return state_dir / "locks" / f"{safe}.lock"


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or last held) a lock."""

    pid: int
    host: str
    started_at: str
    feed: str

    def describe(self) -> str:
        """``pid 123 on host h since 2026-…`` for messages."""
        return f"pid {self.pid} on {self.host} since {self.started_at} (feed {self.feed})"


def _read_info(text: str) -> LockInfo | None:
    try:
        data: dict[str, Any] = json.loads(text)
        return LockInfo(int(data["pid"]), str(data["host"]), str(data["started_at"]), str(data["feed"]))
    except (ValueError, KeyError, TypeError):
        return None


class RunLock:
    """An acquired run lock; release it with :meth:`release` (or let the process end)."""

    def __init__(self, path: Path, fd: int, info: LockInfo, taken_over: LockInfo | None):
        self.path = path
        self._fd: int | None = fd
        self.info = info
        self.taken_over = taken_over  # the stale holder whose lock was taken over, if any

    def still_held(self) -> bool:
        """Whether the lock file is still the one this lock holds (not removed nor replaced)."""
        if self._fd is None:
            return False
        return _same_file(self._fd, self.path)

    def release(self) -> None:
        """Clear the holder record and drop the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @classmethod
    def acquire(cls, state_dir: Path, scope: str, *, feed: str) -> RunLock:
        """Take the scope's lock without waiting; raise LockHeldError when a live run holds it."""
        path = lock_path(state_dir, scope)
        fd = _lock_file(path, scope)
        try:
            previous = _read_info(os.pread(fd, 65536, 0).decode("utf-8", errors="replace"))
            info = LockInfo(os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat(), feed)
            record = json.dumps(info.__dict__).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            os.fsync(fd)
        except OSError as exc:
            # the holder cannot be written (a full disk): give the lock back, or this process's
            # next run of the scope (a daemon's) finds it held by "another process" for good
            os.close(fd)
            raise state_io_error(exc, path) from exc
        if previous is not None:
            log.warning(
                "taking over the lock of scope %r left by a run that ended without releasing it: %s",
                scope,
                previous.describe(),
            )
        return cls(path, fd, info, previous)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _lock_file(path: Path, scope: str) -> int:
    """Open ``path`` and ``flock`` it without waiting; the open file once the path still names it
    (a file removed or replaced between the open and the lock is let go, and the path tried again).
    Raises LockHeldError when a live run holds it."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = _read_info(path.read_text(encoding="utf-8", errors="replace"))
            except FileNotFoundError:  # removed since: try again
                continue
            raise LockHeldError(scope, holder.describe() if holder else "another process") from None
        if _same_file(fd, path):
            return fd
        log.info("lock file %s was removed or replaced while it was being taken; taking it again", path)
        os.close(fd)


@contextmanager
def run_lock(state_dir: Path, scope: str, *, feed: str) -> Iterator[RunLock]:
    """Hold the scope's run lock for the duration of the block."""
    lock = RunLock.acquire(state_dir, scope, feed=feed)
    try:
        yield lock
    finally:
        lock.release()


def flock_holders(path: Path, proc_locks: Path = PROC_LOCKS) -> set[int] | None:
    """The pids holding an ``flock`` on ``path`` now, read from the kernel's lock table without
    taking the lock; None where there is no such table. Matched on the inode number alone: some
    file systems (btrfs subvolumes) show another device there than ``stat`` does."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return set()
    try:
        table = proc_locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    pids = set()
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2209155 0 EOF" (a waiter's line has "->" second)
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            try:
                pids.add(int(fields[4]))
            except ValueError:
                continue
    return pids


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill would signal a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def run_holds_lock(state_dir: Path, scope: str, *, pid: int, host: str,
                   proc_locks: Path = PROC_LOCKS) -> bool | None:
    """Whether the run of process ``pid`` on ``host`` holds the scope's lock now, seen without
    taking it; None when that cannot be told from here (a run of another host)."""
    if host != socket.gethostname():
        return None
    path = lock_path(state_dir, scope)
    holders = flock_holders(path, proc_locks)
    if holders is not None:
        return pid in holders
    # no lock table: the holder record (emptied at release) names the run, and its process lives
    try:
        record = _read_info(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return False
    return record is not None and (record.pid, record.host) == (pid, host) and _pid_alive(pid)
