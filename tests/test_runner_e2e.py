"""End to end on sample_data against the sandbox: hourly files, then the daily file of the same day."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import Settings
from pipeline.errors import EXIT_DATA, EXIT_OK
from pipeline.ledger import Ledger, TxnState
from pipeline.run_commands import format_summary
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


@dataclass
class Day:
    settings: Settings
    sandbox: SandboxServer
    hourly: RunSummary
    daily: RunSummary
    stats_after_hourly: dict[str, Any]
    stats_after_daily: dict[str, Any]


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    """The sample day run once for the whole module: every hourly file, then the daily files."""
    tmp = tmp_path_factory.mktemp("e2e")
    settings = settings_in(tmp)
    with SandboxServer() as sandbox, credentials(sandbox):
        hourly = run_feed(sample_feed("acme_hourly", sandbox, folder=SAMPLE_ACME), settings,
                          business_dates=[BUSINESS_DATE])
        after_hourly = stats(sandbox)
        daily = run_feed(sample_feed("acme_daily", sandbox, folder=SAMPLE_ACME), settings,
                         business_dates=[BUSINESS_DATE])
        yield Day(settings, sandbox, hourly, daily, after_hourly, stats(sandbox))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _ids(pattern: str) -> set[str]:
    frame = pl.concat([pl.read_csv(p, infer_schema=False) for p in sorted(SAMPLE_ACME.glob(pattern))])
    return set(frame.get_column("transaction_id").to_list())


@pytest.mark.parametrize("which", ["hourly", "daily"])
def test_reports_balance(day: Day, which: str) -> None:
    summary: RunSummary = getattr(day, which)
    s = summary.summary
    product_keys = {  # the `posfeed run --json` keys PRODUCT.md fixes
        "rows_in", "transactions_in", "transactions_valid", "transactions_rejected", "rows_rejected",
        "rejects_by_code", "duplicates", "conflicts", "amount_in", "amount_valid", "amount_rejected",
        "run_id", "accepted", "failed_retryable", "failed_permanent", "in_doubt", "amount_accepted",
        "balanced",
    }
    assert product_keys <= set(summary.to_dict())
    assert s["balanced"] is True
    assert summary.exit_code == EXIT_DATA  # the sample has rejected rows by design
    assert (s["in_doubt"], s["failed_retryable"], s["failed_permanent"], s["queued"]) == (0, 0, 0, 0)
    folder = summary.reports_path
    assert folder is not None
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["detail.csv", "rejects.csv", "report.html", "summary.csv", "summary.json"]
    assert json.loads((folder / "summary.json").read_text(encoding="utf-8"))["run_id"] == summary.run_id
    rows = _csv(folder / "summary.csv")
    assert rows and all(r["balanced"] == "true" for r in rows)
    assert sum(int(r["rows_in"]) for r in rows) == s["rows_in"]
    states = ("accepted", "rejected", "duplicate", "conflict", "failed_retryable", "failed_permanent",
              "in_doubt", "queued", "void", "not_sent")
    for r in rows:
        assert int(r["transactions_in"]) == sum(int(r[f"{st}_count"]) for st in states)
    detail = _csv(folder / "detail.csv")
    assert len(detail) == s["transactions_in"]
    rejects = _csv(folder / "rejects.csv")
    assert len(rejects) == s["rows_rejected"] > 0
    assert {"reject_code", "reject_reason", "reject_field", "source_file", "source_line"} <= set(rejects[0])
    # the same numbers as the pure transform reports for these files
    files = "pos_*_20261120_??.csv" if which == "hourly" else "pos_*_20261120_daily.csv"
    assert s["rows_in"] == sum(len(_csv(p)) for p in SAMPLE_ACME.glob(files))


def test_daily_after_hourly_sends_only_what_is_missing(day: Day) -> None:
    hourly, daily = _ids("pos_*_20261120_??.csv"), _ids("pos_*_20261120_daily.csv")
    with Ledger(day.settings.ledger_path) as ledger:
        rows = ledger.run_transactions(day.daily.run_id)
    sent_states = {TxnState.ACCEPTED, TxnState.NOT_SENT, TxnState.FAILED_PERMANENT, TxnState.FAILED_RETRYABLE}
    sent = {t.transaction_id for t in rows if t.state in sent_states}
    rejected = {t.transaction_id for t in rows if t.state is TxnState.REJECTED}
    assert sent == (daily - hourly) - rejected
    assert day.daily.summary["accepted"] == day.stats_after_daily["events_accepted"] - day.stats_after_hourly[
        "events_accepted"]
    assert day.daily.summary["conflicts"] == 3  # corrected repeats are held, never sent
    assert day.daily.summary["duplicates"] > 1000


def test_platform_saw_every_transaction_once(day: Day) -> None:
    assert day.stats_after_daily["duplicate_transaction_attempts"] == 0
    ids = delivered_ids(day.sandbox)
    assert len(ids) == len(set(ids))
    with Ledger(day.settings.ledger_path) as ledger:
        accepted_sales = {
            t.transaction_id for run in (day.hourly.run_id, day.daily.run_id)
            for t in ledger.run_transactions(run)
            if t.state is TxnState.ACCEPTED and t.transaction_type != "return"
        }
    assert set(ids) == accepted_sales


def test_a_second_run_processes_nothing_again(day: Day) -> None:
    with credentials(day.sandbox):
        again = run_feed(sample_feed("acme_hourly", day.sandbox, folder=SAMPLE_ACME), day.settings,
                         business_dates=[BUSINESS_DATE])
    assert again.exit_code == EXIT_OK
    assert again.summary["rows_in"] == 0 and again.summary["files_already_processed"] > 0
    # one request: the credential check, which sends no event
    assert stats(day.sandbox)["requests"] == day.stats_after_daily["requests"] + 1
    assert stats(day.sandbox)["events_accepted"] == day.stats_after_daily["events_accepted"]


def test_report_regenerates_the_same_files(day: Day, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--state-dir", str(day.settings.state_dir), "--reports-dir", str(day.settings.reports_dir)]
    out = str(tmp_path / "again")
    result = runner.invoke(cli, [*args, "report", day.hourly.run_id, "--out", out, "--json"])
    assert result.exit_code == 0, result.output
    original = day.hourly.reports_path
    assert original is not None
    for name in ("summary.csv", "detail.csv", "rejects.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (original / name).read_bytes(), name
    regenerated = json.loads((tmp_path / "again" / "summary.json").read_text(encoding="utf-8"))
    assert regenerated == json.loads((original / "summary.json").read_text(encoding="utf-8"))

    result = runner.invoke(cli, [*args, "--feeds-dir", str(day.settings.feeds_dir), "report", "--feed",
                                 "acme_daily", "--business-date", "2026-11-20", "--json"])
    assert result.exit_code == 0, result.output
    by_day = json.loads(result.output)
    assert by_day["balanced"] is True and by_day["rows_in"] == day.daily.summary["rows_in"]
    assert Path(by_day["reports_path"]).name == "day-2026-11-20"


def test_runs_lists_history(day: Day) -> None:
    result = CliRunner().invoke(cli, ["--state-dir", str(day.settings.state_dir), "runs", "--json"])
    assert result.exit_code == 0, result.output
    listed = {r["run_id"]: r for r in json.loads(result.output)}
    assert {day.hourly.run_id, day.daily.run_id} <= set(listed)
    assert listed[day.daily.run_id]["exit"] == EXIT_DATA and listed[day.daily.run_id]["balanced"] is True
    state = str(day.settings.state_dir)
    text = CliRunner().invoke(cli, ["--state-dir", state, "runs", "--feed", "acme_daily"])
    assert day.daily.run_id in text.output and day.hourly.run_id not in text.output


def test_points_are_printed_as_the_platform_gave_them(day: Day) -> None:
    """Antavo answers whole points (``"points": 100``): detail.csv, summary.csv, summary.json and
    the console line show them as it gave them, never as money (``100.00``)."""
    listing = httpx.get(f"{day.sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
    earned = {str(r["transaction_id"]): str(r["earned"]) for r in listing}
    folder = day.hourly.reports_path
    assert folder is not None
    accepted = [r for r in _csv(folder / "detail.csv") if r["state"] == "accepted"]
    sales = [r for r in accepted if r["transaction_type"] == "sale"]
    assert sales and [r["points"] for r in sales] == [earned[r["transaction_id"]] for r in sales]
    total = day.hourly.summary["points_awarded"]
    assert total == str(sum(int(r["points"]) for r in accepted if r["points"]))
    cells = [r["points_awarded"] for r in _csv(folder / "summary.csv") if r["points_awarded"]]  # "": none
    assert all(re.fullmatch(r"-?[0-9]+", cell) for cell in cells), cells
    assert str(sum(int(cell) for cell in cells)) == total
    assert json.loads((folder / "summary.json").read_text(encoding="utf-8"))["points_awarded"] == total
    assert f"  accepted:  {day.hourly.summary['accepted']} (points {total})" in format_summary(day.hourly)
