"""Exit codes that mean one thing, each in a real `python -m pipeline` process, each with its cause
on stderr without `-v`: 0 clean, 65 data errors, 75 temporary (platform or SFTP unreachable, lock
held), 78 configuration or credentials, 74 the state folder's I/O, 70 only for a bug."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import Feed
from pipeline.ledger import Ledger
from pipeline.locks import RunLock
from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import (
    clean_day,
    env_for,
    free_port,
    ledger_files,
    ops_feed,
    posfeed,
    run_json,
    write_feed,
)
from tests.runner_helpers import REPO, copy_samples, delivered_ids
from tests.sftp_fixtures import SftpServer

RUN = ("run", "--business-date", "2026-11-20")


@pytest.fixture
def live(tmp_path: Path) -> SandboxServer:
    with SandboxServer() as sandbox:
        yield sandbox


def _feed_file(sandbox: SandboxServer, tmp: Path, folder: Path | None = None, **target: object) -> Path:
    return write_feed(ops_feed(sandbox, folder or tmp / "drop", **target), tmp / "shop.toml")


def _sftp_feed(
    sftp_server: SftpServer, sandbox: SandboxServer, folder: Path, tmp: Path, **source: object
) -> Path:
    base = ops_feed(sandbox, folder)
    feed: Feed = sftp_server.feed(folder, **source)
    feed = base.model_copy(update={"source": feed.source.model_copy(update={"pattern": base.source.pattern})})
    return write_feed(feed, tmp / "sftpshop.toml")


def test_0_clean(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 20)
    proc = posfeed(tmp_path, *RUN, "--feed", str(_feed_file(live, tmp_path)), env=env_for(live))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exit 0 (all final and balanced)" in proc.stdout
    assert "backlog:   carried over 0 from earlier runs; 0 waiting for the next run" in proc.stdout


def test_65_data_errors_say_what(live: SandboxServer, tmp_path: Path) -> None:
    copy_samples(tmp_path / "drop", ["pos_BER01_20261120_10.csv"])  # one rejected transaction
    proc = posfeed(tmp_path, *RUN, "--feed", str(_feed_file(live, tmp_path)), env=env_for(live))
    assert proc.returncode == 65, proc.stderr[-2000:]
    assert "exit 65: 1 transaction rejected (see rejects.csv)" in proc.stderr


def test_0_a_run_of_one_transaction_says_one(live: SandboxServer, tmp_path: Path) -> None:
    """Text summaries count in words that agree with their numbers: `1 row, 1 transaction`,
    `0 transactions`; the run's and its report's (a rerun that finds nothing to resend says
    so in one line, tests/test_rerun_selection.py)."""
    clean_day(tmp_path / "drop", 1)
    feed = str(_feed_file(live, tmp_path))
    proc = posfeed(tmp_path, *RUN, "--feed", feed, env=env_for(live))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "  in:        1 row, 1 transaction" in lines, proc.stdout
    assert "  rejected:  0 transactions (0 rows)" in lines, proc.stdout
    run_id = lines[0].split()[2].rstrip(":")
    report = posfeed(tmp_path, "report", run_id, env=env_for(live))
    assert report.returncode == 0 and f"{run_id}: 1 row, 1 transaction, 1 accepted," in report.stdout
    rerun = posfeed(tmp_path, "rerun", run_id, "--feed", feed, env=env_for(live))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.startswith(f"nothing to rerun: run {run_id}: "), rerun.stdout


def test_75_lock_held(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 5)
    lock = RunLock.acquire(tmp_path / "state", "acme", feed="acme_daily")
    try:
        proc = posfeed(tmp_path, *RUN, "--feed", str(_feed_file(live, tmp_path)), env=env_for(live))
    finally:
        lock.release()
    assert proc.returncode == 75
    assert "is being run by" in proc.stderr


def test_75_platform_unreachable_says_why(tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 5)
    with SandboxServer() as sandbox:
        feed = ops_feed(sandbox, tmp_path / "drop")
        env = env_for(sandbox)
    path = write_feed(
        feed.model_copy(
            update={"target": feed.target.model_copy(update={"base_url": f"http://127.0.0.1:{free_port()}"})}
        ),
        tmp_path / "shop.toml",
    )
    proc = posfeed(tmp_path, *RUN, "--feed", str(path), env=env)
    assert proc.returncode == 75
    assert "cannot be reached: connection failed" in proc.stderr


def test_75_platform_unreachable_mid_run_says_why(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 20)
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    proc = posfeed(tmp_path, *RUN, "--feed", str(_feed_file(live, tmp_path)), env=env_for(live))
    assert proc.returncode == 75
    assert "20 failed retryable: 503: Injected server error" in proc.stderr


def test_75_sftp_unreachable(
    live: SandboxServer, sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    """Nothing carried over from earlier runs: a run that cannot reach its source is refused, and
    records nothing."""
    path = _sftp_feed(sftp_server, live, sftp_dir, tmp_path, port=free_port(), connect_timeout=2.0)
    proc = posfeed(tmp_path, *RUN, "--feed", str(path), env=env_for(live))
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert "cannot reach" in proc.stderr
    assert ledger_files(tmp_path) == 0
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
        assert ledger.runs() == []


def test_75_sftp_unreachable_still_sends_what_earlier_runs_left(
    live: SandboxServer, sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    """Run 1 left its checkouts failed-retryable (the platform answered 503); run 2 cannot reach
    the SFTP server, sends them all the same, says so on the console and exits 75 naming the
    source; run 3, with the server back, has nothing left to send."""
    ids = clean_day(sftp_dir, 5)
    path = _sftp_feed(sftp_server, live, sftp_dir, tmp_path)
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    first = posfeed(tmp_path, *RUN, "--feed", str(path), env=env_for(live))
    assert first.returncode == 75 and "5 failed retryable: 503" in first.stderr, first.stderr[-2000:]
    live.config.fault_rate = 0.0
    port = free_port()
    (tmp_path / "down").mkdir()  # the same feed, its server down
    down = _sftp_feed(sftp_server, live, sftp_dir, tmp_path / "down", port=port, connect_timeout=2.0)
    second = posfeed(tmp_path, *RUN, "--feed", str(down), env=env_for(live))
    assert second.returncode == 75, second.stderr[-2000:]
    assert f"source not reached, no file read: cannot reach sftp://{sftp_server.user}@127.0.0.1:{port}" \
        in second.stderr
    assert "  source:    not reached, no file read (the next run reads them): cannot reach" in second.stdout
    assert "  accepted:  5 " in second.stdout and "carried over 5 from earlier runs" in second.stdout
    assert sorted(delivered_ids(live)) == sorted(ids)
    third = posfeed(tmp_path, *RUN, "--feed", str(path), "--json", env=env_for(live))
    assert third.returncode == 0, third.stderr[-2000:]
    assert run_json(third)["carried_over"] == 0 and sorted(delivered_ids(live)) == sorted(ids)


def test_78_missing_sftp_folder(
    live: SandboxServer, sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    path = _sftp_feed(sftp_server, live, sftp_dir / "no-such-folder", tmp_path)
    proc = posfeed(tmp_path, *RUN, "--feed", str(path), env=env_for(live))
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "source.path" in proc.stderr and "folder does not exist" in proc.stderr


def test_78_missing_local_folder(live: SandboxServer, tmp_path: Path) -> None:
    proc = posfeed(
        tmp_path, *RUN, "--feed", str(_feed_file(live, tmp_path, tmp_path / "nowhere")), env=env_for(live)
    )
    assert proc.returncode == 78
    assert "folder does not exist" in proc.stderr


@pytest.mark.parametrize("check", [True, False])
def test_78_missing_key_found_before_any_file(live: SandboxServer, tmp_path: Path, check: bool) -> None:
    clean_day(tmp_path / "drop", 5)
    env = env_for(live)
    del env["ANTAVO_API_KEY"]
    feed = _feed_file(live, tmp_path, check_credentials=check)
    proc = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
    assert proc.returncode == 78
    assert "ANTAVO_API_KEY is not set" in proc.stderr
    assert ledger_files(tmp_path) == 0


def test_78_a_missing_key_is_told_before_an_unreachable_sftp_server(
    live: SandboxServer, sftp_server: SftpServer, sftp_dir: Path, tmp_path: Path
) -> None:
    """A secret that is not set is configuration, known without any connection: a new feed's
    first run says so (78) rather than 75 for its SFTP server, only to fail on the key next."""
    path = _sftp_feed(sftp_server, live, sftp_dir, tmp_path, port=free_port(), connect_timeout=2.0)
    env = env_for(live)
    del env["ANTAVO_API_KEY"]
    proc = posfeed(tmp_path, *RUN, "--feed", str(path), env=env)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "ANTAVO_API_KEY is not set" in proc.stderr and "cannot reach" not in proc.stderr
    assert ledger_files(tmp_path) == 0


def test_78_runs_of_a_feed_that_does_not_exist(tmp_path: Path) -> None:
    proc = posfeed(tmp_path, "--feeds-dir", str(REPO / "feeds"), "runs", "--feed", "typo", env=env_for(None))
    assert proc.returncode == 78
    assert "no feed named 'typo'" in proc.stderr
    known = posfeed(
        tmp_path, "--feeds-dir", str(REPO / "feeds"), "runs", "--feed", "acme_hourly", env=env_for(None)
    )
    assert known.returncode == 0 and known.stdout.strip() == "no runs yet"


def test_78_commands_over_every_feed_name_a_feeds_folder_that_does_not_exist(tmp_path: Path) -> None:
    """Run from a folder without `feeds/`, `runs --missing` said "no feed declares [expected] files"
    and exited 0, `run --all` "no feed files" and `schedule` "no enabled feed with a schedule": each
    now names the folder that is not there."""
    for args in (("runs", "--missing"), ("run", "--all"), ("schedule",)):
        proc = posfeed(tmp_path, *args, env=env_for(None))
        assert proc.returncode == 78, (args, proc.stdout, proc.stderr)
        assert f"feeds folder does not exist: {tmp_path / 'feeds'}" in proc.stderr, (args, proc.stderr)
        assert "declares" not in proc.stdout


def test_78_release_for_a_feed_that_does_not_exist(tmp_path: Path) -> None:
    """`release --feed typo` names the feed, as `runs --feed typo` does, with or without a ledger."""
    feeds = ("--feeds-dir", str(REPO / "feeds"))
    proc = posfeed(tmp_path, *feeds, "release", "--feed", "typo", "x.csv", env=env_for(None))
    assert proc.returncode == 78, proc.stderr
    assert "no feed named 'typo'" in proc.stderr
    (tmp_path / "state").mkdir()
    with Ledger(tmp_path / "state" / "ledger.sqlite"):
        pass
    proc = posfeed(tmp_path, *feeds, "release", "--feed", "typo", "x.csv", env=env_for(None))
    assert proc.returncode == 78, proc.stderr
    assert "no feed named 'typo'" in proc.stderr


def test_78_a_verb_without_its_extra_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # this interpreter without numpy and matplotlib, as an install without the dev extra
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['numpy'] = None\nsys.modules['matplotlib'] = None\n", encoding="utf-8"
    )
    path = [str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = env_for(None, PYTHONPATH=os.pathsep.join(path))
    proc = posfeed(tmp_path, "bench", "e2e", "--line-items", "100", env=env)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "'dev' extra" in proc.stderr and "numpy" in proc.stderr and "pip install" in proc.stderr
    for verb in ("e2e", "ledger", "all"):  # their --help needs no extra
        helped = posfeed(tmp_path, "bench", verb, "--help", env=env)
        assert helped.returncode == 0, helped.stderr[-2000:]
        assert helped.stdout.startswith(f"Usage: python -m pipeline bench {verb} [OPTIONS]"), helped.stdout
        assert "--json" in helped.stdout and "extra" not in helped.stderr
    for verb in ("ledger", "all"):
        refused = posfeed(tmp_path, "bench", verb, env=env)
        assert refused.returncode == 78 and f"posfeed bench {verb} needs" in refused.stderr, refused.stderr


def test_78_a_sandbox_state_file_that_is_not_one(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 12)
    proc = posfeed(tmp_path, "sandbox", "--port", "0", "--state", str(garbage), env=env_for(None), timeout=60)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert f"posfeed: error: {garbage} is neither a sandbox state database nor a JSON state" in proc.stderr


def test_2_usage_errors(tmp_path: Path) -> None:
    """A command line that names what does not exist: exit 2 with click's usage message."""
    env = env_for(None)
    (tmp_path / "state").mkdir()
    with Ledger(tmp_path / "state" / "ledger.sqlite"):
        pass  # an empty ledger: no runs, no problems, nothing in quarantine
    for args, says in [
        (("report", "nope"), "no run 'nope'"),
        (("rerun", "nope"), "no run 'nope'"),
        (("problems", "--resolve", "999"), "no open problem #999"),
        (("runs", "--missing", "--business-date", "2026-13-01"), "does not match the format"),
        (("run", "--feed", "shop", "--business-date", "2026-13-01"), "does not match the format"),
        (("release", "nothing.csv"), "no file named 'nothing.csv' is in quarantine"),
        (("check", "nothing.csv"), "'nothing.csv' does not exist"),
        (("run", "--all", "--feed", "shop"), "--all and --feed cannot be combined"),
        (("run",), "give --feed NAME (repeatable) or --all"),
    ]:
        proc = posfeed(tmp_path, *args, env=env, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert says in proc.stderr and "Usage: " in proc.stderr, (args, proc.stderr)


def test_2_a_run_of_a_business_date_to_come(live: SandboxServer, tmp_path: Path) -> None:
    """`posfeed run --business-date` of a day that has begun in none of the feed's timezones is a
    usage error naming the option, as `posfeed rerun` and `posfeed report` refuse it; nothing runs."""
    clean_day(tmp_path / "drop", 5)
    feed = str(_feed_file(live, tmp_path))
    to_come = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()  # past every timezone's today
    for args in (("--business-date", to_come), ("--business-date", "2026-11-20", "--business-date", to_come)):
        proc = posfeed(tmp_path, "run", "--feed", feed, *args, env=env_for(live), timeout=60)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "--business-date" in proc.stderr and "future" in proc.stderr and "Usage: " in proc.stderr
        assert not (tmp_path / "state" / "ledger.sqlite").exists()  # nothing ran


def test_2_a_report_of_a_day_to_come_whatever_the_ledger(live: SandboxServer, tmp_path: Path) -> None:
    """`posfeed report --feed F --business-date <to come>` is a usage error naming the option
    (exit 2) with no ledger yet as with one: before, with none it exited 78 ("no ledger")."""
    feed = str(_feed_file(live, tmp_path))
    to_come = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()  # past every timezone's today
    args = ("report", "--feed", feed, "--business-date", to_come)
    without = posfeed(tmp_path, *args, env=env_for(live), timeout=60)
    assert without.returncode == 2, without.stderr[-2000:]
    assert "--business-date" in without.stderr and "future" in without.stderr and "Usage: " in without.stderr
    assert not (tmp_path / "state" / "ledger.sqlite").exists()
    (tmp_path / "state").mkdir()
    with Ledger(tmp_path / "state" / "ledger.sqlite"):
        pass
    with_ledger = posfeed(tmp_path, *args, env=env_for(live), timeout=60)
    assert with_ledger.returncode == 2, with_ledger.stderr[-2000:]
    assert "future" in with_ledger.stderr and "Usage: " in with_ledger.stderr
    # a date that has begun, with no ledger: still the configuration error it was
    (tmp_path / "none").mkdir()
    today = posfeed(tmp_path / "none", "report", "--feed", feed, "--business-date", "2026-11-20",
                    env=env_for(live), timeout=60)
    assert today.returncode == 78 and "no ledger" in today.stderr, today.stderr[-2000:]


def test_74_corrupt_ledger_names_the_path_and_what_to_do(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 5)
    (tmp_path / "state").mkdir()
    ledger = tmp_path / "state" / "ledger.sqlite"
    ledger.write_bytes(b"this is not a ledger" * 500)
    proc = posfeed(tmp_path, *RUN, "--feed", str(_feed_file(live, tmp_path)), env=env_for(live))
    assert proc.returncode == 74, proc.stderr[-2000:]
    assert str(ledger) in proc.stderr and "restore it from a backup" in proc.stderr
    assert "internal error" not in proc.stderr


def _in_own_mounts(script: str, target: Path) -> list[str]:
    """Run the command inside a private mount namespace that first runs ``script`` on ``target``
    (root needs no user namespace for it, which a chroot or a locked-down container forbids)."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare is needed (Debian package util-linux, essential: always installed)"
    as_root = [] if os.geteuid() == 0 else ["-r"]
    return [unshare, *as_root, "-m", "sh", "-c", script + ' && shift && exec "$@"', "sh", str(target)]


def test_74_read_only_state_folder(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 5)
    feed = _feed_file(live, tmp_path)
    first = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env_for(live))
    assert first.returncode == 0, first.stderr[-2000:]
    clean_day(tmp_path / "drop", 10, name="pos_LON01_20261120_11.csv")
    wrap = _in_own_mounts('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"', tmp_path / "state")
    proc = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env_for(live), wrap=wrap)
    assert proc.returncode == 74, proc.stderr[-2000:]
    assert str(tmp_path / "state") in proc.stderr and "read-only" in proc.stderr


def test_74_disk_full(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 3000)
    (tmp_path / "state").mkdir()
    feed = _feed_file(live, tmp_path)
    wrap = _in_own_mounts('mount -t tmpfs -o size=400k tmpfs "$1"', tmp_path / "state")
    proc = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env_for(live), wrap=wrap)
    assert proc.returncode == 74, proc.stderr[-2000:]
    assert str(tmp_path / "state") in proc.stderr and "free disk space" in proc.stderr


def test_70_only_for_a_bug(tmp_path: Path) -> None:
    code = (
        "import sys\nimport pipeline.run_commands as rc\n"
        "def broken(*args, **kwargs):\n    raise KeyError('a bug')\n"
        "rc.runs_command = broken\nfrom pipeline.cli import main\n"
        "sys.argv = ['posfeed', '--state-dir', sys.argv[1], 'runs']\nmain()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 70
    assert "internal error (a bug; please report it): KeyError" in proc.stderr


def test_a_json_run_says_what_it_carried_and_what_waits(live: SandboxServer, tmp_path: Path) -> None:
    clean_day(tmp_path / "drop", 20)
    proc = posfeed(tmp_path, *RUN, "--json", "--feed", str(_feed_file(live, tmp_path)), env=env_for(live))
    summary = run_json(proc)
    assert {
        k: summary[k]
        for k in ("carried_over", "waiting", "waiting_oldest_at", "waiting_oldest_age_seconds", "needs_rerun")
    } == {
        "carried_over": 0,
        "waiting": 0,
        "waiting_oldest_at": None,
        "waiting_oldest_age_seconds": None,
        "needs_rerun": 0,
    }
