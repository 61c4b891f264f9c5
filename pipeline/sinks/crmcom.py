"""The CRM.COM target: checkouts become purchase customer events of the Web API v4 (`crmapi/rest/v2`).

* A sale with a customer becomes ``customer_events/purchases/create`` (or, with ``bulk_size > 1``,
  one ``create_multiple`` call of up to 1,000 purchases, each tagged with ``request_unique_identifier``
  = the transaction id); points burned at the till ride along as a spend (``create_spend`` before
  R17). ``reference_number`` and ``external_system_reference_number`` are the transaction id, which
  is what a lookup (:mod:`pipeline.sinks.crmcom_lookup`) finds it by.
* A return is checked against its sale (:mod:`pipeline.sinks.crmcom_returns`): a whole one becomes
  ``customer_events/purchases/cancel`` of the sale's purchase, a partial one an ad hoc return; one
  that does not fit, guests, unmatched returns and voids are reported as :attr:`Outcome.NOT_SENT`
  with a target-level code (:class:`CrmcomRejectCode`, ``ReturnCode``).
* What may have landed (in doubt in the ledger, or sent without a definite answer) is looked up
  before it is sent again (``target.in_doubt``), purchase by purchase even in bulk calls; a sale
  adopts only the purchase matching it (``pick_purchase``, as a cancel picks its purchase).
* Every call carries a token from ``authentication/token`` (username, password, organisation) or
  ``authentication/web_api_key/token`` (the Web API key as the Basic-auth user). The token is reused
  until it expires and renewed transparently; a call refused for an expired or invalid token is
  retried once with a new token.
* Answers come in the envelope ``{"status": {"code": "OK", ...}, "data": {...}}``; a non-OK code is
  classified by the target's settings (duplicate, token, retryable codes) into the shared outcomes.

The mapping and the reading of answers are pure (:mod:`pipeline.sinks.crmcom_purchases`); this
module adds authentication, the lookups and the adapter. Rate limit, concurrency and retries are
the delivery engine's (:mod:`pipeline.sinks.delivery`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pipeline.config import CrmcomTarget, Feed, resolve_secret
from pipeline.errors import ConfigError
from pipeline.logs import forget_secret, register_secret
from pipeline.records import TransactionType
from pipeline.sinks.base import DRY_RUN_LOOKUP, CheckoutRow, EventResult, Outcome, voided_not_landed
from pipeline.sinks.crmcom_lookup import (
    Ambiguous,
    Answer,
    LookupResult,
    TokenRefused,
    look_up,
    lookup_method,
    pick_purchase,
)
from pipeline.sinks.crmcom_purchases import (
    CONFLICTING,
    CONTENT_TYPE,
    MALFORMED,
    MISSING,
    CrmcomRejectCode,
    Envelope,
    OriginalLookup,
    OriginalPurchase,
    PlannedAdHocReturn,
    PlannedCancel,
    PlannedCreate,
    Planner,
    SaleFacts,
    business_unit_field,
    dumps,
    original_not_delivered,
    original_refused,
    result_of,
    results_of_bulk,
    sale_facts,
)
from pipeline.sinks.delivery import (
    Batch,
    DeliveryPolicy,
    PlatformSink,
    PreparedRequest,
    RequestFailure,
    Unit,
    landed_by_now,
    pack,
    parse_retry_after,
    too_large,
)
from pipeline.sinks.delivery import Plan as DeliveryPlan
from pipeline.sinks.http import HttpClient, HttpError, HttpTimeout

__all__ = [
    "AuthenticationFailed",
    "Credentials",
    "CrmcomAdapter",
    "CrmcomRejectCode",
    "OriginalLookup",
    "OriginalPurchase",
    "TokenProvider",
    "endpoint_url",
    "make_crmcom_sink",
]

log = logging.getLogger(__name__)

UNPROVEN = "unproven_answer"  # a 2xx answer that says nothing of the purchases sent

LOOKUP_TRIES = 3  # a lookup without a usable answer (timeout, dropped connection, 5xx) is asked again
# bytes kept in every request for its token, which is known only when the request is built (a
# longer token takes a full request over max_request_bytes by the difference)
TOKEN_ROOM = 4096
BULK_SET = b',"purchase_customer_events_set":['


def _token_head(token: str) -> bytes:
    """``{"token":"...",``: how every body starts (the rest is the call's fields)."""
    return b'{"token":' + json.dumps(token).encode() + b","


def _bulk_body(token: str, elements: Sequence[bytes]) -> bytes:
    """A ``create_multiple`` body from its purchases as encoded (each one JSON object)."""
    return _token_head(token)[:-1] + BULK_SET + b",".join(elements) + b"]}"


def _call_unit(transaction_id: str, body: dict[str, Any]) -> Unit:
    """A purchase sent in a call of its own, encoded once: its fields without the ``{``."""
    return Unit(transaction_id, body, dumps(body)[1:])


def _call_body(token: str, fields: bytes) -> bytes:
    """A one-purchase call's body: the token, then ``fields`` (its JSON object without the ``{``)."""
    head = _token_head(token)
    return head + fields if fields != b"}" else head[:-1] + fields


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
            username=resolve_secret(env=target.username_env, what="target.username_env", masked=False),
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
        self._obtained: list[str] = []  # registered for redaction until :meth:`forget`

    async def token(self, client: HttpClient) -> str:
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

    def forget(self) -> None:
        """Done with the platform: drop the tokens and stop redacting them (a later call obtains
        and registers a new one)."""
        for token in self._obtained:
            forget_secret(token)
        self._obtained.clear()
        self._token = None

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

    async def _obtain(self, client: HttpClient) -> str:
        url, headers, body = self._request()
        try:
            response = await client.request("POST", url, body=dumps(body), headers=headers)
        except HttpTimeout as exc:
            raise AuthenticationFailed(RequestFailure(None, "timeout", f"token call: {exc.kind}")) from exc
        except HttpError as exc:
            raise AuthenticationFailed(
                RequestFailure(None, "connection_error", f"token call: {exc.kind}")
            ) from exc
        if response.status == 429 or response.status >= 500:
            raise AuthenticationFailed(
                RequestFailure(
                    response.status,
                    f"http_{response.status}",
                    f"token call answered HTTP {response.status}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            )
        envelope = Envelope.read(response.body, response.status)
        token = envelope.data.get("token") if envelope.ok and isinstance(envelope.data, Mapping) else None
        if not token:
            # wrong credentials: 401 makes the engine stop sending for this submission
            self._refused = RequestFailure(
                401, envelope.code or "AUTHENTICATION_FAILED", f"token refused: {envelope.message}"
            )
            raise AuthenticationFailed(self._refused)
        self.issued += 1
        register_secret(str(token))  # redacted wherever a platform message echoes it
        self._obtained.append(str(token))
        log.info("obtained a CRM.COM token (%s auth)", self._target.auth)
        return str(token)


def endpoint_url(target: CrmcomTarget, method: str) -> str:
    """``{base_url}{path_prefix}/<resource>/<method>``."""
    prefix = target.path_prefix.strip("/")
    return "/".join(part for part in (target.base_url.rstrip("/"), prefix, method.strip("/")) if part)


# ---- the adapter --------------------------------------------------------------------------------------


class CrmcomAdapter:
    """Maps checkouts to CRM.COM requests and CRM.COM answers to outcomes (for the delivery engine).

    Routes: ``single`` (purchases/create), ``bulk`` (create_multiple), ``spend`` (create_spend),
    then in phase 1, after the sales of the same submission settled, ``cancel`` and ``ad_hoc``
    (one return each).

    Exactly once: a transaction that may have landed (in doubt in the ledger, sent before, or sent
    in this submission without a definite answer) is looked up before it is sent again
    (``target.in_doubt``, :mod:`pipeline.sinks.crmcom_lookup`); what the lookup finds settles it,
    what it cannot decide is held for review (``crmcom_in_doubt``). In a bulk call each purchase is
    settled on its own: only those not found are sent again.
    """

    def __init__(
        self,
        target: CrmcomTarget,
        credentials: Credentials,
        *,
        originals: OriginalLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = target
        self.tokens = TokenProvider(target, credentials, clock=clock)
        self._originals = originals
        self._wall_clock = wall_clock
        self._token_of: dict[tuple[str, ...], str] = {}
        self._renewed: set[tuple[str, ...]] = set()
        self._created: dict[str, tuple[str, ...]] = {}
        # exactly once: what may have landed, what lookups settled, what each request carried
        # -> when a request of an earlier run carrying it may have gone out (None: this run's, whose
        # answer was awaited up to timeout_seconds)
        self._maybe_landed: dict[str, float | None] = {}
        self._readback_wait = (target.readback_wait_seconds if target.readback_wait_seconds is not None
                               else target.timeout_seconds)
        self._voided: dict[str, str] = {}  # sales that may have landed and that a void names -> the void
        self._settled: dict[str, EventResult] = {}
        self._decided: dict[tuple[str, ...], list[EventResult]] = {}
        self._carried: dict[tuple[str, ...], list[str]] = {}
        self._fresh: dict[tuple[str, ...], list[str]] = {}
        self._cancelling: dict[tuple[str, ...], str] = {}  # the purchase each cancel request names
        self._customer_of: dict[str, str] = {}
        self._facts: dict[str, SaleFacts] = {}  # what each sale's purchase shows, as sent
        self._sales_here: set[str] = set()
        self._refused: set[str] = set()  # sales of this submission CRM.COM refused for good
        # sales whose purchase id a lookup found and the ledger has not recorded (written back)
        self._learned: dict[str, tuple[str, ...]] = {}
        self.lookups = 0  # lookups made (for logs and tests)

    def close(self) -> None:
        """The sink is closed: its tokens are dropped and no longer redacted from the logs."""
        self.tokens.forget()

    def __repr__(self) -> str:
        return f"CrmcomAdapter(base_url={self.target.base_url!r}, auth={self.target.auth!r})"

    # ---- plan

    def plan(self, checkouts: Sequence[CheckoutRow]) -> DeliveryPlan:
        """Purchases (bulk, one by one, or with a spend) in phase 0; cancels and ad hoc returns one by
        one in phase 1."""
        sales = {
            str(row["transaction_id"]): row
            for row in checkouts
            if (row.get("transaction_type") or TransactionType.SALE) == TransactionType.SALE
        }
        self._sales_here = set(sales)
        planner = Planner(self.target, self._originals, sales)
        bulk = self.target.bulk_size > 1
        creates: list[Unit] = []
        batches: list[Batch] = []
        later: list[Batch] = []
        unsent: list[EventResult] = []
        for row in checkouts:
            if row.get("may_have_landed"):
                self._maybe_landed[str(row["transaction_id"])] = row.get("sent_since")
                if row.get("voided_by"):
                    self._voided[str(row["transaction_id"])] = str(row["voided_by"])
            if row.get("customer_id"):
                self._customer_of[str(row["transaction_id"])] = str(row["customer_id"])
            planned = planner.plan(row)
            if isinstance(planned, PlannedCreate):
                tid = planned.transaction_id
                self._facts[tid] = sale_facts(row, self.target)  # what a lookup must find to adopt
                if planned.spend_call:
                    batches.append(Batch((_call_unit(tid, planned.body),), route="spend"))
                elif bulk:
                    creates.append(Unit(tid, planned.body,
                                        dumps({"request_unique_identifier": tid, **planned.body})))
                else:
                    creates.append(_call_unit(tid, planned.body))
            elif isinstance(planned, PlannedCancel):
                later.append(Batch((Unit(planned.transaction_id, planned),), route="cancel", phase=1))
            elif isinstance(planned, PlannedAdHocReturn):
                unit = Unit(planned.transaction_id, planned, dumps(planned.body)[1:])
                later.append(Batch((unit,), route="ad_hoc", phase=1))
            else:
                unsent.append(planned)
        limit, room = self.target.max_request_bytes, "t" * TOKEN_ROOM
        if bulk:
            packed, refused = pack(creates, route="bulk", max_count=self.target.bulk_size,
                                   max_bytes=limit, overhead=len(_bulk_body(room, [])))
        else:
            packed, refused = [Batch((unit,), route="single") for unit in creates], []
        sendable: list[Batch] = []
        for batch in [*packed, *batches, *later]:
            # a bulk body was measured by pack, a cancel's is a few bytes, a call's is the token's
            # head and the fields
            unit = batch.units[0]
            size = 0 if batch.route in ("bulk", "cancel") else len(_call_body(room, unit.body))
            if size > limit:
                refused.append(too_large(unit.transaction_id, size=size, limit=limit))
            else:
                sendable.append(batch)
        return DeliveryPlan(sendable, [*unsent, *refused])

    # ---- request

    def _cancel_target(self, planned: PlannedCancel) -> str | None:
        if planned.event_id is not None:
            return planned.event_id
        created = self._created.get(planned.original_transaction_id)
        return created[0] if created else None

    def _unnamed(self, planned: PlannedCancel) -> bool:
        """Whether the purchase to cancel was accepted without CRM.COM naming its id."""
        return planned.look_up or self._created.get(planned.original_transaction_id) == ()

    async def _name_purchase(
        self, client: HttpClient, token: str, planned: PlannedCancel
    ) -> str | EventResult:
        """The id of a purchase accepted without one, looked up by its reference (a read: nothing
        is sent twice) and matched against the sale (:meth:`_pick`); what the lookup cannot find
        leaves the return for a later run."""
        sale = planned.original_transaction_id
        found = await self._find_sale(client, token, sale, self._customer_of.get(planned.transaction_id),
                                      planned.sale)
        picked = self._pick(planned, found)
        if isinstance(picked, EventResult):
            return picked
        purchase_id = picked.get("id") if picked else None
        if not purchase_id:
            why = found.reason or str(found.answer).replace("_", " ")
            return EventResult(
                planned.transaction_id,
                Outcome.RETRYABLE,
                error_code=CrmcomRejectCode.ORIGINAL_NOT_DELIVERED,
                error_message=f"CRM.COM accepted the purchase of {sale} without naming its id and a "
                f"lookup by its reference could not find it ({why})",
                attempts=0,
            )
        self._learn(sale, str(purchase_id))
        return str(purchase_id)

    async def _find_sale(
        self, client: HttpClient, token: str, reference: str, customer: str | None, facts: SaleFacts | None,
        *, undecided_list_wins: bool = False,
    ) -> LookupResult:
        """The purchases carrying the reference of a sale; when ``show`` finds one that is not the
        sale's (``show`` answers one purchase of a reference), the customer's are listed (with
        ``undecided_list_wins``, a list that cannot decide is the answer: the sale's purchase may be
        among those not shown)."""
        found = await self._look_up(client, token, reference, customer)
        shown_other = (
            found.answer is Answer.FOUND and facts is not None
            and lookup_method(self.target) == "show" and customer
            and isinstance(self._match(found, facts), Ambiguous)
        )
        if shown_other:
            listed = await self._look_up(client, token, reference, customer, method="list")
            if listed.candidates:
                return listed
            if undecided_list_wins and listed.answer is Answer.UNDECIDED:
                return listed
        return found

    def _match(self, found: LookupResult, facts: SaleFacts | None) -> Mapping[str, Any] | Ambiguous | None:
        """Of the purchases ``found`` carrying a sale's reference, the one matching the sale
        (``facts``, :func:`pick_purchase`), or why none or several do; None when nothing was found."""
        if not found.candidates:
            return None
        if facts is None:
            if len(found.candidates) == 1:
                return found.candidates[0]
            ids = tuple(str(p.get("id") or "?") for p in found.candidates)
            return Ambiguous(ids, f"{len(ids)} purchases carry the reference and the sale is not known")
        return pick_purchase(found.candidates, facts, customer_field=self.target.customer_field,
                             unit_field=business_unit_field(self.target))

    def _pick(self, planned: PlannedCancel, found: LookupResult) -> Mapping[str, Any] | EventResult | None:
        """Of the purchases ``found`` carrying the sale's reference, the one matching the sale; a
        failure for good (``ambiguous_purchase``, naming them) when none or several match; None
        when nothing was found."""
        picked = self._match(found, planned.sale)
        if not isinstance(picked, Ambiguous):
            return picked
        return EventResult(
            planned.transaction_id,
            Outcome.REJECTED,
            error_code=CrmcomRejectCode.AMBIGUOUS_PURCHASE,
            error_message=f"not sent: the purchase of {planned.original_transaction_id} has no recorded "
            f"id and cannot be told among those carrying its reference ({', '.join(picked.purchase_ids)}): "
            f"{picked.reason}; nothing was cancelled: cancel the sale's purchase on CRM.COM by hand",
            attempts=0,
        )

    async def _settle_create(self, client: HttpClient, token: str, tid: str) -> EventResult | None:
        """A sale that may have landed, looked up by its reference: the one purchase matching it is
        adopted (accepted, ``found_by_lookup``); None when none is there or none carrying the
        reference matches (it is created); several matching fail for good (``ambiguous_purchase``);
        a lookup that cannot decide holds it for review."""
        found = await self._find_sale(client, token, tid, self._customer_of.get(tid), self._facts.get(tid),
                                      undecided_list_wins=True)
        picked = self._match(found, self._facts.get(tid))
        if isinstance(picked, Ambiguous) and picked.matching:
            return EventResult(
                tid,
                Outcome.REJECTED,
                error_code=CrmcomRejectCode.AMBIGUOUS_PURCHASE,
                error_message=f"not sent: it may have landed and {picked.reason}, each carrying its "
                f"reference: nothing adopted, nothing created; keep the sale's purchase on CRM.COM and "
                f"cancel the others by hand",
                attempts=0,
            )
        if isinstance(picked, Ambiguous) or (picked is None and found.answer is Answer.NOT_FOUND):
            return None  # not there (what carries its reference is another sale's): created
        if picked is None:
            return self._held(tid, found.reason, final=False)
        event_ids = (str(picked["id"]),) if picked.get("id") else ()
        self._created[tid] = event_ids
        return EventResult(
            tid,
            Outcome.ALREADY_ACCEPTED,
            event_ids=event_ids,
            error_code="found_by_lookup",
            error_message="an earlier request landed: the purchase is on CRM.COM",
        )

    def _learn(self, sale: str, purchase_id: str) -> None:
        """A lookup named the purchase of ``sale``, which the ledger holds without an id."""
        self._created[sale] = (purchase_id,)
        self._learned[sale] = (purchase_id,)

    def learned_event_ids(self) -> dict[str, tuple[str, ...]]:
        """The purchase ids lookups found for sales the ledger holds without one (sale
        transaction id -> ids), each given once: the submit stage writes them to the ledger."""
        learned, self._learned = self._learned, {}
        return learned

    def _held(self, transaction_id: str, reason: str, *, final: bool = True) -> EventResult:
        """Retryable, held for review: it may have landed and nothing could tell (``final``: asking
        again in this submission would not change that)."""
        return EventResult(
            transaction_id,
            Outcome.RETRYABLE,
            error_code=CrmcomRejectCode.IN_DOUBT,
            error_message=f"may have reached CRM.COM; held for review: {reason}",
            attempts=0 if final else 1,
        )

    async def _look_up(
        self, client: HttpClient, token: str, reference: str, customer: str | None,
        purchase_id: str | None = None, method: str | None = None,
    ) -> LookupResult:
        """Look ``reference`` up (the purchase ``purchase_id`` when known); a call that got no
        usable answer is asked again (up to ``LOOKUP_TRIES`` times, with the target's backoff), an
        expired token is renewed once."""
        target = self.target
        url_of = partial(endpoint_url, target)
        found = LookupResult(Answer.UNDECIDED, reason="not asked")
        renewed = False
        for attempt in range(LOOKUP_TRIES):
            if attempt:
                await asyncio.sleep(min(target.backoff_max_seconds, target.backoff_base_seconds * 2**attempt))
            self.lookups += 1
            try:
                found = await look_up(client, target, token, reference, customer, url_of=url_of,
                                      now=self._wall_clock, purchase_id=purchase_id, method=method)
            except TokenRefused as exc:
                self.tokens.invalidate(token)
                if renewed:
                    return LookupResult(Answer.UNDECIDED, reason=f"the lookup's token was refused ({exc})")
                renewed = True
                try:
                    token = await self.tokens.token(client)
                except AuthenticationFailed as failed:
                    return LookupResult(Answer.UNDECIDED, reason=f"no token for the lookup ({failed})")
                continue
            if found.answer is not Answer.UNDECIDED or not found.transient:
                return found
        return found

    def voided_unread(self) -> list[EventResult]:
        """What a dry run, which asks nothing, says of the sales planned that may have landed and
        that a void names: with ``in_doubt = "lookup"`` (a real run looks each up, never resends
        it) never sent, as when the lookup does not find it (``voided_in_doubt``, then
        post-voided); resent or held otherwise, as a real run does."""
        if self.target.in_doubt != "lookup":
            return []
        return [voided_not_landed(tid, void, DRY_RUN_LOOKUP) for tid, void in sorted(self._voided.items())]

    async def _settle_in_doubt(
        self, batch: Batch, client: HttpClient, token: str
    ) -> tuple[list[Unit], list[EventResult]]:
        """The units to send now, and the results of those that may have landed and were settled
        (or held) instead."""
        send: list[Unit] = []
        decided: list[EventResult] = []
        mode = self.target.in_doubt
        for unit in batch.units:
            tid = unit.transaction_id
            if tid not in self._maybe_landed or mode == "resend":
                send.append(unit)
                continue
            if tid in self._settled:
                decided.append(self._settled[tid])
                continue
            if mode == "hold":
                decided.append(self._held(tid, 'in_doubt = "hold"'))
                continue
            if batch.route == "ad_hoc":
                decided.append(self._held(tid, "CRM.COM documents no lookup of an ad hoc return"))
                continue
            await landed_by_now(self._maybe_landed[tid], self._readback_wait)  # a held request has landed
            if batch.route != "cancel":
                settled = await self._settle_create(client, token, tid)
                if settled is None and tid in self._voided:  # not there: a voided sale is not created
                    settled = voided_not_landed(tid, self._voided[tid], "looked up")
                    self._refused.add(tid)
                if settled is None:
                    send.append(unit)
                elif settled.outcome is Outcome.RETRYABLE:
                    decided.append(settled)
                else:
                    self._settled[tid] = settled
                    decided.append(settled)
                continue
            reference = unit.payload.original_transaction_id
            # a cancel asks about its purchase by id when known: a reference may name two purchases
            known = self._cancel_target(unit.payload)
            if known is None:  # of the purchases carrying the reference, the sale's
                found = await self._find_sale(client, token, reference, self._customer_of.get(tid),
                                              unit.payload.sale)
                picked = self._pick(unit.payload, found)
                if isinstance(picked, EventResult):
                    self._settled[tid] = picked
                    decided.append(picked)
                    continue
                if picked is not None:
                    found = LookupResult(Answer.FOUND, picked, candidates=(picked,))
            else:
                found = await self._look_up(client, token, reference, self._customer_of.get(tid), known)
            if found.answer is Answer.UNDECIDED:
                decided.append(self._held(tid, found.reason, final=False))
                continue
            event_ids = (str(found.purchase["id"]),) if found.purchase.get("id") else ()
            state = str(found.purchase.get("life_cycle_state") or "").upper()
            if known is None and found.answer is Answer.FOUND and event_ids:
                self._learn(reference, event_ids[0])
            if found.answer is Answer.FOUND and state == "POSTED":
                send.append(unit)  # not cancelled yet: sending it is safe
            elif found.answer is Answer.FOUND and state == "CANCELLED":
                result = EventResult(
                    tid,
                    Outcome.ALREADY_ACCEPTED,
                    event_ids=event_ids,
                    error_code="found_by_lookup",
                    error_message="an earlier cancel landed: the purchase is cancelled",
                )
                self._settled[tid] = result
                decided.append(result)
            else:
                decided.append(self._held(tid, f"the purchase to cancel is {state or 'not found'}"))
        return send, decided

    async def build_request(
        self, batch: Batch, client: HttpClient
    ) -> PreparedRequest | RequestFailure | list[EventResult]:
        """One attempt: a token (cached or new), lookups of what may have landed, then the route's call."""
        event_id: str | None = None
        if batch.route in ("cancel", "ad_hoc"):
            sale = batch.units[0].payload.original_transaction_id
            if sale in self._refused:
                return [original_refused(batch.units[0].transaction_id, sale)]
        if batch.route == "cancel":
            planned: PlannedCancel = batch.units[0].payload
            event_id = self._cancel_target(planned)
            if event_id is None and not self._unnamed(planned):
                return [original_not_delivered(planned.transaction_id, planned.original_transaction_id)]
        if batch.route == "ad_hoc":
            returned: PlannedAdHocReturn = batch.units[0].payload
            sale = returned.original_transaction_id
            if sale in self._sales_here and sale not in self._created:
                return [original_not_delivered(returned.transaction_id, sale)]
        try:
            token = await self.tokens.token(client)
        except AuthenticationFailed as exc:
            return exc.failure
        units, decided = await self._settle_in_doubt(batch, client, token)
        if not units:
            return decided
        if batch.route == "cancel" and event_id is None:
            event_id = self._cancel_target(batch.units[0].payload)  # the in-doubt lookup may have found it
        if batch.route == "cancel" and event_id is None:
            named = await self._name_purchase(client, token, batch.units[0].payload)
            if isinstance(named, EventResult):
                return [*decided, named]
            event_id = named
        target = self.target
        if batch.route == "cancel":
            method = target.cancel_path
            body = dumps({"token": token, "customer_event_identifier": {"id": event_id}})
            self._cancelling[tuple(batch.transaction_ids)] = str(event_id)
        elif batch.route == "bulk":
            method = target.create_multiple_path
            body = _bulk_body(token, [unit.body for unit in units])
        else:
            method = {"ad_hoc": target.ad_hoc_return_path, "spend": target.create_spend_path}.get(
                batch.route, target.create_path)
            body = _call_body(token, units[0].body)
        key = tuple(batch.transaction_ids)
        self._decided[key] = decided
        self._carried[key] = [unit.transaction_id for unit in units]
        self._token_of[key] = token
        # from now on these may land whatever becomes of the answer
        self._fresh[key] = [u.transaction_id for u in units if u.transaction_id not in self._maybe_landed]
        for unit in units:
            self._maybe_landed.setdefault(unit.transaction_id, None)
        # what it does not carry was settled by the in-doubt lookups
        carries = None if len(units) == len(batch.units) else frozenset(self._carried[key])
        return PreparedRequest("POST", endpoint_url(target, method), {"Content-Type": CONTENT_TYPE}, body,
                               carries=carries)

    def _not_landed(self, transaction_ids: Sequence[str]) -> None:
        """An answer says these did not land (or settled them): no lookup before they are sent again."""
        for tid in transaction_ids:
            self._maybe_landed.pop(tid, None)

    # ---- response

    def parse_response(
        self, batch: Batch, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[EventResult] | RequestFailure:
        """Per-transaction results from the envelope, or a whole-request failure for the engine."""
        key = tuple(batch.transaction_ids)
        token = self._token_of.pop(key, None)
        decided = self._decided.pop(key, [])
        carried = self._carried.pop(key, batch.transaction_ids)
        fresh = self._fresh.pop(key, [])
        asked = self._cancelling.pop(key, None)
        if status in (413, 429):
            self._not_landed(fresh)  # refused before processing
        if status == 413:  # the engine sends it again in halves
            return RequestFailure(status, f"http_{status}", Envelope.read(body, status).message)
        if status == 429 or status >= 500 or status in (408, 425):
            return RequestFailure(
                status,
                f"http_{status}",
                f"HTTP {status}",
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        envelope = Envelope.read(body, status)
        if status in (404, 405) and envelope.code not in self.target.token_error_codes:
            # no such path or method here: the request reached nothing that could judge a purchase
            # (the platform's verdicts come with HTTP 200), so nothing landed and nothing is refused
            self._not_landed(fresh)
            return RequestFailure(status, f"http_{status}", envelope.message or f"HTTP {status}")
        if envelope.code in self.target.token_error_codes:
            self._not_landed(fresh)  # refused before processing
            if token is not None:
                self.tokens.invalidate(token)
            if key not in self._renewed:
                self._renewed.add(key)
                return RequestFailure(status, envelope.code, envelope.message, reauthenticate=True)
            return RequestFailure(401, envelope.code, f"refused again after renewal: {envelope.message}")
        if envelope.code == MALFORMED and status >= 400:
            return RequestFailure(status, f"http_{status}", envelope.message)
        if envelope.code == MALFORMED:
            # a 2xx without a status envelope (empty, not JSON) is no verdict: the purchases may
            # have landed, so they stay in doubt and are looked up before they are sent again
            return RequestFailure(status, UNPROVEN, f"{envelope.message}: it may have landed")
        named = envelope.data.get("id") if envelope.ok and isinstance(envelope.data, Mapping) else None
        if asked is not None and named is not None and str(named) != asked:
            # an OK about another purchase says nothing of ours: it may have landed (looked up)
            return RequestFailure(status, UNPROVEN, f"the cancel of {asked} was answered about {named}")
        if batch.route == "bulk":
            results = results_of_bulk(carried, envelope, self.target)
        else:
            tid = carried[0]
            results = [result_of(tid, envelope, self.target, cancel=batch.route == "cancel")]
            if results[0].error_code == CrmcomRejectCode.ALREADY_CANCELLED and tid not in fresh:
                results = [self._own_cancel(batch.units[0].payload)]
        for result in results:
            if (
                result.error_code not in (MISSING, CONFLICTING, None)
                or result.outcome is not Outcome.RETRYABLE
            ):
                # a definite answer: a refused one did not land, an accepted one is settled
                self._not_landed([result.transaction_id])
        if batch.route in ("single", "bulk", "spend"):
            for result in results:
                # with no id (an answer that named none) a cancel of it looks the purchase up
                if result.outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED):
                    self._created[result.transaction_id] = result.event_ids
                elif result.outcome is Outcome.REJECTED:
                    self._refused.add(result.transaction_id)
        return [*results, *decided]


    def _own_cancel(self, planned: PlannedCancel) -> EventResult:
        """A cancel that may have landed before, answered "already cancelled": its earlier request
        did it (as a lookup finding the purchase cancelled would settle it)."""
        purchase = self._cancel_target(planned)
        return EventResult(
            planned.transaction_id,
            Outcome.ALREADY_ACCEPTED,
            event_ids=(purchase,) if purchase else (),
            error_code=CrmcomRejectCode.ALREADY_CANCELLED,
            error_message="an earlier request of this return landed: the purchase is cancelled",
        )


def make_crmcom_sink(
    feed: Feed,
    *,
    client: HttpClient | None = None,
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
    return PlatformSink(adapter, DeliveryPolicy.from_target(target), client=client, rng=rng,
                        mask_customers=feed.logging.hash_customer_ids)
