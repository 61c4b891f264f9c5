"""Submit stage: send the run's queued transactions through the feed's sink, exactly once.

Crash safety comes from the order of writes: ``on_sending`` marks a request's transactions in
doubt (``sending``) and commits *before* the request goes out; outcomes are settled afterwards
(buffered a little, flushed at least once per batch). A process killed at any moment leaves
``queued`` or ``sending`` rows, which the next run re-sends; a platform that already has the
transaction answers "transaction ID already used", which settles it as accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline.checkout_codec import decode_checkout
from pipeline.config import Feed
from pipeline.core.members import PERSONAL_FIELDS
from pipeline.ledger import Ledger, TxnState
from pipeline.logs import log_event, mask_customer_id
from pipeline.progress import NullProgress, Progress
from pipeline.records import TransactionType
from pipeline.sinks.base import EventResult, Outcome, Sink

__all__ = ["BATCH_SIZE", "SubmitResult", "gate_claims", "submit_rows", "with_originals"]

log = logging.getLogger(__name__)

BATCH_SIZE = 2000  # checkouts handed to the sink at a time (each hand-over lets the requests in flight drain)
_FLUSH_EVERY = 100


@dataclass
class SubmitResult:
    """What the submit stage did."""

    submitted: int = 0
    results: int = 0
    stopped: bool = False  # stop was set: rows not handed to the sink stay queued


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
    ordered = sales_first(ledger, row_ids)
    return asyncio.run(
        _submit(ledger, feed, run_id, ordered, make_sink, stop, progress, batch_size, outcome)
    )


def sales_first(ledger: Ledger, row_ids: Sequence[int]) -> list[int]:
    """``row_ids`` with every return after every sale (order kept otherwise).

    The sink gets the run in batches; a return handed over in an earlier batch than its sale would
    be refused by the platform (the sale is not accepted yet), so returns wait for the whole run's
    sales, not just for the sales of their own batch.
    """
    returns = ledger.rows_of_type(row_ids, TransactionType.RETURN)
    return [i for i in row_ids if i not in returns] + [i for i in row_ids if i in returns]


def with_originals(ledger: Ledger, scope: str, checkouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns that name a sale the ledger knows carry ``original_event_ids`` (the sale's platform
    event ids; empty while it is not accepted) and ``original_total``. A target that cancels the
    sale's purchase (CRM.COM) needs them; others ignore them."""
    wanted = [
        str(c["original_transaction_id"])
        for c in checkouts
        if c.get("transaction_type") == TransactionType.RETURN and c.get("original_transaction_id")
    ]
    if not wanted:
        return checkouts
    known = ledger.originals(scope, wanted)
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
            }
        enriched.append(checkout)
    return enriched


def gate_claims(ledger: Ledger, feed: Feed, claims: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """The claims that may be sent now, and a NOT_SENT result for each that never can.

    A claim names a guest checkout of ``claims.checkout_scope``: sent once that checkout is
    accepted; left queued (waiting) while it is pending or failed; never sent when it settled
    without reaching the platform (``claim_checkout_not_sent``) or when the ledger does not know
    it (``unmatched_claim``, unless ``claims.unknown_checkouts = "send"``).
    """
    if not claims:
        return claims, []
    checkout_scope = feed.claims.checkout_scope or feed.scope
    known = ledger.originals(checkout_scope, [str(c["claimed_transaction_id"]) for c in claims])
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
        log.info("%s: %d claim(s) wait for their checkout to be accepted", feed.name, waiting)
    return ready, unsent


async def _submit(
    ledger: Ledger,
    feed: Feed,
    run_id: str,
    row_ids: list[int],
    make_sink: Callable[[Feed], Sink],
    stop: threading.Event | None,
    progress: Progress,
    batch_size: int,
    outcome: SubmitResult,
) -> SubmitResult:
    scope = feed.scope
    pending: list[EventResult] = []

    def flush() -> None:
        if pending:
            masks = {r.transaction_id: mask_customer_id(customer_of[r.transaction_id])
                     for r in pending if r.transaction_id in customer_of}
            ledger.apply_results(scope, pending, run_id, masks=masks)
            progress.advance("submit", len(pending))
            outcome.results += len(pending)
            pending.clear()

    def on_sending(transaction_ids: Sequence[str]) -> None:
        ledger.start_sending(scope, list(transaction_ids), run_id)

    batch_outcomes: Counter[str] = Counter()
    # with logging.hash_customer_ids: masked in platform messages and in the stored checkouts
    customer_of: dict[str, str] = {}

    # enrollments: the member's details, kept out of platform messages the ledger stores
    personal_of: dict[str, list[str]] = {}

    def on_result(result: EventResult) -> None:
        batch_outcomes[str(result.outcome)] += 1
        customer = customer_of.get(result.transaction_id)
        if customer and result.error_message and customer in result.error_message:
            result = replace(result, error_message=result.error_message.replace(
                customer, mask_customer_id(customer)))
        if result.error_message and result.transaction_id in personal_of:
            message = result.error_message
            for value in personal_of[result.transaction_id]:
                message = message.replace(value, "***")
            result = replace(result, error_message=message)
        pending.append(result)
        if len(pending) >= _FLUSH_EVERY:
            flush()

    sink = make_sink(feed)
    progress.start("submit", len(row_ids))
    try:
        for start in range(0, len(row_ids), batch_size):
            if stop is not None and stop.is_set():
                outcome.stopped = True
                log.warning("%s: stop requested; %d transaction(s) left queued for the next run",
                            feed.name, len(row_ids) - start)
                break
            rows = ledger.transactions_by_row_id(row_ids[start : start + batch_size], with_checkout=True)
            if feed.records == "transactions":
                decoded = [decode_checkout(r.checkout) for r in rows if r.checkout]
            else:
                decoded = [json.loads(r.checkout) for r in rows if r.checkout]
            if feed.records == "claims":
                decoded, unmatched = gate_claims(ledger, feed, decoded)
                for result in unmatched:
                    on_result(result)
            checkouts = with_originals(ledger, scope, decoded)
            if feed.records == "enrollments":
                personal_of.clear()
                personal_of.update(
                    (c["transaction_id"], sorted({str(v) for k, v in (c.get("profile") or {}).items()
                                                  if k in PERSONAL_FIELDS and v}, key=len, reverse=True))
                    for c in checkouts)
            batch_outcomes.clear()
            if feed.logging.hash_customer_ids:
                customer_of.clear()
                customer_of.update((c["transaction_id"], c["customer_id"])
                                   for c in checkouts if c.get("customer_id"))
            try:
                await sink.submit(checkouts, on_sending, on_result, stop=stop)
            finally:
                flush()
            outcome.submitted += len(checkouts)
            if stop is not None and stop.is_set():
                # the sink settled what it had not sent as retryable ("stopped"): a stopped run
                outcome.stopped = True
            log_event(
                log, "batch",
                f"{feed.name}: batch {start // batch_size + 1}: {len(checkouts)} transaction(s) submitted",
                feed=feed.name, batch=start // batch_size + 1, transactions=len(checkouts),
                outcomes=dict(sorted(batch_outcomes.items())),
            )
    finally:
        flush()
        await sink.aclose()
        progress.finish("submit")
    return outcome
