"""The scheduler daemon: one APScheduler job per enabled feed with a `schedule`.

Each feed's cron expression is read in the feed's timezone (:func:`trigger_for`). Jobs live in a
persistent SQLite job store in the state dir, so a run missed while the daemon was down is caught
up once (coalesced) when it comes back, provided it is no older than the misfire grace time.

Runs never overlap:

* a job has at most one running instance (``max_instances=1``); a trigger that fires while the
  previous run is still going is skipped and logged;
* feeds sharing a dedup scope wait for each other inside the daemon (one lock per scope);
* the ledger's run lock (taken by :func:`pipeline.runner.run_feed`) still guards against a
  `posfeed run` started by cron or by hand at the same time: such a run is skipped, not queued.

A stop request (SIGTERM/SIGINT in `posfeed schedule`) sets the stop event every run receives: the
current batch finishes, the ledger stays consistent, and the daemon exits once runs have returned.
SIGHUP reloads the feeds folder (:meth:`FeedScheduler.reload`): added, removed and changed feeds
and schedules take effect without a restart, runs in progress go on untouched, and a folder that
no longer loads is refused as a whole (the old schedules stay). The signal handler only records
the signal (it may interrupt the main thread while that holds the very locks acting on it would
take); the daemon's own loop acts on it within ``SIGNAL_POLL_SECONDS``.

Daylight saving: times that do not exist on the spring-forward day fire once, an hour later (the
wall clock has jumped past them); jobs at a fixed hour fire once on the fall-back day, at the first
occurrence of the repeated hour, the way cron does; hourly jobs fire every real hour.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger

from pipeline.config import Feed, Settings, env_needs, env_status, load_feed, load_feeds
from pipeline.errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    ConfigError,
    LockHeldError,
    PosfeedError,
    SecretError,
    StateIOError,
    TransientError,
    state_io_error,
)
from pipeline.locks import RunLock
from pipeline.logs import counted, log_event, register_feed_secrets, shown, told

__all__ = [
    "DEFAULT_MISFIRE_GRACE_SECONDS",
    "MAX_SLEEP_SECONDS",
    "FeedCronTrigger",
    "FeedScheduler",
    "JobFunction",
    "ScheduledFeed",
    "job_id_for",
    "next_run_time",
    "parse_duration",
    "run_feed_job",
    "schedule_command",
    "scheduled_business_dates",
    "scheduled_run",
    "select_feeds",
    "trigger_for",
]

logger = logging.getLogger(__name__)

DEFAULT_MISFIRE_GRACE_SECONDS = 12 * 3600
# the longest the daemon sleeps before looking at the wall clock again: its sleep runs on the
# monotonic clock, which a suspended machine or a corrected wall clock leaves behind
MAX_SLEEP_SECONDS = 60.0
JOBSTORE_FILE = "scheduler.sqlite"
DAEMON_LOCK_SCOPE = ".scheduler"  # locks/.scheduler.lock: one daemon per state dir
SIGNAL_POLL_SECONDS = 0.2  # how soon the daemon acts on a recorded SIGTERM/SIGINT

# what a scheduled run calls: the feed, the settings, the stop event and the business dates to
# process (None: the feed's default window, today and `source.lookback_days` before it)
JobFunction = Callable[[Feed, Settings, threading.Event, list[date] | None], Any]

# the fire times the run in this worker thread stands for (set by the executor, read by the job)
_slots = threading.local()


class FeedCronTrigger(CronTrigger):
    """A cron trigger that, like cron, fires a fixed-hour job once on the fall-back day.

    APScheduler fires at both occurrences of a repeated wall time (01:30 BST and 01:30 GMT). For a
    job whose hour field is not ``*`` the second occurrence (``fold=1``) is skipped.
    """

    def _fixed_hour(self) -> bool:
        hour = self.fields[self.FIELD_NAMES.index("hour")]
        return str(hour) != "*"

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The next fire time after ``previous_fire_time`` and not before ``now``."""
        fire = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and fire.fold == 1 and self._fixed_hour():
            fire = super().get_next_fire_time(fire, fire)
        return fire


def trigger_for(feed: Feed) -> FeedCronTrigger:
    """The trigger of a feed's `schedule` (a 5-field crontab expression) in its timezone.

    Raises ConfigError when the feed has no schedule or the expression is invalid.
    """
    if not feed.schedule:
        raise ConfigError("the feed has no schedule", source=feed.name, key="schedule")
    try:
        return FeedCronTrigger.from_crontab(feed.schedule, timezone=ZoneInfo(feed.timezone))
    except ValueError as exc:
        raise ConfigError(
            f"not a valid cron expression {feed.schedule!r}: {exc}", source=feed.name, key="schedule"
        ) from exc


def next_run_time(feed: Feed, now: datetime) -> datetime | None:
    """When the scheduler will next run ``feed`` after ``now`` (None: disabled or unscheduled).

    The result is in the feed's timezone. Pure: the clock is an argument.
    """
    if not feed.enabled or not feed.schedule:
        return None
    fire: datetime | None = trigger_for(feed).get_next_fire_time(None, now)
    return fire


def scheduled_business_dates(feed: Feed, slots: Sequence[datetime], *, now: datetime) -> list[date] | None:
    """The business dates a scheduled run processes, or None for the feed's default window.

    A run stands for its slots (several when missed runs are coalesced). When the oldest slot's
    date in the feed's timezone is before the default window (a 23:30 run caught up after
    midnight, a catch-up older than `source.lookback_days`), the window reaches back to it. Never
    a date after today: a slot in the future (a clock set back) changes nothing. Pure.
    """
    from pipeline.runner import business_dates_for

    window = business_dates_for(feed, now=now)
    tz = ZoneInfo(feed.timezone)
    days = [slot.astimezone(tz).date() for slot in slots]
    oldest = min(days, default=window[0])
    if oldest >= window[0]:
        return None
    return [oldest + timedelta(days=n) for n in range((window[-1] - oldest).days + 1)]


def job_id_for(feed_name: str) -> str:
    """The job store id of a feed's job."""
    return f"feed:{feed_name}"


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> int:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"2d"``. Raises ValueError."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 900, 15m, 12h, 2d)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


@dataclass(frozen=True)
class ScheduledFeed:
    """A feed the daemon schedules, with the file to reload it from before each run."""

    feed: Feed
    path: Path | None = None


def run_feed_job(feed: Feed, settings: Settings, stop: threading.Event,
                 business_dates: list[date] | None = None) -> int:
    """The default job: one real run of the feed (the runner logs its one `event=run` line).

    Errors are logged (never raised: the daemon keeps going); a held lock means another run of
    the same scope is active (cron, a manual run), so this one is skipped.
    """
    from pipeline.runner import run_feed

    try:
        summary = run_feed(feed, settings, stop=stop, business_dates=business_dates)
    except LockHeldError as exc:
        log_event(logger, "run", f"feed {feed.name}: skipped, {exc}", level=logging.WARNING,
                  feed=feed.name, status="skipped_locked", exit_code=exc.exit_code)
        return exc.exit_code
    except PosfeedError as exc:
        log_event(logger, "run", f"feed {feed.name}: run failed: {shown(exc)}", level=logging.ERROR,
                  feed=feed.name, status="error", exit_code=exc.exit_code, error=type(exc).__name__)
        return exc.exit_code
    except Exception as exc:  # a bug in one run must not stop the daemon
        # where it was raised, then its text as shown (the raw text may quote customers)
        where = "".join(traceback.format_tb(exc.__traceback__))
        logger.error("feed %s: run crashed: %s: %s\nTraceback (most recent call last):\n%s",
                     feed.name, type(exc).__name__, shown(exc), where.rstrip())
        return EXIT_INTERNAL
    # the runner logged the run's one line (event=run) with its counts
    return summary.exit_code


class SelectedJobStore(SQLAlchemyJobStore):
    """The shared SQLite job store, seen through the jobs of the selected feeds only.

    `posfeed schedule --feed A` manages A's job and leaves the other feeds' stored jobs (and the
    catch-up state they carry) as they are: it neither runs nor removes them.
    """

    def __init__(self, job_ids: Iterable[str], **options: Any) -> None:
        super().__init__(**options)
        self.job_ids = frozenset(job_ids)

    def lookup_job(self, job_id: str) -> Any:
        """A stored job, if it is one of the selected."""
        return super().lookup_job(job_id) if job_id in self.job_ids else None

    def get_next_run_time(self) -> datetime | None:
        """The earliest next run time among the selected jobs."""
        times = [job.next_run_time for job in self._get_jobs() if job.next_run_time is not None]
        return min(times, default=None)

    def _get_jobs(self, *conditions: Any) -> list[Any]:
        return list(super()._get_jobs(self.jobs_t.c.id.in_(sorted(self.job_ids)), *conditions))

    def remove_all_jobs(self) -> None:
        """Remove the selected jobs only."""
        for job_id in self.job_ids:
            with contextlib.suppress(Exception):
                self.remove_job(job_id)


class _BackgroundScheduler(BackgroundScheduler):
    """APScheduler's background scheduler, minus one race at shutdown, looking at the clock often.

    Its loop processes due jobs once more after ``shutdown()`` has stopped the executors; a job due
    at that moment fails to submit but its next run time still advances, so the run would be lost
    instead of caught up after the restart. It sleeps on the monotonic clock until the next run:
    here never longer than ``MAX_SLEEP_SECONDS``, so a wall clock that jumped forward (a machine
    resumed from suspend) is noticed within a minute, not hours late.
    """

    # told what ended the loop (the job store cannot be written: a full disk): the thread would
    # otherwise die of it while the daemon lives on, running nothing ever again
    on_failure: Callable[[Exception], None] | None = None

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        try:
            wait: float | None = super()._process_jobs()
        except Exception as exc:
            if self.on_failure is None:
                raise
            self.on_failure(exc)
            return None
        return MAX_SLEEP_SECONDS if wait is None else min(wait, MAX_SLEEP_SECONDS)


def _run_job_with_slots(job: Any, jobstore_alias: str, run_times: list[datetime],
                        slots: list[datetime], logger_name: str) -> Any:
    """APScheduler's ``run_job``, with the fire times the run stands for visible to the job."""
    _slots.times = slots
    try:
        return run_job(job, jobstore_alias, run_times, logger_name)
    finally:
        _slots.times = []


class _SlotExecutor(ThreadPoolExecutor):
    """APScheduler's thread pool executor that tells each run which fire times it stands for.

    Coalescing hands a run only the latest missed fire time; the job's stored next run time (not
    advanced yet when a run is submitted) still knows the oldest. The slots within the misfire
    grace time are all passed on.

    APScheduler 3 has no public way to this (its private executor method is overridden here): a
    job function is called without its fire time (agronholm/apscheduler#297, left to 4.0), and
    ``EVENT_JOB_SUBMITTED`` carries only the latest time once coalesced, dispatched after the job
    was handed to a worker thread (the run may start first). A 3.x release that renames the
    method fails test_scheduling::test_a_run_caught_up_after_midnight_is_given_its_slots_business_date.
    """

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        now = datetime.now(UTC)
        grace = job.misfire_grace_time
        slots = [t for t in job._get_run_times(now)
                 if grace is None or (now - t).total_seconds() <= grace] or list(run_times)

        def callback(future: Any) -> None:
            exc = future.exception()
            if exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        future = self._pool.submit(_run_job_with_slots, job, job._jobstore_alias, run_times, slots,
                                   self._logger.name)
        future.add_done_callback(callback)


# the scheduler that owns the jobs of this process; job functions in a persistent store are
# referenced by name, so the job entry point finds its scheduler here
_active: FeedScheduler | None = None
_active_lock = threading.Lock()


def scheduled_run(feed_name: str) -> None:
    """Job store entry point (referenced as text): run one feed in the active scheduler."""
    scheduler = _active
    if scheduler is None:
        logger.error("feed %s: fired with no active scheduler; ignored", feed_name)
        return
    scheduler.execute(feed_name)


class FeedScheduler:
    """The daemon's scheduler: jobs per feed, catch-up, no overlap, graceful stop.

    ``job`` is what a due run calls (default :func:`run_feed_job`); ``jobstore`` defaults to a
    SQLite file `scheduler.sqlite` in the state dir.
    """

    def __init__(
        self,
        feeds: Iterable[ScheduledFeed | Feed],
        settings: Settings,
        *,
        job: JobFunction | None = None,
        misfire_grace_seconds: int = DEFAULT_MISFIRE_GRACE_SECONDS,
        jobstore: BaseJobStore | None = None,
        max_workers: int | None = None,
        only_selected: bool = False,
        loader: Callable[[], Sequence[ScheduledFeed]] | None = None,
    ) -> None:
        self.settings = settings
        self.feeds = _scheduled(feeds)
        self.loader = loader  # what SIGHUP reloads (None: nothing to reload)
        self.reload_requested = False  # set by the SIGHUP handler, acted on by the daemon's loop
        self.job: JobFunction = job or run_feed_job
        self.misfire_grace_seconds = misfire_grace_seconds
        self.stop = threading.Event()
        self.signalled: int | None = None  # a stop signal recorded by the handler, not yet acted on
        self.exit_codes: dict[str, int] = {}  # feed name -> exit code of its latest run
        self._scope_locks: dict[str, threading.Lock] = {}
        self._scope_locks_guard = threading.Lock()
        self._settled: set[str] = set()
        self._settled_cond = threading.Condition()
        if jobstore is None:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(settings.state_dir / JOBSTORE_FILE).resolve()}"
            if only_selected:  # the other feeds' jobs stay stored, untouched
                jobstore = SelectedJobStore([job_id_for(name) for name in self.feeds], url=url)
            else:
                jobstore = SQLAlchemyJobStore(url=url)
        self._selected = jobstore if isinstance(jobstore, SelectedJobStore) else None
        # threads are started as runs need them; a reload may add feeds, so the cap is not their count
        workers = max_workers or 8
        self.scheduler = _BackgroundScheduler(
            jobstores={"default": jobstore},
            executors={"default": _SlotExecutor(max_workers=workers)},
            job_defaults={"max_instances": 1, "coalesce": True,
                          "misfire_grace_time": misfire_grace_seconds},
            timezone="UTC",
        )
        self.failure: Exception | None = None  # what stopped the daemon by itself
        self.scheduler.on_failure = self._scheduler_failed
        self.scheduler.add_listener(
            self._on_event,
            EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
            | EVENT_JOB_MAX_INSTANCES,
        )

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self, *, paused: bool = False) -> list[str]:
        """Start the scheduler, reconcile the stored jobs with the feeds; return the ids now due.

        With ``paused`` jobs are reconciled but nothing runs until ``self.scheduler.resume()``.

        A stored job whose feed still has the same schedule keeps its next run time, which is how
        runs missed while the daemon was down are caught up. Jobs of feeds that are gone, disabled
        or not selected are removed; a changed schedule starts afresh from now.
        """
        global _active
        with _active_lock:
            if _active is not None and _active is not self:
                raise RuntimeError("another FeedScheduler is active in this process")
            _active = self
        self.scheduler.start(paused=True)
        due = self._reconcile()
        if not paused:
            self.scheduler.resume()
        return due

    def _reconcile(self, *, starting: bool = True) -> list[str]:
        """Make the stored jobs those of ``self.feeds``; return the ids of the jobs now due."""
        wanted = {job_id_for(name): entry for name, entry in self.feeds.items()}
        for job in self.scheduler.get_jobs():
            if job.id not in wanted:
                logger.info("scheduler: removing stored job %s (feed gone, disabled or not selected)",
                            job.id)
                self.scheduler.remove_job(job.id)
        now = datetime.now(ZoneInfo("UTC"))
        due: list[str] = []
        for job_id, entry in wanted.items():
            trigger = trigger_for(entry.feed)
            stored = self.scheduler.get_job(job_id)
            if stored is not None and repr(stored.trigger) == repr(trigger):
                self.scheduler.modify_job(job_id, misfire_grace_time=self.misfire_grace_seconds,
                                          max_instances=1, coalesce=True)
                next_time = stored.next_run_time
                if starting and next_time is not None and next_time <= now:
                    late = now - next_time
                    logger.info("feed %s: run scheduled at %s was missed while stopped (%s ago)",
                                entry.feed.name, next_time.isoformat(), _short(late))
                    due.append(job_id)
            else:
                if stored is not None:
                    logger.info("feed %s: schedule changed to %r; stored catch-up state dropped",
                                entry.feed.name, entry.feed.schedule)
                self.scheduler.add_job(
                    "pipeline.scheduling:scheduled_run", trigger=trigger, args=[entry.feed.name],
                    id=job_id, name=entry.feed.name, replace_existing=True,
                    max_instances=1, coalesce=True, misfire_grace_time=self.misfire_grace_seconds,
                )
        for job in self.scheduler.get_jobs():
            log_event(logger, "schedule", f"feed {job.name}: next run {_iso(job.next_run_time)}",
                      feed=job.name, next_run=_iso(job.next_run_time))
        return due

    def reload(self) -> bool:
        """Read the feeds again (SIGHUP) and schedule what they say now; runs in progress go on.

        Added feeds are scheduled, removed or disabled ones unscheduled, changed schedules follow
        the files. When the feeds no longer load (a file invalid, the folder gone, no feed with a
        schedule left) nothing changes: the error is logged, the old schedules stay. Returns
        whether the reload was taken.
        """
        if self.loader is None:
            logger.warning("scheduler: SIGHUP received; nothing to reload")
            return False
        try:
            entries = _scheduled(self.loader())
            if not entries:
                raise ConfigError("no enabled feed with a schedule", source=self.settings.feeds_dir)
        except ConfigError as exc:
            log_event(logger, "schedule", f"scheduler: reload refused, the old schedules stay: {shown(exc)}",
                      level=logging.ERROR, status="reload_refused", exit_code=exc.exit_code)
            return False
        register_feed_secrets([entry.feed for entry in entries.values()])
        before = set(self.feeds)
        self.feeds = entries
        if self._selected is not None:
            self._selected.job_ids = frozenset(map(job_id_for, entries))
        self._reconcile(starting=False)
        added, removed = sorted(set(entries) - before), sorted(before - set(entries))
        log_event(logger, "schedule",
                  f"scheduler: feeds reloaded: {len(entries)} scheduled"
                  + (f", added {', '.join(added)}" if added else "")
                  + (f", removed {', '.join(removed)}" if removed else ""),
                  status="reloaded", feeds=len(entries))
        return True

    def request_stop(self) -> None:
        """Ask running jobs to finish their current batch and stop; no new run starts."""
        if not self.stop.is_set():
            logger.warning("scheduler: stop requested; finishing the current batch")
        self.stop.set()
        with self._settled_cond:
            self._settled_cond.notify_all()

    def _scheduler_failed(self, exc: Exception) -> None:
        """The scheduler's loop failed (its job store cannot be written): stop, saying why."""
        self.failure = _job_store_failure(self.settings.state_dir / JOBSTORE_FILE, exc)
        logger.error("scheduler: stopping: %s", shown(self.failure))
        self.request_stop()

    def shutdown(self) -> None:
        """Stop firing, wait for running jobs to return, release the job store."""
        global _active
        self.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        with _active_lock:
            if _active is self:
                _active = None
        logger.info("scheduler: stopped")

    def act_on_signal(self, *, reload: bool = True) -> None:
        """A signal the handler recorded is acted on (outside the handler): a stop signal becomes
        a stop request, SIGHUP a :meth:`reload` (with ``reload``; else it is ignored)."""
        if self.signalled is not None and not self.stop.is_set():
            logger.warning("scheduler: %s received", signal.Signals(self.signalled).name)
            self.request_stop()
        if self.reload_requested and not self.stop.is_set():
            self.reload_requested = False
            if reload:
                logger.info("scheduler: SIGHUP received; reloading the feeds")
                self.reload()
            else:
                logger.info("scheduler: SIGHUP ignored: --once-catchup runs the feeds it started with")

    def serve(self) -> None:
        """Block until :meth:`request_stop` (or a recorded stop signal), then shut down."""
        try:
            while not self.stop.wait(SIGNAL_POLL_SECONDS):
                self.act_on_signal()
        finally:
            self.shutdown()

    def catch_up(self, timeout: float | None = None) -> list[str]:
        """Start, run every missed job that is within the grace time once, then shut down.

        Returns the job ids that were due. Used by `posfeed schedule --once-catchup`.
        """
        due = self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._settled_cond:
                while not (self.stop.is_set() or set(due) <= self._settled):
                    self.act_on_signal(reload=False)
                    left = SIGNAL_POLL_SECONDS if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._settled_cond.wait(min(left, SIGNAL_POLL_SECONDS))
        finally:
            self.shutdown()
        return due

    # ---- running ---------------------------------------------------------------------------------

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._scope_locks_guard:
            return self._scope_locks.setdefault(scope, threading.Lock())

    def execute(self, feed_name: str) -> Any:
        """Run one feed now (called by its job): reload the feed file, wait for the scope, run."""
        entry = self.feeds.get(feed_name)
        if entry is None:
            logger.warning("feed %s: no longer scheduled; ignored", feed_name)
            return None
        feed = entry.feed
        if entry.path is not None:
            try:
                feed = load_feed(entry.path)
            except ConfigError as exc:
                log_event(logger, "run", f"feed {feed_name}: not run, feed file invalid: {exc}",
                          level=logging.ERROR, feed=feed_name, status="config_error",
                          exit_code=exc.exit_code)
                self.exit_codes[feed_name] = exc.exit_code
                # a problem of the feed as last read (its alerts, its scope): opened once, resolved
                # by the first run after the file is mended
                from pipeline.runner import observe_refusal

                observe_refusal(self.settings, feed, exc)
                return exc.exit_code
            if not feed.enabled:
                logger.info("feed %s: disabled in its file; skipped", feed_name)
                return None
            self._follow_schedule_change(entry, feed)
        lock = self._scope_lock(feed.scope)
        while not lock.acquire(timeout=0.5):
            if self.stop.is_set():
                logger.info("feed %s: stop requested while waiting for scope %s", feed_name, feed.scope)
                return None
        try:
            if self.stop.is_set():
                return None
            slots = getattr(_slots, "times", None) or []
            dates = scheduled_business_dates(feed, slots, now=datetime.now(UTC))
            if dates is not None:
                logger.info("feed %s: catching up the run of %s: business dates %s to %s", feed_name,
                            min(slots).isoformat(), dates[0], dates[-1])
            result = self.job(feed, self.settings, self.stop, dates)
            if isinstance(result, int):
                self.exit_codes[feed_name] = result
            return result
        finally:
            lock.release()

    def _follow_schedule_change(self, entry: ScheduledFeed, feed: Feed) -> None:
        """A feed file edited while the daemon runs: later runs follow its new schedule."""
        if (feed.schedule, feed.timezone) == (entry.feed.schedule, entry.feed.timezone):
            return
        self.feeds[feed.name] = ScheduledFeed(feed, entry.path)
        job_id = job_id_for(feed.name)
        if not self.scheduler.running or self.scheduler.get_job(job_id) is None:
            return
        if not feed.schedule:
            logger.warning("feed %s: schedule removed from its file; this is its last scheduled run",
                           feed.name)
            self.scheduler.remove_job(job_id)
            return
        self.scheduler.reschedule_job(job_id, trigger=trigger_for(feed))
        logger.info("feed %s: schedule changed to %r (%s)", feed.name, feed.schedule, feed.timezone)

    def _on_event(self, event: JobEvent) -> None:
        if isinstance(event, JobSubmissionEvent) and event.code == EVENT_JOB_SUBMITTED:
            scheduled = event.scheduled_run_times[-1]
            late = datetime.now(scheduled.tzinfo) - scheduled
            if late > timedelta(minutes=1):
                logger.info("%s: catching up the run scheduled at %s (%s late)", event.job_id,
                            scheduled.isoformat(), _short(late))
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log_event(logger, "schedule", f"{event.job_id}: previous run still going; this one skipped",
                      level=logging.WARNING, job=event.job_id, status="skipped_overlap")
        elif event.code == EVENT_JOB_MISSED and isinstance(event, JobExecutionEvent):
            log_event(logger, "schedule",
                      f"{event.job_id}: run at {_iso(event.scheduled_run_time)} missed the grace time",
                      level=logging.WARNING, job=event.job_id, status="missed")
        elif event.code == EVENT_JOB_ERROR and isinstance(event, JobExecutionEvent):
            logger.error("%s: job raised %s: %s", event.job_id, type(event.exception).__name__,
                         event.exception)
        with self._settled_cond:
            self._settled.add(event.job_id)
            self._settled_cond.notify_all()

    def next_run_times(self) -> Mapping[str, datetime | None]:
        """Feed name -> the stored next run time (while started)."""
        return {job.name: job.next_run_time for job in self.scheduler.get_jobs()}


def _scheduled(feeds: Iterable[ScheduledFeed | Feed]) -> dict[str, ScheduledFeed]:
    """Feed name -> entry, for the enabled feeds with a schedule. Raises ConfigError for a
    schedule that is not a valid cron expression (before anything is scheduled)."""
    out: dict[str, ScheduledFeed] = {}
    for item in feeds:
        entry = item if isinstance(item, ScheduledFeed) else ScheduledFeed(item)
        if entry.feed.enabled and entry.feed.schedule:
            trigger_for(entry.feed)
            out[entry.feed.name] = entry
    return out


def _job_store_failure(path: Path, exc: Exception) -> Exception:
    """What stops the daemon when its loop fails: the job store file's problem (exit 74, with
    what to do), else the error itself (a bug, exit 70)."""
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    if not isinstance(cause, sqlite3.Error | OSError):
        return exc
    if isinstance(cause, OSError):
        return state_io_error(cause, path)
    text = str(cause)
    if "full" in text.lower():
        advice = "free disk space there, then start posfeed schedule again"
    else:
        advice = "check the disk and the permissions of the state folder, then start posfeed schedule again"
    return StateIOError(path, f"job store: {text}", advice)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "never"


def _short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def select_feeds(
    loaded: Sequence[tuple[Path, Feed]], names: Sequence[str] = ()
) -> list[ScheduledFeed]:
    """The feeds to schedule: enabled, with a schedule, and among ``names`` when given.

    Raises ConfigError for a name that matches no feed.
    """
    by_name = {feed.name: (path, feed) for path, feed in loaded}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"no feed named {', '.join(map(repr, unknown))}", key="--feed")
    chosen = [by_name[n] for n in names] if names else list(by_name.values())
    return [ScheduledFeed(feed, path) for path, feed in chosen if feed.enabled and feed.schedule]


def _load_selected(settings: Settings, names: Sequence[str], *, strict: bool = False) -> list[ScheduledFeed]:
    """The feeds of the feeds folder (and feed files given by path) to schedule. An invalid file
    of a feed not named is logged and left out, or with ``strict`` (a reload) raised."""
    paths = [n for n in names if n.endswith(".toml") and Path(n).exists()]
    loaded: list[tuple[Path, Feed]] = [(Path(p), load_feed(p)) for p in paths]
    if settings.feeds_dir.is_dir() or not paths:  # no folder and no feed file given: say so
        for result in load_feeds(settings.feeds_dir):
            if result.feed is not None:
                loaded.append((result.path, result.feed))
            elif result.path.stem in names or not names:
                assert result.error is not None
                if result.path.stem in names or strict:
                    raise result.error
                logger.error("feed file %s is invalid and is not scheduled: %s", result.path, result.error)
    by_path = {path.resolve(): (path, feed) for path, feed in loaded}
    wanted = [Path(n).stem if n in paths else n for n in names]
    return select_feeds(list(by_path.values()), wanted)


def _tell_missing_env(selected: Sequence[ScheduledFeed], *, refuse: bool) -> None:
    """Name each variable the feeds' runs read that is not set, as `posfeed feeds` does, when the
    daemon starts rather than at a first run hours later. ``refuse`` (feeds named with ``--feed``):
    a ConfigError, the daemon does not start; else the daemon runs its other feeds (a feed's
    trouble stops that feed only: its runs exit 78, as a run by hand would)."""
    from pipeline.logs import say

    missing: dict[tuple[str, str], list[str]] = {}
    for item in selected:
        for need in env_needs(item.feed):
            if env_status(need) == "missing":
                missing.setdefault((need.variable, need.key), []).append(item.feed.name)
    for (variable, key), names in missing.items():
        say(f"posfeed: error: environment variable {variable} is not set ({key} of {', '.join(names)})",
            event="feed_env_missing", level=logging.ERROR, variable=variable, key=key, feeds=names)
    if missing and refuse:
        variables = ", ".join(variable for variable, _ in missing)
        raise SecretError(told(f"posfeed schedule is not starting: the feeds given read environment "
                               f"variables that are not set ({variables}); set them (`posfeed feeds` "
                               "lists them)"))


def _install_signal_handlers(scheduler: FeedScheduler) -> dict[int, Any]:
    """SIGTERM/SIGINT: finish the current batch and stop; a second signal exits at once. SIGHUP:
    reload the feeds (see :meth:`FeedScheduler.reload`).

    Returns the previous handlers (to restore). Only the main thread can install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, frame: object) -> None:
        # only record: this may run while the main thread holds the stop event's own lock
        if scheduler.signalled is not None:
            logger.error("scheduler: second %s, exiting now; in-doubt transactions are settled by the "
                         "next run", signal.Signals(signum).name)
            os._exit(130)
        scheduler.signalled = signum

    def handle_hup(signum: int, frame: object) -> None:
        scheduler.reload_requested = True  # only record, as above

    previous: dict[int, Any] = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, handle_hup)
    return previous


def schedule_command(
    settings: Settings,
    feed_names: Sequence[str] = (),
    *,
    once_catchup: bool = False,
    misfire_grace_seconds: int = DEFAULT_MISFIRE_GRACE_SECONDS,
) -> int:
    """`posfeed schedule`: run the daemon until SIGTERM/SIGINT (exit 0; SIGHUP reloads the feeds),
    or with ``once_catchup`` run the missed runs within the grace time and exit with the worst of
    their exit codes.

    Raises ConfigError when no enabled feed has a schedule.
    """
    selected = _load_selected(settings, feed_names)
    if not selected:
        raise ConfigError("no enabled feed with a schedule", source=settings.feeds_dir)
    register_feed_secrets([s.feed for s in selected])
    _tell_missing_env(selected, refuse=bool(feed_names))
    try:  # one scheduler per state dir: two would fire every job twice
        daemon_lock = RunLock.acquire(settings.state_dir, DAEMON_LOCK_SCOPE, feed="posfeed schedule")
    except LockHeldError as exc:
        raise TransientError(f"another posfeed schedule uses {settings.state_dir}: {exc.holder}") from None
    previous_handlers: dict[int, Any] = {}
    try:
        scheduler = FeedScheduler(selected, settings, misfire_grace_seconds=misfire_grace_seconds,
                                  only_selected=bool(feed_names),
                                  loader=lambda: _load_selected(settings, feed_names, strict=True))
        previous_handlers = _install_signal_handlers(scheduler)
        if once_catchup:
            due = scheduler.catch_up()
            if not due:
                logger.info("scheduler: nothing to catch up")
            from pipeline.errors import worst_exit_code

            if scheduler.failure is not None:
                raise scheduler.failure
            return worst_exit_code(list(scheduler.exit_codes.values()))
        logger.info("scheduler: %s scheduled; job store %s", counted(len(selected), "feed"),
                    settings.state_dir / JOBSTORE_FILE)
        scheduler.start()
        scheduler.serve()
        if scheduler.failure is not None:
            raise scheduler.failure
        return EXIT_OK
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        daemon_lock.release()
