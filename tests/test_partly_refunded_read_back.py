"""A return some of whose lines a read-back finds landed and the rest of which the platform refuses
(all or in part), through ``posfeed run`` against the sandbox, on a SQLite ledger and a PostgreSQL
one: a run is killed while its refund is in flight (the milk lands, the rest is refused, the answer
never comes), the next run reads the milk back and sends the rest. The money the platform refunded
of the return, kept in the ledger and shown by summary.csv, summary.json and the report page, is
the milk found by the read-back and what landed of the rest, never only the latter."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import feed_toml, sample_feed
from tests.sandbox_fixtures import TARGET_KITS
from tests.test_refunds_hostile import DAY, line, ret, state, write
from tests.test_refunds_hostile import Posfeed as HostilePosfeed

# 2 milk (2.40), a bread (3.00) and eggs (2.50): 7.90; the return gives back one of each, 6.70
SALE = [line("S-1", 1, "MILK", "2", "1.20", "7.90"), line("S-1", 2, "BREAD", "1", "3.00", "7.90"),
        line("S-1", 3, "EGGS", "1", "2.50", "7.90")]
RETURN = [ret("R-1", 1, "MILK", "1", "1.20", "6.70", "S-1"),
          ret("R-1", 2, "BREAD", "1", "3.00", "6.70", "S-1"),
          ret("R-1", 3, "EGGS", "1", "2.50", "6.70", "S-1")]


class Posfeed(HostilePosfeed):
    """`posfeed` in process: the acme hourly feed on Antavo, read back as soon as a run starts."""

    def __init__(self, tmp: Path, sandbox: SandboxServer, ledger_location: Path | str, **target: Any):
        self.tmp, self.sandbox, self.ledger_location = tmp, sandbox, ledger_location
        self.drop = tmp / "drop"
        self.drop.mkdir(parents=True, exist_ok=True)
        feed = sample_feed("acme_hourly", sandbox, folder=self.drop, max_attempts=1, readback_wait_seconds=0,
                           **target)
        self.feed = tmp / "acme_hourly.toml"
        self.feed.write_text(feed_toml(feed.model_copy(update={"expected": None})), encoding="utf-8")
        self.feeds = {"acme_hourly": self.feed}
        self.env = {**TARGET_KITS[self.kind].env(sandbox), **ledger_env(ledger_location)}


def _killed_with_the_milk_landed(posfeed: Posfeed, sandbox: SandboxServer) -> None:
    """S-1 delivered; then a run sends R-1 (milk, bread, eggs): the platform refunds the milk,
    refuses the bread and the eggs, and its answer never ends: the run is killed waiting for it."""
    write(posfeed.drop, "pos_LON01_20261120_10.csv", SALE)
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_12.csv", RETURN)
    sandbox.config.refuse_refund_items = ("BREAD", "EGGS")
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("trickle",), 1.0
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(posfeed.tmp / "state"), "--reports-dir",
         str(posfeed.tmp / "reports"), "run", "--feed", str(posfeed.feed), "--business-date", DAY],
        env={**os.environ, **posfeed.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not posfeed.held()["S-1"]["refunds"]:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the refund never landed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    sandbox.config.fault_rate = 0.0
    assert posfeed.rows()["R-1"].state is TxnState.SENDING
    held = posfeed.held()["S-1"]
    assert [r["product_id"] for r in held["refunds"]] == ["MILK"]


def _page_figure(folder: Path, figure: str) -> str:
    """The figure of the report page's partly refunded item (GBP)."""
    html = (folder / "report.html").read_text(encoding="utf-8")
    section = re.search(r'<section[^>]*data-action="partly_refunded".*?</section>', html, re.S)
    assert section is not None, "no partly refunded item on the page"
    cell = re.search(rf'data-currency="GBP" data-figure="{figure}">([^<]*)<', section.group(0))
    assert cell is not None, figure
    return cell.group(1).split()[0].replace(",", "")


@pytest.mark.parametrize(("refused", "refunded"), [
    (("EGGS",), "4.20"),  # the bread lands now: milk (read back) and bread
    (("BREAD", "EGGS"), "1.20"),  # nothing lands now: the milk the read-back found
])
def test_the_money_refunded_counts_the_lines_a_read_back_found(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, refused: tuple[str, ...],
    refunded: str,
) -> None:
    """Before, the money kept was that of the lines refunded in the run's own request only: the
    milk a read-back found landed was left out (1.20 understated, or no amount at all when nothing
    else landed)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    _killed_with_the_milk_landed(posfeed, sandbox)
    sandbox.config.refuse_refund_items = refused
    done = posfeed.run()  # reads the milk back, sends the bread and the eggs
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_permanent", "partly_refunded")
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal(refunded)  # what the platform did refund
    assert sorted(rows["R-1"].event_ids) == sorted(r["event_id"] for r in held["refunds"])
    assert rows["R-1"].refunded == Decimal(refunded)
    message = str(rows["R-1"].last_error_message)
    assert f"the platform refunded {refunded} of 6.70" in message
    assert "MILK x1 (1.20), found on the platform by a read-back" in message
    assert all(f"{product} x1" in message for product in refused)  # each refused line named
    with Ledger(ledger_location) as ledger:
        (kept,) = ledger._db.query(
            "SELECT rt.refunded_at_end FROM transactions t JOIN run_transactions rt "
            "ON rt.txn_row_id = t.id WHERE t.transaction_id = 'R-1' AND rt.run_id = ?", (done["run_id"],))
    assert kept[0] == f"{refunded} GBP"
    folder = Path(done["reports_path"])
    with (folder / "summary.csv").open(encoding="utf-8", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["origin"] in ("file", "ledger")
                  and int(r["partly_refunded_count"] or 0)]
    assert (row["failed_permanent_count"], row["failed_permanent_amount"]) == ("1", "-6.70")
    assert (row["partly_refunded_count"], row["partly_refunded_amount"]) == ("1", f"-{refunded}")
    assert done["partly_refunded"] == 1
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == f"-{refunded}"
    assert Decimal(_page_figure(folder, "refunded")) == Decimal(f"-{refunded}")
    assert Decimal(_page_figure(folder, "to_review")) == Decimal("-6.70") + Decimal(refunded)


@pytest.mark.parametrize("bulk_size", [50, 1])
def test_a_rerun_of_a_partly_refunded_return_keeps_what_landed_before(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, bulk_size: int
) -> None:
    """A return taken in part (milk and bread landed, eggs refused) rerun while the eggs are still
    refused: the read-back finds the milk and the bread, the eggs are refused again (the eggs
    alone go in a bulk request, or, with ``bulk_size = 1``, in a single one). Before, the money
    refunded was no longer known (nothing landed in the rerun's own request)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, bulk_size=bulk_size)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [*SALE, *RETURN])
    sandbox.config.refuse_refund_items = ("EGGS",)
    posfeed.run()
    assert posfeed.rows()["R-1"].refunded == Decimal("4.20")
    done = posfeed("rerun", "--feed", str(posfeed.feed), "--failed", "--include-permanent")
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_permanent", "partly_refunded")
    assert rows["R-1"].refunded == Decimal("4.20")
    message = str(rows["R-1"].last_error_message)
    assert "the platform refunded 4.20 of 6.70" in message
    assert "found on the platform by a read-back) and refused EGGS x1 (2.50): 112204" in message
    assert Decimal(posfeed.held()["S-1"]["refunded"]) == Decimal("4.20")  # nothing sent twice
    with (Path(done["reports_path"]) / "summary.csv").open(encoding="utf-8", newline="") as handle:
        partly = [r["partly_refunded_amount"] for r in csv.DictReader(handle)
                  if int(r["partly_refunded_count"] or 0)]
    assert partly == ["-4.20"]
