"""Archiving and deleting a processed file only when its size and mtime stand for the content
that was processed (the fetch stage's racily-clean rule), through `run_feed` on a local folder
and on a real OpenSSH sshd, sending to the sandbox."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.config import ExpectedFilesConfig, Feed
from pipeline.ledger import Ledger
from pipeline.runner import RunSummary, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import BUSINESS_DATE, credentials, delivered_ids, sample_feed, settings_in, stats
from tests.sources.test_fetch_identity import BAD, FIXED_TXN, GOOD, LONG_AGO, NAME, timestamp_at, write
from tests.sources.test_sftp_run import sftp_feed


@pytest.fixture(params=[("local", "archive"), ("local", "delete"), ("sftp", "archive"), ("sftp", "delete")],
                ids="-".join)
def source(request: pytest.FixtureRequest, sandbox: SandboxServer, tmp_path: Path) -> tuple[Path, Feed]:
    """A folder, and acme_hourly reading it as a local or an SFTP source that archives (into
    ``archive/`` inside it) or deletes what it processed."""
    kind, action = request.param
    if kind == "local":
        folder = tmp_path / "drop"
        folder.mkdir()
        feed = sample_feed("acme_hourly", sandbox, folder=folder, source={"after_success": action})
        return folder, feed.model_copy(update={"expected": ExpectedFilesConfig()})
    server, folder = request.getfixturevalue("sftp_server"), request.getfixturevalue("sftp_dir")
    return folder, sftp_feed(server, folder, sandbox, after_success=action)


def run(feed: Feed, tmp_path: Path, sandbox: SandboxServer, before_finish: object = None) -> RunSummary:
    """Run the feed; ``before_finish()`` is called once its rows are sent, before the files are
    archived or deleted."""
    def hook(stage: str, event: str) -> None:
        if (stage, event) == ("submit", "end") and callable(before_finish):
            before_finish()

    with credentials(sandbox):
        return run_feed(feed, settings_in(tmp_path), business_dates=[BUSINESS_DATE], on_stage=hook)


def fetched_in_its_mtime_second(tmp_path: Path) -> None:
    """Record the file as read in the second it was written in, as a run reading a file just
    written does (SFTP mtimes have whole seconds)."""
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
        for record in ledger.files():
            ledger.confirm_file(record.id, timestamp_at(record.mtime))


def finished(folder: Path, feed: Feed) -> bool:
    """Whether the file is out of the drop folder the way the feed finishes files."""
    if (folder / NAME).exists():
        return False
    return feed.source.after_success == "delete" or (folder / "archive" / NAME).exists()


def test_a_file_corrected_in_place_before_the_archive_step_is_left_and_processed_by_the_next_run(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    write(folder / NAME, BAD, LONG_AGO)

    def corrected_in_the_same_second() -> None:  # same name, size and mtime, other content
        fetched_in_its_mtime_second(tmp_path)
        write(folder / NAME, GOOD, LONG_AGO)

    first = run(feed, tmp_path, sandbox, corrected_in_the_same_second)
    assert first.summary["transactions_rejected"] == 1 and FIXED_TXN not in delivered_ids(sandbox)
    assert (folder / NAME).read_bytes() == GOOD and not finished(folder, feed)  # not moved unread
    (left,) = first.summary["files_left_in_place"]
    assert left["file"] == NAME and "content changed" in left["reason"]
    assert first.summary["source_errors"] == []  # a note, not an error: 65 for the rejected row only
    assert first.exit_code == 65
    second = run(feed, tmp_path, sandbox)
    assert second.summary["superseded_files"] == [NAME] and second.summary["transactions_rejected"] == 0
    assert FIXED_TXN in delivered_ids(sandbox)
    ids = delivered_ids(sandbox)
    assert len(ids) == len(set(ids))  # the rest of the file was not sent again
    assert finished(folder, feed) and second.summary["files_left_in_place"] == []
    if feed.source.after_success == "archive":
        assert (folder / "archive" / NAME).read_bytes() == GOOD
    assert second.exit_code == 0
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
        assert [(f.status, f.finished_action) for f in ledger.files()] == [
            ("finished", "keep"), ("finished", feed.source.after_success)]


@pytest.mark.parametrize("source", [("local", "archive"), ("sftp", "archive")], indirect=True, ids="-".join)
def test_a_file_read_in_its_mtime_second_is_read_again_and_archived_when_unchanged(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    write(folder / NAME, GOOD, LONG_AGO)
    done = run(feed, tmp_path, sandbox, lambda: fetched_in_its_mtime_second(tmp_path))
    assert finished(folder, feed) and done.summary["files_left_in_place"] == []
    assert (done.summary["files_fetched"], done.summary["bytes_fetched"]) == (2, 2 * len(GOOD))
    assert done.exit_code == 0


@pytest.mark.parametrize("source", [("local", "archive"), ("sftp", "archive")], indirect=True, ids="-".join)
def test_a_file_modified_well_before_its_fetch_is_archived_in_the_same_run(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    write(folder / NAME, GOOD, LONG_AGO)
    done = run(feed, tmp_path, sandbox)
    assert finished(folder, feed) and done.summary["files_left_in_place"] == []
    assert done.summary["files_fetched"] == 1 and done.exit_code == 0


@pytest.mark.parametrize("source", [("local", "archive"), ("sftp", "archive")], indirect=True, ids="-".join)
def test_a_file_too_new_to_settle_is_left_and_archived_by_the_run_that_reads_it_again(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    # not older than any fetch or finish of this run whatever the machine's speed (a server clock
    # ahead of ours): a read now could not tell a rewrite either, so it is not even read again
    stamp = float(int(time.time()) + 3600)
    write(folder / NAME, GOOD, stamp)
    first = run(feed, tmp_path, sandbox)
    assert (folder / NAME).exists() and not finished(folder, feed)
    assert [f["file"] for f in first.summary["files_left_in_place"]] == [NAME]
    assert first.summary["files_fetched"] == 1 and first.exit_code == 0
    # time passes: as if that run had read the file in its mtime's second, long ago
    write(folder / NAME, GOOD, LONG_AGO)
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
        ledger._db.execute("UPDATE files SET mtime = ?", (LONG_AGO,))
    fetched_in_its_mtime_second(tmp_path)
    requests = stats(sandbox)["requests"]
    second = run(feed, tmp_path, sandbox)
    assert second.summary["files_already_processed"] == 1 and second.summary["files_fetched"] == 1
    assert finished(folder, feed) and second.summary["files_left_in_place"] == []
    assert second.exit_code == 0 and stats(sandbox)["requests"] == requests + 1  # the credential check
