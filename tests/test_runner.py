"""The runner on a few sample files: dry runs, reruns by scope, locks, file identity, archiving.

The rerun tests run against both ledger backends (``ledger_location``: SQLite, PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import Feed, Settings
from pipeline.errors import EXIT_OK, EXIT_TEMPFAIL, ConfigError, LockHeldError
from pipeline.ledger import Ledger, TxnState
from pipeline.locks import RunLock, lock_path
from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import (
    BUSINESS_DATE,
    REPO,
    copy_samples,
    credentials,
    delivered_ids,
    feed_toml,
    sample_feed,
    settings_in,
    stats,
)

FILES = ("pos_LON01_20261120_10.csv", "pos_LON01_20261120_11.csv", "pos_BER01_20261120_11.csv")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    copy_samples(tmp_path / "drop", FILES)
    return tmp_path / "drop"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_in(tmp_path)


@pytest.fixture
def live(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    with credentials(sandbox):
        yield sandbox


@pytest.fixture
def live_kind(sandbox: SandboxServer, target_kind: str) -> Iterator[SandboxServer]:
    """The sandbox with the credentials of ``target_kind`` (each platform in turn)."""
    with credentials(sandbox, target_kind):
        yield sandbox


def _feed(sandbox: SandboxServer, folder: Path, target_kind: str = "antavo", **source: object) -> Feed:
    return sample_feed("acme_hourly", sandbox, folder=folder, source=dict(source), max_attempts=1,
                       target_kind=target_kind)


def _states(settings: Settings) -> dict[str, int]:
    with Ledger(settings.ledger_path) as ledger:
        return ledger.state_counts("acme")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dry_run_sends_nothing_and_leaves_the_ledger_unchanged(
    live: SandboxServer, folder: Path, settings: Settings
) -> None:
    feed = _feed(live, folder, after_success="archive")
    first = run_feed(feed, settings, business_dates=[BUSINESS_DATE], dry_run=True)
    assert stats(live)["requests"] == 0
    assert not settings.ledger_path.exists()  # a dry run never creates the real ledger
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # nothing archived
    s = first.summary
    assert s["dry_run"] is True and s["balanced"] is True and s["queued"] > 0 and s["accepted"] == 0
    assert first.reports_path is not None and (first.reports_path / "summary.csv").exists()

    # a real run of one file, then a dry run of everything: the ledger file stays byte for byte
    shutil.move(str(folder / FILES[2]), str(folder.parent / FILES[2]))
    real = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert real.summary["accepted"] > 0
    shutil.move(str(folder.parent / FILES[2]), str(folder / FILES[2]))
    before, requests = _sha(settings.ledger_path), stats(live)["requests"]
    states = _states(settings)
    dry = run_feed(feed, settings, business_dates=[BUSINESS_DATE], dry_run=True)
    assert _sha(settings.ledger_path) == before
    assert _states(settings) == states
    assert stats(live)["requests"] == requests
    assert FILES[2] in os.listdir(folder)
    assert dry.summary["files_new"] == [FILES[2]] and dry.summary["queued"] > 0
    with Ledger(settings.ledger_path) as ledger:
        assert dry.run_id not in {r.id for r in ledger.runs()}


def test_reruns_by_run_file_store_and_business_date(
    live_kind: SandboxServer, target_kind: str, folder: Path, settings: Settings, ledger_location: Path | str
) -> None:
    live = live_kind
    settings = _on(settings, ledger_location)  # each ledger backend in turn
    feed = _feed(live, folder, target_kind)
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    failed = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert failed.exit_code in (65, 75) and failed.summary["accepted"] == 0
    total_failed = failed.summary["failed_retryable"]
    assert total_failed > 0 and failed.summary["in_doubt"] == 0
    live.config.fault_rate = 0.0

    by_file = rerun_feed(feed, settings, RerunSelection(file=FILES[0]))
    with Ledger(settings.ledger_location) as ledger:
        rows = ledger.run_transactions(by_file.run_id)
    assert rows and {t.source_file for t in rows} == {FILES[0]}
    assert {t.state for t in rows} <= {TxnState.ACCEPTED, TxnState.NOT_SENT}
    assert by_file.summary["kind"] == "rerun" and by_file.summary["balanced"] is True
    assert by_file.reports_path is not None and by_file.reports_path.name == by_file.run_id

    by_store = rerun_feed(feed, settings, RerunSelection(store_id="BER01", business_date=BUSINESS_DATE))
    with Ledger(settings.ledger_location) as ledger:
        rows = ledger.run_transactions(by_store.run_id)
    assert rows and {t.store_id for t in rows} == {"BER01"}

    nothing = rerun_feed(feed, settings, RerunSelection(store_id="NYC01"))
    assert nothing.summary["transactions_in"] == 0 and nothing.exit_code == EXIT_OK

    by_run = rerun_feed(feed, settings, RerunSelection(run_id=failed.run_id))
    with Ledger(settings.ledger_location) as ledger:
        rows = ledger.run_transactions(by_run.run_id)
        assert {t.source_file for t in rows} == {FILES[1]}  # what was left of the first run
        counts = ledger.state_counts("acme")
    assert counts.get("failed_retryable", 0) == 0
    resent = [*rows, *ledger_rows(settings, by_file.run_id), *ledger_rows(settings, by_store.run_id)]
    assert len(resent) == total_failed
    assert stats(live)["duplicate_transaction_attempts"] == 0

    # accepted transactions are never resent, whatever the selection
    again = rerun_feed(feed, settings, RerunSelection(run_id=failed.run_id, include_permanent=True))
    assert again.summary["transactions_in"] == 0


def _on(settings: Settings, ledger_location: Path | str) -> Settings:
    """``settings`` with the ledger at ``ledger_location`` (a PostgreSQL URL; a path: the default)."""
    return replace(settings, ledger_url=None if isinstance(ledger_location, Path) else ledger_location)


def ledger_rows(settings: Settings, run_id: str) -> list[object]:
    with Ledger(settings.ledger_location) as ledger:
        return list(ledger.run_transactions(run_id))


def test_rerun_failed_permanent_only_when_asked(
    live_kind: SandboxServer, target_kind: str, tmp_path: Path, settings: Settings
) -> None:
    live = live_kind
    drop = tmp_path / "perm"
    drop.mkdir()
    source = (REPO / "sample_data" / "acme" / FILES[0]).read_text(encoding="utf-8").splitlines()
    header, rows = source[0], source[1:]
    column = header.split(",").index("customer_id")
    patched = []
    for line in rows:
        cells = line.split(",")
        if cells[column]:
            cells[column] = "unknown-" + cells[column]  # the platform does not know these customers
        patched.append(",".join(cells))
    (drop / FILES[0]).write_text("\n".join([header, *patched]) + "\n", encoding="utf-8")
    feed = _feed(live, drop, target_kind)
    first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    permanent = first.summary["failed_permanent"]
    assert permanent > 0 and first.exit_code == 65
    default = rerun_feed(feed, settings, RerunSelection(failed=True))
    assert default.summary["transactions_in"] == 0
    forced = rerun_feed(feed, settings, RerunSelection(failed=True, include_permanent=True))
    assert forced.summary["transactions_in"] == permanent
    assert forced.summary["failed_permanent"] == permanent  # still unknown, but it was tried again


def test_stop_leaves_a_consistent_ledger(live: SandboxServer, folder: Path, settings: Settings) -> None:
    stop = threading.Event()
    stop.set()
    feed = _feed(live, folder)
    stopped = run_feed(feed, settings, business_dates=[BUSINESS_DATE], stop=stop)
    assert stopped.exit_code == EXIT_TEMPFAIL and stopped.summary["status"] == "stopped"
    assert stats(live)["requests"] == 0
    resumed = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert resumed.summary["accepted"] > 0
    assert _states(settings).get("queued", 0) == 0 and _states(settings).get("sending", 0) == 0


def test_a_held_lock_refuses_the_run(live: SandboxServer, folder: Path, settings: Settings) -> None:
    feed = _feed(live, folder)
    lock = RunLock.acquire(settings.state_dir, "acme", feed="acme_daily")  # the daily feed shares the scope
    try:
        with pytest.raises(LockHeldError, match="acme_daily"):
            run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        env = {**os.environ, "POSFEED_STATE_DIR": str(settings.state_dir)}
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--feed", str(REPO / "feeds" / "acme_hourly.toml"),
             "--business-date", "2026-11-20"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == EXIT_TEMPFAIL, proc.stderr
        assert "being run by" in proc.stderr
    finally:
        lock.release()
    assert stats(live)["requests"] == 0


def test_a_stale_lock_is_taken_over(
    live: SandboxServer, folder: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    script = (
        "import os, signal\nfrom pathlib import Path\nfrom pipeline.locks import RunLock\n"
        f"RunLock.acquire(Path({str(settings.state_dir)!r}), 'acme', feed='acme_hourly')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert '"pid"' in lock_path(settings.state_dir, "acme").read_text(encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="pipeline.locks"):
        summary = run_feed(_feed(live, folder), settings, business_dates=[BUSINESS_DATE])
    assert summary.summary["accepted"] > 0
    assert "taking over the lock" in caplog.text


def test_file_identity_is_content(live: SandboxServer, folder: Path, settings: Settings) -> None:
    feed = _feed(live, folder)
    first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert sorted(first.summary["files_new"]) == sorted(FILES)
    # the same content under a new name is not processed again
    shutil.copy2(folder / FILES[0], folder / "pos_LON01_20261120_1x.csv")
    renamed = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert renamed.summary["files_new"] == [] and renamed.summary["rows_in"] == 0
    # the same name with new content supersedes the earlier file and is processed
    text = (folder / FILES[1]).read_text(encoding="utf-8")
    (folder / FILES[1]).write_text(text + text.splitlines()[-1].replace(",", ",", 1) + "\n", encoding="utf-8")
    time.sleep(0.01)
    newer = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert newer.summary["superseded_files"] == [FILES[1]]
    assert newer.summary["rows_in"] == len(text.splitlines())  # every row of the new version, header excluded
    assert newer.summary["balanced"] is True
    assert stats(live)["duplicate_transaction_attempts"] == 0


def test_files_are_archived_only_after_every_row_is_final(
    live: SandboxServer, folder: Path, settings: Settings
) -> None:
    feed = _feed(live, folder, after_success="archive", archive_path="done")
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(FILES)
    live.config.fault_rate = 0.0
    rerun_feed(feed, settings, RerunSelection(failed=True))
    assert [p.name for p in folder.iterdir() if p.is_file()] == []
    assert sorted(p.name for p in (folder / "done").iterdir()) == sorted(FILES)
    with Ledger(settings.ledger_path) as ledger:
        assert {f.status for f in ledger.files(scope="acme")} == {"finished"}


def test_unreadable_file_is_a_data_error(live: SandboxServer, folder: Path, settings: Settings) -> None:
    (folder / "pos_LON01_20261120_12.csv").write_bytes(b"\x00\x01\x02 not a csv \xff\xfe")
    summary = run_feed(_feed(live, folder), settings, business_dates=[BUSINESS_DATE])
    assert summary.exit_code == 65
    assert [u["file"] for u in summary.summary["unreadable_files"]] == ["pos_LON01_20261120_12.csv"]
    assert summary.summary["accepted"] > 0  # the rest of the feed still ran


def test_cli_rerun_by_run_id_and_by_feed(
    live: SandboxServer, folder: Path, tmp_path: Path, ledger_location: Path | str
) -> None:
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir()
    (feeds_dir / "shop.toml").write_text(feed_toml(_feed(live, folder)), encoding="utf-8")
    base = ["--state-dir", str(tmp_path / "state"), "--reports-dir", str(tmp_path / "reports"),
            "--feeds-dir", str(feeds_dir)]
    other_host = list(base)  # with SQLite: the same state folder, the ledger's home
    if not isinstance(ledger_location, Path):  # the PostgreSQL ledger, given as the global option
        base += ["--ledger-url", ledger_location]
        # reruns and history from another host: a state folder of its own, the same ledger
        other_host = [*base[:1], str(tmp_path / "host2"), *base[2:]]
    runner = CliRunner()
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    first = runner.invoke(cli, [*base, "run", "--feed", "shop", "--business-date", "2026-11-20", "--json"])
    assert first.exit_code == EXIT_TEMPFAIL, first.output
    failed = json.loads(first.stdout)
    assert failed["failed_retryable"] > 0
    live.config.fault_rate = 0.0
    usage = runner.invoke(cli, [*base, "rerun"])
    assert usage.exit_code == 2
    dry = runner.invoke(cli, [*other_host, "rerun", failed["run_id"], "--dry-run", "--json"])
    assert dry.exit_code == EXIT_OK, dry.output
    assert json.loads(dry.stdout)["queued"] == failed["failed_retryable"]
    assert stats(live)["events_accepted"] == 0
    rerun = runner.invoke(cli, [*other_host, "rerun", failed["run_id"], "--json"])
    assert rerun.exit_code == EXIT_OK, rerun.output
    resent = json.loads(rerun.stdout)
    assert resent["kind"] == "rerun" and resent["accepted"] + resent["not_sent"] == failed["failed_retryable"]
    assert resent["balanced"] is True
    again = runner.invoke(cli, [*base, "rerun", "--feed", "shop", "--failed", "--json"])
    assert json.loads(again.stdout)["transactions_in"] == 0
    for host in (base, other_host):
        listing = runner.invoke(cli, [*host, "runs", "--feed", "shop", "--json"])
        kinds = [r["kind"] for r in json.loads(listing.stdout)]
        assert kinds.count("run") == 1 and kinds.count("rerun") == 2  # a dry run leaves no trace


def test_a_missing_secret_fails_the_run_before_any_file_and_the_next_run_sends(
    sandbox: SandboxServer, folder: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTAVO_API_KEY", raising=False)
    monkeypatch.delenv("ANTAVO_API_SECRET", raising=False)
    feed = _feed(sandbox, folder)
    with pytest.raises(ConfigError, match="ANTAVO_API_KEY"):
        run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    # found before any file was read: no run, no file, no transaction recorded
    assert not settings.ledger_path.exists() or _states(settings) == {}
    assert stats(sandbox)["requests"] == 0
    with credentials(sandbox):
        fixed = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert sorted(fixed.summary["files_new"]) == sorted(FILES) and fixed.summary["accepted"] > 0
    assert fixed.exit_code in (EXIT_OK, 65) and fixed.summary["waiting"] == 0


def test_run_all_runs_every_feed_and_exits_with_the_worst(live: SandboxServer, folder: Path,
                                                          tmp_path: Path) -> None:
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir()
    good = sample_feed("acme_hourly", live, folder=folder, pattern="pos_LON01_*_10.csv")
    (feeds_dir / "good.toml").write_text(feed_toml(good), encoding="utf-8")
    nowhere = good.source.model_copy(update={"path": str(tmp_path / "nowhere")})
    gone = good.model_copy(update={"dedup_scope": "elsewhere", "source": nowhere})
    (feeds_dir / "gone.toml").write_text(feed_toml(gone), encoding="utf-8")
    (feeds_dir / "broken.toml").write_text("timezone = 'Mars/Olympus'\n", encoding="utf-8")
    base = ["--state-dir", str(tmp_path / "state"), "--reports-dir", str(tmp_path / "reports"),
            "--feeds-dir", str(feeds_dir)]
    result = CliRunner().invoke(cli, [*base, "run", "--all", "--business-date", "2026-11-20", "--json"])
    assert result.exit_code == 78, result.output  # worst: the broken feed file
    document = json.loads(result.stdout)
    assert [r["feed"] for r in document["runs"]] == ["good"] and document["runs"][0]["accepted"] > 0
    # a source folder that does not exist is configuration, like the broken feed file
    assert sorted(e["exit_code"] for e in document["errors"]) == [78, 78]


def test_faults_and_lost_responses_still_deliver_each_transaction_once(
    live_kind: SandboxServer, target_kind: str, folder: Path, settings: Settings
) -> None:
    live = live_kind
    live.config.fault_rate = 0.3
    live.config.fault_kinds = ("error_500", "error_503", "lost_response", "drop")
    feed = sample_feed("acme_hourly", live, folder=folder, target_kind=target_kind, max_attempts=8,
                       backoff_base_seconds=0.001, backoff_max_seconds=0.01)
    summary = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    s = summary.summary
    assert s["balanced"] is True and s["in_doubt"] == 0
    assert stats(live)["faults_injected"] > 0
    with Ledger(settings.ledger_path) as ledger:
        rows = ledger.run_transactions(summary.run_id)
    # CRM.COM documents no lookup of an ad hoc return: one whose answer was lost is held for review
    held = [t for t in rows if t.state is TxnState.FAILED_RETRYABLE]
    assert len(held) == s["failed_retryable"]
    assert all(target_kind == "crmcom" and t.last_error_code == "crmcom_in_doubt"
               and t.transaction_id in live.state.lost_transaction_ids for t in held), [
        (t.transaction_id, t.transaction_type, t.last_error_code, t.last_error_message) for t in held]
    accepted = [t for t in rows if t.state is TxnState.ACCEPTED]
    assert accepted and max(t.attempts for t in accepted) > 1
    if target_kind == "antavo":
        ids = delivered_ids(live)
        assert len(ids) == len(set(ids))
        assert set(ids) == {t.transaction_id for t in accepted if t.transaction_type != "return"}
    # a lost response is answered "already used" when resent: settled as accepted, with the evidence
    lost = stats(live)["lost_responses"]
    if lost:
        assert any(t.last_error_code for t in accepted)


def test_gc_paused_restores_the_collector_even_after_an_error() -> None:
    import gc

    from pipeline.runner import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("stage failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.enable()


def test_gc_frozen_hands_the_objects_back_even_after_an_error() -> None:
    import gc

    from pipeline.runner import gc_frozen

    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), gc_frozen():
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # new objects are still collected
        raise RuntimeError("submit failed")
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["one group", "a group per file"])
def test_a_run_dedups_its_files_alike_in_one_group_or_in_many(
    live: SandboxServer, folder: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch,
    chunk_bytes: int | None,
) -> None:
    import csv

    import pipeline.stages.transform as stage

    if chunk_bytes is not None:
        monkeypatch.setattr(stage, "CHUNK_BYTES", chunk_bytes)
    with (folder / FILES[0]).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    first, second = list(dict.fromkeys(r["transaction_id"] for r in rows))[:2]
    repeat = [r for r in rows if r["transaction_id"] == first]  # unchanged: a duplicate
    changed = [{**r, "customer_id": "M-CHANGED"} for r in rows if r["transaction_id"] == second]
    with (folder / "pos_LON01_20261120_23.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(repeat + changed)
    summary = run_feed(_feed(live, folder), settings, business_dates=[BUSINESS_DATE]).summary
    assert summary["balanced"] is True
    delivered = delivered_ids(live)
    assert delivered.count(first) == 1  # sent once, its repeat counted as a duplicate
    assert second not in delivered  # two versions in one run: both held, neither sent
    with Ledger(settings.ledger_path) as ledger:
        states = {(t.transaction_id, t.state) for t in ledger.run_transactions(summary["run_id"])}
    assert {(first, TxnState.ACCEPTED), (first, TxnState.DUPLICATE)} <= states
    assert {s for t, s in states if t == second} == {TxnState.CONFLICT}
    assert summary["conflicts"] == 2 and summary["duplicates"] >= 1


@pytest.mark.parametrize("n", [1, 2])
def test_the_fetch_and_transform_log_lines_count_in_words_that_agree(
    live: SandboxServer, tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture, n: int
) -> None:
    """"1 ready file for business date 2026-11-20", "2 ready files for business dates ...",
    "... queued from 1 file": never "file(s)", "date(s)", "transaction(s)"."""
    folder = tmp_path / "drop"
    copy_samples(folder, FILES[:n])
    dates = [BUSINESS_DATE, BUSINESS_DATE.replace(day=BUSINESS_DATE.day + 1)][:n]
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_feed(_feed(live, folder), settings, business_dates=dates)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pipeline.stages")]
    ready = f"{n} ready file{'s' if n > 1 else ''} for business date{'s' if n > 1 else ''} "
    assert f"acme_hourly: {ready}{', '.join(d.isoformat() for d in dates)}" in messages, messages
    queued = next(m for m in messages if " queued from " in m)
    count = int(queued.split()[1])
    assert queued == (f"acme_hourly: {count} transaction{'' if count == 1 else 's'} queued from "
                      f"{n} file{'' if n == 1 else 's'}")
    assert not [m for m in messages if "(s)" in m]


@pytest.mark.parametrize("n", [1, 2])
def test_a_files_log_line_counts_its_rows_and_transactions_in_words_that_agree(
    live: SandboxServer, tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture, n: int
) -> None:
    """"pos_...csv: 1 row, 1 transaction, ...", "2 rows, 2 transactions": never "1 rows"."""
    folder = tmp_path / "drop"
    folder.mkdir()
    header = (REPO / "sample_data" / "acme" / FILES[0]).read_text(encoding="utf-8").splitlines()[0]
    sales = [f"S{i},LON01,R1,2026-11-20 10:0{i}:00,2026-11-20,M1,sale,1,TEA,Tea,drinks,1,2.50,,2.50,GBP,,,"
             for i in range(1, n + 1)]
    (folder / FILES[0]).write_text("\n".join([header, *sales]) + "\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_feed(_feed(live, folder), settings, business_dates=[BUSINESS_DATE])
    counted = "1 row, 1 transaction" if n == 1 else "2 rows, 2 transactions"
    assert f"{FILES[0]}: {counted}, {n} queued, 0 rejected rows" in caplog.messages, caplog.messages
