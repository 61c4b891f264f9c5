"""A PostgreSQL ledger behind a real PgBouncer (tests/pgbouncer.py): in session pooling mode a run
holds its scope lock and sends everything; in transaction pooling mode the lock session's
statements move between server sessions, which the lock sees and names.

Shown to fail: the lock recorded the connection's process id as the client saw it at login, which
a pooler makes up, so through PgBouncer in session mode every in-doubt mark found the lock "lost"
and the run sent nothing; a lock session moved by a transaction pooler was reported lost without
a word of why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.errors import ConfigError, LockHeldError
from pipeline.pg_locks import PgRunLock
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer
from tests.pgbouncer import pgbouncer


def test_a_run_through_a_session_pooler_holds_its_lock_and_sends_everything(
        postgres_cluster: Any, postgres_db: str, tmp_path: Path) -> None:
    """Through PgBouncer with pool_mode = session, the run's lock is the server session's: the
    run sends every checkout once and exits as a direct connection would; a lock whose client
    connection closes without releasing it is freed by the pooler's reset of the server session."""
    from tests.runner_helpers import copy_samples, credentials, delivered_ids, sample_feed, settings_in

    drop = tmp_path / "drop"
    copy_samples(drop, ["pos_BER01_20261120_09.csv", "pos_BER01_20261120_10.csv"])
    with pgbouncer(postgres_cluster, postgres_db, pool_mode="session") as url:
        settings = replace(settings_in(tmp_path), ledger_url=url)
        with SandboxServer() as sandbox, credentials(sandbox):
            summary = run_feed(sample_feed("acme_hourly", sandbox, folder=drop), settings,
                               business_dates=[date(2026, 11, 20)]).summary
            ids = delivered_ids(sandbox)
        # a holder whose connection closes without letting go (killed): the pooler's reset frees it
        killed = PgRunLock.acquire(url, "acme", feed="acme_hourly")
        assert killed._conn is not None
        killed._conn.close()
        for _ in range(600):  # the pooler resets the server session in its own time
            try:
                PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly").release()
                break
            except LockHeldError:
                time.sleep(0.05)
        else:
            raise AssertionError("the lock of a closed connection stayed held behind the pooler")
    assert summary["balanced"] is True and summary["accepted"] > 0 and summary["in_doubt"] == 0
    assert len(ids) == len(set(ids)) == summary["accepted"]


def test_a_lock_session_moved_by_a_transaction_pooler_is_lost_and_says_why(
        postgres_cluster: Any, postgres_db: str, caplog: pytest.LogCaptureFixture) -> None:
    """Through PgBouncer with pool_mode = transaction, another client's transaction takes the
    server session that holds the lock; the lock session's next statement reaches another one:
    the lock is not held (the run stops, exit 75) and the log names the pooler and what to do."""
    with pgbouncer(postgres_cluster, postgres_db, pool_mode="transaction") as url:
        lock = PgRunLock.acquire(url, "acme", feed="acme_hourly")
        try:
            assert lock.still_held()
            with psycopg.connect(url) as other, other.transaction():
                row = other.execute("SELECT pg_backend_pid()").fetchone()
                assert row == (lock.backend_pid,)  # the server session that holds the lock
                with caplog.at_level(logging.ERROR, logger="pipeline.pg_locks"):
                    assert not lock.still_held()
        finally:
            lock.release()
    assert "pooler in transaction mode" in caplog.text and "session mode" in caplog.text


def test_a_pooler_that_refuses_the_lock_sessions_settings_is_a_configuration_error(
        postgres_cluster: Any, postgres_db: str) -> None:
    """PgBouncer refuses the `options` startup parameter the lock session sends its settings in,
    unless told to drop it: exit 78 saying which setting to change, not "could not be reached"."""
    refusing = pgbouncer(postgres_cluster, postgres_db, pool_mode="session", ignore_startup_parameters="")
    with refusing as url, pytest.raises(ConfigError) as caught:
        PgRunLock.acquire(url, "acme", feed="acme_hourly")
    assert caught.value.exit_code == 78 and "ignore_startup_parameters = options" in str(caught.value)
