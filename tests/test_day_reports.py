"""Business-day reports (`posfeed report --feed F --business-date D`) on both ledger backends.

Each test runs the real CLI in process against the sandbox platform with a SQLite ledger and
with a PostgreSQL one (``ledger_location`` of tests/ledger_backends.py), on small files written
here: what the day's rejects.csv lists, where a row without a business date counts, and that the
day's totals balance per currency.
"""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.reports import STATE_COLUMNS
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import feed_toml, sample_feed
from tests.sandbox_fixtures import TARGET_KITS

DAY = "2026-11-20"
HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
          "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
          "currency,transaction_total,points_burned,original_transaction_id")


def _line(tid: str, line_no: int, amount: str, *, currency: str = "GBP", timestamp: str = f"{DAY} 10:00:00",
          business_date: str = DAY, customer: str = "M075623", kind: str = "sale",
          original: str = "") -> str:
    return (f"{tid},LON01,R1,{timestamp},{business_date},{customer},{kind},{line_no},P{line_no},Thing,misc,"
            f"1,{amount},,{amount},{currency},,,{original}")


def _write(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


class Cli:
    """`posfeed` in process with one state folder, one ledger and the sandbox's credentials."""

    def __init__(self, tmp: Path, sandbox: SandboxServer, ledger_location: Path | str, drop: Path,
                 pattern: str | None = None):
        self.tmp = tmp
        feed = sample_feed("acme_hourly", sandbox, folder=drop, pattern=pattern, max_attempts=1)
        feed = feed.model_copy(update={"expected": None})  # no schedule of files to miss
        self.feed_file = tmp / "dayfeed.toml"
        self.feed_file.write_text(feed_toml(feed), encoding="utf-8")
        self.env = {**TARGET_KITS["antavo"].env(sandbox), **ledger_env(ledger_location)}

    def __call__(self, *args: str) -> dict[str, Any]:
        base = ["--state-dir", str(self.tmp / "state"), "--reports-dir", str(self.tmp / "reports")]
        result = CliRunner().invoke(cli, [*base, *args, "--json"], env=self.env, catch_exceptions=False)
        assert result.exit_code in (0, 65), result.output
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def run(self) -> dict[str, Any]:
        return self("run", "--feed", str(self.feed_file), "--business-date", DAY)

    def day(self, business_date: str = DAY) -> dict[str, Any]:
        return self("report", "--feed", str(self.feed_file), "--business-date", business_date)


def _assert_balanced_per_currency(rows: list[dict[str, str]]) -> None:
    """read = the sum over every state, per row, in count and money."""
    for row in rows:
        counted = sum(int(row[f"{name}_count"]) for name, _ in STATE_COLUMNS)
        amount = sum((Decimal(row[f"{name}_amount"]) for name, _ in STATE_COLUMNS), Decimal(0))
        assert counted == int(row["transactions_in"]), row
        assert amount == Decimal(row["amount_in"]), row
        assert row["balanced"] == "true", row


def test_a_days_rejects_list_every_line_of_a_rejected_transaction(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    _write(drop, f"pos_LON01_{DAY.replace('-', '')}_10.csv", [
        _line("T1", 1, "5.00"),
        _line("T2", 1, "2.00"),
        _line("T2", 2, "3.00"),
        # no timestamp and no business date: this line is rejected; its siblings go with it
        _line("T2", 3, "4.00", timestamp="", business_date=""),
    ])
    posfeed = Cli(tmp_path, sandbox, ledger_location, drop)
    run = posfeed.run()
    assert run["transactions_rejected"] == 1 and run["rows_rejected"] == 3

    day = posfeed.day()

    rejects = _csv(Path(day["reports_path"]) / "rejects.csv")
    by_line = {int(r["source_line"]): r for r in rejects}
    assert sorted(by_line) == [3, 4, 5]
    assert by_line[5]["reject_code"] == "R001_MISSING_FIELD" and by_line[5]["reject_field"] == "timestamp"
    assert {by_line[n]["reject_code"] for n in (3, 4)} == {"R099_SIBLING_REJECTED"}
    assert all(r["source_file"].endswith("_10.csv") and r["reject_reason"] for r in rejects)
    assert day["rows_rejected"] == 3 and day["rejects_by_code"] == run["rejects_by_code"]


def test_a_row_without_a_business_date_counts_in_its_files_day(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    _write(drop, f"pos_LON01_{DAY.replace('-', '')}_10.csv", [
        _line("T1", 1, "5.00"),
        _line("T9", 1, "7.25", timestamp="", business_date=""),  # no date of its own
        _line("T8", 1, "1.10", timestamp="yesterday-ish", business_date=""),  # none readable
    ])
    posfeed = Cli(tmp_path, sandbox, ledger_location, drop)
    run = posfeed.run()
    assert run["rows_in"] == 3 and run["transactions_rejected"] == 2

    day = posfeed.day()

    assert (day["rows_in"], day["transactions_in"]) == (3, 3)
    assert day["currencies"]["GBP"]["amount_in"] == "13.35"
    assert day["currencies"]["GBP"]["amount_rejected"] == "8.35"
    assert day["balanced"] is True
    rows = _csv(Path(day["reports_path"]) / "summary.csv")
    _assert_balanced_per_currency(rows)
    assert sum(int(r["rejected_count"]) for r in rows) == 2
    detail = _csv(Path(day["reports_path"]) / "detail.csv")
    assert sorted(r["transaction_id"] for r in detail) == ["T1", "T8", "T9"]
    rejects = _csv(Path(day["reports_path"]) / "rejects.csv")
    assert sorted(r["transaction_id"] for r in rejects) == ["T8", "T9"]


def test_without_a_date_in_the_pattern_an_undated_row_counts_in_one_day_of_its_file(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """The file's name gives no date: its undated row counts in the first date of its other rows,
    and in no other day's report."""
    drop = tmp_path / "drop"
    _write(drop, "pos_LON01_evening.csv", [
        _line("T1", 1, "5.00", timestamp="2026-11-19 21:00:00", business_date="2026-11-19"),
        _line("T2", 1, "3.00"),
        _line("T9", 1, "7.25", timestamp="", business_date=""),
    ])
    posfeed = Cli(tmp_path, sandbox, ledger_location, drop, pattern="pos_LON01_*.csv")
    run = posfeed.run()
    assert run["rows_in"] == 3 and run["transactions_rejected"] == 1

    first, second = posfeed.day("2026-11-19"), posfeed.day(DAY)

    assert (first["rows_in"], first["transactions_rejected"]) == (2, 1)
    assert first["currencies"]["GBP"]["amount_rejected"] == "7.25"
    assert (second["rows_in"], second["transactions_rejected"]) == (1, 0)
    assert first["balanced"] is True and second["balanced"] is True
