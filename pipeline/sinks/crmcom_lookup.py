"""Looking a purchase up on CRM.COM before resending what may have landed.

CRM.COM documents no uniqueness of ``reference_number`` (the bulk call's ``request_unique_identifier``
is "not stored"), so a resend after a crash or a lost answer could create a second purchase. Instead,
a purchase (or the purchase a cancel is for) is looked up by the documented filters and matched on
its reference number:

* ``show`` (``GET customer_events/purchases/show``, R5+): ``customer_event_identifier`` may name the
  ``external_system_reference_number`` from R10.1; posfeed sends the transaction id there. GET
  parameters follow the API's convention ``?token=…&customer_event_identifier=<key>=<value>``.
  An unknown purchase answers with an error code ([A]: ``target.not_found_codes``).
* ``list`` (``POST customer_events/purchases/list``): by ``accounts_receivable_identifier`` and
  ``submitted_after_date`` (``number_of_results`` at most); the answer is searched for the
  reference number. Paging is not documented: a full page without the purchase cannot decide.

A cancel that may have landed asks about the purchase to cancel by its id when the ledger (or an
earlier lookup) knows it (``show`` with ``customer_event_identifier=id=<id>``, documented from R5):
a reference may name two purchases on a platform that does not refuse a repeated one, and the
first found need not be the one to cancel.

Whatever cannot be decided (the call failed, an unexpected answer, two matches) is *undecided*:
the adapter holds the transaction in doubt for review instead of guessing.

A cancel whose purchase has no recorded id names it by lookup, and a sale that may have landed is
looked up before it is created again: of the purchases carrying the sale's reference
(``candidates``; another sale may reuse a receipt number, another system may have created the
purchase twice), :func:`pick_purchase` takes the one matching the sale (:class:`SaleFacts`:
total, day, and the customer and business unit when the answer shows them); none or several
matching is :class:`Ambiguous`: nothing is cancelled, and a sale is created (none matches) or
fails for good (several match).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from pipeline.config import CrmcomTarget
from pipeline.sinks.crmcom_purchases import CONTENT_TYPE, Envelope, SaleFacts, dumps
from pipeline.sinks.http import HttpClient, HttpError, HttpTimeout

__all__ = [
    "Ambiguous",
    "Answer",
    "LookupResult",
    "SaleFacts",
    "TokenRefused",
    "look_up",
    "lookup_method",
    "pick_purchase",
    "read_list",
    "read_show",
]


class Answer(StrEnum):
    """What a lookup found out."""

    FOUND = "found"
    NOT_FOUND = "not_found"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class LookupResult:
    """A lookup's answer, the purchase when found, and why when undecided."""

    answer: Answer
    purchase: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    transient: bool = False  # undecided for want of an answer: asking again may decide
    # every purchase the answer shows carrying the reference (several make a list undecided)
    candidates: tuple[Mapping[str, Any], ...] = ()


class TokenRefused(Exception):
    """The lookup's token was refused (expired or invalid): renew it and ask again."""


def lookup_method(target: CrmcomTarget) -> str:
    """``show`` or ``list``: ``auto`` shows by reference from R11 (R10.1 has it too: set it)."""
    if target.lookup != "auto":
        return target.lookup
    return "show" if target.api_release >= 11 else "list"


def _matches(purchase: Mapping[str, Any], reference: str) -> bool:
    return reference in (
        str(purchase.get("external_system_reference_number") or ""),
        str(purchase.get("reference_number") or ""),
    )


def read_show(
    envelope: Envelope, reference: str, target: CrmcomTarget, *, purchase_id: str | None = None
) -> LookupResult:
    """The answer of ``show`` for ``reference`` (asked by ``purchase_id`` when given)."""
    if envelope.code in target.token_error_codes:
        raise TokenRefused(envelope.code)
    if envelope.code in target.not_found_codes:
        return LookupResult(Answer.NOT_FOUND)
    if not envelope.ok or not isinstance(envelope.data, Mapping):
        return LookupResult(Answer.UNDECIDED, reason=f"show answered {envelope.code or 'nothing usable'}")
    if purchase_id is not None and str(envelope.data.get("id") or "") != purchase_id:
        return LookupResult(Answer.UNDECIDED, reason=f"show of purchase {purchase_id} answered another one")
    if not _matches(envelope.data, reference):
        return LookupResult(Answer.UNDECIDED, reason="show answered a purchase with another reference number")
    return LookupResult(Answer.FOUND, envelope.data, candidates=(envelope.data,))


def _purchases_in(data: Any) -> Sequence[Mapping[str, Any]] | None:
    """The purchases of a list answer: a list, or the first list inside an object ([A])."""
    if isinstance(data, list):
        return [p for p in data if isinstance(p, Mapping)]
    if isinstance(data, Mapping):
        for value in data.values():
            if isinstance(value, list):
                return [p for p in value if isinstance(p, Mapping)]
    return None


def read_list(envelope: Envelope, reference: str, target: CrmcomTarget) -> LookupResult:
    """The answer of ``list`` searched for ``reference``."""
    if envelope.code in target.token_error_codes:
        raise TokenRefused(envelope.code)
    purchases = _purchases_in(envelope.data) if envelope.ok else None
    if purchases is None:
        return LookupResult(Answer.UNDECIDED, reason=f"list answered {envelope.code or 'nothing usable'}")
    matches = [p for p in purchases if _matches(p, reference)]
    if len(matches) == 1:
        return LookupResult(Answer.FOUND, matches[0], candidates=(matches[0],))
    if matches:
        return LookupResult(Answer.UNDECIDED, reason=f"{len(matches)} purchases carry the reference number",
                            candidates=tuple(matches))
    if len(purchases) >= target.list_page_size:
        return LookupResult(
            Answer.UNDECIDED, reason="a full page of purchases without it (no paging documented)"
        )
    return LookupResult(Answer.NOT_FOUND)


@dataclass(frozen=True)
class Ambiguous:
    """No purchase, or more than one, carrying the reference matches the sale."""

    purchase_ids: tuple[str, ...]
    reason: str
    matching: tuple[str, ...] = ()  # the ids of those that match (several), empty when none does


def _day(value: Any) -> str:
    """The day of a ``performed_on`` (an epoch stays as it is)."""
    text = str(value)
    return text[:10] if len(text) >= 10 and text[4:5] == "-" else text


def _shown_identifier(purchase: Mapping[str, Any], name: str) -> list[str]:
    shown = purchase.get(name)
    if isinstance(shown, Mapping):
        return [str(v) for v in shown.values() if v is not None]
    return [str(shown)] if shown is not None else []


def differences(
    purchase: Mapping[str, Any], sale: SaleFacts, *, customer_field: str = "", unit_field: str = ""
) -> list[str]:
    """How a purchase differs from the sale, in the fields both know (empty: it matches); a
    customer is told apart without quoting either id."""
    found: list[str] = []
    if sale.total is not None:
        try:
            total = Decimal(str(purchase.get("total_amount")))
        except (InvalidOperation, ValueError):
            total = None
        if total != sale.total:
            found.append(f"total {purchase.get('total_amount')} (the sale's {sale.total})")
    shown_on = purchase.get("performed_on")
    if sale.performed_on is not None and shown_on is not None and _day(shown_on) != _day(sale.performed_on):
        found.append(f"performed on {purchase['performed_on']} (the sale {sale.performed_on})")
    customers = _shown_identifier(purchase, customer_field) if customer_field else []
    if sale.customer is not None and customers and sale.customer not in customers:
        # never quoted: the reason is stored and reported, and another account's id is never masked
        found.append("another customer")
    units = _shown_identifier(purchase, unit_field) if unit_field else []
    if sale.business_unit is not None and units and sale.business_unit not in units:
        found.append(f"business unit {'/'.join(units)} (the sale's {sale.business_unit})")
    return found


def pick_purchase(
    candidates: Sequence[Mapping[str, Any]], sale: SaleFacts, *, customer_field: str = "",
    unit_field: str = "",
) -> Mapping[str, Any] | Ambiguous:
    """The one purchase of ``candidates`` matching ``sale``, or why none or several do."""
    ids = tuple(str(p.get("id") or "?") for p in candidates)
    matching = []
    mismatched = []
    for purchase, pid in zip(candidates, ids, strict=True):
        off = differences(purchase, sale, customer_field=customer_field, unit_field=unit_field)
        if off:
            mismatched.append(f"{pid}: {', '.join(off)}")
        else:
            matching.append(purchase)
    if len(matching) == 1:
        return matching[0]
    if matching:
        named = tuple(str(p.get("id") or "?") for p in matching)
        return Ambiguous(ids, f"{len(matching)} purchases match the sale ({', '.join(named)})", named)
    return Ambiguous(ids, "no purchase matches the sale (" + "; ".join(mismatched) + ")")


async def look_up(
    client: HttpClient,
    target: CrmcomTarget,
    token: str,
    reference: str,
    customer: str | None,
    *,
    url_of: Callable[[str], str],
    now: Callable[[], datetime],
    purchase_id: str | None = None,
    method: str | None = None,
) -> LookupResult:
    """Ask CRM.COM for the purchase with ``reference``, or for the purchase ``purchase_id`` (by
    ``show``, whatever ``target.lookup``; its reference must be ``reference``); ``method`` overrides
    ``target.lookup``. Raises :class:`TokenRefused`."""
    method = "show" if purchase_id is not None else (method or lookup_method(target))
    try:
        if method == "show":
            key = (f"id={purchase_id}" if purchase_id is not None
                   else f"external_system_reference_number={reference}")
            query = urlencode({"token": token, "customer_event_identifier": key})
            reply = await client.request("GET", f"{url_of(target.show_path)}?{query}", headers={})
        else:
            if not customer:
                return LookupResult(Answer.UNDECIDED, reason="list needs the purchase's customer")
            since = now() - timedelta(days=target.list_window_days)
            body = {
                "token": token,
                target.customer_field: {target.customer_key: customer},
                "submitted_after_date": since.strftime("%Y-%m-%dT%H:%M:%S"),
                "number_of_results": target.list_page_size,
            }
            reply = await client.request(
                "POST", url_of(target.list_path), headers={"Content-Type": CONTENT_TYPE}, body=dumps(body)
            )
    except HttpTimeout as exc:
        return LookupResult(
            Answer.UNDECIDED, reason=f"{method}: no answer in time ({exc.kind})", transient=True
        )
    except HttpError as exc:
        return LookupResult(Answer.UNDECIDED, reason=f"{method}: {exc.kind}", transient=True)
    if reply.status >= 400 and reply.status != 404:
        transient = reply.status in (408, 425, 429) or reply.status >= 500
        return LookupResult(
            Answer.UNDECIDED, reason=f"{method} answered HTTP {reply.status}", transient=transient
        )
    envelope = Envelope.read(reply.body, reply.status)
    if method == "show":
        return read_show(envelope, reference, target, purchase_id=purchase_id)
    return read_list(envelope, reference, target)
