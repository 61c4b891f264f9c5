"""A sale's returns are decided against everything that came back before, in earlier runs too:
the sale's lines and its earlier returns come from the ledger."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

from pipeline import runner
from pipeline.checkout_codec import decode_checkout
from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from pipeline.stages.returns import with_return_context
from tests.runner_helpers import credentials, sample_feed, settings_in

HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)
SALE = [
    "S-1,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,1,MILK,Milk,dairy,2,1.20,,2.40,GBP,5.40,,",
    "S-1,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,2,BREAD,Bread,bakery,1,3.00,,3.00,GBP,5.40,,",
    "S-2,LON01,R1,2026-11-20 10:05:00,2026-11-20,M2,sale,1,TEA,Tea,drinks,1,2.50,,2.50,GBP,2.50,,",
]
MORNING_RETURNS = [
    "R-1,LON01,R2,2026-11-20 11:00:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,S-1",
    "R-5,LON01,R2,2026-11-20 11:05:00,2026-11-20,M2,return,1,TEA,Tea,drinks,-1,2.50,,-2.50,GBP,-2.50,,S-2",
]
LATER_RETURNS = [
    "R-2,LON01,R2,2026-11-20 15:00:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,S-1",
    "R-3,LON01,R2,2026-11-20 15:10:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,S-1",
    "R-4,LON01,R2,2026-11-20 15:20:00,2026-11-20,M1,return,1,BREAD,Bread,bakery,-1,3.00,,-3.00,GBP,-3.00,,"
    "S-1",
]


def _write(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")


def test_a_later_runs_returns_count_the_earlier_runs_refunds(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    _write(drop, "pos_LON01_20261120_10.csv", SALE + MORNING_RETURNS)
    settings = settings_in(tmp_path)
    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=drop)
        runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        _write(drop, "pos_LON01_20261120_15.csv", LATER_RETURNS)
        runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
        held = {t["transaction_id"]: t for t in sandbox.state.listing("antavo")}
    with Ledger(settings.ledger_path) as ledger:
        rows = {t.transaction_id: t for t in ledger.transactions_by_row_id(list(range(1, 100)))}
    # R-5 gave back all of S-2: one whole refund
    assert [r["action"] for r in held["S-2"]["refunds"]] == ["refund"]
    # S-1: one milk in the morning, one more and the bread later; a third milk was never bought
    assert [(r["action"], r.get("product_id")) for r in held["S-1"]["refunds"]] == [
        ("refund_item", "MILK"), ("refund_item", "MILK"), ("refund_item", "BREAD")]
    assert Decimal(held["S-1"]["refunded"]) == Decimal("5.40")
    assert rows["R-3"].state is TxnState.NOT_SENT and rows["R-3"].last_error_code == "over_refund"
    assert "3 units of product MILK" in str(rows["R-3"].last_error_message)
    assert all(rows[r].state is TxnState.ACCEPTED for r in ("R-1", "R-2", "R-4", "R-5"))


def test_with_return_context_decides_a_sales_returns_in_ledger_order(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    _write(drop, "pos_LON01_20261120_10.csv", SALE + MORNING_RETURNS + LATER_RETURNS)
    settings = settings_in(tmp_path)
    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=drop, base_url="http://127.0.0.1:9")
        feed = feed.model_copy(update={"target": feed.target.model_copy(update={"max_attempts": 1,
                                                                           "check_credentials": False})})
        runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])  # nothing reaches a platform

    with Ledger(settings.ledger_path) as ledger:
        rows = ledger.transactions_by_row_id(list(range(1, 100)), with_checkout=True)
        returns = [decode_checkout(r.checkout) for r in rows if r.transaction_type == "return" and r.checkout]
        decided = {c["transaction_id"]: (c["return_decision"].action, c["in_doubt"])
                   for c in with_return_context(ledger, "acme", returns, mode="auto")
                   if "return_decision" in c}
        over = next(r for r in rows if r.transaction_id == "R-3")
    # R-3 was decided when the run planned it: never sent; the others were marked in doubt, then
    # held for their sale (its request got no answer) without a request of their own: they gave
    # back the attempt their mark added, so they are not in doubt, and are decided the same way again
    assert (over.state, over.last_error_code) == (TxnState.NOT_SENT, "over_refund")
    assert decided == {"R-1": ("refund_item", False), "R-2": ("refund_item", False),
                       "R-4": ("refund_item", False), "R-5": ("refund", False)}


NOT_SALES = [
    "S-1,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,1,MILK,Milk,dairy,2,1.20,,2.40,GBP,2.40,,",
    "V-1,LON01,R1,2026-11-20 10:01:00,2026-11-20,M1,void,1,MILK,Milk,dairy,1,1.20,,1.20,GBP,1.20,,",
    "R-1,LON01,R2,2026-11-20 11:00:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,S-1",
    # a return of a return, of a void, of itself: nothing of them was bought
    "R-2,LON01,R2,2026-11-20 11:01:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,R-1",
    "R-3,LON01,R2,2026-11-20 11:02:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,V-1",
    "R-4,LON01,R2,2026-11-20 11:03:00,2026-11-20,M1,return,1,MILK,Milk,dairy,-1,1.20,,-1.20,GBP,-1.20,,R-4",
]


def test_a_return_naming_a_return_a_void_or_itself_is_never_sent(
    sandbox: SandboxServer, target_kind: str, tmp_path: Path
) -> None:
    """Before, Antavo was sent each (and refused it) and CRM.COM held each as retryable for ever,
    waiting for a purchase that never comes (the void's return was called a guest's)."""
    drop = tmp_path / "drop"
    _write(drop, "pos_LON01_20261120_10.csv", NOT_SALES)
    settings = settings_in(tmp_path)
    with credentials(sandbox, target_kind):
        feed = sample_feed("acme_hourly", sandbox, folder=drop, target_kind=target_kind)
        dry = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)], dry_run=True)
        done = runner.run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
    assert dry.summary["not_sent"] == done.summary["not_sent"] == 3  # the dry run decides the same
    assert done.summary["failed_retryable"] == done.summary["failed_permanent"] == 0
    assert done.summary["balanced"] is True
    with Ledger(settings.ledger_path) as ledger:
        rows = {t.transaction_id: t for t in ledger.run_transactions(done.run_id)}
    assert rows["R-1"].state is TxnState.ACCEPTED
    for tid, named in (("R-2", "R-1, a return"), ("R-3", "V-1, a void"), ("R-4", "itself")):
        assert rows[tid].state is TxnState.NOT_SENT and rows[tid].attempts == 0
        assert rows[tid].last_error_code == "original_not_a_sale"
        assert f"names {named}, not a sale" in str(rows[tid].last_error_message)
