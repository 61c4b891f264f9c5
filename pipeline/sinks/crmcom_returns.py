"""Does a return fit the sale it names? Pure checks of a return against the sale as the ledger holds it.

A return names its sale by ``original_transaction_id``. It fits when it is made by the same customer
(or both are guests) in the sale's currency, and every returned line is a line of the sale: the
same product, no more than the quantity still unreturned, for the matching share of its amount
(earlier returns of the sale counted). A fitting return is *whole* when it brings back exactly
everything the sale had and nothing came back before (the purchase can be cancelled), else
*partial*. A return that does not fit gets a target-level code and is reported for review.

No I/O: the submit stage attaches what the ledger holds (``original`` and ``earlier_returns`` on
the return row, see :func:`pipeline.stages.submit.with_originals`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pipeline.logs import same_customer
from pipeline.sinks.returned import per_product

__all__ = [
    "EarlierReturn",
    "Fit",
    "Line",
    "RecordedSale",
    "ReturnCheck",
    "ReturnCode",
    "check_return",
    "earlier_returns_of",
    "lines_of",
    "recorded_sale",
]


class ReturnCode(StrEnum):
    """Why a return was not sent (target-level codes, documented in docs/PLATFORMS.md)."""

    MISMATCH = "return_mismatch"  # a line is not a line of the sale (product, quantity, amount, currency)
    OTHER_CUSTOMER = "return_other_customer"  # made by another customer than the sale
    ALREADY_RETURNED = "already_returned"  # the sale (or these lines of it) came back before
    ORIGINAL_IS_GUEST = "original_is_guest"  # a member's return of a guest sale (never on the platform)
    ORIGINAL_NOT_SENT = "original_not_sent"  # the sale was settled without reaching the platform
    # failed for good, never sent: the platform refused the sale for good (an operator's rerun of
    # transactions refused for good sends both once the sale is accepted)
    ORIGINAL_REFUSED = "original_refused"


class Fit(StrEnum):
    """How a fitting return relates to its sale."""

    WHOLE = "whole"
    PARTIAL = "partial"


@dataclass(frozen=True)
class Line:
    """One product's quantity and amount (magnitudes: returns carry negative numbers)."""

    product_id: str
    quantity: Decimal
    amount: Decimal


@dataclass(frozen=True)
class RecordedSale:
    """The sale a return names, as the ledger (or the same submission) holds it."""

    transaction_id: str
    state: str  # the ledger state; "in_submission" for a sale sent moments before
    customer_id: str | None
    is_guest: bool
    currency: str | None
    lines: tuple[Line, ...]
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EarlierReturn:
    """A return of the same sale that already counts: sent, or recorded as a partial return."""

    transaction_id: str
    lines: tuple[Line, ...]
    whole: bool


@dataclass(frozen=True)
class ReturnCheck:
    """The verdict: a fit (``code`` None) or the code and message of a return that does not fit."""

    fit: Fit | None
    code: ReturnCode | None = None
    message: str = ""


def _decimal(value: Any) -> Decimal:
    return abs(Decimal(str(value))) if value is not None else Decimal(0)


def lines_of(items: Iterable[Mapping[str, Any]]) -> tuple[Line, ...]:
    """Per-product totals of checkout items (quantity and amount as magnitudes), in first-seen order."""
    totals: dict[str, tuple[Decimal, Decimal]] = {}
    for item in items:
        key = str(item.get("product_id"))
        quantity, amount = totals.get(key, (Decimal(0), Decimal(0)))
        totals[key] = (quantity + _decimal(item.get("quantity")), amount + _decimal(item.get("line_total")))
    return tuple(Line(key, q, a) for key, (q, a) in totals.items())


def recorded_sale(data: Mapping[str, Any]) -> RecordedSale:
    """A :class:`RecordedSale` from the ``original`` a return row carries (or a sale row itself)."""
    customer = data.get("customer_id")
    return RecordedSale(
        transaction_id=str(data.get("transaction_id")),
        state=str(data.get("state") or "in_submission"),
        customer_id=str(customer) if customer else None,
        is_guest=bool(data.get("is_guest")) or not customer,
        currency=data.get("currency"),
        lines=lines_of(data.get("items") or ()),
        event_ids=tuple(str(e) for e in data.get("event_ids") or ()),
    )


# the recorded returns that count against a sale: on the platform, or recorded as a partial return
# (the goods came back even though nothing was sent)
_COUNTING_STATES = frozenset({"accepted"})
_COUNTING_NOT_SENT_CODES = frozenset({"crmcom_partial_return"})


def earlier_returns_of(recorded: Sequence[Mapping[str, Any]], sale: RecordedSale) -> list[EarlierReturn]:
    """The recorded returns of ``sale`` that count (see :data:`_COUNTING_STATES`)."""
    counted = []
    for data in recorded:
        state, code = data.get("state"), data.get("code")
        if state in _COUNTING_STATES or (state == "not_sent" and code in _COUNTING_NOT_SENT_CODES):
            lines = lines_of(data.get("items") or ())
            counted.append(EarlierReturn(str(data.get("transaction_id")), lines, _same(lines, sale.lines)))
    return counted


def _same(a: Sequence[Line], b: Sequence[Line]) -> bool:
    return {(x.product_id, x.quantity, x.amount) for x in a} == {
        (x.product_id, x.quantity, x.amount) for x in b
    }


def check_return(
    row: Mapping[str, Any],
    sale: RecordedSale,
    earlier: Sequence[EarlierReturn],
    *,
    decimals: int = 2,
) -> ReturnCheck:
    """Whether the return ``row`` fits ``sale`` given the ``earlier`` returns that count against it."""
    customer = row.get("customer_id")
    guest_return = bool(row.get("is_guest")) or not customer
    if sale.is_guest:
        if guest_return:
            return ReturnCheck(None, None, "both guests: nothing of the sale is on the platform")
        return ReturnCheck(
            None,
            ReturnCode.ORIGINAL_IS_GUEST,
            f"the sale {sale.transaction_id} was a guest's: it is not on the platform",
        )
    if guest_return or not same_customer(str(customer), str(sale.customer_id)):
        return ReturnCheck(
            None,
            ReturnCode.OTHER_CUSTOMER,
            f"returned by another customer than the sale {sale.transaction_id}",
        )
    if sale.currency and row.get("currency") and row["currency"] != sale.currency:
        return ReturnCheck(
            None, ReturnCode.MISMATCH, f"returned in {row['currency']}, the sale was in {sale.currency}"
        )
    returned = lines_of(row.get("items") or ())
    if not returned:
        return ReturnCheck(None, ReturnCode.MISMATCH, "the return has no lines")
    if any(e.whole for e in earlier):
        first = next(e for e in earlier if e.whole)
        return ReturnCheck(
            None,
            ReturnCode.ALREADY_RETURNED,
            f"the sale {sale.transaction_id} came back whole in {first.transaction_id}",
        )
    bought = {line.product_id: line for line in sale.lines}
    taken_units, taken_money = per_product(e.lines for e in earlier)
    tolerance = Decimal(1).scaleb(-decimals)
    for line in returned:
        sold = bought.get(line.product_id)
        if sold is None:
            return ReturnCheck(
                None,
                ReturnCode.MISMATCH,
                f"product {line.product_id} is not a line of the sale {sale.transaction_id}",
            )
        left_q = sold.quantity - taken_units[line.product_id]
        left_a = sold.amount - taken_money[line.product_id]
        if line.quantity > left_q:
            code = ReturnCode.ALREADY_RETURNED if line.quantity <= sold.quantity else ReturnCode.MISMATCH
            return ReturnCheck(
                None,
                code,
                f"returns {line.quantity} of product {line.product_id}; {left_q} of {sold.quantity} "
                f"bought in {sale.transaction_id} are left to return",
            )
        if line.quantity == left_q:
            expected = left_a  # the last pieces take what is left (absorbs earlier rounding)
        elif sold.quantity:
            expected = sold.amount * line.quantity / sold.quantity
        else:
            expected = left_a
        if abs(line.amount - expected) >= tolerance:
            return ReturnCheck(
                None,
                ReturnCode.MISMATCH,
                f"returns {line.amount} for {line.quantity} of product "
                f"{line.product_id}; the sale {sale.transaction_id} charged {expected.quantize(tolerance)}",
            )
    if not earlier and _same(returned, sale.lines):
        return ReturnCheck(Fit.WHOLE)
    return ReturnCheck(Fit.PARTIAL)
