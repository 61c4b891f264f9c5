"""Run locks in a PostgreSQL ledger (pipeline/pg_locks.py), with real processes on a real server.

Shown to fail: with ``pg_advisory_lock`` taken on a connection that is closed at once (the lock
not held) the contention tests fail; with a key from ``hash(scope)`` (different in each process)
the contention test fails; with the ``DELETE`` left out of ``release`` the release test fails;
with one fixed key for every scope the different-scopes test fails.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pipeline.errors import ConfigError, LockHeldError
from pipeline.locks import RunLock, lock_path
from pipeline.pg_locks import HOLDERS_TABLE, PgRunLock, lock_key
from pipeline.scope_locks import lock_kind

# a process that takes a scope's lock through lock_kind, says so, and holds it until stdin closes
HOLDER = """
import sys
from pathlib import Path
from pipeline.scope_locks import lock_kind
lock = lock_kind(sys.argv[1] or None, Path(sys.argv[2]))(sys.argv[3], feed=sys.argv[4])
print("held", flush=True)
sys.stdin.read()
lock.release()
"""
# a process that tries to take a scope's lock: exit 75 with the error when refused, 0 when taken
CONTENDER = """
import sys
from pathlib import Path
from pipeline.errors import LockHeldError
from pipeline.scope_locks import lock_kind
try:
    lock_kind(sys.argv[1] or None, Path(sys.argv[2]))(sys.argv[3], feed=sys.argv[4]).release()
except LockHeldError as exc:
    print(exc, flush=True)
    sys.exit(exc.exit_code)
print("taken", flush=True)
"""
HOLDER_SHAPE = r"scope 'acme' is being run by pid (\d+) on \S+ since \S+ \(feed acme_hourly\)"


class Holder:
    """A process holding a scope's lock."""

    def __init__(self, url: str, state_dir: Path, scope: str, feed: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, str(state_dir), scope, feed],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "held\n", line + (self.proc.stderr.read() if self.proc.stderr else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


def contend(url: str, state_dir: Path, scope: str = "acme",
            feed: str = "acme_daily") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CONTENDER, url, str(state_dir), scope, feed],
                          capture_output=True, text=True, timeout=120, check=False)


def wait_for_session_end(url: str, backend_pid: int) -> None:
    """Poll until the server has ended a session (it notices a dead client on its own)."""
    deadline = time.monotonic() + 120
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                           (backend_pid,)).fetchone() != (0,):
            assert time.monotonic() < deadline, f"session {backend_pid} is still there"
            time.sleep(0.05)


@pytest.mark.parametrize("kind", ["file", "postgres"])
def test_a_second_process_is_refused_naming_the_holder_for_both_kinds(
    kind: str, postgres_db: str, tmp_path: Path, holders: list[Holder]
) -> None:
    url = postgres_db if kind == "postgres" else ""
    holder = Holder(url, tmp_path, "acme", "acme_hourly")
    holders.append(holder)
    refused = contend(url, tmp_path)
    assert refused.returncode == 75, refused.stderr
    match = re.fullmatch(HOLDER_SHAPE, refused.stdout.strip())
    assert match, refused.stdout
    assert int(match.group(1)) == holder.proc.pid
    assert (tmp_path / "locks").exists() is (kind == "file")  # the PostgreSQL kind leaves no file


def test_a_sigkilled_holder_frees_the_lock_for_the_next_run(
    postgres_db: str, tmp_path: Path, holders: list[Holder], caplog: pytest.LogCaptureFixture
) -> None:
    holder = Holder(postgres_db, tmp_path, "acme", "acme_hourly")
    holders.append(holder)
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        row = conn.execute(f"SELECT backend_pid, pid FROM {HOLDERS_TABLE} WHERE scope = 'acme'").fetchone()
    assert row is not None and row[1] == holder.proc.pid
    assert contend(postgres_db, tmp_path).returncode == 75

    holder.proc.send_signal(signal.SIGKILL)
    assert holder.proc.wait(timeout=60) == -signal.SIGKILL
    wait_for_session_end(postgres_db, row[0])

    with caplog.at_level(logging.WARNING, logger="pipeline.pg_locks"):
        lock = PgRunLock.acquire(postgres_db, "acme", feed="acme_daily")
    try:
        assert lock.taken_over is not None and lock.taken_over.pid == holder.proc.pid
        assert "taking over the lock of scope 'acme'" in caplog.text
        assert lock.still_held()
        assert contend(postgres_db, tmp_path).returncode == 75  # and it is ours now
    finally:
        lock.release()


def test_different_scopes_do_not_block_each_other(postgres_db: str, tmp_path: Path,
                                                  holders: list[Holder]) -> None:
    holders.append(Holder(postgres_db, tmp_path, "acme", "acme_hourly"))
    other = contend(postgres_db, tmp_path, scope="zeta", feed="zeta_daily")
    assert other.returncode == 0 and other.stdout == "taken\n", other.stdout + other.stderr
    assert contend(postgres_db, tmp_path).returncode == 75


def test_release_frees_the_lock_and_clears_the_holder_record(postgres_db: str, tmp_path: Path) -> None:
    lock = PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly")
    assert contend(postgres_db, tmp_path).returncode == 75
    lock.release()
    assert not lock.still_held()
    lock.release()  # twice is harmless
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute(f"SELECT count(*) FROM {HOLDERS_TABLE}").fetchone() == (0,)
    again = PgRunLock.acquire(postgres_db, "acme", feed="acme_daily")
    try:
        assert again.taken_over is None  # a released lock is not a stale one
    finally:
        again.release()


def test_a_lost_session_is_a_lost_lock(postgres_db: str, postgres_url: str) -> None:
    lock = PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly")
    try:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'posfeed lock: acme_hourly'")
        assert not lock.still_held()
        PgRunLock.acquire(postgres_db, "acme", feed="acme_daily").release()
    finally:
        lock.release()


def test_a_holder_without_a_record_is_described_from_its_session(postgres_db: str) -> None:
    with psycopg.connect(postgres_db, autocommit=True, application_name="manual") as other:
        other.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("acme"),))
        (backend,) = other.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        with pytest.raises(LockHeldError) as refused:
            PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly")
    assert str(refused.value).startswith(
        f"scope 'acme' is being run by session {backend} (manual) from 127.0.0.1 since ")


def test_scope_keys_are_stable_signed_64_bit_and_distinct() -> None:
    assert lock_key("acme") == lock_key("acme")
    assert lock_key("acme") != lock_key("acme ") != lock_key("zeta")
    assert all(-(2**63) <= lock_key(scope) < 2**63 for scope in ("acme", "zeta", ".scheduler", "é"))
    # the same in another process (no per-process hash seed)
    script = "from pipeline.pg_locks import lock_key; print(lock_key('acme'))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                           check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(other.stdout) == lock_key("acme")


def test_no_ledger_url_means_file_locks_in_the_state_folder(tmp_path: Path) -> None:
    lock = lock_kind(None, tmp_path)("acme", feed="acme_hourly")
    try:
        assert isinstance(lock, RunLock)
        assert '"feed": "acme_hourly"' in lock_path(tmp_path, "acme").read_text(encoding="utf-8")
    finally:
        lock.release()
    assert isinstance(lock_kind("", tmp_path)("acme", feed="acme_hourly"), RunLock)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgresql_url_means_advisory_locks_in_that_server(scheme: str, postgres_db: str,
                                                               tmp_path: Path) -> None:
    url = postgres_db.replace("postgresql://", f"{scheme}://", 1)
    lock = lock_kind(url, tmp_path)("acme", feed="acme_hourly")
    try:
        assert isinstance(lock, PgRunLock) and lock.still_held()
        assert not (tmp_path / "locks").exists()
    finally:
        lock.release()


def test_another_ledger_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'mysql' is not supported") as refused:
        lock_kind("mysql://acme:s3cr3t-pw@db.example/ledger", tmp_path)
    assert "s3cr3t" not in str(refused.value)
    with pytest.raises(ConfigError, match="'sqlite' is not supported"):
        lock_kind("sqlite:///var/lib/posfeed/ledger.sqlite", tmp_path)
