"""The scheduler: cron in feed timezones across DST, catch-up after downtime, no overlapping runs."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent

from pipeline.config import Feed, Settings
from pipeline.errors import ConfigError
from pipeline.runner import business_dates_for
from pipeline.scheduling import (
    MAX_SLEEP_SECONDS,
    FeedScheduler,
    ScheduledFeed,
    job_id_for,
    next_run_time,
    parse_duration,
    scheduled_business_dates,
    select_feeds,
    trigger_for,
)

WAIT = 20.0  # generous upper bound for a thread to react; never a performance threshold


def fire_times(feed: Feed, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time of the feed's trigger in [start, end), walking the trigger like the scheduler."""
    trigger = trigger_for(feed)
    times: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < end:
        times.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def eventually(predicate: Callable[[], bool]) -> bool:
    """Poll until ``predicate`` holds (True) or WAIT seconds pass (False)."""
    deadline = threading.Event()
    timer = threading.Timer(WAIT, deadline.set)
    timer.start()
    try:
        while not predicate():
            if deadline.wait(0.02):
                return predicate()
        return True
    finally:
        timer.cancel()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# ---- cron in the feed's timezone, across daylight-saving changes ---------------------------------

DST_DAYS = [
    # zone, spring-forward day, fall-back day (2026)
    ("Europe/London", (2026, 3, 29), (2026, 10, 25)),
    ("America/New_York", (2026, 3, 8), (2026, 11, 1)),
    ("Europe/Berlin", (2026, 3, 29), (2026, 10, 25)),  # 02:00-03:00 skipped, then repeated
]


@pytest.mark.parametrize(("zone", "spring", "fall"), DST_DAYS)
def test_hourly_job_fires_every_real_hour_across_dst(zone: str, spring: tuple[int, int, int],
                                                      fall: tuple[int, int, int]) -> None:
    feed = Feed(name="h", timezone=zone, schedule="5 * * * *")
    tz = ZoneInfo(zone)
    for day, hours_in_day in ((spring, 23), (fall, 25)):
        start = datetime(*day, tzinfo=tz).astimezone(UTC)
        end = (datetime(*day, tzinfo=tz) + timedelta(days=1)).astimezone(UTC)
        times = fire_times(feed, start, end)
        assert len(times) == hours_in_day
        gaps = {b.astimezone(UTC) - a.astimezone(UTC) for a, b in itertools.pairwise(times)}
        assert gaps == {timedelta(hours=1)}  # no run skipped, none doubled
        assert {t.astimezone(tz).minute for t in times} == {5}


@pytest.mark.parametrize(("zone", "spring", "fall"), DST_DAYS)
def test_daily_job_fires_once_per_local_day_across_dst(zone: str, spring: tuple[int, int, int],
                                                        fall: tuple[int, int, int]) -> None:
    tz = ZoneInfo(zone)
    # 01:30 is inside both changes in both zones for London (skipped 01:00-02:00 in March, repeated in
    # October); for New York 02:30 is skipped in March and 01:30 repeated in November
    for expr in ("30 1 * * *", "30 2 * * *"):
        feed = Feed(name="d", timezone=zone, schedule=expr)
        for day in (spring, fall):
            start = datetime(*day, tzinfo=tz) - timedelta(days=2)
            times = fire_times(feed, start.astimezone(UTC), (start + timedelta(days=5)).astimezone(UTC))
            local_days = [t.astimezone(tz).date() for t in times]
            assert len(times) == 5, (zone, expr, day, times)
            assert len(set(local_days)) == 5  # exactly one run per local day
            for t in times:
                local = t.astimezone(tz)
                hour, minute = int(expr.split()[1]), 30
                # on the normal days the wall time is exact; on a skipped time it runs an hour later
                assert (local.hour, local.minute) in {(hour, minute), (hour + 1, minute)}


def test_fall_back_fixed_hour_runs_at_first_occurrence() -> None:
    feed = Feed(name="d", timezone="Europe/London", schedule="30 1 * * *")
    times = fire_times(feed, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    assert [t.astimezone(UTC) for t in times] == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_spring_forward_skipped_time_runs_an_hour_later() -> None:
    feed = Feed(name="d", timezone="America/New_York", schedule="30 2 * * *")
    times = fire_times(feed, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12))
    # 2026-03-07 02:30 EST = 07:30Z; on the 8th 02:30 does not exist: 03:30 EDT = 07:30Z
    assert [t.astimezone(UTC) for t in times] == [utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]


def test_next_run_time_is_pure_and_in_the_feed_timezone() -> None:
    feed = Feed(name="d", timezone="America/New_York", schedule="30 2 * * *")
    nxt = next_run_time(feed, utc(2026, 11, 20, 12))
    assert nxt is not None
    assert nxt.astimezone(UTC) == utc(2026, 11, 21, 7, 30)
    assert nxt.utcoffset() == timedelta(hours=-5)
    assert next_run_time(Feed(name="n"), utc(2026, 11, 20)) is None
    assert next_run_time(Feed(name="d", schedule="0 * * * *", enabled=False), utc(2026, 11, 20)) is None


def test_bad_cron_expression_is_a_config_error_at_load() -> None:
    with pytest.raises(ValueError, match="cron"):
        Feed(name="bad", schedule="61 * * * *")
    with pytest.raises(ConfigError):
        trigger_for(Feed(name="none"))


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "12h", "2d")] == [90, 90, 900, 43200, 172800]
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_select_feeds(tmp_path: Path) -> None:
    loaded = [
        (tmp_path / "a.toml", Feed(name="a", schedule="5 * * * *")),
        (tmp_path / "b.toml", Feed(name="b")),
        (tmp_path / "c.toml", Feed(name="c", schedule="5 * * * *", enabled=False)),
    ]
    assert [s.feed.name for s in select_feeds(loaded)] == ["a"]
    assert [s.path for s in select_feeds(loaded, ["a"])] == [tmp_path / "a.toml"]
    with pytest.raises(ConfigError, match="zzz"):
        select_feeds(loaded, ["zzz"])


# ---- the daemon with a persistent job store ---------------------------------------------------------


class Calls:
    """A fake job function that records what ran (the scheduling around it is real APScheduler)."""

    def __init__(self, body: Callable[[Feed], None] | None = None) -> None:
        self.runs: list[str] = []
        self.dates: list[list[date] | None] = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.body = body

    def __call__(self, feed: Feed, settings: Settings, stop: threading.Event,
                 business_dates: list[date] | None = None) -> None:
        with self.cond:
            self.runs.append(feed.name)
            self.dates.append(business_dates)
            self.cond.notify_all()
        if self.body:
            self.body(feed)

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.runs) >= count, timeout=WAIT)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")


@pytest.fixture
def schedulers() -> Iterator[list[FeedScheduler]]:
    made: list[FeedScheduler] = []
    yield made
    for s in made:
        s.shutdown()


def simulate_downtime(settings: Settings, feed: Feed, missed_since: datetime) -> None:
    """A daemon ran once and stopped; its stored job has been due since ``missed_since``."""
    first = FeedScheduler([feed], settings, job=Calls())
    first.start(paused=True)
    first.scheduler.modify_job(job_id_for(feed.name), next_run_time=missed_since)
    first.shutdown()


def test_jobs_are_stored_in_a_sqlite_file_in_the_state_dir(settings: Settings,
                                                            schedulers: list[FeedScheduler]) -> None:
    feed = Feed(name="acme_hourly", timezone="Europe/London", schedule="5 * * * *")
    s = FeedScheduler([feed], settings, job=Calls())
    schedulers.append(s)
    before = datetime.now(UTC)
    s.start(paused=True)
    after = datetime.now(UTC)
    assert (settings.state_dir / "scheduler.sqlite").exists()
    (job,) = s.scheduler.get_jobs()
    assert job.id == "feed:acme_hourly" and job.max_instances == 1 and job.coalesce is True
    assert job.next_run_time in {next_run_time(feed, before), next_run_time(feed, after)}


def test_missed_runs_catch_up_once_after_downtime(settings: Settings) -> None:
    feed = Feed(name="acme_hourly", schedule="*/5 * * * *")
    # down for an hour: twelve five-minute slots were missed
    simulate_downtime(settings, feed, datetime.now(UTC) - timedelta(hours=1))
    calls = Calls()
    again = FeedScheduler([feed], settings, job=calls, misfire_grace_seconds=3600)
    assert again.catch_up(timeout=WAIT) == ["feed:acme_hourly"]
    assert calls.runs == ["acme_hourly"]  # once, coalesced
    # the stored next run is in the future again: a second start has nothing to catch up
    third_calls = Calls()
    third = FeedScheduler([feed], settings, job=third_calls)
    assert third.catch_up(timeout=WAIT) == []
    assert third_calls.runs == []


def test_a_run_missed_beyond_the_grace_time_is_skipped(settings: Settings) -> None:
    three_hours_ago = datetime.now(UTC) - timedelta(hours=3)
    feed = Feed(name="daily", schedule=f"{three_hours_ago.minute} {three_hours_ago.hour} * * *")
    simulate_downtime(settings, feed, three_hours_ago.replace(second=0, microsecond=0))
    calls = Calls()
    missed: list[JobEvent] = []
    s = FeedScheduler([feed], settings, job=calls, misfire_grace_seconds=3600)
    s.scheduler.add_listener(missed.append, EVENT_JOB_MISSED)
    assert s.catch_up(timeout=WAIT) == ["feed:daily"]
    assert calls.runs == []
    assert [e.job_id for e in missed] == ["feed:daily"]


def test_a_changed_schedule_drops_the_stored_catch_up(settings: Settings) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    simulate_downtime(settings, Feed(name="f", schedule="*/5 * * * *"), an_hour_ago)
    calls = Calls()
    s = FeedScheduler([Feed(name="f", schedule="0 3 * * *")], settings, job=calls)
    assert s.catch_up(timeout=WAIT) == []
    assert calls.runs == []


def test_jobs_of_removed_feeds_are_dropped(settings: Settings, schedulers: list[FeedScheduler]) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    simulate_downtime(settings, Feed(name="gone", schedule="*/5 * * * *"), an_hour_ago)
    calls = Calls()
    s = FeedScheduler([Feed(name="kept", schedule="0 3 * * *")], settings, job=calls)
    schedulers.append(s)
    assert s.start() == []
    assert [j.id for j in s.scheduler.get_jobs()] == ["feed:kept"]
    assert calls.runs == []


def test_overlapping_triggers_never_overlap_runs(settings: Settings, schedulers: list[FeedScheduler]) -> None:
    release = threading.Event()
    calls = Calls(body=lambda feed: release.wait(WAIT))
    skipped: list[JobEvent] = []
    feed = Feed(name="slow", schedule="0 3 * * *")
    s = FeedScheduler([feed], settings, job=calls, max_workers=4)
    schedulers.append(s)
    s.scheduler.add_listener(skipped.append, EVENT_JOB_MAX_INSTANCES)
    s.start()
    s.scheduler.modify_job(job_id_for("slow"), next_run_time=datetime.now(UTC))
    assert calls.wait_for(1)
    # the trigger fires twice more while the first run is still going
    for _ in range(2):
        before = len(skipped)
        s.scheduler.modify_job(job_id_for("slow"), next_run_time=datetime.now(UTC))
        assert eventually(lambda b=before: len(skipped) > b)  # type: ignore[misc]
    assert calls.runs == ["slow"]
    finished: list[JobEvent] = []
    s.scheduler.add_listener(finished.append, EVENT_JOB_EXECUTED)
    release.set()
    # the scheduler counts the first run over (then tells its listeners): the next one may start
    assert eventually(lambda: len(finished) == 1)
    s.scheduler.modify_job(job_id_for("slow"), next_run_time=datetime.now(UTC))
    assert calls.wait_for(2)


def test_feeds_sharing_a_scope_wait_for_each_other(settings: Settings,
                                                    schedulers: list[FeedScheduler]) -> None:
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    guard = threading.Lock()

    def body(feed: Feed) -> None:
        with guard:
            active[feed.scope] = active.get(feed.scope, 0) + 1
            peak[feed.scope] = max(peak.get(feed.scope, 0), active[feed.scope])
        threading.Event().wait(0.2)
        with guard:
            active[feed.scope] -= 1

    calls = Calls(body=body)
    hourly = Feed(name="acme_hourly", dedup_scope="acme", schedule="0 3 * * *")
    daily = Feed(name="acme_daily", dedup_scope="acme", schedule="0 4 * * *")
    s = FeedScheduler([hourly, daily], settings, job=calls, max_workers=4)
    schedulers.append(s)
    s.start()
    now = datetime.now(UTC)
    for name in ("acme_hourly", "acme_daily"):
        s.scheduler.modify_job(job_id_for(name), next_run_time=now)
    assert calls.wait_for(2)
    assert eventually(lambda: active.get("acme") == 0)
    assert sorted(calls.runs) == ["acme_daily", "acme_hourly"]
    assert peak == {"acme": 1}


def test_feeds_of_different_scopes_run_side_by_side(settings: Settings,
                                                     schedulers: list[FeedScheduler]) -> None:
    together = threading.Barrier(2, timeout=WAIT)
    calls = Calls(body=lambda feed: together.wait())  # only passes if both run at the same time
    a = Feed(name="a", schedule="0 3 * * *")
    b = Feed(name="b", schedule="0 3 * * *")
    s = FeedScheduler([a, b], settings, job=calls, max_workers=4)
    schedulers.append(s)
    s.start()
    now = datetime.now(UTC)
    for name in ("a", "b"):
        s.scheduler.modify_job(job_id_for(name), next_run_time=now)
    assert calls.wait_for(2)
    assert not together.broken


def test_stop_request_reaches_the_running_job_and_blocks_waiting_ones(settings: Settings) -> None:
    seen_stop: list[bool] = []
    started = threading.Event()

    def job(feed: Feed, settings: Settings, stop: threading.Event, dates: list[date] | None) -> None:
        started.set()
        seen_stop.append(stop.wait(WAIT))  # a real run finishes its batch when this is set

    hourly = Feed(name="h", dedup_scope="acme", schedule="0 3 * * *")
    daily = Feed(name="d", dedup_scope="acme", schedule="0 4 * * *")
    s = FeedScheduler([hourly, daily], settings, job=job, max_workers=4)
    s.start()
    s.scheduler.modify_job(job_id_for("h"), next_run_time=datetime.now(UTC))
    assert started.wait(WAIT)
    # the daily feed of the same scope is now waiting for the scope lock
    waiter = threading.Thread(target=lambda: seen_stop.append(s.execute("d") is None))
    waiter.start()
    s.request_stop()
    s.shutdown()  # waits for the running job
    waiter.join(WAIT)
    assert seen_stop == [True, True]  # the run saw the stop; the waiting one never started


def test_a_schedule_edited_in_the_feed_file_is_followed(settings: Settings, tmp_path: Path,
                                                        schedulers: list[FeedScheduler]) -> None:
    path = tmp_path / "f.toml"
    path.write_text('schedule = "0 3 * * *"\n', encoding="utf-8")
    s = FeedScheduler([ScheduledFeed(Feed(name="f", schedule="0 3 * * *"), path)], settings,
                      job=lambda feed, st, stop, dates: None)
    schedulers.append(s)
    s.start(paused=True)
    path.write_text('schedule = "15 4 * * *"\ntimezone = "America/New_York"\n', encoding="utf-8")
    s.execute("f")
    (job,) = s.scheduler.get_jobs()
    edited = Feed(name="f", schedule="15 4 * * *", timezone="America/New_York")
    assert job.next_run_time == next_run_time(edited, datetime.now(UTC) - timedelta(seconds=5))
    path.write_text("", encoding="utf-8")  # schedule removed: no more scheduled runs
    s.execute("f")
    assert s.scheduler.get_jobs() == []


def test_a_feed_locked_by_another_run_is_skipped_not_queued(settings: Settings,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.locks import RunLock
    from pipeline.scheduling import run_feed_job

    feed = Feed(name="acme_daily", dedup_scope="acme", schedule="30 2 * * *")
    held = RunLock.acquire(settings.state_dir, "acme", feed="acme_hourly")  # cron's run, say
    try:
        with caplog.at_level("WARNING", logger="pipeline.scheduling"):
            assert run_feed_job(feed, settings, threading.Event()) == 75
    finally:
        held.release()
    assert "skipped" in caplog.text and "acme_hourly" in caplog.text
    assert not settings.ledger_path.exists()  # the run never started


def test_one_scheduler_per_state_dir(settings: Settings, tmp_path: Path) -> None:
    from pipeline.errors import TransientError
    from pipeline.locks import RunLock
    from pipeline.scheduling import DAEMON_LOCK_SCOPE, schedule_command

    (tmp_path / "f.toml").write_text('schedule = "0 3 * * *"\n', encoding="utf-8")
    held = RunLock.acquire(settings.state_dir, DAEMON_LOCK_SCOPE, feed="posfeed schedule")
    try:
        with pytest.raises(TransientError, match="another posfeed schedule"):
            schedule_command(settings, once_catchup=True)
    finally:
        held.release()
    assert schedule_command(settings, once_catchup=True) == 0  # free again: runs, nothing due


def test_a_scheduled_feed_is_reloaded_from_its_file_before_each_run(settings: Settings,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('schedule = "0 3 * * *"\ntimezone = "Europe/London"\n', encoding="utf-8")
    seen: list[Any] = []
    s = FeedScheduler([ScheduledFeed(Feed(name="f", schedule="0 3 * * *"), path)], settings,
                      job=lambda feed, st, stop, dates: seen.append(feed.timezone))
    path.write_text('schedule = "0 3 * * *"\ntimezone = "Europe/Paris"\n', encoding="utf-8")
    s.execute("f")
    path.write_text('schedule = "0 3 * * *"\nenabled = false\n', encoding="utf-8")
    s.execute("f")
    path.write_text('schedule = "not cron"\n', encoding="utf-8")
    s.execute("f")
    assert seen == ["Europe/Paris"]


# ---- SIGTERM mid-run: real processes against the sandbox ----------------------------------------

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "acme"
# no defects; 08 and 11 hold the sales of 13's returns (a return whose sale has not arrived waits)
SLOW_FILES = ["pos_LON01_20261120_08.csv", "pos_LON01_20261120_11.csv", "pos_LON01_20261120_13.csv",
              "pos_LON01_20261120_14.csv"]


def slow_feed_dir(tmp_path: Path, sandbox: Any, *, schedule: str = "0 3 * * *") -> Path:
    """A feeds folder with one feed whose sends trickle: two events per request, one at a time."""
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for name in SLOW_FILES:
        shutil.copy(SAMPLE / name, folder / name)
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "trickle.toml").write_text(
        f'timezone = "Europe/London"\nschedule = "{schedule}"\n'
        f'[source]\nkind = "local"\npath = "{folder}"\nreadiness = "none"\n'
        'pattern = "pos_*.csv"\n'  # any date: the daemon runs for today's dates
        f'[target]\nkind = "antavo"\nbase_url = "{sandbox.url}"\nregion = "{sandbox.config.region}"\n'
        "bulk_size = 2\nmax_concurrency = 1\nrequests_per_minute = 60000\n"
        '[validation]\ncurrencies = ["GBP"]\n',
        encoding="utf-8",
    )
    return feeds


def posfeed(tmp_path: Path, *args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "pipeline", "--log-format", "json",
            "--state-dir", str(tmp_path / "state"), "--feeds-dir", str(tmp_path / "feeds"),
            "--reports-dir", str(tmp_path / "reports"), *args]


def ledger_states(tmp_path: Path) -> dict[str, int]:
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM transactions GROUP BY state").fetchall())
    finally:
        db.close()


def sigterm_once_sending(process: Any, sandbox: Any, requests: int = 5) -> None:
    """Wait until the platform has seen a few requests, then SIGTERM the process."""
    import signal

    assert eventually(lambda: sandbox.state.snapshot()["requests"] >= requests or process.poll() is not None)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)


def finish_and_check_nothing_sent_twice(tmp_path: Path, sandbox: Any) -> None:
    """Settle what the stopped run left (rerun the stopped sends, run the queued ones): every
    transaction ends accepted or final, and the platform never saw one twice."""
    import subprocess

    sandbox.config.latency_ms = 0
    subprocess.run(posfeed(tmp_path, "rerun", "--feed", "trickle", "--failed"), check=False,
                   capture_output=True, timeout=300)
    subprocess.run(posfeed(tmp_path, "run", "--feed", "trickle", "--business-date", "2026-11-20"),
                   check=False, capture_output=True, timeout=300)
    states = ledger_states(tmp_path)
    assert not {"queued", "sending", "failed_retryable"} & set(states), states
    stats = sandbox.state.snapshot()
    assert stats["duplicate_transaction_attempts"] == 0
    assert stats["events_accepted"] >= states["accepted"]


@pytest.mark.slow
def test_sigterm_mid_run_finishes_the_batch_and_leaves_a_consistent_ledger(
    tmp_path: Path, sandbox_env: Any
) -> None:
    import subprocess

    slow_feed_dir(tmp_path, sandbox_env)
    sandbox_env.config.latency_ms = 150
    process = subprocess.Popen(
        posfeed(tmp_path, "run", "--feed", "trickle", "--business-date", "2026-11-20", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    sigterm_once_sending(process, sandbox_env)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 75, err[-3000:]  # stopped: try again later
    summary = json.loads(out)
    assert summary["status"] == "stopped" and summary["in_doubt"] == 0
    states = ledger_states(tmp_path)
    assert "sending" not in states  # nothing left in doubt: every request's answer was recorded
    assert states.get("accepted", 0) > 0 and states.get("accepted", 0) == summary["accepted"]
    assert states.get("queued", 0) + states.get("failed_retryable", 0) > 0  # the rest waits, unsent
    finish_and_check_nothing_sent_twice(tmp_path, sandbox_env)


@pytest.mark.slow
def test_sigterm_stops_the_daemon_after_its_catch_up_run_batch(tmp_path: Path, sandbox_env: Any) -> None:
    import subprocess

    from pipeline.config import load_feed

    feeds = slow_feed_dir(tmp_path, sandbox_env)
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=feeds, reports_dir=tmp_path / "reports")
    # the daemon was down when the feed was due a minute ago
    simulate_downtime(settings, load_feed(feeds / "trickle.toml"), datetime.now(UTC) - timedelta(minutes=1))
    sandbox_env.config.latency_ms = 150
    process = subprocess.Popen(posfeed(tmp_path, "schedule", "--feed", "trickle"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sigterm_once_sending(process, sandbox_env)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (run_line,) = [line for line in lines if line.get("event") == "run"]
    assert run_line["feed"] == "trickle" and run_line["exit_code"] == 75 and run_line["status"] == "stopped"
    assert run_line["accepted"] > 0 and run_line["in_doubt"] == 0
    assert any("stopped" in line["msg"] for line in lines if line["logger"] == "pipeline.scheduling")
    assert "sending" not in ledger_states(tmp_path)
    # the job is still stored, due next at its regular time
    again = FeedScheduler([load_feed(feeds / "trickle.toml")], settings, job=Calls())
    assert again.catch_up(timeout=WAIT) == []
    finish_and_check_nothing_sent_twice(tmp_path, sandbox_env)


def test_a_stop_signal_arriving_while_the_daemon_holds_its_stop_event_lock_still_stops_it(
    tmp_path: Path,
) -> None:
    """`Event.wait` holds the event's own lock at every poll of the daemon's loop; a SIGTERM
    landing then must not make its handler take that lock again (it would wait for itself
    forever). A real process, the real handlers, the signal sent while the lock is held."""
    import subprocess
    import sys

    script = f"""
import os, signal, sys
from pathlib import Path
from pipeline.config import Feed, Settings
from pipeline.scheduling import FeedScheduler, _install_signal_handlers
root = Path({str(tmp_path)!r})
settings = Settings(state_dir=root / "state", feeds_dir=root, reports_dir=root / "reports")
scheduler = FeedScheduler([Feed(name="f", schedule="0 3 * * *")], settings, job=lambda *a: None)
_install_signal_handlers(scheduler)
scheduler.start()
with scheduler.stop._cond:  # as Event.wait holds it
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs between these bytecodes
        pass
scheduler.serve()
print("stopped")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "stopped"
    assert "SIGTERM received" in done.stderr


# ---- which business dates a scheduled run processes -----------------------------------------------


def test_berlin_0230_runs_once_on_both_change_days_for_that_days_business_date() -> None:
    feed = Feed(name="d", timezone="Europe/Berlin", schedule="30 2 * * *")
    tz = ZoneInfo("Europe/Berlin")
    for day in (date(2026, 3, 29), date(2026, 10, 25)):
        start = datetime.combine(day, datetime.min.time(), tz)
        (fire,) = fire_times(feed, start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC))
        assert fire.astimezone(tz).date() == day
        # on time: the default window, which ends on the day it fires on
        assert scheduled_business_dates(feed, [fire], now=fire) is None
        assert business_dates_for(feed, now=fire)[-1] == day
    # spring: 02:30 does not exist, the run is at 03:30 CEST (01:30Z); autumn: first 02:30 (CEST, 00:30Z)
    spring_run = [t.astimezone(UTC) for t in fire_times(feed, utc(2026, 3, 29), utc(2026, 3, 30))]
    autumn_run = [t.astimezone(UTC) for t in fire_times(feed, utc(2026, 10, 25), utc(2026, 10, 26))]
    assert spring_run == [utc(2026, 3, 29, 1, 30)] and autumn_run == [utc(2026, 10, 25, 0, 30)]


def test_a_caught_up_run_also_processes_the_business_date_of_the_slot_it_stands_for() -> None:
    feed = Feed(name="d", timezone="Europe/Berlin", schedule="30 23 * * *",
                source={"kind": "local", "path": "/in", "lookback_days": 0})
    now = datetime(2026, 11, 21, 8, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    on_time = datetime(2026, 11, 20, 23, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert scheduled_business_dates(feed, [], now=now) is None  # no slot known: the default window
    assert scheduled_business_dates(feed, [now], now=now) is None  # on time: the default window
    # the 23:30 run of the 20th, caught up the next morning: the 20th as well as today
    assert scheduled_business_dates(feed, [on_time], now=now) == [date(2026, 11, 20), date(2026, 11, 21)]
    # a clock that went backwards never makes it process a date after today
    assert scheduled_business_dates(feed, [now + timedelta(days=2)], now=now) is None


def test_a_run_caught_up_after_midnight_is_given_its_slots_business_date(settings: Settings) -> None:
    yesterday = (datetime.now(UTC) - timedelta(hours=30)).replace(second=0, microsecond=0)
    feed = Feed(name="daily", schedule=f"{yesterday.minute} {yesterday.hour} * * *",
                source={"kind": "local", "path": "/in", "lookback_days": 0})
    simulate_downtime(settings, feed, yesterday)
    calls = Calls()
    s = FeedScheduler([feed], settings, job=calls, misfire_grace_seconds=2 * 86400)
    assert s.catch_up(timeout=WAIT) == ["feed:daily"]
    assert calls.runs == ["daily"]  # once for both missed slots
    today = datetime.now(UTC).date()
    (dates,) = calls.dates
    assert dates is not None and dates[0] == yesterday.date()
    assert dates[-1] in {today - timedelta(days=1), today}


def test_the_daemon_looks_at_the_clock_at_least_every_minute(settings: Settings,
                                                               schedulers: list[FeedScheduler]) -> None:
    """A wall clock that jumps forward (a suspended VM resumed, a corrected clock) is noticed: the
    daemon never sleeps on the monotonic clock for hours until a far-away run."""
    s = FeedScheduler([Feed(name="f", schedule="0 3 1 1 *")], settings, job=Calls())
    schedulers.append(s)
    s.start()
    wait = s.scheduler._process_jobs()
    assert wait is not None and wait <= MAX_SLEEP_SECONDS


class StderrLines:
    """The JSON log lines of a process's stderr, read on a thread as they come."""

    def __init__(self, process: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: Any) -> None:
        for line in process.stderr:
            self.raw.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def runs(self, feed: str, since: int = 0) -> list[dict[str, Any]]:
        """The `event=run` lines of ``feed`` from line ``since`` on."""
        return [line for line in self.lines[since:]
                if line.get("event") == "run" and line.get("feed") == feed]


def _local_feed(feeds: Path, name: str, folder: Path, sandbox: Any) -> None:
    folder.mkdir(exist_ok=True)
    (feeds / f"{name}.toml").write_text(
        'timezone = "Europe/London"\nschedule = "* * * * *"\n'
        f'[source]\nkind = "local"\npath = "{folder}"\nreadiness = "none"\npattern = "pos_*.csv"\n'
        f'[target]\nkind = "antavo"\nbase_url = "{sandbox.url}"\nregion = "{sandbox.config.region}"\n'
        '[validation]\ncurrencies = ["GBP"]\n',
        encoding="utf-8",
    )


@pytest.mark.slow
def test_sighup_reloads_the_feeds_folder_without_stopping_the_run_in_progress(
    tmp_path: Path, sandbox_env: Any
) -> None:
    """A real `posfeed schedule` sent real SIGHUPs: the run going on finishes as if nothing happened,
    a feed added to the folder is scheduled and runs, the feed already there keeps running; a
    folder that no longer loads is refused as a whole (the error names the file and the key) and
    the schedules from before stay."""
    import signal
    import subprocess

    from pipeline.config import load_feed

    feeds = slow_feed_dir(tmp_path, sandbox_env, schedule="* * * * *")
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=feeds, reports_dir=tmp_path / "reports")
    # the run of a minute ago was missed: it starts at once, and is in progress when HUP comes
    simulate_downtime(settings, load_feed(feeds / "trickle.toml"), datetime.now(UTC) - timedelta(minutes=1))
    sandbox_env.config.latency_ms = 150
    process = subprocess.Popen(posfeed(tmp_path, "schedule"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    err = StderrLines(process)
    try:
        assert eventually(lambda: sandbox_env.state.snapshot()["requests"] >= 2 or process.poll() is not None)
        assert not err.runs("trickle"), "the run ended before the reload could come in the middle of it"
        _local_feed(feeds, "added", tmp_path / "in_added", sandbox_env)
        process.send_signal(signal.SIGHUP)

        def ran_after_reload() -> bool:
            return process.poll() is not None or (len(err.runs("trickle")) >= 2 and bool(err.runs("added")))

        # the next minute: the added feed runs, and so does the one from before
        deadline = threading.Event()
        timer = threading.Timer(150, deadline.set)
        timer.start()
        try:
            while not ran_after_reload() and not deadline.wait(0.2):
                pass
        finally:
            timer.cancel()
        assert process.poll() is None, "".join(err.raw)[-3000:]
        first = err.runs("trickle")[0]
        # the run in progress when HUP came was not stopped: it finished its files (65: the sample
        # data has transactions the platform refuses)
        assert first["status"] == "finished" and first["exit_code"] != 75, first
        assert first["accepted"] > 0 and first["in_doubt"] == 0 and not first.get("queued")
        assert err.runs("added"), "".join(err.raw)[-3000:]
        assert any("reload" in line["msg"] for line in err.lines if line["logger"] == "pipeline.scheduling")

        # a feeds folder that no longer loads: nothing of it is taken, the old schedules stay
        seen = len(err.lines)
        (feeds / "broken.toml").write_text('schedule = "* * * * *"\n[source]\nkind = "ftp"\n',
                                           encoding="utf-8")
        _local_feed(feeds, "refused", tmp_path / "in_refused", sandbox_env)
        process.send_signal(signal.SIGHUP)
        assert eventually(lambda: any(line["level"] == "error" and "broken.toml" in line["msg"]
                                      for line in err.lines[seen:]))
        refusal = next(line for line in err.lines[seen:] if "broken.toml" in line["msg"])
        assert "source.kind" in refusal["msg"] and "old schedules" in refusal["msg"], refusal
        deadline = threading.Event()
        timer = threading.Timer(150, deadline.set)
        timer.start()
        try:
            while not (err.runs("trickle", seen) or process.poll() is not None) and not deadline.wait(0.2):
                pass
        finally:
            timer.cancel()
        assert process.poll() is None, "".join(err.raw)[-3000:]
        assert err.runs("trickle", seen), "".join(err.raw)[-3000:]
        scheduled = {line.get("feed") for line in err.lines[seen:] if line.get("event") == "schedule"}
        assert "refused" not in scheduled and not err.runs("refused", seen)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    assert process.returncode == 0, "".join(err.raw)[-3000:]


def test_the_daemon_names_at_start_the_variables_its_feeds_read_that_are_not_set(tmp_path: Path) -> None:
    """Told at start as `posfeed feeds` tells them (not at a first run hours later): a daemon over
    the whole folder logs each one and keeps its other feeds going; one given `--feed` names feeds
    that cannot run, and refuses to start (78)."""
    import os
    import subprocess
    import sys

    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "shop.toml").write_text("schedule = '0 3 * * *'\n[source]\npath = 'shop'\n"
                                     "[target]\napi_key_env = 'SHOP_KEY'\napi_secret_env = 'SHOP_SECRET'\n",
                                     encoding="utf-8")
    (feeds / "ready.toml").write_text("schedule = '0 3 * * *'\n[source]\npath = 'ready'\n"
                                      "[target]\napi_key_env = 'READY_KEY'\napi_secret_env = 'READY_KEY'\n",
                                      encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSFEED_", "ANTAVO_", "CRMCOM_"))}
    env["READY_KEY"] = "ready-key-value"

    def schedule(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "--state-dir", str(tmp_path / "state"), "--feeds-dir",
                   str(feeds), "schedule", *args, "--once-catchup"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    named = schedule("--feed", "shop")
    assert named.returncode == 78, named.stderr[-2000:]
    for says in ("environment variable SHOP_KEY is not set (target.api_key_env of shop)",
                 "environment variable SHOP_SECRET is not set (target.api_secret_env of shop)"):
        assert says in named.stderr, named.stderr
    assert not (tmp_path / "state" / "scheduler.sqlite").exists()  # refused before starting

    assert schedule("--feed", "ready").returncode == 0
    whole = schedule()  # both feeds: `ready` still runs on its schedule
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "environment variable SHOP_KEY is not set (target.api_key_env of shop)" in whole.stderr
    assert "ready-key-value" not in whole.stderr + named.stderr


@pytest.mark.parametrize("n", [1, 2])
def test_the_daemon_counts_the_feeds_it_schedules_in_words_that_agree(
    tmp_path: Path, sandbox_env: Any, n: int
) -> None:
    """A real `posfeed schedule` says "1 feed scheduled", "2 feeds scheduled": never "feed(s)"."""
    import signal
    import subprocess

    feeds = tmp_path / "feeds"
    feeds.mkdir()
    for i in range(n):
        _local_feed(feeds, f"shop{i}", tmp_path / f"in{i}", sandbox_env)
    process = subprocess.Popen(posfeed(tmp_path, "schedule"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    err = StderrLines(process)
    try:
        assert eventually(lambda: any("job store" in line.get("msg", "") for line in err.lines)
                          or process.poll() is not None), "".join(err.raw)[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    (said,) = [line["msg"] for line in err.lines if "job store" in line.get("msg", "")]
    feeds_words = "1 feed" if n == 1 else "2 feeds"
    assert said == f"scheduler: {feeds_words} scheduled; job store {tmp_path / 'state' / 'scheduler.sqlite'}"
