"""The ARTS POSLog reader: the sample day and hand-written edge cases, one rule each.

Expected figures are worked out here from the XML the test writes (or, for the sample day, from an
independent parse with the standard library's ElementTree), never by calling the reader.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from pipeline.config import Feed
from pipeline.core.poslog import read_poslog
from pipeline.core.readstats import ReadStats
from pipeline.core.transform import TransformResult, transform, transform_files
from pipeline.demo import repo_root
from pipeline.errors import UnreadableFileError
from tests.core import helpers
from tests.core.helpers import NOW

ARTS = "http://www.nrf-arts.org/IXRetail/namespace/"
ACS = "http://www.ncr.com/rsd/acs/tlog/markup/poslog/2.1"
SAMPLE = repo_root() / "sample_data" / "poslog" / "POSLog_0042_20261120.xml"


def feed(**poslog: object) -> Feed:
    fmt: dict[str, object] = {"kind": "poslog"}
    template = poslog.pop("template", None)
    if template:
        fmt["transaction_id_template"] = template
    validation = poslog.pop("validation", {})
    return Feed.model_validate({"name": "poslog-test", "timezone": "America/New_York", "format": fmt,
                                "poslog": poslog, "validation": validation})


# ---- builders: a POSLog document as text ---------------------------------------------------


def sale(seq: int, item: str, price: str, qty: str = "1", amount: str | None = None, *, void: bool = False,
         discount: str | None = None, kind: str = "Sale", link: str = "") -> str:
    extended = amount if amount is not None else str(Decimal(price) * Decimal(qty))
    flag = ' VoidFlag="true"' if void else ""
    extra = f"<DiscountAmount>{discount}</DiscountAmount>" if discount else ""
    return (
        f"<LineItem{flag}><SequenceNumber>{seq}</SequenceNumber><{kind} ItemType=\"Stock\">"
        f"<ItemID>{item}</ItemID><Description>Item {item}</Description>"
        f"<ActualSalesUnitPrice>{price}</ActualSalesUnitPrice><ExtendedAmount>{extended}</ExtendedAmount>"
        f"{extra}<Quantity>{qty}</Quantity>{link}</{kind}></LineItem>"
    )


def member(seq: int, loyalty_id: str) -> str:
    return (f"<LineItem><SequenceNumber>{seq}</SequenceNumber><LoyaltyMembership>"
            f"<LoyaltyID>{loyalty_id}</LoyaltyID></LoyaltyMembership></LineItem>")


def tender(seq: int, amount: str) -> str:
    return (f"<LineItem><SequenceNumber>{seq}</SequenceNumber><Tender TenderType=\"Cash\">"
            f"<Amount>{amount}</Amount></Tender></LineItem>")


def retail(seq: int, *lines: str, grand: str | None, tax: str = "0.00", attrs: str = "",
           header: str | None = None) -> str:
    totals = ""
    if grand is not None:
        totals = (f"<Total TotalType=\"TransactionTaxAmount\">{tax}</Total>"
                  f"<Total TotalType=\"TransactionGrandAmount\">{grand}</Total>")
    return transaction(seq, f"<RetailTransaction{attrs}>{''.join(lines)}{totals}</RetailTransaction>",
                       header=header)


def transaction(seq: int, body: str, *, header: str | None = None) -> str:
    head = header if header is not None else (
        f"<RetailStoreID>0042</RetailStoreID><WorkstationID>03</WorkstationID>"
        f"<SequenceNumber>{seq}</SequenceNumber><BusinessDayDate>2026-11-20</BusinessDayDate>"
    )
    return (f"<Transaction>{head}<EndDateTime>2026-11-20T10:{seq % 60:02d}:00</EndDateTime>"
            f"<CurrencyCode>USD</CurrencyCode>{body}</Transaction>")


def document(*transactions: str, ns: str = ARTS, extra_ns: str = "") -> str:
    xmlns = f' xmlns="{ns}"' if ns else ""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<POSLog{xmlns}{extra_ns}>\n' + "\n".join(
        transactions) + "\n</POSLog>\n"


def write(tmp_path: Path, text: str, name: str = "log.xml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(path: Path, the_feed: Feed | None = None) -> TransformResult:
    return transform_files([path], the_feed or feed(), now=NOW)


def txn_id(seq: int) -> str:
    return f"0042-03-20261120-{seq}"


def totals_by_id(result: TransformResult) -> dict[str, Decimal]:
    return dict(zip(result.checkouts.get_column("transaction_id").to_list(),
                    result.checkouts.get_column("total").to_list(), strict=True))


def items_of(result: TransformResult, seq: int) -> pl.DataFrame:
    return result.items.filter(pl.col("transaction_id") == txn_id(seq)).sort("line_no")


# ---- the sample day, against an independent parse ------------------------------------------


def _independent(path: Path) -> tuple[dict[str, Decimal], Counter[str], int]:
    """(pre-tax total of each finished retail transaction, skipped kinds, LineItem count)."""
    ns = {"a": ARTS}
    root = ET.parse(path).getroot()
    totals: dict[str, Decimal] = {}
    skipped: Counter[str] = Counter()
    line_items = 0
    for txn in root.findall("a:Transaction", ns):
        line_items += len(txn.findall(".//a:LineItem", ns))
        retail_txn = txn.find("a:RetailTransaction", ns)
        if retail_txn is None:
            body = next(c for c in txn if c.tag.endswith("Transaction"))
            skipped[{"ControlTransaction": "control", "TenderControlTransaction": "tender_control"}[
                body.tag.split("}")[1]]] += 1
            continue
        status = retail_txn.get("TransactionStatus")
        if status in ("Voided", "Suspended"):
            skipped[status.lower()] += 1
            continue
        figures = {t.get("TotalType"): Decimal(t.text or "0") for t in retail_txn.findall("a:Total", ns)}
        names = ("RetailStoreID", "WorkstationID", "BusinessDayDate", "SequenceNumber")
        key = "-".join(txn.findtext(f"a:{n}", namespaces=ns) or "" for n in names)
        key = key.replace("2026-11-20", "20261120")
        totals[key] = figures["TransactionGrandAmount"] - figures["TransactionTaxAmount"]
    return totals, skipped, line_items


def test_sample_day_matches_the_files_own_totals() -> None:
    expected_totals, expected_skipped, line_items = _independent(SAMPLE)
    result = run(SAMPLE)
    s = result.summary
    assert s["rows_rejected"] == 0 and not result.unreadable
    assert totals_by_id(result) == expected_totals
    # written with the currency's minor units (pipeline.currencies), the same exact amount
    assert Decimal(s["amount_valid"]) == sum(expected_totals.values(), Decimal("0.0000"))
    assert s["currencies"]["USD"]["amount_valid"] == s["amount_valid"]
    assert s["skipped_by_kind"] == dict(expected_skipped) == {
        "control": 2, "tender_control": 1, "voided": 1, "suspended": 1}
    # every line item of the file is accounted for, once
    assert sum(s["line_items_by_kind"].values()) == line_items
    assert s["line_items_by_kind"]["item_void"] == 2 and s["line_items_by_kind"]["sale_voided"] == 1
    # each checkout's lines sum to its total (discounts carried on the lines)
    for tid, total in expected_totals.items():
        lines = result.items.filter(pl.col("transaction_id") == tid).get_column("line_total").sum()
        assert lines == total


def test_sample_day_member_void_weighed_and_return() -> None:
    result = run(SAMPLE)
    checkouts = {r["transaction_id"]: r for r in result.checkouts.iter_rows(named=True)}
    assert checkouts[txn_id(1004)]["customer_id"] == "000123456789"  # leading zeros kept
    assert checkouts[txn_id(1003)]["is_guest"] and checkouts[txn_id(1008)]["is_guest"]
    sale_items = items_of(result, 1004)
    assert "0003400000435" not in sale_items.get_column("product_id").to_list()  # fully voided
    coffee = sale_items.filter(pl.col("product_id") == "0001111022222").row(0, named=True)
    assert coffee["quantity"] == Decimal("1.000")  # 2 sold, 1 voided
    bananas = sale_items.filter(pl.col("product_id") == "0000000004011").row(0, named=True)
    assert bananas["quantity"] == Decimal("1.235")
    # lines 0.85 + 4.99 + 7.99 = 13.83; paid before tax 11.73 - 0.40 = 11.33: 2.50 of discount
    assert sale_items.get_column("discount").sum() == Decimal("2.50")
    refund = checkouts[txn_id(1007)]
    assert refund["transaction_type"] == "return" and refund["return_status"] == "matched"
    assert refund["original_transaction_id"] == txn_id(1004)
    assert refund["total"] == Decimal("-7.99")
    # the deposit refund (-0.60) is not an item: water 3.99 + deposit 0.30 - 0.60 = 3.69
    deposit = items_of(result, 1008)
    assert deposit.get_column("product_id").to_list() == ["0001200000016", "DEPOSIT-6"]
    assert deposit.get_column("discount").sum() == Decimal("0.60")


# ---- one rule each ------------------------------------------------------------------------


def test_item_void_partial_full_and_unmatched(tmp_path: Path) -> None:
    path = write(tmp_path, document(
        # 3 x A, void 1 x A; B then void B; total 2 x 2.00 = 4.00
        retail(1, sale(1, "A", "2.00", "3"), sale(2, "A", "2.00", "1", void=True),
               sale(3, "B", "5.00"), sale(4, "B", "5.00", void=True), grand="4.00"),
        # a void of an item never sold: rejected, with the transaction's position
        retail(2, sale(1, "A", "2.00"), sale(2, "Z", "1.50", void=True), grand="0.50"),
    ))
    result = run(path)
    items = items_of(result, 1)
    assert items.get_column("product_id").to_list() == ["A"]
    assert items.get_column("quantity").to_list() == [Decimal("2")]
    assert totals_by_id(result) == {txn_id(1): Decimal("4.00")}
    rejects = result.rejects
    bad = rejects.filter(pl.col("reject_code") == "R008_NEGATIVE_PRICE").row(0, named=True)
    # rejects keep the export's own columns: for POSLog the transaction's position and XML line
    assert bad["transaction"] == "2" and "-1.50" in bad["reject_reason"]
    assert bad["source_line"] == 6  # the file's sixth LineItem (several on one XML line)
    # the 6 line items: A and A sold, B sold then voided, three voids
    assert result.summary["line_items_by_kind"] == {"sale": 2, "sale_voided": 1, "item_void": 3}


def test_transaction_level_discount_is_spread_over_the_lines(tmp_path: Path) -> None:
    # lines 10.00 + 30.00 = 40.00, own item discount 1.00 on the first; a 5.00 reward; tax 2.72
    # paid before tax: 36.72 - 2.72 = 34.00, so 6.00 of discount: 1.00 own, 5.00 spread 9:30
    reward = ("<LineItem><SequenceNumber>3</SequenceNumber><LoyaltyReward><ExtendedRewardAmount>-5.00"
              "</ExtendedRewardAmount></LoyaltyReward></LineItem>")
    path = write(tmp_path, document(retail(
        1, sale(1, "A", "10.00", discount="1.00"), sale(2, "B", "15.00", "2"), reward,
        grand="36.72", tax="2.72")))
    result = run(path)
    items = items_of(result, 1)
    share_a = (Decimal("5.00") * 9 / 39).quantize(Decimal("0.01"))  # 1.15
    assert items.get_column("discount").to_list() == [Decimal("1.00") + share_a, Decimal("5.00") - share_a]
    assert items.get_column("line_total").sum() == Decimal("34.00")
    assert totals_by_id(result) == {txn_id(1): Decimal("34.00")}
    assert items.get_column("unit_price").to_list() == [Decimal("10.00"), Decimal("15.00")]  # kept


def test_price_modifier_is_the_items_own_discount(tmp_path: Path) -> None:
    # B has a 2.00 markdown as a RetailPriceModifier: 10.00 + 8.00 lines, paid 16.00
    modifier = "<RetailPriceModifier><Amount Action=\"Subtract\">2.00</Amount></RetailPriceModifier>"
    with_modifier = sale(2, "B", "8.00").replace("<Quantity>", modifier + "<Quantity>")
    path = write(tmp_path, document(retail(1, sale(1, "A", "10.00"), with_modifier, grand="16.00")))
    items = items_of(run(path), 1)
    assert items.get_column("discount").to_list() == [Decimal("0"), Decimal("2.00")]


def test_rounding_remainder_keeps_the_total_exact(tmp_path: Path) -> None:
    # three lines of 1.00, 1.00 off in all: shares of 0.33 leave 0.01 for one line
    path = write(tmp_path, document(retail(
        1, sale(1, "A", "1.00"), sale(2, "B", "1.00"), sale(3, "C", "1.00"), grand="2.00")))
    result = run(path)
    items = items_of(result, 1)
    discounts = sorted(items.get_column("discount").to_list())
    assert discounts == [Decimal("0.33"), Decimal("0.33"), Decimal("0.34")]
    assert items.get_column("line_total").sum() == Decimal("2.00")


def test_totals_that_disagree_reject_the_transaction_with_figures(tmp_path: Path) -> None:
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "3.00"), grand="3.00"),
        # took 12.00 before tax for 10.00 of items: the file disagrees with itself
        retail(2, sale(1, "A", "4.00"), sale(2, "B", "6.00"), grand="12.60", tax="0.60"),
        retail(3, sale(1, "A", "3.00"), grand="3.00"),
    ))
    result = run(path)
    assert set(totals_by_id(result)) == {txn_id(1), txn_id(3)}  # the rest of the file is read
    rejects = result.rejects
    assert rejects.height == 2
    first = rejects.filter(pl.col("reject_code") == "R018_TRANSACTION_TOTAL_MISMATCH").row(0, named=True)
    assert "12.00" in first["reject_reason"] and "10.00" in first["reject_reason"]
    assert first["transaction"] == "2"
    assert first["poslog_totals"] == "TransactionGrandAmount=12.60 TransactionTaxAmount=0.60"


def test_sale_with_a_negative_total_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, document(retail(1, sale(1, "A", "3.00"), grand="-1.00")))
    result = run(path)
    assert result.summary["rejects_by_code"] == {"R018_TRANSACTION_TOTAL_MISMATCH": 1}


def test_skipped_transactions_are_counted_never_lines(tmp_path: Path) -> None:
    path = write(tmp_path, document(
        transaction(1, "<ControlTransaction><NoSale/></ControlTransaction>"),
        transaction(2, "<TenderControlTransaction><TillLoan><Amount>50</Amount></TillLoan>"
                       "</TenderControlTransaction>"),
        retail(3, sale(1, "A", "2.00"), grand="2.00", attrs=' TransactionStatus="Voided"'),
        retail(4, sale(1, "A", "2.00"), grand="2.00", attrs=' TransactionStatus="Suspended"'),
        transaction(5, "<RetailTransaction CancelFlag=\"true\"></RetailTransaction>").replace(
            "<Transaction>", '<Transaction CancelFlag="true">'),
        retail(6, sale(1, "A", "2.00"), grand="2.00", attrs=' TrainingModeFlag="true"'),
        retail(7, sale(1, "A", "2.00"), grand="2.00"),
        retail(8, sale(1, "B", "2.00"), sale(2, "B", "2.00", void=True), grand="0.00"),  # nothing left
    ))
    stats = ReadStats()
    lines = read_poslog(path, feed(), source_name="log.xml", stats=stats)
    assert lines.get_column("transaction_id").unique().to_list() == [txn_id(7)]
    assert dict(stats.skipped_by_kind) == {
        "control": 1, "tender_control": 1, "voided": 2, "suspended": 1, "training": 1, "no_items": 1}
    assert stats.line_items_by_kind == Counter(
        {"in_skipped_transaction": 3, "sale": 1, "sale_voided": 1, "item_void": 1})
    result = run(path)
    assert result.summary["rows_rejected"] == 0 and result.summary["transactions_in"] == 1


def test_post_void_removes_the_transaction_it_voids(tmp_path: Path) -> None:
    def post_void(seq: int, voided: int) -> str:
        link = (f"<TransactionLink ReasonCode=\"Voided\"><RetailStoreID>0042</RetailStoreID><WorkstationID>03"
                f"</WorkstationID><SequenceNumber>{voided}</SequenceNumber><BusinessDayDate>2026-11-20"
                "</BusinessDayDate></TransactionLink>")
        return retail(seq, link, grand="0.00", attrs=' TransactionStatus="PostVoided"')

    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00"), tender(2, "2.00"), grand="2.00"),
        retail(2, sale(1, "B", "3.00"), grand="3.00"),
        post_void(3, 1),  # voids transaction 1 of this file
        post_void(4, 999),  # voids one this file does not hold (sent before, perhaps)
    ))
    result = run(path)
    assert totals_by_id(result) == {txn_id(2): Decimal("3.00")}
    assert result.summary["skipped_by_kind"] == {
        "post_void": 1, "post_voided": 1, "post_void_original_elsewhere": 1}
    # the voided sale's line items were read and stay accounted for, once
    assert result.summary["line_items_by_kind"] == {"sale": 2, "tender": 1}


def test_negative_items_are_discount_not_items(tmp_path: Path) -> None:
    # water 3.99 + deposit 0.30; bottles back: typed NegativeItem with a positive amount, and a
    # plain negative amount; paid 3.99 + 0.30 - 0.30 - 0.25 = 3.74 -> 0.55 of discount on 2 lines
    typed = sale(3, "BOTTLES", "0.30").replace('ItemType="Stock"', 'ItemType="acs:NegativeItem"')
    plain = sale(4, "CANS", "0.05", "5", "-0.25")
    path = write(tmp_path, document(retail(1, sale(1, "W", "3.99"), sale(2, "D", "0.30"), typed, plain,
                                           grand="3.74")))
    result = run(path)
    items = items_of(result, 1)
    assert items.get_column("product_id").to_list() == ["W", "D"]
    assert items.get_column("discount").sum() == Decimal("0.55")
    assert totals_by_id(result) == {txn_id(1): Decimal("3.74")}
    assert result.summary["line_items_by_kind"] == {"sale": 2, "negative_item": 2}


def test_loyalty_member_else_guest_and_ids_kept_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, document(
        retail(1, member(1, "0000000000000040000066677"), sale(2, "A", "1.00"), grand="1.00"),
        retail(2, sale(1, "A", "1.00"), grand="1.00"),
    ))
    result = run(path)
    rows = {r["transaction_id"]: r for r in result.checkouts.iter_rows(named=True)}
    assert rows[txn_id(1)]["customer_id"] == "0000000000000040000066677"
    assert rows[txn_id(2)]["customer_id"] is None and rows[txn_id(2)]["is_guest"]


def test_ncr_acs_profile_reads_vendor_loyalty_and_reward(tmp_path: Path) -> None:
    acs_member = ("<LineItem EntryMethod=\"acs:Auto\"><SequenceNumber>3</SequenceNumber>"
                  "<acs:LoyaltyMembership><acs:LoyaltyID Type=\"Membership\">"
                  "0000000000000040000066677</acs:LoyaltyID>"
                  "</acs:LoyaltyMembership></LineItem>")
    reward = ("<LineItem><SequenceNumber>4</SequenceNumber><LoyaltyReward><acs:RewardLevel>Transaction"
              "</acs:RewardLevel><acs:ExtendedRewardAmount>-0.19</acs:ExtendedRewardAmount></LoyaltyReward>"
              "</LineItem>")
    weighed = sale(1, "00000000067591", "2.99", "0.42", "1.26")
    text = document(retail(161, weighed, tender(2, "1.07"), acs_member, reward, grand="1.07"),
                    extra_ns=f' xmlns:acs="{ACS}"')
    path = write(tmp_path, text)
    plain = run(path)  # the ARTS profile does not know the acs namespace: a guest
    assert plain.checkouts.get_column("customer_id").to_list() == [None]
    result = run(path, feed(profile="ncr_acs"))
    row = result.checkouts.row(0, named=True)
    assert row["customer_id"] == "0000000000000040000066677"
    assert row["total"] == Decimal("1.07")  # 1.26 - 0.19
    assert result.summary["line_items_by_kind"] == {"sale": 1, "tender": 1, "loyalty_membership": 1,
                                                    "loyalty_reward": 1}
    # the same vendor element under another prefix and URI, named in the feed
    moved = text.replace(ACS, "urn:vendor:tlog").replace("acs:", "v:").replace("xmlns:acs", "xmlns:v")
    custom = feed(namespaces={"v": "urn:vendor:tlog"},
                  loyalty_id_paths=["LineItem/v:LoyaltyMembership/v:LoyaltyID"])
    assert run(write(tmp_path, moved, "moved.xml"), custom).checkouts.get_column("customer_id").to_list() == [
        "0000000000000040000066677"]


def test_an_undeclared_prefix_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="prefix 'xst'"):
        feed(loyalty_id_paths=["LineItem/xst:Loyalty/xst:CardNumber"])
    feed(loyalty_id_paths=["LineItem/xst:Loyalty/xst:CardNumber"], namespaces={"xst": "urn:x"})
    feed(profile="ncr_acs", item_id_paths=["acs:ItemID"])  # the profile declares acs


def test_returns_with_and_without_their_original(tmp_path: Path) -> None:
    link = ("<TransactionLink ReasonCode=\"Return\"><RetailStoreID>0042</RetailStoreID>"
            "<WorkstationID>07</WorkstationID><SequenceNumber>555</SequenceNumber>"
            "<BusinessDayDate>2026-11-18</BusinessDayDate></TransactionLink>")
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "4.00", kind="Return", link=link), grand="-4.32", tax="-0.32"),
        retail(2, sale(1, "B", "2.00", "2", kind="Return"), grand="-4.00", attrs=' TypeCode="Return"'),
        # a 0.50 restocking fee kept back: refunded 3.50 for a 4.00 item, carried as its discount
        retail(3, sale(1, "C", "4.00", kind="Return"), grand="-3.50"),
    ))
    result = run(path)
    rows = {r["transaction_id"]: r for r in result.checkouts.iter_rows(named=True)}
    assert rows[txn_id(1)]["original_transaction_id"] == "0042-07-20261118-555"
    assert rows[txn_id(1)]["total"] == Decimal("-4.00")
    assert rows[txn_id(2)]["return_status"] == "unmatched" and rows[txn_id(2)]["total"] == Decimal("-4.00")
    assert items_of(result, 2).get_column("quantity").to_list() == [Decimal("-2")]
    fee = items_of(result, 3).row(0, named=True)
    assert (fee["discount"], fee["line_total"]) == (Decimal("0.50"), Decimal("-3.50"))
    assert rows[txn_id(3)]["total"] == Decimal("-3.50")


def test_mixed_sale_and_return_lines_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, document(retail(1, sale(1, "A", "4.00"), sale(2, "B", "1.00", kind="Return"),
                                           grand="3.00")))
    assert run(path).summary["rejects_by_code"] == {"R017_MIXED_TRANSACTION_TYPES": 2}


def test_template_override_and_missing_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    no_sequence = ("<RetailStoreID>0042</RetailStoreID><WorkstationID>03</WorkstationID>"
                   "<BusinessDayDate>2026-11-20</BusinessDayDate>")
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "1.00"), grand="1.00"),
        retail(2, sale(1, "A", "1.00"), grand="1.00", header=no_sequence),
        retail(3, sale(1, "A", "1.00"), grand="1.00"),
    ))
    result = run(path, feed(template="S{store_id}/{SequenceNumber}"))
    assert sorted(totals_by_id(result)) == ["S0042/1", "S0042/3"]
    bad = result.rejects.row(0, named=True)
    assert (bad["reject_code"], bad["reject_field"], bad["transaction"]) == (
        "R001_MISSING_FIELD", "transaction_id", "2")
    assert "log.xml: transaction 2 (line 4) has no SequenceNumber" in caplog.text


def test_no_namespace_files_need_namespace_empty(tmp_path: Path) -> None:
    path = write(tmp_path, document(retail(1, sale(1, "A", "1.00"), grand="1.00"), ns=""))
    with pytest.raises(UnreadableFileError, match="without a namespace"):
        read_poslog(path, feed(), source_name="log.xml")
    assert run(path, feed(namespace="")).summary["transactions_valid"] == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "file is empty"),
        ("transaction_id,store_id\nT1,S1\n", "not well-formed XML at line 1, column 1, before the first"),
        ('<?xml version="1.0"?><TLog xmlns="urn:other"><Transaction/></TLog>',
         "root element is <TLog> in namespace urn:other"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, text: str, reason: str) -> None:
    result = run(write(tmp_path, text))
    assert reason in result.unreadable[0].reason
    assert result.summary["rows_in"] == 0


def test_truncated_file_names_the_last_complete_transaction(tmp_path: Path) -> None:
    full = document(*(retail(n, sale(1, "A", "1.00"), grand="1.00") for n in range(1, 5)))
    cut = full[: full.index("<Transaction>", full.index("<SequenceNumber>4<") - 200) + 60]
    result = run(write(tmp_path, cut))
    reason = result.unreadable[0].reason
    assert "not well-formed XML" in reason and "after transaction 3 (which starts at line 5)" in reason
    assert result.summary["rows_in"] == 0  # a half-read log is never sent in part


def test_other_files_of_the_run_are_still_read(tmp_path: Path) -> None:
    good = write(tmp_path, document(retail(1, sale(1, "A", "1.00"), grand="1.00")), "good.xml")
    bad = write(tmp_path, "<POSLog xmlns=\"" + ARTS + "\"><Transaction>", "bad.xml")
    result = transform_files([bad, good], feed(), now=NOW)
    assert [e.file for e in result.unreadable] == ["bad.xml"]
    assert result.summary["transactions_valid"] == 1


def test_large_file_is_read_in_chunks_with_bounded_tree(tmp_path: Path) -> None:
    # more rows than one chunk: frames are concatenated, positions stay the transaction's number
    count = 9000
    path = write(tmp_path, document(*(retail(n, sale(1, "A", "1.00"), sale(2, "B", "2.50"), grand="3.50")
                                      for n in range(1, count + 1))))
    lines = read_poslog(path, feed(), source_name="big.xml")
    assert lines.height == 2 * count
    assert lines.get_column("src:transaction").to_list()[-2:] == [str(count), str(count)]
    assert lines.get_column("source_line").to_list()[-2:] == [2 * count - 1, 2 * count]  # item positions
    result = transform(lines, feed(), now=NOW)
    assert Decimal(result.summary["amount_valid"]) == Decimal("3.50") * count


def test_the_xml_tree_never_holds_more_than_the_current_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory is bounded by the output, not the file: each Transaction is freed once read."""
    from pipeline.core import poslog

    path = write(tmp_path, document(*(retail(n, sale(1, "A", "1.00"), grand="1.00") for n in range(1, 501))))
    held: list[int] = []
    original = poslog._Reader._transaction

    def spy(self: poslog._Reader, element: object, position: int) -> None:
        held.append(sum(1 for _ in element.itersiblings(preceding=True)))  # type: ignore[attr-defined]
        original(self, element, position)

    monkeypatch.setattr(poslog._Reader, "_transaction", spy)
    lines = read_poslog(path, feed(), source_name="log.xml")
    assert lines.height == 500
    # the parser reads ahead, but of what was read only the last transaction is still held
    assert max(held) == 1


def balances(result: TransformResult) -> bool:
    s = result.summary
    return (s["rows_in"] == s["rows_valid"] + s["rows_rejected"]
            and Decimal(s["amount_in"]) == Decimal(s["amount_valid"]) + Decimal(s["amount_rejected"]))


@pytest.mark.parametrize("quantity", ["1,5", "NaN", "0x2", "Infinity"])
def test_an_unreadable_quantity_rejects_its_transaction_with_its_money(tmp_path: Path, quantity: str) -> None:
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00", quantity, "3.00"), grand="3.00"),  # the only item
        retail(2, sale(1, "A", "2.00", quantity, "3.00"), sale(2, "B", "2.00"), grand=None),
        retail(3, sale(1, "A", "2.00", quantity, "3.00", kind="Return"), grand="-3.00"),
        retail(4, sale(1, "A", "2.00", quantity, "3.00", void=True), sale(2, "A", "2.00"), grand="2.00"),
    ))
    result = run(path)
    bad = result.rejects.filter(pl.col("reject_code") == "R002_BAD_NUMBER")
    assert bad.get_column("reject_field").to_list() == ["quantity"] * 4
    assert bad.get_column("transaction").to_list() == ["1", "2", "3", "4"]
    assert all(f"'{quantity}'" in r for r in bad.get_column("reject_reason"))
    assert result.summary["transactions_rejected"] == 4 and result.summary["transactions_valid"] == 0
    assert result.summary["skipped_by_kind"] == {}
    # 3.00 alone; 3.00 + 2.00; the 3.00 return; the void (no amount of its own) + 2.00
    assert result.summary["amount_rejected"] == "7.00"
    assert balances(result)


def test_a_zero_quantity_with_an_amount_is_rejected_not_voided(tmp_path: Path) -> None:
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "5.00", "0", "5.00"), grand="5.00"),
        retail(2, sale(1, "A", "2.00", "0", "0.00"), grand="0.00"),  # nothing sold: counted as voided
        retail(3, sale(1, "B", "2.00"), sale(2, "B", "2.00", void=True), grand="0.00"),  # a real void
    ))
    result = run(path)
    assert result.summary["rejects_by_code"] == {"R007_NON_POSITIVE_QUANTITY": 1}
    assert result.rejects.row(0, named=True)["transaction"] == "1"
    assert result.summary["amount_rejected"] == "5.00" and balances(result)
    assert result.summary["skipped_by_kind"] == {"no_items": 2}
    assert result.summary["line_items_by_kind"] == {"sale": 1, "sale_voided": 2, "item_void": 1}


@pytest.mark.parametrize("text", ["1,50", "NaN", "0x2"])
def test_an_unreadable_total_or_tax_is_rejected_naming_it(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00"), grand=text),
        retail(2, sale(1, "A", "2.00"), sale(2, "B", "1.00"), grand="3.16", tax=text),
        retail(3, sale(1, "A", "2.00"), grand="2.00"),
    ))
    result = run(path)
    bad = result.rejects.filter(pl.col("reject_code") == "R002_BAD_NUMBER")
    assert bad.get_column("reject_field").to_list() == ["transaction_total"] * 3  # every line names it
    assert bad.get_column("transaction").to_list() == ["1", "2", "2"]
    reasons = bad.get_column("reject_reason").to_list()
    assert f"'{text}'" in reasons[0] and f"'3.16 - {text}'" in reasons[1]
    assert result.summary["rejects_by_code"] == {"R002_BAD_NUMBER": 3}
    assert totals_by_id(result) == {txn_id(3): Decimal("2.00")}
    assert result.summary["amount_rejected"] == "5.00" and balances(result)


def test_amounts_are_plain_decimals_below_the_money_bound(tmp_path: Path) -> None:
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00"), grand="2_00"),  # Python reads 200; no xs:decimal
        retail(2, sale(1, "A", "2.00", amount="1E+99999999"), grand="2.00"),
        retail(3, sale(1, "A", "2.00"), grand="2.00", tax="1E+99999999"),
        retail(4, sale(1, "A", "2.00", amount="10000000000000.00"), grand="2.00"),
        retail(5, sale(1, "A", "2.00", discount="0,50"), grand="1.50"),
        retail(6, sale(1, "A", "2.00"), grand="2.00"),
    ))
    result = run(path)
    got = {(r["transaction"], r["reject_code"], r["reject_field"])
           for r in result.rejects.iter_rows(named=True)}
    assert got == {
        ("1", "R002_BAD_NUMBER", "transaction_total"),
        ("2", "R002_BAD_NUMBER", "line_total"),
        ("3", "R002_BAD_NUMBER", "transaction_total"),
        ("4", "R026_NUMBER_TOO_LARGE", "line_total"),
        ("5", "R002_BAD_NUMBER", "discount"),
    }
    reasons = " ".join(result.rejects.get_column("reject_reason"))
    assert "'2_00'" in reasons and "'1E+99999999'" in reasons and "'2.00 - 1E+99999999'" in reasons
    assert totals_by_id(result) == {txn_id(6): Decimal("2.00")}
    assert balances(result)


@pytest.mark.parametrize(("old", "new", "element"), [
    ("<RetailTransaction>", '<RetailTransaction xmlns="">', "<RetailTransaction> at line 4"),
    ("<LineItem>", '<LineItem xmlns="">', "<LineItem> at line 4"),
    ('<Total TotalType="TransactionGrandAmount">',
     '<Total xmlns="urn:typo" TotalType="TransactionGrandAmount">',
     "<Total> at line 4 (transaction 2) is in namespace urn:typo"),
])
def test_an_element_outside_the_namespace_makes_the_file_unreadable(
    tmp_path: Path, old: str, new: str, element: str
) -> None:
    good = retail(1, sale(1, "A", "2.00"), grand="2.00")
    text = document(good, retail(2, sale(1, "A", "2.00"), grand="2.00").replace(old, new, 1))
    result = run(write(tmp_path, text))
    assert element in result.unreadable[0].reason and "(poslog.namespace)" in result.unreadable[0].reason
    assert result.summary["rows_in"] == 0 and result.summary["skipped_by_kind"] == {}


def test_a_transaction_writing_one_of_its_values_twice_differently_is_rejected(tmp_path: Path) -> None:
    # the first value was taken: a sale sent to the first of two members, the first of two totals
    head = ("<RetailStoreID>0042</RetailStoreID><WorkstationID>03</WorkstationID>"
            "<SequenceNumber>{seq}</SequenceNumber><BusinessDayDate>2026-11-20</BusinessDayDate>")
    path = write(tmp_path, document(
        retail(1, member(1, "111"), sale(2, "A", "2.00"), member(3, "999"), grand="2.00"),
        retail(2, sale(1, "A", "2.00"), grand="2.00").replace(
            '<Total TotalType="TransactionGrandAmount">2.00</Total>',
            '<Total TotalType="TransactionGrandAmount">2.00</Total>'
            '<Total TotalType="TransactionGrandAmount">200.00</Total>'),
        retail(3, sale(1, "A", "2.00"), grand="2.00",
               header=head.format(seq=3) + "<RetailStoreID>0043</RetailStoreID>"),
        retail(4, sale(1, "A", "2.00"), grand="2.00").replace(
            "<CurrencyCode>USD</CurrencyCode>",
            "<CurrencyCode>USD</CurrencyCode><CurrencyCode>EUR</CurrencyCode>"),
        retail(5, member(1, "111"), sale(2, "A", "2.00"), member(3, "111"), grand="2.00"),  # the same twice
        retail(6, sale(1, "A", "2.00"), grand="2.00"),
    ))
    result = run(path)
    got = {(r["transaction"], r["reject_code"], r["reject_field"])
           for r in result.rejects.iter_rows(named=True)}
    assert got == {
        ("1", "R015_MIXED_CUSTOMERS", "customer_id"),
        ("2", "R027_MIXED_TRANSACTION_VALUES", "transaction_total"),
        ("3", "R014_MIXED_STORES", "store_id"),
        ("4", "R016_MIXED_CURRENCIES", "currency"),
    }
    reasons = result.rejects.get_column("reject_reason").to_list()
    assert all("111" not in r and "999" not in r for r in reasons)  # a customer id is never shown
    assert f"transaction {txn_id(1)} has different values of customer_id" in reasons
    assert set(totals_by_id(result)) == {txn_id(5), txn_id(6)}
    assert balances(result)


@pytest.mark.parametrize("as_return", [True, False])
def test_a_sale_of_negative_lines_only_gets_the_answer_its_csv_lines_get(
    tmp_path: Path, as_return: bool
) -> None:
    # it used to be skipped as no_items with its money; now its lines are sent as written
    bottles = sale(1, "BOTTLES", "0.30").replace('ItemType="Stock"', 'ItemType="acs:NegativeItem"')
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00", "-1", "-2.00"), grand="-2.00"),  # quantity and amount negative
        retail(2, sale(1, "B", "3.00", "1", "-3.00"), grand="-3.00"),  # the amount only
        retail(3, bottles, grand="-0.30"),  # bottles back, nothing bought
        retail(4, sale(1, "C", "1.00"), grand="1.00"),
    ))
    validation = {"treat_negative_quantity_as_return": as_return}
    result = run(path, feed(validation=validation))
    # the same lines as a CSV export
    csv_rows = [
        helpers.row(transaction_id=txn_id(seq), store_id="0042", register_id="03", customer_id="",
                    timestamp=f"2026-11-20T10:{seq:02d}:00", product_id=item, quantity=qty, unit_price=price,
                    line_total=amount, discount="", transaction_total=total, currency="USD")
        for seq, item, qty, price, amount, total in (
            (1, "A", "-1", "2.00", "-2.00", "-2.00"),
            (2, "B", "1", "3.00", "-3.00", "-3.00"),
            (3, "BOTTLES", "1", "0.30", "0.30", "-0.30"),
            (4, "C", "1", "1.00", "1.00", "1.00"),
        )
    ]
    csv_feed = helpers.feed(timezone="America/New_York", validation=validation)
    expected = helpers.run(csv_rows, csv_feed)

    def outcome(r: TransformResult) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, Decimal]]]:
        # POSLog rejects name the transaction's position (here its SequenceNumber), CSV ones its id
        rejects = {(x.get("transaction_id") or txn_id(int(x["transaction"])), x["reject_code"],
                    x["reject_field"]) for x in r.rejects.iter_rows(named=True)}
        kept = {(x["transaction_id"], x["transaction_type"], x["total"])
                for x in r.checkouts.iter_rows(named=True)}
        return rejects, kept

    assert outcome(result) == outcome(expected)
    codes = {tid: code for tid, code, _ in outcome(result)[0]}
    assert codes[txn_id(2)] == "R010_LINE_TOTAL_MISMATCH"
    assert codes[txn_id(3)] == "R018_TRANSACTION_TOTAL_MISMATCH"
    # a sale of negative quantities only is a return when the feed says so, else R007, as in CSV
    assert codes.get(txn_id(1)) == (None if as_return else "R007_NON_POSITIVE_QUANTITY")
    second = result.rejects.filter(pl.col("transaction") == "2").row(0, named=True)
    assert second["source_line"] == 4  # the XML line of its LineItem
    assert result.summary["skipped_by_kind"] == {} and balances(result)
    assert result.summary["line_items_by_kind"] == {"sale": 4}


def test_a_transaction_outside_the_namespace_makes_the_file_unreadable(tmp_path: Path) -> None:
    good = [retail(n, sale(1, "A", "2.00"), grand="2.00") for n in (1, 2, 3)]
    for place, where in ((0, "before the first transaction"), (1, "after transaction 1"),
                         (2, "after transaction 2")):
        for new, found in (('<Transaction xmlns="">', "without a namespace"),
                           (f'<Transaction xmlns="{ACS}">', f"in namespace {ACS}")):
            text = document(*good[:place], good[place].replace("<Transaction>", new), *good[place + 1:])
            result = run(write(tmp_path, text))
            assert result.unreadable, (place, new)
            reason = result.unreadable[0].reason
            assert f"<Transaction> at line {place + 3} ({where}) is {found}" in reason
            assert "(poslog.namespace)" in reason and result.summary["rows_in"] == 0


EMPTY_NUMBERS = [
    ("<Quantity>1</Quantity>", "<Quantity/>", "quantity", "<Quantity>"),
    ("<Quantity>1</Quantity>", "<Quantity> \t</Quantity>", "quantity", "<Quantity>"),
    ("<ActualSalesUnitPrice>2.00</ActualSalesUnitPrice>",
     "<ActualSalesUnitPrice/><RegularSalesUnitPrice>2.00</RegularSalesUnitPrice>", "unit_price",
     "<ActualSalesUnitPrice>"),
    ("<ActualSalesUnitPrice>2.00</ActualSalesUnitPrice>", "<RegularSalesUnitPrice> </RegularSalesUnitPrice>",
     "unit_price", "<RegularSalesUnitPrice>"),
    ("<ExtendedAmount>2.00</ExtendedAmount>", "<ExtendedAmount></ExtendedAmount>", "line_total",
     "<ExtendedAmount>"),
    ("<Quantity>", "<DiscountAmount/><Quantity>", "discount", "<DiscountAmount>"),
    ("<Quantity>", "<RetailPriceModifier><Amount Action=\"Subtract\"/></RetailPriceModifier><Quantity>",
     "discount", "<Amount>"),
    ('<Total TotalType="TransactionGrandAmount">2.00</Total>',
     '<Total TotalType="TransactionGrandAmount"/>', "transaction_total",
     '<Total TotalType="TransactionGrandAmount">'),
    ('<Total TotalType="TransactionTaxAmount">0.00</Total>',
     '<Total TotalType="TransactionTaxAmount"> </Total>', "transaction_total",
     '<Total TotalType="TransactionTaxAmount">'),
]


@pytest.mark.parametrize(("old", "new", "field", "element"), EMPTY_NUMBERS)
def test_an_empty_number_element_is_unreadable_never_a_default(
    tmp_path: Path, old: str, new: str, field: str, element: str
) -> None:
    no_quantity = sale(1, "A", "2.00").replace("<Quantity>1</Quantity>", "")  # no element: 1
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00"), grand="2.00").replace(old, new, 1),
        retail(2, sale(1, "A", "2.00"), sale(2, "B", "2.00"), grand="2.00").replace(old, new, 1),  # 2.00 off
        retail(3, no_quantity, grand="2.00"),
    ))
    result = run(path)
    bad = result.rejects.filter(pl.col("reject_code") == "R002_BAD_NUMBER")
    assert bad.height >= 2 and set(bad.get_column("reject_field")) == {field}
    assert set(bad.get_column("transaction")) == {"1", "2"}
    reason = bad.row(0, named=True)["reject_reason"]
    assert reason == f"{field} '' (an empty {element}) is not a number"
    assert result.summary["transactions_rejected"] == 2 and result.summary["skipped_by_kind"] == {}
    assert totals_by_id(result) == {txn_id(3): Decimal("2.00")}
    assert balances(result)


def test_an_items_own_discount_more_than_its_line_rejects_its_transaction_as_in_a_csv(
    tmp_path: Path,
) -> None:
    # A's 8.00 off a 5.00 line cannot be: it was capped at 5.00 and the other 3.00 spread over B,
    # a discount the file never gave B; a CSV line like it is rejected R028, and so is this one
    markdown = ("<RetailPriceModifier><Amount Action=\"Subtract\">8.00</Amount></RetailPriceModifier>"
                "<Quantity>")
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "5.00", discount="8.00"), sale(2, "B", "10.00"), grand="7.00"),
        retail(2, sale(1, "A", "5.00").replace("<Quantity>", markdown), sale(2, "B", "10.00"), grand="7.00"),
        retail(3, sale(1, "A", "5.00", discount="5.00"), sale(2, "B", "10.00"), grand="10.00"),  # all of it
    ))
    result = run(path)
    bad = result.rejects.filter(pl.col("reject_code") == "R028_DISCOUNT_EXCEEDS_LINE")
    assert bad.get_column("transaction").to_list() == ["1", "2"]
    assert set(bad.get_column("reject_field")) == {"discount"}
    assert "8.00" in bad.row(0, named=True)["reject_reason"]
    assert totals_by_id(result) == {txn_id(3): Decimal("10.00")}
    assert items_of(result, 3).get_column("discount").to_list() == [Decimal("5.00"), Decimal("0")]
    assert balances(result)


def test_a_percentage_only_price_modifier_rejects_its_transaction(tmp_path: Path) -> None:
    # 10 % off A: the till took 18.00, but the file never says how much 10 % was (of which price,
    # rounded how); it used to add no discount, so A went out at 20.00 (or B took part of A's)
    percent = ("<RetailPriceModifier><SequenceNumber>1</SequenceNumber><Percent Action=\"Subtract\">10"
               "</Percent></RetailPriceModifier><Quantity>")
    both = percent.replace("<Percent", "<Amount Action=\"Subtract\">2.00</Amount><Percent")
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "20.00").replace("<Quantity>", percent), tender(2, "18.00"), grand=None),
        retail(2, sale(1, "A", "20.00").replace("<Quantity>", percent), sale(2, "B", "20.00"), grand="38.00"),
        retail(3, sale(1, "A", "20.00").replace("<Quantity>", both), grand="18.00"),  # the Amount is read
        retail(4, sale(1, "A", "20.00", discount="2.00").replace("<Quantity>", percent), grand="18.00"),
    ))
    result = run(path)
    bad = result.rejects.filter(pl.col("reject_code") == "R002_BAD_NUMBER")
    assert bad.get_column("transaction").to_list() == ["1", "2"]
    assert set(bad.get_column("reject_field")) == {"discount"}
    assert bad.row(0, named=True)["reject_reason"] == (
        "the <RetailPriceModifier> at line 3 has a <Percent> (10) and no <Amount>: the amount it took "
        "off is not written, so the discount cannot be read exactly")
    assert result.summary["rejects_by_code"] == {"R002_BAD_NUMBER": 2, "R099_SIBLING_REJECTED": 1}
    assert totals_by_id(result) == {txn_id(3): Decimal("18.00"), txn_id(4): Decimal("18.00")}
    assert items_of(result, 3).get_column("discount").to_list() == [Decimal("2.00")]
    assert balances(result)


def test_a_transaction_that_took_money_without_items_is_rejected_with_it(tmp_path: Path) -> None:
    # it used to be skipped as no_items: its money left the balance with no reason shown
    path = write(tmp_path, document(
        retail(1, sale(1, "A", "2.00"), grand="2.00"),
        retail(2, tender(1, "5.00"), grand="5.00"),  # a tender, no item
        retail(3, sale(1, "B", "2.00"), sale(2, "B", "2.00", void=True), grand="0.00"),  # nothing left
        retail(4, member(1, "111"), grand=None),  # nothing sold, no total
        retail(5, sale(1, "B", "3.00"), sale(2, "B", "3.00", void=True), grand="3.00"),  # voided, 3.00 taken
        retail(6, tender(1, "-4.00"), grand="-4.00", attrs=' TypeCode="Return"'),  # money given back
    ))
    result = run(path)
    assert result.summary["skipped_by_kind"] == {"no_items": 2}
    assert result.summary["rejects_by_code"] == {"R032_NO_ITEMS": 3}
    rows = {r["transaction"]: r for r in result.rejects.iter_rows(named=True)}
    assert set(rows) == {"2", "5", "6"}
    two = rows["2"]
    assert two["reject_reason"] == (
        f"transaction {txn_id(2)} has a TransactionGrandAmount of 5.00 but no Sale or Return line to "
        "carry it (none written, or all voided)")
    assert two["poslog_totals"] == "TransactionGrandAmount=5.00 TransactionTaxAmount=0.00"
    assert two["source_line"] == 4 and two["reject_field"] == "record"
    # its one row carries the total, so that its money is counted
    lines = {r["src:transaction"]: r for r in result.lines.iter_rows(named=True)}
    assert (lines["2"]["transaction_total"], lines["2"]["line_total"]) == ("5.00", "5.00")
    assert (lines["6"]["transaction_type"], lines["6"]["line_total"]) == ("return", "4.00")
    # the money shows: 2.00 sent; 5.00 + 3.00 - 4.00 rejected
    assert (result.summary["amount_in"], result.summary["amount_rejected"]) == ("6.00", "4.00")
    assert totals_by_id(result) == {txn_id(1): Decimal("2.00")} and balances(result)


def test_a_line_item_in_a_vendor_namespace_makes_the_file_unreadable(tmp_path: Path) -> None:
    # the reader reads ARTS LineItems only: B's 3.00 went unread and uncounted, exit 0
    vendor = sale(1, "B", "3.00").replace("LineItem>", "acs:LineItem>")
    text = document(retail(1, sale(1, "A", "2.00"), grand="2.00"),
                    retail(2, sale(1, "A", "2.00"), vendor, grand=None), extra_ns=f' xmlns:acs="{ACS}"')
    result = run(write(tmp_path, text), feed(profile="ncr_acs"))
    assert result.unreadable, result.summary
    reason = result.unreadable[0].reason
    assert f"<LineItem> at line 4 (transaction 2) is in namespace {ACS}" in reason
    assert "(poslog.namespace)" in reason and result.summary["rows_in"] == 0


# ---- gzipped POSLog -----------------------------------------------------------------------------


def test_a_gzipped_poslog_reads_as_the_plain_file_does_streamed_and_bounded(tmp_path: Path) -> None:
    """``*.xml.gz`` is decompressed as the parser reads it: the same transactions to the cent as
    the plain file, the same source lines; cut short it is unreadable (nothing read from it), and
    one decompressing to more than ``format.max_decompressed_bytes`` is unreadable as a bomb."""
    import gzip

    data = SAMPLE.read_bytes()
    plain = run(SAMPLE)
    (tmp_path / "POSLog_0042_20261120.xml.gz").write_bytes(gzip.compress(data))
    packed = run(tmp_path / "POSLog_0042_20261120.xml.gz")
    assert not packed.unreadable and packed.summary["rows_valid"] == plain.summary["rows_valid"] > 0
    assert totals_by_id(packed) == totals_by_id(plain)
    assert packed.lines.get_column("source_line").to_list() == plain.lines.get_column("source_line").to_list()

    cut = write(tmp_path, "", "cut.xml.gz")
    cut.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    result = run(cut)
    (unreadable,) = result.unreadable
    assert unreadable.file == "cut.xml.gz" and "cut short" in unreadable.reason
    assert result.checkouts.height == 0

    small = feed()
    bounded = small.format.model_copy(update={"max_decompressed_bytes": 4096})
    small = small.model_copy(update={"format": bounded})
    (bomb,) = run(tmp_path / "POSLog_0042_20261120.xml.gz", small).unreadable
    assert "decompresses to more than 4096 bytes" in bomb.reason
