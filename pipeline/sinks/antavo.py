"""The Antavo Events API adapter: batches, signed requests, per-event results.

Members' events go to ``POST /events/bulk`` in batches of up to ``bulk_size`` events and
``max_request_bytes`` bytes of body (a transaction's events never split across requests; one too
large for a request of its own is not sent: ``request_too_large``); guests go one by one to
``POST /events`` (the bulk endpoint refuses guests). Sales are sent before returns so a refund
finds its sale accepted: sales (phase 0), then refunds that may have landed already (phases 1,
2, ...: one per sale at a time), then refunds sent for the first time (a refund whose sale went in
this submission and was not accepted is held back: ``original_not_accepted`` retryable, or
``original_refused`` when the platform refused the sale); members' profile updates
after their opt_ins (phases 1, 2, ...: one per member at a time). A return's shape (whole
``refund``, ``refund_item`` per line, or not sent) is :mod:`pipeline.sinks.antavo_returns`'s
decision.

Refunds exactly once: Antavo has no uniqueness key for refunds. A refund that may have landed (in
doubt from an earlier run, or sent in this submission without a clear answer) is read back from
the platform before anything of it is sent again (:mod:`pipeline.sinks.antavo_readback`): what is
found is settled ALREADY_ACCEPTED (code ``read_back``), only what is not found is sent (refused,
the return is refunded in part: ``partly_refunded``, the money of the lines found counted with
what landed of the rest); a guest's
is held (REJECTED, ``refund_in_doubt``) as a guest's transactions cannot be read. A member's
refund of a sale the ledger does not know is checked against the sale and its refunds as the
platform lists them before it is sent; when the platform does not list the sale either, it has
not arrived yet: the refund waits for it, not sent (``original_not_found``, retryable), instead of
being refused for good (``112201``).

Responses map to outcomes:

=====================================  =====================================
``/events`` 200, bulk ``{"events"}``   ACCEPTED (event ids, points)
error 5003                             ALREADY_ACCEPTED (an earlier send landed)
error 112101 (an ``opt_in`` again)     ALREADY_ACCEPTED (the member exists)
error 127201 (workflow interruption)   ACCEPTED (the event was registered)
any other per-event error              REJECTED (Antavo's code and message)
200 without ``events`` (empty, ...)   in doubt, ``unproven_answer`` (retried)
429, 5xx, 401/403, other whole errors  :class:`RequestFailure` (the engine decides)
=====================================  =====================================
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

from pipeline.config import AntavoTarget
from pipeline.logs import counted, told
from pipeline.records import PROFILE_UPDATE, TransactionType
from pipeline.sinks.antavo_events import (
    NotSent,
    dumps,
    events_for,
    money_number,
    refund_events,
    return_decision,
    sent_number,
)
from pipeline.sinks.antavo_readback import (
    Found,
    PlatformEvent,
    events_in,
    match_refund,
    refunded_lines,
    sale_facts,
    transactions_in,
)
from pipeline.sinks.antavo_returns import OVER_REFUND, REFUND_IN_DOUBT, Line, ReturnDecision, SaleFacts
from pipeline.sinks.base import (
    DRY_RUN_LOOKUP,
    VOIDED_IN_DOUBT,
    CheckoutRow,
    EventResult,
    Outcome,
    sale_not_found,
    voided_not_landed,
)
from pipeline.sinks.delivery import (
    Batch,
    Plan,
    PreparedRequest,
    RequestFailure,
    Unit,
    landed_by_now,
    pack,
    parse_retry_after,
    too_large,
)
from pipeline.sinks.escher import EscherSigner, antavo_config
from pipeline.sinks.http import HttpClient, HttpError, HttpTimeout

__all__ = ["ALREADY_OPTED_IN", "ALREADY_USED", "WORKFLOW_INTERRUPTED", "AntavoAdapter", "member_event",
           "sendable_events"]

ALREADY_USED = "5003"  # "The transaction ID has already been used"
WORKFLOW_INTERRUPTED = "127201"  # InterruptException: registered, a workflow stopped early
ALREADY_OPTED_IN = "112101"  # "Customer has already been opted-in": an earlier opt_in landed
SIGNUP_PENDING = "signup_pending"  # a profile update held back: its member's opt_in was not accepted
# a refund held back: its sale is not accepted (for now, for good), here or in the submit stage
ORIGINAL_NOT_ACCEPTED = "original_not_accepted"
ORIGINAL_REFUSED = "original_refused"
# a refund some of whose lines landed while others were refused for good (their ids are kept)
PARTLY_REFUNDED = "partly_refunded"
# how a partly refunded return's message begins (for people: the reports read the money refunded
# from the result's ``refunded``, which the ledger keeps in a column of its own)
_REFUNDED_HEAD = "partly refunded: the platform refunded {refunded:f} of {total:f}"


CONTENT_TYPE = 'application/json; charset="UTF-8"'
USER_AGENT = "posfeed"

READ_BACK = "read_back"  # the evidence of a refund found on the platform by a read-back
VERIFY = "verify"  # a refund that may have landed: read back, then send what is not there
NEW_REFUNDS = 1_000  # the phase of refunds sent for the first time: after every read-back
BULK_OPEN, BULK_CLOSE = b'{"events":[', b"]}"  # a bulk body around its events, comma-separated


@dataclass(frozen=True)
class _ReadBack:
    """The lines of a return a read-back found landed: their money (a magnitude, in the return's
    currency) and how a message names them; and the lines an earlier read-back of the submission
    matched that went again (the read API behind): the platform holds them."""

    money: Decimal
    text: str
    lines: tuple[Line, ...] = ()
    again: tuple[Line, ...] = ()


@dataclass
class _Refund:
    """A return this adapter sends: its row, its decision, when a request of it last went out."""

    row: CheckoutRow
    decision: ReturnDecision
    since: float | None = None


def _unit(tid: str, events: list[dict[str, Any]]) -> Unit:
    """A transaction's events, encoded once: each event's JSON, comma-separated."""
    return Unit(tid, events, dumps(events[0]) if len(events) == 1 else b",".join(map(dumps, events)))


def _held(tid: str, feed: str, why: str = "a guest's transactions cannot be read back") -> EventResult:
    """A refund that may have landed and cannot be checked: held, for a look (of ``feed``)."""
    return EventResult(
        tid, Outcome.REJECTED, error_code=REFUND_IN_DOUBT,
        error_message=told(f"this refund may have landed and {why}; check the platform, then "
                           f"`posfeed rerun --feed {feed} --failed --include-permanent` sends it again"),
        attempts=0)


def sale_refused(tid: str, sale: str, why: str) -> EventResult:
    """A refund never sent: the platform refused its ``sale`` (named with where it was refused)."""
    return EventResult(tid, Outcome.REJECTED, error_code=ORIGINAL_REFUSED, attempts=0,
                       error_message=f"never sent: the platform refused its sale {sale} ({why}); "
                                     "nothing of it can be refunded")


def sale_not_accepted(tid: str, sale_and_state: str) -> EventResult:
    """A refund not sent yet: its sale (``"<id> <how it stands>"``) is not accepted; it waits for it."""
    return EventResult(tid, Outcome.RETRYABLE, error_code=ORIGINAL_NOT_ACCEPTED, attempts=0,
                       error_message=f"not sent: its sale {sale_and_state}; the refund waits for it")


def sendable_events(row: CheckoutRow, target: AntavoTarget) -> list[dict[str, Any]] | NotSent:
    """The events the Antavo target sends for one checkout row, or why it sends none: a void, an
    unmatched return, an over-refund (with the return context of
    :func:`pipeline.stages.returns.with_return_context`), a guest the target does not send.
    Decided without the platform: a dry run takes the same decision."""
    events = events_for(row, return_mode=target.return_mode, account=target.account)
    if isinstance(events, NotSent):
        return events
    guest = bool(events[0].get("guest"))
    if guest and not target.send_guests:
        return NotSent("guest_not_sent", "guest checkouts are not sent (send_guests)")
    if guest and len(events) > 1:
        return NotSent("guest_multi_event", "a guest refund of several lines cannot be sent one request "
                                            "per transaction; use return_mode = \"refund\"")
    return events


class AntavoAdapter:
    """Maps checkouts to Antavo requests and Antavo answers to outcomes."""

    def __init__(
        self,
        target: AntavoTarget,
        *,
        feed_name: str,
        api_key: str,
        api_secret: str | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.target = target
        self.feed_name = feed_name  # named in the commands its results tell a user to run
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
        self.read_api_url = (target.read_api_url or target.base_url).rstrip("/")
        self._readback_wait = (target.readback_wait_seconds if target.readback_wait_seconds is not None
                               else target.timeout_seconds)
        # members: the opt_ins planned (transaction id -> customer), the customers they signed up,
        # and each profile update's customer (an update waits for its member's opt_in)
        self._opt_ins: dict[str, str] = {}
        self._signed_up: set[str] = set()
        self._updates: dict[str, str] = {}
        # sales planned in this submission, those the platform holds, and those it refused (code)
        self._sales: set[str] = set()
        self._sales_landed: set[str] = set()
        self._sales_refused: dict[str, str | None] = {}
        self._returns: dict[str, _Refund] = {}  # every return planned, by transaction id
        self._sent: set[str] = set()  # refunds that may have landed: read back before sending again
        # refunds of a sale the ledger does not know: checked against the platform's sale first
        self._unchecked: set[str] = set()
        # members' sales that may have landed and that a void names (sale -> the void, and when a
        # request of the sale may have gone out): read, never resent; and what their read found
        self._voided: dict[str, tuple[str, float | None]] = {}
        self._voided_found: dict[str, EventResult] = {}
        self._owner: dict[str, str] = {}  # platform refund event id -> the return it belongs to
        self._owned: dict[str, list[str]] = {}  # return -> its refund event ids, as found or answered
        # return -> the lines its latest read-back found landed (their money counts as refunded)
        self._found: dict[str, _ReadBack] = {}
        # return -> each of its refund events a read-back of this submission matched to one of its
        # lines, and that line. These two are kept while the return is being sent and dropped once
        # it is settled (:meth:`_settled`), so they never hold more than a hand-over's returns
        self._matched: dict[str, dict[str, Line]] = {}
        # a request whose units differ from its batch's: what went out, what was settled instead,
        # and the refunds that may have landed before it (with since when)
        self._inflight: dict[int, tuple[Batch, list[EventResult], dict[str, float | None]]] = {}

    def __repr__(self) -> str:
        return f"AntavoAdapter(base_url={self.base_url!r}, auth={self.target.auth!r})"

    # ---- plan -------------------------------------------------------------------------------------

    def plan(self, checkouts: Sequence[CheckoutRow]) -> Plan:
        """Guests one per request, members in bulk; sales first, then refunds that may have landed
        (read back first, one per sale at a time), then new refunds. A member's profile updates
        go one phase each after the opt_ins (the platform refuses an update of a member it does
        not have yet, and the last update must land last)."""
        self._found.clear()  # every return of an earlier hand-over is settled
        self._matched.clear()
        batches: list[Batch] = []
        unsent: list[EventResult] = []
        members: dict[int, list[Unit]] = {0: []}
        verifying: dict[str, int] = {}
        refunding: dict[str, int] = {}
        updating: dict[str, int] = {}  # a member's profile updates planned so far
        singles: list[Batch] = []
        for row in checkouts:
            tid = str(row["transaction_id"])
            if row.get("record"):  # an enrollment, profile update or claim: one event
                event = member_event(row, account=self.target.account)
                phase = 0
                if row["record"] == PROFILE_UPDATE:  # after the member's opt_in and earlier updates
                    customer = str(row["customer_id"])
                    updating[customer] = phase = updating.get(customer, 0) + 1
                    self._updates[tid] = customer
                elif row["record"] == "enrollment":
                    self._opt_ins[tid] = str(row["customer_id"])
                if row["record"] == "claim" or self.target.bulk_size == 1:
                    singles.append(Batch((_unit(tid, [event]),), route="single", phase=phase))
                else:
                    members.setdefault(phase, []).append(_unit(tid, [event]))
                continue
            is_return = row.get("transaction_type") == TransactionType.RETURN
            if is_return and row.get("in_doubt"):
                unit_or_result = self._in_doubt(tid, row)
                if isinstance(unit_or_result, EventResult):
                    unsent.append(unit_or_result)
                else:
                    original = str(row.get("original_transaction_id"))
                    verifying[original] = verifying.get(original, 0) + 1
                    singles.append(Batch((unit_or_result,), route=VERIFY, phase=verifying[original]))
                continue
            events = sendable_events(row, self.target)
            if isinstance(events, NotSent):
                unsent.append(EventResult(tid, Outcome.NOT_SENT, error_code=events.code,
                                          error_message=events.message, attempts=0))
                continue
            phase = 0
            if row.get("transaction_type") == TransactionType.SALE:
                self._sales.add(tid)
                if row.get("voided_by") and row.get("may_have_landed") and not events[0].get("guest"):
                    self._voided[tid] = (str(row["voided_by"]), row.get("sent_since"))
            if is_return:  # a sale's refunds one after the other: a read-back tells them apart
                original = str(row.get("original_transaction_id"))
                phase = NEW_REFUNDS + refunding.get(original, 0)
                refunding[original] = refunding.get(original, 0) + 1
                self._returns[tid] = _Refund(row, return_decision(row, mode=self.target.return_mode))
                if _sale_unknown(row) and not events[0].get("guest"):
                    self._unchecked.add(tid)
            guest = bool(events[0].get("guest"))
            if guest or (self.target.bulk_size == 1 and len(events) == 1):
                singles.append(Batch((_unit(tid, events),), route="single", phase=phase))
            else:
                members.setdefault(phase, []).append(_unit(tid, events))
        limit = self.target.max_request_bytes
        for batch in singles:  # a single event is its own body; a read-back's may go in bulk
            unit = batch.units[0]
            size = len(unit.body) + (0 if batch.route == "single" else len(BULK_OPEN + BULK_CLOSE))
            if size > limit:
                unsent.append(too_large(unit.transaction_id, size=size, limit=limit))
            else:
                batches.append(batch)
        for phase, units in sorted(members.items()):
            packed, refused = pack(units, route="bulk", phase=phase, max_count=self.target.bulk_size,
                                   max_bytes=limit, overhead=len(BULK_OPEN + BULK_CLOSE),
                                   count=lambda unit: len(unit.payload))
            batches.extend(packed)
            unsent.extend(refused)
        return Plan(batches, unsent)

    def _in_doubt(self, tid: str, row: CheckoutRow) -> Unit | EventResult:
        """A return that may have landed: read back first (a member's), or held (a guest's)."""
        decision = return_decision(row, mode=self.target.return_mode)
        if row.get("is_guest") or not row.get("customer_id"):
            return _held(tid, self.feed_name)
        self._returns[tid] = _Refund(row, decision, since=row.get("sent_since"))
        self._sent.add(tid)
        events = (refund_events(row, decision, account=self.target.account) if decision.sendable
                  else [])
        return _unit(tid, events)

    # ---- request -----------------------------------------------------------------------------------

    def body_of(self, batch: Batch) -> bytes:
        """The exact body bytes of a batch: its units' events as encoded when planned (a unit
        made later, by a read-back, is encoded now)."""
        bodies = [unit.body or _unit(unit.transaction_id, unit.payload).body for unit in batch.units]
        if batch.route == "single":
            return bodies[0]
        return BULK_OPEN + b",".join(bodies) + BULK_CLOSE

    async def build_request(
        self, batch: Batch, client: HttpClient
    ) -> PreparedRequest | RequestFailure | list[EventResult]:
        """Build and sign one attempt; refunds that may have landed are read back first."""
        route, units = batch.route, list(batch.units)
        landed = self._waiting_for_opt_in(units) + self._waiting_for_sale(units)
        if landed:
            units = [unit for unit in units if unit.transaction_id not in {r.transaction_id for r in landed}]
        if any(unit.transaction_id in self._voided for unit in units):
            read = await self._read_voided_sales(units, client)
            if isinstance(read, RequestFailure):
                return read
            landed = landed + read
            units = [unit for unit in units if unit.transaction_id not in self._voided]
        if any(unit.transaction_id in self._unchecked for unit in units):
            checked = await self._check_on_platform(units, client)
            if isinstance(checked, RequestFailure):
                return checked
            found, units = checked
            landed = landed + found
        # refunds that may have landed before this attempt, with when: a refusal of the whole
        # request (nothing of it landed) leaves them so, to be read back again before a resend
        before = {unit.transaction_id: self._returns[unit.transaction_id].since
                  for unit in units if unit.transaction_id in self._sent}
        if before:
            settled = await self._read_back(units, client)
            if isinstance(settled, RequestFailure):
                return settled
            found, units = settled
            landed = landed + found
        empty = [unit for unit in units if not unit.payload]  # nothing left to send of these
        if empty:
            landed = landed + [EventResult(u.transaction_id, Outcome.NOT_SENT,
                                           error_code=self._returns[u.transaction_id].decision.code,
                                           error_message=self._returns[u.transaction_id].decision.message)
                               for u in empty]
            units = [unit for unit in units if unit.payload]
        if not units:
            return self._settled(landed)
        if route == VERIFY or landed:
            route = "single" if route == "single" or (
                len(units) == 1 and len(units[0].payload) == 1 and self.target.bulk_size == 1) else "bulk"
        sent = Batch(tuple(units), route=route, phase=batch.phase)
        if landed or before or route != batch.route or sent.units != batch.units:
            self._inflight[id(batch)] = (sent, landed, before)
        else:
            self._inflight.pop(id(batch), None)
        now = time.time()
        for unit in units:
            if unit.transaction_id in self._returns:
                self._sent.add(unit.transaction_id)
                self._returns[unit.transaction_id].since = now
        request = self._request(sent)
        # the rest of the batch was settled without it (landed, waiting, nothing left to send)
        if sent.units == batch.units:
            return request
        return replace(request, carries=frozenset(sent.transaction_ids))

    def _waiting_for_opt_in(self, units: Sequence[Unit]) -> list[EventResult]:
        """A retryable result, not sent, for each profile update whose member's opt_in went in
        this submission and did not sign them up (Antavo would refuse the update for good:
        160212); the next run sends it once the sign-up is accepted."""
        failed = set(self._opt_ins.values()) - self._signed_up
        return [
            EventResult(unit.transaction_id, Outcome.RETRYABLE, error_code=SIGNUP_PENDING,
                        error_message="not sent: the member's opt_in in this run was not accepted; "
                                      "the update waits for it", attempts=0)
            for unit in units if self._updates.get(unit.transaction_id) in failed
        ]

    def _waiting_for_sale(self, units: Sequence[Unit]) -> list[EventResult]:
        """A result, not sent, for each refund whose sale went in this submission and was not
        accepted (Antavo would refuse the refund for good: 112201): retryable while the sale may
        still be accepted, failed for good with the sale when the platform refused it."""
        held = []
        for unit in units:
            refund = self._returns.get(unit.transaction_id)
            sale = str(refund.row.get("original_transaction_id")) if refund is not None else ""
            if sale not in self._sales or sale in self._sales_landed:
                continue
            if sale in self._sales_refused:
                held.append(sale_refused(unit.transaction_id, f"{sale} in this run",
                                         str(self._sales_refused[sale])))
            else:
                held.append(sale_not_accepted(unit.transaction_id, f"{sale} was not accepted in this run"))
        return held

    def _request(self, batch: Batch) -> PreparedRequest:
        path = "/events" if batch.route == "single" else "/events/bulk"
        url = self.base_url + path
        body = self.body_of(batch)
        headers = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT}
        if self._signer is None:
            url += "?api_key=" + quote(self._api_key, safe="")
            return PreparedRequest("POST", url, headers, body)
        return PreparedRequest("POST", url, self._signer.sign("POST", url, body, headers).headers, body)

    # ---- read-back --------------------------------------------------------------------------------

    async def _read_back(
        self, units: Sequence[Unit], client: HttpClient
    ) -> tuple[list[EventResult], list[Unit]] | RequestFailure:
        """Settle from the platform the units that may have landed: (their results, what to send)."""
        landed: list[EventResult] = []
        to_send: list[Unit] = []
        for unit in units:
            tid = unit.transaction_id
            refund = self._returns.get(tid)
            if tid not in self._sent or refund is None:
                to_send.append(unit)
                continue
            row = refund.row
            if row.get("is_guest") or not row.get("customer_id"):
                landed.append(_held(tid, self.feed_name))
                continue
            await landed_by_now(refund.since, self._readback_wait)
            original = str(row["original_transaction_id"])
            events = await self._platform_refunds(str(row["customer_id"]), original, client)
            if isinstance(events, RequestFailure):
                return events
            if events is None:  # no such sale on the platform: nothing of the refund landed
                if _sale_unknown(row):  # nor in the ledger
                    self._sent.discard(tid)
                    landed.append(sale_not_found(tid, original, _NOT_LISTED))
                    continue
                events = []
            others = {e.event_id for e in events if self._owner.get(e.event_id, tid) != tid}
            others.update(str(e) for e in row.get("claimed_event_ids") or ())
            found = match_refund(refund.decision, events, owned_by_others=others,
                                 own=self._owned.get(tid, ()))
            self._own(tid, found.event_ids)
            self._found[tid] = _found_lines(found.lines, row.get("currency"))
            if len(found.event_ids) == len(found.lines):  # refund_items: one event per line, in order
                self._matched.setdefault(tid, {}).update(zip(found.event_ids, found.lines, strict=True))
            if found.landed:
                landed.append(EventResult(tid, Outcome.ALREADY_ACCEPTED, event_ids=found.event_ids,
                                          error_code=READ_BACK,
                                          error_message=f"found on the platform under {original}"))
            elif found.unsure:
                landed.append(_held(tid, self.feed_name, "a refund event of the sale on the platform that "
                                    "no other return owns cannot be compared with this return"))
            elif not (decided := self._by_the_platform(refund, events, found)).sendable:
                landed.append(EventResult(tid, Outcome.NOT_SENT, error_code=decided.code,
                                          error_message=decided.message))
            else:
                refund.decision = decided
                self._sent.discard(tid)  # read back: what goes out now is sent once
                lines = found.remaining if refund.decision.action == "refund_item" else None
                to_send.append(Unit(tid, refund_events(row, refund.decision, account=self.target.account,
                                                       lines=lines)))
        return landed, to_send

    def voided_unread(self) -> list[EventResult]:
        """What a dry run, which reads nothing, says of the members' sales planned that may have
        landed and that a void names (a real run reads each back, never resends it): never sent,
        as when the read-back does not find it (``voided_in_doubt``, then post-voided)."""
        return [voided_not_landed(tid, void, DRY_RUN_LOOKUP)
                for tid, (void, _) in sorted(self._voided.items())]

    def waiting_unread(self) -> list[EventResult]:
        """What a dry run, which reads nothing, says of the refunds planned whose sale the ledger
        does not know, new or in doubt (a real run checks the first against the platform, and
        reads the second back, first): each waits for its sale, as a real run's does when the
        platform does not list it."""
        unknown = self._unchecked | {tid for tid in self._sent if _sale_unknown(self._returns[tid].row)}
        return [sale_not_found(tid, str(self._returns[tid].row["original_transaction_id"]), _NOT_LISTED)
                for tid in sorted(unknown)]

    async def _check_on_platform(
        self, units: Sequence[Unit], client: HttpClient
    ) -> tuple[list[EventResult], list[Unit]] | RequestFailure:
        """Refunds of a sale the ledger does not know (another scope's, or from before posfeed),
        decided against the sale and its refunds as the platform holds them: (the results of those
        not sent, what to send). A sale the platform does not list has not arrived: the refund
        waits for it (``original_not_found``); one whose lines or refunds cannot be counted is
        left for the platform to judge."""
        results: list[EventResult] = []
        to_send: list[Unit] = []
        for unit in units:
            tid = unit.transaction_id
            if tid not in self._unchecked:
                to_send.append(unit)
                continue
            refund = self._returns[tid]
            original = str(refund.row["original_transaction_id"])
            sale = await self._platform_sale(str(refund.row["customer_id"]), original, client)
            if isinstance(sale, RequestFailure):
                return sale
            if sale == "not listed":  # checked again should this request be tried again
                results.append(sale_not_found(tid, original, _NOT_LISTED))
                continue
            self._unchecked.discard(tid)
            decision = refund.decision
            if sale is not None:
                facts, refunded = sale
                decision = facts.decide(refund.row, [refunded] if refunded else [], self.target.return_mode)
            if not decision.sendable:
                results.append(EventResult(tid, Outcome.NOT_SENT, error_code=decision.code, attempts=0,
                                           error_message=f"{decision.message} (as the platform holds it)"))
                continue
            refund.decision = decision
            to_send.append(Unit(tid, refund_events(refund.row, decision, account=self.target.account)))
        return results, to_send

    async def _read_voided_sales(self, units: Sequence[Unit], client: HttpClient
                                 ) -> list[EventResult] | RequestFailure:
        """The members' sales among ``units`` that may have landed and that a void names, read
        from the platform instead of sent again, no sooner than ``readback_wait_seconds`` after
        their last request may have gone out: listed, accepted as the resend's "already used"
        would settle them; not listed (nor the customer), never sent (``voided_in_doubt``)."""
        results: list[EventResult] = []
        for unit in units:
            tid = unit.transaction_id
            if tid not in self._voided:
                continue
            if tid not in self._voided_found:
                await landed_by_now(self._voided[tid][1], self._readback_wait)
                customer = str(unit.payload[0].get("customer"))
                url = (f"{self.read_api_url}/customers/{quote(customer, safe='')}/transactions"
                       f"?id={quote(tid, safe='')}")
                listing = await self._get(url, client, unknown_customer=True)
                if isinstance(listing, RequestFailure):
                    return listing
                if listing is not None and transactions_in(listing, tid):
                    self._sales_landed.add(tid)
                    self._voided_found[tid] = EventResult(
                        tid, Outcome.ALREADY_ACCEPTED, error_code=READ_BACK, attempts=0,
                        error_message="an earlier request landed: found on the platform")
                else:
                    self._sales_refused[tid] = VOIDED_IN_DOUBT
                    self._voided_found[tid] = voided_not_landed(tid, self._voided[tid][0], "read back")
            results.append(self._voided_found[tid])
        return results

    async def _platform_sale(
        self, customer: str, original: str, client: HttpClient
    ) -> tuple[SaleFacts, tuple[Line, ...]] | RequestFailure | Literal["not listed"] | None:
        """The sale as the platform holds it and the lines its refunds gave back ("not listed":
        the platform does not hold it, or not the customer; None: its lines or refunds cannot be
        counted)."""
        base = f"{self.read_api_url}/customers/{quote(customer, safe='')}/transactions"
        listing = await self._get(f"{base}?id={quote(original, safe='')}", client, unknown_customer=True)
        if isinstance(listing, RequestFailure):
            return listing
        listed = transactions_in(listing, original) if listing is not None else []
        if not listed:
            return "not listed"
        sale = sale_facts(listed[0]) if len(listed) == 1 else None
        if sale is None:
            return None
        events = await self._get(f"{base}/{quote(original, safe='')}/events", client)
        if isinstance(events, RequestFailure):
            return events
        refunded = refunded_lines(events_in(events))
        return None if refunded is None else (sale, refunded)

    def _by_the_platform(self, refund: _Refund, events: Sequence[PlatformEvent], found: Found
                         ) -> ReturnDecision:
        """A refund's decision after its read-back found nothing of it: an over-refund (other returns
        of the sale may have landed) is decided again against the refunds the platform holds, when
        each of them can be counted; any other decision stands."""
        sale = refund.row.get("return_sale")
        if refund.decision.code != OVER_REFUND or found.event_ids or not isinstance(sale, SaleFacts):
            return refund.decision
        held = refunded_lines(events)
        if held is None:
            return refund.decision
        return sale.decide(refund.row, [held] if held else [], self.target.return_mode)

    async def _platform_refunds(
        self, customer: str, original: str, client: HttpClient
    ) -> list[PlatformEvent] | RequestFailure | None:
        """The refund events the platform holds for ``original`` (None: it holds no such sale, or
        not the customer)."""
        base = f"{self.read_api_url}/customers/{quote(customer, safe='')}/transactions"
        listing = await self._get(f"{base}?id={quote(original, safe='')}", client, unknown_customer=True)
        if isinstance(listing, RequestFailure):
            return listing
        if listing is None or not transactions_in(listing, original):
            return None
        events = await self._get(f"{base}/{quote(original, safe='')}/events", client)
        if isinstance(events, RequestFailure):
            return events
        return events_in(events)

    async def _get(self, url: str, client: HttpClient, *, unknown_customer: bool = False) -> Any:
        """A read's JSON, or the failure. ``unknown_customer``: "Customer not found" is None (none
        of their refunds can have landed); any other answer than 200 is a failure, never "not
        there" (a wrong URL must not look like a refund that did not land)."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._signer is None:
            url += ("&" if "?" in url else "?") + "api_key=" + quote(self._api_key, safe="")
        else:
            headers = dict(self._signer.sign("GET", url, b"", headers).headers)
        try:
            reply = await client.request("GET", url, headers=headers)
        except HttpTimeout as exc:
            return RequestFailure(None, "timeout", f"no answer to a read-back in time ({exc.kind})")
        except HttpError as exc:  # its text may hold the URL, whose path names the customer
            return RequestFailure(None, "connection_error", f"read-back: connection failed ({exc.kind})")
        document = _json(reply.body)
        error = _error_of(document) or {}
        if reply.status == 200 and document is not None:
            return document
        if unknown_customer and reply.status == 404 and str(error.get("code")) == CUSTOMER_NOT_FOUND:
            return None
        return RequestFailure(reply.status, str(error.get("code", f"http_{reply.status}")),
                              "read-back: " + str(error.get("message") or f"HTTP {reply.status}"),
                              retry_after=parse_retry_after(reply.headers.get("Retry-After")))

    # ---- response ---------------------------------------------------------------------------------

    def parse_response(
        self, batch: Batch, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[EventResult] | RequestFailure:
        """Per-transaction results, or a whole-request failure for the engine."""
        sent, landed, before = self._inflight.pop(id(batch), (batch, [], {}))
        answer = self._parse(sent, status, headers, body, self._read_backs(sent))
        if isinstance(answer, RequestFailure):
            if answer.status in (401, 403, 413, 415, 429):  # refused whole: nothing of it landed
                self._sent.difference_update(sent.transaction_ids)
                for tid, since in before.items():  # as before this attempt: read back first
                    self._sent.add(tid)
                    self._returns[tid].since = since
            return answer
        results: list[EventResult] = []
        for result in answer:
            tid = result.transaction_id
            if tid in self._opt_ins and result.outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED):
                self._signed_up.add(self._opt_ins[tid])
            if tid in self._sales and result.outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED):
                self._sales_landed.add(tid)
            elif tid in self._sales and result.outcome is Outcome.REJECTED:
                self._sales_refused[tid] = result.error_code
            if tid in self._returns and (result.outcome is Outcome.ACCEPTED or (
                    result.outcome is Outcome.REJECTED and (result.event_ids or self._owned.get(tid)))):
                # some lines may have been found by a read-back and the rest sent now: the result
                # carries every event id of the return (refused, it is refunded in part)
                self._own(tid, result.event_ids)
                result = replace(result, event_ids=tuple(self._owned.get(tid, ())))
                if result.outcome is Outcome.REJECTED and result.error_code != PARTLY_REFUNDED:
                    result = self._refused_after_read_back(result, sent)
            if result.outcome is Outcome.REJECTED:
                self._sent.discard(tid)
            results.append(result)
        return self._settled(results + landed)

    def _read_backs(self, sent: Batch) -> dict[str, _ReadBack]:
        """What read-backs of this submission found of the returns ``sent``: the latest one's lines,
        and the lines an earlier one matched that went again now (each line once)."""
        out = {}
        for tid in sent.transaction_ids:
            found, refund, matched = self._found.get(tid), self._returns.get(tid), self._matched.get(tid)
            if refund is not None and matched:
                again = Counter(_each_once(list(matched.values()), refund.decision.lines))
                again.subtract(found.lines if found is not None else ())
                found = replace(found or _ReadBack(Decimal(0), ""), again=tuple((+again).elements()))
            if found is not None:
                out[tid] = found
        return out

    def _settled(self, results: list[EventResult]) -> list[EventResult]:
        """``results``, after dropping what read-backs found of the returns they settle (a result
        that may be retried keeps it: a later read-back of this submission may list less)."""
        for result in results:
            if result.outcome is not Outcome.RETRYABLE:
                self._found.pop(result.transaction_id, None)
                self._matched.pop(result.transaction_id, None)
        return results

    def _refused_after_read_back(self, result: EventResult, sent: Batch) -> EventResult:
        """A return whose lines sent now were all refused while a read-back of this submission had
        found its refund events (``event_ids``) landed (answered alone, or nothing of it landed now:
        else :func:`_partly_refunded`): refunded in part, the money refunded that of the lines the
        read-backs matched those events to, also when a later read-back no longer listed them (a
        read model behind), each line of the return counted once (two events matched to one line,
        e.g. listed under a new id, refund it once). None, the events only counted, should an event
        match no line."""
        tid = result.transaction_id
        refund = self._returns.get(tid)
        matched = self._matched.get(tid, {})
        lines = [matched[event_id] for event_id in result.event_ids if event_id in matched]
        refused = [event for unit in sent.units if unit.transaction_id == tid for event in unit.payload]
        if refund is None or len(lines) != len(result.event_ids) or not lines or not refused:
            refunded = None
            head = (f"partly refunded: the platform holds {counted(len(result.event_ids), 'refund event')} "
                    "of it (read back) and refused the rest")
        else:
            currency = refund.row.get("currency")
            found = _found_lines(_each_once(lines, refund.decision.lines), currency)
            refunded = found.money
            total = sum((money_number(line.amount, currency) for line in refund.decision.lines), Decimal(0))
            head = (_REFUNDED_HEAD.format(refunded=refunded, total=total)
                    + f" ({found.text}, found on the platform by a read-back) and refused "
                    + ", ".join(_line_text(e) for e in refused))
        return replace(result, error_code=PARTLY_REFUNDED, refunded=refunded,
                       error_message=told(
                           f"{head}: {result.error_code} {result.error_message}; once the cause is "
                           f"fixed, `posfeed rerun --feed {self.feed_name} --failed --include-permanent` "
                           "sends only what was refused"))

    def _own(self, tid: str, event_ids: Sequence[str]) -> None:
        for event_id in event_ids:
            if event_id not in self._owner:
                self._owner[event_id] = tid
                self._owned.setdefault(tid, []).append(event_id)

    def _parse(
        self, batch: Batch, status: int, headers: Mapping[str, str], body: bytes,
        found: Mapping[str, _ReadBack] | None = None,
    ) -> list[EventResult] | RequestFailure:
        document = _json(body)
        if batch.route == "single":
            error = _error_of(document)
            if status == 200 and error is None:
                if _names_events(document):
                    return [_accepted(batch.units[0].transaction_id, [document])]
                return _unproven(status, "the answer has no events")
            if error is not None and _is_event_error(status, error):
                return [_event_error(batch.units[0].transaction_id, error)]
        if batch.route == "bulk" and status == 200:
            results = document.get("results") if isinstance(document, dict) else None
            expected = sum(len(unit.payload) for unit in batch.units)
            if isinstance(results, list) and len(results) == expected:
                return _bulk_results(batch, results, self.feed_name, found or {})
            return _unproven(status, f"the bulk answer has no result per event (expected {expected})")
        error = _error_of(document) or {}
        code = str(error.get("code", f"http_{status}"))
        message = str(error.get("message") or f"HTTP {status}")
        return RequestFailure(status, code if error else f"http_{status}", message,
                              retry_after=parse_retry_after(headers.get("Retry-After")))


CUSTOMER_NOT_FOUND = "160212"
# where a refund's sale was looked for before it waits for it
_NOT_LISTED = "the ledger does not know it and the platform does not list it"


def _sale_unknown(row: CheckoutRow) -> bool:
    """A return the ledger decided (its return context) without knowing its sale."""
    return "return_decision" in row and row.get("return_sale") is None

UNPROVEN = "unproven_answer"  # a 2xx answer that does not say what became of an event


def _names_events(document: Any) -> bool:
    """Whether an answer accounts for its event: an object with an ``events`` list (empty when the
    points are pending), the shape of every success of ``/events`` and of each bulk result."""
    return isinstance(document, dict) and isinstance(document.get("events"), list)


def _unproven(status: int, why: str) -> RequestFailure:
    """A 2xx answer that is no verdict: the events may have landed, so they stay in doubt (a sale
    sent again is refused as already used, a refund is read back before it is sent again)."""
    return RequestFailure(status, UNPROVEN, f"HTTP {status} but {why}: it may have landed")


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


def _bulk_results(batch: Batch, results: list[Any], feed: str,
                  found: Mapping[str, _ReadBack] | None = None) -> list[EventResult]:
    """Each unit's result from its events' results, by position (``found``: what read-backs found
    landed of a return before its remaining lines were sent, counted when it is refunded in part)."""
    out: list[EventResult] = []
    position = 0
    for unit in batch.units:
        entries = results[position : position + len(unit.payload)]
        position += len(unit.payload)
        parts = []
        for entry in entries:
            error = _error_of(entry)
            if error:
                parts.append(_event_error(unit.transaction_id, error))
            elif _names_events(entry):
                parts.append(_accepted(unit.transaction_id, [entry]))
            else:
                parts.append(EventResult(unit.transaction_id, Outcome.RETRYABLE, error_code=UNPROVEN,
                                         error_message="the bulk answer's result of this event is neither "
                                                       "an error nor its events: it may have landed"))
        out.append(_combine(unit.transaction_id, parts, entries, feed, unit.payload,
                            (found or {}).get(unit.transaction_id)))
    return out


def _combine(tid: str, parts: list[EventResult], entries: list[Any], feed: str,
             events: Sequence[dict[str, Any]] = (), found: _ReadBack | None = None) -> EventResult:
    """One transaction's result from its events' results (refund_item: one per line); a refund
    some of whose lines landed (now, or ``found`` by a read-back before) and others were refused is
    :func:`_partly_refunded`."""
    earlier = found is not None and bool(found.text)
    if len(parts) == 1 and not (earlier and parts[0].outcome is Outcome.REJECTED):
        return parts[0]
    for part in parts:  # an event that may have landed keeps the whole return in doubt
        if part.outcome is Outcome.RETRYABLE:
            return part
    landed = [i for i, part in enumerate(parts) if part.outcome is not Outcome.REJECTED]
    for part in parts:
        if part.outcome is Outcome.REJECTED:
            if (landed or earlier) and len(events) == len(parts):
                return _partly_refunded(tid, parts, [entries[i] for i in landed], events, feed, found)
            return part
    if all(part.outcome is Outcome.ALREADY_ACCEPTED for part in parts):
        return parts[0]
    ids, points = _event_facts(entries)
    return EventResult(tid, Outcome.ACCEPTED, event_ids=ids, points=points)


def _found_lines(lines: Sequence[Line], currency: str | None) -> _ReadBack:
    """The money and the text of the lines of a return a read-back found landed (as the ledger
    holds them, each as it was sent: in ``currency``'s units)."""
    amounts = [money_number(line.amount, currency) for line in lines]
    texts = [f"{line.product_id} x{line.quantity.normalize():f} ({amount:f})"
             for line, amount in zip(lines, amounts, strict=True)]
    return _ReadBack(sum(amounts, Decimal(0)), ", ".join(texts), tuple(lines))


def _each_once(lines: Sequence[Line], of: Sequence[Line]) -> list[Line]:
    """``lines`` (matched to refund events), each counted at most as many times as the return
    (``of``) has it: a sub-list of the return's lines, whose money is at most the return's."""
    left = Counter(of)
    kept = []
    for line in lines:
        if left[line] > 0:
            left[line] -= 1
            kept.append(line)
    return kept


def _line_text(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    quantity = sent_number(data.get("quantity")).normalize()
    return f"{data.get('product_id')} x{quantity:f} ({sent_number(data.get('subtotal')):f})"


def _partly_refunded(tid: str, parts: Sequence[EventResult], landed: list[Any],
                     events: Sequence[dict[str, Any]], feed: str, found: _ReadBack | None = None
                     ) -> EventResult:
    """A refund the platform took in part: failed for good (what was refused needs a look), with
    the refund events that landed (their ids and points) and what landed and what was refused, in
    money, in its message (and the rerun of ``feed`` that sends the rest). ``found``: the lines of
    the return a read-back found landed before these events were sent: their money is refunded too,
    as is a refused event's whose line an earlier read-back matched (``found.again``)."""
    ids, points = _event_facts(landed)
    kept = [e for e, part in zip(events, parts, strict=True) if part.outcome is not Outcome.REJECTED]
    refused = [(e, part) for e, part in zip(events, parts, strict=True) if part.outcome is Outcome.REJECTED]
    again = list(found.again) if found is not None else []

    def held(event: dict[str, Any]) -> bool:  # its line is one an earlier read-back matched
        data = event.get("data") or {}
        key = (data.get("product_id"), sent_number(data.get("quantity")), sent_number(data.get("subtotal")))
        line = next((line for line in again if (line.product_id, line.quantity, line.amount) == key), None)
        if line is not None:
            again.remove(line)
        return line is not None

    for event in kept:  # landed again: counted once, as landed now
        held(event)
    earlier = [e for e, _ in refused if held(e)]
    before = found.money if found is not None else Decimal(0)
    refunded = before + sum((sent_number((e.get("data") or {}).get("subtotal")) for e in kept + earlier),
                            Decimal(0))
    total = before + sum((sent_number((e.get("data") or {}).get("subtotal")) for e in events), Decimal(0))
    landed_text = ", ".join(_line_text(e) for e in kept)
    if found is not None and found.text:
        landed_text = (f"{found.text}, found on the platform by a read-back"
                       + (f"; {landed_text}" if kept else ""))
    if earlier:
        landed_text += (("; " if landed_text else "") + ", ".join(_line_text(e) for e in earlier)
                        + ", found on the platform by an earlier read-back")
    return EventResult(
        tid, Outcome.REJECTED, error_code=PARTLY_REFUNDED, event_ids=ids, points=points, refunded=refunded,
        error_message=told(
            _REFUNDED_HEAD.format(refunded=refunded, total=total)
            + f" ({landed_text}) and refused "
            + "; ".join(f"{_line_text(e)}: {part.error_code} {part.error_message}" for e, part in refused)
            + f"; once the cause is fixed, `posfeed rerun --feed {feed} --failed --include-permanent` "
              "sends only what was refused (what landed is read back)"))
