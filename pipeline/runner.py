"""One run of a feed: lock → settle in-doubt → fetch → transform → submit (the carried-over work
no request carried and the sales in doubt, then the files') → finish files → report → problems
and alerts.

:func:`run_feed` is what ``posfeed run`` (and the scheduler) call; :func:`rerun_feed` resends a
selection of failed transactions (``posfeed rerun``). Both are runs of their own, recorded in the
ledger with their own reports, and return a :class:`RunSummary`.

**Credentials first**: before any file is touched, a run proves the target's credentials with
one cheap call (:mod:`pipeline.sinks.probe`; not in a dry run) and logs in to the source and
checks its folder. A refusal (a secret, a login, a missing folder) raises (exit 78) and nothing is
recorded. A source that cannot be *reached* (connection failed, timed out) holds back no work that
needs only the platform: when earlier runs left some (the carry-over below), the run goes on
without its source (a dry run too): it sends that work, reads no file, names the source in its
summary (``source_unreachable``) and exits 75. With nothing carried over, or the platform
unreachable too, it raises the source's error (exit 75) and nothing is recorded.

**Resume by default**: older work comes before new work. Transactions earlier runs of the scope
left ``queued``, in doubt (``sending``, killed mid-request) or failed-retryable for a transient
reason, a stop or refused credentials (within the feed's ``[resume]`` caps) are taken over. What
may already be on the platform (in doubt, or carried by a request before) is settled first, before
the files are fetched; the platform's "transaction ID already used" settles the ones that had
landed; but sales: a sale in doubt waits with what no request ever carried until the run's files
are read, and one a void names is then looked up, never resent (found: accepted, the void
``void_of_sent_sale``; not found: ``post_voided``; an Antavo guest's, which cannot be read, is
resent as before). What no request ever carried waits until the run's files are read, so a void in
them keeps such a sale off the platform (``post_voided``), and is then sent before the files' transactions
(also when the files cannot be listed or read: nothing waits behind a broken source); a return
not in doubt whose sale is not known to be on the platform (the ledger does not hold it accepted:
waiting for it, ``original_not_found``, or failed in an outage before it came) goes after the sales
of the files, whatever its last code; one in doubt is read back first all the same and, when
neither it nor its sale is found on the platform (held ``original_not_found``), is queued again
after the files' sales (unless the files queued it already: an unchanged copy of it). A stop
while the files are read leaves what waits for them queued (or still waiting) for the next run.
Every summary says how many it carried over (``carried_over``) and how many are still waiting for
the next run (``waiting``, ``waiting_oldest_at``, ``waiting_oldest_age_seconds``) or for an
explicit rerun (``needs_rerun``). A **dry run** does all of it against a throwaway copy of the
ledger, sends nothing, touches no source file, and writes the same reports.

Exit codes (:attr:`RunSummary.exit_code`): 0 everything final and balanced, but for returns
waiting for their sale within ``resume.sale_wait_hours`` (nothing to try again: the summary says
how many wait and until when, ``waiting_for_sale`` and ``waiting_for_sale_until``); 65 data errors
(rejected rows, conflicts, unreadable files, transactions the platform refused, a return whose
sale never came within its wait); 75 try again later (other retryable failures or in-doubt
transactions left, files that could not be fetched, a source not reached, a stop before the end;
a held lock raises
LockHeldError, also 75); 78 the platform refused our
credentials mid-run (the rest is left for the next run), or the source may not create the folder
a file is archived or quarantined into (the file is left where it is: ``source_errors``); 70 when
the report does not balance: what came in is not all counted in its states (``unaccounted``, a
bug, whatever else the run saw; what a run leaves queued or in doubt is counted: the next run's
work, exit 75), or for an unexpected error.
Exit codes say what is new in this run: an unreadable file is reported once, then quarantined and
skipped by later runs. Every run reports its backlog and brings the feed's problems up to date
(:mod:`pipeline.health`, :mod:`pipeline.problems`); the alerts they owe are delivered last.
"""

from __future__ import annotations

import gc
import logging
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.alerts import alert_for, deliver_pending
from pipeline.config import Feed, Settings
from pipeline.core.readstats import ReadStats
from pipeline.core.rejected_copies import customer_columns
from pipeline.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_TEMPFAIL,
    ConfigError,
    LockLostError,
    PlatformUnavailableError,
    PosfeedError,
    SourceUnavailableError,
    state_io_error,
)
from pipeline.expected import SeenFile, note_other_feeds, report_missing
from pipeline.health import Backlog, RunFacts, answered, backlog_of, covers, observe, relevant
from pipeline.ledger import FileRecord, Ledger, TxnState, new_run_id
from pipeline.ledger.records import timestamp
from pipeline.locks import RunLock
from pipeline.logs import (
    counted,
    keep_shown,
    log_event,
    mask_customer_id,
    mask_quoted_customers,
    shown,
    told,
)
from pipeline.problems import Problem, reconcile, sorted_problems
from pipeline.progress import NullProgress, Progress
from pipeline.reports import left_for_next_run, returns_waiting, unaccounted_words
from pipeline.scope_locks import LockWatch, RunStop, lock_kind
from pipeline.sinks.base import ORIGINAL_NOT_FOUND, VOIDED_IN_DOUBT, Sink
from pipeline.sources import open_source
from pipeline.sources.base import RemoteFile, Source, SourceFileChangedError, SourceFileGoneError
from pipeline.sources.discovery import lookback_dates
from pipeline.stages.fetch import FetchResult, StagedFile, fetch_new_files, identity_trusted
from pipeline.stages.report import report_folder, run_report, write_run_report
from pipeline.stages.submit import decide_rows, submit_rows
from pipeline.stages.transform import TransformOutcome, transform_staged
from pipeline.stages.voids import settle_voided_sales

__all__ = [
    "RerunSelection", "RunSummary", "business_dates_for", "exit_cause", "exit_code_of", "observe_refusal",
    "rerun_feed", "run_feed",
]

log = logging.getLogger(__name__)

LOCK_LOST = "lock_lost"  # the status of a run that lost its scope's lock (exit 75)

SinkFactory = Callable[[Feed], Sink]
StageHook = Callable[[str, str], None]  # (stage, "start" | "end")


@dataclass(frozen=True)
class RunSummary:
    """The outcome of one run: its id, its `--json` document and its exit code."""

    run_id: str
    feed: str
    exit_code: int
    summary: dict[str, Any]
    reports_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `posfeed run --json` document."""
        data = dict(self.summary)
        data["exit_code"] = self.exit_code
        data["reports_path"] = str(self.reports_path) if self.reports_path else None
        return data


@dataclass(frozen=True)
class RerunSelection:
    """What a rerun resends: failed transactions of a run, a file, a store and/or a business day."""

    run_id: str | None = None
    failed: bool = False  # every failed transaction of the feed
    file: str | None = None
    store_id: str | None = None
    business_date: date | None = None
    include_permanent: bool = False

    def is_empty(self) -> bool:
        """True when nothing selects transactions."""
        return not (self.run_id or self.failed or self.file or self.store_id or self.business_date)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded with the run."""
        return {
            "run_id": self.run_id,
            "failed": self.failed,
            "file": self.file,
            "store_id": self.store_id,
            "business_date": self.business_date.isoformat() if self.business_date else None,
            "include_permanent": self.include_permanent,
        }


def business_dates_for(feed: Feed, *, now: datetime | None = None) -> list[date]:
    """Today in the feed's timezone and the ``source.lookback_days`` before it, oldest first."""
    today = (now or datetime.now(UTC)).astimezone(ZoneInfo(feed.timezone)).date()
    return lookback_dates(today, feed.source.lookback_days)


def exit_code_of(summary: dict[str, Any], *, dry_run: bool = False) -> int:
    """The exit code a run's summary calls for (see the module docstring)."""
    if summary.get("unaccounted"):  # what came in is not all counted: a bug, whatever else
        return EXIT_INTERNAL
    if summary.get("source_errors"):
        return EXIT_CONFIG
    data_errors = (
        summary.get("transactions_rejected", 0)
        or summary.get("conflicts", 0)
        or summary.get("failed_permanent", 0)
        or summary.get("unreadable_files")
    )
    if data_errors:
        return EXIT_DATA
    # returns within their wait for a sale that has not arrived are not work to try again
    retryable = summary.get("failed_retryable", 0) - summary.get("waiting_for_sale", 0)
    left = (retryable > 0 or summary.get("in_doubt", 0) or summary.get("fetch_failures")
            or summary.get("source_unreachable"))
    if left or summary.get("stopped") or (not dry_run and summary.get("queued", 0)):
        return EXIT_TEMPFAIL
    if not summary.get("balanced", False):
        return EXIT_INTERNAL
    return EXIT_OK


def exit_cause(summary: dict[str, Any], exit_code: int) -> str:
    """Why a run did not exit 0, in one line from its summary ("" when it did)."""
    if exit_code == EXIT_OK:
        return ""
    s = summary
    parts: list[str] = []
    if s.get("credentials_refused"):
        parts.append(f"the platform refused our credentials ({s['credentials_refused']}); sending "
                     "stopped: once they are fixed, the next run sends what is left")
    if s.get("transactions_rejected"):
        parts.append(f"{counted(s['transactions_rejected'], 'transaction')} rejected (see rejects.csv)")
    if s.get("conflicts"):
        parts.append(f"{counted(s['conflicts'], 'conflict')} held for review")
    for item in s.get("unreadable_files") or []:
        parts.append(f"unreadable file {item['file']}: {item['reason']}")
    for item in s.get("fetch_failures") or []:
        parts.append(f"not fetched: {item['file']}: {item['reason']}")
    for item in s.get("source_errors") or []:
        parts.append(f"{item['file']} left where it is: {item['reason']}")
    if s.get("source_unreachable"):
        parts.append(f"source not reached, no file read: {s['source_unreachable']}")
    for cause in s.get("causes") or []:
        if cause["state"] == "failed_retryable" and cause["code"] == ORIGINAL_NOT_FOUND:
            continue  # waiting within resume.sale_wait_hours: not why a run exits non-zero
        what = "failed retryable" if cause["state"] == "failed_retryable" else "refused by the platform"
        reason = f"{cause['code'] or '?'}: {cause['message'] or ''}".rstrip(": ")
        parts.append(f"{cause['count']} {what}: {reason}")
    # sales a lookup did not find as a void named them, the run ending before it post-voided them
    # (all of them: ``causes`` names only the most frequent; a summary from before the count has
    # only those)
    among_causes = sum(c["count"] for c in s.get("causes") or []
                       if c["state"] == "failed_permanent" and c["code"] == VOIDED_IN_DOUBT)
    voided = s.get("voided_in_doubt", among_causes)
    feed = s.get("feed", "NAME")
    if voided:
        parts.append(f"the next run or `posfeed rerun --feed {feed} --failed` post-voids the "
                     f"{counted(voided, 'sale')} voided at the till and not found on the platform, "
                     "sending nothing")
    if (refused := s.get("failed_permanent", 0) - voided) > 0:
        which = "the 1" if refused == 1 else f"each of the {refused}"
        which = f"why {which} refused for good"
        parts.append(f"{which}: error_code and error_message in detail.csv; once fixed, `posfeed rerun "
                     f"--feed {feed} --failed --include-permanent` sends {'it' if refused == 1 else 'them'} "
                     "again")
    if s.get("stopped"):
        parts.append("stopped before the end (signal)")
    if s.get("error"):
        parts.append(f"ended by an error: {s['error']}")
    # what it left is the next run's work, not a report that does not balance
    queued = 0 if s.get("dry_run") else s.get("queued", 0)
    parts += left_for_next_run(s.get("in_doubt", 0), queued)
    if s.get("unaccounted"):
        parts.append(f"the run's report does not balance: {unaccounted_words(s['unaccounted'])} "
                     "(a bug: please report it with the log and summary.csv)")
    return told("; ".join(parts))


def _default_sink_factory(feed: Feed) -> Sink:
    from pipeline.sinks import make_sink

    return make_sink(feed)


@contextmanager
def _open_ledger(settings: Settings, dry_run: bool, workdir: Path) -> Iterator[Ledger]:
    """The real ledger, or for a dry run a private copy of it (the real one is only read)."""
    if settings.ledger_url:  # PostgreSQL: a dry run works on temporary copies of the tables
        shared = Ledger(settings.ledger_url, private_copy=dry_run)
        log.info("ledger: %s%s", shared.location, " (a private copy for the dry run)" if dry_run else "")
        try:
            yield shared
        finally:
            shared.close()
        return
    path = settings.ledger_path
    if dry_run:
        copy = workdir / "ledger.sqlite"
        if path.exists():
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        path = copy
    ledger = Ledger(path)
    try:
        yield ledger
    finally:
        ledger.close()


@dataclass
class _Context:
    feed: Feed
    settings: Settings
    ledger: Ledger
    run_id: str
    dry_run: bool
    staging_dir: Path
    stop: threading.Event | None
    progress: Progress
    make_sink: SinkFactory
    on_stage: StageHook | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    source: Source | None = None  # opened and checked before the run started
    source_down: SourceUnavailableError | None = None  # or why it could not be reached then

    def refused(self) -> bool:
        """True once the platform refused our credentials in this run."""
        return bool(self.notes.get("credentials_refused"))
    error: BaseException | None = None  # what stopped the run, if anything

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def lock_lost(self) -> bool:
        """True once the run's scope lock is known lost (another host may run the scope now)."""
        return isinstance(self.stop, RunStop) and self.stop.lock_lost()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Bracket a stage for the ``on_stage`` hook (benchmarks measure stages with it)."""
        if self.on_stage is not None:
            self.on_stage(name, "start")
        try:
            yield
        finally:
            if self.on_stage is not None:
                self.on_stage(name, "end")

    def source_error(self, name: str, error: ConfigError) -> None:
        """The source refused to do something with a file for a reason ops must fix (a folder it
        may not create): logged, listed as ``source_errors`` and the run exits 78."""
        log.error("%s: %s", name, error)
        self.notes.setdefault("source_errors", []).append({"file": name, "reason": str(error)})

    def submit(self, row_ids: Sequence[int]) -> None:
        if not row_ids:
            return
        if self.dry_run:  # every decision but the platform's, as a real run takes it
            settled, looked_up = decide_rows(self.ledger, self.feed, self.run_id, row_ids)
            log.info("dry run: %s would be sent, %d not sendable%s",
                     counted(len(row_ids) - settled, "transaction"), settled - looked_up,
                     f", {counted(looked_up, 'sale')} a void names would be looked up on the platform, "
                     "not sent (shown post_voided, as when the platform does not hold it)"
                     if looked_up else "")
            settle_voided_sales(self.ledger, self.feed.scope, self.run_id, row_ids)  # the private copy's
            return
        with gc_frozen():
            result = submit_rows(
                self.ledger, self.feed, self.run_id, row_ids, self.make_sink,
                stop=self.stop, progress=self.progress,
            )
        if not self.lock_lost():  # voids whose sale was in doubt, now that it is settled
            settle_voided_sales(self.ledger, self.feed.scope, self.run_id, row_ids)
        if result.stopped:
            self.notes["stopped"] = True
        if result.credentials_refused:
            self.notes["credentials_refused"] = result.credentials_refused
            if not self.lock_lost():  # else the rows are the next holder's
                self.ledger.requeue_refused(row_ids, self.run_id)  # the rest stays queued

    def finish_files(self, source: Source | None) -> None:
        """Keep, archive or delete the source files of this feed whose rows are all final (not
        once the scope's lock is lost: the files are the next holder's to finish)."""
        if self.dry_run or self.lock_lost():
            return
        action = self.feed.source.after_success
        for record in self.ledger.finishable_files(self.feed.scope):
            if record.feed != self.feed.name:
                continue
            if action == "keep" or record.superseded_by_file_id is not None:
                # a superseded file's name holds newer content now, which its own record finishes
                self.ledger.finish_file(record.id, "keep")
                continue
            if source is None:
                continue
            try:
                if not self._may_finish(source, record):
                    continue
                source.finish(RemoteFile(record.name, record.size, record.mtime), action)
            except ConfigError as exc:  # left where it is and recorded, not finished
                self.source_error(record.name, exc)
                continue
            except Exception as exc:  # the source's errors are already translated; keep going
                log.warning("%s: could not %s it: %s (tried again next run)", record.name, action, exc)
                continue
            self.ledger.finish_file(record.id, action)

    def _may_finish(self, source: Source, record: FileRecord) -> bool:
        """Whether ``source.finish`` may judge the file by the size and mtime ``record`` holds:
        they stand for its content (the fetch stage's :func:`identity_trusted`). A record read
        too close to its mtime is read again and compared, when a read now would be trusted;
        otherwise, or when the content changed under the same size and mtime, the file is left
        where it is for a later run to read (``files_left_in_place``), never moved unread."""
        if identity_trusted(record):
            return True
        why = "modified too close to the fetch that read it to tell it from a rewrite since"
        if identity_trusted(replace(record, fetched_at=timestamp())):
            began = timestamp()
            try:
                fetched = source.fetch(RemoteFile(record.name, record.size, record.mtime), self.staging_dir)
            except SourceFileGoneError:
                return True  # finish() finds it gone
            except SourceFileChangedError:
                return True  # visibly another file (or none): finish() leaves it alone
            fetched.path.unlink(missing_ok=True)
            self.notes["files_fetched"] = self.notes.get("files_fetched", 0) + 1
            self.notes["bytes_fetched"] = self.notes.get("bytes_fetched", 0) + fetched.size
            if (fetched.size, fetched.mtime) != (record.size, record.mtime):
                return True  # visibly another file: finish() leaves it alone
            if fetched.sha256 == record.sha256:
                self.ledger.confirm_file(record.id, began)
                return True
            why = "its content changed since it was read, keeping its size and mtime"
        reason = f"{why}; left where it is for a later run to read"
        log.info("%s: not going to %s it in this run: %s", record.name,
                 self.feed.source.after_success, reason)
        self.notes.setdefault("files_left_in_place", []).append({"file": record.name, "reason": reason})
        return False


def _execute(
    feed: Feed,
    settings: Settings,
    *,
    kind: str,
    dry_run: bool,
    business_dates: list[date] | None,
    selection: RerunSelection | None,
    stop: threading.Event | None,
    progress: Progress | None,
    make_sink: SinkFactory | None,
    now: datetime | None,
    on_stage: StageHook | None = None,
) -> RunSummary:
    try:
        # a ledger shared by several hosts (PostgreSQL) holds the scope locks too: one host runs a scope
        lock = lock_kind(settings.ledger_url, settings.state_dir)(feed.scope, feed=feed.name)
    except OSError as exc:  # a read-only or full state folder
        raise state_io_error(exc, exc.filename or settings.state_dir) from exc
    workdir: Path | None = None
    source: Source | None = None
    down: SourceUnavailableError | None = None  # the source could not be reached at the start
    refused: PosfeedError | None = None  # the run then refused before it started
    watch = LockWatch(lock, scope=feed.scope)
    try:
        if stop is None or not stop.is_set():
            try:
                source, down = _preflight(feed, kind=kind, dry_run=dry_run, probe=make_sink is None)
            except PosfeedError as exc:  # the caller prints or logs it
                if not dry_run:
                    observe_refusal(settings, feed, exc)
                raise
        workdir = Path(tempfile.mkdtemp(prefix="posfeed-dry-")) if dry_run else None
        with _open_ledger(settings, dry_run, workdir or settings.state_dir) as ledger:
            if down is not None:  # before anything is recorded, as a refusal in _preflight
                try:
                    _start_without_source(ledger, feed, down, dry_run=dry_run, probe=make_sink is None)
                except PosfeedError as exc:
                    refused = exc
                    raise
            holder, key = getattr(lock, "backend_pid", None), getattr(lock, "key", None)
            if holder is not None and key is not None:  # a lock that can be lost: checked before each request
                ledger.guard_scope(feed.scope, holder, key)
            elif isinstance(lock, RunLock):  # its file removed or replaced: lost as well
                ledger.guard_lock_file(feed.scope, lock.still_held)
            abandoned = ledger.close_abandoned_runs(feed.scope)
            if abandoned:
                log.warning("runs %s of scope %r ended without finishing (process killed?); "
                            "their pending transactions are settled first", ", ".join(abandoned), feed.scope)
                if not dry_run:
                    if feed.logging.hash_customer_ids:
                        # before the crashed runs' checkouts are masked: messages are found by clear ids
                        ledger.sweep_clear_customer_ids(feed.scope, customer_columns(feed))
                        for crashed in abandoned:
                            ledger.scrub_customer_ids(feed.scope, mask_customer_id, run_id=crashed)
                    if feed.records != "transactions":
                        for crashed in abandoned:
                            ledger.scrub_profiles(feed.scope, run_id=crashed)
                    _report_crashed(ledger, settings, abandoned)
                    for crashed in abandoned:  # what they had staged is fetched again if needed
                        shutil.rmtree(settings.staging_dir / crashed, ignore_errors=True)
            run_id = new_run_id() + ("-dry" if dry_run else "")
            ledger.start_run(
                feed=feed.name,
                scope=feed.scope,
                kind=kind,
                dry_run=dry_run,
                selection=selection.to_dict() if selection else None,
                run_id=run_id,
            )
            staging = (workdir / "staging") if workdir else settings.staging_dir / run_id
            ctx = _Context(
                feed, settings, ledger, run_id, dry_run, staging, RunStop(stop, watch.lost),
                progress or NullProgress(),
                make_sink or _default_sink_factory, on_stage, source=source, source_down=down,
            )
            log.info("%s %s of feed %s (scope %s)%s", kind, run_id, feed.name, feed.scope,
                     " [dry run]" if dry_run else "")
            reporting = False
            try:
                if kind == "rerun":
                    assert selection is not None
                    _rerun_body(ctx, selection)
                else:
                    _run_body(ctx, business_dates or business_dates_for(feed, now=now), now)
                if watch.lost.is_set():
                    raise LockLostError(feed.scope, LockLostError.LOCK_FILE if isinstance(lock, RunLock)
                                        else LockLostError.PG_SESSION)
                with ctx.stage("report"):
                    reporting = True
                    stopped = ctx.notes.get("stopped") or ctx.refused()
                    # its problems and its end are written only while the lock is held (LockLostError)
                    summary = _finish(ctx, status="stopped" if stopped else "finished")
            except BaseException as exc:
                if reporting and not isinstance(exc, LockLostError):
                    raise  # the run's end is not recorded: the next run closes it as crashed
                # an OSError that reaches here is about our own files (staging, state folder):
                # every remote edge translates its own
                error = (state_io_error(exc, exc.filename or settings.state_dir)
                         if isinstance(exc, OSError) else exc)
                keep_shown(error, _error_shown(ctx, error))
                ctx.notes["error"] = f"{type(error).__name__}: {shown(error)}"
                if isinstance(error, Exception):  # not for Ctrl-C
                    ctx.error = error
                lost = isinstance(error, LockLostError) or watch.lost.is_set() or not _still_held(lock)
                code = getattr(error, "exit_code", EXIT_INTERNAL)
                try:
                    _finish(ctx, status=LOCK_LOST if lost else "failed", failure_code=code)
                except LockLostError:  # lost since that look: nothing written, only its own end now
                    lost = True
                    _finish(ctx, status=LOCK_LOST, failure_code=code)
                # a run that lost its lock leaves the scope's alerts to the run that holds it now
                if not dry_run and not lost:
                    deliver_pending(ledger, feed)
                if error is not exc:
                    raise error from exc
                raise
            if not dry_run:  # none once the lock is lost: the holder sends them
                deliver_pending(ledger, feed)
            return summary
    except PosfeedError as exc:
        if exc is refused and not dry_run:  # as a refusal in _preflight
            observe_refusal(settings, feed, exc)
        raise
    finally:
        if source is not None:
            source.close()
        watch.close()
        lock.release()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _still_held(lock: object) -> bool:
    """Whether a lock that can be lost is still held (a PostgreSQL session's, or a file lock whose
    file was not removed nor replaced)."""
    still_held: Callable[[], bool] | None = getattr(lock, "still_held", None)
    return still_held is None or still_held()


def _preflight(feed: Feed, *, kind: str, dry_run: bool, probe: bool
               ) -> tuple[Source | None, SourceUnavailableError | None]:
    """Credentials first: read the target's secrets (a missing one is configuration, told before
    any connection), log in to the source and check its folder (runs only; a rerun reads no
    source), then prove the target's credentials (not in a dry run, which sends nothing), before
    any file is touched or anything recorded. Returns the open source; or None and why, when the
    source could not be reached (a refused login or a missing folder raises), without proving
    the target's credentials: :func:`_start_without_source` decides whether the run goes on."""
    source: Source | None = None
    try:
        if probe and not dry_run:
            from pipeline.sinks.probe import resolve_credentials

            resolve_credentials(feed)  # a missing secret is told before any connection
        if kind == "run":
            source = open_source(feed)
            try:
                check = getattr(source, "check", None)
                if check is not None:
                    check()
            except SourceUnavailableError as exc:  # the platform's work may go on without it
                source.close()
                return None, exc
        if probe and not dry_run:
            _prove_credentials(feed)
    except BaseException:
        if source is not None:
            source.close()
        raise
    return source, None


def _prove_credentials(feed: Feed) -> None:
    """One cheap call proving the target's credentials (unless the feed turns it off)."""
    if getattr(feed.target, "check_credentials", True):
        from pipeline.sinks.probe import probe_credentials

        probe_credentials(feed)


def _start_without_source(ledger: Ledger, feed: Feed, down: SourceUnavailableError, *, dry_run: bool,
                          probe: bool) -> None:
    """Whether a run whose source could not be reached goes on: only when earlier runs of the scope
    left work it takes over (queued, in doubt, failed-retryable within the ``[resume]`` caps) and
    the platform is reached (not proven in a dry run). Raises the source's error otherwise (with
    the platform unreachable too), or the platform's refusal of our credentials (exit 78)."""
    caps = feed.resume
    backlog = ledger.backlog(feed.scope, max_attempts=caps.max_attempts, max_age_hours=caps.max_age_hours)
    if not backlog.waiting:
        raise down  # nothing to do without the files
    if probe and not dry_run:
        try:
            _prove_credentials(feed)
        except PlatformUnavailableError as exc:
            log.warning("%s: the platform cannot be reached either: %s", feed.name, shown(exc))
            raise down from None


def _report_crashed(ledger: Ledger, settings: Settings, run_ids: list[str]) -> None:
    """Write the reports of runs whose process died, as the ledger shows them at the crash."""
    for run_id in run_ids:
        record = ledger.run(run_id)
        if record is None:
            continue
        report = run_report(ledger, run_id, extra={"status": "crashed", "exit_code": EXIT_TEMPFAIL})
        ledger.finish_run(run_id, status="crashed", exit_code=EXIT_TEMPFAIL, counts=report.summary)
        s = report.summary
        left = left_for_next_run(s["in_doubt"], s["queued"], who="this run")
        if left:
            log.warning("crashed run %s left %s", run_id, "; ".join(left))
        try:
            write_run_report(report, settings.reports_dir, record.feed, run_id)
        except OSError as exc:
            log.error("could not write the reports of crashed run %s: %s", run_id, exc)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a stage builds a whole day's records.

    They are hundreds of thousands of long-lived objects without cycles, which each collection
    scans again (a sixth of the data path's time at 1M line items, more at 3M); what they leave
    behind is collected once the collector runs again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def gc_frozen() -> Iterator[None]:
    """What is alive when sending starts (modules, the run's state) left out of Python's cyclic
    garbage collections while it sends.

    Each batch's checkouts outlive a few collections, so full collections come every few batches;
    without the freeze each one scanned every object the process holds again (about 5% of the
    sending time). The freeze is process-wide; the objects go back to the collector afterwards.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _carry_over(ctx: _Context) -> tuple[list[int], list[int], list[int], list[int]]:
    """Take over what earlier runs of the scope left unsent (see the module docstring) and settle
    at once what may already be on the platform (in doubt, or sent before without an answer that
    settled it). Returns what waits for this run's files: the transactions no request ever carried
    (a void in the files may still keep a sale of them off the platform), the returns
    whose sale is not known to be on the platform (waiting for it, ``original_not_found``, or
    failed before it came: an outage), to go after the sales they may bring, and the returns in
    doubt of such a sale that their read-back found had not landed (held ``original_not_found``,
    to be queued again after the files: :func:`_queued_again`), and the sales in doubt
    (:meth:`~pipeline.ledger.Ledger.sales_in_doubt`: one a void in the files names is looked up,
    not resent), to settle as soon as the files are read."""
    resume = ctx.feed.resume
    _post_void_looked_up(ctx)
    pending = ctx.ledger.carry_over(ctx.feed.scope, ctx.run_id, max_attempts=resume.max_attempts,
                                    max_age_hours=resume.max_age_hours)
    ctx.notes["carried_over"] = len(pending)
    if not pending:
        return [], [], [], []
    waiting = ctx.ledger.returns_before_their_sale(ctx.feed.scope, pending)
    doubted = ctx.ledger.returns_before_their_sale(ctx.feed.scope, pending, in_doubt=True)
    # sales in doubt (or failed after a request went out) wait too: a void in the files has the
    # target look them up, not resend them
    in_doubt = ctx.ledger.sales_in_doubt(pending)
    unsent = ctx.ledger.never_requested(pending)
    log.info("%s: carrying over %s earlier runs left unsent (queued, in doubt or failed for a "
             "transient reason); %d never sent, or sales that may have landed (in doubt, or failed after "
             "a request went out: a void in the files has them looked up, not resent), %s after this "
             "run's files are read%s",
             ctx.feed.name, counted(len(pending), "transaction"), len((unsent | in_doubt) - waiting),
             "goes" if len((unsent | in_doubt) - waiting) == 1 else "go",
             f", {counted(len(waiting), 'return')} whose sale is not on the platform yet after "
             "this run's files"
             if waiting else "")
    ctx.submit([i for i in pending if i not in unsent and i not in in_doubt and i not in waiting])
    read_back = ctx.ledger.waiting_for_sale([i for i in pending if i in doubted]) if doubted else set()
    return ([i for i in pending if i in unsent and i not in waiting], [i for i in pending if i in waiting],
            [i for i in pending if i in read_back], [i for i in pending if i in in_doubt])


def _post_void_looked_up(ctx: _Context) -> None:
    """Post-void (nothing sent) the sales a lookup found not on the platform as a void named them,
    left refused (``voided_in_doubt``) by a run that ended before it post-voided them: a run and a
    rerun do it first, whatever the rerun selects."""
    settle_voided_sales(ctx.ledger, ctx.feed.scope, ctx.run_id, ctx.ledger.refused_as_voided(ctx.feed.scope))


def _queued_again(ctx: _Context, row_ids: list[int]) -> list[int]:
    """``row_ids`` (returns read back at the start, found not to have landed and held waiting for
    their sale) back in the queue, to go after the sales of the files just read; but those the
    files queued already (an unchanged copy of the return in them: it goes with the files')."""
    still = ctx.ledger.waiting_for_sale(row_ids) if row_ids and not ctx.lock_lost() else set()
    again = [i for i in row_ids if i in still]
    if again:
        ctx.ledger.requeue(again, ctx.run_id, origin="settle")
    return again


def _still_queued(ctx: _Context, row_ids: list[int]) -> list[int]:
    """``row_ids`` but those the run's files settled meanwhile (a sale a void names: post_voided);
    a sale in doubt stays in doubt until it is sent or looked up."""
    if not row_ids:
        return []
    queued = ctx.ledger.rows_in_state(row_ids, TxnState.QUEUED, TxnState.SENDING)
    return [i for i in row_ids if i in queued]


def _run_body(ctx: _Context, business_dates: list[date], now: datetime | None) -> None:
    """Carry over (settling what may be on the platform), read the run's files, settle the sales
    in doubt (``in_doubt``: looked up, not resent, when a void names them), then send what earlier
    runs left and no request carried (``unsent``, but the sales a void of the files names), the
    files' transactions and the returns waiting for their sale (``waiting``, and the returns in
    doubt read back as not landed: ``read_back``, queued again), in that order; finish the files."""
    with ctx.stage("settle"):
        unsent, waiting, read_back, in_doubt = _carry_over(ctx)
    ctx.notes["business_dates"] = [d.isoformat() for d in business_dates]
    if ctx.stopped():
        ctx.notes["stopped"] = True
        return
    if ctx.refused():
        return
    if ctx.source_down is not None:
        _send_without_source(ctx, ctx.source_down, [*in_doubt, *unsent], waiting)
        return
    source = ctx.source
    try:
        try:
            source = source if source is not None else open_source(ctx.feed)
            outcome = _read_files(ctx, source, business_dates, now)
        except Exception:
            # the files could not be read (the source went away, a bug): what earlier runs left
            # is sent all the same, nothing waits behind a broken source; the run fails as before
            if not (ctx.stopped() or ctx.lock_lost()):
                with ctx.stage("submit"):
                    ctx.submit(_still_queued(ctx, [*in_doubt, *unsent]))
            raise
        if ctx.stopped():
            ctx.notes["stopped"] = True
        else:
            with ctx.stage("submit"):
                ctx.submit(_still_queued(ctx, in_doubt))  # older work first, as settled at the start
                if not ctx.refused():
                    ctx.submit([*_still_queued(ctx, unsent), *outcome.to_send, *waiting,
                                *_queued_again(ctx, read_back)])
        if not ctx.refused():
            ctx.finish_files(source)
    finally:
        if source is not None:
            source.close()
        shutil.rmtree(ctx.staging_dir, ignore_errors=True)


def _send_without_source(ctx: _Context, down: SourceUnavailableError, unsent: list[int],
                         waiting: list[int]) -> None:
    """The source could not be reached at the start: no file is read, and what earlier runs left
    goes as after a read that found no new file. The run names the source (``source_unreachable``,
    exit 75) and its error stays the feed's ``run_failed`` problem until a run reaches it."""
    ctx.notes["source_unreachable"] = shown(down)
    ctx.notes.update(_no_files_read())
    ctx.error = down
    log_event(log, "source_unreachable", f"{ctx.feed.name}: {shown(down)}; no file is read in this run, "
              "what earlier runs left is sent all the same and the next run reads the files",
              level=logging.WARNING, feed=ctx.feed.name)
    with ctx.stage("submit"):
        ctx.submit([*_still_queued(ctx, unsent), *waiting])


def _no_files_read() -> dict[str, Any]:
    """The summary's file fields of a run that read no file, as a read that found none has them
    (``missing_files`` too: with the source not reached, no file is known to be missing)."""
    return {"files_new": [], "files_already_processed": 0, "files_fetched": 0, "bytes_fetched": 0,
            "already_processed_files": [], "superseded_files": [], "fetch_failures": [],
            "files_in_quarantine": [], "skipped_files": [], "missing_files": [], "unreadable_files": [],
            **ReadStats().summary()}


def _read_files(ctx: _Context, source: Source, business_dates: list[date], now: datetime | None
                ) -> TransformOutcome:
    """Fetch the run's new files and record them in the ledger (unreadable ones quarantined)."""
    fetched: FetchResult = fetch_new_files(
        source, ctx.ledger, ctx.run_id, ctx.feed, business_dates, ctx.staging_dir, ctx.progress,
        on_stage=ctx.on_stage,
    )
    ctx.notes["files_new"] = [s.record.name for s in fetched.staged]
    ctx.notes["files_already_processed"] = len(fetched.already_processed)
    ctx.notes["files_fetched"] = fetched.files_fetched
    ctx.notes["bytes_fetched"] = fetched.bytes_fetched
    ctx.notes["already_processed_files"] = [{"file": n, "reason": r}
                                            for n, r in fetched.already_processed_files(ctx.run_id)]
    ctx.notes["superseded_files"] = [s.record.name for s in fetched.superseded]
    ctx.notes["fetch_failures"] = [{"file": n, "reason": r} for n, r in fetched.failed]
    ctx.notes["files_in_quarantine"] = list(fetched.quarantined)
    ctx.notes["skipped_files"] = [{"file": n, "reason": r} for n, r in getattr(source, "skipped", [])]
    ctx.notes["missing_files"] = _missing_files(ctx, business_dates, now or datetime.now(UTC), fetched)
    if ctx.feed.records != "transactions":
        from pipeline.stages.members import transform_members

        outcome: TransformOutcome = transform_members(
            ctx.ledger, ctx.run_id, ctx.feed, fetched.staged, now=now or datetime.now(UTC),
            progress=ctx.progress,
        )
    else:
        with gc_paused():
            outcome = transform_staged(
                ctx.ledger, ctx.run_id, ctx.feed, fetched.staged, now=now or datetime.now(UTC),
                progress=ctx.progress, on_stage=ctx.on_stage,
            )
    ctx.notes["unreadable_files"] = [{"file": e.file, "reason": e.reason} for e in outcome.unreadable]
    ctx.notes.update(outcome.read_stats.summary())  # skipped_by_kind, line_items_by_kind
    by_name = {item.record.name: item for item in fetched.staged}
    for error in outcome.unreadable:
        if error.file in by_name:
            _quarantine(ctx, source, by_name[error.file])
    return outcome


def _quarantine(ctx: _Context, source: Source, item: StagedFile) -> None:
    """Set an unreadable file aside once reported: moved into the source's quarantine folder
    (archive and delete sources) or only recorded (keep sources); later runs skip it. Not once
    the scope's lock is lost: the file is the next holder's to read and set aside."""
    if ctx.dry_run or ctx.lock_lost():
        return
    location = None
    if ctx.feed.source.after_success != "keep":
        try:  # the file as fetched, as for archive and delete: never a newer version under its name
            location = source.quarantine(RemoteFile(item.record.name, item.record.size, item.record.mtime))
        except SourceFileChangedError as exc:  # its content as read stays recorded as unreadable
            ctx.ledger.quarantine_file(item.record.id, None)
            log_event(log, "quarantine", f"{ctx.feed.name}: {item.record.name} as fetched is unreadable; "
                      f"{exc}", level=logging.WARNING, feed=ctx.feed.name, file=item.record.name)
            return
        except ConfigError as exc:  # left where it is, recorded so: later runs skip it there
            ctx.source_error(item.record.name, exc)
        except Exception as exc:  # recorded anyway: later runs skip it where it is
            log.warning("%s: could not move it into quarantine: %s (recorded as quarantined)",
                        item.record.name, exc)
    ctx.ledger.quarantine_file(item.record.id, location)
    log_event(log, "quarantine", f"{ctx.feed.name}: {item.record.name} is unreadable and set aside in "
              f"quarantine{f' ({location})' if location else ''}; later runs skip it until it is replaced "
              f"or released", level=logging.WARNING, feed=ctx.feed.name, file=item.record.name)


def _missing_files(ctx: _Context, business_dates: list[date], now: datetime,
                   fetched: FetchResult | None = None) -> list[dict[str, Any]]:
    """Files `[expected]` declares for these days that are overdue (missing) or came late.

    A file's arrival is its modification time at the source, as the ledger recorded it. Only files
    of this feed count (and files at its source whose content another feed recorded first); a
    matching file of another feed of the scope is named in the row, never counted.
    """
    if ctx.feed.expected.cadence == "none":
        return []
    records = ctx.ledger.files(scope=ctx.feed.scope)
    seen = [SeenFile(r.name, datetime.fromtimestamp(r.mtime, UTC))
            for r in records if r.feed == ctx.feed.name]
    if fetched is not None:
        seen += [SeenFile(remote.name, datetime.fromtimestamp(remote.mtime, UTC))
                 for remote, _ in fetched.already_processed]
    rows = report_missing(ctx.feed, business_dates, seen, now)
    note_other_feeds(rows, [(r.feed, r.name) for r in records if r.feed != ctx.feed.name])
    for row in rows:
        if row["status"] == "missing":
            via = row.get("delivered_via_feed")
            log_event(log, "missing_file", f"{ctx.feed.name}: expected file {row['pattern']} is missing "
                      f"(due {row['due_at']})" + (f"; a matching file came through feed {via}, which "
                                                  f"does not count for this feed" if via else ""),
                      level=logging.WARNING, feed=ctx.feed.name,
                      business_date=row["business_date"], store_id=row["store_id"], hour=row["hour"])
    return rows


def _rerun_body(ctx: _Context, selection: RerunSelection) -> None:
    _post_void_looked_up(ctx)  # never resent, not even with --include-permanent
    pending = ctx.ledger.adopt_pending(ctx.feed.scope, ctx.run_id)
    criteria: dict[str, Any] = {
        "run_id": selection.run_id, "file": selection.file, "store_id": selection.store_id,
        "business_date": selection.business_date.isoformat() if selection.business_date else None,
        "feed": None if selection.run_id else ctx.feed.name,
    }
    row_ids = ctx.ledger.select_for_rerun(ctx.feed.scope, include_permanent=selection.include_permanent,
                                          **criteria)
    if not selection.include_permanent:
        left = len(ctx.ledger.select_for_rerun(ctx.feed.scope, include_permanent=True, **criteria))
        if left > len(row_ids):
            log.warning("%s: %s of the selection the platform refused for good (failed_permanent) "
                        "%s not resent; once their cause is fixed, add --include-permanent to send them",
                        ctx.feed.name, counted(left - len(row_ids), "transaction"),
                        "is" if left - len(row_ids) == 1 else "are")
    ctx.notes["carried_over"] = len(pending)
    log.info("%s: rerun resends %s%s", ctx.feed.name, counted(len(row_ids), "failed transaction"),
             f" after settling {len(pending)} pending" if pending else "")
    ctx.ledger.requeue(row_ids, ctx.run_id)
    with ctx.stage("submit"):
        ctx.submit(pending + row_ids)
    if ctx.dry_run:
        return
    source: Source | None = None
    if ctx.feed.source.after_success != "keep":
        try:
            source = open_source(ctx.feed)
        except Exception as exc:
            log.warning("cannot open the source to finish files: %s", exc)
    try:
        ctx.finish_files(source)
    finally:
        if source is not None:
            source.close()
        shutil.rmtree(ctx.staging_dir, ignore_errors=True)  # a file read again to compare


def _finish(ctx: _Context, *, status: str, failure_code: int = EXIT_INTERNAL) -> RunSummary:
    """Record the run's end, write its reports, and return its summary.

    A run that lost its scope lock (``status`` LOCK_LOST: another host may hold the scope now)
    writes only what is its own: it masks its own transactions that are never sent again, then
    records its end only while the ledger still has it running; if the run that holds the scope
    now closed it as crashed first, that record (and its report) stands and no report is written
    here. It leaves the scope's problems and alerts to that run. A run that still held it at the
    start writes its problems and its end only while it holds it (the ledger checks it in the
    same transactions): LockLostError otherwise, nothing written, and the caller ends it so.
    """
    if ctx.feed.logging.hash_customer_ids:
        # messages first: they are found by the clear ids the checkouts still hold
        ctx.ledger.sweep_clear_customer_ids(ctx.feed.scope, customer_columns(ctx.feed), running=ctx.run_id)
        ctx.ledger.scrub_customer_ids(ctx.feed.scope, mask_customer_id, run_id=ctx.run_id)
    else:
        ctx.ledger.forget_sweep(ctx.feed.scope)
    if ctx.feed.records != "transactions":
        ctx.ledger.scrub_profiles(ctx.feed.scope, run_id=ctx.run_id)
    ctx.notes.setdefault("source_errors", [])
    ctx.notes.setdefault("source_unreachable", None)
    ctx.notes.setdefault("files_left_in_place", [])
    backlog = backlog_of(ctx.ledger, ctx.feed, ctx.run_id, datetime.now(UTC))
    # what the run took over from earlier runs (a rerun's resent transactions too), as `backlog` says
    ctx.notes["carried_over"] = backlog.carried
    ctx.notes.update(_backlog_notes(ctx, backlog))
    ctx.notes["causes"] = ctx.ledger.failure_causes(ctx.run_id)
    ctx.notes["voided_in_doubt"] = ctx.ledger.refused_with(ctx.run_id, VOIDED_IN_DOUBT)
    ctx.notes.update(_waiting_for_sale(ctx))
    notes = dict(ctx.notes)
    with gc_paused():  # the report's rows are read and written a page at a time, none kept
        report = run_report(ctx.ledger, ctx.run_id, extra=notes)
        failed = status in ("failed", LOCK_LOST)
        code = failure_code if failed else exit_code_of(report.summary, dry_run=ctx.dry_run)
        if not failed and ctx.refused():
            code = EXIT_CONFIG
        report.summary.update(status=status, exit_code=code, finished_at=datetime.now(UTC).isoformat())
        report.summary.update(_health(ctx, report.summary, backlog, lock_lost=status == LOCK_LOST))
        recorded = ctx.ledger.finish_run(ctx.run_id, status=status, exit_code=code, counts=report.summary,
                                         only_if_running=status == LOCK_LOST)
        folder = report_folder(ctx.settings.reports_dir, ctx.feed.name, ctx.run_id)
        if not recorded:
            status = "crashed"
            log.warning("%s %s: the run that holds scope %r now closed this run as crashed (and wrote "
                        "its report) before it ended; that record stands", ctx.feed.name, ctx.run_id,
                        ctx.feed.scope)
        else:
            try:
                folder = write_run_report(report, ctx.settings.reports_dir, ctx.feed.name, ctx.run_id)
            except OSError as exc:
                log.error("could not write the reports of run %s: %s", ctx.run_id, exc)
        totals = report.summary
        del report  # freed before the collector runs again
    summary = RunSummary(ctx.run_id, ctx.feed.name, code, totals, folder)
    counts = {key: totals.get(key) for key in _RUN_LOG_KEYS}
    log_event(
        log, "run",
        f"{ctx.feed.name} {ctx.run_id}: {status}, exit {code}: {counted(counts['rows_in'], 'row')} in, "
        f"{counts['accepted']} accepted, {counts['transactions_rejected']} rejected, "
        f"{counted(counts['duplicates'], 'duplicate')}, {counted(counts['conflicts'], 'conflict')}, "
        f"{counts['failed_retryable']} failed retryable, {counts['failed_permanent']} failed permanent, "
        f"{counts['in_doubt']} in doubt; carried over {counts['carried_over']}, "
        f"waiting {counts['waiting']}{_oldest_words(totals.get('backlog'))}"
        f"{_sale_words(totals)}, "
        f"needs rerun {counts['needs_rerun']}; "
        f"{_problem_words(totals.get('problems') or [])}"
        + (f"; cause: {exit_cause(totals, code)}" if code != EXIT_OK else ""),
        level=logging.INFO if code == EXIT_OK else logging.WARNING,
        feed=ctx.feed.name, run_id=ctx.run_id, status=status, exit_code=code, dry_run=ctx.dry_run,
        backlog=totals.get("backlog"), open_problems=[p["problem_id"] for p in totals.get("problems") or []],
        **{k: v for k, v in counts.items() if v is not None},
    )
    return summary


def _health(ctx: _Context, summary: dict[str, Any], backlog: Backlog, *, lock_lost: bool = False
            ) -> dict[str, Any]:
    """The backlog, and the feed's problems brought up to date (opened, escalated, resolved, with
    the alerts they owe recorded in the same ledger transaction). Dry runs, and runs that lost
    their scope's lock (its problems are the holder's now), only report the backlog.
    """
    now = datetime.now(UTC)
    out: dict[str, Any] = {"backlog": backlog.to_dict()}
    if ctx.dry_run or lock_lost:
        return out
    codes = ctx.ledger.run_codes(ctx.run_id, "accepted", "failed_permanent", "failed_retryable")
    accepted = sum(codes["accepted"].values())
    permanent, retryable = codes["failed_permanent"], codes["failed_retryable"]
    facts = RunFacts(
        run_id=ctx.run_id, kind=str(summary.get("kind") or "run"), summary=summary, error=ctx.error,
        business_dates=list(ctx.notes.get("business_dates") or []),
        missing_files=list(ctx.notes.get("missing_files") or []), failed_codes=retryable,
        sent=answered(accepted, permanent, retryable),
        backlog=backlog,
    )
    events = _update_problems(ctx.ledger, ctx.feed, facts, now)
    if events is None:
        return out
    still_open = sorted_problems(_open_problems_of(ctx.ledger, ctx.feed))
    out.update(problems=[p.to_dict() for p in still_open], problems_opened=events["opened"],
               problems_escalated=events["escalated"], problems_resolved=events["resolved"])
    return out


def _open_problems_of(ledger: Ledger, feed: Feed) -> list[Problem]:
    """The open problems ``feed`` checks: its own (their keys name the feed, so they are found
    whatever scope it had when they opened) and its scope's backlog."""
    found = {p.id: p for p in (*ledger.problems(feed=feed.name), *ledger.problems(scope=feed.scope))}
    return [p for p in found.values() if relevant(p, feed)]


def _update_problems(ledger: Ledger, feed: Feed, facts: RunFacts, now: datetime
                     ) -> dict[str, list[int]] | None:
    """Open, escalate and resolve ``feed``'s problems from what a run (or a refused start) saw;
    the ids changed, by event. None when they could not be brought up to date (checked again
    next run; the run's own outcome stands); LockLostError when the run's scope lock is lost."""
    try:
        observed = observe(feed, ledger, facts, now)
        open_before = _open_problems_of(ledger, feed)
        plan = reconcile(open_before, observed, covers(feed, facts))
        changed = ledger.apply_problems(plan, run_id=facts.run_id, alert=alert_for(feed, facts.run_id))
    except LockLostError:  # nothing written: the run ends as one that lost its lock
        raise
    except Exception:
        log.exception("%s: could not bring the feed's problems up to date", feed.name)
        return None
    events: dict[str, list[int]] = {"opened": [], "escalated": [], "resolved": []}
    for change, problem in zip(plan.changes, changed, strict=True):
        if change.event == "refreshed":
            continue
        events[change.event].append(problem.id)
        log_event(log, "problem", f"{feed.name}: problem #{problem.id} {change.event}: {problem.kind}: "
                  f"{problem.summary}", level=logging.INFO if change.event == "resolved" else logging.WARNING,
                  feed=feed.name, problem_id=problem.id, kind=problem.kind, problem_event=change.event)
    return events


def _error_shown(ctx: _Context, error: BaseException) -> str:
    """The text of the error that stops a run as posfeed may show it: secrets redacted and, with
    ``logging.hash_customer_ids``, the customer ids of the run's transactions it quotes masked
    (a platform's answer or a bug's KeyError may quote them)."""
    text = shown(error)
    if not ctx.feed.logging.hash_customer_ids:
        return text
    try:
        return mask_quoted_customers(text, ctx.ledger.run_customer_ids(ctx.feed.scope, run_id=ctx.run_id))
    except Exception:  # the ledger may be what failed: its own errors quote no customer
        log.debug("could not read the run's customer ids to mask the error", exc_info=True)
        return text


def observe_refusal(settings: Settings, feed: Feed, error: PosfeedError) -> None:
    """A run refused before it started (credentials, source folder, a feed file the scheduler
    could not read again): no run is recorded, but the feed's problems see the refusal (a
    credentials_refused or run_failed problem opens once) and its alerts go out."""
    try:
        with Ledger(settings.ledger_location) as ledger:
            now = datetime.now(UTC)
            facts = RunFacts(run_id=None, kind="run", summary={}, error=error, business_dates=[],
                             missing_files=[], failed_codes={}, sent=0,
                             backlog=backlog_of(ledger, feed, None, now))
            if _update_problems(ledger, feed, facts, now) is not None:
                deliver_pending(ledger, feed)
    except Exception:  # the refusal itself is what the caller reports
        log.exception("%s: could not record the refusal as a problem", feed.name)


def _oldest_words(backlog: dict[str, Any] | None) -> str:
    minutes = (backlog or {}).get("oldest_waiting_minutes")
    return f" (oldest {minutes} min)" if minutes is not None else ""


def _sale_words(summary: dict[str, Any]) -> str:
    count = summary.get("waiting_for_sale") or 0
    if not count:
        return ""
    return f" ({returns_waiting(count)} until {summary['waiting_for_sale_until']})"


def _problem_words(problems: list[dict[str, Any]]) -> str:
    if not problems:
        return "no open problems"
    shown = ", ".join(_one_problem(p) for p in problems[:_PROBLEMS_LISTED])
    more = len(problems) - _PROBLEMS_LISTED
    tail = told(f" and {more} more (`posfeed problems`)") if more > 0 else ""
    return f"{counted(len(problems), 'open problem')}: {shown}{tail}"


_PROBLEMS_LISTED = 5  # on the one console/log line; `posfeed problems` lists them all


def _one_problem(problem: dict[str, Any] | Problem) -> str:
    p = problem.to_dict() if isinstance(problem, Problem) else problem
    detail = " ".join(str(v) for v in (p.get("store_id"), p.get("business_date")) if v)
    if p["kind"] == "unreadable_file":
        detail = str(p.get("subject"))
    hour = (p.get("counts") or {}).get("hour")
    if p["kind"] == "missing_file" and isinstance(hour, int):  # an hourly feed: one problem per hour
        detail += f" {hour:02d}:00"
    return f"#{p['problem_id']} {p['kind']}" + (f" {detail}" if detail else "")


# the counts of the one log line per run (`event=run`)
_RUN_LOG_KEYS = (
    "rows_in", "transactions_in", "transactions_rejected", "rows_rejected", "duplicates", "conflicts",
    "accepted", "failed_retryable", "failed_permanent", "not_sent", "in_doubt", "amount_in",
    "amount_accepted", "currencies", "balanced", "carried_over", "waiting", "waiting_oldest_at",
    "waiting_oldest_age_seconds", "needs_rerun", "waiting_for_sale", "waiting_for_sale_until",
)


def _waiting_for_sale(ctx: _Context) -> dict[str, Any]:
    """How many of the run's transactions are returns waiting for their sale, and until when the
    first recorded of them waits (``resume.sale_wait_hours`` after it was recorded; ISO 8601, UTC):
    they do not make the run exit 75."""
    count, first = ctx.ledger.waiting_for_sales(ctx.run_id)
    until = None
    if first is not None:
        until = (datetime.fromisoformat(first) + timedelta(hours=ctx.feed.resume.sale_wait_hours)).isoformat()
    return {"waiting_for_sale": count, "waiting_for_sale_until": until}


def _backlog_notes(ctx: _Context, backlog: Backlog) -> dict[str, Any]:
    """The backlog's figures the summary and alerting read (the same as its ``backlog`` object)."""
    if backlog.needs_rerun:
        log.warning(told("%s: %s of scope %s %s past the resume caps or were refused as requests; "
                         "only `posfeed rerun --feed %s --failed` sends them"), ctx.feed.name,
                    counted(backlog.needs_rerun, "transaction"), ctx.feed.scope,
                    "is" if backlog.needs_rerun == 1 else "are", ctx.feed.name)
    age = int(backlog.oldest_seconds) if backlog.oldest_seconds is not None else None
    return {"waiting": backlog.waiting, "waiting_oldest_at": backlog.oldest_since,
            "waiting_oldest_age_seconds": age, "needs_rerun": backlog.needs_rerun}


def run_feed(
    feed: Feed,
    settings: Settings,
    *,
    dry_run: bool = False,
    business_dates: list[date] | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    make_sink: SinkFactory | None = None,
    now: datetime | None = None,
    on_stage: StageHook | None = None,
) -> RunSummary:
    """Run a feed once (see the module docstring). Raises LockHeldError when the feed's scope is
    being run by a live process, ConfigError for configuration problems.

    ``make_sink`` replaces the feed's sink (tests); ``on_stage(stage, "start" | "end")`` is called
    around the stages settle, discover, fetch, transform, record, submit and report."""
    return _execute(
        feed, settings, kind="run", dry_run=dry_run, business_dates=business_dates, selection=None,
        stop=stop, progress=progress, make_sink=make_sink, now=now, on_stage=on_stage,
    )


def rerun_feed(
    feed: Feed,
    settings: Settings,
    selection: RerunSelection,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    make_sink: SinkFactory | None = None,
    on_stage: StageHook | None = None,
) -> RunSummary:
    """Resend the failed transactions ``selection`` names (failed_retryable; failed_permanent too
    with ``include_permanent``); accepted transactions are never resent."""
    if selection.is_empty():
        from pipeline.errors import ConfigError

        raise ConfigError("a rerun needs a run id, --failed, --file, --store or --business-date")
    return _execute(
        feed, settings, kind="rerun", dry_run=dry_run, business_dates=None, selection=selection,
        stop=stop, progress=progress, make_sink=make_sink, now=None, on_stage=on_stage,
    )
