"""How one return goes to Antavo (pure): a whole ``refund``, one ``refund_item`` per returned
line, or nothing (with a target-level code).

:func:`decide_return` takes the return, the lines of the sale it names (from the ledger's stored
checkout of that sale; None when the ledger does not know the sale) and the lines of the sale's
earlier returns that landed or will be sent first. With ``return_mode = "auto"`` (the default):

* a return that gives back every unit of every line of its sale, and exactly its money, with no
  earlier return of that sale, is one ``refund`` of the sale;
* anything less is one ``refund_item`` per returned line;
* a return that, with the sale's earlier returns, would give back more units of a product, more
  money for a product's units than those units cost before their discounts (their share of the
  product's lines, up to the next cent), or more money in all than the sale took is never sent:
  ``over_refund`` (a till may refund an item's price when the sale's discount was a reward on the
  whole basket, spread over its lines: that is not an over-refund while the sale's total covers
  it);
* a return in another currency than its sale (``return_mismatch``) or made by another member
  than the sale's (``return_other_customer``) is never sent: its money cannot be compared with the
  sale's, or it would refund someone else's purchase;
* a return whose sale the ledger does not know is one ``refund_item`` per line here; the adapter
  checks it against the sale as the platform lists it (:class:`SaleFacts`) before sending, and
  holds it waiting for its sale (``original_not_found``) when the platform does not list it.

``refund`` and ``refund_item`` force one shape (``refund`` restores the whole sale whatever came
back); the over-refund check applies to every mode. The dry run takes the same decision through
:func:`decide_sale_returns`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pipeline.currencies import minor_units, money_text
from pipeline.logs import in_number, same_customer
from pipeline.records import ReturnStatus
from pipeline.sinks.returned import per_product

__all__ = [
    "OVER_REFUND",
    "REFUND_IN_DOUBT",
    "RETURN_MISMATCH",
    "RETURN_MODES",
    "RETURN_OTHER_CUSTOMER",
    "Line",
    "ReturnDecision",
    "SaleFacts",
    "SaleReturn",
    "decide_return",
    "decide_sale_returns",
    "lines_of",
]

RETURN_MODES = ("auto", "refund", "refund_item")
OVER_REFUND = "over_refund"
UNMATCHED_RETURN = "unmatched_return"
RETURN_WITHOUT_ITEMS = "return_without_items"
RETURN_MISMATCH = "return_mismatch"  # in another currency than its sale
RETURN_OTHER_CUSTOMER = "return_other_customer"  # made by another member than the sale's
# a refund that may have landed and cannot be read back (a guest's): held for review, not resent
REFUND_IN_DOUBT = "refund_in_doubt"


@dataclass(frozen=True)
class Line:
    """One returned (or bought) line: product, units and money (after its discount), and the
    discount, as positive magnitudes."""

    product_id: str
    quantity: Decimal
    amount: Decimal
    discount: Decimal = Decimal(0)


def lines_of(checkout: Mapping[str, Any]) -> tuple[Line, ...]:
    """The lines of a stored checkout (sale or return), as positive magnitudes."""
    return tuple(
        Line(str(item["product_id"]), abs(Decimal(item["quantity"])), abs(Decimal(item["line_total"])),
             abs(Decimal(item.get("discount") or 0)))
        for item in checkout.get("items") or ()
    )


@dataclass(frozen=True)
class ReturnDecision:
    """``action`` is "refund" or "refund_item" (one event per line of ``lines``); None: not sent,
    with ``code`` and ``message``."""

    action: str | None
    lines: tuple[Line, ...] = ()
    code: str | None = None
    message: str | None = None

    @property
    def sendable(self) -> bool:
        """Whether anything goes to the platform."""
        return self.action is not None


def _not_sent(code: str, message: str, lines: tuple[Line, ...] = ()) -> ReturnDecision:
    return ReturnDecision(None, lines, code, message)


def _price_of(units: Decimal, bought: Decimal, priced: Decimal, currency: str | None) -> Decimal:
    """The most ``units`` of a product may refund: their share of what its ``bought`` units cost
    before their discounts (``priced``), up to the currency's next minor unit (a till rounds each
    return's share); all of them, exactly ``priced``."""
    if units >= bought or not bought:
        return priced
    minor = Decimal(1).scaleb(-minor_units(currency))
    return min(priced, (priced * units / bought).quantize(minor, rounding=ROUND_CEILING))



def _units(count: Decimal) -> str:
    """``1 unit``, ``2 units``, ``0.5 units``."""
    return f"{count.normalize():f} {in_number(count, 'unit')}"

def _over_refund(
    lines: Sequence[Line], original: Sequence[Line], original_total: Decimal | None,
    earlier: Sequence[Sequence[Line]], original_id: str, currency: str | None = None,
) -> str | None:
    """Why these lines, with the earlier returns, give back more than the sale took (or None);
    money in ``currency``'s units."""
    bought_units, bought_money = per_product([original])
    back_units, back_money = per_product([*earlier, lines])
    priced: dict[str, Decimal] = defaultdict(Decimal)  # a product's lines before their discounts
    for line in original:
        priced[line.product_id] += line.amount + line.discount
    for product in dict.fromkeys(line.product_id for line in lines):
        if product not in bought_units:
            return f"product {product} was not bought in {original_id}"
        units = f"{_units(back_units[product])} of product {product}"
        if back_units[product] > bought_units[product]:
            were = "was" if bought_units[product] == 1 else "were"
            return (f"{units} would have come back, {bought_units[product].normalize():f} {were} bought "
                    f"in {original_id}")
        price = _price_of(back_units[product], bought_units[product], priced[product], currency)
        if back_money[product] > price:
            whose = "its" if back_units[product] == 1 else "their"
            return (f"{money_text(back_money[product], currency)} for {units} would have been refunded, "
                    f"{money_text(price, currency)} was {whose} price in {original_id}")
    paid = original_total if original_total is not None else sum(bought_money.values(), Decimal(0))
    back = sum(back_money.values(), Decimal(0))
    if back > paid:
        return (f"{money_text(back, currency)} would have been refunded in all, "
                f"{money_text(paid, currency)} was paid in {original_id}")
    return None


def decide_return(
    row: Mapping[str, Any],
    *,
    original: Sequence[Line] | None,
    original_total: Decimal | None = None,
    original_currency: str | None = None,
    original_customer: str | None = None,
    earlier: Sequence[Sequence[Line]] = (),
    mode: str = "auto",
) -> ReturnDecision:
    """The shape of one return on Antavo; see the module docstring."""
    if mode not in RETURN_MODES:
        raise ValueError(f"unknown return mode {mode!r}")
    original_id = row.get("original_transaction_id")
    if not original_id or row.get("return_status") == ReturnStatus.UNMATCHED:
        return _not_sent(UNMATCHED_RETURN, "return names no original transaction; nothing to refund")
    lines = lines_of(row)
    if not lines and mode != "refund":
        return _not_sent(RETURN_WITHOUT_ITEMS, "a return without lines cannot be refunded line by line")
    currency, customer = row.get("currency"), row.get("customer_id")
    if original is not None and currency and original_currency and currency != original_currency:
        return _not_sent(RETURN_MISMATCH, f"never sent: returned in {currency}, the sale "
                         f"{original_id} was in {original_currency}", lines)
    if original is not None and customer and original_customer and not same_customer(
            str(customer), str(original_customer)):
        return _not_sent(RETURN_OTHER_CUSTOMER, f"never sent: returned by another customer than the "
                         f"sale {original_id}'s", lines)
    if original is not None:
        why = _over_refund(lines, original, original_total, earlier, str(original_id),
                           str(currency or original_currency or ""))
        if why is not None:
            return _not_sent(OVER_REFUND, f"never sent: {why}", lines)
    if mode == "refund":
        return ReturnDecision("refund", lines)
    if mode == "refund_item" or original is None or earlier:
        return ReturnDecision("refund_item", lines)
    bought_units, bought_money = per_product([original])
    back_units, back_money = per_product([lines])
    paid = original_total if original_total is not None else sum(bought_money.values(), Decimal(0))
    whole = back_units == bought_units and sum(back_money.values(), Decimal(0)) == paid
    return ReturnDecision("refund" if whole else "refund_item", lines)


@dataclass(frozen=True)
class SaleFacts:
    """What a return is checked against of its sale (as :func:`decide_return` takes it)."""

    lines: tuple[Line, ...]
    total: Decimal | None = None
    currency: str | None = None
    customer: str | None = None

    def decide(self, row: Mapping[str, Any], earlier: Sequence[Sequence[Line]], mode: str) -> ReturnDecision:
        """:func:`decide_return` of ``row`` against this sale and ``earlier``."""
        return decide_return(row, original=self.lines, original_total=self.total,
                             original_currency=self.currency, original_customer=self.customer,
                             earlier=earlier, mode=mode)


@dataclass(frozen=True)
class SaleReturn:
    """One return of a sale as the ledger holds it, in ledger order.

    ``landed``: accepted, or sent at least once without a final answer (it may have landed);
    ``pending``: still to be decided and sent (queued, in doubt or failed-retryable).
    """

    transaction_id: str
    checkout: Mapping[str, Any]
    landed: bool
    pending: bool


def decide_sale_returns(
    returns: Sequence[SaleReturn],
    *,
    original: Sequence[Line] | None,
    original_total: Decimal | None = None,
    original_currency: str | None = None,
    original_customer: str | None = None,
    mode: str = "auto",
) -> dict[str, ReturnDecision]:
    """The decision of every pending return of one sale.

    A return's earlier returns are every other return that landed (or may have), whatever its
    order, plus the pending returns before it (in ledger order) that are themselves sent, so the
    decisions do not depend on how the returns are split across runs or batches.
    """
    landed = {r.transaction_id: lines_of(r.checkout) for r in returns if r.landed}
    ahead: list[tuple[Line, ...]] = []
    decisions: dict[str, ReturnDecision] = {}
    for sale_return in returns:
        if not sale_return.pending:
            continue
        earlier = [lines for tid, lines in landed.items() if tid != sale_return.transaction_id] + ahead
        decision = decide_return(sale_return.checkout, original=original, original_total=original_total,
                                 original_currency=original_currency,
                                 original_customer=original_customer, earlier=earlier, mode=mode)
        decisions[sale_return.transaction_id] = decision
        if decision.sendable and not sale_return.landed:
            ahead.append(decision.lines)
    return decisions
