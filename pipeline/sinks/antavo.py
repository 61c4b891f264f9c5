"""The Antavo Events API adapter: batches, signed requests, per-event results.

Members' events go to ``POST /events/bulk`` in batches of up to ``bulk_size`` events (a
transaction's events never split across requests); guests go one by one to ``POST /events`` (the
bulk endpoint refuses guests). Sales are sent before returns (phase 0, then phase 1) so a refund
finds its sale accepted.

Responses map to outcomes:

=====================================  =====================================
``/events`` 200, bulk ``{"events"}``   ACCEPTED (event ids, points)
error 5003                             ALREADY_ACCEPTED (an earlier send landed)
error 112101 (an ``opt_in`` again)     ALREADY_ACCEPTED (the member exists)
error 127201 (workflow interruption)   ACCEPTED (the event was registered)
any other per-event error              REJECTED (Antavo's code and message)
429, 5xx, 401/403, other whole errors  :class:`RequestFailure` (the engine decides)
=====================================  =====================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from pipeline.config import AntavoTarget
from pipeline.records import TransactionType
from pipeline.sinks.antavo_events import NotSent, dumps, events_for
from pipeline.sinks.base import CheckoutRow, EventResult, Outcome
from pipeline.sinks.delivery import Batch, Plan, PreparedRequest, RequestFailure, Unit, parse_retry_after
from pipeline.sinks.escher import EscherSigner, antavo_config
from pipeline.sinks.http import HttpClient

__all__ = ["ALREADY_OPTED_IN", "ALREADY_USED", "WORKFLOW_INTERRUPTED", "AntavoAdapter", "member_event"]

ALREADY_USED = "5003"  # "The transaction ID has already been used"
WORKFLOW_INTERRUPTED = "127201"  # InterruptException: registered, a workflow stopped early
ALREADY_OPTED_IN = "112101"  # "Customer has already been opted-in": an earlier opt_in landed

CONTENT_TYPE = 'application/json; charset="UTF-8"'
USER_AGENT = "posfeed"


class AntavoAdapter:
    """Maps checkouts to Antavo requests and Antavo answers to outcomes."""

    def __init__(
        self,
        target: AntavoTarget,
        *,
        api_key: str,
        api_secret: str | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.target = target
        self.base_url = target.base_url.rstrip("/")
        self._api_key = api_key
        self._signer = (
            EscherSigner(antavo_config(target.region), api_key, api_secret, clock=clock,
                         date_style=target.date_style)
            if target.auth == "signed" and api_secret is not None
            else None
        )
        if target.auth == "signed" and self._signer is None:
            raise ValueError("signed auth needs an API secret")

    def __repr__(self) -> str:
        return f"AntavoAdapter(base_url={self.base_url!r}, auth={self.target.auth!r})"

    # ---- plan -------------------------------------------------------------------------------------

    def plan(self, checkouts: Sequence[CheckoutRow]) -> Plan:
        """Guests one per request, members in bulk; sales first, returns second."""
        batches: list[Batch] = []
        unsent: list[EventResult] = []
        members: dict[int, list[Unit]] = {0: [], 1: []}
        for row in checkouts:
            tid = str(row["transaction_id"])
            if row.get("record"):  # an enrollment, profile update or claim: one event
                event = member_event(row, account=self.target.account)
                if row["record"] == "claim" or self.target.bulk_size == 1:
                    batches.append(Batch((Unit(tid, [event]),), route="single", phase=0))
                else:
                    members[0].append(Unit(tid, [event]))
                continue
            events = events_for(row, return_mode=self.target.return_mode, account=self.target.account)
            if isinstance(events, NotSent):
                unsent.append(EventResult(tid, Outcome.NOT_SENT, error_code=events.code,
                                          error_message=events.message, attempts=0))
                continue
            phase = 1 if row.get("transaction_type") == TransactionType.RETURN else 0
            guest = bool(events[0].get("guest"))
            if guest and not self.target.send_guests:
                unsent.append(EventResult(tid, Outcome.NOT_SENT, error_code="guest_not_sent",
                                          error_message="guest checkouts are not sent (send_guests)",
                                          attempts=0))
            elif guest and len(events) > 1:
                unsent.append(EventResult(
                    tid, Outcome.NOT_SENT, error_code="guest_multi_event",
                    error_message="a guest refund of several lines cannot be sent one request per "
                                  "transaction; use return_mode = \"refund\"", attempts=0))
            elif guest or (self.target.bulk_size == 1 and len(events) == 1):
                batches.append(Batch((Unit(tid, events),), route="single", phase=phase))
            else:
                members[phase].append(Unit(tid, events))
        for phase, units in members.items():
            batches.extend(self._bulk_batches(units, phase))
        return Plan(batches, unsent)

    def _bulk_batches(self, units: list[Unit], phase: int) -> list[Batch]:
        batches: list[Batch] = []
        current: list[Unit] = []
        size = 0
        for unit in units:
            count = len(unit.payload)
            if current and size + count > self.target.bulk_size:
                batches.append(Batch(tuple(current), route="bulk", phase=phase))
                current, size = [], 0
            current.append(unit)
            size += count
        if current:
            batches.append(Batch(tuple(current), route="bulk", phase=phase))
        return batches

    # ---- request -----------------------------------------------------------------------------------

    def body_of(self, batch: Batch) -> bytes:
        """The exact body bytes of a batch."""
        if batch.route == "single":
            return dumps(batch.units[0].payload[0])
        return dumps({"events": [event for unit in batch.units for event in unit.payload]})

    async def build_request(self, batch: Batch, client: HttpClient) -> PreparedRequest:
        """Build and sign one attempt."""
        path = "/events" if batch.route == "single" else "/events/bulk"
        url = self.base_url + path
        body = self.body_of(batch)
        headers = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT}
        if self._signer is None:
            url += "?api_key=" + quote(self._api_key, safe="")
            return PreparedRequest("POST", url, headers, body)
        return PreparedRequest("POST", url, self._signer.sign("POST", url, body, headers).headers, body)

    # ---- response ---------------------------------------------------------------------------------

    def parse_response(
        self, batch: Batch, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[EventResult] | RequestFailure:
        """Per-transaction results, or a whole-request failure for the engine."""
        document = _json(body)
        if batch.route == "single":
            error = _error_of(document)
            if status == 200 and error is None:
                return [_accepted(batch.units[0].transaction_id, [document])]
            if error is not None and _is_event_error(status, error):
                return [_event_error(batch.units[0].transaction_id, error)]
        if batch.route == "bulk" and status == 200:
            results = document.get("results") if isinstance(document, dict) else None
            expected = sum(len(unit.payload) for unit in batch.units)
            if isinstance(results, list) and len(results) == expected:
                return _bulk_results(batch, results)
            return RequestFailure(status, "bad_response",
                                  f"bulk answer has no result per event (expected {expected})")
        error = _error_of(document) or {}
        code = str(error.get("code", f"http_{status}"))
        message = str(error.get("message") or f"HTTP {status}")
        return RequestFailure(status, code if error else f"http_{status}", message,
                              retry_after=parse_retry_after(headers.get("Retry-After")))


CUSTOMER_NOT_FOUND = "160212"


def _is_event_error(status: int, error: dict[str, Any]) -> bool:
    """Whether an error answer judges the event (else the request: wrong URL, too large, ...).

    A 404 is about the event only as "Customer not found"; Antavo's plain "Not Found" (code 0)
    means the URL is wrong, which a rerun with a fixed configuration can still deliver.
    """
    if status in (400, 409, 422):
        return True
    return status == 404 and str(error.get("code")) == CUSTOMER_NOT_FOUND


def _json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_float=Decimal) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


def _error_of(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict):
        return error
    if "code" in document and "message" in document and "events" not in document:
        return document  # the top-level {type, code, message} variant
    return None


def _event_facts(entries: list[Any]) -> tuple[tuple[str, ...], Decimal | None]:
    ids: list[str] = []
    points: Decimal | None = None
    for entry in entries:
        for event in (entry or {}).get("events") or () if isinstance(entry, dict) else ():
            if isinstance(event, dict):
                if event.get("id") is not None:
                    ids.append(str(event["id"]))
                if event.get("points") is not None:
                    points = (points or Decimal(0)) + Decimal(str(event["points"]))
    return tuple(ids), points


def _accepted(tid: str, entries: list[Any]) -> EventResult:
    ids, points = _event_facts(entries)
    return EventResult(tid, Outcome.ACCEPTED, event_ids=ids, points=points)


def member_event(row: CheckoutRow, *, account: str | None) -> dict[str, Any]:
    """The event of an enrollment (``opt_in``), a changed enrollment (``profile``) or a guest
    claim (``checkout_claim``)."""
    if row["record"] == "claim":
        action = "checkout_claim"
        data: dict[str, Any] = {"transaction_id": row["claimed_transaction_id"]}
    else:
        action = "opt_in" if row["record"] == "enrollment" else "profile"
        data = dict(row.get("profile") or {})
        if row.get("store_id"):
            data.setdefault("store", row["store_id"])
    event: dict[str, Any] = {"customer": row["customer_id"], "action": action, "data": data}
    if account:
        event["account"] = account
    return event


def _event_error(tid: str, error: dict[str, Any]) -> EventResult:
    code = str(error.get("code", ""))
    message = str(error.get("message", ""))
    if code in (ALREADY_USED, ALREADY_OPTED_IN):
        return EventResult(tid, Outcome.ALREADY_ACCEPTED, error_code=code, error_message=message)
    if code == WORKFLOW_INTERRUPTED:
        return EventResult(tid, Outcome.ACCEPTED, error_code=code, error_message=message)
    return EventResult(tid, Outcome.REJECTED, error_code=code or None, error_message=message)


def _bulk_results(batch: Batch, results: list[Any]) -> list[EventResult]:
    out: list[EventResult] = []
    position = 0
    for unit in batch.units:
        entries = results[position : position + len(unit.payload)]
        position += len(unit.payload)
        parts = []
        for entry in entries:
            error = _error_of(entry)
            parts.append(_event_error(unit.transaction_id, error) if error else
                         _accepted(unit.transaction_id, [entry]))
        out.append(_combine(unit.transaction_id, parts, entries))
    return out


def _combine(tid: str, parts: list[EventResult], entries: list[Any]) -> EventResult:
    """One transaction's result from its events' results (refund_item: one per line)."""
    if len(parts) == 1:
        return parts[0]
    for part in parts:
        if part.outcome is Outcome.REJECTED:
            return part
    if all(part.outcome is Outcome.ALREADY_ACCEPTED for part in parts):
        return parts[0]
    ids, points = _event_facts(entries)
    return EventResult(tid, Outcome.ACCEPTED, event_ids=ids, points=points)
