"""The return decision (pure): whole refund, refund_item per line, over-refund; and the read-back
match that settles a refund that may have landed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from pipeline.logs import mask_customer_id
from pipeline.sinks.antavo_readback import (
    PlatformEvent,
    events_in,
    match_refund,
    refunded_lines,
    sale_facts,
    transactions_in,
)
from pipeline.sinks.antavo_returns import (
    OVER_REFUND,
    RETURN_MISMATCH,
    RETURN_OTHER_CUSTOMER,
    Line,
    SaleFacts,
    SaleReturn,
    decide_return,
    decide_sale_returns,
    lines_of,
)

D = Decimal


def _return(tid: str, *lines: tuple[str, str, str], original: str | None = "S-1") -> dict[str, Any]:
    return {
        "transaction_id": tid,
        "transaction_type": "return",
        "return_status": "matched" if original else "unmatched",
        "original_transaction_id": original,
        "items": [{"product_id": p, "quantity": -D(q), "line_total": -D(m)} for p, q, m in lines],
    }


SALE = (Line("milk", D(2), D("2.40")), Line("bread", D(1), D("3.00")))  # 5.40


def test_every_unit_back_is_one_whole_refund() -> None:
    decision = decide_return(_return("R-1", ("milk", "2", "2.40"), ("bread", "1", "3.00")), original=SALE,
                             original_total=D("5.40"))
    assert decision.action == "refund"


def test_a_partial_return_is_one_refund_item_per_line() -> None:
    decision = decide_return(_return("R-1", ("milk", "1", "1.20")), original=SALE, original_total=D("5.40"))
    assert decision.action == "refund_item"
    assert decision.lines == (Line("milk", D(1), D("1.20")),)


def test_every_unit_back_for_less_money_is_refunded_line_by_line() -> None:
    # the platform's refund would restore 5.40, but only 5.00 came back
    decision = decide_return(_return("R-1", ("milk", "2", "2.00"), ("bread", "1", "3.00")), original=SALE,
                             original_total=D("5.40"))
    assert decision.action == "refund_item"


@pytest.mark.parametrize("lines", [
    (("milk", "3", "3.60"),),  # more units than bought
    (("milk", "1", "2.50"),),  # more money for the product than paid
    (("butter", "1", "1.00"),),  # never bought
])
def test_more_than_was_bought_is_never_sent(lines: tuple[tuple[str, str, str], ...]) -> None:
    decision = decide_return(_return("R-1", *lines), original=SALE, original_total=D("5.40"))
    assert not decision.sendable and decision.code == OVER_REFUND
    assert "S-1" in str(decision.message)


def test_an_over_refund_names_its_money_in_the_currencys_units() -> None:
    """The ledger keeps money with 4 places; the message finance reads shows 2.50, not 2.5000."""
    sale = (Line("milk", D(2), D("2.4000")), Line("bread", D(1), D("3.0000")))
    one = {**_return("R-1", ("milk", "1", "2.5000")), "currency": "GBP"}
    decision = decide_return(one, original=sale, original_total=D("5.4000"))
    assert decision.message == ("never sent: 2.50 for 1 unit of product milk would have been "
                                "refunded, 1.20 was its price in S-1")
    whole = {**_return("R-2", ("milk", "2", "2.4000"), ("bread", "1", "3.0000")), "currency": "GBP"}
    decision = decide_return(whole, original=sale, original_total=D("5.0000"))
    assert decision.message == "never sent: 5.40 would have been refunded in all, 5.00 was paid in S-1"


@pytest.mark.parametrize(("bought", "back", "refunded", "message"), [
    ("1", "2", "2.40", "2 units of product milk would have come back, 1 was bought in S-1"),
    ("0.5", "1", "1.20", "1 unit of product milk would have come back, 0.5 were bought in S-1"),
    ("2", "1", "2.50", "2.50 for 1 unit of product milk would have been refunded, 1.20 was its price "
                       "in S-1"),
    ("2", "2", "5.00", "5.00 for 2 units of product milk would have been refunded, 2.40 was their price "
                       "in S-1"),
])
def test_an_over_refund_counts_its_units_in_words_that_agree(bought: str, back: str, refunded: str,
                                                            message: str) -> None:
    """"1 unit", "2 units", "1 was bought": never "unit(s)"."""
    sale = (Line("milk", D(bought), D("2.40") if bought == "2" else D("1.20")),)
    one = {**_return("R-1", ("milk", back, refunded)), "currency": "GBP"}
    decision = decide_return(one, original=sale, original_total=None)
    assert decision.code == OVER_REFUND
    assert decision.message == f"never sent: {message}"


def test_earlier_returns_count() -> None:
    earlier = [(Line("milk", D(1), D("1.20")),)]
    second = decide_return(_return("R-2", ("milk", "1", "1.20")), original=SALE, earlier=earlier)
    assert second.action == "refund_item"
    third = decide_return(_return("R-3", ("milk", "1", "1.20")), original=SALE,
                          earlier=[*earlier, (Line("milk", D(1), D("1.20")),)])
    assert third.code == OVER_REFUND
    # all units back, but after an earlier return: line by line, and then over
    whole_after = decide_return(_return("R-4", ("bread", "1", "3.00"), ("milk", "1", "1.20")),
                                original=SALE, earlier=earlier)
    assert whole_after.action == "refund_item"


def test_unmatched_and_unknown_sale() -> None:
    assert decide_return(_return("R-1", ("milk", "1", "1.20"), original=None), original=None).code == \
        "unmatched_return"
    # the ledger does not know the sale: nothing to check against, line by line
    assert decide_return(_return("R-1", ("milk", "9", "99")), original=None).action == "refund_item"


def test_explicit_modes() -> None:
    row = _return("R-1", ("milk", "1", "1.20"))
    assert decide_return(row, original=SALE, mode="refund").action == "refund"
    whole = _return("R-1", ("milk", "2", "2.40"), ("bread", "1", "3.00"))
    assert decide_return(whole, original=SALE, mode="refund_item").action == "refund_item"
    over = _return("R-1", ("milk", "5", "6.00"))
    assert decide_return(over, original=SALE, mode="refund").code == OVER_REFUND


def test_a_sales_returns_are_decided_in_ledger_order_whatever_the_runs() -> None:
    r1 = SaleReturn("R-1", _return("R-1", ("milk", "2", "2.40")), landed=False, pending=True)
    r2 = SaleReturn("R-2", _return("R-2", ("milk", "1", "1.20")), landed=False, pending=True)
    r3 = SaleReturn("R-3", _return("R-3", ("bread", "1", "3.00")), landed=False, pending=True)
    first = decide_sale_returns([r1, r2, r3], original=SALE, original_total=D("5.40"))
    assert [first[t].action for t in ("R-1", "R-2", "R-3")] == ["refund_item", None, "refund_item"]
    assert first["R-2"].code == OVER_REFUND
    # the next run: R-1 landed, R-3 in doubt (sent, no answer); R-3 is decided the same way
    again = decide_sale_returns(
        [SaleReturn("R-1", r1.checkout, landed=True, pending=False),
         SaleReturn("R-3", r3.checkout, landed=True, pending=True)],
        original=SALE, original_total=D("5.40"))
    assert again["R-3"].action == "refund_item"
    # an over-refund is not a claim: a later return still fits
    over = SaleReturn("R-0", _return("R-0", ("milk", "9", "10.80")), landed=False, pending=True)
    decided = decide_sale_returns([over, r2], original=SALE)
    assert decided["R-0"].code == OVER_REFUND and decided["R-2"].action == "refund_item"


def test_lines_of_are_magnitudes() -> None:
    assert lines_of(_return("R-1", ("milk", "1.5", "1.80"))) == (Line("milk", D("1.5"), D("1.80")),)


def test_match_finds_only_free_events_and_leaves_the_rest_to_send() -> None:
    decision = decide_return(_return("R-1", ("milk", "1", "1.20"), ("bread", "1", "3.00")), original=SALE)
    events = [
        PlatformEvent("e1", "refund_item", "milk", D(1), D("1.20")),  # another return's
        PlatformEvent("e2", "refund_item", "milk", D(1), D("1.20")),
    ]
    found = match_refund(decision, events, owned_by_others={"e1"})
    assert found.event_ids == ("e2",) and found.remaining == (Line("bread", D(1), D("3.00")),)
    assert found.lines == (Line("milk", D(1), D("1.20")),)  # the return's own line, found landed
    assert not found.landed
    found = match_refund(decision, events, owned_by_others={"e1", "e2"})
    assert found.event_ids == () and len(found.remaining) == 2
    both = [*events, PlatformEvent("e3", "refund_item", "bread", D(1), D("3.00"))]
    assert match_refund(decision, both, owned_by_others={"e1"}).landed


def test_a_whole_refund_is_found_by_its_refund_event() -> None:
    whole = decide_return(_return("R-1", ("milk", "2", "2.40"), ("bread", "1", "3.00")), original=SALE,
                          original_total=D("5.40"))
    assert not match_refund(whole, [], owned_by_others=()).landed
    found = match_refund(whole, [PlatformEvent("e9", "refund")], owned_by_others=())
    assert found.landed and found.event_ids == ("e9",)


def test_read_answers_are_read_from_their_envelopes() -> None:
    listing = {"transactions": [{"id": "S-1", "status": "accepted"}, {"id": "S-2"}]}
    assert [t["id"] for t in transactions_in(listing, "S-1")] == ["S-1"]
    assert transactions_in({"data": [{"id": "S-1"}]}, "S-1")
    events = {"events": [
        {"id": "c", "action": "checkout"},
        {"id": "r", "action": "refund_item",
         "data": {"product_id": "milk", "quantity": 1, "subtotal": "1.2"}},
    ]}
    assert events_in(events) == [PlatformEvent("r", "refund_item", "milk", D(1), D("1.2"))]


def test_a_free_refund_event_that_cannot_be_compared_makes_the_match_unsure() -> None:
    decision = decide_return(_return("R-1", ("milk", "1", "1.20")), original=SALE)
    blank = PlatformEvent("e5", "refund_item")  # the platform shows no product, units or money
    found = match_refund(decision, [blank], owned_by_others=())
    assert not found.landed and found.unsure
    assert not match_refund(decision, [blank], owned_by_others={"e5"}).unsure  # another return's
    whole = decide_return(_return("R-1", ("milk", "2", "2.40"), ("bread", "1", "3.00")), original=SALE,
                          original_total=D("5.40"))
    assert match_refund(whole, [PlatformEvent("e6", "partial_refund")], owned_by_others=()).unsure
    assert not match_refund(whole, [], owned_by_others=()).unsure


def test_a_product_may_come_back_at_its_price_when_the_sales_discount_was_spread_over_its_lines() -> None:
    # a 2.00 basket reward spread over the lines: coffee 7.99 carries 1.20 of it, juice 4.99 0.80
    sale = (Line("coffee", D(1), D("6.79"), D("1.20")), Line("juice", D(1), D("4.19"), D("0.80")))
    at_price = decide_return(_return("R-1", ("coffee", "1", "7.99")), original=sale,
                             original_total=D("10.98"))
    assert at_price.action == "refund_item" and at_price.lines[0].amount == D("7.99")
    beyond_price = decide_return(_return("R-2", ("coffee", "1", "8.00")), original=sale,
                                 original_total=D("10.98"))
    assert beyond_price.code == OVER_REFUND and "7.99 was its price" in str(beyond_price.message)
    # the sale's total still bounds the money: both lines at their prices are more than was paid
    both = decide_return(_return("R-3", ("coffee", "1", "7.99"), ("juice", "1", "4.99")), original=sale,
                         original_total=D("10.98"))
    assert both.code == OVER_REFUND and "in all" in str(both.message)


def test_a_return_in_another_currency_or_by_another_member_is_never_sent() -> None:
    """Money in two currencies cannot be compared, and another member's return would refund a
    purchase that is not theirs: both are held for review, in every mode."""
    whole = _return("R-1", ("milk", "2", "2.40"), ("bread", "1", "3.00"))
    sale = {"original": SALE, "original_total": D("5.40"), "original_currency": "GBP",
            "original_customer": "C-1"}
    for mode in ("auto", "refund", "refund_item"):
        decision = decide_return({**whole, "currency": "EUR", "customer_id": "C-1"}, mode=mode, **sale)
        assert (decision.action, decision.code) == (None, RETURN_MISMATCH), mode
        assert "returned in EUR, the sale S-1 was in GBP" in str(decision.message)
        decision = decide_return({**whole, "currency": "GBP", "customer_id": "C-2"}, mode=mode, **sale)
        assert (decision.action, decision.code) == (None, RETURN_OTHER_CUSTOMER), mode
        assert "C-2" not in str(decision.message) and "C-1" not in str(decision.message)
    # the same member and currency: sent; the ledger masks a settled sale's customer id
    same = {**whole, "currency": "GBP", "customer_id": "C-1"}
    assert decide_return(same, **sale).action == "refund"
    assert decide_return(same, **{**sale, "original_customer": mask_customer_id("C-1")}).action == "refund"
    # a sale the ledger does not know cannot be compared: sent line by line, as before
    assert decide_return({**same, "currency": "EUR"}, original=None).action == "refund_item"


def test_a_sales_returns_carry_its_currency_and_member_through_the_ledger_order() -> None:
    returns = [SaleReturn("R-1", {**_return("R-1", ("milk", "1", "1.20")), "currency": "EUR",
                                  "customer_id": "C-1"}, landed=False, pending=True),
               SaleReturn("R-2", {**_return("R-2", ("milk", "1", "1.20")), "currency": "GBP",
                                  "customer_id": "C-1"}, landed=False, pending=True)]
    decisions = decide_sale_returns(returns, original=SALE, original_total=D("5.40"),
                                    original_currency="GBP", original_customer="C-1")
    assert decisions["R-1"].code == RETURN_MISMATCH
    assert decisions["R-2"].action == "refund_item"  # the refused one does not count as given back


def test_each_unit_refunds_at_most_its_share_of_the_products_price_up_to_a_cent() -> None:
    """Before, the product's whole price was the cap: one of two milks came back at 2.40."""
    one_milk = decide_return(_return("R-1", ("milk", "1", "2.40")), original=SALE, original_total=D("5.40"))
    assert one_milk.code == OVER_REFUND
    assert "2.40 for 1 unit of product milk" in str(one_milk.message)
    assert "1.20 was its price" in str(one_milk.message)
    # three for 10.00: a till rounds each unit's 3.333.. up or down, the last takes what is left
    sale = (Line("tea", D(3), D("10.00")),)
    returns = [SaleReturn(f"R-{n}", _return(f"R-{n}", ("tea", "1", m)), landed=False, pending=True)
               for n, m in enumerate(("3.34", "3.33", "3.33"), 1)]
    assert {d.action for d in decide_sale_returns(returns, original=sale,
                                                  original_total=D("10.00")).values()} == {"refund_item"}
    twice_up = [SaleReturn(f"R-{n}", _return(f"R-{n}", ("tea", "1", "3.34")), landed=False, pending=True)
                for n in (1, 2)]
    decided = decide_sale_returns(twice_up, original=sale, original_total=D("10.00"))
    assert decided["R-1"].action == "refund_item" and decided["R-2"].code == OVER_REFUND
    assert "6.67 was their price" in str(decided["R-2"].message)


def test_the_refunds_a_sale_holds_count_as_lines_only_when_each_can_be_counted() -> None:
    items = [PlatformEvent("e1", "refund_item", "milk", D(1), D("1.20")),
             PlatformEvent("e2", "refund_item", "bread", D(1), D("3.00"))]
    assert refunded_lines(items) == (Line("milk", D(1), D("1.20")), Line("bread", D(1), D("3.00")))
    assert refunded_lines([]) == ()
    assert refunded_lines([*items, PlatformEvent("e3", "refund")]) is None  # the whole sale, as what?
    assert refunded_lines([PlatformEvent("e4", "refund_item", "milk", None, D("1.20"))]) is None


def test_a_sale_as_the_platform_lists_it_is_what_a_return_is_checked_against() -> None:
    listed = {"id": "S-1", "total": "5.40", "currency": "GBP", "items": [
        {"product_id": "milk", "quantity": 2, "subtotal": "2.00", "discount": "0.40"},
        {"product_id": "bread", "quantity": 1, "subtotal": "3.00"}]}
    sale = sale_facts(listed)
    assert sale == SaleFacts((Line("milk", D(2), D("2.00"), D("0.40")), Line("bread", D(1), D("3.00"))),
                             D("5.40"), "GBP")
    assert sale.decide(_return("R-1", ("milk", "1", "1.20")), [], "auto").action == "refund_item"
    assert sale.decide(_return("R-2", ("milk", "1", "1.21")), [], "auto").code == OVER_REFUND
    assert sale_facts({"id": "S-1", "total": "5.40"}) is None  # no lines: nothing to check against
    assert sale_facts({**listed, "items": [{"product_id": "milk", "subtotal": "2.00"}]}) is None
