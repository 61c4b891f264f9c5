"""Checkout rows to Antavo events (pure), and exact JSON for them.

* a sale becomes one ``checkout`` event: ``transaction_id``, ``total``, ``currency``,
  ``effective_timestamp`` (Unix seconds of the original POS time), ``points_burned``, ``store`` and
  ``items`` (``product_id``, ``product_name``, ``price`` = unit price, ``quantity``, ``discount``,
  ``subtotal`` = line total after discount, ``product_category`` when present);
* a guest (no customer) carries ``"guest": true`` and no ``customer``;
* a matched return becomes one ``refund`` of the original transaction, or one ``refund_item`` per
  returned line (``return_mode``, decided by :mod:`pipeline.sinks.antavo_returns`); an unmatched
  return, an over-refund or a void is not sent (:class:`NotSent`).

Money is :class:`decimal.Decimal` throughout and is written as a JSON number with exactly its digits;
:func:`money_number` is the one place that decides how many decimals a currency amount shows (it
only drops trailing zeros down to the currency's minor units; it never rounds).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pipeline.currencies import MINOR_UNITS
from pipeline.records import TransactionType
from pipeline.sinks.antavo_returns import Line, ReturnDecision, decide_return
from pipeline.sinks.base import CheckoutRow

__all__ = [
    "NotSent",
    "checkout_event",
    "dumps",
    "events_for",
    "money_number",
    "quantity_number",
    "refund_events",
    "return_decision",
    "return_events",
]

@dataclass(frozen=True)
class NotSent:
    """Why a checkout row produces no event: a stable code and a sentence."""

    code: str
    message: str


_QUANTA: dict[str, Decimal] = {}


def money_number(value: Decimal, currency: str | None) -> Decimal:
    """An amount with trailing zeros dropped down to the currency's minor units (never rounded)."""
    if not isinstance(value, Decimal):
        raise TypeError(f"money must be a Decimal, not {type(value).__name__}")
    code = (currency or "").upper()
    quantum = _QUANTA.get(code)
    if quantum is None:
        quantum = _QUANTA[code] = Decimal(1).scaleb(-MINOR_UNITS.get(code, 2))
    shown = value.quantize(quantum)
    return shown if shown == value else value.normalize()


def quantity_number(value: Decimal) -> Decimal:
    """A quantity without trailing zeros (2.000 -> 2)."""
    if not isinstance(value, Decimal):
        raise TypeError(f"a quantity must be a Decimal, not {type(value).__name__}")
    normalized = value.normalize()
    return normalized if normalized != 0 else Decimal(0)


# ---- JSON with exact decimals ----------------------------------------------------------------------

# Decimals travel through the C JSON encoder as a marked string and are unquoted afterwards; the
# marker holds a random per-process token, so no text from an export can imitate it.
_MARK = "\x00" + secrets.token_hex(8)
_ESCAPED_MARK = json.dumps(_MARK)[1:-1]
_OPEN = '"' + _ESCAPED_MARK


def _mark(value: Any) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot send a non-finite amount: {value}")
        return _MARK + format(value, "f")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _number(value: Decimal) -> str:
    """A Decimal as the marked text :func:`dumps` writes as a bare JSON number (the fast path)."""
    if not value.is_finite():
        raise ValueError(f"cannot send a non-finite amount: {value}")
    return _MARK + format(value, "f")


def sent_number(value: Any) -> Decimal:
    """The Decimal of a number as an event carries it (:func:`_number`'s marked text, or a number)."""
    return Decimal(str(value).removeprefix(_MARK)) if value is not None else Decimal(0)


_ENCODER = json.JSONEncoder(default=_mark, ensure_ascii=False, separators=(",", ":"), check_circular=False)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; :class:`Decimal` as a number with exactly its digits.

    Event builders put amounts in as :func:`_number` text already, so the C encoder never calls
    back into Python for them.
    """
    text = _ENCODER.encode(value)
    head, *numbers = text.split(_OPEN)
    # each piece starts with the number's digits, then the closing quote of its marked string
    return (head + "".join(piece.replace('"', "", 1) for piece in numbers)).encode("utf-8")


# ---- mapping -----------------------------------------------------------------------------------------


def _unix_seconds(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _envelope(row: CheckoutRow, action: str, data: dict[str, Any], account: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {}
    customer = row.get("customer_id")
    if customer and not row.get("is_guest"):
        event["customer"] = customer
    else:
        event["guest"] = True
    event["action"] = action
    if account:
        event["account"] = account
    event["data"] = data
    return event


def _item(item: Mapping[str, Any], currency: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"product_id": item["product_id"]}
    if item.get("product_name"):
        out["product_name"] = item["product_name"]
    out["price"] = _number(money_number(item["unit_price"], currency))
    out["quantity"] = _number(quantity_number(item["quantity"]))
    if item.get("discount") is not None:
        out["discount"] = _number(money_number(item["discount"], currency))
    out["subtotal"] = _number(money_number(item["line_total"], currency))
    if item.get("product_category"):
        out["product_category"] = item["product_category"]
    return out


def checkout_event(row: CheckoutRow, *, account: str | None = None) -> dict[str, Any]:
    """The ``checkout`` event of a sale."""
    currency = row.get("currency")
    data: dict[str, Any] = {
        "transaction_id": row["transaction_id"],
        "total": _number(money_number(row["total"], currency)),
        "currency": currency,
    }
    effective = _unix_seconds(row.get("timestamp_utc"))
    if effective is not None:
        data["effective_timestamp"] = effective
    burned = row.get("points_burned")
    if burned is not None and burned != 0:
        data["points_burned"] = _number(quantity_number(burned))
    if row.get("store_id"):
        data["store"] = row["store_id"]
    data["items"] = [_item(item, currency) for item in row.get("items") or ()]
    return _envelope(row, "checkout", data, account)


def refund_events(
    row: CheckoutRow, decision: ReturnDecision, *, account: str | None = None,
    lines: Sequence[Line] | None = None,
) -> list[dict[str, Any]]:
    """The events of a sendable decision: one ``refund`` of the original transaction, or one
    ``refund_item`` per line (``lines``: only these, e.g. those a read-back did not find)."""
    original = row["original_transaction_id"]
    if decision.action == "refund":
        return [_envelope(row, "refund", {"transaction_id": original}, account)]
    currency = row.get("currency")
    return [
        _envelope(
            row,
            "refund_item",
            {
                "transaction_id": original,
                "product_id": line.product_id,
                "quantity": _number(quantity_number(line.quantity)),
                "subtotal": _number(money_number(line.amount, currency)),
            },
            account,
        )
        for line in (decision.lines if lines is None else lines)
    ]


def return_decision(row: CheckoutRow, *, mode: str = "auto") -> ReturnDecision:
    """The decision the submit stage attached (``return_decision``), or, without a ledger, the
    decision from the return alone (its sale unknown)."""
    decision = row.get("return_decision")
    if isinstance(decision, ReturnDecision):
        return decision
    return decide_return(row, original=None, mode=mode)


def return_events(
    row: CheckoutRow, *, mode: str = "auto", account: str | None = None
) -> list[dict[str, Any]] | NotSent:
    """``refund`` (whole transaction) or one ``refund_item`` per returned line, as decided by
    :func:`pipeline.sinks.antavo_returns.decide_return`."""
    decision = return_decision(row, mode=mode)
    if not decision.sendable:
        return NotSent(str(decision.code), str(decision.message))
    return refund_events(row, decision, account=account)


def events_for(
    row: CheckoutRow, *, return_mode: str = "auto", account: str | None = None
) -> list[dict[str, Any]] | NotSent:
    """Every event one checkout row becomes, or why it is not sent."""
    kind = row.get("transaction_type") or TransactionType.SALE
    if kind == TransactionType.VOID:
        return NotSent("void", "voided at the till; voids are never sent")
    if kind == TransactionType.RETURN:
        return return_events(row, mode=return_mode, account=account)
    return [checkout_event(row, account=account)]
