"""Reading a refund back from Antavo before it could be sent twice.

``refund_item`` has no uniqueness key on the platform: a refund whose answer was lost (or whose
sender died) and that is simply sent again is applied again. So before a refund that may have
landed goes out again, the sale it refunds is read back:

* ``GET /customers/{customer}/transactions?id={sale}``: is the sale the customer's, and on the
  platform at all (not listed: nothing of it can have been refunded);
* ``GET /customers/{customer}/transactions/{sale}/events``: its refund events, each a
  ``refund`` or a ``refund_item`` with ``product_id``, ``quantity`` and ``subtotal``.

:func:`match_refund` (pure) settles one return from those events: the events that other returns
of the sale own (the ledger's accepted returns, or returns settled earlier in this submission) are
not its; among the rest, a ``refund`` is a whole refund that landed, and each returned line is
found by an equal ``refund_item`` (product, units, money). What is found landed (``Found.lines``:
the return's own lines, whose money a return taken in part counts as refunded); only the lines
not found are sent. When lines are missing and the sale has a refund event nobody owns that
cannot be compared (no product, units or money in what the platform shows), nothing is sent:
the return is held for review (``refund_in_doubt``), as is a guest's refund that may have landed
(a guest's transactions cannot be read: they have no customer). :func:`refunded_lines` gives the
sale's refunds as lines, so a return held as an over-refund while other returns of the sale may
have landed is decided again against what the platform holds.

The read answers' envelopes are not documented: a list, or an object holding the list under
``transactions`` / ``events`` / ``data`` / ``payload`` is read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline.sinks.antavo_returns import Line, ReturnDecision, SaleFacts

__all__ = [
    "Found", "PlatformEvent", "events_in", "match_refund", "refunded_lines", "sale_facts", "transactions_in",
]


@dataclass(frozen=True)
class PlatformEvent:
    """One refund event of a sale as the platform holds it."""

    event_id: str
    action: str
    product_id: str | None = None
    quantity: Decimal | None = None
    subtotal: Decimal | None = None


@dataclass(frozen=True)
class Found:
    """What a read-back found of one return: the event ids that are its, and the lines still to
    send (all found: ``remaining`` is empty)."""

    event_ids: tuple[str, ...]
    remaining: tuple[Line, ...]
    landed: bool  # everything the return sends is on the platform already
    # lines are missing, but a refund event nobody owns cannot be compared (it names no product,
    # units or money): it may be this return's, so nothing can be sent
    unsure: bool = False
    # the return's own lines whose refund events were found (the money they refunded is theirs)
    lines: tuple[Line, ...] = ()


def _listed(document: Any, key: str) -> list[Any]:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        return []
    for name in (key, "data", "payload"):
        value = document.get(name)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return _listed(value, key)
    return []


def transactions_in(document: Any, transaction_id: str) -> list[Mapping[str, Any]]:
    """The listed transactions with this id."""
    return [t for t in _listed(document, "transactions")
            if isinstance(t, dict) and str(t.get("id", t.get("transaction_id"))) == transaction_id]


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def events_in(document: Any) -> list[PlatformEvent]:
    """The refund events of an events answer (other events are left out)."""
    out = []
    for event in _listed(document, "events"):
        if not isinstance(event, dict) or event.get("id") is None:
            continue
        action = str(event.get("action", ""))
        if action not in ("refund", "refund_item", "partial_refund"):
            continue
        data = event.get("data") or event.get("properties") or {}
        data = data if isinstance(data, dict) else {}
        product = data.get("product_id")
        out.append(PlatformEvent(str(event["id"]), action, str(product) if product is not None else None,
                                 _decimal(data.get("quantity")), _decimal(data.get("subtotal"))))
    return out


def match_refund(
    decision: ReturnDecision,
    events: Iterable[PlatformEvent],
    *,
    owned_by_others: Collection[str],
    own: Sequence[str] = (),
) -> Found:
    """Which of ``events`` are this return's, and which of its lines are still to send.

    ``owned_by_others``: event ids other returns of the sale own; ``own``: ids this return was
    already matched to (tried first).
    """
    mine = set(own)
    free = sorted((e for e in events if e.event_id not in owned_by_others),
                  key=lambda e: (e.event_id not in mine, e.event_id))
    if decision.action == "refund":
        whole = next((e for e in free if e.action == "refund"), None)
        if whole is not None:
            return Found((whole.event_id,), (), landed=True, lines=decision.lines)
        # refund_items or a partial_refund nobody owns: a whole refund would meet 112201 anyway
        return Found((), decision.lines, landed=False, unsure=bool(free))
    taken: list[str] = []
    remaining: list[Line] = []
    found: list[Line] = []
    for line in decision.lines:
        match = next(
            (e for e in free if e.event_id not in taken and e.action == "refund_item"
             and e.product_id == line.product_id and e.quantity == line.quantity
             and e.subtotal == line.amount),
            None,
        )
        if match is None:
            remaining.append(line)
        else:
            taken.append(match.event_id)
            found.append(line)
    unsure = bool(remaining) and any(
        e.event_id not in taken and (e.action != "refund_item" or e.product_id is None
                                     or e.quantity is None or e.subtotal is None)
        for e in free)
    return Found(tuple(taken), tuple(remaining), landed=bool(decision.lines) and not remaining,
                 unsure=unsure, lines=tuple(found))


def refunded_lines(events: Iterable[PlatformEvent]) -> tuple[Line, ...] | None:
    """The lines the sale's refund events gave back (every refund of the sale, whoever sent it);
    None when one of them cannot be counted as lines (a whole ``refund``, a ``partial_refund``, or
    an event without product, units or money)."""
    lines = []
    for event in events:
        if (event.action != "refund_item" or event.product_id is None or event.quantity is None
                or event.subtotal is None):
            return None
        lines.append(Line(event.product_id, abs(event.quantity), abs(event.subtotal)))
    return tuple(lines)


def sale_facts(transaction: Mapping[str, Any]) -> SaleFacts | None:
    """A listed transaction as the sale a return is checked against: its ``items`` (product,
    ``quantity``, ``subtotal``, and ``discount`` when shown), ``total`` and ``currency`` when shown;
    None when it has no items or one cannot be counted."""
    items = transaction.get("items")
    if not isinstance(items, list) or not items:
        return None
    lines = []
    for item in items:
        if not isinstance(item, dict) or item.get("product_id") is None:
            return None
        quantity, subtotal = _decimal(item.get("quantity")), _decimal(item.get("subtotal"))
        if quantity is None or subtotal is None:
            return None
        lines.append(Line(str(item["product_id"]), abs(quantity), abs(subtotal),
                          abs(_decimal(item.get("discount")) or Decimal(0))))
    total = _decimal(transaction.get("total"))
    currency = transaction.get("currency")
    return SaleFacts(tuple(lines), abs(total) if total is not None else None,
                     str(currency) if currency else None)
