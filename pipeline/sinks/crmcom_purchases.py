"""CRM.COM purchases, pure: checkouts to request bodies, answers (the status envelope) to outcomes.

* :class:`Planner` decides per checkout of a submission: create a purchase (:class:`PlannedCreate`,
  the body of ``customer_events/purchases/create`` without the token, with the points burned at the
  till as a spend), cancel the purchase of a whole return (:class:`PlannedCancel`), send a partial
  return as an ad hoc return (:class:`PlannedAdHocReturn`), or settle it unsent with a target-level
  code (:class:`CrmcomRejectCode`, :class:`pipeline.sinks.crmcom_returns.ReturnCode`). Returns are
  checked against their sale by :func:`pipeline.sinks.crmcom_returns.check_return`; one whose sale
  the ledger does not know waits for it (:func:`pipeline.sinks.base.sale_not_found`).
* Amounts are exact Decimals; :func:`split_vat` is the one place where they are rounded.
* :class:`Envelope`, :func:`result_of` and :func:`results_of_bulk` turn answers into
  :class:`~pipeline.sinks.base.EventResult` s, classified by the target's code settings.

No I/O here; :mod:`pipeline.sinks.crmcom` sends the requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from pipeline.config import CrmcomTarget
from pipeline.records import ReturnStatus, TransactionType
from pipeline.sinks.base import CheckoutRow, EventResult, Outcome, sale_not_found
from pipeline.sinks.crmcom_returns import (
    EarlierReturn,
    Fit,
    RecordedSale,
    ReturnCode,
    check_return,
    earlier_returns_of,
    lines_of,
    recorded_sale,
)

__all__ = [
    "CONFLICTING",
    "CONTENT_TYPE",
    "MALFORMED",
    "MISSING",
    "OK",
    "CrmcomRejectCode",
    "Envelope",
    "OriginalLookup",
    "OriginalPurchase",
    "Plan",
    "PlannedAdHocReturn",
    "PlannedCancel",
    "PlannedCreate",
    "Planner",
    "SaleFacts",
    "ad_hoc_return_body",
    "ad_hoc_returns_enabled",
    "business_unit_field",
    "classify_status",
    "dumps",
    "format_performed_on",
    "not_sent",
    "original_not_delivered",
    "original_refused",
    "plan_checkout",
    "product_lines",
    "purchase_body",
    "result_of",
    "results_of_bulk",
    "sale_facts",
    "spend_amount",
    "spend_field",
    "spend_in_create",
    "split_vat",
]

OK = "OK"
MALFORMED = "MALFORMED_RESPONSE"
MISSING = "MISSING_FROM_RESPONSE"  # a bulk answer names no entry of the purchase: in doubt
CONFLICTING = "CONFLICTING_ANSWER"  # a bulk answer's entries of the purchase disagree: in doubt
CONTENT_TYPE = "application/json"


class CrmcomRejectCode(StrEnum):
    """Why a checkout was not sent to CRM.COM (target-level codes, documented in docs/PLATFORMS.md)."""

    GUEST = "crmcom_guest"  # no customer: a purchase event needs one
    PARTIAL_RETURN = "crmcom_partial_return"  # only whole purchases can be cancelled
    UNMATCHED_RETURN = "unmatched_return"  # no original transaction id (one unknown to the ledger waits)
    ORIGINAL_NOT_DELIVERED = "crmcom_original_not_delivered"  # retryable: the original has no event yet
    VOID = "void"  # voided at the till: nothing to record
    UNKNOWN_STORE = "crmcom_unknown_store"  # the store has no entry in `business_units`
    # the platform answered that the purchase was cancelled already: nothing changed there, so the
    # return is not counted as sent money (for review: who cancelled it?)
    ALREADY_CANCELLED = "already_cancelled"
    # failed for good, nothing cancelled: the purchase to cancel has no recorded id and of those
    # carrying the sale's reference none, or more than one, matches the sale (ids in the message)
    AMBIGUOUS_PURCHASE = "ambiguous_purchase"
    # retryable, held for review: a request may have landed and no lookup could tell
    IN_DOUBT = "crmcom_in_doubt"


@dataclass(frozen=True)
class OriginalPurchase:
    """What the ledger knows about a returned sale: its CRM.COM event ids and total, and (to check a
    return against it) its state, customer, currency and lines."""

    event_ids: tuple[str, ...]
    total: Decimal | None = None
    state: str = "accepted"
    customer_id: str | None = None
    is_guest: bool = False
    currency: str | None = None
    items: tuple[Mapping[str, Any], ...] = ()
    earlier_returns: tuple[Mapping[str, Any], ...] = ()

    def recorded(self, transaction_id: str) -> RecordedSale:
        """As a :class:`RecordedSale` (the return checks' view)."""
        return RecordedSale(
            transaction_id,
            self.state,
            self.customer_id,
            self.is_guest or not self.customer_id,
            self.currency,
            lines_of(self.items),
            self.event_ids,
        )


OriginalLookup = Callable[[str], OriginalPurchase | None]


@dataclass(frozen=True)
class SaleFacts:
    """What the purchase of a sale must show, as posfeed would have sent it (None: not known)."""

    total: Decimal | None = None
    performed_on: str | int | None = None
    customer: str | None = None
    business_unit: str | None = None


def sale_facts(sale: Mapping[str, Any], target: CrmcomTarget) -> SaleFacts:
    """What the purchase of ``sale`` (a checkout, or the ``original`` a return carries) shows:
    its total as sent, its ``performed_on``, customer and business unit (each when known)."""
    total = sum((line["total_amount"] for line in product_lines(sale.get("items") or (), target)),
                Decimal(0))
    stamp = sale.get("timestamp_utc")
    if isinstance(stamp, str) and stamp:
        stamp = datetime.fromisoformat(stamp)
    customer = sale.get("customer_id")
    store = sale.get("store_id")
    return SaleFacts(
        total=total,
        performed_on=format_performed_on(stamp, target.performed_on_format)
        if isinstance(stamp, datetime) else None,
        customer=str(customer) if customer else None,
        business_unit=_business_unit(str(store), target) if store else None,
    )


@dataclass(frozen=True)
class PlannedCreate:
    """A purchase to create; ``body`` lacks only the token. ``spend`` (points burned at the till
    as a spend amount) goes through ``create_spend`` when the release has no spend field."""

    transaction_id: str
    body: dict[str, Any]
    spend_call: bool = False


@dataclass(frozen=True)
class PlannedAdHocReturn:
    """A partial return sent as an ad hoc return of the returned lines (no purchase is cancelled)."""

    transaction_id: str
    original_transaction_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class PlannedCancel:
    """Cancel the purchase of ``original_transaction_id`` (a whole-transaction return).

    ``event_id`` is None when the original is created in the same submission: it is known only
    once that purchase is accepted. ``look_up``: the original was accepted but CRM.COM's answer
    named no purchase id, so the purchase is looked up by its reference before it is cancelled,
    and the one matching ``sale`` (what the sale's purchase shows) is taken.
    """

    transaction_id: str
    original_transaction_id: str
    event_id: str | None
    customer_id: str | None = None
    look_up: bool = False
    sale: SaleFacts | None = None


Plan = PlannedCreate | PlannedCancel | PlannedAdHocReturn | EventResult


# ---- money and time -----------------------------------------------------------------------------


def _round(amount: Decimal, decimals: int) -> Decimal:
    """The one place where amounts are rounded for CRM.COM (half up, to ``decimals`` places)."""
    return amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def split_vat(amount: Decimal, target: CrmcomTarget) -> tuple[Decimal, Decimal, Decimal]:
    """``(net, vat, total)`` of a line amount; net + vat == total exactly after rounding."""
    rate = target.vat_rate
    if target.prices_include_vat:
        total = _round(amount, target.amount_decimals)
        net = _round(total / (1 + rate), target.amount_decimals)
    else:
        net = _round(amount, target.amount_decimals)
        total = _round(net * (1 + rate), target.amount_decimals)
    return net, total - net, total


def format_performed_on(timestamp: datetime, fmt: str) -> str | int:
    """The POS time as CRM.COM's ``performed_on``: "iso8601" (UTC, Z), "epoch", or a strftime pattern."""
    utc = timestamp.astimezone(UTC) if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
    if fmt == "iso8601":
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    if fmt == "epoch":
        return int(utc.timestamp())
    return utc.strftime(fmt)


_DECIMAL_MARK = re.compile(r'"\\u0000D([-+0-9.Ee]+)\\u0000"')


def _mark(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"\x00D{value}\x00"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


_ENCODER = json.JSONEncoder(default=_mark, separators=(",", ":"), check_circular=False)


def dumps(body: Mapping[str, Any]) -> bytes:
    """JSON with every Decimal written as an exact number literal (never through float)."""
    return _DECIMAL_MARK.sub(r"\1", _ENCODER.encode(body)).encode()


# ---- mapping --------------------------------------------------------------------------------------


def business_unit_field(target: CrmcomTarget) -> str:
    """The request field naming the business unit in the configured API release."""
    if target.business_unit_field:
        return target.business_unit_field
    if target.api_release < 17:
        return "performed_by_unit_identifier"
    if target.api_release == 17:
        return "performed_by_tap_identifier"
    return "performed_by_business_unit_identifier"


def _business_unit(store_id: str, target: CrmcomTarget) -> str | None:
    if store_id in target.business_units:
        return target.business_units[store_id]
    if target.business_unit is not None:
        return target.business_unit
    return None if target.business_units else store_id


def product_lines(items: Sequence[Mapping[str, Any]], target: CrmcomTarget) -> list[dict[str, Any]]:
    """``products_set`` entries: identifier, quantity and net / VAT / total amounts per line."""
    lines = []
    for item in items:
        net, vat, total = split_vat(Decimal(item["line_total"]), target)
        lines.append(
            {
                "product_identifier": {target.product_key: item["product_id"]},
                "quantity": Decimal(item["quantity"]),
                "net_amount": net,
                "vat_amount": vat,
                "total_amount": total,
            }
        )
    return lines


def purchase_body(row: CheckoutRow, target: CrmcomTarget, business_unit: str) -> dict[str, Any]:
    """The ``purchases/create`` body of one sale (without the token)."""
    transaction_id = str(row["transaction_id"])
    body: dict[str, Any] = {
        target.customer_field: {target.customer_key: str(row["customer_id"])},
        business_unit_field(target): {target.business_unit_key: business_unit},
        "performed_on": format_performed_on(row["timestamp_utc"], target.performed_on_format),
        "reference_number": transaction_id,
        "external_system_reference_number": transaction_id,
        target.products_field: product_lines(row.get("items") or (), target),
    }
    if target.external_system is not None:
        body["external_system"] = target.external_system
    if target.process_immediately is not None:
        body["process_immediately"] = target.process_immediately
    return body


def _recorded_original(
    row: CheckoutRow, originals: OriginalLookup | None
) -> tuple[RecordedSale, list[EarlierReturn]] | None:
    """The returned sale as the ledger holds it, and its earlier returns that count.

    The submit stage attaches ``original`` (state, customer, currency, lines, event ids) and
    ``earlier_returns`` to a return row whose sale the ledger knows; tests may instead pass an
    ``originals`` lookup (transaction id -> :class:`OriginalPurchase`).
    """
    original_id = str(row.get("original_transaction_id") or "")
    if isinstance(row.get("original"), Mapping):
        sale = recorded_sale(row["original"])
        return sale, earlier_returns_of(row.get("earlier_returns") or (), sale)
    if originals is None or not original_id:
        return None
    found = originals(original_id)
    if found is None:
        return None
    sale = found.recorded(original_id)
    return sale, earlier_returns_of(found.earlier_returns, sale)


def not_sent(transaction_id: str, code: str, message: str) -> EventResult:
    """A NOT_SENT result with a target-level code."""
    return EventResult(transaction_id, Outcome.NOT_SENT, error_code=code, error_message=message, attempts=0)


def spend_amount(row: CheckoutRow, target: CrmcomTarget) -> Decimal | None:
    """Points burned at the till as CRM.COM's spend amount (None: nothing burned, or spends off)."""
    burned = row.get("points_burned")
    if target.spend == "off" or burned is None or Decimal(burned) <= 0:
        return None
    return _round(Decimal(burned) * target.spend_per_point, target.amount_decimals)


def spend_in_create(target: CrmcomTarget) -> bool:
    """From R17 a purchase carries its spend; before, ``create_spend`` makes both in one call."""
    return target.api_release >= 17


def spend_field(target: CrmcomTarget) -> str:
    """The request field of the spend amount ([A]: not captured in the documentation found)."""
    if target.spend_field:
        return target.spend_field
    return "requested_spend_amount" if spend_in_create(target) else "spend_amount"


def ad_hoc_returns_enabled(target: CrmcomTarget) -> bool:
    """Whether partial returns go out as ad hoc returns (``auto``: from R17; R16.12 opts in)."""
    if target.partial_returns == "auto":
        return target.api_release >= 17
    return target.partial_returns == "ad_hoc_return"


def ad_hoc_return_body(row: CheckoutRow, target: CrmcomTarget, business_unit: str) -> dict[str, Any]:
    """The ad hoc return of a partial return: the returned lines as positive quantities and amounts
    ([A]: the request shape follows ``purchases/create``; the method's parameters were not captured)."""
    body = purchase_body(row, target, business_unit)
    body[target.products_field] = [
        {**line, **{k: abs(line[k]) for k in ("quantity", "net_amount", "vat_amount", "total_amount")}}
        for line in body[target.products_field]
    ]
    return body


class Planner:
    """Plans one submission's checkouts in order: sales first-come, each return checked against its
    sale and the returns of it planned before (so a repeated whole return is caught before sending)."""

    def __init__(
        self,
        target: CrmcomTarget,
        originals: OriginalLookup | None = None,
        sales: Mapping[str, CheckoutRow] | None = None,
    ) -> None:
        self.target = target
        self.originals = originals
        self.sales = sales or {}
        self.planned_returns: dict[str, list[EarlierReturn]] = {}

    def plan(self, row: CheckoutRow) -> Plan:
        """What to do with one checkout: create a purchase, cancel one, ad hoc return, or not send."""
        target = self.target
        transaction_id = str(row["transaction_id"])
        kind = row.get("transaction_type") or TransactionType.SALE
        if kind == TransactionType.VOID:
            return not_sent(transaction_id, CrmcomRejectCode.VOID, "voided transactions are not sent")
        if kind == TransactionType.RETURN:
            return self._plan_return(row)
        if row.get("is_guest") or not row.get("customer_id"):
            return not_sent(transaction_id, CrmcomRejectCode.GUEST, "CRM.COM purchases need a customer")
        unit = _business_unit(str(row["store_id"]), target)
        if unit is None:
            return not_sent(
                transaction_id,
                CrmcomRejectCode.UNKNOWN_STORE,
                f"store {row['store_id']} has no business unit",
            )
        body = purchase_body(row, target, unit)
        spend = spend_amount(row, target)
        if spend is not None:
            body[spend_field(target)] = spend
        return PlannedCreate(
            transaction_id, body, spend_call=spend is not None and not spend_in_create(target)
        )

    def _plan_return(self, row: CheckoutRow) -> Plan:
        target = self.target
        transaction_id = str(row["transaction_id"])
        original_id = str(row.get("original_transaction_id") or "")
        if row.get("return_status") == ReturnStatus.UNMATCHED or not original_id:
            if row.get("is_guest") or not row.get("customer_id"):
                return not_sent(transaction_id, CrmcomRejectCode.GUEST, "CRM.COM purchases need a customer")
            return not_sent(
                transaction_id, CrmcomRejectCode.UNMATCHED_RETURN, "return names no original sale"
            )
        in_submission = self.sales.get(original_id)
        found = _recorded_original(row, self.originals)
        if in_submission is not None:
            sale = recorded_sale({**in_submission, "state": "in_submission"})
            recorded = found[1] if found is not None else []
        elif found is not None:
            sale, recorded = found
        else:  # not arrived yet (the export of its sale may come later): it waits for it
            return sale_not_found(transaction_id, original_id)
        earlier = [*recorded, *self.planned_returns.get(original_id, ())]
        verdict = check_return(row, sale, earlier, decimals=target.amount_decimals)
        if verdict.fit is None:
            if verdict.code is None:  # both guests
                return not_sent(transaction_id, CrmcomRejectCode.GUEST, verdict.message)
            return not_sent(transaction_id, verdict.code, verdict.message)
        if sale.state in ("not_sent", "void"):
            return not_sent(
                transaction_id,
                ReturnCode.ORIGINAL_NOT_SENT,
                f"the sale {original_id} was not sent to CRM.COM",
            )
        lines = lines_of(row.get("items") or ())
        whole = verdict.fit is Fit.WHOLE
        if not whole and not ad_hoc_returns_enabled(target):
            self.planned_returns.setdefault(original_id, []).append(
                EarlierReturn(transaction_id, lines, False)
            )
            return not_sent(
                transaction_id,
                CrmcomRejectCode.PARTIAL_RETURN,
                "a partial return: only whole purchases can be cancelled (ad hoc returns are off)",
            )
        if sale.state == "failed_permanent":
            return original_refused(transaction_id, original_id)
        if sale.state not in ("accepted", "in_submission"):
            return original_not_delivered(transaction_id, original_id)
        if not whole:
            unit = _business_unit(str(row["store_id"]), target)
            if unit is None:
                return not_sent(
                    transaction_id,
                    CrmcomRejectCode.UNKNOWN_STORE,
                    f"store {row['store_id']} has no business unit",
                )
            self.planned_returns.setdefault(original_id, []).append(
                EarlierReturn(transaction_id, lines, False)
            )
            return PlannedAdHocReturn(transaction_id, original_id, ad_hoc_return_body(row, target, unit))
        event_id = None if in_submission is not None else (sale.event_ids[0] if sale.event_ids else None)
        # accepted with no id recorded: the create's answer named none (the purchase is looked up)
        look_up = in_submission is None and event_id is None and sale.state == "accepted"
        if in_submission is None and event_id is None and not look_up:
            return original_not_delivered(transaction_id, original_id)
        self.planned_returns.setdefault(original_id, []).append(EarlierReturn(transaction_id, lines, True))
        # with no id to cancel by, the purchase is named by lookup: what it must show
        source = in_submission if in_submission is not None else row.get("original")
        facts = sale_facts(source, target) if event_id is None and isinstance(source, Mapping) else None
        return PlannedCancel(transaction_id, original_id, event_id, str(row.get("customer_id")), look_up,
                             facts)


def plan_checkout(
    row: CheckoutRow,
    target: CrmcomTarget,
    originals: OriginalLookup | None = None,
    in_submission: Mapping[str, CheckoutRow] | None = None,
) -> Plan:
    """What to do with one checkout on its own (see :class:`Planner` for a whole submission)."""
    return Planner(target, originals, in_submission).plan(row)


def original_refused(transaction_id: str, original_id: str) -> EventResult:
    """REJECTED, never sent: CRM.COM refused the returned sale for good, so it has no purchase and
    no run will give it one; a rerun including transactions refused for good resends the sale, and
    this return with it."""
    return EventResult(
        transaction_id,
        Outcome.REJECTED,
        error_code=ReturnCode.ORIGINAL_REFUSED,
        error_message=f"not sent: CRM.COM refused the sale {original_id} for good, so it has no purchase "
                      "to return against; a rerun of the failed transactions including those refused for "
                      "good sends this return once the sale is accepted",
        attempts=0,
    )


def original_not_delivered(transaction_id: str, original_id: str) -> EventResult:
    """RETRYABLE: the returned sale has no CRM.COM purchase yet (a rerun can cancel it later)."""
    return EventResult(
        transaction_id,
        Outcome.RETRYABLE,
        error_code=CrmcomRejectCode.ORIGINAL_NOT_DELIVERED,
        error_message=f"original {original_id} has no CRM.COM purchase yet",
        attempts=0,
    )


# ---- answers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A CRM.COM answer: ``status.code``, its message and ``data``."""

    code: str
    message: str
    data: Any

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.code == OK

    @classmethod
    def read(cls, body: bytes, http_status: int = 200) -> Envelope:
        """Decode a response body (Decimals kept exact)."""
        try:
            payload = json.loads(body, parse_float=Decimal) if body else None
        except (ValueError, UnicodeDecodeError):
            payload = None
        envelope = cls.parse(payload)
        if envelope.code == MALFORMED:
            return cls(MALFORMED, f"HTTP {http_status} without a status envelope", None)
        return envelope

    @classmethod
    def parse(cls, payload: Any) -> Envelope:
        """Read the envelope; anything without a status is an error envelope of its own."""
        if not isinstance(payload, Mapping) or not isinstance(payload.get("status"), Mapping):
            return cls(MALFORMED, "response has no status envelope", None)
        status = payload["status"]
        message = " ".join(str(status.get(k) or "") for k in ("message", "description")).strip()
        return cls(str(status.get("code") or ""), message, payload.get("data"))


def classify_status(code: str, target: CrmcomTarget, *, cancel: bool = False) -> Outcome:
    """The outcome of a non-OK ``status.code`` (token codes are handled before this, by renewal)."""
    if code == OK:
        return Outcome.ACCEPTED
    if cancel and code in target.already_cancelled_codes:
        return Outcome.NOT_SENT  # not this return's doing: never counted as sent money
    if not cancel and code in target.duplicate_codes:
        return Outcome.ALREADY_ACCEPTED if target.on_duplicate == "already_accepted" else Outcome.REJECTED
    if code in target.retryable_codes or code in target.token_error_codes:
        return Outcome.RETRYABLE
    return Outcome.REJECTED


def _event_ids(data: Any) -> tuple[str, ...]:
    if isinstance(data, Mapping) and data.get("id"):
        return (str(data["id"]),)
    return ()


def result_of(transaction_id: str, envelope: Envelope, target: CrmcomTarget, *, cancel: bool) -> EventResult:
    """One transaction's result from a create or cancel answer."""
    outcome = classify_status(envelope.code, target, cancel=cancel)
    if outcome is Outcome.ACCEPTED:
        return EventResult(transaction_id, outcome, event_ids=_event_ids(envelope.data))
    if outcome is Outcome.NOT_SENT:
        return EventResult(
            transaction_id,
            outcome,
            error_code=CrmcomRejectCode.ALREADY_CANCELLED,
            error_message=f"{envelope.code}: the purchase was cancelled already; nothing changed there",
        )
    return EventResult(
        transaction_id,
        outcome,
        # a duplicate answer may name the existing purchase; keep it for a later cancel
        event_ids=_event_ids(envelope.data) if outcome is Outcome.ALREADY_ACCEPTED else (),
        error_code=envelope.code,
        error_message=envelope.message or None,
    )


def _entries(data: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """The objects of one set of a bulk answer (anything else in it is no answer at all)."""
    entries = data.get(name)
    return [entry for entry in entries if isinstance(entry, Mapping)] if isinstance(entries, list) else []


def _identifier(entry: Mapping[str, Any], sent: set[str]) -> str | None:
    """The transaction an entry names, when it is one of those sent."""
    for key in ("request_unique_identifier", "reference_number"):
        value = entry.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value) in sent:
            return str(value)
    return None


def results_of_bulk(
    transaction_ids: Sequence[str], envelope: Envelope, target: CrmcomTarget
) -> list[EventResult]:
    """Per-transaction results of a ``create_multiple`` answer (processed / unprocessed sets).

    Only an entry that names a transaction sent (``request_unique_identifier`` or
    ``reference_number``) says anything of it: an entry that is not an object, names nothing or
    names something not sent is ignored. A transaction named by no entry, or by entries that
    disagree (processed and unprocessed), may have landed: it is retryable (``MISSING_FROM_RESPONSE``
    / ``CONFLICTING_ANSWER``) and looked up before it is sent again (``target.in_doubt``), so each
    purchase of the batch is settled on its own.
    """
    if not envelope.ok:
        return [result_of(t, envelope, target, cancel=False) for t in transaction_ids]
    data = envelope.data if isinstance(envelope.data, Mapping) else {}
    sent = set(transaction_ids)
    answers: dict[str, list[EventResult]] = {}
    for entry in _entries(data, "processed_customer_events_set"):
        key = _identifier(entry, sent)
        if key is not None:
            accepted = EventResult(key, Outcome.ACCEPTED, event_ids=_event_ids(entry))
            answers.setdefault(key, []).append(accepted)
    for entry in _entries(data, "unprocessed_customer_events_set"):
        key = _identifier(entry, sent)
        if key is None:
            continue
        code = str(entry.get("error_code") or entry.get("code") or "ERROR")
        message = str(
            entry.get("error_description") or entry.get("description") or entry.get("message") or ""
        )
        refused = result_of(key, Envelope(code, message, entry), target, cancel=False)
        answers.setdefault(key, []).append(refused)
    results = []
    for transaction_id in transaction_ids:
        found = answers.get(transaction_id, [])
        if found and all((r.outcome, r.error_code) == (found[0].outcome, found[0].error_code) for r in found):
            results.append(found[0])
        elif found:
            results.append(EventResult(
                transaction_id, Outcome.RETRYABLE, error_code=CONFLICTING,
                error_message="the bulk answer lists it both as processed and as unprocessed "
                              "(or with different errors)"))
        else:
            results.append(
                EventResult(
                    transaction_id,
                    Outcome.RETRYABLE,
                    error_code=MISSING,
                    error_message="no entry of the bulk answer names it (processed or unprocessed)",
                )
            )
    return results
