"""End to end against the sandbox: lines of a rejected transaction that come again on their own
(a till repeating part of its export) are never sent, in the same file, in the next file of the
run or in a later run; a corrected transaction is sent; every report balances per currency."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.ledger import Ledger
from pipeline.runner import RunSummary
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import credentials, delivered_ids, sample_feed, settings_in

DAY = date(2026, 11, 20)
HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)
T4_LINE_1 = "T4,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,1,TEA,Tea,drinks,1,2.00,,2.00,GBP,,,"
T4_BAD_2 = "T4,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,2,CAKE,Cake,bakery,0,3.00,,0,GBP,,,"
T4_FIXED_2 = "T4,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,2,CAKE,Cake,bakery,1,3.00,,3.00,GBP,,,"
E6_LINE_1 = "E6,LON01,R1,2026-11-20 10:10:00,2026-11-20,M2,sale,1,TEA,Tea,drinks,2,1.50,,3.00,EUR,,,"
E6_BAD_2 = "E6,LON01,R1,2026-11-20 10:10:00,2026-11-20,M2,sale,2,MUG,Mug,home,1,-4.00,,-4.00,EUR,,,"
S1 = "S1,LON01,R1,2026-11-20 10:20:00,2026-11-20,M3,sale,1,TEA,Tea,drinks,1,2.50,,2.50,GBP,,,"
S2 = "S2,LON01,R1,2026-11-20 11:20:00,2026-11-20,M3,sale,1,TEA,Tea,drinks,1,2.50,,2.50,EUR,,,"


def _write(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")


def _summary_rows(summary: RunSummary) -> list[dict[str, str]]:
    assert summary.reports_path is not None
    with (summary.reports_path / "summary.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _balanced(summary: RunSummary) -> dict[str, Decimal]:
    """Every summary.csv row balances; returns the rejected amount per currency of the files read."""
    assert summary.summary["balanced"] is True
    rejected: dict[str, Decimal] = defaultdict(Decimal)
    states = ("accepted", "rejected", "duplicate", "conflict", "failed_retryable", "failed_permanent",
              "in_doubt", "queued", "void", "not_sent")
    for row in _summary_rows(summary):
        assert row["balanced"] == "true", row
        assert int(row["rows_in"]) == int(row["rows_accounted"])
        assert int(row["transactions_in"]) == sum(int(row[f"{s}_count"]) for s in states)
        assert Decimal(row["amount_in"]) == sum(Decimal(row[f"{s}_amount"]) for s in states)
        if row["origin"] == "file":
            rejected[row["currency"]] += Decimal(row["rejected_amount"])
    return dict(rejected)


def _states(ledger: Ledger, tid: str) -> list[tuple[str, str | None, str | None]]:
    rows = ledger.transactions_by_row_id(list(range(1, 200)))
    return [(r.source_file, r.state.value, r.reject_code) for r in rows if r.transaction_id == tid]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server, credentials(server):
        yield server


def test_a_rejected_transactions_line_repeated_in_its_file_is_never_sent(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    drop = tmp_path / "drop"
    # T4's line 1 again after its bad line 2; E6's line 1 again before its bad line 2
    rows = [T4_LINE_1, T4_BAD_2, T4_LINE_1, E6_LINE_1, E6_LINE_1, E6_BAD_2, S1]
    _write(drop, "pos_LON01_20261120_10.csv", rows)
    settings = settings_in(tmp_path)
    run = runner.run_feed(sample_feed("acme_hourly", sandbox, folder=drop), settings, business_dates=[DAY])
    # before: the repeated line was sent as T4 (2.00) while the report showed T4 rejected
    assert sorted(delivered_ids(sandbox)) == ["S1"]
    assert run.summary["rejects_by_code"].get("R034_COPY_OF_REJECTED") == 2
    with Ledger(settings.ledger_path) as ledger:
        t4 = _states(ledger, "T4")
        e6 = _states(ledger, "E6")
    assert sorted(t4) == sorted([("pos_LON01_20261120_10.csv", "rejected", "R007_NON_POSITIVE_QUANTITY"),
                                 ("pos_LON01_20261120_10.csv", "rejected", "R034_COPY_OF_REJECTED")])
    assert sorted(e6) == sorted([("pos_LON01_20261120_10.csv", "rejected", "R008_NEGATIVE_PRICE"),
                                 ("pos_LON01_20261120_10.csv", "rejected", "R034_COPY_OF_REJECTED")])
    # the money of every copy is in the rejected column: 2.00 + 0 + 2.00; 3.00 + 3.00 - 4.00
    assert _balanced(run) == {"GBP": Decimal("4.00"), "EUR": Decimal("2.00")}


def test_fragments_in_the_next_file_and_a_later_run_are_never_sent_a_correction_is(
    tmp_path: Path, sandbox: SandboxServer, ledger_location: Path | str
) -> None:
    drop = tmp_path / "drop"
    url = ledger_location if isinstance(ledger_location, str) else None
    settings = replace(settings_in(tmp_path), ledger_url=url)
    feed = sample_feed("acme_hourly", sandbox, folder=drop)
    _write(drop, "pos_LON01_20261120_10.csv", [T4_LINE_1, T4_BAD_2, E6_LINE_1, E6_BAD_2, S1])
    _write(drop, "pos_LON01_20261120_11.csv", [T4_LINE_1, S2])  # the next file of the same run
    first = runner.run_feed(feed, settings, business_dates=[DAY])
    assert sorted(delivered_ids(sandbox)) == ["S1", "S2"]
    assert _balanced(first) == {"GBP": Decimal("4.00"), "EUR": Decimal("-1.00")}

    # a later run: E6's good line alone again (a fragment), and T4 corrected
    _write(drop, "pos_LON01_20261120_12.csv", [E6_LINE_1])
    _write(drop, "pos_LON01_20261120_13.csv", [T4_LINE_1, T4_FIXED_2])
    second = runner.run_feed(feed, settings, business_dates=[DAY])
    assert sorted(delivered_ids(sandbox)) == ["S1", "S2", "T4"]
    assert _balanced(second) == {"EUR": Decimal("3.00"), "GBP": Decimal("0.00")}
    with Ledger(settings.ledger_location) as ledger:
        t4 = _states(ledger, "T4")
        e6 = _states(ledger, "E6")
        reasons = {r["source_file"]: r["reason"] for r in ledger.rejects(feed="acme_hourly")
                   if r["code"] == "R034_COPY_OF_REJECTED"}
    assert t4 == [("pos_LON01_20261120_10.csv", "rejected", "R007_NON_POSITIVE_QUANTITY"),
                  ("pos_LON01_20261120_11.csv", "rejected", "R034_COPY_OF_REJECTED"),
                  ("pos_LON01_20261120_13.csv", "accepted", None)]
    assert e6 == [("pos_LON01_20261120_10.csv", "rejected", "R008_NEGATIVE_PRICE"),
                  ("pos_LON01_20261120_12.csv", "rejected", "R034_COPY_OF_REJECTED")]
    assert reasons["pos_LON01_20261120_12.csv"].startswith(
        "transaction E6 was rejected (pos_LON01_20261120_10.csv line 5)")
