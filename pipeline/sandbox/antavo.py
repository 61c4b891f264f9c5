"""The emulated Antavo Events API: ``POST /events`` and ``POST /events/bulk``.

Per request, in this order: count it, wait the configured latency, the rate limit (429 with the
error envelope and ``Retry-After``), body size (413), content type (415: JSON or form-encoded),
authentication (Escher signature in the reference server's order, or ``?api_key=`` when unsigned
requests are allowed; 401 with code 101021 and the Escher message), body parsing (400), an
injected fault, then each event.

Per event (documented facts first, the sandbox's own choices marked *):

* ``action`` must be known, else 400 203401 "Invalid action: <action>";
* a guest (``"guest": true``) must have no ``customer`` and is refused by the bulk endpoint
  (* 400 code 203409); a non-guest needs ``customer`` (0 "Property customer cannot be empty");
* ``opt_in`` / ``profile`` fields are strings (or null), the consents (``config.profile_flag_fields``)
  true or false: another type is 400 * code 0 (``config.profile_type_error_code``) "Property <name>
  must be a string" / "... must be true or false";
* a customer id starting with the configured unknown prefix is unknown: 404 160212 "Customer not
  found" (except ``opt_in``, which creates customers: once created it is known); every other id
  is known;
* ``checkout`` needs ``transaction_id`` (400 code 0 "Property transaction_id cannot be empty")
  and * ``total``; ``items`` must be a list of objects, and ``points_burned``, ``total_quantity``
  and each item's ``price``, ``quantity``, ``discount``, ``subtotal``, ``points_rewarded`` numbers
  (null allowed; a string written as a JSON number is; else 400 code 0), ``currency`` and ``store``
  strings; a used ``transaction_id`` is 400 5003 "The transaction ID has
  already been used";
  * points = whole currency units of ``total``;
* ``refund`` / ``refund_item`` / ``partial_refund`` of a transaction that is not accepted: 400 112201;
  of another customer's transaction: 400 103902; refunding more than the total: 400 112203;
  * a ``refund_item`` of more units of a product than were bought: 400 112205;
  * a ``refund_item`` of a product named in ``config.refuse_refund_items`` (a test's choice): 400
  112204, while the other events of its request go through (a refund accepted in part).

The read API: ``GET /customers/{id}/transactions[?id=]`` (the transaction read model: ``status``,
``total``, ``items``, ``earned``, ``refunded``, ...) and ``GET
/customers/{id}/transactions/{tx}/events`` (the checkout and every refund event with its ``data``).
* Refund events younger than ``config.read_lag_seconds`` are not listed yet (a read model behind).

``/events`` answers 200 with the customer and ``events``; ``/events/bulk`` answers 200 with
``{"results": [...], "total", "errors"}`` in request order. A bulk has no cap on its events;
other requests are served between every :data:`BULK_STEP` of them.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation, localcontext
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pipeline.sandbox.limits import (
    EXACT,
    MAX_DEPTH,
    BodyRefused,
    check_text,
    in_range,
    parse_json,
    plain_number,
    query_once,
    read_body,
)
from pipeline.sandbox.state import ANSWER_LOST, DropConnection, Fault, SandboxState, jsonable, lost_answer
from pipeline.sinks.escher import EscherError, antavo_config, verify

__all__ = ["KNOWN_ACTIONS", "PLATFORM", "routes"]

PLATFORM = "antavo"

KNOWN_ACTIONS = frozenset({
    "checkout", "checkout_item", "checkout_accept", "checkout_accept_item", "checkout_reject",
    "checkout_update", "checkout_update_item", "checkout_claim", "refund", "refund_item",
    "partial_refund", "opt_in", "opt_out", "profile", "point_add", "point_sub", "point_spend",
    "point_unspend", "reserve_points", "release_points",
})

GUEST_REFUSED = 203409  # sandbox's choice: the code is not documented
UNITS_EXCEEDED = 112205  # sandbox's choice: more units refunded than bought
REFUND_ACTIONS = ("refund", "refund_item", "partial_refund")
REFUSED_ITEM = 112204  # a refund_item of a product of ``config.refuse_refund_items``
ALREADY_OPTED_IN = 112101  # "Customer has already been opted-in."
# a bulk (no cap on its events, as Antavo's) lets other requests in after this many of its events
BULK_STEP = 50
CUSTOMERS = "antavo.customers"  # the members opt_in created (put_record kind)
_OWN_FIELDS = frozenset({"customer", "id", "status", "created_at", "updated_at"})  # not from data


class EventError(Exception):
    """A refused event: HTTP status, Antavo error type, code and message."""

    def __init__(self, status: int, kind: str, code: int, message: str):
        self.status = status
        self.kind = kind
        self.code = code
        self.message = message
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The error envelope."""
        return {"error": {"type": self.kind, "code": self.code, "message": self.message}}


def _bad(message: str, code: int = 0) -> EventError:
    return EventError(400, "BadRequestException", code, message)


def _error_response(status: int, kind: str, code: int, message: str,
                    headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"type": kind, "code": code, "message": message}}, status_code=status,
                        headers=headers)


# ---- body parsing --------------------------------------------------------------------------------

_BRACKETS = re.compile(r"\[([^\]]*)\]")


def parse_form(text: str) -> dict[str, Any]:
    """PHP-style form fields (``data[items][0][product_id]=...``) into nested dicts and lists; a
    field given twice, or percent-encoded bytes that are not UTF-8, are refused (400)."""
    root: dict[str, Any] = {}
    try:
        fields = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError as exc:
        raise BodyRefused(400, f"A form field is not UTF-8 once decoded: {exc.reason}") from exc
    for name, value in fields:
        head = name.split("[", 1)[0]
        path = [head, *_BRACKETS.findall(name[len(head):])]
        if len(path) > MAX_DEPTH:
            raise BodyRefused(400, f"Field {name[:40]!r}… nests deeper than {MAX_DEPTH} levels")
        node = root
        for index, key in enumerate(path):
            last = index == len(path) - 1
            if key == "":
                key = str(len(node))
            if last:
                if key in node:
                    raise BodyRefused(400, f"Field {name[:40]!r} is given twice")
                node[key] = value
            else:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise ValueError(f"field {name!r} conflicts with another field")
    check_text(root)
    return _listify(root)


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        items = {k: _listify(v) for k, v in value.items()}
        if items and all(k.isdigit() for k in items):
            return [items[k] for k in sorted(items, key=int)]
        return items
    return value


def _number(value: Any, name: str) -> Decimal:
    if (isinstance(value, bool) or not isinstance(value, int | str | Decimal) or len(str(value)) > 40
            or (isinstance(value, str) and not plain_number(value))):
        raise _bad(f"Property {name} must be a number")
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise _bad(f"Property {name} must be a number") from exc
    if not number.is_finite():
        raise _bad(f"Property {name} must be a number")
    if not in_range(number):
        raise _bad(f"Property {name} is out of range")
    return number


def _transaction_id(data: dict[str, Any]) -> str:
    """The event's ``transaction_id``: present, not empty, and a valid identifier."""
    tid = data.get("transaction_id")
    if tid is None or str(tid) == "":
        raise _bad("Property transaction_id cannot be empty")
    return _identifier(tid, "transaction_id")


def _identifier(value: Any, name: str) -> str:
    """An id sent as a string or an integer."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _bad(f"Property {name} must be a string")
    return str(value)


_ITEM_NUMBERS = ("price", "quantity", "discount", "subtotal", "points_rewarded")


def _items(items: Any) -> list[dict[str, Any]]:
    """A checkout's ``items``: a list of objects whose numbers are numbers (§1.4.1; null allowed)."""
    if not isinstance(items, list):
        raise _bad("Property items must be a list")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(f"Property items[{index}] must be an object")
        if item.get("product_id") is not None:
            _identifier(item["product_id"], f"items[{index}].product_id")
        for name in _ITEM_NUMBERS:
            if item.get(name) is not None:
                _number(item[name], f"items[{index}].{name}")
    return items


def _timestamp(value: Any) -> datetime:
    seconds = _number(value, "effective_timestamp")
    try:
        return datetime.fromtimestamp(int(seconds), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise _bad("Property effective_timestamp is out of range") from exc


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1")) or value == 1


def _unknown(state: SandboxState, customer: str) -> bool:
    """* A customer id with the unknown prefix is unknown until an ``opt_in`` creates it."""
    prefix = state.config.unknown_customer_prefix
    if not prefix or not customer.startswith(prefix):
        return False
    return state.get_record(CUSTOMERS, customer) is None


def _points(amount: Decimal) -> int:
    return int(amount.to_integral_value(rounding=ROUND_FLOOR)) if amount > 0 else 0


# ---- the platform ---------------------------------------------------------------------------------


class AntavoPlatform:
    """Event processing against the shared sandbox state."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.customers: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)  # event ids differ across restarts

    def _event_id(self) -> str:
        # 24 hex digits like Antavo's (MongoDB ObjectId style) event ids
        return f"{self._id_prefix}{next(self._ids):016x}"

    def process(self, event: Any, *, in_bulk: bool) -> tuple[int, dict[str, Any]]:
        """Process one event: (HTTP status for /events, answer or error envelope)."""
        try:
            answer = self._process(event, in_bulk=in_bulk)
        except EventError as error:
            self.state.count("events_rejected")
            return error.status, error.body()
        self.state.count("events_accepted")
        return 200, answer

    def _process(self, event: Any, *, in_bulk: bool) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise _bad("Event must be an object")
        action = event.get("action")
        if not action:
            raise _bad("Property action cannot be empty")
        if not isinstance(action, str) or action not in KNOWN_ACTIONS:
            raise _bad(f"Invalid action: {action}", 203401)
        guest = _truthy(event.get("guest"))
        customer = event.get("customer")
        if guest and in_bulk:
            raise _bad("Guest events are not supported by the bulk endpoint; "
                       "send them one by one to /events", GUEST_REFUSED)
        if guest and customer:
            raise _bad("A guest event cannot have a customer", GUEST_REFUSED)
        if not guest and not customer:
            raise _bad("Property customer cannot be empty")
        if customer:
            customer = _identifier(customer, "customer")
        if customer and action != "opt_in" and _unknown(self.state, customer):
            raise EventError(404, "NotFoundException", 160212, "Customer not found")
        data = event.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise _bad("Property data must be an object")
        customer_id = str(customer) if customer else None
        if action == "checkout":
            events = self._checkout(customer_id, event, data)
        elif action in ("opt_in", "profile") and customer_id is not None:
            events = self._member(customer_id, action, data)
        elif action == "checkout_claim" and customer_id is not None:
            events = self._claim(customer_id, data)
        elif action in REFUND_ACTIONS:
            events = self._refund(customer_id, action, data)
        else:
            events = [{"id": self._event_id(), "action": action, "points": 0}]
        if customer_id is None:
            return {"events": events}
        with self.state.lock:
            score = self.customers.get(customer_id, 0) + sum(e["points"] for e in events)
            self.customers[customer_id] = score
        return {"id": customer_id, "status": "active", "score": score, "events": events}

    def _checkout(self, customer: str | None, event: dict[str, Any], data: dict[str, Any]
                  ) -> list[dict[str, Any]]:
        tid = _transaction_id(data)
        if data.get("total") is None:
            raise _bad("Property total cannot be empty")
        total = _number(data["total"], "total")
        items = _items(data.get("items") or [])
        for name in ("points_burned", "total_quantity"):
            if data.get(name) is not None:
                _number(data[name], name)
        for name in ("currency", "store"):  # strings (§1.4.1), stored as they come
            if data.get(name) is not None and not isinstance(data[name], str):
                raise _bad(f"Property {name} must be a string")
        now = self.state.clock()
        effective = data.get("effective_timestamp")
        timestamp = _timestamp(effective) if effective is not None else now
        points = _points(total)
        events = [{"id": self._event_id(), "action": "checkout", "points": points}]
        record = {
            "transaction_id": tid,
            "customer": customer,
            "guest": customer is None,
            "account": event.get("account"),
            "status": "accepted",
            "total": total,
            "currency": data.get("currency"),
            "store": data.get("store"),
            "points_burned": data.get("points_burned"),
            "effective_timestamp": effective,
            "timestamp": timestamp.isoformat(),
            "process_timestamp": now.isoformat(),
            "items": items,
            "events": list(events),
            "earned": points,
            "refunded": Decimal(0),
            "refunds": [],
        }
        with self.state.lock:
            if self.state.get_transaction(PLATFORM, tid) is not None:
                self.state.note_duplicate(tid)
                raise _bad("The transaction ID has already been used", 5003)
            self.state.put_transaction(PLATFORM, tid, record)
        return events

    def _member(self, customer: str, action: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """``opt_in`` creates the customer (again: 112101); ``profile`` updates its fields, never
        the customer's own (``id``, ``status``, ``created_at``, ``updated_at``: ignored); an
        email with an empty label (``a@b..org``) is refused, the address named in the message."""
        data = _profile_fields(data, self.state.config.profile_flag_fields,
                               self.state.config.profile_type_error_code)
        email = data.get("email")
        if isinstance(email, str) and (".." in email or email.endswith(".")):
            raise _bad(f"Invalid email address: {email}", 0)
        with self.state.lock:
            known = self.state.get_record(CUSTOMERS, customer)
            if action == "opt_in" and known is not None:
                raise _bad("Customer has already been opted-in.", ALREADY_OPTED_IN)
            if action == "profile" and known is None:
                raise EventError(404, "NotFoundException", 160212, "Customer not found")
            now = self.state.clock().isoformat()
            record = {**(known or {"id": customer, "created_at": now, "status": "active"}),
                      **{k: v for k, v in data.items() if k not in _OWN_FIELDS}, "updated_at": now}
            self.state.put_record(CUSTOMERS, customer, record)
        return [{"id": self._event_id(), "action": action, "points": 0}]

    def _claim(self, customer: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """``checkout_claim`` moves a guest transaction to the member. A repeat by the member who
        owns it answers as the first claim did (it changes nothing); a transaction of another
        member is refused (103902), an unknown one too (112201)."""
        tid = _transaction_id(data)
        with self.state.lock:
            record = self.state.get_transaction(PLATFORM, tid)
            if record is None:
                raise _bad("Transaction not found", 112201)
            if record["customer"] is not None and record["customer"] != customer:
                raise EventError(400, "BadRequestException", 103902,
                                 "Customer does not match transaction owner")
            event = {"id": self._event_id(), "action": "checkout_claim", "points": record["earned"]}
            if record["customer"] is None:
                self.state.put_transaction(PLATFORM, tid, {
                    **record, "customer": customer, "guest": False, "claimed": True,
                    "events": [*record["events"], event]})
            else:
                event["points"] = 0
                self.state.count("repeated_claims")
        return [event]

    def _refund(self, customer: str | None, action: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        tid = _transaction_id(data)
        with self.state.lock, localcontext(EXACT):
            record = self.state.get_transaction(PLATFORM, tid)
            if record is None or record["status"] != "accepted":
                raise _bad("Only accepted transactions can be refunded", 112201)
            if record["customer"] != customer:
                raise EventError(400, "BadRequestException", 103902,
                                 "Customer does not match transaction owner")
            remaining = record["total"] - record["refunded"]
            if action == "refund":
                amount = remaining
            elif action == "refund_item":
                if not data.get("product_id"):
                    raise _bad("Property product_id cannot be empty")
                product = _identifier(data["product_id"], "product_id")
                amount = _number(data.get("subtotal", 0), "subtotal")
                if product in self.state.config.refuse_refund_items:
                    raise _bad("Amount for refund is greater the purchase total of the customer",
                               REFUSED_ITEM)
                _check_units(record, product, _number(data.get("quantity", 1), "quantity"))
            else:
                amount = _number(data.get("amount"), "amount")
            if amount <= 0 and action != "refund":
                raise _bad("Amount should be a positive number", 112202)
            if amount > remaining:
                raise _bad("Amount for refund is greater than transaction total", 112203)
            points = -min(_points(amount), record["earned"])
            event = {"id": self._event_id(), "action": action, "points": points}
            kept = {**event, "data": {k: data[k] for k in ("transaction_id", "product_id", "quantity",
                                                             "subtotal", "amount") if k in data},
                    "timestamp": self.state.clock().isoformat()}
            refunded = record["refunded"] + amount
            updated = {
                **record,
                "refunded": refunded,
                "status": "refunded" if refunded >= record["total"] else "accepted",
                "refunds": [*record["refunds"], {
                    "action": action, "amount": amount, "event_id": event["id"],
                    **{k: data[k] for k in ("product_id", "quantity") if k in data}}],
                "events": [*record["events"], kept],
            }
            self.state.put_transaction(PLATFORM, str(tid), updated)
        return [event]


def _profile_fields(data: dict[str, Any], flags: tuple[str, ...], code: int) -> dict[str, Any]:
    """* The fields of an ``opt_in`` / ``profile``, each of its type: a string (or null), true or
    false for the ``flags`` (a form-encoded ``true`` / ``false`` / ``1`` / ``0`` too, kept as a
    boolean); another type is refused (400 ``code``), naming the field, never its value."""
    checked: dict[str, Any] = {}
    for name, value in data.items():
        if name in _OWN_FIELDS or value is None:
            checked[name] = value
        elif name in flags:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                value = value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise _bad(f"Property {name[:80]} must be true or false", code)
            checked[name] = value
        elif isinstance(value, str):
            checked[name] = value
        else:
            raise _bad(f"Property {name[:80]} must be a string", code)
    return checked


def _check_units(record: dict[str, Any], product: str, quantity: Decimal) -> None:
    """* A refund_item of more units of a product than the transaction bought (its earlier
    refund_items counted) is refused: 400 112205 (the sandbox's code)."""
    if quantity <= 0:
        raise _bad("Quantity should be a positive number", 112202)
    if not record["items"]:
        return  # a transaction without items has only its total to check
    bought = sum((_number(item.get("quantity", 0), "quantity") for item in record["items"]
                  if isinstance(item, dict) and str(item.get("product_id")) == product), Decimal(0))
    back = sum((_number(r.get("quantity", 0), "quantity") for r in record["refunds"]
                if r.get("action") == "refund_item" and str(r.get("product_id")) == product), Decimal(0))
    if back + quantity > bought:
        raise _bad(f"Quantity for refund is greater than the purchased quantity of product {product}",
                   UNITS_EXCEEDED)


# ---- the read API ------------------------------------------------------------------------------------


def _transaction_view(record: dict[str, Any]) -> dict[str, Any]:
    """A stored transaction as the transaction read model shows it."""
    return {
        "id": record["transaction_id"],
        "status": record["status"],
        "created_at": record["process_timestamp"],
        "updated_at": record.get("updated_at", record["process_timestamp"]),
        "total": record["total"],
        "currency": record.get("currency"),
        "items": [{k: item.get(k) for k in ("product_id", "quantity", "subtotal")}
                  for item in record["items"] if isinstance(item, dict)],
        "earned": record["earned"],
        "burned": record.get("points_burned") or 0,
        "bonus": 0,
        "refunded": record["refunded"],
    }


def _caught_up(state: SandboxState, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A transaction's events as the read model shows them: without the refund events younger
    than ``config.read_lag_seconds``."""
    lag = state.config.read_lag_seconds
    if lag <= 0:
        return events
    cutoff = state.clock() - timedelta(seconds=lag)
    return [event for event in events if event.get("action") not in REFUND_ACTIONS
            or datetime.fromisoformat(str(event["timestamp"])) <= cutoff]


def _reader(state: SandboxState, *, events: bool) -> Callable[[Request], Awaitable[Response]]:
    """``GET /customers/{customer}/transactions[?id=]`` and ``.../transactions/{tx}/events``.

    * The answers are ``{"transactions": [...], "total"}`` and ``{"events": [...], "total"}`` (the
      envelope is the sandbox's choice); a transaction of another customer is not listed, and
      its events are 404 (code 0, "Transaction not found").
    """
    async def read(request: Request) -> Response:
        state.count("requests")
        await state.delay()
        wait = state.admit(PLATFORM)
        if wait is not None:
            return _error_response(429, "TooManyRequestsException", 429, "Too many requests",
                                   {"Retry-After": str(max(1, round(wait + 0.499)))})
        refused = _authenticate(state, request, b"")
        if refused is not None:
            return refused
        fault = state.draw_fault()
        if fault in (Fault.ERROR_500, Fault.ERROR_503):
            status = 500 if fault is Fault.ERROR_500 else 503
            return _error_response(status, "ServerException", status, "Injected server error")
        if fault in (Fault.DROP, Fault.LOST_RESPONSE):
            return DropConnection()
        customer = request.path_params["customer"]
        if _unknown(state, customer):
            return _error_response(404, "NotFoundException", 160212, "Customer not found")
        with state.lock:
            owned = [record for record in state.transactions.get(PLATFORM, {}).values()
                     if record.get("customer") == customer]
        if events:
            tid = request.path_params["tx"]
            record = next((r for r in owned if str(r["transaction_id"]) == tid), None)
            if record is None:
                return _error_response(404, "NotFoundException", 0, "Transaction not found")
            listed = [{**event, "transaction_id": tid} for event in _caught_up(state, record["events"])]
            return JSONResponse(jsonable({"events": listed, "total": len(listed)}))
        try:
            wanted = query_once(request).get("id")
        except BodyRefused as ambiguous:
            state.count("bad_requests")
            return _error_response(ambiguous.status, "BadRequestException", 0, ambiguous.message)
        views = [_transaction_view(r) for r in owned if wanted is None or str(r["transaction_id"]) == wanted]
        return JSONResponse(jsonable({"transactions": views, "total": len(views)}))

    return read


# ---- HTTP ------------------------------------------------------------------------------------------


def _transaction_ids(document: Any) -> list[str]:
    events = document.get("events") if isinstance(document, dict) and "events" in document else [document]
    ids = []
    for event in events if isinstance(events, list) else []:
        data = event.get("data") if isinstance(event, dict) else None
        if isinstance(data, dict) and data.get("transaction_id") is not None:
            ids.append(str(data["transaction_id"]))
    return ids


def _raw_path(request: Request) -> str:
    """The path exactly as sent (the signature covers it before any decoding)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else request.url.path


def _authenticate(state: SandboxState, request: Request, body: bytes) -> Response | None:
    config = state.config
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    query = request.scope.get("query_string", b"").decode("latin-1")
    if any(name.lower() == "authorization" for name, _ in headers):
        try:
            verify(antavo_config(config.region, clock_skew_seconds=config.clock_skew_seconds),
                   {config.api_key: config.api_secret}, request.method, _raw_path(request), query,
                   headers, body, state.clock())
            return None
        except EscherError as error:
            message = error.message
    elif config.allow_api_key and parse_qs(query).get("api_key") == [config.api_key]:
        return None
    elif "api_key" in parse_qs(query):
        message = "Invalid API key" if config.allow_api_key else "Request signature is required"
    else:
        message = "Could not parse auth header"
    state.count("auth_failures")
    return _error_response(401, "UnauthorizedException", 101021, message)


def _handler(state: SandboxState, platform: AntavoPlatform, *, bulk: bool
             ) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        state.count("requests")
        try:  # the whole request arrives first: one held (``delay``) is stored though its sender died
            body = await read_body(request, state.config.max_body_bytes, state.config.body_timeout_seconds)
        except BodyRefused as limit:
            if limit.status == 503:  # too many bodies held at once: nothing wrong with this one
                return _error_response(503, "ServerException", 503, limit.message, {"Retry-After": "1"})
            state.count("bad_requests")
            return _error_response(limit.status, "BadRequestException", 0, limit.message)
        await state.delay()
        wait = state.admit(PLATFORM)
        if wait is not None:
            headers = {"Retry-After": str(max(1, round(wait + 0.499)))} if state.config.send_retry_after \
                else None
            return _error_response(429, "TooManyRequestsException", 429, "Too many requests", headers)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("application/json", "application/x-www-form-urlencoded"):
            state.count("bad_requests")
            return _error_response(415, "BadRequestException", 0,
                                   "Content-Type must be application/json or "
                                   "application/x-www-form-urlencoded")
        refused = _authenticate(state, request, body)
        if refused is not None:
            return refused
        try:
            document = parse_json(body) if media == "application/json" else parse_form(body.decode())
        except BodyRefused as limit:
            state.count("bad_requests")
            return _error_response(limit.status, "BadRequestException", 0, limit.message)
        except (ValueError, UnicodeDecodeError) as exc:
            state.count("bad_requests")
            return _error_response(400, "BadRequestException", 0, f"Malformed request body: {exc}")
        if bulk and (not isinstance(document, dict) or not isinstance(document.get("events"), list)):
            state.count("bad_requests")
            return _error_response(400, "BadRequestException", 0, "Property events cannot be empty")
        fault = state.draw_fault()
        if fault in (Fault.ERROR_500, Fault.ERROR_503):
            status = 500 if fault is Fault.ERROR_500 else 503
            return _error_response(status, "ServerException", status, "Injected server error")
        if fault is Fault.DROP:
            return DropConnection()
        if fault is Fault.SLOW:
            await state.slow()
        if bulk:
            results = []
            errors = 0
            for position, event in enumerate(document["events"]):
                if position and position % BULK_STEP == 0:
                    await asyncio.sleep(0)  # let the other clients in between (a bulk has no cap)
                _, answer = platform.process(event, in_bulk=True)
                errors += "error" in answer
                results.append(answer)
            status, answer = 200, {"results": results, "total": len(results), "errors": errors}
        else:
            status, answer = platform.process(document, in_bulk=False)
        if fault in ANSWER_LOST:
            state.note_lost(_transaction_ids(document))
            return lost_answer(fault)
        return JSONResponse(answer, status_code=status)

    return handle


def routes(state: SandboxState) -> list[BaseRoute]:
    """The Antavo Events API routes over ``state``."""
    platform = AntavoPlatform(state)
    state.platforms[PLATFORM] = platform

    async def customers(request: Request) -> Response:
        listing = [jsonable(record) for record in state.records(CUSTOMERS).values()]
        return JSONResponse({"count": len(listing), "customers": listing})

    return [
        Route("/_sandbox/customers", customers, methods=["GET"]),
        Route("/events", _handler(state, platform, bulk=False), methods=["POST"]),
        Route("/events/bulk", _handler(state, platform, bulk=True), methods=["POST"]),
        Route("/customers/{customer}/transactions", _reader(state, events=False), methods=["GET"]),
        Route("/customers/{customer}/transactions/{tx}/events", _reader(state, events=True),
              methods=["GET"]),
    ]

