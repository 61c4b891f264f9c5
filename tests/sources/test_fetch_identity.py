"""When a file's name, size and mtime may stand for its content (the fetch stage's racily-clean
rule), through `run_feed` on a local folder and on a real OpenSSH sshd, sending to the sandbox."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.config import ExpectedFilesConfig, Feed
from pipeline.ledger import Ledger
from pipeline.runner import RunSummary, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import (
    BUSINESS_DATE,
    SAMPLE_ACME,
    credentials,
    delivered_ids,
    sample_feed,
    settings_in,
    stats,
)
from tests.sources.test_sftp_run import sftp_feed

NAME = "pos_LON01_20261120_10.csv"
GOOD = (SAMPLE_ACME / NAME).read_bytes()
# the export as first written: one unit price garbled, the same number of bytes
BAD = GOOD.replace(b",1,1.99,,1.99,", b",1,1.9X,,1.99,", 1)
FIXED_TXN = "LON01-R1-20261120-0026"  # the transaction of that line
LONG_AGO = 1_700_000_000.0  # an mtime well before any fetch


@pytest.fixture(params=["local", "sftp"])
def source(request: pytest.FixtureRequest, sandbox: SandboxServer, tmp_path: Path) -> tuple[Path, Feed]:
    """A folder, and acme_hourly reading it (kept after success) as a local or an SFTP source."""
    if request.param == "local":
        folder = tmp_path / "drop"
        folder.mkdir()
        feed = sample_feed("acme_hourly", sandbox, folder=folder, source={"after_success": "keep"})
        return folder, feed.model_copy(update={"expected": ExpectedFilesConfig()})
    server, folder = request.getfixturevalue("sftp_server"), request.getfixturevalue("sftp_dir")
    return folder, sftp_feed(server, folder, sandbox, after_success="keep")


def write(path: Path, data: bytes, mtime: float) -> None:
    """Write the file and give it ``mtime``, as the store's side leaves it."""
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def run(feed: Feed, tmp_path: Path, sandbox: SandboxServer) -> RunSummary:
    with credentials(sandbox):
        return run_feed(feed, settings_in(tmp_path), business_dates=[BUSINESS_DATE])


def test_a_file_corrected_in_the_second_it_was_fetched_in_is_fetched_again_and_processed(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    assert len(BAD) == len(GOOD) and BAD != GOOD
    # whole seconds, as SFTP gives them, and not older than the fetch whatever the machine's
    # speed: the second the run fetches the file in (or later, a server clock ahead of ours)
    stamp = float(int(time.time()) + 3600)
    write(folder / NAME, BAD, stamp)
    first = run(feed, tmp_path, sandbox)
    assert first.summary["transactions_rejected"] == 1 and FIXED_TXN not in delivered_ids(sandbox)
    write(folder / NAME, GOOD, stamp)  # corrected in place: same name, size and mtime
    second = run(feed, tmp_path, sandbox)
    assert second.summary["superseded_files"] == [NAME]
    assert second.summary["transactions_rejected"] == 0 and second.summary["balanced"] is True
    assert FIXED_TXN in delivered_ids(sandbox)
    assert (second.summary["files_fetched"], second.summary["bytes_fetched"]) == (1, len(GOOD))
    ids = delivered_ids(sandbox)
    assert len(ids) == len(set(ids))  # the rest of the file was not sent again
    # read again with the same content: already processed, nothing sent
    requests = stats(sandbox)["requests"]
    third = run(feed, tmp_path, sandbox)
    assert third.summary["files_fetched"] == 1 and third.summary["files_already_processed"] == 1
    assert third.summary["files_new"] == [] and third.exit_code == 0
    assert stats(sandbox)["requests"] == requests + 1  # the credential check only


def test_a_file_modified_well_before_its_fetch_is_not_fetched_again(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    write(folder / NAME, GOOD, LONG_AGO)
    first = run(feed, tmp_path, sandbox)
    assert (first.summary["files_fetched"], first.summary["bytes_fetched"]) == (1, len(GOOD))
    second = run(feed, tmp_path, sandbox)
    assert (second.summary["files_fetched"], second.summary["bytes_fetched"]) == (0, 0)
    assert second.summary["files_already_processed"] == 1 and second.exit_code == 0


def test_a_racily_recorded_file_read_again_unchanged_is_trusted_from_then_on(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder, feed = source
    write(folder / NAME, GOOD, LONG_AGO)
    run(feed, tmp_path, sandbox)
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:  # as if fetched in its mtime's second
        (record,) = ledger.files(scope=feed.scope)
        ledger.confirm_file(record.id, timestamp_at(LONG_AGO))
    again = run(feed, tmp_path, sandbox)
    assert again.summary["files_fetched"] == 1 and again.summary["files_already_processed"] == 1
    last = run(feed, tmp_path, sandbox)
    assert last.summary["files_fetched"] == 0 and last.summary["files_already_processed"] == 1


def test_a_processed_file_touched_since_is_read_again_once_then_trusted_under_its_new_mtime(
    source: tuple[Path, Feed], sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A store's side touches a processed file (a backup tool, a copy over itself): read once more
    to compare, nothing sent, and from then on recognised without a download."""
    folder, feed = source
    write(folder / NAME, GOOD, LONG_AGO)
    run(feed, tmp_path, sandbox)
    os.utime(folder / NAME, (LONG_AGO + 86_400, LONG_AGO + 86_400))
    requests = stats(sandbox)["requests"]
    touched = run(feed, tmp_path, sandbox)
    assert (touched.summary["files_fetched"], touched.summary["files_already_processed"]) == (1, 1)
    assert touched.summary["files_new"] == [] and stats(sandbox)["requests"] == requests + 1
    after = run(feed, tmp_path, sandbox)
    assert (after.summary["files_fetched"], after.summary["bytes_fetched"]) == (0, 0)
    assert after.summary["files_already_processed"] == 1 and after.exit_code == 0


def timestamp_at(seconds: float) -> str:
    """The ledger timestamp of ``seconds`` since the epoch."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")
