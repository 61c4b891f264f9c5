"""Submit stage: send the run's queued transactions through the feed's sink, exactly once.

Crash safety comes from the order of writes: ``on_sending`` marks a request's transactions in
doubt (``sending``) and commits *before* the request goes out (the sender awaits that commit); a
request's outcomes are committed by the ledger's next commit after its answer is read, at the latest
the one that marks the next request in doubt, so a crash loses at most the answers of the requests
in flight or just read. The ledger's commits run on a thread of their own, one at a time, in the
order asked (every ledger call of the stage goes there), so while the database works the event loop
goes on reading the other requests' answers and building the next requests; answers read while a
commit runs go into the next one. A process killed at any moment leaves ``queued`` or ``sending``
rows, which the next run re-sends; a platform that already has the transaction answers
"transaction ID already used", which settles it as accepted. A refund has no such key: an Antavo
refund that may have landed is read back from the platform before it is sent again (see
:mod:`pipeline.stages.returns` and :mod:`pipeline.sinks.antavo_readback`). Rows that may have
landed carry ``may_have_landed`` to the sink, and ``sent_since`` (when their last request may have
gone out: the ledger's last change of the row, Unix seconds), so a target reads them back (an Antavo
refund, or a member's sale a void names) or looks them up (CRM.COM) before sending them again, no
sooner than its ``readback_wait_seconds`` after (a request the platform still held when its sender
died has landed by then).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from pipeline.checkout_codec import decode_checkout
from pipeline.config import AntavoTarget, Feed
from pipeline.core.members import PERSONAL_FIELDS, signup_key, signup_status
from pipeline.ledger import Ledger, TxnRecord, TxnState
from pipeline.logs import (
    counted,
    customer_ids_pattern,
    log_event,
    mask_customer_id,
    masked_match,
    redact,
    told,
)
from pipeline.progress import NullProgress, Progress
from pipeline.records import PROFILE_UPDATE, VOIDED_IN_DOUBT, RetryClass, TransactionType
from pipeline.sinks import decide_before_sending
from pipeline.sinks.base import EventResult, Outcome, Sink
from pipeline.sinks.crmcom_returns import ReturnCode
from pipeline.stages.returns import hold_for_sales, past_the_wait, with_return_context

__all__ = [
    "BATCH_SIZE", "MEMBER_NOT_ENROLLED", "ORIGINAL_NOT_A_SALE", "SubmitResult", "checkouts_of", "decide_rows",
    "gate_claims", "gate_returns", "gate_signups", "personal_values",
    "sales_first_batches", "submit_rows", "with_originals", "with_voids", "without_personal",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# a claim or profile update of a member whose sign-up the platform refused (held, not sent)
MEMBER_NOT_ENROLLED = "member_not_enrolled"
# a return naming itself, another return or a void (a target-level code of both targets)
ORIGINAL_NOT_A_SALE = "original_not_a_sale"
BATCH_SIZE = 2000  # checkouts handed to the sink at a time (each hand-over lets the requests in flight drain)


@dataclass
class SubmitResult:
    """What the submit stage did."""

    submitted: int = 0
    results: int = 0
    stopped: bool = False  # stop was set: rows not handed to the sink stay queued
    credentials_refused: str | None = None  # the platform refused our credentials: sending stopped


def submit_rows(
    ledger: Ledger,
    feed: Feed,
    run_id: str,
    row_ids: Sequence[int],
    make_sink: Callable[[Feed], Sink],
    *,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
) -> SubmitResult:
    """Deliver the ledger rows ``row_ids`` (queued or in doubt) in batches (of BATCH_SIZE rows)."""
    batch_size = batch_size or BATCH_SIZE
    progress = progress or NullProgress()
    outcome = SubmitResult()
    if not row_ids:
        return outcome
    return asyncio.run(
        _submit(ledger, feed, run_id, row_ids, make_sink, stop, progress, batch_size, outcome)
    )


def decide_rows(
    ledger: Ledger, feed: Feed, run_id: str, row_ids: Sequence[int], *, batch_size: int | None = None
) -> tuple[int, int]:
    """A dry run's submit: settle the rows ``row_ids`` whose outcome the target decides without
    sending (:func:`pipeline.sinks.decide_before_sending`), exactly as a real run's sink would,
    from the same checkouts in the same batches; the rest stay queued ("would be sent"). Returns
    how many were settled, and how many of them are sales a void names that a real run would look
    up without sending (``voided_in_doubt``: shown as not found)."""
    batch_size = batch_size or BATCH_SIZE
    settled = looked_up = 0
    for batch in sales_first_batches(ledger, row_ids, batch_size, last=_last(feed)):
        rows = ledger.transactions_by_row_id(batch, with_checkout=True)
        checkouts, unsent = checkouts_of(ledger, feed, rows, dry_run=True)
        personal = personal_values(feed, checkouts)
        results = [without_personal(r, personal)
                   for r in past_the_wait(ledger, feed, [*unsent, *decide_before_sending(feed, checkouts)])]
        ledger.apply_results(feed.scope, results, run_id)
        settled += len(results)
        looked_up += sum(r.error_code == VOIDED_IN_DOUBT for r in results)
    return settled, looked_up


def _last(feed: Feed) -> str:
    """The transaction type a feed sends after the others (:func:`sales_first_batches`)."""
    return PROFILE_UPDATE if feed.records == "enrollments" else TransactionType.RETURN


def checkouts_of(ledger: Ledger, feed: Feed, rows: Sequence[TxnRecord], *, dry_run: bool = False
                 ) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """The checkouts of ledger rows as the sink gets them (and a dry run decides on them): decoded,
    returns given what the ledger knows of their sale (Antavo: held while it is not accepted,
    :func:`~pipeline.stages.returns.hold_for_sales`), claims gated on their checkout
    (:func:`gate_claims`); and the results of the rows settled before any sink sees them."""
    if feed.records == "transactions":
        landed = {r.id for r in rows if r.checkout and may_have_landed(r)}
        # when a request of each may have gone out: the target reads it no sooner than its wait after
        changed = ledger.recorded_at(
            feed.scope, [str(r.transaction_id) for r in rows if r.id in landed], last_changed=True)
        decoded = [
            {**decode_checkout(r.checkout), "may_have_landed": True,
             "sent_since": _seconds(changed.get(str(r.transaction_id)))} if r.id in landed
            else decode_checkout(r.checkout)
            for r in rows if r.checkout
        ]
        decoded = with_voids(ledger, feed.scope, decoded)
    else:
        decoded = [json.loads(r.checkout) for r in rows if r.checkout]
    unsent: list[EventResult] = []
    if feed.records == "claims":
        decoded, unsent = gate_claims(ledger, feed, decoded)
        if feed.claims.enrollment_scope:
            decoded, refused = gate_signups(ledger, feed.claims.enrollment_scope, decoded, feed.name)
            unsent += refused
    elif feed.records == "enrollments":
        decoded, unsent = gate_signups(ledger, feed.scope, decoded, feed.name)
    elif feed.records == "transactions":
        decoded, unsent = gate_returns(ledger, feed.scope, decoded)
    antavo = feed.target if feed.records == "transactions" and isinstance(feed.target, AntavoTarget) else None
    if antavo is not None:
        decoded, waiting = hold_for_sales(ledger, feed.scope, decoded, queued_is_sent=dry_run)
        unsent += waiting
    checkouts = with_originals(ledger, feed.scope, decoded)
    if antavo is not None:
        checkouts = with_return_context(ledger, feed.scope, checkouts, mode=antavo.return_mode)
    return checkouts, unsent


def personal_values(feed: Feed, checkouts: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Enrollments: each member's personal details (longest first), to keep out of the platform
    messages the ledger stores; nothing for other feeds."""
    if feed.records != "enrollments":
        return {}
    return {
        c["transaction_id"]: sorted({str(v) for k, v in (c.get("profile") or {}).items()
                                     if k in PERSONAL_FIELDS and v}, key=len, reverse=True)
        for c in checkouts
    }


def without_personal(result: EventResult, personal_of: dict[str, list[str]]) -> EventResult:
    """``result`` with the personal details of every member of ``personal_of`` (its request's)
    masked in its error message: a platform refusing a whole request may quote all of it."""
    if not result.error_message or not personal_of:
        return result
    message = result.error_message
    for value in sorted({v for values in personal_of.values() for v in values}, key=len, reverse=True):
        message = message.replace(value, "***")
    return replace(result, error_message=message) if message != result.error_message else result


def sales_first(ledger: Ledger, row_ids: Sequence[int]) -> list[int]:
    """``row_ids`` with every return after every sale (order kept otherwise).

    The sink gets the run in batches; a return handed over in an earlier batch than its sale would
    be refused by the platform (the sale is not accepted yet), so returns wait for the whole run's
    sales, not just for the sales of their own batch.
    """
    returns = ledger.rows_of_type(row_ids, TransactionType.RETURN)
    return [i for i in row_ids if i not in returns] + [i for i in row_ids if i in returns]


def sales_first_batches(ledger: Ledger, row_ids: Sequence[int], batch_size: int, *,
                        last: str = TransactionType.RETURN) -> Iterator[list[int]]:
    """:func:`sales_first` in batches of ``batch_size`` ids, the same batches, made one at a time
    (only the run's returns are kept aside: no second list of the whole day). ``last`` is the
    type that goes after the others: returns, or an enrollment feed's profile updates (after
    every sign-up they may need)."""
    returns = ledger.rows_of_type(row_ids, last)
    ordered = itertools.chain((i for i in row_ids if i not in returns), (i for i in row_ids if i in returns))
    while batch := list(itertools.islice(ordered, batch_size)):
        yield batch


def with_originals(ledger: Ledger, scope: str, checkouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns that name a sale the ledger knows carry ``original_event_ids`` (the sale's platform
    event ids; empty while it is not accepted), ``original_total``, ``original`` (the sale as
    recorded: state, customer, currency, lines) and ``earlier_returns`` (the other recorded returns
    of it). A target that checks returns against their sale (CRM.COM) needs them; others ignore them."""
    wanted = [
        str(c["original_transaction_id"])
        for c in checkouts
        if c.get("transaction_type") == TransactionType.RETURN and c.get("original_transaction_id")
    ]
    if not wanted:
        return checkouts
    known = ledger.sales_with_checkouts(scope, wanted)
    earlier = ledger.returns_naming(scope, wanted)
    enriched = []
    for checkout in checkouts:
        original = (
            known.get(str(checkout.get("original_transaction_id")))
            if checkout.get("transaction_type") == TransactionType.RETURN
            else None
        )
        if original is not None:
            accepted = original.state is TxnState.ACCEPTED
            checkout = {
                **checkout,
                "original_event_ids": list(original.event_ids) if accepted else [],
                "original_total": original.amount,
                "original": _recorded(original),
                "earlier_returns": [
                    _recorded(r) for r in earlier.get(str(original.transaction_id), ())
                    if r.transaction_id != checkout["transaction_id"]
                ],
            }
        enriched.append(checkout)
    return enriched


def _recorded(record: TxnRecord) -> dict[str, Any]:
    """What a target checking a return needs of a recorded sale or return: its state, outcome code,
    platform event ids and the checkout's customer, store, time and lines (customer ids may be
    masked)."""
    stored = json.loads(record.checkout) if record.checkout else {}
    return {
        "transaction_id": record.transaction_id,
        "state": record.state.value,
        "code": record.last_error_code,
        "event_ids": list(record.event_ids),
        "customer_id": stored.get("customer_id"),
        "is_guest": bool(stored.get("is_guest")) or not stored.get("customer_id"),
        "currency": stored.get("currency") or record.currency,
        "store_id": stored.get("store_id"),
        "timestamp_utc": stored.get("timestamp_utc"),
        "items": [
            {k: item.get(k) for k in ("product_id", "quantity", "line_total")}
            for item in stored.get("items") or ()
        ],
    }


def with_voids(ledger: Ledger, scope: str, checkouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``checkouts`` with ``voided_by`` (the void's transaction id) on each sale that may have
    landed and that a void names: the target looks it up without sending it (found: accepted; not
    found: refused, ``voided_in_doubt``, and post-voided after the submission) where it can."""
    doubted = [str(c["transaction_id"]) for c in checkouts if c.get("may_have_landed")
               and c.get("transaction_type") == TransactionType.SALE and c.get("transaction_id")]
    if not doubted or not ledger.any_voids_naming(scope):
        return checkouts
    voids = ledger.voids_naming(scope, doubted)
    if not voids:
        return checkouts
    return [{**c, "voided_by": str(voids[tid][0].transaction_id)}
            if c.get("may_have_landed") and (tid := str(c.get("transaction_id"))) in voids else c
            for c in checkouts]


def _seconds(stamp: str | None) -> float | None:
    """An ISO 8601 time as Unix seconds (None stays None)."""
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def may_have_landed(record: TxnRecord) -> bool:
    """Whether an earlier request carrying this transaction went out (a resend must check first)."""
    return record.state is TxnState.SENDING or record.attempts > 0


def gate_returns(ledger: Ledger, scope: str, checkouts: list[dict[str, Any]]
                 ) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """The checkouts that may go on to the sink, and a NOT_SENT result (``original_not_a_sale``) for
    each return whose ``original_transaction_id`` the ledger holds as no sale: the return itself,
    another return or a void. Nothing of it was bought, so there is nothing to refund or cancel
    (Antavo would refuse it, and CRM.COM would wait for a purchase that never comes). A return of a
    sale a void stopped (``post_voided``: never sent) is not sent either (``original_not_sent``)."""
    def is_return(checkout: dict[str, Any]) -> bool:
        return checkout.get("transaction_type") == TransactionType.RETURN and bool(
            checkout.get("original_transaction_id"))

    named = [str(c["original_transaction_id"]) for c in checkouts if is_return(c)]
    if not named:
        return checkouts, []
    known = ledger.originals(scope, named)
    ready: list[dict[str, Any]] = []
    unsent: list[EventResult] = []
    for checkout in checkouts:
        original = known.get(str(checkout["original_transaction_id"])) if is_return(checkout) else None
        if original is not None and original.transaction_type == TransactionType.SALE and (
                original.state is TxnState.VOID):
            # a sale a void names that never reached the platform (post_voided): nothing to refund
            unsent.append(EventResult(
                checkout["transaction_id"], Outcome.NOT_SENT, error_code=ReturnCode.ORIGINAL_NOT_SENT,
                error_message=f"never sent: its sale {original.transaction_id} was voided at the till "
                              "before it reached the platform", attempts=0))
            continue
        if original is None or original.transaction_type == TransactionType.SALE:
            ready.append(checkout)
            continue
        named_as = ("itself" if original.transaction_id == checkout["transaction_id"]
                    else f"{original.transaction_id}, a {original.transaction_type}")
        unsent.append(EventResult(
            checkout["transaction_id"], Outcome.NOT_SENT, error_code=ORIGINAL_NOT_A_SALE,
            error_message=f"never sent: the return names {named_as}, not a sale", attempts=0))
    return ready, unsent


def gate_claims(ledger: Ledger, feed: Feed, claims: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """The claims that may be sent now, and a NOT_SENT result for each that never can.

    A claim names a guest checkout of ``claims.checkout_scope``: sent once that checkout is
    accepted; left queued (waiting) while it is pending or failed; never sent when it settled
    without reaching the platform (``claim_checkout_not_sent``), when it is a return
    (``claim_of_return``: the refund receipt, not the sale) or a member's checkout
    (``claim_checkout_not_guest``: nobody's to claim), or when the ledger does not know it
    (``unmatched_claim``, unless ``claims.unknown_checkouts = "send"``).
    """
    if not claims:
        return claims, []
    checkout_scope = feed.claims.checkout_scope or feed.scope
    known = ledger.sales_with_checkouts(checkout_scope, [str(c["claimed_transaction_id"]) for c in claims])
    ready: list[dict[str, Any]] = []
    unsent: list[EventResult] = []
    waiting = 0
    for claim in claims:
        checkout = known.get(str(claim["claimed_transaction_id"]))
        if checkout is None:
            if feed.claims.unknown_checkouts == "send":
                ready.append(claim)
            else:
                unsent.append(EventResult(
                    claim["transaction_id"], Outcome.NOT_SENT, error_code="unmatched_claim",
                    error_message=f"no checkout {claim['claimed_transaction_id']} in scope "
                                  f"{checkout_scope!r}", attempts=0))
        elif (refused := _not_claimable(checkout)) is not None:
            code, why = refused
            unsent.append(EventResult(
                claim["transaction_id"], Outcome.NOT_SENT, error_code=code,
                error_message=f"checkout {claim['claimed_transaction_id']} {why}", attempts=0))
        elif checkout.state is TxnState.ACCEPTED:
            ready.append(claim)
        elif checkout.state in (TxnState.NOT_SENT, TxnState.VOID):
            unsent.append(EventResult(
                claim["transaction_id"], Outcome.NOT_SENT, error_code="claim_checkout_not_sent",
                error_message=f"checkout {claim['claimed_transaction_id']} was not sent "
                              f"({checkout.state})", attempts=0))
        else:
            waiting += 1
    if waiting:
        log.info("%s: %s to be accepted", feed.name, "1 claim waits for its checkout" if waiting == 1
                 else f"{waiting} claims wait for their checkout")
    return ready, unsent


def gate_signups(ledger: Ledger, scope: str, rows: list[dict[str, Any]], feed_name: str = "NAME"
                 ) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """The claims and profile updates that may be sent now, and a failed-permanent result, never
    sent (``member_not_enrolled``), for each whose member's sign-up the platform refused: kept,
    so ``posfeed rerun --feed <feed_name> --failed --include-permanent`` sends it once a corrected
    sign-up is accepted.

    A claim or a profile update of a member the platform does not have yet would be refused
    (Antavo 160212, for good). So while the member's sign-up in ``scope`` (the ledger's
    enrollments) is pending (queued, in doubt, failed retryable) it waits, left queued; a
    profile update goes along with a sign-up sent in the same batch (it is sent after the
    ``opt_in``, and held by the sink if that fails). A member this ledger has no sign-up of
    signed up another way: the platform judges. Everything else passes through.
    """
    def key_of(row: dict[str, Any]) -> str | None:
        if row.get("record") == "claim" and row.get("customer_id"):
            return mask_customer_id(str(row["customer_id"]))
        if row.get("record") == PROFILE_UPDATE:
            return signup_key(str(row["transaction_id"]))
        return None

    keys: dict[str, str] = {}  # transaction id -> its member's key
    for row in rows:
        if (key := key_of(row)) is not None:
            keys[str(row["transaction_id"])] = key
    if not keys:
        return rows, []
    signups = ledger.signups(scope, list(keys.values()))
    in_batch = {str(row["transaction_id"]) for row in rows if row.get("record") == "enrollment"}
    ready: list[dict[str, Any]] = []
    unsent: list[EventResult] = []
    waiting = 0
    for row in rows:
        tid = str(row["transaction_id"])
        found = signups.get(keys[tid], []) if tid in keys else []
        status = signup_status(r.state.value for r in found)
        if status == "pending" and not any(r.transaction_id in in_batch for r in found):
            waiting += 1
        elif status == "refused":
            last = found[-1]
            unsent.append(EventResult(
                tid, Outcome.REJECTED, error_code=MEMBER_NOT_ENROLLED,
                error_message=told(f"not sent: the member's sign-up {last.transaction_id} did not reach "
                                   f"the platform ({last.state}: {last.last_error_code or 'no code'}); once "
                                   f"a corrected sign-up is accepted, `posfeed rerun --feed {feed_name} "
                                   "--failed --include-permanent` sends it"),
                attempts=0))
        else:
            ready.append(row)
    if waiting:
        log.info("%s in scope %r", "1 claim or profile update waits for its member's sign-up" if waiting == 1
                 else f"{waiting} claims or profile updates wait for their members' sign-ups", scope)
    return ready, unsent


def _not_claimable(checkout: TxnRecord) -> tuple[str, str] | None:
    """(code, why) when a recorded checkout can never be claimed: a return, or a checkout that
    names a member (its customer id, masked or not, is in the stored checkout)."""
    if checkout.transaction_type == TransactionType.RETURN:
        return "claim_of_return", "is a return: a member claims the sale"
    if checkout.checkout and decode_checkout(checkout.checkout).get("customer_id"):
        return "claim_checkout_not_guest", "is a member's checkout, not a guest's"
    return None


async def _submit(
    ledger: Ledger,
    feed: Feed,
    run_id: str,
    row_ids: Sequence[int],
    make_sink: Callable[[Feed], Sink],
    stop: threading.Event | None,
    progress: Progress,
    batch_size: int,
    outcome: SubmitResult,
) -> SubmitResult:
    scope = feed.scope
    pending: list[EventResult] = []  # answers read and not yet in a commit
    loop = asyncio.get_running_loop()
    # the ledger's one user while the stage runs: every ledger call runs on this thread, one at a
    # time, in the order asked, so the event loop reads answers and builds requests meanwhile
    ledger_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posfeed-ledger")
    in_turn = asyncio.Lock()  # FIFO: a commit's snapshot of ``pending`` follows the earlier one's
    flush_scheduled = False  # a settling commit is asked for (see on_result)

    async def in_ledger(call: Callable[[], T]) -> T:
        """``call`` (ledger work) on the ledger's thread, after every commit asked for before."""
        async with in_turn:
            return await loop.run_in_executor(ledger_thread, call)

    async def flush(sending: Sequence[str] | None = None, *, scheduled: bool = False) -> None:
        """The answers read so far into the ledger; with ``sending``, the next request's in-doubt
        mark in the same commit, so both are in the ledger before it goes out. The commit runs on
        the ledger's thread: answers read while it runs go into the next one."""
        nonlocal flush_scheduled
        async with in_turn:
            if scheduled:
                flush_scheduled = False
            learned = getattr(sink, "learned_event_ids", None)
            # a lookup named the purchase of an accepted sale whose answer named none: kept, so a
            # later return cancels it without looking it up again
            found = learned() if learned is not None else None
            settled = pending[:]
            pending.clear()
            if not found and not settled and sending is None:
                return
            masks = {r.transaction_id: mask_customer_id(customer_of[r.transaction_id])
                     for r in settled if r.transaction_id in customer_of}

            def commit() -> None:
                if found:
                    ledger.record_found_event_ids(scope, found)
                final = past_the_wait(ledger, feed, settled)  # a return that waited too long for its sale
                if sending is not None:
                    ledger.start_sending(scope, list(sending), run_id, settled=final, masks=masks)
                elif final:
                    ledger.apply_results(scope, final, run_id, masks=masks)

            try:
                await loop.run_in_executor(ledger_thread, commit)
            except asyncio.CancelledError:
                raise  # the commit goes on in its thread (the next one waits for it): it may land
            except BaseException:
                pending[:0] = settled  # not committed: the next commit settles them
                raise
        if settled:
            progress.advance("submit", len(settled))
            outcome.results += len(settled)

    async def on_sending(transaction_ids: Sequence[str]) -> None:
        await flush(sending=transaction_ids)

    settling: set[asyncio.Task[None]] = set()

    async def scheduled_flush() -> None:
        try:
            await flush(scheduled=True)
        except Exception as exc:  # the answers stay pending: the next commit (a sender's, at the
            # latest the stage's last) settles them or raises the error where it is handled
            log.debug("%s: settling answers failed, left for the next commit: %s", feed.name, exc)

    batch_outcomes: Counter[str] = Counter()
    batch_retry_classes: Counter[str] = Counter()  # of the batch's retryable results: why
    # with logging.hash_customer_ids: masked in platform messages and in the stored checkouts
    customer_of: dict[str, str] = {}

    # enrollments: the member's details, kept out of platform messages the ledger stores
    personal_of: dict[str, list[str]] = {}

    # every customer id of the batch, for messages quoting another transaction's (made when needed)
    quoted: list[re.Pattern[str] | None] = [None]

    def on_result(result: EventResult) -> None:
        batch_outcomes[str(result.outcome)] += 1
        if result.retry_class is not None:
            batch_retry_classes[str(result.retry_class)] += 1
        if result.error_message:
            # a platform may echo what it was sent: our secrets never reach the ledger or reports
            message = redact(result.error_message)
            customer = customer_of.get(result.transaction_id)
            if customer and customer in message:
                message = message.replace(customer, mask_customer_id(customer))
            if customer_of:
                pattern = quoted[0] = quoted[0] or customer_ids_pattern(customer_of.values())
                message = pattern.sub(masked_match, message)
            if message != result.error_message:
                result = replace(result, error_message=message)
        result = without_personal(result, personal_of)
        pending.append(result)
        nonlocal flush_scheduled
        if not flush_scheduled:
            # settled by the next commit: with the next request's in-doubt mark when that comes
            # first (on_sending), else by this one, once the commit in progress (if any) is done
            flush_scheduled = True
            task = loop.create_task(scheduled_flush())
            settling.add(task)
            task.add_done_callback(settling.discard)

    sink = make_sink(feed)
    progress.start("submit", len(row_ids))
    try:
        batches = sales_first_batches(ledger, row_ids, batch_size, last=_last(feed))
        for number in itertools.count():
            if (batch := await in_ledger(lambda: next(batches, None))) is None:
                break
            start = number * batch_size  # every batch but the last is full
            if stop is not None and stop.is_set():
                outcome.stopped = True
                log.warning("%s: stop requested; %s left queued for the next run",
                            feed.name, counted(len(row_ids) - start, "transaction"))
                break
            checkouts, unsent = await in_ledger(functools.partial(_checkouts_of_batch, ledger, feed, batch))
            for result in unsent:
                on_result(result)
            personal_of.clear()
            personal_of.update(personal_values(feed, checkouts))
            batch_outcomes.clear()
            batch_retry_classes.clear()
            if feed.logging.hash_customer_ids:
                quoted[0] = None
                customer_of.clear()
                customer_of.update((c["transaction_id"], c["customer_id"])
                                   for c in checkouts if c.get("customer_id"))
            try:
                await sink.submit(checkouts, on_sending, on_result, stop=stop)
            finally:
                await flush()
            outcome.submitted += len(checkouts)
            if stop is not None and stop.is_set():
                # the sink settled what it had not sent as retryable ("stopped"): a stopped run
                outcome.stopped = True
            log_event(
                log, "batch",
                f"{feed.name}: batch {start // batch_size + 1}: {counted(len(checkouts), 'transaction')} "
                "submitted",
                feed=feed.name, batch=start // batch_size + 1, transactions=len(checkouts),
                outcomes=dict(sorted(batch_outcomes.items())),
            )
            refused = getattr(getattr(sink, "last_report", None), "credentials_refused", None)
            if refused:
                outcome.credentials_refused = refused = redact(refused)
                # the batch's transactions settled unsent, then those of the batches after it
                left = batch_retry_classes[RetryClass.CREDENTIALS] + len(row_ids) - start - len(checkouts)
                log.error("%s: the platform refused our credentials (%s); %s left for the next run",
                          feed.name, refused, counted(left, "transaction"))
                break
    finally:
        try:
            await flush()
            await asyncio.gather(*settling)  # nothing left for them: they end at once
        finally:
            ledger_thread.shutdown(wait=True)  # a commit still running (a cancelled one's) ends first
            await sink.aclose()
            progress.finish("submit")
    return outcome


def _checkouts_of_batch(ledger: Ledger, feed: Feed, batch: Sequence[int]
                        ) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """:func:`checkouts_of` the ledger rows ``batch`` (row ids)."""
    return checkouts_of(ledger, feed, ledger.transactions_by_row_id(batch, with_checkout=True))
