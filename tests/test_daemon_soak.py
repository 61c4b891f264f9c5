"""A daemon runs for weeks: what one scheduled run takes, the next gets back.

Many scheduled runs in one process (the daemon's own job path, against the real sandbox); what a
run holds is counted after a few runs and again after many more: it must not grow.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import logs
from pipeline.config import Feed, Settings
from pipeline.errors import StateIOError
from pipeline.scheduling import FeedScheduler, ScheduledFeed, job_id_for
from tests.sandbox_fixtures import antavo_feed, crmcom_feed

HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
          "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
          "currency,transaction_total,points_burned,original_transaction_id\n")
ZONE = ZoneInfo("Europe/London")


def drop_file(folder: Path, n: int) -> None:
    """The n-th small export of today: two sales of its own."""
    today = datetime.now(ZONE).date()
    day = today.strftime("%Y%m%d")
    rows = "".join(
        f"LON01-R1-{day}-{n:04d}{k},LON01,R1,{today} 00:00:0{k},{today},M10000{k},sale,1,100703,"
        "Nuts,snacks,1,3.95,,3.95,GBP,3.95,,\n"
        for k in range(2)
    )
    (folder / f"pos_LON01_{day}_{n:04d}.csv").write_text(HEADER + rows, encoding="utf-8")


def scheduled_feed(folder: Path, target: Feed) -> Feed:
    """``target``'s platform, fed from ``folder``, on a daily schedule."""
    data = target.model_dump()
    data.update({
        "name": "soak", "timezone": "Europe/London", "schedule": "0 3 * * *",
        "source": {"kind": "local", "path": str(folder), "pattern": "pos_*.csv", "readiness": "none"},
        "validation": {"currencies": ["GBP"]},
    })
    return Feed.model_validate(data)


class Daemon:
    """A started (paused) scheduler whose job runs on demand, in its worker thread as fired."""

    def __init__(self, feed: Feed, settings: Settings, folder: Path) -> None:
        self.feed, self.folder, self.runs = feed, folder, 0
        self.scheduler = FeedScheduler([ScheduledFeed(feed)], settings)
        self.scheduler.start(paused=True)

    def execute(self) -> Any:
        """One run of the feed's job, as the scheduler fires it; its exit code."""
        pool = self.scheduler.scheduler._lookup_executor("default")._pool
        return pool.submit(self.scheduler.execute, self.feed.name).result()

    def run(self, times: int) -> None:
        """``times`` runs, each with a new file, each ending well."""
        for _ in range(times):
            drop_file(self.folder, self.runs)
            self.runs += 1
            assert self.execute() == 0

    def close(self) -> None:
        self.scheduler.shutdown()


def test_crmcom_tokens_of_finished_runs_are_not_kept_as_secrets(tmp_path: Path, sandbox_env: Any) -> None:
    """Each run's CRM.COM tokens were added to the log redaction for good: after weeks of hourly
    runs every log line was matched against thousands of dead tokens."""
    folder = tmp_path / "in"
    folder.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    daemon = Daemon(scheduled_feed(folder, crmcom_feed(sandbox_env)), settings, folder)
    try:
        daemon.run(5)
        after_few = len(logs._secrets)
        daemon.run(10)
        assert len(logs._secrets) == after_few
    finally:
        daemon.close()
    assert sandbox_env.state.platforms["crmcom"].tokens  # tokens were issued and used


def test_a_daemon_keeps_running_when_its_postgresql_server_restarts_between_runs(
    tmp_path: Path, sandbox_env: Any, postgres_cluster: Any, postgres_db: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports",
                        ledger_url=postgres_db)
    daemon = Daemon(scheduled_feed(folder, antavo_feed(sandbox_env)), settings, folder)
    try:
        daemon.run(2)
        postgres_cluster.stop_server()
        assert postgres_cluster._start_server()
        daemon.run(2)  # each asserts exit 0
        postgres_cluster.stop_server()
        try:
            drop_file(folder, daemon.runs)
            daemon.runs += 1
            assert daemon.execute() == 75  # the server is down: try again later
        finally:
            assert postgres_cluster._start_server()
        daemon.run(1)
    finally:
        daemon.close()
    assert sandbox_env.state.snapshot()["duplicate_transaction_attempts"] == 0


@contextmanager
def small_disk(folder: Path, size: str = "1m") -> Iterator[Path]:
    """``folder`` on a tmpfs of its own of ``size`` (a real file system that fills up)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_daemon_whose_state_disk_fills_stops_saying_why(tmp_path: Path) -> None:
    """The job store could not record a fired job's next run time (the disk was full): the
    scheduler's thread died of it and the daemon lived on, running nothing ever again."""
    ran = threading.Event()

    def job(feed: Feed, settings: Settings, stop: threading.Event, dates: Any) -> int:
        ran.set()
        return 0

    with small_disk(tmp_path / "state") as state:
        settings = Settings(state_dir=state, feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
        feed = Feed(name="soak", timezone="Europe/London", schedule="0 3 * * *")
        daemon = FeedScheduler([feed], settings, job=job)
        daemon.start(paused=True)
        daemon.scheduler.modify_job(job_id_for("soak"), next_run_time=datetime.now(UTC))
        fill(state)
        server = threading.Thread(target=daemon.serve)
        daemon.scheduler.resume()
        server.start()
        server.join(60)  # the daemon stops by itself
        stopped = not server.is_alive()
        if not stopped:
            daemon.request_stop()
            server.join(60)
        assert stopped
        assert ran.is_set()
        failure = daemon.failure
        assert isinstance(failure, StateIOError) and failure.exit_code == 74
        assert str(state / "scheduler.sqlite") in str(failure) and "free disk space" in str(failure)


def test_a_daemon_started_on_a_full_state_disk_exits_74_saying_why(tmp_path: Path) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "soak.toml").write_text(
        'timezone = "Europe/London"\nschedule = "0 3 * * *"\n'
        f'[source]\nkind = "local"\npath = "{tmp_path}"\nreadiness = "none"\n'
        '[target]\nkind = "antavo"\nbase_url = "http://127.0.0.1:9"\nregion = "demo"\n',
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "pipeline", "--state-dir", str(tmp_path / "state"),
               "--feeds-dir", str(feeds), "schedule", "--once-catchup"]
    with small_disk(tmp_path / "state") as state:
        first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert first.returncode == 0, first.stderr[-2000:]  # its job is stored
        fill(state)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 74, proc.stderr[-2000:]
    # it names the file it could not write (it said "(unknown path)")
    assert f"{state}/locks/.scheduler.lock: No space left" in proc.stderr
    assert "free disk space" in proc.stderr


def test_a_run_refused_by_a_full_state_disk_leaves_the_next_run_free_to_go(
    tmp_path: Path, sandbox_env: Any
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    with small_disk(tmp_path / "state", "4m") as state:
        settings = Settings(state_dir=state, feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
        daemon = Daemon(scheduled_feed(folder, antavo_feed(sandbox_env)), settings, folder)
        try:
            daemon.run(1)
            fds = len(os.listdir("/proc/self/fd"))
            filler = fill(state)
            for _ in range(3):
                drop_file(folder, daemon.runs)
                daemon.runs += 1
                assert daemon.execute() == 74
            filler.unlink()
            assert len(os.listdir("/proc/self/fd")) == fds  # the refused runs kept nothing open
            daemon.run(2)  # each ends well
        finally:
            daemon.close()
