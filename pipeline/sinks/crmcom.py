"""The CRM.COM target: checkouts become purchase customer events of the Web API v4 (`crmapi/rest/v2`).

* A sale with a customer becomes ``customer_events/purchases/create`` (or, with ``bulk_size > 1``,
  one ``create_multiple`` call of up to 1,000 purchases, each tagged with ``request_unique_identifier``
  = the transaction id). ``reference_number`` and ``external_system_reference_number`` are the
  transaction id, so the platform's duplicate-reference answer proves an earlier send landed.
* A return of a whole transaction whose purchase the ledger knows becomes
  ``customer_events/purchases/cancel`` of that purchase; guests, partial returns, unmatched returns
  and voids are reported as :attr:`Outcome.NOT_SENT` with a target-level code
  (:class:`CrmcomRejectCode`).
* Every call carries a token from ``authentication/token`` (username, password, organisation) or
  ``authentication/web_api_key/token`` (the Web API key as the Basic-auth user). The token is reused
  until it expires and renewed transparently; a call refused for an expired or invalid token is
  retried once with a new token.
* Answers come in the envelope ``{"status": {"code": "OK", ...}, "data": {...}}``; a non-OK code is
  classified by the target's settings (duplicate, token, retryable codes) into the shared outcomes.

Rate limit, concurrency, retries and in-doubt bookkeeping are the delivery engine's
(:mod:`pipeline.sinks.delivery`); this module only builds requests and reads answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

import httpx

from pipeline.config import CrmcomTarget, Feed, resolve_secret
from pipeline.errors import ConfigError
from pipeline.records import ReturnStatus, TransactionType
from pipeline.sinks.base import CheckoutRow, EventResult, Outcome
from pipeline.sinks.delivery import (
    Batch,
    DeliveryPolicy,
    PlatformSink,
    PreparedRequest,
    RequestFailure,
    Unit,
    parse_retry_after,
)
from pipeline.sinks.delivery import Plan as DeliveryPlan

__all__ = [
    "AuthenticationFailed",
    "Credentials",
    "CrmcomAdapter",
    "CrmcomRejectCode",
    "Envelope",
    "OriginalLookup",
    "OriginalPurchase",
    "PlannedCancel",
    "PlannedCreate",
    "TokenProvider",
    "business_unit_field",
    "classify_status",
    "dumps",
    "endpoint_url",
    "format_performed_on",
    "make_crmcom_sink",
    "original_not_delivered",
    "plan_checkout",
    "product_lines",
    "purchase_body",
    "result_of",
    "results_of_bulk",
    "split_vat",
]

log = logging.getLogger(__name__)

OK = "OK"
MALFORMED = "MALFORMED_RESPONSE"
CONTENT_TYPE = "application/json"


class CrmcomRejectCode(StrEnum):
    """Why a checkout was not sent to CRM.COM (target-level codes, documented in README)."""

    GUEST = "crmcom_guest"  # no customer: a purchase event needs one
    PARTIAL_RETURN = "crmcom_partial_return"  # only whole purchases can be cancelled
    UNMATCHED_RETURN = "unmatched_return"  # no original transaction id, or unknown to the ledger
    ORIGINAL_NOT_DELIVERED = "crmcom_original_not_delivered"  # retryable: the original has no event yet
    VOID = "void"  # voided at the till: nothing to record
    UNKNOWN_STORE = "crmcom_unknown_store"  # the store has no entry in `business_units`


@dataclass(frozen=True)
class OriginalPurchase:
    """What the ledger knows about a returned transaction: its CRM.COM event ids and total."""

    event_ids: tuple[str, ...]
    total: Decimal | None = None


OriginalLookup = Callable[[str], OriginalPurchase | None]


@dataclass(frozen=True)
class PlannedCreate:
    """A purchase to create; ``body`` lacks only the token."""

    transaction_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class PlannedCancel:
    """Cancel the purchase of ``original_transaction_id`` (a whole-transaction return).

    ``event_id`` is None when the original is created in the same submission: it is known only
    once that purchase is accepted.
    """

    transaction_id: str
    original_transaction_id: str
    event_id: str | None


Plan = PlannedCreate | PlannedCancel | EventResult


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


def dumps(body: Mapping[str, Any]) -> bytes:
    """JSON with every Decimal written as an exact number literal (never through float)."""

    def mark(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"\x00D{value}\x00"
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    text = json.dumps(body, default=mark, separators=(",", ":"))
    return _DECIMAL_MARK.sub(r"\1", text).encode()


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


def _original_of(row: CheckoutRow, originals: OriginalLookup | None) -> OriginalPurchase | None:
    """The returned purchase: from the row or else the ledger lookup.

    The submit stage may attach what the ledger knows about the original to a return row:
    ``original_event_ids`` (a list, empty while the sale is not accepted; absent or None when the
    ledger does not know the sale) and ``original_total``.
    """
    if row.get("original_event_ids") is not None:
        total = row.get("original_total")
        return OriginalPurchase(
            tuple(str(e) for e in row["original_event_ids"]),
            Decimal(total) if total is not None else None,
        )
    original_id = row.get("original_transaction_id")
    if originals is None or not original_id:
        return None
    return originals(str(original_id))


def not_sent(transaction_id: str, code: CrmcomRejectCode, message: str) -> EventResult:
    """A NOT_SENT result with a target-level code."""
    return EventResult(transaction_id, Outcome.NOT_SENT, error_code=code, error_message=message, attempts=0)


def plan_checkout(
    row: CheckoutRow,
    target: CrmcomTarget,
    originals: OriginalLookup | None = None,
    in_submission: Mapping[str, CheckoutRow] | None = None,
) -> Plan:
    """What to do with one checkout: create a purchase, cancel one, or settle it unsent.

    ``in_submission`` holds the sales created in the same submission (by transaction id), so a
    return can cancel a purchase created moments before it.
    """
    transaction_id = str(row["transaction_id"])
    kind = row.get("transaction_type") or TransactionType.SALE
    if kind == TransactionType.VOID:
        return not_sent(transaction_id, CrmcomRejectCode.VOID, "voided transactions are not sent")
    if row.get("is_guest") or not row.get("customer_id"):
        return not_sent(transaction_id, CrmcomRejectCode.GUEST, "CRM.COM purchases need a customer")
    if kind == TransactionType.RETURN:
        return _plan_return(row, target, originals, in_submission or {})
    unit = _business_unit(str(row["store_id"]), target)
    if unit is None:
        return not_sent(
            transaction_id, CrmcomRejectCode.UNKNOWN_STORE, f"store {row['store_id']} has no business unit"
        )
    return PlannedCreate(transaction_id, purchase_body(row, target, unit))


def _plan_return(
    row: CheckoutRow,
    target: CrmcomTarget,
    originals: OriginalLookup | None,
    in_submission: Mapping[str, CheckoutRow],
) -> Plan:
    transaction_id = str(row["transaction_id"])
    original_id = str(row.get("original_transaction_id") or "")
    if row.get("return_status") == ReturnStatus.UNMATCHED or not original_id:
        return not_sent(transaction_id, CrmcomRejectCode.UNMATCHED_RETURN, "return names no original sale")
    returned = abs(Decimal(row["total"]))
    sale = in_submission.get(original_id)
    if sale is not None:
        original: OriginalPurchase | None = OriginalPurchase((), Decimal(sale["total"]))
    else:
        original = _original_of(row, originals)
    if original is None:
        return not_sent(
            transaction_id, CrmcomRejectCode.UNMATCHED_RETURN, f"original {original_id} is unknown"
        )
    if original.total is not None and returned != abs(original.total):
        return not_sent(
            transaction_id,
            CrmcomRejectCode.PARTIAL_RETURN,
            f"returns {returned} of {abs(original.total)}: only whole purchases can be cancelled",
        )
    if sale is not None:
        return PlannedCancel(transaction_id, original_id, None)
    if not original.event_ids:
        return original_not_delivered(transaction_id, original_id)
    return PlannedCancel(transaction_id, original_id, original.event_ids[0])


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
        return Outcome.ALREADY_ACCEPTED
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
    return EventResult(
        transaction_id,
        outcome,
        # a duplicate answer may name the existing purchase; keep it for a later cancel
        event_ids=_event_ids(envelope.data) if outcome is Outcome.ALREADY_ACCEPTED else (),
        error_code=envelope.code,
        error_message=envelope.message or None,
    )


def results_of_bulk(
    transaction_ids: Sequence[str], envelope: Envelope, target: CrmcomTarget
) -> list[EventResult]:
    """Per-transaction results of a ``create_multiple`` answer (processed / unprocessed sets).

    A transaction missing from both sets is retryable: resending it is safe, because a landed
    purchase answers with the duplicate-reference code.
    """
    if not envelope.ok:
        return [result_of(t, envelope, target, cancel=False) for t in transaction_ids]
    data = envelope.data if isinstance(envelope.data, Mapping) else {}
    by_id: dict[str, EventResult] = {}
    unmatched_processed = []
    for entry in data.get("processed_customer_events_set") or ():
        key = entry.get("request_unique_identifier") or entry.get("reference_number")
        if key is None:
            unmatched_processed.append(entry)
            continue
        by_id[str(key)] = EventResult(str(key), Outcome.ACCEPTED, event_ids=_event_ids(entry))
    for entry in data.get("unprocessed_customer_events_set") or ():
        key = str(entry.get("request_unique_identifier"))
        code = str(entry.get("error_code") or entry.get("code") or "ERROR")
        message = str(
            entry.get("error_description") or entry.get("description") or entry.get("message") or ""
        )
        by_id[key] = result_of(key, Envelope(code, message, entry), target, cancel=False)
    # processed entries without an identifier follow the request order of the rest
    remaining = iter(unmatched_processed)
    results = []
    for transaction_id in transaction_ids:
        if transaction_id in by_id:
            results.append(by_id[transaction_id])
            continue
        entry = next(remaining, None)
        if entry is not None:
            results.append(EventResult(transaction_id, Outcome.ACCEPTED, event_ids=_event_ids(entry)))
        else:
            results.append(
                EventResult(
                    transaction_id,
                    Outcome.RETRYABLE,
                    error_code="MISSING_FROM_RESPONSE",
                    error_message="neither processed nor unprocessed in the bulk answer",
                )
            )
    return results


# ---- authentication -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What the token call needs; resolved from the environment or files when the sink is built."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    organisation: str | None = field(default=None, repr=False)
    web_api_key: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, target: CrmcomTarget, resolve_path: Callable[[str], Any] = str) -> Credentials:
        """Read the secrets the target names (raises SecretError when one is missing)."""
        if target.auth == "web_api_key":
            key_file = resolve_path(target.web_api_key_file) if target.web_api_key_file else None
            return cls(
                web_api_key=resolve_secret(
                    env=target.web_api_key_env, file=key_file, what="target.web_api_key_env"
                )
            )
        password_file = resolve_path(target.password_file) if target.password_file else None
        return cls(
            username=resolve_secret(env=target.username_env, what="target.username_env"),
            password=resolve_secret(env=target.password_env, file=password_file, what="target.password_env"),
            organisation=resolve_secret(env=target.organisation_env, what="target.organisation_env"),
        )


class AuthenticationFailed(Exception):
    """The token call failed; ``failure`` says how (the engine decides retry or halt)."""

    def __init__(self, failure: RequestFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class TokenProvider:
    """Obtains a CRM.COM token, reuses it until it expires and renews it on demand.

    ``clock`` is a monotonic clock in seconds (tests pass their own).
    """

    def __init__(
        self, target: CrmcomTarget, credentials: Credentials, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._target = target
        self._credentials = credentials
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.issued = 0  # tokens obtained so far
        self._refused: RequestFailure | None = None

    async def token(self, client: httpx.AsyncClient) -> str:
        """A valid token: the cached one, or a new one when it is (nearly) expired."""
        async with self._lock:
            if self._refused is not None:
                # credentials refused once are refused for this sink: don't hammer the platform
                raise AuthenticationFailed(self._refused)
            if self._token is None or self._clock() >= self._expires_at:
                lifetime = self._target.token_ttl_seconds
                margin = min(self._target.token_renew_margin_seconds, lifetime / 2)
                started = self._clock()
                self._token = await self._obtain(client)
                self._expires_at = started + lifetime - margin
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the platform refused it); the next call obtains a new one."""
        if self._token == token:
            self._token = None

    def _request(self) -> tuple[str, dict[str, str], dict[str, Any]]:
        target, creds = self._target, self._credentials
        headers = {"Content-Type": CONTENT_TYPE}
        body: dict[str, Any] = {}
        if target.auth == "web_api_key":
            basic = base64.b64encode(f"{creds.web_api_key}:".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
            method = "authentication/web_api_key/token"
        else:
            body = {
                "username": creds.username,
                "password": creds.password,
                "organisation": creds.organisation,
            }
            method = "authentication/token"
        if target.unit is not None:
            body["unit"] = target.unit
        return endpoint_url(target, method), headers, body

    async def _obtain(self, client: httpx.AsyncClient) -> str:
        url, headers, body = self._request()
        try:
            response = await client.post(url, content=dumps(body), headers=headers)
        except httpx.TimeoutException as exc:
            raise AuthenticationFailed(
                RequestFailure(None, "timeout", f"token call: {type(exc).__name__}")
            ) from exc
        except httpx.TransportError as exc:
            raise AuthenticationFailed(
                RequestFailure(None, "connection_error", f"token call: {type(exc).__name__}")
            ) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise AuthenticationFailed(
                RequestFailure(
                    response.status_code,
                    f"http_{response.status_code}",
                    f"token call answered HTTP {response.status_code}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            )
        envelope = Envelope.read(response.content, response.status_code)
        token = envelope.data.get("token") if envelope.ok and isinstance(envelope.data, Mapping) else None
        if not token:
            # wrong credentials: 401 makes the engine stop sending for this submission
            self._refused = RequestFailure(
                401, envelope.code or "AUTHENTICATION_FAILED", f"token refused: {envelope.message}"
            )
            raise AuthenticationFailed(self._refused)
        self.issued += 1
        log.info("obtained a CRM.COM token (%s auth)", self._target.auth)
        return str(token)


def endpoint_url(target: CrmcomTarget, method: str) -> str:
    """``{base_url}{path_prefix}/<resource>/<method>``."""
    prefix = target.path_prefix.strip("/")
    return "/".join(part for part in (target.base_url.rstrip("/"), prefix, method.strip("/")) if part)


# ---- the adapter --------------------------------------------------------------------------------------


class CrmcomAdapter:
    """Maps checkouts to CRM.COM requests and CRM.COM answers to outcomes (for the delivery engine).

    Routes: ``single`` (purchases/create), ``bulk`` (create_multiple), ``cancel`` (phase 1, after the
    sales of the same submission settled).
    """

    def __init__(
        self,
        target: CrmcomTarget,
        credentials: Credentials,
        *,
        originals: OriginalLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.tokens = TokenProvider(target, credentials, clock=clock)
        self._originals = originals
        self._token_of: dict[tuple[str, ...], str] = {}
        self._renewed: set[tuple[str, ...]] = set()
        self._created: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"CrmcomAdapter(base_url={self.target.base_url!r}, auth={self.target.auth!r})"

    # ---- plan

    def plan(self, checkouts: Sequence[CheckoutRow]) -> DeliveryPlan:
        """Purchases (bulk or one by one) in phase 0, cancels one by one in phase 1."""
        sales = {
            str(row["transaction_id"]): row
            for row in checkouts
            if (row.get("transaction_type") or TransactionType.SALE) == TransactionType.SALE
        }
        creates: list[Unit] = []
        batches: list[Batch] = []
        unsent: list[EventResult] = []
        for row in checkouts:
            planned = plan_checkout(row, self.target, self._originals, sales)
            if isinstance(planned, PlannedCreate):
                creates.append(Unit(planned.transaction_id, planned.body))
            elif isinstance(planned, PlannedCancel):
                batches.append(Batch((Unit(planned.transaction_id, planned),), route="cancel", phase=1))
            else:
                unsent.append(planned)
        size = self.target.bulk_size
        if size > 1:
            batches[:0] = [
                Batch(tuple(creates[i : i + size]), route="bulk") for i in range(0, len(creates), size)
            ]
        else:
            batches[:0] = [Batch((unit,), route="single") for unit in creates]
        return DeliveryPlan(batches, unsent)

    # ---- request

    def _cancel_target(self, planned: PlannedCancel) -> str | None:
        if planned.event_id is not None:
            return planned.event_id
        created = self._created.get(planned.original_transaction_id)
        return created[0] if created else None

    async def build_request(
        self, batch: Batch, client: httpx.AsyncClient
    ) -> PreparedRequest | RequestFailure | list[EventResult]:
        """One attempt: a token (cached or new) in the body of the route's call."""
        if batch.route == "cancel":
            planned: PlannedCancel = batch.units[0].payload
            event_id = self._cancel_target(planned)
            if event_id is None:
                return [original_not_delivered(planned.transaction_id, planned.original_transaction_id)]
        try:
            token = await self.tokens.token(client)
        except AuthenticationFailed as exc:
            return exc.failure
        self._token_of[tuple(batch.transaction_ids)] = token
        target = self.target
        if batch.route == "cancel":
            method = target.cancel_path
            body: dict[str, Any] = {"token": token, "customer_event_identifier": {"id": event_id}}
        elif batch.route == "bulk":
            method = target.create_multiple_path
            body = {
                "token": token,
                "purchase_customer_events_set": [
                    {"request_unique_identifier": unit.transaction_id, **unit.payload} for unit in batch.units
                ],
            }
        else:
            method = target.create_path
            body = {"token": token, **batch.units[0].payload}
        return PreparedRequest(
            "POST", endpoint_url(target, method), {"Content-Type": CONTENT_TYPE}, dumps(body)
        )

    # ---- response

    def parse_response(
        self, batch: Batch, status: int, headers: httpx.Headers, body: bytes
    ) -> list[EventResult] | RequestFailure:
        """Per-transaction results from the envelope, or a whole-request failure for the engine."""
        key = tuple(batch.transaction_ids)
        token = self._token_of.pop(key, None)
        if status == 429 or status >= 500 or status in (408, 425):
            return RequestFailure(
                status,
                f"http_{status}",
                f"HTTP {status}",
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        envelope = Envelope.read(body, status)
        if envelope.code in self.target.token_error_codes:
            if token is not None:
                self.tokens.invalidate(token)
            if key not in self._renewed:
                self._renewed.add(key)
                return RequestFailure(status, envelope.code, envelope.message, reauthenticate=True)
            return RequestFailure(401, envelope.code, f"refused again after renewal: {envelope.message}")
        if envelope.code == MALFORMED and status >= 400:
            return RequestFailure(status, f"http_{status}", envelope.message)
        if batch.route == "bulk":
            results = results_of_bulk(batch.transaction_ids, envelope, self.target)
        else:
            tid = batch.transaction_ids[0]
            results = [result_of(tid, envelope, self.target, cancel=batch.route == "cancel")]
        if batch.route != "cancel":
            for result in results:
                if result.event_ids and result.outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED):
                    self._created[result.transaction_id] = result.event_ids
        return results


def make_crmcom_sink(
    feed: Feed,
    *,
    client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    originals: OriginalLookup | None = None,
) -> PlatformSink:
    """The CRM.COM sink of a feed; secrets read now from the environment or files it names.

    ``originals`` finds the CRM.COM purchase of a returned transaction in the ledger.
    """
    target = feed.target
    if not isinstance(target, CrmcomTarget):
        raise ConfigError("not a CRM.COM target", key="target.kind")
    credentials = Credentials.resolve(target, feed.resolve_path)
    adapter = CrmcomAdapter(target, credentials, originals=originals, clock=clock)
    return PlatformSink(adapter, DeliveryPolicy.from_target(target), client=client, rng=rng)
