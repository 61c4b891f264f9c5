"""A real-world export through `posfeed check`: the UCI Online Retail fixture (tests/fixtures/online_retail).

The fixture keeps the data set's quirks on purpose: "C" invoices (cancellations, negative
quantities, no link to the original invoice), rows without CustomerID (guests), "Â£" mojibake in
descriptions, zero prices, "A" bad-debt adjustments with a negative price, POST/D/M lines and
CustomerID written as a float (``17850.0``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.logs import mask_customer_id

FIXTURE = Path(__file__).parent / "fixtures" / "online_retail"
DATA = FIXTURE / "online_retail_sample.csv"
FEED = FIXTURE / "online_retail.toml"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Checked:
    returncode: int
    summary: dict[str, Any]
    out: Path
    stderr: str


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checked]:
    """`posfeed check` on the fixture, once for the module, through the real command line."""
    out = tmp_path_factory.mktemp("online_retail_check")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "check", str(DATA), "--feed", str(FEED), "--json",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.stdout, done.stderr
    yield Checked(done.returncode, json.loads(done.stdout), out, done.stderr)


def source_rows() -> list[dict[str, str]]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def checkouts(result: Checked) -> pl.DataFrame:
    return pl.read_ndjson(result.out / "checkouts.jsonl")


def test_check_exits_65_for_the_rejected_rows_and_counts_every_row(checked: Checked) -> None:
    rows = source_rows()
    summary = checked.summary
    assert checked.returncode == 65, checked.stderr  # rows were rejected: a data error
    assert summary["rows_in"] == len(rows) == 327
    assert summary["rows_valid"] + summary["rows_rejected"] == summary["rows_in"]
    assert summary["transactions_in"] == len({r["InvoiceNo"] for r in rows}) == 55
    assert summary["transactions_valid"] + summary["transactions_rejected"] == summary["transactions_in"]
    items = pl.read_parquet(checked.out / "checkout_items.parquet")
    rejects = pl.read_csv(checked.out / "rejects.csv", infer_schema=False)
    assert items.height + rejects.height == summary["rows_in"]  # every row in exactly one place
    lines_seen = sorted(items["source_line"].to_list() + rejects["source_line"].cast(pl.Int64).to_list())
    assert lines_seen == list(range(2, len(rows) + 2))  # header is line 1


def test_money_balances_exactly(checked: Checked) -> None:
    summary = checked.summary
    amount_in, valid, rejected = (
        Decimal(summary[key]) for key in ("amount_in", "amount_valid", "amount_rejected")
    )
    assert amount_in == valid + rejected
    # independently: every line's quantity × price, in exact decimals (these exports have no discount)
    expected = sum((Decimal(r["Quantity"]) * Decimal(r["UnitPrice"]) for r in source_rows()), Decimal(0))
    assert amount_in == expected
    items = pl.read_parquet(checked.out / "checkout_items.parquet")
    assert items["line_total"].sum() == valid
    assert sum(Decimal(t) for t in checkouts(checked)["total"]) == valid


def test_cancellations_become_unmatched_returns(checked: Checked) -> None:
    frame = checkouts(checked)
    cancelled = frame.filter(pl.col("transaction_id").str.starts_with("C"))
    invoices = {r["InvoiceNo"] for r in source_rows() if r["InvoiceNo"].startswith("C")}
    assert set(cancelled["transaction_id"]) == invoices and len(invoices) >= 10
    assert set(cancelled["transaction_type"]) == {"return"}
    assert set(cancelled["return_status"]) == {"unmatched"}
    assert cancelled["original_transaction_id"].null_count() == cancelled.height
    assert all(Decimal(total) < 0 for total in cancelled["total"])
    # stock adjustments with only negative quantities are returns too
    # (validation.treat_negative_quantity_as_return); every other invoice is a sale
    adjustments = {"536589", "536764"}
    returned = frame.filter(pl.col("transaction_id").is_in(sorted(adjustments)))
    assert set(returned["transaction_type"]) == {"return"} and returned.height == 2
    ordinary = frame.filter(~pl.col("transaction_id").is_in(sorted(invoices | adjustments)))
    assert set(ordinary["transaction_type"]) == {"sale"}
    assert checked.summary["returns"] == checked.summary["returns_unmatched"] == len(invoices) + 2


def test_missing_customer_ids_become_guests(checked: Checked) -> None:
    frame = checkouts(checked)
    no_customer = {r["InvoiceNo"] for r in source_rows() if not r["CustomerID"]}
    guests = frame.filter(pl.col("is_guest"))
    assert set(guests["transaction_id"]) == no_customer & set(frame["transaction_id"])
    assert guests["customer_id"].null_count() == guests.height
    assert checked.summary["guests"] == guests.height >= 15
    members = frame.filter(~pl.col("is_guest"))
    assert members["customer_id"].null_count() == 0
    first = frame.filter(pl.col("transaction_id") == "536365")["customer_id"].item()
    # the float-typed export column, kept as an identifier (check hashes it, as a run's reports do)
    assert first in {mask_customer_id("17850"), mask_customer_id("17850.0")}


def test_mojibake_descriptions_pass_through_untouched(checked: Checked) -> None:
    items = pl.read_parquet(checked.out / "checkout_items.parquet")
    garbled = items.filter(pl.col("product_name").str.contains("Â£", literal=True))
    expected = [r["Description"] for r in source_rows() if "Â£" in r["Description"]]
    assert sorted(garbled["product_name"].to_list()) == sorted(expected) and len(expected) >= 5
    # the items CSV for finance is valid UTF-8 and keeps them too
    assert "Dotcomgiftshop Gift Voucher Â£40.00" in (checked.out / "checkout_items.csv").read_text("utf-8")


def test_zero_prices_and_special_lines_are_valid_items(checked: Checked) -> None:
    items = pl.read_parquet(checked.out / "checkout_items.parquet")
    assert items.filter(pl.col("unit_price") == 0).height == 4
    assert {"POST", "D", "M", "DOT", "BANK CHARGES", "AMAZONFEE", "CRUK"} <= set(items["product_id"])
    descriptions_missing = items.filter(pl.col("product_name").is_null())
    assert descriptions_missing.height >= 4  # no Description: kept, the name is optional


def test_bad_debt_adjustments_with_a_negative_price_are_rejected_with_file_and_line(checked: Checked) -> None:
    assert checked.summary["rejects_by_code"] == {"R008_NEGATIVE_PRICE": 2}
    rejects = pl.read_csv(checked.out / "rejects.csv", infer_schema=False)
    assert sorted(rejects["InvoiceNo"]) == ["A563186", "A563187"]  # the export's own column names
    assert set(rejects["reject_field"]) == {"unit_price"}
    assert set(rejects["source_file"]) == {DATA.name}
    rows = source_rows()
    for invoice, line in rejects.select("InvoiceNo", pl.col("source_line").cast(pl.Int64)).iter_rows():
        assert rows[line - 2]["InvoiceNo"] == invoice
    # the positive adjustment of the same day is an ordinary (if odd) sale
    assert "A563185" in set(checkouts(checked)["transaction_id"])
