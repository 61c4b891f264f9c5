"""`posfeed run` on a local folder source whose archive or quarantine folder may not be created:
the same configuration error (exit 78, ``source_errors``) as on SFTP. The runs are separate
processes without root's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv``), so folder
permissions apply to them as to any account."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.config import ExpectedFilesConfig, Feed
from pipeline.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import copy_samples, sample_feed, stats
from tests.sources.test_sftp_run import FILES, ledger_files, posfeed_run, write_feed_file


def bound_by_permissions() -> list[str]:
    """A command prefix that runs the command as root without the capabilities that let root
    ignore file permissions."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv is needed (Debian package util-linux, essential: always installed)"
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def locked_folder(parent: Path) -> Path:
    """A folder its owner (root, as the tests run) may read but, bound by permissions, not
    create anything in."""
    locked = parent / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked


def local_feed(folder: Path, sandbox: SandboxServer, **source: str) -> Feed:
    """acme_hourly reading ``folder``, archiving what it processed."""
    feed = sample_feed("acme_hourly", sandbox, folder=folder, source={"after_success": "archive", **source})
    return feed.model_copy(update={"expected": ExpectedFilesConfig()})  # no missing-file noise


def test_an_archive_folder_that_may_not_be_created_exits_78_naming_it_and_keeps_the_file(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    copy_samples(folder, FILES[:1])  # dated long before the run: archived by it
    archive = locked_folder(tmp_path) / "archive"
    feed_file = write_feed_file(local_feed(folder, sandbox, archive_path=str(archive)),
                                tmp_path / "shop.toml")
    done = posfeed_run(feed_file, tmp_path, sandbox, wrap=bound_by_permissions())
    assert done.returncode == EXIT_CONFIG, done.stderr[-3000:]
    assert f"permission denied creating the folder {archive}" in done.stderr
    assert (folder / FILES[0]).exists() and not archive.exists()  # left where it was
    (record,) = ledger_files(tmp_path)
    assert record.status == "recorded"  # not finished: the next run archives it
    summary = json.loads(done.stdout)
    assert summary["accepted"] > 0 and summary["balanced"] is True
    assert summary["source_errors"] == [
        {"file": FILES[0], "reason": f"source.archive_path: permission denied creating the folder {archive}"}]
    archive.parent.chmod(0o755)  # fixed: the next run archives it, sending nothing again
    requests = stats(sandbox)["requests"]
    again = posfeed_run(feed_file, tmp_path, sandbox, wrap=bound_by_permissions())
    assert again.returncode == 0, again.stderr[-3000:]
    assert (archive / FILES[0]).exists() and not (folder / FILES[0]).exists()
    assert stats(sandbox)["requests"] == requests + 1  # the credential check only


def test_a_quarantine_folder_that_may_not_be_created_exits_78_and_the_file_stays_recorded_in_place(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / FILES[0]).write_bytes(b"")  # unreadable: the file is empty
    quarantine = locked_folder(tmp_path) / "quarantine"
    feed_file = write_feed_file(local_feed(folder, sandbox, quarantine_path=str(quarantine)),
                                tmp_path / "shop.toml")
    done = posfeed_run(feed_file, tmp_path, sandbox, wrap=bound_by_permissions())
    assert done.returncode == EXIT_CONFIG, done.stderr[-3000:]
    assert f"permission denied creating the folder {quarantine}" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["unreadable_files"] == [{"file": FILES[0], "reason": "file is empty"}]
    reason = f"source.quarantine_path: permission denied creating the folder {quarantine}"
    assert summary["source_errors"] == [{"file": FILES[0], "reason": reason}]
    assert (folder / FILES[0]).exists() and not quarantine.exists()  # left where it was
    (record,) = ledger_files(tmp_path)
    assert (record.status, record.quarantined_to) == ("quarantined", None)  # recorded in place
    again = posfeed_run(feed_file, tmp_path, sandbox, wrap=bound_by_permissions())
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["files_in_quarantine"] == [FILES[0]]


def test_a_file_the_account_may_not_read_is_reported_by_name_and_the_rest_of_the_feed_runs(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    copy_samples(folder, FILES[:2])
    locked = folder / FILES[0]
    locked.chmod(0o000)
    feed_file = write_feed_file(local_feed(folder, sandbox), tmp_path / "shop.toml")
    done = posfeed_run(feed_file, tmp_path, sandbox, wrap=bound_by_permissions())
    assert done.returncode == EXIT_TEMPFAIL, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["fetch_failures"] == [
        {"file": FILES[0], "reason": f"{locked}: permission denied reading the file"}]
    assert summary["files_new"] == [FILES[1]] and summary["accepted"] > 0
    assert locked.exists() and (folder / "archive" / FILES[1]).exists()
    locked.chmod(0o644)  # fixed: the next run takes it
    again = posfeed_run(feed_file, tmp_path, sandbox, wrap=bound_by_permissions())
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["files_new"] == [FILES[0]]
