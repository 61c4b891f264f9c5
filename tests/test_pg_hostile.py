"""A PostgreSQL ledger in a hostile place: statements that would wait forever, a newer schema, a
password that must never show, a lock session that dies while the run sends. Real server
(tests/pg_cluster.py), real processes where the CLI is what is judged.

Shown to fail: without the sessions' wait limits (``limit_waits``), the blocked ``posfeed runs``
and the blocked run waited until the test's timeout; without the scope lock checked in the in-doubt
mark (``guard_scope``), a run whose lock session was ended sent on until the lock watch's next look;
before a run that lost its lock wrote only its own end, it opened the scope's problems, wrote
`failed` over the `crashed` its next holder had recorded and settled its unsent checkouts `stopped`;
before every write after sending checked the lock too, a run that lost it after its last request
(between two looks of the lock watch) finished files, brought the scope's problems up to date,
posted its alerts and wrote `finished` over its next holder's run; before each alert was claimed
under the lock just before its post, a run that lost its lock while posting posted every alert it
had listed, and the next holder posted each again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.config import Feed
from pipeline.errors import EXIT_INTERNAL, LockLostError, TransientError
from pipeline.ledger import Ledger
from pipeline.ledger.errors import LedgerUnavailableError
from pipeline.ledger.location import masked_url
from pipeline.ledger.postgres import WAIT_LIMITS, WRITE_LOCK
from pipeline.pg_locks import PgRunLock
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer

PASSWORD = "pw-Never-Shown-9c1e"  # the test cluster trusts loopback logins: libpq never sends it


def _with(url: str, *, password: bool = True, options: str | None = None) -> str:
    if password:
        url = url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)
    if options:
        url += "?options=" + options.replace(" ", "%20").replace("=", "%3D")
    return url


def _posfeed(tmp: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), *args],
                          env={**os.environ, **env}, capture_output=True, text=True, cwd=tmp, timeout=240,
                          check=False)
    return done.returncode, done.stdout, done.stderr


@contextmanager
def _holding(url: str, *statements: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session inside a transaction that has run ``statements`` (and holds their locks)."""
    with psycopg.connect(url) as other:
        for statement in statements:
            other.execute(statement)
        yield other
        other.rollback()


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_ledger_and_lock_sessions_bound_their_waits_unless_configured(postgres_db: str) -> None:
    with Ledger(postgres_db) as ledger:
        for name, value in WAIT_LIMITS.items():
            assert tuple(ledger._db.one(f"SHOW {name}") or ()) == (value,)
    lock = PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly")
    try:
        assert lock._conn is not None
        for name, value in WAIT_LIMITS.items():
            assert _setting(lock._conn, name) == value
    finally:
        lock.release()
    # a limit set where PostgreSQL settings are set (here the URL's options) is kept as it is
    configured = _with(postgres_db, password=False, options="-c lock_timeout=7s -c statement_timeout=0")
    with Ledger(configured) as ledger:
        assert tuple(ledger._db.one("SHOW lock_timeout") or ()) == ("7s",)
        assert tuple(ledger._db.one("SHOW statement_timeout") or ()) == ("0",)


@pytest.mark.parametrize("where", ["PGOPTIONS", "ALTER ROLE"])
def test_wait_limits_set_in_postgresqls_other_ways_win_in_ledger_and_lock_sessions(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """OPERATIONS.md: a limit set in `PGOPTIONS` or by `ALTER ROLE ... SET` wins over posfeed's own,
    in the ledger's session and in the run lock's."""
    role = ""
    if where == "PGOPTIONS":
        monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=7s -c statement_timeout=0")
    else:
        role = f"posfeed_limits_{os.getpid()}"
        with psycopg.connect(postgres_db, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
            admin.execute(f"ALTER ROLE {role} SET lock_timeout = '7s'")
            admin.execute(f"ALTER ROLE {role} SET statement_timeout = 0")
    url = postgres_db.replace("postgresql://postgres@", f"postgresql://{role}@", 1) if role else postgres_db
    try:
        with Ledger(url) as ledger:
            assert tuple(ledger._db.one("SHOW lock_timeout") or ()) == ("7s",)
            assert tuple(ledger._db.one("SHOW statement_timeout") or ()) == ("0",)
        lock = PgRunLock.acquire(url, "acme", feed="acme_hourly")
        try:
            assert lock._conn is not None
            limits = (_setting(lock._conn, "lock_timeout"), _setting(lock._conn, "statement_timeout"))
            assert limits == ("7s", "0")
        finally:
            lock.release()
    finally:
        if role:
            with psycopg.connect(postgres_db, autocommit=True) as admin:
                admin.execute(f"REASSIGN OWNED BY {role} TO postgres")
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE {role}")


def test_a_table_held_by_a_schema_change_fails_the_command_clearly(postgres_db: str, tmp_path: Path) -> None:
    """An ALTER TABLE (or VACUUM FULL, a migration by hand) holds the runs table: `posfeed runs`
    gives up after lock_timeout with exit 75, naming the ledger (without its password) and the
    setting, instead of waiting forever."""
    with Ledger(postgres_db):
        pass  # the schema is made
    url = _with(postgres_db, options="-c lock_timeout=1s")
    with _holding(postgres_db, "LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"):
        code, out, err = _posfeed(tmp_path, {"POSFEED_LEDGER_URL": url}, "runs")
    assert code == 75, err
    assert "postgres:***@127.0.0.1" in err and "lock_timeout" in err
    assert PASSWORD not in out + err


def test_a_stuck_writer_or_a_held_row_fails_the_write_clearly(postgres_db: str) -> None:
    """Another session holds the ledger's write lock (a writer that hangs) or a run's row: the
    write waits lock_timeout at most, then fails as a temporary error naming the ledger."""
    url = _with(postgres_db, options="-c lock_timeout=1s")
    with Ledger(url) as ledger:
        run_id = ledger.start_run(feed="hourly", scope="acme")
        stuck_writer = f"SELECT pg_advisory_xact_lock({WRITE_LOCK[0]}, {WRITE_LOCK[1]})"
        with _holding(postgres_db, stuck_writer), pytest.raises(LedgerUnavailableError) as stuck:
            ledger.start_run(feed="hourly", scope="acme")
        row_lock = f"SELECT * FROM runs WHERE id = '{run_id}' FOR UPDATE"
        with _holding(postgres_db, row_lock), pytest.raises(LedgerUnavailableError) as held:
            ledger.finish_run(run_id, status="finished", exit_code=0, counts={})
        ledger.finish_run(run_id, status="finished", exit_code=0, counts={})  # free again: it goes on
        assert [r.status for r in ledger.runs()] == ["finished"]
    for caught in (stuck, held):
        text = str(caught.value)
        assert caught.value.exit_code == 75 and "lock_timeout" in text and "postgres:***@127.0.0.1" in text
        assert PASSWORD not in text


def test_a_held_lock_holders_table_fails_taking_the_run_lock_clearly(postgres_db: str) -> None:
    """The scope locks' holders table held by another session: taking a run lock gives up after
    lock_timeout as a temporary error (exit 75) that says so, not a driver error."""
    PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly").release()  # the table is made
    url = _with(postgres_db, options="-c lock_timeout=1s")
    table_lock = "LOCK TABLE scope_lock_holders IN ACCESS EXCLUSIVE MODE"
    with _holding(postgres_db, table_lock), pytest.raises(TransientError) as caught:
        PgRunLock.acquire(url, "acme", feed="acme_hourly")
    text = str(caught.value)
    assert caught.value.exit_code == 75 and "lock_timeout" in text and "run lock of scope 'acme'" in text
    assert PASSWORD not in text
    PgRunLock.acquire(url, "acme", feed="acme_hourly").release()  # free again (the lock was not kept)


def _end_session(url: str, backend_pid: int) -> None:
    """End a session as a restarted server or a cut connection would, and wait until it is gone."""
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s, 30000)", (backend_pid,)).fetchone()
    assert row == (True,)


def _end_lock_session(url: str, scope: str) -> None:
    """End the session that holds ``scope``'s run lock (see :func:`_end_session`)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT backend_pid FROM scope_lock_holders WHERE scope = %s", (scope,)).fetchone()
    assert row is not None
    _end_session(url, row[0])


def test_an_in_doubt_mark_is_refused_once_the_scope_lock_is_lost(postgres_db: str) -> None:
    """The lock's session ends and another host takes the scope: the next in-doubt mark (made
    before every request) fails with LockLostError and marks nothing, so nothing more is sent;
    taking a file or recording one fails the same way."""
    from tests.test_ledger import _file, _queued, _txn

    lock = PgRunLock.acquire(postgres_db, "acme", feed="hourly")
    with Ledger(postgres_db) as ledger:
        run_id = _queued(ledger, "T1", "T2")
        fetched = _file(ledger, run_id, name="g.csv", sha="b" * 64)  # fetched, not yet recorded
        ledger.guard_scope("acme", lock.backend_pid, lock.key)
        ledger.start_sending("acme", ["T1"], run_id)  # held: marked
        _end_session(postgres_db, lock.backend_pid)
        other_host = PgRunLock.acquire(postgres_db, "acme", feed="hourly")
        try:
            with pytest.raises(LockLostError) as caught:
                ledger.start_sending("acme", ["T2"], run_id)
            assert caught.value.exit_code == 75
            # nor does it take or record a file of the scope the other host now runs
            with pytest.raises(LockLostError):
                _file(ledger, run_id, name="h.csv", sha="c" * 64)
            with pytest.raises(LockLostError):
                ledger.record_file(run_id, fetched, transactions=[_txn("T3")], rejects=[], totals=[])
            assert ledger.state_counts("acme") == {"sending": 1, "queued": 1}
            assert [(f.name, f.status) for f in ledger.files(scope="acme")] == [
                ("f.csv", "recorded"), ("g.csv", "fetched")]
        finally:
            other_host.release()
            lock.release()


def test_the_writes_after_sending_are_refused_once_the_scope_lock_is_lost(postgres_db: str) -> None:
    """What a run writes after it has sent (a refused batch put back in the queue, a file
    confirmed, finished or set aside, the scope's problems and the alerts they owe, its end) is
    written only while its lock session holds the scope's lock: once another host has taken
    the scope, each fails with LockLostError and changes nothing, no file is offered to finish
    and no alert to post; the run's own end is written only as `lock_lost` while it is running."""
    from pipeline.alerts import alert_for
    from pipeline.problems import Observation, reconcile
    from pipeline.records import EventResult, Outcome, RetryClass
    from tests.test_ledger import _file, _queued, _txn

    feed = Feed.model_validate({"name": "hourly", "dedup_scope": "acme",
                                "alerts": {"webhook_url": "http://127.0.0.1:9/down"}})
    down = Observation(kind="platform_unreachable", key="platform_unreachable|hourly", feed="hourly",
                       scope="acme", summary="down", action="check the platform", counts={})
    lock = PgRunLock.acquire(postgres_db, "acme", feed="hourly")
    with Ledger(postgres_db) as ledger:
        run_id = _queued(ledger, "T1")
        done = _file(ledger, run_id, name="g.csv", sha="b" * 64)
        ledger.record_file(run_id, done, transactions=[_txn("T2")], rejects=[],
                           totals=[("S1", "2026-11-20", 1, 1, Decimal("10.50"))])
        ledger.start_sending("acme", ["T2"], run_id)
        ledger.accept("acme", "T2", run_id)
        file = next(f for f in ledger.files(scope="acme") if f.name == "f.csv")
        ledger.guard_scope("acme", lock.backend_pid, lock.key)
        ledger.apply_problems(reconcile([], [down], lambda p: True), run_id=run_id,
                              alert=alert_for(feed, run_id))  # held: opened, its alert owed
        ledger.apply_results("acme", [EventResult("T1", Outcome.RETRYABLE, error_code="credentials_refused",
                                                  retry_class=RetryClass.CREDENTIALS)], run_id)
        (row_id,) = [r.id for r in ledger.run_transactions(run_id, at_end=False) if r.transaction_id == "T1"]
        assert [f.name for f in ledger.finishable_files("acme")] == ["g.csv"]  # T1 is not final
        _end_session(postgres_db, lock.backend_pid)
        other_host = PgRunLock.acquire(postgres_db, "acme", feed="hourly")
        try:
            shared = _shared_rows(postgres_db)
            assert ledger.pending_alerts("acme") == []  # the holder's to post
            assert ledger.finishable_files("acme") == []  # the holder's to finish
            for write in (
                lambda: ledger.requeue_refused([row_id], run_id),
                lambda: ledger.confirm_file(file.id, "2026-11-20T10:00:00.000000+00:00"),
                lambda: ledger.finish_file(done.id, "archive"),
                lambda: ledger.quarantine_file(file.id, None),
                lambda: ledger.apply_problems(reconcile(ledger.problems(), [], lambda p: True),
                                              run_id=run_id, alert=alert_for(feed, run_id)),
                lambda: ledger.finish_run(run_id, status="finished", exit_code=0, counts={}),
            ):
                with pytest.raises(LockLostError):
                    write()
            assert _shared_rows(postgres_db) == shared
            assert ledger.run(run_id).status == "running"  # type: ignore[union-attr]
            assert ledger.finish_run(run_id, status="lock_lost", exit_code=75, counts={},
                                     only_if_running=True)
            assert ledger.run(run_id).status == "lock_lost"  # type: ignore[union-attr]
        finally:
            other_host.release()
            lock.release()


def test_a_run_whose_lock_another_host_takes_sends_nothing_more(
        postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As submission starts, the run's lock session is ended and another host takes the scope;
    the lock watch is made slow (an hour), so only the in-doubt mark can notice: the run sends not
    one checkout, fails with LockLostError (exit 75), and once the other host lets go, the next run
    sends everything, each checkout once; the scope's pending alerts are left to the run that
    holds the lock (sent once, by the next run)."""
    from pipeline import runner
    from pipeline.scope_locks import LockWatch
    from tests.runner_helpers import SAMPLE_ACME, credentials, delivered_ids, sample_feed, settings_in, stats

    class SlowWatch(LockWatch):
        def __init__(self, lock: Any, *, scope: str) -> None:
            super().__init__(lock, scope=scope, interval=3600)

    monkeypatch.setattr(runner, "LockWatch", SlowWatch)
    settings = replace(settings_in(tmp_path), ledger_url=postgres_db)
    from pipeline.problems import Observation
    from tests.test_alerts import Receiver, open_one

    with Ledger(postgres_db) as ledger:  # an alert an earlier run of the feed left undelivered
        down = Feed.model_validate({"name": "acme_hourly", "dedup_scope": "acme",
                                    "alerts": {"webhook_url": "http://127.0.0.1:9/down"}})
        open_one(ledger, down, Observation(
            kind="platform_unreachable", key="platform_unreachable|acme_hourly", feed="acme_hourly",
            scope="acme", summary="down", action="check the platform", counts={}))
    taken: list[PgRunLock] = []

    def take_the_scope(stage: str, when: str) -> None:
        if (stage, when) == ("submit", "start"):
            _end_lock_session(postgres_db, "acme")
            taken.append(PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly"))

    with SandboxServer() as sandbox, credentials(sandbox), Receiver() as hook:
        feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
        feed = feed.model_copy(update={"alerts": feed.alerts.model_copy(update={"webhook_url": hook.url})})
        before = stats(sandbox)["events_accepted"]
        with pytest.raises(LockLostError):
            run_feed(feed, settings, business_dates=[date(2026, 11, 20)], on_stage=take_the_scope)
        assert len(taken) == 1 and stats(sandbox)["events_accepted"] == before
        assert hook.received == []  # the scope's alerts are the other host's to send now
        with Ledger(postgres_db) as ledger:
            assert "sending" not in ledger.state_counts("acme")
        taken[0].release()
        again = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        ids = delivered_ids(sandbox)
        after = stats(sandbox)
    assert again.summary["accepted"] > 0 and ids and len(ids) == len(set(ids))
    assert after["duplicate_transaction_attempts"] == 0
    sent = [(a["problem_id"], a["event"]) for a in hook.received]
    assert sent.count((1, "opened")) == 1  # the earlier alert, sent once (then resolved: reachable)
    assert len(sent) == len(set(sent))


PW_ROLE = "posfeed_pw"
ROLE_PASSWORD = "Right?pw#9f-secret"  # "?" and "#" as written in a URL: libpq reads them as the password's
WRONG_PASSWORD = "Wrong-pw-3b7d"


@pytest.fixture
def password_login(postgres_cluster: Any, postgres_db: str) -> str:
    """The URL of ``postgres_db`` for a role that must log in with ROLE_PASSWORD (scram-sha-256 on
    loopback for that role only; every other login of the test cluster stays trusted); without
    the password: a test puts it in the URL or PGPASSWORD."""
    hba = postgres_cluster.data_dir / "pg_hba.conf"
    line = f"host all {PW_ROLE} 127.0.0.1/32 scram-sha-256\n"
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PW_ROLE,)).fetchone():
            admin.execute(f"CREATE ROLE {PW_ROLE} LOGIN SUPERUSER PASSWORD '{ROLE_PASSWORD}'")
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
            admin.execute("SELECT pg_reload_conf()")
    url = postgres_db.replace("postgresql://postgres@", f"postgresql://{PW_ROLE}@", 1)
    for _ in range(600):  # until the server has read the new rule (a wrong password is refused)
        try:
            psycopg.connect(url, password=WRONG_PASSWORD).close()
        except psycopg.OperationalError:
            return url
        time.sleep(0.05)
    raise AssertionError("the server never asked for the password")


def _with_password(url: str, password: str) -> str:
    return url.replace(f"postgresql://{PW_ROLE}@", f"postgresql://{PW_ROLE}:{password}@", 1)


def _ledger_text(url: str) -> str:
    """Every row of every table of the ledger database, as text."""
    with psycopg.connect(url, password=ROLE_PASSWORD) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        return "".join(str(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


def test_a_wrong_or_unreachable_ledger_login_never_shows_the_password(
        password_login: str, tmp_path: Path) -> None:
    """A wrong password (in the URL or PGPASSWORD) is a credentials error (exit 78) that says
    where to look; an unreachable server a temporary one (75); neither message shows a password."""
    url = _with_password(password_login, WRONG_PASSWORD)
    in_env = {"POSFEED_LEDGER_URL": password_login, "PGPASSWORD": WRONG_PASSWORD}
    for env in ({"POSFEED_LEDGER_URL": url}, in_env):
        code, out, err = _posfeed(tmp_path, env, "runs", "--json")
        assert code == 78, err
        assert "password authentication failed" in err and f"{PW_ROLE}" in err and "PGPASSWORD" in err
        assert WRONG_PASSWORD not in out + err
    from tests.test_pg_ledger_run import RUN_ARGS, _env, _feed_file

    with SandboxServer() as sandbox:  # a run takes its scope's lock in the ledger's database first
        env = {**_env(sandbox), "POSFEED_LEDGER_URL": url}
        code, out, err = _posfeed(tmp_path, env, *RUN_ARGS, "--feed", str(_feed_file(tmp_path, sandbox)))
    assert code == 78 and "password authentication failed" in err and "PGPASSWORD" in err, err
    assert WRONG_PASSWORD not in out + err
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = _with_password(f"postgresql://{PW_ROLE}@127.0.0.1:{port}/x", ROLE_PASSWORD)
    code, out, err = _posfeed(tmp_path, {"POSFEED_LEDGER_URL": closed}, "runs")
    assert code == 75 and f"postgresql://{PW_ROLE}:***@127.0.0.1:{port}/x" in err, err
    assert ROLE_PASSWORD not in out + err and "pw#9f" not in out + err


def test_a_run_with_a_real_password_keeps_it_out_of_everything(password_login: str, tmp_path: Path) -> None:
    """A run that logs in with the password (in the URL, "?" and "#" in it as written), then
    `runs --json`, `report` and `problems --json` with PGPASSWORD: the password is in no output,
    report, state file or ledger row."""
    from tests.test_pg_ledger_run import RUN_ARGS, _env, _feed_file, _files_text

    with SandboxServer() as sandbox:
        feed_file = _feed_file(tmp_path, sandbox)
        env = {**_env(sandbox), "POSFEED_LEDGER_URL": _with_password(password_login, ROLE_PASSWORD)}
        code, out, err = _posfeed(tmp_path, env, "-v", "--reports-dir", str(tmp_path / "reports"),
                                  *RUN_ARGS, "--feed", str(feed_file))
        assert code in (0, 65), err[-3000:]
        assert f"ledger: postgresql://{PW_ROLE}:***@127.0.0.1" in err
        outputs = [out, err]
        by_env = {**_env(sandbox), "POSFEED_LEDGER_URL": password_login, "PGPASSWORD": ROLE_PASSWORD}
        for args in (("runs", "--json"), ("problems", "--json"),
                     ("report", json.loads(out)["run_id"], "--json", "--out", str(tmp_path / "rebuilt"))):
            code, more, more_err = _posfeed(tmp_path, by_env, "-v", *args)
            assert code == 0, more_err
            outputs += [more, more_err]
    everything = "".join(outputs) + _files_text(tmp_path) + _ledger_text(password_login)
    for part in (ROLE_PASSWORD, "Right?pw", "pw#9f"):
        assert part not in everything


def test_a_ledger_migrated_by_a_newer_posfeed_is_refused_and_left_as_it_is(
        ledger_location: Path | str, tmp_path: Path) -> None:
    """Another host's newer posfeed migrated the shared ledger: this one refuses it with a
    configuration error (exit 78: upgrade this host) naming the ledger and both versions, and
    writes nothing to it (the schema version stays the newer one)."""
    from pipeline.ledger.schema import SCHEMA_VERSION
    from tests.ledger_backends import ledger_env
    from tests.test_ledger import _raw

    with Ledger(ledger_location) as ledger:
        ledger.start_run(feed="hourly", scope="acme")
    db = _raw(ledger_location)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))

    def contents() -> list[Any]:
        return [list(map(tuple, db.query(f"SELECT * FROM {t}"))) for t in ("schema_version", "runs")]

    before = contents()
    code, _, err = _posfeed(tmp_path, ledger_env(ledger_location), "runs")
    assert code == 78, err
    shown = masked_url(ledger_location) if isinstance(ledger_location, str) else str(ledger_location)
    assert shown in err and f"version {SCHEMA_VERSION + 1}" in err and f"({SCHEMA_VERSION})" in err
    assert "upgrade posfeed" in err
    assert contents() == before
    db.close()


@pytest.mark.parametrize("stage", ["record", "submit", "report"])
def test_a_ledger_session_ended_at_a_stage_is_exit_75_and_the_next_run_settles_it(
        stage: str, postgres_db: str, tmp_path: Path) -> None:
    """The ledger's session is ended (a restart, a failover, pg_terminate_backend) as the run
    records its files, as it starts sending, or as it writes its report: the run fails with a
    temporary error (exit 75) naming the ledger, never its password; the next run finishes the
    work and every checkout reaches the platform once."""
    from tests.runner_helpers import SAMPLE_ACME, credentials, delivered_ids, sample_feed, settings_in, stats

    settings = replace(settings_in(tmp_path), ledger_url=_with(postgres_db))
    ended: list[int] = []

    def end_the_ledger_session(name: str, when: str) -> None:
        if (name, when) == (stage, "start"):
            with psycopg.connect(postgres_db) as conn:
                ended.extend(row[0] for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'posfeed ledger'"))
            for pid in ended:
                _end_session(postgres_db, pid)

    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
        with pytest.raises(LedgerUnavailableError) as caught:
            run_feed(feed, settings, business_dates=[date(2026, 11, 20)], on_stage=end_the_ledger_session)
        assert len(ended) == 1 and caught.value.exit_code == 75
        assert "postgres:***@127.0.0.1" in str(caught.value) and PASSWORD not in str(caught.value)
        again = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        ids = delivered_ids(sandbox)
        after = stats(sandbox)
    assert again.summary["balanced"] is True
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] == 0
    with Ledger(postgres_db) as ledger:
        counts = ledger.state_counts("acme")
        assert counts.get("queued", 0) == counts.get("sending", 0) == 0
        assert sorted(r.status for r in ledger.runs()) == sorted(["crashed", "finished"])


def test_a_ledger_session_ended_between_the_in_doubt_mark_and_the_answer_sends_nothing_twice(
        postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session ends right after the first request's checkouts are marked in doubt (committed),
    so the platform takes them but their answer cannot be written: exit 75; the next run asks the
    platform about exactly those and sends the rest, each checkout once."""
    from tests.runner_helpers import SAMPLE_ACME, credentials, delivered_ids, sample_feed, settings_in, stats

    settings = replace(settings_in(tmp_path), ledger_url=_with(postgres_db))
    marked: list[Sequence[str]] = []
    original = Ledger.start_sending

    def mark_then_lose_the_session(self: Ledger, scope: str, ids: Sequence[str], run_id: str,
                                   **answers: Any) -> None:
        original(self, scope, ids, run_id, **answers)
        if not marked:
            marked.append(list(ids))
            row = self._db.one("SELECT pg_backend_pid()")
            assert row is not None
            _end_session(postgres_db, row[0])

    monkeypatch.setattr(Ledger, "start_sending", mark_then_lose_the_session)
    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
        with pytest.raises(LedgerUnavailableError) as caught:
            run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        assert caught.value.exit_code == 75 and PASSWORD not in str(caught.value)
        with Ledger(postgres_db) as ledger:
            in_doubt = ledger.state_counts("acme").get("sending", 0)
        assert marked and in_doubt == len(marked[0])
        monkeypatch.setattr(Ledger, "start_sending", original)
        again = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        ids = delivered_ids(sandbox)
        after = stats(sandbox)
    assert again.summary["balanced"] is True
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] <= in_doubt
    with Ledger(postgres_db) as ledger:
        counts = ledger.state_counts("acme")
        assert counts.get("queued", 0) == counts.get("sending", 0) == 0


def _shared_rows(url: str) -> list[Any]:
    """What every holder of a scope relies on besides its own run: problems, alerts owed, files,
    the transactions' states."""
    with psycopg.connect(url) as conn:
        states = conn.execute("SELECT id, state, attempts, last_run_id, last_error_code FROM transactions "
                              "ORDER BY id").fetchall()
        return [conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                for table in ("problems", "alert_outbox", "files")] + [states]


@pytest.mark.parametrize("closed_by_the_next_holder", [True, False])
def test_a_run_that_lost_its_lock_writes_only_its_own_end_and_never_over_the_next_holder(
        closed_by_the_next_holder: bool, postgres_db: str, tmp_path: Path) -> None:
    """As submission starts, the run's lock session is ended and another host takes the scope
    (and, when its run starts first, closes this one as crashed). On its way out (LockLostError,
    exit 75) the run writes none of the scope's problems, alerts or files, and never writes its
    end over the holder's: it stays `crashed` as that run recorded it; unclosed, it records itself
    `lock_lost` (exit 75, the error in its counts), which `posfeed runs` shows."""
    from tests.runner_helpers import SAMPLE_ACME, credentials, sample_feed, settings_in

    settings = replace(settings_in(tmp_path), ledger_url=postgres_db)
    taken: list[PgRunLock] = []
    shared: list[Any] = []

    def take_the_scope(stage: str, when: str) -> None:
        if (stage, when) == ("submit", "start"):
            _end_lock_session(postgres_db, "acme")
            taken.append(PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly"))
            if closed_by_the_next_holder:
                with Ledger(postgres_db) as other:
                    assert len(other.close_abandoned_runs("acme")) == 1
            shared.append(_shared_rows(postgres_db))

    try:
        with SandboxServer() as sandbox, credentials(sandbox):
            feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
            with pytest.raises(LockLostError):
                run_feed(feed, settings, business_dates=[date(2026, 11, 20)], on_stage=take_the_scope)
        assert len(taken) == 1
        assert _shared_rows(postgres_db) == shared[0]
        with Ledger(postgres_db) as ledger:
            (run,) = ledger.runs()
        code, out, err = _posfeed(tmp_path, {"POSFEED_LEDGER_URL": postgres_db}, "runs", "--json")
    finally:
        for lock in taken:
            lock.release()
    assert code == 0, err
    (shown,) = json.loads(out)
    if closed_by_the_next_holder:
        assert (run.status, run.exit_code) == ("crashed", None)
        assert (shown["status"], shown["recorded_status"]) == ("crashed", "crashed")
    else:
        assert (run.status, run.exit_code) == ("lock_lost", 75)
        assert "LockLostError" in str((run.counts or {}).get("error"))
        assert (shown["status"], shown["recorded_status"], shown["exit"]) == ("lock_lost", "lock_lost", 75)


@contextmanager
def _server_setting(postgres_cluster: Any, name: str, value: str) -> Iterator[None]:
    """``name`` set server-wide (ALTER SYSTEM, as postgresql.conf would) while the block runs;
    waits until new sessions see it (the server reads a reload in its own time)."""
    def apply(statement: str, expected: str) -> None:
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
            admin.execute(statement)
            admin.execute("SELECT pg_reload_conf()")
        for _ in range(600):
            with psycopg.connect(postgres_cluster.url(), autocommit=True) as conn:
                if _setting(conn, name) == expected:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the server never took {name} = {expected}")

    apply(f"ALTER SYSTEM SET {name} = '{value}'", value)
    try:
        yield
    finally:
        apply(f"ALTER SYSTEM RESET {name}", "0")


IDLE_ROLE = "posfeed_idle"
IDLE_LIMIT = "300ms"  # far less than the platform's second per request


@pytest.fixture
def idle_role(postgres_cluster: Any, postgres_db: str) -> str:
    """The URL of ``postgres_db`` for a role whose sessions the server ends after IDLE_LIMIT idle
    (``ALTER ROLE ... SET idle_session_timeout``, as a DBA would set it for posfeed)."""
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (IDLE_ROLE,)).fetchone():
            admin.execute(f"CREATE ROLE {IDLE_ROLE} LOGIN SUPERUSER")
        admin.execute(f"ALTER ROLE {IDLE_ROLE} SET idle_session_timeout = '{IDLE_LIMIT}'")
    return postgres_db.replace("postgresql://postgres@", f"postgresql://{IDLE_ROLE}@", 1)


@contextmanager
def _slow_platform() -> Iterator[SandboxServer]:
    """The platform taking a second per request, so a run's ledger and lock sessions idle longer
    than IDLE_LIMIT while it waits."""
    from tests.runner_helpers import credentials

    with SandboxServer(latency_ms=1000) as sandbox, credentials(sandbox):
        yield sandbox


def _waiting_run(url: str, tmp_path: Path, sandbox: SandboxServer) -> tuple[Any, list[str]]:
    """A run of one sample file; its summary (or the ledger error that ended it) and the
    transaction ids the platform holds."""
    from tests.runner_helpers import copy_samples, delivered_ids, sample_feed, settings_in

    drop = tmp_path / "drop"
    copy_samples(drop, ["pos_BER01_20261120_09.csv"])
    settings = replace(settings_in(tmp_path), ledger_url=url)
    feed = sample_feed("acme_hourly", sandbox, folder=drop)
    try:
        outcome: Any = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
    except LedgerUnavailableError as exc:
        outcome = exc
    return outcome, delivered_ids(sandbox)


def test_a_server_wide_idle_session_timeout_never_ends_a_run_that_waits_on_the_platform(
        postgres_cluster: Any, postgres_db: str, tmp_path: Path) -> None:
    """idle_session_timeout set server-wide (postgresql.conf, ALTER SYSTEM) for forgotten sessions:
    the run's ledger and lock sessions turn it off for themselves, so a run whose platform takes a
    second per request finishes, each checkout sent once."""
    with _server_setting(postgres_cluster, "idle_session_timeout", IDLE_LIMIT):
        with Ledger(postgres_db) as ledger:
            assert tuple(ledger._db.one("SHOW idle_session_timeout") or ()) == ("0",)
        with _slow_platform() as sandbox:
            outcome, ids = _waiting_run(postgres_db, tmp_path, sandbox)
    assert not isinstance(outcome, Exception), outcome
    assert outcome.summary["balanced"] is True and outcome.summary["accepted"] > 0
    assert ids and len(ids) == len(set(ids))


def test_an_idle_session_timeout_set_for_posfeed_is_kept_and_named_when_it_ends_the_session(
        idle_role: str, tmp_path: Path) -> None:
    """idle_session_timeout set for posfeed's role (ALTER ROLE ... SET) is the DBA's choice for
    posfeed: the ledger session keeps it (the lock session never times out, or the scope's lock
    would go); when it ends the session, the next statement fails with exit 75 naming the setting
    and what to do; with `-c idle_session_timeout=0` in the URL's options a run that waits on the
    platform finishes, each checkout sent once."""
    lock = PgRunLock.acquire(idle_role, "acme", feed="acme_hourly")
    try:
        assert lock._conn is not None and _setting(lock._conn, "idle_session_timeout") == "0"
    finally:
        lock.release()
    with Ledger(idle_role) as ledger:
        row = ledger._db.one("SELECT current_setting('idle_session_timeout'), pg_backend_pid()")
        assert row is not None and row[0] == IDLE_LIMIT
        with psycopg.connect(idle_role, options="-c idle_session_timeout=0", autocommit=True) as look:
            for _ in range(600):  # until the server has ended the idle ledger session
                there = look.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (row[1],)).fetchone()
                if there is None:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the server never ended the idle session")
        with pytest.raises(LedgerUnavailableError) as ended:
            ledger.runs()
    text = str(ended.value)
    assert ended.value.exit_code == 75
    assert "after idle_session_timeout" in text and "RESET idle_session_timeout" in text
    with _slow_platform() as sandbox:
        outcome, ids = _waiting_run(_with(idle_role, password=False, options="-c idle_session_timeout=0"),
                                    tmp_path, sandbox)
    assert not isinstance(outcome, Exception), outcome
    assert outcome.summary["balanced"] is True and outcome.summary["accepted"] > 0
    assert ids and len(ids) == len(set(ids))


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("next_holder", ["takes_the_lock", "closes_this_run", "runs_and_ends"])
@pytest.mark.parametrize("moment", [("submit", "end"), ("report", "start")])
def test_a_run_that_loses_its_lock_after_sending_writes_nothing_over_the_next_holder(
        moment: tuple[str, str], next_holder: str, postgres_db: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The run has sent everything; as submission ends (before it finishes its files) or as its
    report stage starts, its lock session is ended and another host takes the scope: it only
    holds the lock, or its run has started (and closed this one as crashed), or a whole run of it
    has come and gone (finishing the files, resolving the problem, posting its alerts). The lock
    watch is made slow (an hour), as if its last look came just before: the run still archives and
    finishes no file, resolves no problem, queues and posts no alert, and writes no `finished` end
    over the holder's. It ends as a run that lost its lock does: LockLostError (exit 75), `crashed`
    as the holder's run recorded it, or else `lock_lost` of its own."""
    import shutil

    from pipeline import runner
    from pipeline.problems import Observation
    from pipeline.scope_locks import LockWatch
    from tests.runner_helpers import SAMPLE_ACME, credentials, sample_feed, settings_in
    from tests.test_alerts import Receiver, open_one

    class SlowWatch(LockWatch):
        def __init__(self, lock: Any, *, scope: str) -> None:
            super().__init__(lock, scope=scope, interval=3600)

    monkeypatch.setattr(runner, "LockWatch", SlowWatch)
    settings = replace(settings_in(tmp_path), ledger_url=postgres_db)
    drop = tmp_path / "drop"
    shutil.copytree(SAMPLE_ACME, drop)
    taken: list[PgRunLock] = []
    shared: list[Any] = []
    second: list[Any] = []  # the next holder's whole run
    sent: list[Any] = []  # the alerts it posted

    def take_the_scope(stage: str, when: str) -> None:
        if (stage, when) == moment:
            _end_lock_session(postgres_db, "acme")
            if next_holder == "runs_and_ends":
                second.append(run_feed(feed, settings, business_dates=[date(2026, 11, 20)]))
                sent.extend(hook.received)
            else:
                taken.append(PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly"))
            if next_holder == "closes_this_run":
                with Ledger(postgres_db) as other:
                    assert len(other.close_abandoned_runs("acme")) == 1
            shared.append((_shared_rows(postgres_db), _listing(drop)))

    try:
        with SandboxServer() as sandbox, credentials(sandbox), Receiver() as hook:
            feed = sample_feed("acme_hourly", sandbox, folder=drop, source={"after_success": "archive"})
            alerts = feed.alerts.model_copy(update={"webhook_url": hook.url})
            feed = feed.model_copy(update={"alerts": alerts})
            with Ledger(postgres_db) as ledger:  # open: a run that reaches the platform resolves it
                open_one(ledger, feed, Observation(
                    kind="platform_unreachable", key="platform_unreachable|acme_hourly", feed="acme_hourly",
                    scope="acme", summary="down", action="check the platform", counts={}))
            with pytest.raises(LockLostError) as caught:
                run_feed(feed, settings, business_dates=[date(2026, 11, 20)], on_stage=take_the_scope)
            received = list(hook.received)
        assert len(taken) + len(second) == 1 and caught.value.exit_code == 75
        assert received == sent  # the scope's alerts are the holder's to send
        rows, listing = shared[0]
        assert _shared_rows(postgres_db) == rows  # problems, alerts owed, files, states
        assert _listing(drop) == listing  # no source file archived after the loss
        with Ledger(postgres_db) as ledger:
            runs = {r.id: r for r in ledger.runs()}
            if second:
                assert runs.pop(second[0].run_id).status == "finished"
                assert sent  # the alerts it owed, posted by it
            else:
                assert ledger.problems(feed="acme_hourly")[0].kind == "platform_unreachable"
                if moment == ("submit", "end"):
                    assert {f.status for f in ledger.files(scope="acme")} == {"recorded"}
            (run,) = runs.values()
    finally:
        for lock in taken:
            lock.release()
    if next_holder != "takes_the_lock":  # as the holder's run closed it (its report: exit 75)
        assert (run.status, run.exit_code) == ("crashed", 75 if second else None)
    else:
        assert (run.status, run.exit_code) == ("lock_lost", 75)
        assert "LockLostError" in str((run.counts or {}).get("error"))


def test_a_failing_run_that_loses_its_lock_as_it_ends_records_only_lock_lost(
        postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run fails (an error as submission ends) and its lock is lost right after it looked
    whether it still held it: writing its `failed` end and the scope's problems is refused, and
    it records only its own end, `lock_lost` (exit 75), and the scope's problems, alerts and
    files stay as the next holder has them."""
    from pipeline import runner
    from pipeline.scope_locks import LockWatch
    from tests.runner_helpers import SAMPLE_ACME, credentials, sample_feed, settings_in

    class SlowWatch(LockWatch):
        def __init__(self, lock: Any, *, scope: str) -> None:
            super().__init__(lock, scope=scope, interval=3600)

    monkeypatch.setattr(runner, "LockWatch", SlowWatch)
    monkeypatch.setattr(runner, "_still_held", lambda lock: True)  # its look came just before
    settings = replace(settings_in(tmp_path), ledger_url=postgres_db)
    taken: list[PgRunLock] = []
    shared: list[Any] = []

    def fail_and_lose_the_lock(stage: str, when: str) -> None:
        if (stage, when) == ("submit", "end"):
            _end_lock_session(postgres_db, "acme")
            taken.append(PgRunLock.acquire(postgres_db, "acme", feed="acme_hourly"))
            shared.append(_shared_rows(postgres_db))
            raise RuntimeError("boom")

    try:
        with SandboxServer() as sandbox, credentials(sandbox):
            feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
            with pytest.raises(RuntimeError, match="boom"):
                run_feed(feed, settings, business_dates=[date(2026, 11, 20)], on_stage=fail_and_lose_the_lock)
        assert _shared_rows(postgres_db) == shared[0]
        with Ledger(postgres_db) as ledger:
            (run,) = ledger.runs()
    finally:
        for lock in taken:
            lock.release()
    assert (run.status, run.exit_code) == ("lock_lost", EXIT_INTERNAL)
    assert "boom" in str((run.counts or {}).get("error"))


class _HoldingHook:
    """A webhook receiver on 127.0.0.1 that keeps what it is sent and answers the first post only
    once ``release`` is set (the run posting it waits in the middle of its alerts)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict[str, Any]] = []
        self.arrived, self.release = threading.Event(), threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                hook.received.append(json.loads(self.rfile.read(length)))
                if not hook.arrived.is_set():
                    hook.arrived.set()
                    hook.release.wait(240)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/posfeed"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _HoldingHook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_alerts_a_run_listed_before_losing_its_lock_are_posted_once(postgres_db: str, tmp_path: Path) -> None:
    """Two real `posfeed run` processes on two "hosts" (state folders) sharing the PostgreSQL ledger.
    The first lists the scope's pending alerts and is posting the first when its lock session is
    ended; the second takes the scope and posts the scope's alerts; then the first's post is
    answered. Every alert reaches the webhook once: the one being posted is the first run's (it
    claimed it before posting), the others the second's (the first, its lock gone, claims and
    posts no more)."""
    from pipeline.alerts import alert_for
    from pipeline.problems import Observation, reconcile
    from tests.runner_helpers import SAMPLE_ACME, feed_toml, sample_feed
    from tests.sandbox_fixtures import TARGET_KITS

    with SandboxServer() as sandbox, _HoldingHook() as hook:
        feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
        feed = feed.model_copy(update={"alerts": feed.alerts.model_copy(update={
            "webhook_url": hook.url, "timeout_seconds": 240, "delivery_budget_seconds": 600})})
        feeds = tmp_path / "feeds"
        feeds.mkdir()
        (feeds / "acme_hourly.toml").write_text(feed_toml(feed), encoding="utf-8")
        with Ledger(postgres_db) as ledger:  # alerts earlier runs of the feed left undelivered
            observed = [Observation(kind=kind, key=f"{kind}|acme_hourly", feed="acme_hourly",
                                    scope="acme", summary=kind, action="look")
                        for kind in ("platform_unreachable", "backlog")]
            ledger.apply_problems(reconcile(ledger.problems(), observed, lambda p: True), run_id="r0",
                                  alert=alert_for(feed, "r0"))
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox), "POSFEED_LEDGER_URL": postgres_db,
               "POSFEED_FEEDS_DIR": str(feeds), "POSFEED_REPORTS_DIR": str(tmp_path / "reports")}
        run = ["run", "--feed", "acme_hourly", "--business-date", "2026-11-20"]
        posfeed = [sys.executable, "-m", "pipeline", "--state-dir"]
        first = subprocess.Popen([*posfeed, str(tmp_path / "a"), *run], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert hook.arrived.wait(120), "the first run posted no alert"
            _end_lock_session(postgres_db, "acme")  # another host may take the scope now
            second = subprocess.run([*posfeed, str(tmp_path / "b"), *run], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=240)
            assert second.returncode in (0, 65), second.stderr[-3000:]
        finally:
            hook.release.set()
            _, first_err = first.communicate(timeout=240)
        with Ledger(postgres_db) as ledger:
            left = ledger.pending_alerts("acme")
    sent = [(a["problem_id"], a["event"]) for a in hook.received]
    assert len(sent) >= 2 and len(sent) == len(set(sent)), (sent, first_err[-2000:])
    assert left == []  # and none is lost: each was delivered by one of the two
