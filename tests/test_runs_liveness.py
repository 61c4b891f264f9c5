"""`posfeed runs` tells a live run from a dead one: a real `posfeed run`, held mid-submission by the
sandbox, shows `running`; SIGKILLed, it shows `crashed` at once, though the ledger still records it
running until the next run of its scope settles it. On both ledger backends (``ledger_location``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from pipeline.ledger import Ledger
from pipeline.locks import RunLock, flock_holders, lock_path, run_holds_lock
from pipeline.pg_locks import HOLDERS_TABLE
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import copy_samples, feed_toml, sample_feed, stats
from tests.sandbox_fixtures import TARGET_KITS
from tests.test_pg_locks import wait_for_session_end

FILES = tuple(f"pos_LON01_20261120_{hour}.csv" for hour in ("10", "11", "12"))
NO_LOCK_TABLE = Path("/nonexistent/proc/locks")  # a system without /proc/locks


def _posfeed(args: list[str], tmp: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )


def _runs(tmp: Path, env: dict[str, str], *args: str) -> str:
    listing = _posfeed(["runs", *args], tmp, env)
    out, err = listing.communicate(timeout=120)
    assert listing.returncode == 0, err[-3000:]
    return out


def test_runs_shows_a_live_run_running_and_a_killed_one_crashed(
    tmp_path: Path, ledger_location: Path | str
) -> None:
    drop = tmp_path / "drop"
    copy_samples(drop, FILES)
    with SandboxServer(latency_ms=5) as sandbox:
        feed = sample_feed("acme_hourly", sandbox, folder=drop)
        feed = feed.model_copy(update={"target": feed.target.model_copy(update={"bulk_size": 10})})
        feed_file = tmp_path / "livefeed.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox), **ledger_env(ledger_location)}
        # from the first accepted event on, every request is held: the run is alive mid-submission
        sandbox.config.hold_after, sandbox.config.hold_ms = ("events_accepted", 1), 120_000
        victim = _posfeed(["run", "--feed", str(feed_file), "--business-date", "2026-11-20", "--json"],
                          tmp_path, env)
        try:
            deadline = time.monotonic() + 120
            while stats(sandbox)["events_accepted"] < 1:
                assert victim.poll() is None, victim.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.005)

            live: list[dict[str, Any]] = json.loads(_runs(tmp_path, env, "--json"))
            assert [(r["status"], r["recorded_status"]) for r in live] == [("running", "running")]
            assert "running" in _runs(tmp_path, env).splitlines()[1].split()
            assert victim.poll() is None  # looking took nothing from it
            backend_pid = _lock_session(ledger_location)

            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=60)
            assert victim.returncode == -signal.SIGKILL
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.communicate(timeout=60)
            sandbox.config.hold_after = None
        if backend_pid is not None:  # the server ends the dead client's session on its own
            assert isinstance(ledger_location, str)
            wait_for_session_end(ledger_location, backend_pid)

        dead: list[dict[str, Any]] = json.loads(_runs(tmp_path, env, "--json"))
        assert [(r["run_id"], r["status"], r["recorded_status"]) for r in dead] == [
            (live[0]["run_id"], "crashed", "running")]
        assert "crashed" in _runs(tmp_path, env).splitlines()[1].split()
        with Ledger(ledger_location) as ledger:  # `runs` wrote nothing: the next run settles it
            assert [r.status for r in ledger.runs()] == ["running"]


def _lock_session(location: Path | str) -> int | None:
    """The backend pid of the PostgreSQL session holding the run's lock (None for a file lock)."""
    if isinstance(location, Path):
        return None
    with psycopg.connect(location, autocommit=True) as conn:
        row = conn.execute(f"SELECT backend_pid FROM {HOLDERS_TABLE}").fetchone()
    assert row is not None
    return int(row[0])


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_file_lock_is_told_held_or_not_without_taking_it(tmp_path: Path) -> None:
    here, me = socket.gethostname(), os.getpid()
    lock = RunLock.acquire(tmp_path, "acme", feed="acme_hourly")
    try:
        assert flock_holders(lock_path(tmp_path, "acme")) == {me}
        for table in (None, NO_LOCK_TABLE):  # the kernel's lock table, and the holder record
            kwargs = {} if table is None else {"proc_locks": table}
            assert run_holds_lock(tmp_path, "acme", pid=me, host=here, **kwargs) is True
            assert run_holds_lock(tmp_path, "acme", pid=_dead_pid(), host=here, **kwargs) is False
            assert run_holds_lock(tmp_path, "acme", pid=me, host=f"not-{here}", **kwargs) is None
        # looking took nothing: the lock is still ours alone
        assert flock_holders(lock_path(tmp_path, "acme")) == {me}
    finally:
        lock.release()
    for table in (None, NO_LOCK_TABLE):
        kwargs = {} if table is None else {"proc_locks": table}
        assert run_holds_lock(tmp_path, "acme", pid=me, host=here, **kwargs) is False
        assert run_holds_lock(tmp_path, "other", pid=me, host=here, **kwargs) is False  # no lock file
    assert flock_holders(lock_path(tmp_path, "acme"), NO_LOCK_TABLE) is None


def test_a_record_left_by_a_killed_holder_is_not_a_live_run(tmp_path: Path) -> None:
    """Where there is no lock table, a holder record naming a dead process is a dead run."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from pipeline.locks import RunLock; "
         "RunLock.acquire(Path(sys.argv[1]), 'acme', feed='acme_hourly'); print('held', flush=True); "
         "sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    here = socket.gethostname()
    try:
        assert run_holds_lock(tmp_path, "acme", pid=holder.pid, host=here) is True
        assert run_holds_lock(tmp_path, "acme", pid=holder.pid, host=here, proc_locks=NO_LOCK_TABLE) is True
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    assert json.loads(lock_path(tmp_path, "acme").read_text(encoding="utf-8"))["pid"] == holder.pid
    assert run_holds_lock(tmp_path, "acme", pid=holder.pid, host=here) is False
    assert run_holds_lock(tmp_path, "acme", pid=holder.pid, host=here, proc_locks=NO_LOCK_TABLE) is False


def test_a_lock_table_that_cannot_be_read_leaves_liveness_unknown(tmp_path: Path) -> None:
    from pipeline.ledger.records import RunRecord
    from pipeline.scope_locks import runs_alive

    run = RunRecord(id="r1", feed="acme_hourly", scope="acme", kind="run", dry_run=False, status="running",
                    started_at="2026-11-20T00:00:00+00:00", finished_at=None, exit_code=None, selection=None,
                    counts=None, host=socket.gethostname(), pid=os.getpid())
    # a port nothing listens on: the history is still shown, with its running runs unknown
    assert runs_alive("postgresql://posfeed@127.0.0.1:1/posfeed", tmp_path, [run]) == {"r1": None}
    assert runs_alive(None, tmp_path, [run]) == {"r1": False}  # no lock file: nothing holds it
