"""The emulated CRM.COM Web API v4 (``/crmapi/rest/v2/...``): tokens, purchases, bulk and cancel.

Behaviour (facts the platform does not document are the sandbox's choices, mirrored by the
defaults of :class:`pipeline.config.CrmcomTarget`):

* Answers use the envelope ``{"status": {"code", "message", "description"}, "data"}``. Platform
  errors are HTTP 200 with a code: ``AUTHENTICATION_FAILED``, ``INVALID_TOKEN``, ``TOKEN_EXPIRED``,
  ``DUPLICATE_REFERENCE_NUMBER`` (``data`` names the existing purchase), ``CUSTOMER_NOT_FOUND``,
  ``INVALID_PARAMETERS``, ``NOT_FOUND``, ``ALREADY_CANCELLED``. The rate limit answers HTTP 429
  (``RATE_LIMITED``, with ``Retry-After``), injected server errors HTTP 500 / 503.
* Tokens expire a fixed time after issue (``token_ttl_seconds``; 2 hours like R12+) and do not
  survive a sandbox restart.
* A purchase's ``reference_number`` and its ``external_system_reference_number`` may each be used
  once, a repeat of either answering ``DUPLICATE_REFERENCE_NUMBER`` (R10.1 calls the external one
  "unique"; [A]: CRM.COM documents no refusal; ``CrmcomConfig.unique_reference_numbers = False``
  stores a repeated reference as a second purchase, as a platform without the check would, and
  counts it in ``duplicate_transaction_attempts``).
* ``GET customer_events/purchases/show`` finds a purchase by ``customer_event_identifier`` given
  as ``<key>=<value>`` (``id``, ``number`` or ``external_system_reference_number``), the API's
  GET convention; an unknown one answers ``NOT_FOUND`` ([A]). ``POST customer_events/purchases/list``
  filters by ``accounts_receivable_identifier``, ``submitted_after_date`` / ``submitted_before_date``
  and returns at most ``number_of_results`` (default 50, at most 1000 [A]) purchases, oldest first,
  as a list ([A]: the answer's shape and paging are not documented). Both count ``lookups``.
* ``POST purchases/ad_hoc_return`` ([A]: only its name and purpose are documented) takes a
  purchase-shaped body (customer, business unit, ``performed_on``, ``reference_number``,
  ``products_set`` with positive amounts) and stores the return under the platform name
  ``crmcom_ad_hoc_returns``; no purchase is cancelled.
* ``customer_events/purchases/create_spend`` (R9-R16) creates a purchase with a spend request of
  ``spend_amount``; from R17 ``create`` takes ``requested_spend_amount`` ([A] both names). The
  spend is kept on the purchase (``spend_amount``); a spend of 0 or less is refused (what else a
  spend request rule refuses depends on the platform's configuration).
* A purchase's ``performed_on`` is a date and time as text or integer epoch seconds (the spec
  gives "integer epoch"; posfeed's ``performed_on_format = "epoch"``), stored and shown as sent; a
  negative, fractional, boolean or out-of-range number (past 9999-12-31) answers ``INVALID_PARAMETERS``.
* Cancelling a purchase that is not POSTED answers ``ALREADY_CANCELLED`` and changes nothing.
* A customer id starting with the sandbox's ``unknown_customer_prefix`` is unknown.
* Latency and the rate limit come from the shared :class:`SandboxState` for every call; injected
  faults only hit the purchase calls (token calls are never faulted, so one attempt is one fault
  draw, as for every platform).
  Purchases are stored there under the platform name ``crmcom``, keyed by reference number.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipeline.sandbox.limits import (
    EXACT,
    BodyRefused,
    in_range,
    parse_json,
    plain_number,
    query_once,
    read_body,
)
from pipeline.sandbox.state import ANSWER_LOST, DropConnection, Fault, SandboxState, lost_answer

__all__ = [
    "PLATFORM",
    "PREFIX",
    "CrmcomConfig",
    "CrmcomError",
    "CrmcomPlatform",
    "configure",
    "envelope",
    "routes",
]

PLATFORM = "crmcom"
AD_HOC_RETURNS = "crmcom_ad_hoc_returns"
LIST_DEFAULT_RESULTS = 50
LIST_MAX_RESULTS = 1000  # [A] the sandbox's bound on number_of_results
PREFIX = "/crmapi/rest/v2"
BULK_LIMIT = 1000
BUSINESS_UNIT_FIELDS = (
    "performed_by_unit_identifier",
    "performed_by_tap_identifier",
    "performed_by_business_unit_identifier",
)


@dataclass
class CrmcomConfig:
    """Credentials and token lifetime of the emulated CRM.COM (tests may change them while it runs)."""

    username: str = "posfeed"
    password: str = "sandbox-password"
    organisation: str = "sandbox"
    web_api_key: str = "sandbox-web-api-key"
    token_ttl_seconds: float = 7200.0
    unique_reference_numbers: bool = True  # [A] see the module docstring


class CrmcomError(Exception):
    """An error answer: its status code, message and optional data."""

    def __init__(self, code: str, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


def envelope(data: Any = None, code: str = "OK", message: str = "") -> dict[str, Any]:
    """The CRM.COM answer envelope."""
    return {"status": {"code": code, "message": message, "description": ""}, "data": data}


_DECIMAL_MARK = re.compile(r'"\\u0000D([-+0-9.Ee]+)\\u0000"')


def _dumps(document: Any) -> bytes:
    """JSON with Decimals as exact number literals."""

    def mark(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"\x00D{value}\x00"
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return _DECIMAL_MARK.sub(r"\1", json.dumps(document, default=mark)).encode()


def _answer(document: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(document), status_code=status, headers=headers, media_type="application/json")


def _money(value: Any, name: str) -> Decimal:
    if value is None:
        return Decimal(0)
    if (isinstance(value, bool) or not isinstance(value, int | str | Decimal) or len(str(value)) > 40
            or (isinstance(value, str) and not plain_number(value))):
        raise CrmcomError("INVALID_PARAMETERS", f"{name} is not a number")
    try:
        number = Decimal(str(value))
    except ArithmeticError as exc:
        raise CrmcomError("INVALID_PARAMETERS", f"{name} is not a number") from exc
    if not in_range(number):
        raise CrmcomError("INVALID_PARAMETERS", f"{name} is not a number in range")
    return number


# the last second of 9999-12-31 UTC: the latest moment a date and time can name
_LAST_EPOCH_SECOND = 253_402_300_799


def _performed_on(value: Any) -> str | int:
    """``performed_on``: a date and time as text, or integer epoch seconds (the spec's purchase
    takes "integer epoch"); a negative, fractional, boolean or out-of-range number is refused."""
    if value is None or value == "":
        raise CrmcomError("INVALID_PARAMETERS", "reference_number and performed_on are mandatory")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _LAST_EPOCH_SECOND:
        return value
    raise CrmcomError("INVALID_PARAMETERS", "performed_on must be a date and time or integer epoch seconds")


def _reference(value: Any, name: str) -> str | None:
    """A reference sent as a string or an integer (None when absent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CrmcomError("INVALID_PARAMETERS", f"{name} must be a string")
    return str(value)


def _identifier_value(identifier: Any, name: str) -> str:
    if not isinstance(identifier, Mapping) or len(identifier) != 1:
        raise CrmcomError("INVALID_PARAMETERS", f"{name} must be an object naming one key")
    value = next(iter(identifier.values()))
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CrmcomError("INVALID_PARAMETERS", f"{name} must name a string")
    return str(value)


class ExternalIndex:
    """Where the first purchase of each ``external_system_reference_number`` is stored.

    Built from the stored purchases (so a restart on a state file, a ``load`` or a reset is
    seen: the index follows the store it was built over and is rebuilt when that store was
    replaced or grew behind its back). Callers hold the state's lock.
    """

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._store: dict[str, Any] | None = None
        self._size = 0

    def clear(self) -> None:
        """Forget everything (rebuilt on next use)."""
        self._keys.clear()
        self._store = None
        self._size = 0

    def _current(self, store: dict[str, Any]) -> None:
        if store is self._store and len(store) == self._size:
            return
        self._keys.clear()
        for key, record in store.items():
            external = record.get("external_system_reference_number")
            if external is not None:
                self._keys.setdefault(str(external), key)
        self._store = store
        self._size = len(store)

    def find(self, store: dict[str, Any], external: str) -> dict[str, Any] | None:
        """The first purchase stored with ``external``, or None."""
        self._current(store)
        record = store.get(self._keys.get(external, ""))
        if record is None or record.get("external_system_reference_number") != external:
            return None
        return record

    def add(self, store: dict[str, Any], key: str, external: str | None) -> None:
        """A purchase was just stored under ``key``."""
        if self._store is not store or len(store) != self._size + 1:
            self._current(store)
            return
        self._size += 1
        if external is not None:
            self._keys.setdefault(external, key)


@dataclass
class CrmcomPlatform:
    """Tokens (in memory) and purchases (in the shared state) of the emulated CRM.COM."""

    state: SandboxState
    config: CrmcomConfig = field(default_factory=CrmcomConfig)
    tokens: dict[str, datetime] = field(default_factory=dict)
    _by_id: dict[str, str] = field(default_factory=dict)  # purchase id -> reference number
    _external: ExternalIndex = field(default_factory=ExternalIndex)
    # how often each reference number arrived to be processed (create, bulk entry, ad hoc return):
    # more than once is a resend (faults before processing are not arrivals)
    arrivals: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """Forget tokens and the purchase index (``POST /_sandbox/reset``)."""
        with self.state.lock:
            self.tokens.clear()
            self._by_id.clear()
            self._external.clear()
            self.arrivals.clear()

    # ---- authentication

    def issue_token(self) -> dict[str, Any]:
        """A new token valid for ``token_ttl_seconds`` from now."""
        token = "crm." + uuid.uuid4().hex + uuid.uuid4().hex
        with self.state.lock:
            self.tokens[token] = self.state.clock() + timedelta(seconds=self.config.token_ttl_seconds)
        return {"token": token}

    def login(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``authentication/token``: username, password and organisation."""
        cfg = self.config
        given = (body.get("username"), body.get("password"), body.get("organisation"))
        if given != (cfg.username, cfg.password, cfg.organisation):
            raise CrmcomError("AUTHENTICATION_FAILED", "invalid username, password or organisation")
        return self.issue_token()

    def login_with_key(self, authorization: str | None) -> dict[str, Any]:
        """``authentication/web_api_key/token``: the key as Basic-auth user, empty password."""
        key = None
        if authorization and authorization[:6].lower() == "basic ":
            try:
                key, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                key = None
            else:
                key = key if password == "" else None
        if key != self.config.web_api_key:
            raise CrmcomError("AUTHENTICATION_FAILED", "invalid web API key")
        return self.issue_token()

    def check_token(self, token: Any) -> None:
        """Raise INVALID_TOKEN or TOKEN_EXPIRED unless ``token`` is live."""
        with self.state.lock:
            expires = self.tokens.get(token) if isinstance(token, str) else None
        if expires is None:
            raise CrmcomError("INVALID_TOKEN", "the token is not valid")
        if self.state.clock() >= expires:
            raise CrmcomError("TOKEN_EXPIRED", "the token has expired")

    # ---- purchases

    def _purchase_fields(self, body: Mapping[str, Any]) -> dict[str, Any]:
        reference = _reference(body.get("reference_number"), "reference_number")
        if not reference:
            raise CrmcomError("INVALID_PARAMETERS", "reference_number and performed_on are mandatory")
        performed_on = _performed_on(body.get("performed_on"))
        other = _reference(body.get("external_system_reference_number"), "external_system_reference_number")
        products_set = body.get("products_set") or []
        if not isinstance(products_set, list) or not all(isinstance(p, Mapping) for p in products_set):
            raise CrmcomError("INVALID_PARAMETERS", "products_set must be a list of products")
        customer_identifier = body.get("accounts_receivable_identifier") or body.get(
            "access_token_identifier"
        )
        if customer_identifier is None:
            raise CrmcomError("INVALID_PARAMETERS", "accounts_receivable_identifier is mandatory")
        customer = _identifier_value(customer_identifier, "accounts_receivable_identifier")
        prefix = self.state.config.unknown_customer_prefix
        if prefix and customer.startswith(prefix):
            raise CrmcomError("CUSTOMER_NOT_FOUND", f"no account with identifier {customer}")
        units = [name for name in BUSINESS_UNIT_FIELDS if body.get(name)]
        if len(units) != 1:
            raise CrmcomError("INVALID_PARAMETERS", "exactly one performed_by identifier is required")
        products = []
        for product in products_set:
            net = _money(product.get("net_amount"), "net_amount")
            vat = _money(product.get("vat_amount"), "vat_amount")
            total = _money(product.get("total_amount"), "total_amount")
            with localcontext(EXACT):
                adds_up = net + vat == total
            if not adds_up:
                raise CrmcomError("INVALID_PARAMETERS", "net_amount + vat_amount must equal total_amount")
            identifier = product.get("product_identifier")
            if identifier is not None:
                _identifier_value(identifier, "product_identifier")
            products.append(
                {
                    "product_identifier": identifier,
                    "quantity": _money(product.get("quantity", 1), "quantity"),
                    "net_amount": net,
                    "vat_amount": vat,
                    "total_amount": total,
                }
            )
        spend = body.get("spend_amount", body.get("requested_spend_amount"))
        return {
            "spend_amount": _money(spend, "spend_amount") if spend is not None else None,
            "reference_number": reference,
            "external_system_reference_number": other,
            "customer": customer,
            "business_unit": _identifier_value(body[units[0]], units[0]),
            "business_unit_field": units[0],
            "performed_on": performed_on,
            "items": products,
        }

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``customer_events/purchases/create``: a POSTED purchase, once per reference number."""
        fields = self._purchase_fields(body)
        reference = fields["reference_number"]
        other = fields["external_system_reference_number"]
        state = self.state
        key_of_record = reference
        self.arrivals[reference] += 1
        with state.lock:
            stored = state.transactions.get(PLATFORM, {})
            candidates = [(key, stored.get(key)) for key in {reference, other} - {None}]
            if other is not None:
                candidates.append((other, self._external.find(stored, other)))
            for key, existing in candidates:
                if existing is not None:
                    state.note_duplicate(str(key))
                    if not self.config.unique_reference_numbers:
                        copies = sum(
                            1
                            for r in state.transactions[PLATFORM].values()
                            if r["reference_number"] == reference
                        )
                        key_of_record = f"{reference}#{copies + 1}"
                        break
                    event = existing["events"][0]
                    raise CrmcomError(
                        "DUPLICATE_REFERENCE_NUMBER",
                        f"reference number {key} is already used",
                        {"id": event["id"], "number": event["number"]},
                    )
            spend = fields["spend_amount"]
            if spend is not None and spend <= 0:
                raise CrmcomError("INVALID_PARAMETERS", "the spend amount must be above 0")
            # purchases are never deleted, so the count numbers them uniquely (across restarts too)
            number = len(state.transactions.get(PLATFORM, {})) + 1
            event = {"id": str(uuid.uuid4()).upper(), "number": f"PCE{number:08d}"}
            with localcontext(EXACT):
                totals = {
                    name: sum((p[name] for p in fields["items"]), Decimal(0))
                    for name in ("net_amount", "vat_amount", "total_amount")
                }
            record = {
                "transaction_id": reference,
                **fields,
                "status": "accepted",
                "life_cycle_state": "POSTED",
                "total": totals["total_amount"],
                "net": totals["net_amount"],
                "vat": totals["vat_amount"],
                "events": [{**event, "action": "purchase"}],
                "process_timestamp": state.clock().isoformat(),
            }
            state.put_transaction(PLATFORM, key_of_record, record)
            self._by_id[event["id"]] = key_of_record
            self._external.add(state.transactions[PLATFORM], key_of_record, other)
        state.count("events_accepted")
        return self._public(record)

    def create_spend(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``customer_events/purchases/create_spend`` (R9-R16): the purchase and its spend request, or
        neither ([A]: ``spend_amount`` names the spend)."""
        if body.get("spend_amount") is None:
            raise CrmcomError("INVALID_PARAMETERS", "spend_amount is mandatory")
        return self.create(body)

    def ad_hoc_return(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``purchases/ad_hoc_return``: returned goods without a purchase (see the module docstring)."""
        fields = self._purchase_fields(body)
        if not fields["items"] or any(p["total_amount"] < 0 or p["quantity"] <= 0 for p in fields["items"]):
            raise CrmcomError("INVALID_PARAMETERS", "returned products need positive quantities and amounts")
        reference = fields["reference_number"]
        state = self.state
        self.arrivals[reference] += 1
        with state.lock:
            stored = state.transactions.get(AD_HOC_RETURNS, {})
            key = reference
            if reference in stored:
                state.note_duplicate(reference)
                if self.config.unique_reference_numbers:
                    raise CrmcomError(
                        "DUPLICATE_REFERENCE_NUMBER", f"reference number {reference} is already used"
                    )
                key = (
                    f"{reference}#{sum(1 for r in stored.values() if r['reference_number'] == reference) + 1}"
                )
            event = {"id": str(uuid.uuid4()).upper(), "number": f"AHR{len(stored) + 1:08d}"}
            with localcontext(EXACT):
                total = sum((p["total_amount"] for p in fields["items"]), Decimal(0))
            record = {
                "transaction_id": reference,
                **fields,
                "status": "returned",
                "total": total,
                "events": [{**event, "action": "ad_hoc_return"}],
                "process_timestamp": state.clock().isoformat(),
            }
            state.put_transaction(AD_HOC_RETURNS, key, record)
        state.count("events_accepted")
        return {
            **event,
            "type": "AD_HOC_RETURN",
            "reference_number": reference,
            "total_amount": record["total"],
        }

    def show(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``GET customer_events/purchases/show``: one purchase by id, number or external reference."""
        self.state.count("lookups")
        raw = body.get("customer_event_identifier")
        if isinstance(raw, str) and "=" in raw:
            name, _, value = raw.partition("=")
            identifier: Mapping[str, Any] = {name: value}
        elif isinstance(raw, Mapping) and len(raw) == 1:
            identifier = raw
        else:
            raise CrmcomError("INVALID_PARAMETERS", "customer_event_identifier names one key")
        with self.state.lock:
            if "external_system_reference_number" in identifier:
                wanted = str(identifier["external_system_reference_number"])
                record = self._external.find(self.state.transactions.get(PLATFORM, {}), wanted)
            else:
                record = self._find(identifier)
        if record is None:
            raise CrmcomError("NOT_FOUND", "no such purchase customer event")
        return self._public(record)

    def list(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``customer_events/purchases/list``: a customer's purchases submitted in a time window."""
        self.state.count("lookups")
        customer_identifier = body.get("accounts_receivable_identifier")
        if customer_identifier is None:
            raise CrmcomError("INVALID_PARAMETERS", "accounts_receivable_identifier is mandatory here")
        customer = _identifier_value(customer_identifier, "accounts_receivable_identifier")
        after, before = body.get("submitted_after_date"), body.get("submitted_before_date")
        if any(d is not None and not isinstance(d, str) for d in (after, before)):
            raise CrmcomError("INVALID_PARAMETERS", "submitted dates must be dates and times")
        limit = body.get("number_of_results") or LIST_DEFAULT_RESULTS
        if isinstance(limit, str) and limit.isdecimal() and len(limit) <= 9:
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_MAX_RESULTS:
            raise CrmcomError("INVALID_PARAMETERS", f"number_of_results must be 1 to {LIST_MAX_RESULTS}")
        with self.state.lock:
            records = [
                r
                for r in self.state.transactions.get(PLATFORM, {}).values()
                if r["customer"] == customer
                and (after is None or r["process_timestamp"][:19] >= str(after)[:19])
                and (before is None or r["process_timestamp"][:19] <= str(before)[:19])
            ]
        records.sort(key=lambda r: r["events"][0]["number"])
        return [self._public(r) for r in records[:limit]]

    def create_multiple(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``create_multiple``: processed and unprocessed sets keyed by request_unique_identifier."""
        events = body.get("purchase_customer_events_set")
        if not isinstance(events, list) or not events:
            raise CrmcomError("INVALID_PARAMETERS", "purchase_customer_events_set is mandatory")
        if len(events) > BULK_LIMIT:
            raise CrmcomError("INVALID_PARAMETERS", f"at most {BULK_LIMIT} purchases per call")
        keys = [
            event.get("request_unique_identifier") if isinstance(event, Mapping) else None for event in events
        ]
        if not all(keys):
            raise CrmcomError("INVALID_PARAMETERS", "request_unique_identifier is mandatory")
        processed, unprocessed = [], []
        for key, event in zip(keys, events, strict=True):
            try:
                purchase = self.create(event)
            except CrmcomError as exc:
                entry = {
                    "request_unique_identifier": key,
                    "error_code": exc.code,
                    "error_description": exc.message,
                }
                if exc.code == "DUPLICATE_REFERENCE_NUMBER":
                    entry.update(exc.data)  # the sandbox names the existing purchase
                else:
                    self.state.count("events_rejected")
                unprocessed.append(entry)
            else:
                processed.append(
                    {"request_unique_identifier": key, "id": purchase["id"], "number": purchase["number"]}
                )
        return {"processed_customer_events_set": processed, "unprocessed_customer_events_set": unprocessed}

    def _find(self, identifier: Mapping[str, Any]) -> dict[str, Any] | None:
        transactions = self.state.transactions.get(PLATFORM, {})
        if "id" in identifier:
            record = transactions.get(self._by_id.get(str(identifier["id"]), ""))
            if record is not None and record["events"][0]["id"] == str(identifier["id"]):
                return record
        key, value = (
            ("id", str(identifier["id"])) if "id" in identifier else ("number", str(identifier.get("number")))
        )
        # after a restart the index is empty: search the stored purchases
        return next((r for r in transactions.values() if r["events"][0][key] == value), None)

    def cancel(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``customer_events/purchases/cancel``: only POSTED purchases, by id or number."""
        identifier = body.get("customer_event_identifier")
        if not isinstance(identifier, Mapping) or not identifier:
            raise CrmcomError("INVALID_PARAMETERS", "customer_event_identifier is mandatory")
        state = self.state
        with state.lock:
            record = self._find(identifier)
            if record is None:
                raise CrmcomError("NOT_FOUND", "no such purchase customer event")
            if record["life_cycle_state"] != "POSTED":
                state.note_duplicate(record["transaction_id"])
                raise CrmcomError(
                    "ALREADY_CANCELLED", "only posted purchases can be cancelled", self._public(record)
                )
            updated = {
                **record,
                "status": "cancelled",
                "life_cycle_state": "CANCELLED",
                "cancelled_at": state.clock().isoformat(),
            }
            # stored where it was found: a repeated reference's second purchase is kept apart
            stored = state.transactions[PLATFORM]
            key = next((k for k, r in stored.items() if r is record), record["transaction_id"])
            state.put_transaction(PLATFORM, key, updated)
        state.count("events_accepted")
        return self._public(updated)

    @staticmethod
    def _public(record: Mapping[str, Any]) -> dict[str, Any]:
        """A purchase as the API shows it."""
        event = record["events"][0]
        return {
            "id": event["id"],
            "number": event["number"],
            "type": "PURCHASE",
            "life_cycle_state": record["life_cycle_state"],
            "performed_on": record["performed_on"],
            "reference_number": record["reference_number"],
            "external_system_reference_number": record["external_system_reference_number"],
            "net_amount": record["net"],
            "vat_amount": record["vat"],
            "total_amount": record["total"],
            "spend_amount": record.get("spend_amount"),
            "products_set": record["items"],
        }


# ---- HTTP ------------------------------------------------------------------------------------------

Handler = Callable[[Request, Mapping[str, Any]], Any]


def _endpoint(
    state: SandboxState, platform: CrmcomPlatform, handler: Handler, *, token: bool
) -> Callable[[Request], Awaitable[Any]]:
    async def handle(request: Request) -> Any:
        state.count("requests")
        try:  # the whole request arrives first: one held (``delay``) is stored though its sender died
            raw = await read_body(request, state.config.max_body_bytes, state.config.body_timeout_seconds)
        except BodyRefused as refused:
            return _refused_body(state, refused)
        await state.delay()
        wait = state.admit(PLATFORM)
        if wait is not None:
            headers = (
                {"Retry-After": str(max(1, round(wait + 0.499)))} if state.config.send_retry_after else None
            )
            return _answer(envelope(code="RATE_LIMITED", message="too many requests"), 429, headers)
        try:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if raw and media != "application/json":
                raise BodyRefused(415, "the body must be application/json")
            body = parse_json(raw) if raw else {}
            if not isinstance(body, dict):
                raise BodyRefused(400, "the body must be a JSON object")
            if request.method == "GET":  # GET methods take their parameters in the query
                query = query_once(request)
                if both := sorted(set(body) & set(query)):
                    raise BodyRefused(400, f"{both[0][:40]!r} is given in the query and in the body")
                body = {**body, **query}
        except BodyRefused as refused:
            return _refused_body(state, refused)
        # faults hit the calls that carry transactions; token calls see latency and the limit only
        fault = state.draw_fault() if token else None
        if fault in (Fault.ERROR_500, Fault.ERROR_503):
            status = 500 if fault is Fault.ERROR_500 else 503
            return _answer(envelope(code="INTERNAL_ERROR", message="injected server error"), status)
        if fault is Fault.DROP:
            return DropConnection()
        if fault is Fault.SLOW:
            await state.slow()
        try:
            if token:
                platform.check_token(body.get("token"))
            data = handler(request, body)
        except CrmcomError as exc:
            if exc.code in ("AUTHENTICATION_FAILED", "INVALID_TOKEN", "TOKEN_EXPIRED"):
                state.count("auth_failures")
            elif exc.code in ("INVALID_PARAMETERS", "CUSTOMER_NOT_FOUND", "NOT_FOUND"):
                state.count("events_rejected")
            document = envelope(exc.data, exc.code, exc.message)
        else:
            if fault is Fault.ANSWER_WITHOUT_ID and isinstance(data, dict) and request.url.path.endswith(
                ("/create", "/create_spend")
            ):
                data = {k: v for k, v in data.items() if k != "id"}  # OK, stored, but no id to name it by
            document = envelope(data)
        if fault in ANSWER_LOST:
            if request.url.path.endswith(("/show", "/list")):
                state.count("lost_lookup_answers")  # a lookup changes nothing: no transaction to note
            else:
                state.note_lost(_references(body, document.get("data")))
            return lost_answer(fault)
        return _answer(document)

    return handle


def _refused_body(state: SandboxState, refused: BodyRefused) -> Any:
    """The answer to a body the platform does not take."""
    if refused.status == 503:  # too many bodies held at once: nothing wrong with this one
        return _answer(envelope(code="INTERNAL_ERROR", message=refused.message), 503, {"Retry-After": "1"})
    state.count("bad_requests")
    code = "REQUEST_TIMEOUT" if refused.status == 408 else "INVALID_PARAMETERS"
    return _answer(envelope(code=code, message=f"malformed body: {refused.message}"), refused.status)


def _references(body: Mapping[str, Any], data: Any) -> list[str]:
    """The purchases' reference numbers a request touched (for lost-response bookkeeping); a
    cancel names its purchase only in the answer."""
    events = body.get("purchase_customer_events_set")
    if isinstance(events, list):
        return [str(e.get("reference_number")) for e in events if isinstance(e, Mapping)]
    reference = body.get("reference_number") or (
        data.get("reference_number") if isinstance(data, Mapping) else None
    )
    return [str(reference)] if reference else []


_CONFIG_KEY = "crmcom.config"


def configure(state: SandboxState, config: CrmcomConfig) -> None:
    """Set the CRM.COM credentials and token lifetime of a sandbox, before or after its routes exist."""
    platform = state.platforms.get(PLATFORM)
    if isinstance(platform, CrmcomPlatform):
        platform.config = config
    else:
        state.platforms[_CONFIG_KEY] = config


def routes(state: SandboxState, config: CrmcomConfig | None = None) -> list[BaseRoute]:
    """The CRM.COM routes over ``state``; the platform object is ``state.platforms["crmcom"]``.

    The configuration is ``config``, else the one given to :func:`configure`, else the defaults.
    """
    platform = CrmcomPlatform(state, config or state.platforms.pop(_CONFIG_KEY, None) or CrmcomConfig())
    state.platforms[PLATFORM] = platform

    def route(path: str, handler: Handler, *, token: bool = True, method: str = "POST") -> Route:
        return Route(f"{PREFIX}/{path}", _endpoint(state, platform, handler, token=token), methods=[method])

    return [
        route("authentication/token", lambda _r, body: platform.login(body), token=False),
        route(
            "authentication/web_api_key/token",
            lambda request, _b: platform.login_with_key(request.headers.get("authorization")),
            token=False,
        ),
        route("customer_events/purchases/create", lambda _r, body: platform.create(body)),
        route("customer_events/purchases/create_multiple", lambda _r, body: platform.create_multiple(body)),
        route("customer_events/purchases/cancel", lambda _r, body: platform.cancel(body)),
        route("customer_events/purchases/create_spend", lambda _r, body: platform.create_spend(body)),
        route("customer_events/purchases/show", lambda _r, body: platform.show(body), method="GET"),
        route("customer_events/purchases/list", lambda _r, body: platform.list(body)),
        route("purchases/ad_hoc_return", lambda _r, body: platform.ad_hoc_return(body)),
    ]
