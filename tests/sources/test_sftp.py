"""The SFTP source against a real OpenSSH sshd on loopback (tests/sftp_fixtures.py)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from datetime import date
from pathlib import Path

import paramiko
import pytest

import pipeline.sources.sftp_stream as stream_module
from pipeline.benchmarks.meter import ResourceMeter, current_rss
from pipeline.errors import (
    EXIT_CONFIG,
    EXIT_TEMPFAIL,
    SourceAuthError,
    SourceFolderError,
    SourceUnavailableError,
)
from pipeline.sources.base import RemoteFile, SourceFileChangedError
from pipeline.sources.sftp import SftpSource
from pipeline.sources.sftp_connect import describe
from pipeline.testing.sshd import free_port
from tests.sftp_fixtures import SftpServer, SftpUser

CSV = b"transaction_id,store_id\nT1,S1\nT2,S1\n"


def no_sleep(_: float) -> None:
    """Backoff without waiting."""


def write(folder: Path, name: str, data: bytes = CSV) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- connection and authentication ----------------------------------------------------------


def test_fetch_streams_into_staging_with_sha256(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    write(sftp_dir, "a.csv")
    write(sftp_dir, "b.csv", CSV * 3)
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        found = list(source.discover([date(2026, 11, 20)]))
        assert sorted(f.name for f in found) == ["a.csv", "b.csv"]
        fetched = [source.fetch(f, tmp_path / "staging") for f in found]
    for f in fetched:
        data = (sftp_dir / f.name).read_bytes()
        assert f.path == tmp_path / "staging" / f.name
        assert f.path.read_bytes() == data
        assert (f.size, f.sha256) == (len(data), sha(data))
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["a.csv", "b.csv"]


def test_rsa_key_login(sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path) -> None:
    write(sftp_dir, "a.csv")
    with SftpSource(sftp_server.feed(sftp_dir, private_key_file=str(sftp_server.rsa_key))) as source:
        (found,) = source.discover([])
        assert source.fetch(found, tmp_path).sha256 == sha(CSV)


def test_encrypted_key_with_passphrase_from_env(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-phrase", "-f", str(key)], check=True)
    authorized = sftp_server.workdir / "authorized_keys"
    authorized.write_text(authorized.read_text() + key.with_suffix(".pub").read_text())
    write(sftp_dir, "a.csv")
    monkeypatch.setenv("TEST_SFTP_PASSPHRASE", "s3cret-phrase")
    feed = sftp_server.feed(
        sftp_dir, private_key_file=str(key), private_key_passphrase_env="TEST_SFTP_PASSPHRASE"
    )
    with SftpSource(feed) as source:
        assert [f.name for f in source.discover([])] == ["a.csv"]


def test_password_login(
    sftp_server: SftpServer, sftp_password_user: SftpUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = sftp_password_user.home
    write(folder, "p.csv")
    monkeypatch.setenv("TEST_SFTP_PASSWORD", sftp_password_user.password or "")
    feed = sftp_server.feed(
        folder, username=sftp_password_user.name, private_key_file=None, password_env="TEST_SFTP_PASSWORD"
    )
    feed = feed.model_copy(update={"source": feed.source.model_copy(update={"private_key_file": None})})
    feed._config_dir = folder.parent / f".{folder.name}-config"
    with SftpSource(feed) as source:
        (found,) = source.discover([])
        assert source.fetch(found, tmp_path).sha256 == sha(CSV)


def test_wrong_password_is_an_auth_error(
    sftp_server: SftpServer, sftp_password_user: SftpUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SFTP_PASSWORD", "not-the-password")
    feed = sftp_server.feed(sftp_password_user.home, username=sftp_password_user.name)
    feed = feed.model_copy(
        update={
            "source": feed.source.model_copy(
                update={"private_key_file": None, "password_env": "TEST_SFTP_PASSWORD"}
            )
        }
    )
    feed._config_dir = sftp_password_user.home.parent
    with pytest.raises(SourceAuthError, match="refused our credentials") as caught:
        SftpSource(feed).connect()
    assert caught.value.exit_code == EXIT_CONFIG
    assert "not-the-password" not in str(caught.value)


def test_unauthorized_key_is_an_auth_error(sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(SourceAuthError, match="refused our credentials") as caught:
        SftpSource(sftp_server.feed(sftp_dir, private_key_file=str(stranger))).connect()
    assert caught.value.exit_code == EXIT_CONFIG


def test_unknown_host_key_is_refused_by_default(sftp_server: SftpServer, sftp_dir: Path) -> None:
    feed = sftp_server.feed(sftp_dir)
    known = Path(feed.source.known_hosts_file or "")
    known.write_text("")
    with pytest.raises(SourceAuthError, match="unknown host key") as caught:
        SftpSource(feed).connect()
    assert caught.value.exit_code == EXIT_CONFIG
    assert known.read_text() == ""


@pytest.mark.parametrize("hashed", [False, True])
def test_a_known_hosts_file_written_as_operations_says_is_trusted(
    sftp_server: SftpServer, sftp_dir: Path, hashed: bool
) -> None:
    """OPERATIONS.md: `ssh-keyscan -p PORT HOST >> known_hosts` (as the unknown-key error says too),
    hashed (`-H`) or not, and every key type the server offers."""
    feed = sftp_server.feed(sftp_dir)
    known = Path(feed.source.known_hosts_file or "")
    known.write_text("")
    with pytest.raises(SourceAuthError, match="ssh-keyscan -p") as caught:
        SftpSource(feed).connect()
    told = str(caught.value).split("ssh-keyscan", 1)[1].split(",", 1)[0]
    command = ["ssh-keyscan", *(["-H"] if hashed else []), *told.split()]
    scanned = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    assert scanned.strip(), command
    with known.open("a") as out:
        out.write(scanned)
    with SftpSource(feed) as source:
        source.check()


def test_trust_on_first_use_records_the_key(sftp_server: SftpServer, sftp_dir: Path) -> None:
    feed = sftp_server.feed(sftp_dir, known_hosts_file="tofu/known_hosts", trust_unknown_host=True)
    known = feed.resolve_path("tofu/known_hosts")
    assert not known.exists()
    with SftpSource(feed) as source:
        source.connect()
    assert known.read_text().strip() == sftp_server.known_hosts_line()
    strict = sftp_server.feed(sftp_dir, known_hosts_file=str(known))
    with SftpSource(strict) as source:
        source.connect()  # the recorded key is now trusted without TOFU


def test_changed_host_key_is_refused_even_with_tofu(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    feed = sftp_server.feed(sftp_dir, trust_unknown_host=True)
    Path(feed.source.known_hosts_file or "").write_text(f"[127.0.0.1]:{sftp_server.port} {kind} {key}\n")
    with pytest.raises(SourceAuthError, match="CHANGED") as caught:
        SftpSource(feed).connect()
    assert caught.value.exit_code == EXIT_CONFIG


def test_unreachable_server_is_transient(sftp_server: SftpServer, sftp_dir: Path) -> None:
    feed = sftp_server.feed(sftp_dir, port=free_port(), connect_timeout=2.0)
    with pytest.raises(SourceUnavailableError, match="cannot reach") as caught:
        SftpSource(feed).connect()
    assert caught.value.exit_code == EXIT_TEMPFAIL


def test_missing_folder_is_configuration(sftp_server: SftpServer, sftp_dir: Path) -> None:
    with (
        pytest.raises(SourceFolderError, match="does not exist"),
        SftpSource(sftp_server.feed(sftp_dir / "nope")) as source,
    ):
        list(source.discover([]))
    with (
        pytest.raises(SourceFolderError, match=r"source.path: .*does not exist"),
        SftpSource(sftp_server.feed(sftp_dir / "nope")) as source,
    ):
        source.check()  # logs in and checks the folder before anything is listed
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        source.check()


# ---- discovery --------------------------------------------------------------------------------


def test_pattern_business_dates_and_temp_names(sftp_server: SftpServer, sftp_dir: Path) -> None:
    for name in [
        "pos_20261118.csv",
        "pos_20261119.csv",
        "pos_20261120.csv",
        "pos_20261120.csv.part",
        "pos_20261120.csv.tmp",
        "pos_20261120.csv.filepart",
        "other_20261120.csv",
    ]:
        write(sftp_dir, name)
    feed = sftp_server.feed(sftp_dir, pattern="pos_{business_date:%Y%m%d}*")
    with SftpSource(feed) as source:
        found = {f.name for f in source.discover([date(2026, 11, 19), date(2026, 11, 20)])}
    assert found == {"pos_20261119.csv", "pos_20261120.csv"}


def test_symlinks_directories_and_hostile_names_are_skipped(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(sftp_dir, "good.csv")
    write(sftp_dir, "bad\nname.csv")
    write(sftp_dir, "..\\..\\escape.csv")
    write(sftp_dir, "\x1b[31mred.csv")
    (sftp_dir / "dir.csv").mkdir()
    outside = tmp_path / "secret.csv"
    outside.write_bytes(b"not for you")
    (sftp_dir / "link.csv").symlink_to(outside)
    staging = tmp_path / "staging"
    with (
        caplog.at_level(logging.WARNING, logger="pipeline.sources.sftp"),
        SftpSource(sftp_server.feed(sftp_dir, pattern="*")) as source,
    ):
        found = list(source.discover([]))
        assert [f.name for f in found] == ["good.csv"]
        with pytest.raises(SourceUnavailableError, match="refusing remote name"):
            source.fetch(RemoteFile("../escape.csv", 1, 0.0), staging)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "unsafe name" in warned and "escape.csv" in warned and "bad\\nname.csv" in warned
    assert not list(tmp_path.rglob("escape.csv"))


def test_names_that_are_not_utf8_are_skipped_and_the_rest_is_listed(
    sftp_server: SftpServer, sftp_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(sftp_dir, "pos_20261120_10.csv")
    os.close(os.open(os.fsencode(sftp_dir) + b"/caf\xe9_notes.txt", os.O_CREAT | os.O_WRONLY))
    os.close(os.open(os.fsencode(sftp_dir) + b"/pos_20261120_1\xe9.csv", os.O_CREAT | os.O_WRONLY))
    feed = sftp_server.feed(sftp_dir, pattern="pos_{business_date:%Y%m%d}_??.csv")
    with caplog.at_level(logging.WARNING), SftpSource(feed) as source:
        found = [f.name for f in source.discover([date(2026, 11, 20)])]
        skipped = source.skipped
    assert found == ["pos_20261120_10.csv"]
    # the Latin-1 name that matches the pattern is reported (printable, with its byte escaped);
    # the one that does not match is none of the feed's business, like any other file
    assert skipped == [("pos_20261120_1\\xe9.csv", "unsafe name: not valid UTF-8")]
    assert "pos_20261120_1\\\\xe9.csv" in caplog.text and "not valid UTF-8" in caplog.text


def test_a_file_being_written_is_not_taken_until_stable(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    slow = sftp_dir / "slow.csv"
    write(sftp_dir, "done.csv")
    started = threading.Event()

    def writer() -> None:
        with slow.open("wb") as out:
            for i in range(12):
                out.write(f"T{i},S1\n".encode())
                out.flush()
                os.utime(slow, (time.time(), time.time() + i))  # mtimes are whole seconds on SFTP
                started.set()
                time.sleep(0.1)

    thread = threading.Thread(target=writer)
    thread.start()
    started.wait(5)
    feed = sftp_server.feed(sftp_dir, readiness="stable", stable_seconds=0.5)
    with SftpSource(feed) as source:
        first = [f.name for f in source.discover([])]
        thread.join()
        second = {f.name: f for f in source.discover([])}
        fetched = source.fetch(second["slow.csv"], tmp_path)
    assert first == ["done.csv"]
    assert set(second) == {"done.csv", "slow.csv"}
    assert fetched.path.read_bytes() == slow.read_bytes()
    assert fetched.path.read_bytes().count(b"\n") == 12


def test_done_marker_mode(sftp_server: SftpServer, sftp_dir: Path) -> None:
    write(sftp_dir, "a.csv")
    write(sftp_dir, "b.csv")
    write(sftp_dir, "c.csv")
    feed = sftp_server.feed(sftp_dir, readiness="marker", pattern="*")
    with SftpSource(feed) as source:
        assert list(source.discover([])) == []
        write(sftp_dir, "a.csv.done", b"")
        write(sftp_dir, "b.ok", b"")  # the stem form counts too
        assert sorted(f.name for f in source.discover([])) == ["a.csv", "b.csv"]


def test_listing_a_big_folder_streams(sftp_server: SftpServer, sftp_dir: Path) -> None:
    for i in range(10_500):
        (sftp_dir / f"noise_{i:05d}.txt").touch()
    write(sftp_dir, "pos_20261120.csv")
    with SftpSource(sftp_server.feed(sftp_dir, pattern="pos_{business_date:%Y%m%d}.csv")) as source:
        assert [f.name for f in source.discover([date(2026, 11, 20)])] == ["pos_20261120.csv"]


def test_memory_stays_flat_whatever_the_file_size(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    data = os.urandom(48 << 20)
    write(sftp_dir, "huge.csv", data)
    write(sftp_dir, "empty.csv", b"")
    meter = ResourceMeter(interval_seconds=0.005)
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        files = {f.name: f for f in source.discover([])}
        baseline = current_rss()
        with meter, meter.stage("fetch"):
            fetched = source.fetch(files["huge.csv"], tmp_path)
        empty = source.fetch(files["empty.csv"], tmp_path)
    assert fetched.sha256 == sha(data)
    assert (empty.size, empty.sha256, empty.path.read_bytes()) == (0, sha(b""), b"")
    growth = meter.stages["fetch"].peak_rss_bytes - baseline
    assert growth < 24 << 20, f"fetching 48 MiB grew the process by {growth >> 20} MiB"


# ---- dropped connections ----------------------------------------------------------------------


def _partial_started(staging: Path) -> bool:
    """Whether a fetch into ``staging`` has written its first bytes."""
    for part in staging.glob(".fetch-*.part"):
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_size > 0:
                return True
    return False


def _kill_when_partial(server: SftpServer, staging: Path, times: int) -> threading.Thread:
    """Kill the server's session processes while a fetch is half way, ``times`` times."""

    def watch() -> None:
        kills = 0
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        while kills < times and time.monotonic() < deadline:
            for part in staging.glob(".fetch-*.part") if staging.exists() else []:
                try:
                    size = part.stat().st_size
                except FileNotFoundError:
                    continue
                if part.name not in seen and size > 0:
                    seen.add(part.name)
                    if server.kill_sessions():
                        kills += 1
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_connection_dropped_mid_transfer_is_retried(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(24 << 20)
    write(sftp_dir, "big.csv", data)
    staging = tmp_path / "staging"
    with SftpSource(sftp_server.feed(sftp_dir, fetch_attempts=3), sleep=no_sleep) as source:
        (found,) = source.discover([])
        killer = _kill_when_partial(sftp_server, staging, times=1)
        with caplog.at_level(logging.WARNING, logger="pipeline.sources.sftp"):
            fetched = source.fetch(found, staging)
        killer.join(5)
    assert "attempt 1 of 3" in caplog.text
    assert fetched.sha256 == sha(data) and fetched.size == len(data)
    assert [p.name for p in staging.iterdir()] == ["big.csv"]


def test_connection_dropped_every_time_gives_up_transiently(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    write(sftp_dir, "big.csv", os.urandom(24 << 20))
    staging = tmp_path / "staging"
    with SftpSource(sftp_server.feed(sftp_dir, fetch_attempts=2), sleep=no_sleep) as source:
        (found,) = source.discover([])
        killer = _kill_when_partial(sftp_server, staging, times=2)
        with pytest.raises(SourceUnavailableError, match="failed 2 times"):
            source.fetch(found, staging)
        killer.join(5)
    assert list(staging.iterdir()) == []


def test_a_stalled_server_hits_the_read_timeout_and_the_fetch_is_retried(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(24 << 20)
    write(sftp_dir, "big.csv", data)
    staging = tmp_path / "staging"
    stopped: list[int] = []

    def stall_when_partial() -> None:  # freeze (SIGSTOP) the session serving the first attempt
        deadline = time.monotonic() + 60
        while not stopped and time.monotonic() < deadline:
            if _partial_started(staging):
                for pid in sftp_server.session_pids():
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            time.sleep(0.002)

    feed = sftp_server.feed(sftp_dir, read_timeout=1.0, fetch_attempts=2)
    try:
        with SftpSource(feed, sleep=no_sleep) as source:
            (found,) = source.discover([])
            staller = threading.Thread(target=stall_when_partial, daemon=True)
            staller.start()
            with caplog.at_level(logging.WARNING, logger="pipeline.sources.sftp"):
                fetched = source.fetch(found, staging)
            staller.join(5)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped
    assert "timed out" in caplog.text and "attempt 1 of 2" in caplog.text
    assert fetched.sha256 == sha(data)


# ---- finish -----------------------------------------------------------------------------------


def test_archive_moves_file_and_marker_into_created_folder(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    write(sftp_dir, "a.csv")
    write(sftp_dir, "a.csv.done", b"")
    (sftp_dir / "processed").mkdir()
    write(sftp_dir / "processed", "a.csv", b"an older version")
    feed = sftp_server.feed(sftp_dir, readiness="marker", archive_path="processed/2026")
    with SftpSource(feed) as source:
        (found,) = source.discover([])
        source.fetch(found, tmp_path)
        source.finish(found, "archive")
    assert not (sftp_dir / "a.csv").exists() and not (sftp_dir / "a.csv.done").exists()
    assert (sftp_dir / "processed/2026/a.csv").read_bytes() == CSV
    assert (sftp_dir / "processed/2026/a.csv.done").exists()
    assert (sftp_dir / "processed/a.csv").read_bytes() == b"an older version"


def test_archive_keeps_earlier_archived_versions(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    (sftp_dir / "archive").mkdir()
    write(sftp_dir / "archive", "a.csv", b"v1")
    write(sftp_dir, "a.csv", b"v2")
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        (found,) = source.discover([])
        source.fetch(found, tmp_path)
        source.finish(found, "archive")
    assert (sftp_dir / "archive/a.csv").read_bytes() == b"v1"
    assert (sftp_dir / "archive/a.csv.1").read_bytes() == b"v2"


def test_delete_and_keep(sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path) -> None:
    write(sftp_dir, "a.csv")
    write(sftp_dir, "b.csv")
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        a, b = sorted(source.discover([]), key=lambda f: f.name)
        source.finish(a, "delete")
        source.finish(b, "keep")
    assert sorted(p.name for p in sftp_dir.iterdir()) == ["b.csv"]


def test_a_file_changed_since_fetch_is_not_archived(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    path = write(sftp_dir, "a.csv")
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        (found,) = source.discover([])
        source.fetch(found, tmp_path)
        path.write_bytes(CSV + b"T3,S1\n")  # a new version arrives under the same name
        source.finish(found, "archive")
    assert path.exists() and not (sftp_dir / "archive").exists()


def test_a_file_replaced_since_fetch_is_not_quarantined(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    path = write(sftp_dir, "a.csv", b"")
    write(sftp_dir, "a.csv.done", b"")
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        (found,) = source.discover([])
        fetched = source.fetch(found, tmp_path)
        upload = sftp_dir / ".a.csv.uploading"
        upload.write_bytes(CSV)
        os.utime(upload, (1_800_000_000, 1_800_000_000))
        os.replace(upload, path)  # the complete export replaces the empty one atomically
        at_fetch = RemoteFile(fetched.name, fetched.size, fetched.mtime)
        with pytest.raises(SourceFileChangedError, match=r"changed on .* since it was fetched"):
            source.quarantine(at_fetch)
    assert path.read_bytes() == CSV and (sftp_dir / "a.csv.done").exists()
    assert not (sftp_dir / "quarantine").exists()


def test_quarantine_moves_the_file_fetched_and_its_marker(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    write(sftp_dir, "a.csv", b"")
    write(sftp_dir, "a.csv.done", b"")
    with SftpSource(sftp_server.feed(sftp_dir)) as source:
        (found,) = source.discover([])
        fetched = source.fetch(found, tmp_path)
        where = source.quarantine(RemoteFile(fetched.name, fetched.size, fetched.mtime))
    assert where == str(sftp_dir / "quarantine" / "a.csv")
    assert sorted(p.name for p in (sftp_dir / "quarantine").iterdir()) == ["a.csv", "a.csv.done"]


# ---- a file swapped, growing or unreadable between listing and fetch ---------------------------


class Sleeps(list[float]):
    """A backoff that records its waits instead of waiting: no entry, no retry."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _swap(path: Path, kind: str, elsewhere: Path) -> None:
    path.unlink()
    if kind == "rewritten":
        path.write_bytes(CSV * 2)
    elif kind == "symlink":
        elsewhere.write_bytes(b"not for the feed")
        path.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "says"),
    [("rewritten", "since it was listed"), ("symlink", "symbolic link"), ("fifo", "FIFO"),
     ("directory", "directory")],
)
def test_a_file_swapped_after_listing_fails_at_once_naming_it(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path, kind: str, says: str
) -> None:
    write(sftp_dir, "a.csv")
    sleeps = Sleeps()
    source = SftpSource(sftp_server.feed(sftp_dir, read_timeout=5.0), sleep=sleeps)
    try:
        (listed,) = source.discover([])
        _swap(sftp_dir / "a.csv", kind, tmp_path / "elsewhere.csv")
        with pytest.raises(SourceFileChangedError, match=f"a.csv.*{says}"):
            source.fetch(listed, tmp_path / "staging")
    finally:
        source.close()
        if kind == "fifo":  # a server blocked opening the FIFO gets a writer, then end of file
            with contextlib.suppress(OSError):
                os.close(os.open(sftp_dir / "a.csv", os.O_WRONLY | os.O_NONBLOCK))
    assert sleeps == []  # not retried: the next run looks at the file again
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_file_growing_while_it_is_downloaded_fails_at_once_and_is_not_taken(
    sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    growing = write(sftp_dir, "a.csv", CSV * 200_000)  # several read blocks
    real_write = stream_module.HashingWriter.write

    def till_still_writing(self: stream_module.HashingWriter, chunk: bytes) -> None:
        with growing.open("ab") as out:  # the till appends a line while the file is read
            out.write(b"T3,S1\n")
        real_write(self, chunk)

    monkeypatch.setattr(stream_module.HashingWriter, "write", till_still_writing)
    sleeps = Sleeps()
    with SftpSource(sftp_server.feed(sftp_dir), sleep=sleeps) as source:
        (listed,) = source.discover([])
        with pytest.raises(SourceFileChangedError, match=r"a\.csv.*changed .*while it was being fetched"):
            source.fetch(listed, tmp_path / "staging")
    assert sleeps == []
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_file_the_account_may_not_read_fails_at_once_naming_it(
    sftp_server: SftpServer, sftp_password_user: SftpUser, sftp_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(sftp_dir, "a.csv").chmod(0o600)  # root's: the password user may list it, not read it
    write(sftp_dir, "b.csv").chmod(0o644)
    monkeypatch.setenv("TEST_SFTP_PASSWORD", sftp_password_user.password or "")
    feed = sftp_server.feed(sftp_dir, username=sftp_password_user.name, password_env="TEST_SFTP_PASSWORD")
    feed = feed.model_copy(update={"source": feed.source.model_copy(update={"private_key_file": None})})
    feed._config_dir = sftp_dir.parent / f".{sftp_dir.name}-config"
    sleeps = Sleeps()
    with SftpSource(feed, sleep=sleeps) as source:
        found = {f.name: f for f in source.discover([])}
        with pytest.raises(SourceUnavailableError, match=r"a\.csv.*permission denied"):
            source.fetch(found["a.csv"], tmp_path / "staging")
        assert source.fetch(found["b.csv"], tmp_path / "staging").sha256 == sha(CSV)
    assert sleeps == []


@pytest.mark.parametrize("closed", [EOFError(), paramiko.SSHException("Server connection dropped: "),
                                    OSError("Socket is closed")],
                         ids=["between-requests", "mid-request", "sending-after"])
def test_a_connection_the_server_closed_is_said_so_however_paramiko_meets_it(closed: Exception) -> None:
    # paramiko raises a bare EOFError, or, when the EOF meets a request it waits on, an SSHException
    # whose message ends with the EOF's own (empty), or, when the next request is sent on the
    # channel already closed, its OSError "Socket is closed": which one depends on timing
    assert describe(closed) == "the server closed the connection"
