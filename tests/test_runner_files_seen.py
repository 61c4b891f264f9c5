"""Every file a run sees has its row in summary.csv: read, unreadable or skipped, with why."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import EXIT_DATA, EXIT_OK
from pipeline.reports import SUMMARY_COLUMNS
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer
from pipeline.stages.report import day_report, run_report
from tests.ledger_backends import ledger_env
from tests.runner_helpers import (
    BUSINESS_DATE,
    SAMPLE_ACME,
    copy_samples,
    credentials,
    feed_toml,
    sample_feed,
    settings_in,
)

GOOD = "pos_LON01_20261120_10.csv"
CR_ONLY = "pos_LON01_20261120_11.csv"
BINARY = "pos_LON01_20261120_12.csv"
LINK = "pos_LON01_20261120_13.csv"
FIFO = "pos_LON01_20261120_14.csv"


def _summary_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "summary.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))



def rebuilt_rows(ledger_path: Path, run_id: str) -> list[tuple[str, ...]]:
    """summary.csv's rows as `posfeed report RUN_ID` rebuilds them from what the run stored."""
    from pipeline.ledger import Ledger

    with Ledger(ledger_path) as ledger:
        stored = ledger.run(run_id)
        assert stored is not None
        fresh = run_report(ledger, run_id)
        extra = {k: v for k, v in (stored.counts or {}).items() if k not in fresh.summary}
        again = run_report(ledger, run_id, extra=extra)
    return sorted(tuple(map(str, r)) for r in again.summary_rows)

def test_a_good_a_cr_only_and_a_binary_file_each_have_their_row(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / GOOD).write_bytes((SAMPLE_ACME / GOOD).read_bytes())
    lines = (SAMPLE_ACME / CR_ONLY).read_text(encoding="utf-8").splitlines()
    (drop / CR_ONLY).write_bytes("\r".join(lines).encode() + b"\r")  # classic Mac line endings
    (drop / BINARY).write_bytes(random.Random(1).randbytes(3000))
    (tmp_path / "elsewhere.csv").write_bytes((SAMPLE_ACME / GOOD).read_bytes())
    (drop / LINK).symlink_to(tmp_path / "elsewhere.csv")
    os.mkfifo(drop / FIFO)
    settings = settings_in(tmp_path)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
    with credentials(sandbox):
        summary = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert summary.exit_code == EXIT_DATA  # the binary file is a data error; the rest ran
    assert summary.reports_path is not None
    rows = _summary_rows(summary.reports_path)
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(row["source_file"], []).append(row)
    assert set(by_file) == {GOOD, CR_ONLY, BINARY, LINK, FIFO}

    records = len(lines) - 1  # every record of the CR-only file came in, none was lost
    cr_rows = by_file[CR_ONLY]
    assert sum(int(r["rows_in"]) for r in cr_rows) == records
    assert sum(int(r["rows_accounted"]) for r in cr_rows) == records
    assert all(r["origin"] == "file" and r["balanced"] == "true" for r in cr_rows)
    good_rows = sum(int(r["rows_in"]) for r in by_file[GOOD])
    assert good_rows == len((SAMPLE_ACME / GOOD).read_text(encoding="utf-8").splitlines()) - 1

    (binary,) = by_file[BINARY]
    assert binary["origin"] == "unreadable"
    assert "binary" in binary["reason"] and len(binary["reason"]) <= 300
    (link,) = by_file[LINK]
    assert link["origin"] == "skipped" and "symbolic link" in link["reason"]
    (fifo,) = by_file[FIFO]
    assert fifo["origin"] == "skipped" and "FIFO" in fifo["reason"]
    assert [s["file"] for s in summary.summary["skipped_files"]] == [LINK, FIFO]

    # `posfeed report RUN_ID` rebuilds the same rows from what the run stored
    assert rebuilt_rows(settings.ledger_path, summary.run_id) == sorted(tuple(r.values()) for r in rows)


def test_rejects_keep_the_exports_columns_in_its_order(sandbox: SandboxServer, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    text = (SAMPLE_ACME / GOOD).read_text(encoding="utf-8").splitlines()
    header = text[0].split(",")
    # the export's own order, an empty column at the end, one ragged row and one bad quantity
    order = [*reversed(header), "note"]
    out = [",".join(order)]
    for number, line in enumerate(text[1:]):
        values = dict(zip(header, next(csv.reader([line])), strict=True))
        if number == 2:
            values["quantity"] = "two"
        cells = [values.get(c, "") for c in order]
        row = ",".join(f'"{c}"' if "," in c else c for c in cells)
        out.append(row + (",x,y" if number == 5 else ""))
    (drop / GOOD).write_text("\n".join(out) + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
    with credentials(sandbox):
        summary = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert summary.reports_path is not None
    with (summary.reports_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        rejects = list(reader)
    assert columns == [*order, "reject_code", "reject_reason", "reject_field", "source_file", "source_line"]
    codes = {r[-1]: r[len(order)] for r in rejects}
    assert codes["4"] == "R002_BAD_NUMBER"
    assert codes["7"] == "R019_WRONG_FIELD_COUNT"
    assert all(r[order.index("note")] == "" for r in rejects)


def test_a_header_only_file_has_its_row_with_nothing_in_it(sandbox: SandboxServer, tmp_path: Path) -> None:
    """A file holding only the header line is read (zero rows): its row in summary.csv has zero
    counts and money in the report's currency, balanced, and says why; the page lists it."""
    header_only = "pos_LON01_20261120_11.csv"
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / GOOD).write_bytes((SAMPLE_ACME / GOOD).read_bytes())
    header = (SAMPLE_ACME / GOOD).read_text(encoding="utf-8").splitlines()[0]
    (drop / header_only).write_text(header + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
    with credentials(sandbox):
        summary = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert summary.exit_code == EXIT_OK  # no data row is no data error
    assert summary.summary["balanced"] is True
    assert sorted(summary.summary["files_new"]) == [GOOD, header_only]
    assert summary.summary["unreadable_files"] == []
    assert summary.reports_path is not None
    rows = _summary_rows(summary.reports_path)
    assert {r["source_file"] for r in rows} == {GOOD, header_only}
    (empty,) = [r for r in rows if r["source_file"] == header_only]
    where = (empty["origin"], empty["store_id"], empty["business_date"], empty["currency"])
    assert where == ("file", "", "", "GBP")  # the report's currency, as a file not read has
    def is_count(column: str) -> bool:
        return column.endswith("_count") or column in (
            "rows_in", "transactions_in", "rows_accounted", "transactions_accounted")

    def is_amount(column: str) -> bool:
        return column.endswith("_amount") or column in ("amount_in", "amount_accounted")

    # every count and amount of the report's columns, each zero
    counts = {k: v for k, v in empty.items() if is_count(k)}
    amounts = {k: v for k, v in empty.items() if is_amount(k)}
    assert counts == dict.fromkeys(filter(is_count, SUMMARY_COLUMNS), "0")
    assert amounts == dict.fromkeys(filter(is_amount, SUMMARY_COLUMNS), "0.00")
    assert (empty["points_awarded"], empty["balanced"], empty["reason"]) == ("", "true", "no data rows")

    page = (summary.reports_path / "report.html").read_text(encoding="utf-8")
    assert f'<th scope="row">{header_only}</th><td>read: no data rows</td>' in page
    assert "(none)" not in page  # no store and no currency group of its own

    # `posfeed report RUN_ID` rebuilds the same rows from what the run stored
    assert rebuilt_rows(settings.ledger_path, summary.run_id) == sorted(tuple(r.values()) for r in rows)


def test_two_header_only_files_in_one_run_are_one_content(sandbox: SandboxServer, tmp_path: Path) -> None:
    """Two stores' closed hours give byte-identical header-only files: the first is read (its row,
    no data rows), the second is the same content, not processed again, as in a later run (its
    row says so)."""
    first, second = "pos_LON01_20261120_11.csv", "pos_LON01_20261120_12.csv"
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / GOOD).write_bytes((SAMPLE_ACME / GOOD).read_bytes())
    header = (SAMPLE_ACME / GOOD).read_text(encoding="utf-8").splitlines()[0]
    for name in (first, second):
        (drop / name).write_text(header + "\n", encoding="utf-8")
    settings = settings_in(tmp_path)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
    with credentials(sandbox):
        summary = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert summary.exit_code == EXIT_OK
    assert sorted(summary.summary["files_new"]) == [GOOD, first]
    assert summary.summary["files_already_processed"] == 1
    assert summary.reports_path is not None
    rows = _summary_rows(summary.reports_path)
    others = [(r["source_file"], r["origin"], r["reason"]) for r in rows if r["source_file"] != GOOD]
    assert others == [(first, "file", "no data rows"),
                      (second, "already_processed", f"same content as {first}, read in this run")]
    due = {(m["store_id"], m["hour"]) for m in summary.summary["missing_files"] if m["status"] == "missing"}
    assert ("LON01", 12) not in due  # it arrived


def test_a_file_already_processed_has_its_row_naming_the_run_that_processed_it(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A run that downloads a file and does not read it (its content under another name, or a file
    whose name, size and mtime could not be trusted) gives it a row with nothing in it, origin
    ``already_processed``, naming the earlier run; a file in quarantine likewise (origin
    ``quarantined``). A file recognized unchanged is counted, not listed (a "keep" source shows
    every run all earlier files of its days). The money still balances and the page lists them."""
    copy, racy = "pos_LON01_20261120_13.csv", "pos_LON01_20261120_11.csv"
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / GOOD).write_bytes((SAMPLE_ACME / GOOD).read_bytes())
    an_hour_ago = time.time() - 3600
    os.utime(drop / GOOD, (an_hour_ago, an_hour_ago))  # older than its fetch: trusted
    (drop / racy).write_bytes((SAMPLE_ACME / racy).read_bytes())
    in_an_hour = time.time() + 3600
    os.utime(drop / racy, (in_an_hour, in_an_hour))  # not older than its fetch: downloaded again
    (drop / BINARY).write_bytes(random.Random(1).randbytes(3000))
    settings = settings_in(tmp_path)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        (drop / copy).write_bytes((SAMPLE_ACME / GOOD).read_bytes())  # the same content again
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert (first.exit_code, second.exit_code) == (EXIT_DATA, EXIT_OK)
    assert second.summary["files_new"] == [] and second.summary["files_already_processed"] == 3
    assert second.summary["files_fetched"] == 3  # the copy, the racy file, BINARY (written now): not GOOD
    assert second.summary["files_in_quarantine"] == [BINARY]
    assert second.summary["balanced"] is True and second.summary["rows_in"] == 0
    assert second.reports_path is not None
    rows = _summary_rows(second.reports_path)
    seen = {r["source_file"]: r for r in rows}
    assert set(seen) == {racy, copy, BINARY}
    assert seen[racy]["reason"] == f"first fetched in run {first.run_id}"
    assert seen[copy]["reason"] == f"same content as {GOOD}, first fetched in run {first.run_id}"
    assert seen[BINARY]["origin"] == "quarantined" and "posfeed release" in seen[BINARY]["reason"]
    for row in rows:
        assert row["origin"] == ("quarantined" if row["source_file"] == BINARY else "already_processed")
        assert (row["store_id"], row["business_date"], row["currency"]) == ("", "", "")
        assert (row["rows_in"], row["amount_in"], row["amount_accounted"], row["balanced"]) \
            == ("0", "0.00", "0.00", "true")
    page = (second.reports_path / "report.html").read_text(encoding="utf-8")
    assert f'<th scope="row">{copy}</th><td>already processed: same content as {GOOD}' in page
    assert f'<th scope="row">{BINARY}</th><td>in quarantine: unreadable in an earlier run' in page

    assert rebuilt_rows(settings.ledger_path, second.run_id) == sorted(tuple(r.values()) for r in rows)


# a run of the feed in FEED_FILE over 2026-11-20 that SIGKILLs its own process when STAGE starts
_KILLED_AT_STAGE = """
import os, signal, sys
from pathlib import Path
from pipeline.config import load_feed
from pipeline.runner import run_feed
from tests.runner_helpers import BUSINESS_DATE, settings_in
feed_file, tmp, stage = sys.argv[1:4]
def kill_at(name, event):
    if (name, event) == (stage, "start"):
        os.kill(os.getpid(), signal.SIGKILL)
run_feed(load_feed(Path(feed_file)), settings_in(Path(tmp)), business_dates=[BUSINESS_DATE], on_stage=kill_at)
"""


def _posfeed_report(tmp: Path, run_id: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), "report", run_id, "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.mark.parametrize("stage", ["transform", "submit"])
def test_a_crashed_runs_report_shows_the_files_it_fetched(
    sandbox: SandboxServer, tmp_path: Path, stage: str
) -> None:
    """A run killed after fetching (before reading its files, or while sending their rows) never
    recorded its summary: its report, by `posfeed report RUN_ID` and by the next run's settle,
    names the files it fetched (files_new) from the ledger and gives each its row, one it never
    read too (origin ``interrupted``); rebuilt later, it is the same."""
    files = [GOOD, "pos_LON01_20261120_11.csv"]
    copy_samples(tmp_path / "drop", files)
    feed = sample_feed("acme_hourly", sandbox, folder=tmp_path / "drop", max_attempts=1)
    feed_file = tmp_path / "acme_hourly.toml"
    feed_file.write_text(feed_toml(feed), encoding="utf-8")
    with credentials(sandbox):
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_AT_STAGE, str(feed_file), str(tmp_path), stage],
            capture_output=True, text=True, check=False, env=os.environ)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    from pipeline.ledger import Ledger

    settings = settings_in(tmp_path)
    with Ledger(settings.ledger_path) as ledger:
        (crashed,) = [r.id for r in ledger.runs()]

    unsettled = _posfeed_report(tmp_path, crashed)  # still marked running: nobody settled it yet
    assert sorted(unsettled["files_new"]) == files
    folder = tmp_path / "reports" / "acme_hourly" / crashed
    expected = {name: ("interrupted", 0) for name in files} if stage == "transform" else None
    rows = _summary_rows(folder)
    by_file = {r["source_file"]: (r["origin"], int(r["rows_in"])) for r in rows}
    if expected is not None:
        assert by_file == expected
        assert all(r["reason"].startswith("fetched; the run ended before reading it") for r in rows)
        page = (folder / "report.html").read_text(encoding="utf-8")
        assert f'<th scope="row">{GOOD}</th><td>not read: fetched; the run ended' in page
    else:
        assert {n: origin for n, (origin, _) in by_file.items()} == dict.fromkeys(files, "file")
        assert all(rows_in > 0 for _, rows_in in by_file.values())

    with credentials(sandbox):
        after = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    settled = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert settled["status"] == "crashed" and sorted(settled["files_new"]) == files
    settled_rows = _summary_rows(folder)
    assert sorted((r["source_file"], r["origin"], r["rows_in"]) for r in settled_rows) \
        == sorted((r["source_file"], r["origin"], r["rows_in"]) for r in rows)
    if stage == "transform":  # the next run read them
        assert sorted(after.summary["files_new"]) == files and after.summary["rows_in"] > 0
    else:  # the crashed run had recorded them: the next run recognizes them unchanged (counted,
        # not listed: the sample files are older than their fetch)
        assert after.summary["files_new"] == [] and after.summary["files_already_processed"] == 2
        assert after.reports_path is not None
        assert [r for r in _summary_rows(after.reports_path) if r["origin"] != "ledger"] == []
    assert after.summary["balanced"] is True

    # rebuilt later, after the next run read or settled its files: the same rows
    _posfeed_report(tmp_path, crashed)
    assert _summary_rows(folder) == settled_rows


def test_a_day_report_lists_the_days_files_without_rows(
    sandbox: SandboxServer, tmp_path: Path, ledger_location: Path | str
) -> None:
    """`posfeed report --feed F --business-date D` gives a header-only and an unreadable file their
    rows in the day whose file name the feed's pattern gives them (they have no business date of
    their own), and not in another day's; without the pattern, the days their run was fetching.
    On both ledger backends."""
    header_only, other_day = "pos_LON01_20261120_11.csv", "pos_LON01_20261119_11.csv"
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / GOOD).write_bytes((SAMPLE_ACME / GOOD).read_bytes())
    header = (SAMPLE_ACME / GOOD).read_text(encoding="utf-8").splitlines()[0]
    (drop / header_only).write_text(header + "\n", encoding="utf-8")
    (drop / other_day).write_bytes(header.encode() + b"\r\n")  # header-only too, other bytes
    (drop / BINARY).write_bytes(random.Random(1).randbytes(3000))
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = replace(settings, ledger_url=ledger_location)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
    with credentials(sandbox):
        run = run_feed(feed, settings, business_dates=[BUSINESS_DATE - timedelta(days=1), BUSINESS_DATE])
    assert run.exit_code == EXIT_DATA and run.summary["balanced"] is True
    assert run.summary["transactions_rejected"] == 0  # only the binary file is a data error

    def day(date: str) -> tuple[dict[str, Any], list[dict[str, str]], str]:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--state-dir", str(settings.state_dir), "--reports-dir",
             str(settings.reports_dir), "report", "--feed", "acme_hourly", "--business-date", date, "--json"],
            capture_output=True, text=True, check=False, env={**os.environ, **ledger_env(ledger_location)})
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        folder = Path(summary["reports_path"])
        return summary, _summary_rows(folder), (folder / "report.html").read_text(encoding="utf-8")

    summary, rows, page = day("2026-11-20")
    assert summary["balanced"] is True
    where = {(r["source_file"], r["origin"], r["reason"]) for r in rows if not r["store_id"]}
    binary_reason = run.summary["unreadable_files"][0]["reason"]
    assert where == {(header_only, "file", "no data rows"), (BINARY, "unreadable", binary_reason)}
    assert {r["source_file"] for r in rows if r["store_id"]} == {GOOD}
    assert all(r["balanced"] == "true" for r in rows)
    assert f'<th scope="row">{header_only}</th><td>read: no data rows</td>' in page
    assert f'<th scope="row">{BINARY}</th><td>unreadable: {binary_reason}' in page
    assert "1 unreadable file: fix and deliver again" in page

    _, rows, _ = day("2026-11-19")
    assert [(r["source_file"], r["origin"]) for r in rows] == [(other_day, "file")]

    from pipeline.ledger import Ledger  # without the pattern: the days the run was fetching

    with Ledger(ledger_location) as ledger:
        unplaced = run_report_rows(day_report(ledger, "acme_hourly", "2026-11-20"))
    assert {header_only, other_day, BINARY} <= {r["source_file"] for r in unplaced}


def run_report_rows(report: Any) -> list[dict[str, str]]:
    """A report's summary rows as summary.csv's dicts."""
    from pipeline.reports import SUMMARY_COLUMNS

    return [dict(zip(SUMMARY_COLUMNS, map(str, row), strict=True)) for row in report.summary_rows]
