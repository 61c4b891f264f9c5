"""Fetch stage: discover the feed's ready files, stage new content, register it in the ledger.

File identity is content: a file whose sha256 the scope already recorded (or this run already
staged) is never processed again, whatever its name. A file seen before with the same name, size
and mtime is not even fetched again, when that mtime is clearly older than the fetch that read it
(the "racily clean" rule of git's index and rsync: mtimes have whole seconds over SFTP, so a file
rewritten within the second it was fetched in keeps its size and mtime; such a file is fetched
again and judged by its sha256, and once read again unchanged its identity is trusted; so is a
processed file touched since, under the mtime it has now). The same
name with new content is registered as superseding the earlier file (and processed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from pipeline.config import Feed
from pipeline.errors import SourceUnavailableError
from pipeline.ledger import FileRecord, Ledger
from pipeline.ledger.records import timestamp
from pipeline.logs import counted, in_number
from pipeline.progress import NullProgress, Progress
from pipeline.sources.base import FetchedFile, RemoteFile, Source

__all__ = ["FetchResult", "StagedFile", "fetch_new_files"]

log = logging.getLogger(__name__)

_PROCESSED = ("recorded", "finished")
# a file's name, size and mtime stand for its content only when the mtime is at least this much
# older than the start of the fetch that read it: a later write then gets another mtime (whole
# seconds, and up to a second between the server's clock and ours)
RACY_SECONDS = 2.0


@dataclass(frozen=True)
class StagedFile:
    """A new file: where it came from, its staged copy, and its ledger record."""

    remote: RemoteFile
    fetched: FetchedFile
    record: FileRecord


@dataclass
class FetchResult:
    """What the fetch stage found."""

    staged: list[StagedFile] = field(default_factory=list)
    already_processed: list[tuple[RemoteFile, FileRecord]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): try again later
    quarantined: list[str] = field(default_factory=list)  # unreadable before: not read again
    files_fetched: int = 0  # files downloaded (new ones, and ones read again to compare)
    # names of the already processed files this run downloaded (a copy, a re-upload, a file whose
    # identity could not be trusted): those have their row in the report
    downloaded_again: set[str] = field(default_factory=set)
    bytes_fetched: int = 0

    def already_processed_files(self, run_id: str) -> list[tuple[str, str]]:
        """(name, reason) of each file this run downloaded and did not read, its content processed
        before: which file had it first and the run that fetched it. A file recognized unchanged by
        its name, size and mtime is only counted (a "keep" source shows a run every earlier file of
        its days: listing them all would bury the run's own files)."""
        out: list[tuple[str, str]] = []
        for remote, record in self.already_processed:
            if remote.name not in self.downloaded_again:
                continue
            when = ("read in this run" if record.first_run_id == run_id
                    else f"first fetched in run {record.first_run_id}")
            same = f"same content as {record.name}, " if record.name != remote.name else ""
            out.append((remote.name, same + when))
        return out

    @property
    def superseded(self) -> list[StagedFile]:
        """New files that replace an earlier file of the same name with other content."""
        return [s for s in self.staged if s.record.supersedes_file_id is not None]


def fetch_new_files(
    source: Source,
    ledger: Ledger,
    run_id: str,
    feed: Feed,
    business_dates: list[date],
    staging_dir: Path,
    progress: Progress | None = None,
    on_stage: Callable[[str, str], None] | None = None,
) -> FetchResult:
    """Stage every ready file whose content the feed's scope has not processed yet.

    ``on_stage(name, "start" | "end")`` brackets the ``discover`` and ``fetch`` steps."""
    progress = progress or NullProgress()
    hook = on_stage or (lambda stage, event: None)
    hook("discover", "start")
    try:
        remotes = list(source.discover(business_dates))
    finally:
        hook("discover", "end")
    log.info("%s: %s for %s %s", feed.name, counted(len(remotes), "ready file"),
             in_number(len(business_dates), "business date"),
             ", ".join(d.isoformat() for d in business_dates))
    result = FetchResult()
    hook("fetch", "start")
    progress.start("fetch", len(remotes))
    try:
        for remote in remotes:
            try:
                _fetch_one(source, ledger, run_id, feed, remote, staging_dir, result)
            finally:
                progress.advance("fetch")
    finally:
        progress.finish("fetch")
        hook("fetch", "end")
    return result


def _fetch_one(
    source: Source,
    ledger: Ledger,
    run_id: str,
    feed: Feed,
    remote: RemoteFile,
    staging_dir: Path,
    result: FetchResult,
) -> None:
    began = timestamp()
    seen = ledger.file_by_identity(feed.scope, remote.name, remote.size, remote.mtime)
    if seen is not None and not identity_trusted(seen):
        log.info("%s: same name, size and mtime as in run %s, but modified too close to that fetch "
                 "to tell apart from a rewrite; fetched again to compare its content",
                 remote.name, seen.first_run_id)
        seen = None
    if seen is not None and seen.status == "quarantined":
        log.debug("%s: in quarantine (unreadable in run %s); not read again", remote.name, seen.first_run_id)
        result.quarantined.append(remote.name)
        return
    if seen is not None and seen.status in _PROCESSED:
        log.debug("%s: already processed (same name, size and mtime)", remote.name)
        result.already_processed.append((remote, seen))
        return
    try:
        fetched = source.fetch(remote, staging_dir)
    except SourceUnavailableError as exc:
        log.warning("%s: not fetched this time: %s", remote.name, exc)
        result.failed.append((remote.name, str(exc)))
        return
    result.files_fetched += 1
    result.bytes_fetched += fetched.size
    same = ledger.file_by_sha(feed.scope, fetched.sha256)
    if same is not None and (same.name, same.size) == (fetched.name, fetched.size):
        # read again unchanged under its name (its mtime may have moved: a touch, a copy over
        # itself): that name, size and mtime stand for its content now, so it is not fetched again
        ledger.confirm_file(same.id, began, mtime=fetched.mtime)
    if same is not None and same.status in _PROCESSED:
        if same.name != remote.name:
            log.warning("%s: same content as %s, processed in run %s; not processed again",
                        remote.name, same.name, same.first_run_id)
        result.already_processed.append((remote, same))
        result.downloaded_again.add(remote.name)
        fetched.path.unlink(missing_ok=True)
        return
    earlier = next((s for s in result.staged if same is not None and s.record.id == same.id), None)
    if earlier is not None:
        log.warning("%s: same content as %s, fetched in this run; not processed again",
                    remote.name, earlier.record.name)
        result.already_processed.append((remote, earlier.record))
        result.downloaded_again.add(remote.name)
        fetched.path.unlink(missing_ok=True)
        return
    if same is not None and same.status == "quarantined":
        log.debug("%s: same content as the quarantined %s; not read again", remote.name, same.name)
        result.quarantined.append(remote.name)
        fetched.path.unlink(missing_ok=True)
        return
    record = ledger.register_file(
        run_id,
        scope=feed.scope,
        feed=feed.name,
        name=fetched.name,
        size=fetched.size,
        mtime=fetched.mtime,
        sha256=fetched.sha256,
        fetched_at=began,
    )
    for old_id in ledger.supersede_quarantined(feed.scope, fetched.name, record.id):
        log.warning("%s: new content replaces the quarantined file of run %s", remote.name,
                    ledger.file(old_id).first_run_id)
    if record.supersedes_file_id is not None:
        old = ledger.file(record.supersedes_file_id)
        log.warning("%s: new content (sha256 %s…) supersedes the file processed in run %s",
                    remote.name, fetched.sha256[:12], old.first_run_id)
    result.staged.append(StagedFile(remote, fetched, record))


def identity_trusted(record: FileRecord) -> bool:
    """Whether the recorded name, size and mtime may stand for the file's content: the mtime is
    at least :data:`RACY_SECONDS` older than the start of the fetch that read it."""
    if record.fetched_at is None:
        return False
    return record.mtime <= datetime.fromisoformat(record.fetched_at).timestamp() - RACY_SECONDS
