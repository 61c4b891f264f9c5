"""`posfeed run` on a feed whose files come from a real OpenSSH sshd, sending to the sandbox."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import pipeline.sources.sftp as sftp_module
import pipeline.sources.sftp_stream as stream_module
from pipeline.config import ExpectedFilesConfig, Feed
from pipeline.errors import EXIT_CONFIG, EXIT_TEMPFAIL, SourceUnavailableError
from pipeline.ledger import Ledger
from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import (
    BUSINESS_DATE,
    SAMPLE_ACME,
    credentials,
    delivered_ids,
    feed_toml,
    sample_feed,
    settings_in,
    stats,
)
from tests.sandbox_fixtures import TARGET_KITS
from tests.sftp_fixtures import SftpServer, SftpUser
from tests.test_exit_codes import _in_own_mounts

FILES = ("pos_LON01_20261120_10.csv", "pos_LON01_20261120_11.csv", "pos_LON01_20261120_12.csv")


def upload(folder: Path, names: tuple[str, ...] = FILES) -> None:
    """Put sample files on the server (the served folder is a local folder)."""
    for name in names:
        shutil.copy2(SAMPLE_ACME / name, folder / name)


def sftp_feed(server: SftpServer, folder: Path, sandbox: SandboxServer, **source: Any) -> Feed:
    """acme_hourly, reading ``folder`` on the sftp server and sending to the sandbox."""
    sftp = server.feed(folder).source.model_dump()
    sftp.update(pattern="pos_LON01_{business_date:%Y%m%d}_??.csv", readiness="none", after_success="archive")
    sftp.update(source)
    feed = sample_feed("acme_hourly", sandbox, source=sftp)
    return feed.model_copy(update={"expected": ExpectedFilesConfig()})  # no missing-file noise


def write_feed_file(feed: Feed, path: Path) -> Path:
    """The feed as a TOML file, as ops would write it."""
    path.write_text(feed_toml(feed), encoding="utf-8")
    return path


def posfeed_run(feed_file: Path, tmp: Path, sandbox: SandboxServer,
                wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`posfeed run --feed FILE --json` as a separate process (inside ``wrap``, if given)."""
    env = dict(os.environ, **TARGET_KITS["antavo"].env(sandbox))
    return subprocess.run(
        [*(wrap or []), sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), "run", "--feed", str(feed_file), "--business-date",
         BUSINESS_DATE.isoformat(), "--json"],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp, check=False,
    )


def ledger_files(tmp: Path) -> list[Any]:
    path = tmp / "state" / "ledger.sqlite"
    if not path.exists():
        return []
    with Ledger(path) as ledger:
        return ledger.files(scope="acme")


def test_happy_path_through_posfeed_run_archives_after_success(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir)
    feed_file = write_feed_file(sftp_feed(sftp_server, sftp_dir, sandbox), tmp_path / "acme_sftp.toml")
    first = posfeed_run(feed_file, tmp_path, sandbox)
    assert first.returncode in (0, 65), first.stderr  # 65: the sample has rejected rows by design
    summary = json.loads(first.stdout)
    assert summary["balanced"] is True and summary["accepted"] > 0
    # a return of the 12:00 file waits for its sale (in the 08:00 file, not delivered here)
    assert (summary["failed_retryable"], summary["in_doubt"]) == (1, 0)
    assert sorted(summary["files_new"]) == sorted(FILES)
    ids = delivered_ids(sandbox)
    assert len(ids) == summary["accepted"] and len(set(ids)) == len(ids)
    # archived only where every row is final with no failure: the 12:00 file has that return, so
    # it stays on the server
    assert summary["failed_permanent"] == 0
    assert sorted(p.name for p in (sftp_dir / "archive").iterdir()) == sorted(FILES[:2])
    assert [p.name for p in sftp_dir.glob("*.csv")] == [FILES[2]]
    # the same files dropped again (same content, new names too) are not processed again
    upload(sftp_dir)
    shutil.copy2(SAMPLE_ACME / FILES[0], sftp_dir / "pos_LON01_20261120_99.csv")
    requests = stats(sandbox)["requests"]
    second = posfeed_run(feed_file, tmp_path, sandbox)
    # the return still waits for its sale, within its wait: not a failure (exit 0), said so
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["waiting_for_sale"] == 1
    assert again["files_new"] == [] and again["files_already_processed"] == len(FILES) + 1
    # the credential check and the waiting return's look for its sale, neither sending an event
    assert stats(sandbox)["requests"] == requests + 2


def test_a_name_that_is_not_utf8_is_skipped_and_the_run_goes_on(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir, FILES[:1])
    raw = os.fsencode(sftp_dir)
    (Path(os.fsdecode(raw + b"/caf\xe9_notes.txt"))).write_bytes(b"not an export")
    shutil.copy2(SAMPLE_ACME / FILES[1], os.fsdecode(raw + b"/pos_LON01_20261120_1\xe9.csv"))
    done = posfeed_run(write_feed_file(sftp_feed(sftp_server, sftp_dir, sandbox), tmp_path / "f.toml"),
                       tmp_path, sandbox)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files_new"] == [FILES[0]] and summary["accepted"] > 0
    assert summary["skipped_files"] == [
        {"file": "pos_LON01_20261120_1\\xe9.csv", "reason": "unsafe name: not valid UTF-8"}
    ]
    assert [p.name for p in (sftp_dir / "archive").iterdir()] == [FILES[0]]
    assert "internal error" not in done.stderr


@pytest.mark.parametrize("problem", ["changed host key", "unknown host key", "wrong key"])
def test_auth_problems_exit_78_and_process_nothing(
    problem: str, sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir)
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    known = Path(feed.source.known_hosts_file or "")
    if problem == "changed host key":
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        kind, key = other.with_suffix(".pub").read_text().split()[:2]
        known.write_text(f"[{sftp_server.host}]:{sftp_server.port} {kind} {key}\n")
        expected = "CHANGED"
    elif problem == "unknown host key":
        known.write_text("")
        expected = "unknown host key"
    else:
        stranger = tmp_path / "stranger"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(stranger)],
                       check=True)
        feed = feed.model_copy(
            update={"source": feed.source.model_copy(update={"private_key_file": str(stranger)})}
        )
        expected = "refused our credentials"
    done = posfeed_run(write_feed_file(feed, tmp_path / "acme_sftp.toml"), tmp_path, sandbox)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert expected in done.stderr
    assert ledger_files(tmp_path) == []
    assert stats(sandbox)["requests"] == 0
    assert sorted(p.name for p in sftp_dir.iterdir()) == sorted(FILES)


def test_connection_dropped_mid_fetch_is_retried_and_nothing_is_sent_twice(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    upload(sftp_dir)
    real_blocks = stream_module.PipelinedReader.blocks
    kills: list[int] = []

    def blocks_then_drop(self: Any) -> Any:
        for block in real_blocks(self):
            yield block
            if not kills:  # the first file's first block is in: the server's session dies
                kills.append(sftp_server.kill_sessions())

    monkeypatch.setattr(stream_module.PipelinedReader, "blocks", blocks_then_drop)
    monkeypatch.setattr(sftp_module, "BACKOFF_BASE_SECONDS", 0.01)
    settings = settings_in(tmp_path)
    with credentials(sandbox), caplog.at_level("WARNING", logger="pipeline.sources.sftp"):
        summary = run_feed(sftp_feed(sftp_server, sftp_dir, sandbox), settings,
                           business_dates=[BUSINESS_DATE])
    assert kills and kills[0] > 0
    assert "reconnecting" in caplog.text
    s = summary.summary
    assert s["balanced"] is True and s["accepted"] > 0 and s["fetch_failures"] == []
    ids = delivered_ids(sandbox)
    assert len(ids) == s["accepted"] and not [i for i, n in Counter(ids).items() if n > 1]
    names = [f.name for f in ledger_files(tmp_path)]
    assert sorted(names) == sorted(FILES)  # each file registered once


def test_superseded_file_is_processed_and_reported(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    name = FILES[0]
    lines = (SAMPLE_ACME / name).read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    first_tx = {r.split(",")[0] for r in rows}
    ids = [r.split(",")[0] for r in rows]
    cut = next(i for i in range(len(rows) // 2, len(rows)) if ids[i] != ids[i - 1])
    (sftp_dir / name).write_text(header + "".join(rows[:cut]), encoding="utf-8")
    feed = sftp_feed(sftp_server, sftp_dir, sandbox, after_success="keep")
    settings = settings_in(tmp_path)
    with credentials(sandbox):
        run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        sent_before = len(delivered_ids(sandbox))
        (sftp_dir / name).write_text(header + "".join(rows), encoding="utf-8")  # the full version
        os.utime(sftp_dir / name, (1_800_000_000, 1_800_000_000))
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert second.summary["superseded_files"] == [name]
    assert second.summary["balanced"] is True
    ids = delivered_ids(sandbox)
    assert len(set(ids)) == len(ids) and len(ids) > sent_before
    assert set(ids) <= first_tx
    records = {f.sha256: f for f in ledger_files(tmp_path)}
    assert len(records) == 2
    assert sum(1 for f in records.values() if f.supersedes_file_id is not None) == 1


def test_a_file_with_retryable_failures_stays_until_every_row_is_final(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir, FILES[:1])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    feed = feed.model_copy(update={"target": feed.target.model_copy(update={"max_attempts": 1})})
    settings = settings_in(tmp_path)
    sandbox.config.fault_rate = 1.0  # every request answers 503
    with credentials(sandbox):
        failing = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        assert failing.summary["failed_retryable"] > 0
        assert (sftp_dir / FILES[0]).exists() and not (sftp_dir / "archive").exists()
        run_feed(feed, settings, business_dates=[BUSINESS_DATE])  # nothing new; failures stay
        assert (sftp_dir / FILES[0]).exists()
        sandbox.config.fault_rate = 0.0
        settled = rerun_feed(feed, settings, RerunSelection(failed=True))
    assert settled.summary["failed_retryable"] == 0 and settled.summary["accepted"] > 0
    assert not (sftp_dir / FILES[0]).exists()
    assert (sftp_dir / "archive" / FILES[0]).exists()


def test_a_file_still_being_uploaded_waits_for_the_next_run(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir, FILES[:1])
    growing = sftp_dir / FILES[1]
    data = (SAMPLE_ACME / FILES[1]).read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    growing.write_bytes(data[:half])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox, readiness="stable", stable_seconds=1.0)
    settings = settings_in(tmp_path)
    first_run_over = threading.Event()
    rest = data[half:].splitlines(keepends=True)

    def uploader() -> None:  # a line every 0.2 s while the first run looks, then the rest at once
        with growing.open("ab") as out:
            while rest and not first_run_over.is_set():
                out.write(rest.pop(0))
                out.flush()
                first_run_over.wait(0.2)
            out.write(b"".join(rest))

    writer = threading.Thread(target=uploader)
    writer.start()
    try:
        with credentials(sandbox):
            first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    finally:
        first_run_over.set()
        writer.join()
    assert first.summary["files_new"] == [FILES[0]]
    assert growing.read_bytes() == data  # the upload completed
    with credentials(sandbox):
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert second.summary["files_new"] == [FILES[1]]
    records = {f.name: f for f in ledger_files(tmp_path)}
    assert records[FILES[1]].size == len(data)


def test_an_unreadable_file_replaced_during_the_run_is_not_quarantined(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    name = FILES[0]
    (sftp_dir / name).write_bytes(b"")  # unreadable: the file is empty
    real_quarantine = sftp_module.SftpSource.quarantine

    def replaced_first(self: Any, remote: Any) -> str:  # the uploader delivers while the run reads
        upload = sftp_dir / f".{name}.uploading"
        shutil.copy2(SAMPLE_ACME / name, upload)
        os.utime(upload, (1_700_000_000, 1_700_000_000))  # before any fetch: archived once processed
        os.replace(upload, sftp_dir / name)
        return real_quarantine(self, remote)

    monkeypatch.setattr(sftp_module.SftpSource, "quarantine", replaced_first)
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    with credentials(sandbox), caplog.at_level("WARNING"):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert first.summary["unreadable_files"] == [{"file": name, "reason": "file is empty"}]
    assert (sftp_dir / name).read_bytes() == (SAMPLE_ACME / name).read_bytes()  # left where it is
    assert not (sftp_dir / "quarantine").exists()
    assert "changed on" in caplog.text and "the next run reads" in caplog.text
    monkeypatch.setattr(sftp_module.SftpSource, "quarantine", real_quarantine)
    with credentials(sandbox):
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert second.summary["files_new"] == [name] and second.summary["accepted"] > 0
    assert (sftp_dir / "archive" / name).exists()


def test_a_full_staging_disk_exits_74_naming_the_path_for_a_small_file_too(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir, FILES[:1])  # a few KiB: it sits in the write buffer until the final flush
    staging = tmp_path / "state" / "staging"
    staging.mkdir(parents=True)
    fill = 'mount -t tmpfs -o size=64k tmpfs "$1" && { head -c 1M /dev/zero > "$1/filler" || true; }'
    wrap = _in_own_mounts(fill, staging)
    done = posfeed_run(write_feed_file(sftp_feed(sftp_server, sftp_dir, sandbox), tmp_path / "f.toml"),
                       tmp_path, sandbox, wrap=wrap)
    assert done.returncode == 74, done.stderr[-2000:]
    assert str(tmp_path / "state") in done.stderr and "free disk space" in done.stderr
    assert "reconnecting" not in done.stderr and "attempt 1 of" not in done.stderr
    assert (sftp_dir / FILES[0]).exists()


def test_unreachable_server_exits_75(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    silent = socket.socket()  # accepts connections and never speaks SSH
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        feed = sftp_feed(sftp_server, sftp_dir, sandbox, port=silent.getsockname()[1], connect_timeout=1.0)
        done = posfeed_run(write_feed_file(feed, tmp_path / "acme_sftp.toml"), tmp_path, sandbox)
    finally:
        silent.close()
    assert done.returncode == EXIT_TEMPFAIL, done.stderr
    assert "cannot reach" in done.stderr
    assert ledger_files(tmp_path) == [] and stats(sandbox)["requests"] == 0


def test_done_marker_mode_takes_only_announced_files(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    upload(sftp_dir, FILES[:2])
    (sftp_dir / f"{FILES[0]}.done").write_bytes(b"")
    feed = sftp_feed(sftp_server, sftp_dir, sandbox, readiness="marker")
    settings = settings_in(tmp_path)
    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        assert first.summary["files_new"] == [FILES[0]]
        # the file and its marker were archived together; the unannounced file waits
        assert sorted(p.name for p in (sftp_dir / "archive").iterdir()) == [FILES[0], f"{FILES[0]}.done"]
        (sftp_dir / f"{Path(FILES[1]).stem}.ok").write_bytes(b"")
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert second.summary["files_new"] == [FILES[1]]
    assert sorted(p.name for p in sftp_dir.iterdir()) == ["archive"]
    assert no_sessions_left(sftp_server)  # every run closed its connection


def no_sessions_left(server: SftpServer, wait_seconds: float = 5.0) -> bool:
    """Whether the server has no per-connection process left (they exit just after a close)."""
    deadline = time.monotonic() + wait_seconds
    while server.session_pids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def locked_folder(parent: Path) -> Path:
    """A folder the (non-root) SFTP user may read but not create anything in."""
    locked = parent / "locked"
    locked.mkdir()
    locked.chmod(0o755)  # owned by root, as the tests run
    return locked


def password_user_feed(server: SftpServer, user: SftpUser, folder: Path, sandbox: SandboxServer,
                       monkeypatch: pytest.MonkeyPatch, **source: Any) -> Feed:
    """acme_hourly reading ``folder`` as the non-root password user (permissions apply to it)."""
    monkeypatch.setenv("TEST_SFTP_PASSWORD", user.password or "")
    return sftp_feed(server, folder, sandbox, username=user.name, private_key_file=None,
                     password_env="TEST_SFTP_PASSWORD", **source)


def test_an_archive_folder_that_may_not_be_created_exits_78_naming_it_and_keeps_the_file(
    sftp_server: SftpServer, sftp_password_user: SftpUser, sftp_dir: Path, sandbox: SandboxServer,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload(sftp_dir, FILES[:1])
    archive = locked_folder(sftp_dir) / "archive"
    feed = password_user_feed(sftp_server, sftp_password_user, sftp_dir, sandbox, monkeypatch,
                              archive_path=str(archive))
    feed_file = write_feed_file(feed, tmp_path / "acme_sftp.toml")
    done = posfeed_run(feed_file, tmp_path, sandbox)
    assert done.returncode == EXIT_CONFIG, done.stderr[-3000:]
    assert f"permission denied creating the folder {archive}" in done.stderr
    assert (sftp_dir / FILES[0]).exists() and not archive.exists()  # left where it was
    (record,) = ledger_files(tmp_path)
    assert record.status == "recorded"  # not finished: the next run archives it
    summary = json.loads(done.stdout)
    assert summary["accepted"] > 0 and summary["balanced"] is True
    assert summary["source_errors"] == [
        {"file": FILES[0], "reason": f"source.archive_path: sftp://{sftp_password_user.name}@{sftp_server.host}:"
                                     f"{sftp_server.port}{sftp_dir}: permission denied creating the "
                                     f"folder {archive}"}]
    archive.parent.chmod(0o777)  # fixed: the next run archives it, sending nothing again
    requests = stats(sandbox)["requests"]
    again = posfeed_run(feed_file, tmp_path, sandbox)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (archive / FILES[0]).exists() and not (sftp_dir / FILES[0]).exists()
    assert stats(sandbox)["requests"] == requests + 1  # the credential check only


def test_a_quarantine_folder_that_may_not_be_created_exits_78_and_the_file_stays_recorded_in_place(
    sftp_server: SftpServer, sftp_password_user: SftpUser, sftp_dir: Path, sandbox: SandboxServer,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (sftp_dir / FILES[0]).write_bytes(b"")  # unreadable: the file is empty
    quarantine = locked_folder(sftp_dir) / "quarantine"
    feed = password_user_feed(sftp_server, sftp_password_user, sftp_dir, sandbox, monkeypatch,
                              quarantine_path=str(quarantine))
    feed_file = write_feed_file(feed, tmp_path / "acme_sftp.toml")
    done = posfeed_run(feed_file, tmp_path, sandbox)
    assert done.returncode == EXIT_CONFIG, done.stderr[-3000:]
    assert f"source.quarantine_path: sftp://{sftp_password_user.name}@" in done.stderr
    assert f"permission denied creating the folder {quarantine}" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["unreadable_files"] == [{"file": FILES[0], "reason": "file is empty"}]
    assert (sftp_dir / FILES[0]).exists() and not quarantine.exists()  # left where it was
    (record,) = ledger_files(tmp_path)
    assert (record.status, record.quarantined_to) == ("quarantined", None)  # recorded in place
    again = posfeed_run(feed_file, tmp_path, sandbox)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["files_in_quarantine"] == [FILES[0]]


def test_a_file_growing_while_it_is_downloaded_is_reported_and_taken_whole_by_the_next_run(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload(sftp_dir, FILES[:1])
    growing = sftp_dir / FILES[1]
    data = (SAMPLE_ACME / FILES[1]).read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    growing.write_bytes(data[:half])  # listed with its first half: the till is still writing
    os.utime(growing, (2_000_000_000, 2_000_000_000))  # fetched after the complete file
    real_blocks = stream_module.PipelinedReader.blocks

    def blocks_while_the_till_writes(self: Any) -> Any:
        for block in real_blocks(self):
            yield block
            if self._size == half and growing.stat().st_size == half:  # reading the growing file
                with growing.open("ab") as out:  # the rest lands while the first half is read
                    out.write(data[half:])

    monkeypatch.setattr(stream_module.PipelinedReader, "blocks", blocks_while_the_till_writes)
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    s = first.summary
    assert s["files_new"] == [FILES[0]] and s["accepted"] > 0
    (failure,) = s["fetch_failures"]
    assert failure["file"] == FILES[1] and "while it was being fetched" in failure["reason"]
    assert first.exit_code == EXIT_TEMPFAIL
    assert [f.name for f in ledger_files(tmp_path)] == [FILES[0]]  # the half file never registered
    with credentials(sandbox):
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert second.summary["files_new"] == [FILES[1]] and second.summary["fetch_failures"] == []
    assert {f.name: f.size for f in ledger_files(tmp_path)}[FILES[1]] == len(data)


def test_a_listing_cut_midway_exits_75_naming_it_and_the_next_run_takes_every_file(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload(sftp_dir)
    for n in range(2000):  # several READDIR answers
        (sftp_dir / f"noise_{n:04d}.txt").touch()
    real_list = sftp_module._listdir_attr
    cut: list[int] = []

    def listing_cut_after_some_entries(sftp: Any, folder: str) -> Any:
        for seen, entry in enumerate(real_list(sftp, folder)):
            yield entry
            if seen == 100 and not cut:
                cut.append(sftp_server.kill_sessions())

    monkeypatch.setattr(sftp_module, "_listdir_attr", listing_cut_after_some_entries)
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    feed_settings = settings_in(tmp_path)
    with credentials(sandbox), pytest.raises(SourceUnavailableError) as failed:
        run_feed(feed, feed_settings, business_dates=[BUSINESS_DATE])
    assert cut and cut[0] > 0
    assert failed.value.exit_code == EXIT_TEMPFAIL
    assert str(failed.value).endswith(f"{sftp_dir} failed: the server closed the connection")
    assert str(failed.value).startswith("listing sftp://")
    assert ledger_files(tmp_path) == [] and delivered_ids(sandbox) == []
    monkeypatch.setattr(sftp_module, "_listdir_attr", real_list)
    with credentials(sandbox):
        second = run_feed(feed, feed_settings, business_dates=[BUSINESS_DATE])
    assert sorted(second.summary["files_new"]) == sorted(FILES)
