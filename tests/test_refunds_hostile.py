"""Refunds on Antavo that try to give back more than was bought, through ``posfeed run`` against
the sandbox platform, on a SQLite ledger and a PostgreSQL one (``ledger_location``): each return
refunds at most what its sale bought, once, or is held with a code, and the run's report balances
per currency."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.ledger import Ledger, TxnRecord, TxnState
from pipeline.reports import STATE_COLUMNS
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import feed_toml, sample_feed, stats
from tests.sandbox_fixtures import TARGET_KITS

DAY = "2026-11-20"
REPEATS = (TxnState.DUPLICATE, TxnState.CONFLICT, TxnState.REJECTED)
HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
          "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
          "currency,transaction_total,points_burned,original_transaction_id")


def line(tid: str, no: int, product: str, qty: str, price: str, total: str, *, kind: str = "sale",
         customer: str = "M1", currency: str = "GBP", discount: str = "", line_total: str | None = None,
         original: str = "", at: str = "10:00:00", store: str = "LON01") -> str:
    """One CSV line; ``line_total`` defaults to qty x price less the discount."""
    if line_total is None:
        line_total = str(Decimal(qty) * Decimal(price) - (Decimal(discount) if discount else Decimal(0))
                         * (1 if Decimal(qty) > 0 else -1))
    return (f"{tid},{store},R1,{DAY} {at},{DAY},{customer},{kind},{no},{product},{product.title()},misc,"
            f"{qty},{price},{discount},{line_total},{currency},{total},,{original}")


def ret(tid: str, no: int, product: str, qty: str, price: str, total: str, original: str,
        **kw: Any) -> str:
    return line(tid, no, product, f"-{qty}", price, f"-{total}", kind="return", original=original,
                at=kw.pop("at", "11:00:00"), **kw)


def write(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")


class Posfeed:
    """`posfeed` in process: the hourly and daily acme feeds (one scope), one ledger, the sandbox."""

    kind = "antavo"  # the target the feeds send to, and whose transactions the sandbox lists

    def __init__(self, tmp: Path, sandbox: SandboxServer, ledger_location: Path | str, **target: Any):
        self.tmp, self.sandbox, self.ledger_location = tmp, sandbox, ledger_location
        self.drop = tmp / "drop"
        self.drop.mkdir(parents=True, exist_ok=True)
        self.feeds: dict[str, Path] = {}
        for name in ("acme_hourly", "acme_daily"):
            feed = sample_feed(name, sandbox, folder=self.drop, max_attempts=1, **target)
            feed = feed.model_copy(update={"expected": None})
            self.feeds[name] = tmp / f"{name}.toml"
            self.feeds[name].write_text(feed_toml(feed), encoding="utf-8")
        self.env = {**TARGET_KITS[self.kind].env(sandbox), **ledger_env(ledger_location)}

    def __call__(self, *args: str) -> dict[str, Any]:
        base = ["--state-dir", str(self.tmp / "state"), "--reports-dir", str(self.tmp / "reports")]
        result = CliRunner().invoke(cli, [*base, *args, "--json"], env=self.env, catch_exceptions=False)
        assert result.exit_code in (0, 65, 75), result.output
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def run(self, feed: str = "acme_hourly", *more: str) -> dict[str, Any]:
        done = self("run", "--feed", str(self.feeds[feed]), "--business-date", DAY, *more)
        assert done["balanced"] is True, done
        assert_summary_balances(Path(done["reports_path"]) / "summary.csv")
        return done

    def rows(self) -> dict[str, TxnRecord]:
        """The primary row of each transaction id."""
        with Ledger(self.ledger_location) as ledger:
            rows = ledger.transactions_by_row_id(list(range(1, 500)))
        return {r.transaction_id: r for r in rows if r.state not in REPEATS and r.transaction_id is not None}

    def held(self) -> dict[str, dict[str, Any]]:
        listing = httpx.get(f"{self.sandbox.url}/_sandbox/transactions", params={"platform": self.kind},
                            timeout=10).json()["transactions"]
        return {str(t["transaction_id"]): t for t in listing}


def assert_summary_balances(path: Path) -> None:
    """summary.csv: per currency, what came in is the sum over every state, in count and money."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        counted = sum(int(row[f"{name}_count"]) for name, _ in STATE_COLUMNS)
        amount = sum((Decimal(row[f"{name}_amount"]) for name, _ in STATE_COLUMNS), Decimal(0))
        assert counted == int(row["transactions_in"]), row
        assert amount == Decimal(row["amount_in"]), row


def refunded_units(record: dict[str, Any]) -> dict[str, Decimal]:
    units: dict[str, Decimal] = defaultdict(Decimal)
    for refund in record["refunds"]:
        if refund["action"] == "refund_item":
            units[str(refund["product_id"])] += Decimal(str(refund["quantity"]))
    return units


SALE = [line("S-1", 1, "MILK", "2", "1.20", "5.40"), line("S-1", 2, "BREAD", "1", "3.00", "5.40")]


def state(rows: dict[str, TxnRecord], tid: str) -> tuple[str, str | None]:
    return rows[tid].state.value, rows[tid].last_error_code

def _a_plain_run_sends_the_sale_then_its_refund_once(posfeed: Posfeed, sandbox: SandboxServer) -> None:
    """The platform answers again: a plain run sends S-1, then its waiting return R-1 (1.20), once."""
    sandbox.config.fault_rate = 0.0
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1")[0] == state(rows, "R-1")[0] == "accepted"
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("1.20") and len(held["refunds"]) == 1



def test_a_return_at_a_higher_unit_price_than_sold_is_never_sent(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        *SALE, ret("R-1", 1, "MILK", "1", "2.40", "2.40", "S-1")])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("not_sent", "over_refund"), rows["R-1"]
    assert Decimal(posfeed.held()["S-1"]["refunded"]) == 0


def test_more_units_of_an_item_than_sold_while_the_money_stays_under(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        *SALE, ret("R-1", 1, "MILK", "3", "0.50", "1.50", "S-1")])
    posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("not_sent", "over_refund")
    assert Decimal(posfeed.held()["S-1"]["refunded"]) == 0


def test_returns_across_the_feeds_of_one_scope_and_across_runs(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [*SALE, ret("R-1", 1, "MILK", "1", "1.20", "1.20",
                                                                  "S-1")])
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_daily.csv", [
        *SALE, ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1"),
        ret("R-2", 1, "MILK", "1", "1.20", "1.20", "S-1", at="12:00:00"),
        ret("R-3", 1, "MILK", "1", "1.20", "1.20", "S-1", at="12:30:00")])
    posfeed.run("acme_daily")
    write(posfeed.drop, "pos_LON01_20261120_13.csv", [
        ret("R-4", 1, "MILK", "1", "1.20", "1.20", "S-1", at="13:00:00"),
        ret("R-5", 1, "BREAD", "1", "3.00", "3.00", "S-1", at="13:10:00")])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-3") == ("not_sent", "over_refund")
    assert state(rows, "R-4") == ("not_sent", "over_refund")
    assert {state(rows, t)[0] for t in ("R-1", "R-2", "R-5")} == {"accepted"}
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("5.40") and refunded_units(held)["MILK"] == 2


def test_a_discounted_sale_refunds_at_most_what_was_paid(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        line("S-1", 1, "MILK", "2", "1.20", "2.00", discount="0.40"),
        ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1"),
        ret("R-2", 1, "MILK", "1", "1.20", "1.20", "S-1", at="11:30:00")])
    posfeed.run()
    rows = posfeed.rows()
    print({t: (state(rows, t), rows[t].last_error_message) for t in ("R-1", "R-2")})
    assert state(rows, "R-1")[0] == "accepted"
    assert state(rows, "R-2") == ("not_sent", "over_refund")
    assert Decimal(posfeed.held()["S-1"]["refunded"]) == Decimal("1.20")


def test_a_return_in_another_currency_than_its_sale(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        *SALE, ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1", currency="EUR")])
    posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("not_sent", "return_mismatch")


def test_a_return_before_its_sale_waits_and_counts_with_what_came_back_since(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Before, R-1 went out, was refused for good (112201), and only a rerun including the
    failed-permanent sent it again."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [ret("R-1", 1, "MILK", "2", "1.20", "2.40", "S-1")])
    posfeed.run()
    # the ledger does not know S-1, and the platform does not list it: R-1 waits, nothing sent
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    assert stats(posfeed.sandbox)["events_rejected"] == 0
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [
        *SALE, ret("R-2", 1, "MILK", "1", "1.20", "1.20", "S-1", at="12:30:00")])
    posfeed.run()  # R-1 goes after S-1, decided first (recorded first), then R-2
    rows = posfeed.rows()
    assert state(rows, "R-1")[0] == "accepted"
    assert state(rows, "R-2") == ("not_sent", "over_refund")  # after R-1, 3 of the 2 milks
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("2.40") and refunded_units(held)["MILK"] == 2


def test_returns_of_a_conflicting_or_rejected_sale(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        *SALE, line("S-2", 1, "TEA", "1", "2.50", "2.50", currency="XXX")])  # S-2 rejected
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_11.csv", [
        # S-1 again with five milks (a conflict, never sent): its return counts against the sale sent
        line("S-1", 1, "MILK", "5", "1.20", "9.00"), line("S-1", 2, "BREAD", "1", "3.00", "9.00"),
        ret("R-1", 1, "MILK", "5", "1.20", "6.00", "S-1"),
        ret("R-2", 1, "TEA", "1", "2.50", "2.50", "S-2")])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("not_sent", "over_refund")
    assert "5 units of product MILK would have come back, 2 were bought" in str(
        rows["R-1"].last_error_message)
    # the platform never had S-2 (rejected): R-2 waits for a corrected S-2, nothing sent
    assert state(rows, "R-2") == ("failed_retryable", "original_not_found")
    assert stats(sandbox)["events_rejected"] == 0
    assert Decimal(posfeed.held()["S-1"]["refunded"]) == 0 and "S-2" not in posfeed.held()


def test_returns_of_a_guest_sale(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        line("G-1", 1, "MILK", "2", "1.20", "2.40", customer=""),
        line("G-2", 1, "TEA", "1", "2.50", "2.50", customer=""),
        ret("R-1", 1, "MILK", "1", "1.20", "1.20", "G-1", customer=""),
        ret("R-2", 1, "MILK", "1", "1.20", "1.20", "G-1", customer="", at="11:10:00"),
        ret("R-3", 1, "MILK", "1", "1.20", "1.20", "G-1", customer="", at="11:20:00"),
        ret("R-4", 1, "TEA", "1", "2.50", "2.50", "G-2", customer="M1", at="11:30:00"),
    ])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1")[0] == state(rows, "R-2")[0] == "accepted"
    assert state(rows, "R-3") == ("not_sent", "over_refund")
    # a member's return of a guest's sale: the platform judges (a member may have claimed it)
    assert state(rows, "R-4") == ("failed_permanent", "103902")
    held = posfeed.held()
    assert Decimal(held["G-1"]["refunded"]) == Decimal("2.40") and Decimal(held["G-2"]["refunded"]) == 0


@pytest.mark.parametrize("batch_size", [None, 1], ids=["one-batch", "a-batch-each"])
def test_a_return_whose_sale_failed_in_its_run_waits_for_the_sale(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: Any,
    batch_size: int | None,
) -> None:
    """Before, the refund went out after its sale's request failed, the platform refused it for
    good (112201), and the next run sent the sale but never the refund. With a batch each, the
    sink gets one transaction at a time: the return is handed over after its sale failed."""
    if batch_size is not None:
        from pipeline.stages import submit

        monkeypatch.setattr(submit, "BATCH_SIZE", batch_size)
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [*SALE, ret("R-1", 1, "MILK", "1", "1.20", "1.20",
                                                                  "S-1")])
    # seed 4: the first request (the sale) is answered 500, the second would go through
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("error_500",), 0.5
    sandbox.state.rng.seed(4)
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1") == ("failed_retryable", "500")
    assert state(rows, "R-1") == ("failed_retryable", "original_not_accepted")
    assert stats(sandbox)["events_rejected"] == 0  # no refund of it went out
    _a_plain_run_sends_the_sale_then_its_refund_once(posfeed, sandbox)


def test_a_return_whose_sale_the_platform_refused_in_its_run_is_never_sent(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        line("S-1", 1, "MILK", "2", "1.20", "2.40", customer="unknown-7"),
        ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1", customer="unknown-7")])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1") == ("failed_permanent", "160212")
    assert state(rows, "R-1") == ("failed_permanent", "original_refused")
    assert "160212" in str(rows["R-1"].last_error_message)
    assert stats(sandbox)["events_rejected"] == 1  # the sale; no refund of it went out


def test_two_returns_that_never_landed_are_decided_by_what_the_platform_holds(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Both returns came before their sale. Once they were refused (112201); rerun after the sale
    came, each was sent before, so may have landed, and each counted the other: both were
    over_refund, never sent, though the platform held no refund of the sale. Now both wait for the
    sale (their checks of it are no sends): the plain run that delivers it sends the first, which
    fits, and holds the second, which would exceed it."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        ret("R-1", 1, "MILK", "2", "1.20", "2.40", "S-1"),
        ret("R-2", 1, "MILK", "2", "1.20", "2.40", "S-1", at="11:10:00")])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == state(rows, "R-2") == ("failed_retryable", "original_not_found")
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1")[0] == "accepted"
    assert state(rows, "R-2") == ("not_sent", "over_refund")
    assert "4 units of product MILK" in str(rows["R-2"].last_error_message)
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("2.40") and refunded_units(held)["MILK"] == 2


def test_a_return_whose_sale_another_scope_delivered_is_checked_against_the_platforms_sale(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Before, the ledger of the return's scope did not know the sale, so the return went out
    unchecked: one milk of 1.20 refunded 2.40, a bread in EUR refunded a GBP sale, and a third milk
    was left to the platform."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    other = tmp_path / "other"
    feed = sample_feed("acme_hourly", sandbox, folder=other, max_attempts=1)
    posfeed.feeds["other"] = tmp_path / "other.toml"
    posfeed.feeds["other"].write_text(feed_toml(feed.model_copy(update={
        "expected": None, "dedup_scope": "elsewhere"})), encoding="utf-8")
    write(posfeed.drop, "pos_LON01_20261120_10.csv", SALE)
    posfeed.run()
    write(other, "pos_LON01_20261120_11.csv", [
        ret("R-1", 1, "MILK", "1", "2.40", "2.40", "S-1"),
        ret("R-2", 1, "MILK", "1", "1.20", "1.20", "S-1", at="11:10:00"),
        ret("R-3", 1, "MILK", "1", "1.20", "1.20", "S-1", at="11:20:00"),
        ret("R-0", 1, "BREAD", "1", "3.00", "3.00", "S-1", at="11:25:00", currency="EUR"),
        ret("R-4", 1, "BREAD", "1", "3.00", "3.00", "S-1", at="11:30:00")])
    posfeed.run("other")
    rows = posfeed.rows()
    assert state(rows, "R-0") == ("not_sent", "return_mismatch")
    assert "(as the platform holds it)" in str(rows["R-0"].last_error_message)
    assert state(rows, "R-1") == ("not_sent", "over_refund")
    assert "2.40 for 1 unit of product MILK would have been refunded, 1.20 was its price" in str(
        rows["R-1"].last_error_message)
    assert state(rows, "R-2")[0] == state(rows, "R-4")[0] == "accepted"
    write(other, "pos_LON01_20261120_12.csv", [
        ret("R-5", 1, "MILK", "1", "1.20", "1.20", "S-1", at="12:00:00")])
    posfeed.run("other")  # the next run counts what the platform holds
    rows = posfeed.rows()
    assert state(rows, "R-3")[0] == "accepted" and state(rows, "R-5") == ("not_sent", "over_refund")
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("5.40") and refunded_units(held)["MILK"] == 2


def test_a_return_whose_sale_an_earlier_run_left_unaccepted_waits_for_it(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Before, the return went out in the run after its sale failed (the sale failing again in the
    same run's carry-over), was refused for good (112201), and the run that delivered the sale
    did not send it again."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", SALE)
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("error_500",), 1.0
    posfeed.run()
    assert state(posfeed.rows(), "S-1") == ("failed_retryable", "500")
    write(posfeed.drop, "pos_LON01_20261120_11.csv", [ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1")])
    # seed 4: the first request (the sale, carried over) is answered 500, the second would go through
    sandbox.config.fault_rate = 0.5
    sandbox.state.rng.seed(4)
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1") == ("failed_retryable", "500")
    assert state(rows, "R-1") == ("failed_retryable", "original_not_accepted")
    assert rows["R-1"].attempts == 0 and stats(sandbox)["events_rejected"] == 0  # nothing of it sent
    _a_plain_run_sends_the_sale_then_its_refund_once(posfeed, sandbox)


def test_a_return_whose_sale_an_earlier_run_saw_refused_is_never_sent(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        line("S-1", 1, "MILK", "2", "1.20", "2.40", customer="unknown-7")])
    posfeed.run()
    assert state(posfeed.rows(), "S-1") == ("failed_permanent", "160212")
    write(posfeed.drop, "pos_LON01_20261120_11.csv", [
        ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1", customer="unknown-7")])
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_permanent", "original_refused")
    assert "160212" in str(rows["R-1"].last_error_message)
    assert rows["R-1"].attempts == 0 and stats(sandbox)["events_rejected"] == 1  # the sale only


def test_a_refund_the_platform_accepts_in_part_is_recorded_with_what_landed(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Before, a return of two lines whose bread the platform refused was failed_permanent without
    the event id of its milk, refunded all the same: nothing told the money refunded, a later
    return of that milk was not counted against it, and a rerun sent the milk again."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    sandbox.config.refuse_refund_items = ("BREAD",)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        *SALE, ret("R-1", 1, "MILK", "1", "1.20", "4.20", "S-1"),
        ret("R-1", 2, "BREAD", "1", "3.00", "4.20", "S-1")])
    posfeed.run()
    rows = posfeed.rows()
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("1.20")  # the milk landed
    assert state(rows, "R-1") == ("failed_permanent", "partly_refunded")
    assert rows["R-1"].event_ids == (held["refunds"][0]["event_id"],)
    message = str(rows["R-1"].last_error_message)
    assert "1.20 of 4.20" in message and "BREAD" in message and "112204" in message
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [
        ret("R-2", 1, "MILK", "1", "1.20", "1.20", "S-1", at="12:00:00"),
        ret("R-3", 1, "MILK", "1", "1.20", "1.20", "S-1", at="12:10:00")])
    posfeed.run()  # the milk R-1 refunded counts: one more milk fits, not two
    rows = posfeed.rows()
    assert state(rows, "R-2")[0] == "accepted" and state(rows, "R-3") == ("not_sent", "over_refund")
    sandbox.config.refuse_refund_items = ()
    posfeed("rerun", "--feed", str(posfeed.feeds["acme_hourly"]), "--failed", "--include-permanent")
    rows = posfeed.rows()
    held = posfeed.held()["S-1"]
    assert state(rows, "R-1")[0] == "accepted" and len(rows["R-1"].event_ids) == 2
    # the bread alone was sent again: each line refunded once
    assert Decimal(held["refunded"]) == Decimal("5.40")
    assert refunded_units(held) == {"MILK": Decimal(2), "BREAD": Decimal(1)}


def _milk_refunded_bread_refused(posfeed: Posfeed, sandbox: SandboxServer) -> dict[str, Any]:
    """A run whose return of milk (1.20) and bread (3.00) the platform takes in part (bread refused)."""
    sandbox.config.refuse_refund_items = ("BREAD",)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        *SALE, ret("R-1", 1, "MILK", "1", "1.20", "4.20", "S-1"),
        ret("R-1", 2, "BREAD", "1", "3.00", "4.20", "S-1")])
    done = posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("failed_permanent", "partly_refunded")
    return done


def test_the_report_shows_the_money_a_partly_refunded_return_did_refund(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """A return of milk (1.20) and bread (3.00) whose bread the platform refused counts whole in
    failed_permanent (the report balances: every transaction in one state), and summary.csv and
    summary.json say how much of it the platform did refund: the milk, -1.20, in one return."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    done = _milk_refunded_bread_refused(posfeed, sandbox)
    with (Path(done["reports_path"]) / "summary.csv").open(encoding="utf-8", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["origin"] == "file"]
    assert (row["failed_permanent_count"], row["failed_permanent_amount"]) == ("1", "-4.20")
    assert (row["partly_refunded_count"], row["partly_refunded_amount"]) == ("1", "-1.20")
    assert done["partly_refunded"] == 1
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == "-1.20"


def test_the_money_a_partly_refunded_return_did_refund_is_kept_in_its_own_ledger_column(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """The money refunded of a return taken in part is written when its answer is settled (exact
    text, with its currency) and the reports read it there: before, they read it back out of the
    return's message, so a message written differently (a new wording, a masking sweep) changed
    finance's figure. Its run's report (as the run left it) and its business day's keep -1.20."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location)
    done = _milk_refunded_bread_refused(posfeed, sandbox)
    assert posfeed.rows()["R-1"].refunded == Decimal("1.20")
    other = "partly refunded: some lines landed, the rest was refused"
    with Ledger(ledger_location) as ledger:
        (kept,) = ledger._db.query(
            "SELECT t.refunded, rt.refunded_at_end FROM transactions t JOIN run_transactions rt "
            "ON rt.txn_row_id = t.id WHERE t.transaction_id = 'R-1' AND rt.run_id = ?", (done["run_id"],))
        assert (kept[0], kept[1]) == ("1.20 GBP", "1.20 GBP")
        with ledger._db.transaction() as db:  # the messages say it otherwise now
            db.execute("UPDATE transactions SET last_error_message = ? WHERE transaction_id = 'R-1'",
                       (other,))
            db.execute("UPDATE run_transactions SET error_message_at_end = ? WHERE error_code_at_end = "
                       "'partly_refunded'", (other,))
    feed_file = str(posfeed.feeds["acme_hourly"])
    for report in (posfeed("report", done["run_id"], "--out", str(tmp_path / "run-report")),
                   posfeed("report", "--feed", feed_file, "--business-date", DAY,
                           "--out", str(tmp_path / "day-report"))):
        assert report["partly_refunded"] == 1, report
        assert report["currencies"]["GBP"]["amount_partly_refunded"] == "-1.20", report
    for folder in ("run-report", "day-report"):
        with (tmp_path / folder / "summary.csv").open(encoding="utf-8", newline="") as handle:
            (row,) = [r for r in csv.DictReader(handle) if r["origin"] in ("file", "ledger")]
        assert (row["partly_refunded_count"], row["partly_refunded_amount"]) == ("1", "-1.20"), folder
