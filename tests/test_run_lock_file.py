"""A run's scope lock file removed while the run holds it (an operator cleaning STATE_DIR/locks).

The lock is an ``flock`` on the file: removing it leaves the holder locking a file no path names,
and the next run creates a new file and locks that. Real processes against the sandbox: the run
that lost its file stops (exit 75, `lock_lost`) before it sends more, and nothing reaches the
platform twice.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import LockLostError
from pipeline.locks import RunLock, lock_path
from tests.test_scheduling import eventually, finish_and_check_nothing_sent_twice, posfeed, slow_feed_dir

RUN = ("run", "--feed", "trickle", "--business-date", "2026-11-20")


def test_a_lock_whose_file_was_removed_or_replaced_is_no_longer_held(tmp_path: Path) -> None:
    first = RunLock.acquire(tmp_path, "acme", feed="a")
    assert first.still_held()
    lock_path(tmp_path, "acme").unlink()
    assert not first.still_held()
    second = RunLock.acquire(tmp_path, "acme", feed="b")  # a new file: the scope is free to take
    try:
        assert second.still_held() and not first.still_held()
    finally:
        second.release()
        first.release()
    shutil.rmtree(tmp_path / "locks")
    third = RunLock.acquire(tmp_path, "acme", feed="c")  # the folder too: made again
    third.release()


def test_a_run_whose_lock_file_another_run_takes_sends_nothing_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As submission starts, the lock file is removed and another run takes the scope; the lock
    watch is made slow (an hour), so only the in-doubt mark can notice: the run sends not one
    checkout and fails with LockLostError (exit 75); once the other run lets go, the next run
    sends everything, each checkout once."""
    from datetime import date

    from pipeline import runner
    from pipeline.runner import run_feed
    from pipeline.sandbox.server import SandboxServer
    from pipeline.scope_locks import LockWatch
    from tests.runner_helpers import SAMPLE_ACME, credentials, delivered_ids, sample_feed, settings_in, stats

    class SlowWatch(LockWatch):
        def __init__(self, lock: Any, *, scope: str) -> None:
            super().__init__(lock, scope=scope, interval=3600)

    monkeypatch.setattr(runner, "LockWatch", SlowWatch)
    settings = settings_in(tmp_path)
    taken: list[RunLock] = []

    def take_the_scope(stage: str, when: str) -> None:
        if (stage, when) == ("submit", "start"):
            lock_path(settings.state_dir, "acme").unlink()
            taken.append(RunLock.acquire(settings.state_dir, "acme", feed="acme_hourly"))

    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME)
        before = stats(sandbox)["events_accepted"]
        with pytest.raises(LockLostError, match="its lock file was removed or replaced"):
            run_feed(feed, settings, business_dates=[date(2026, 11, 20)], on_stage=take_the_scope)
        assert len(taken) == 1 and stats(sandbox)["events_accepted"] == before
        taken[0].release()
        again = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        ids = delivered_ids(sandbox)
        after = stats(sandbox)
    assert again.summary["accepted"] > 0 and ids and len(ids) == len(set(ids))
    assert after["duplicate_transaction_attempts"] == 0


@pytest.mark.slow
def test_a_run_whose_lock_file_is_removed_stops_and_the_next_run_sends_nothing_twice(
    tmp_path: Path, sandbox_env: Any
) -> None:
    slow_feed_dir(tmp_path, sandbox_env)
    sandbox_env.config.latency_ms = 150
    first = subprocess.Popen(posfeed(tmp_path, *RUN), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert eventually(lambda: sandbox_env.state.snapshot()["requests"] >= 5 or first.poll() is not None)
    assert first.poll() is None, "the run ended before its lock file could be removed"
    shutil.rmtree(tmp_path / "state" / "locks")  # the operator's clean-up
    second = subprocess.run(posfeed(tmp_path, *RUN), capture_output=True, text=True, timeout=300)
    _, err = first.communicate(timeout=300)
    # the first run noticed its lock file was gone and stopped, sending nothing more
    assert first.returncode == 75, err[-3000:]
    assert "its lock file was removed or replaced" in err, err[-3000:]
    (line,) = [json.loads(x) for x in err.splitlines() if x.startswith("{") and '"event": "run"' in x]
    assert line["status"] == "lock_lost" and line["in_doubt"] == 0, line
    assert second.returncode != 75, second.stderr[-3000:]  # the scope was free: the second run ran
    assert sandbox_env.state.snapshot()["duplicate_transaction_attempts"] == 0
    finish_and_check_nothing_sent_twice(tmp_path, sandbox_env)
