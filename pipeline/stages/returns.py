"""What the ledger knows about each return before it goes to Antavo (the I/O edge of
:mod:`pipeline.sinks.antavo_returns`).

:func:`with_return_context` adds to every return naming a sale:

* ``return_decision``: refund, refund_item per line, or not sent (``over_refund``), decided from
  the sale's stored lines and its earlier returns (this run's and every earlier run's);
* ``in_doubt``: it was sent before without a final answer, so it may have landed: the platform is
  read back before anything is sent again, no sooner than the target's ``readback_wait_seconds``
  after the checkout's ``sent_since`` (:func:`pipeline.stages.submit.checkouts_of`);
* ``claimed_event_ids``: the platform event ids of the sale's returns the ledger has accepted, or
  holds as refunded in part (``partly_refunded``: the lines that landed) (a read-back matches only
  the other refund events);
* ``return_sale``: the sale's :class:`~pipeline.sinks.antavo_returns.SaleFacts` (None when the
  ledger does not know it): a return held back as an over-refund because other returns of the
  sale may have landed is decided again, by a read-back, against the refunds the platform holds.

A dry run calls the same function, so it decides exactly what a real run would send.

:func:`hold_for_sales` keeps back, before the sink sees them, the returns whose sale the ledger
holds as not accepted and that are not handed over with their sale (a sale an earlier run, or an
earlier submission or batch of this run, left failed or in doubt): Antavo would refuse the refund
for good (``112201``), so it waits (``original_not_accepted``, retryable: the plain run that
delivers the sale sends it) or, when the platform refused the sale for good, is never sent
(``original_refused``). A return handed over with its sale is the adapter's to hold.

A return whose sale has not arrived at all waits for it (``original_not_found``, retryable, held by
the target: :func:`pipeline.sinks.base.sale_not_found`); :func:`past_the_wait` fails it for good
once it has waited ``resume.sale_wait_hours`` since it was first recorded, naming the sale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pipeline.checkout_codec import decode_checkout
from pipeline.config import Feed
from pipeline.ledger import Ledger, ReturnOf, TxnState
from pipeline.records import TransactionType
from pipeline.sinks.antavo import PARTLY_REFUNDED, sale_not_accepted, sale_refused
from pipeline.sinks.antavo_returns import (
    REFUND_IN_DOUBT,
    SaleFacts,
    SaleReturn,
    decide_sale_returns,
    lines_of,
)
from pipeline.sinks.base import ORIGINAL_NOT_FOUND, EventResult, Outcome

__all__ = ["gave_up", "hold_for_sales", "past_the_wait", "with_return_context"]

_PENDING = (TxnState.QUEUED, TxnState.SENDING, TxnState.FAILED_RETRYABLE)
_DECIDED_FROM = (*_PENDING, TxnState.ACCEPTED, TxnState.NOT_SENT, TxnState.FAILED_PERMANENT)


def _in_doubt(row: ReturnOf) -> bool:
    record = row.record
    # an operator's rerun of a return held in doubt is their decision to send it; a return last
    # held waiting for its sale was not sent by the look that held it (nor counted an attempt),
    # unless a request of it went out since (in doubt again: read back)
    waited = record.last_error_code == ORIGINAL_NOT_FOUND and record.state is not TxnState.SENDING
    return (record.state in _PENDING and record.attempts > 0 and record.last_error_code != REFUND_IN_DOUBT
            and not waited)


def _partly(row: ReturnOf) -> bool:
    """Refused in part: some of its refund events landed (their ids kept), the rest did not."""
    return row.record.state is TxnState.FAILED_PERMANENT and row.record.last_error_code == PARTLY_REFUNDED


def _landed(row: ReturnOf) -> bool:
    # a refund refused in part counts whole (what was refused waits for a rerun)
    return row.record.state is TxnState.ACCEPTED or _in_doubt(row) or _partly(row)


def with_return_context(
    ledger: Ledger, scope: str, checkouts: Sequence[dict[str, Any]], *, mode: str
) -> list[dict[str, Any]]:
    """``checkouts`` with the return context above on every return that names a sale."""
    wanted = [
        str(c["original_transaction_id"]) for c in checkouts
        if c.get("transaction_type") == TransactionType.RETURN and c.get("original_transaction_id")
    ]
    if not wanted:
        return list(checkouts)
    sales = {
        record.transaction_id: decode_checkout(record.checkout)
        for record in ledger.sales_with_checkouts(scope, wanted).values()
        if record.checkout and record.transaction_type == TransactionType.SALE
    }
    facts_of = {
        tid: SaleFacts(lines_of(sale), abs(sale["total"]) if sale.get("total") is not None else None,
                       sale.get("currency"), sale.get("customer_id"))
        for tid, sale in sales.items()
    }
    returns = ledger.returns_of(scope, wanted)
    decisions: dict[str, Any] = {}
    in_doubt: dict[str, bool] = {}
    claimed: dict[str, list[str]] = {}
    for original_id, rows in returns.items():
        primaries = [row for row in rows if row.record.state in _DECIDED_FROM]
        sale = facts_of.get(original_id)
        decisions.update(decide_sale_returns(
            [SaleReturn(str(row.record.transaction_id), decode_checkout(row.record.checkout or "{}"),
                        _landed(row), row.record.state in _PENDING)
             for row in primaries if row.record.checkout],
            original=sale.lines if sale is not None else None,
            original_total=sale.total if sale is not None else None,
            original_currency=sale.currency if sale is not None else None,
            original_customer=sale.customer if sale is not None else None,
            mode=mode,
        ))
        for row in primaries:
            in_doubt[str(row.record.transaction_id)] = _in_doubt(row)
        claimed[original_id] = [event for row in primaries
                                if row.record.state is TxnState.ACCEPTED or _partly(row)
                                for event in row.record.event_ids]
    out = []
    for checkout in checkouts:
        tid = str(checkout.get("transaction_id"))
        if checkout.get("transaction_type") == TransactionType.RETURN and tid in decisions:
            checkout = {
                **checkout,
                "return_decision": decisions[tid],
                "in_doubt": in_doubt.get(tid, False),
                "claimed_event_ids": claimed.get(str(checkout["original_transaction_id"]), []),
                "return_sale": facts_of.get(str(checkout["original_transaction_id"])),
            }
        out.append(checkout)
    return out


def hold_for_sales(
    ledger: Ledger, scope: str, checkouts: Sequence[dict[str, Any]], *, queued_is_sent: bool = False
) -> tuple[list[dict[str, Any]], list[EventResult]]:
    """The checkouts that may go on to the sink, and a result, not sent, for each return whose sale
    the ledger holds as not accepted while the sale is not among ``checkouts`` (see the module
    docstring). ``queued_is_sent``: a queued sale counts as sent (a dry run, where "queued" means
    "would be sent")."""
    handed = {str(c.get("transaction_id")) for c in checkouts}
    wanted = [
        str(c["original_transaction_id"]) for c in checkouts
        if c.get("transaction_type") == TransactionType.RETURN and c.get("original_transaction_id")
        and str(c["original_transaction_id"]) not in handed
    ]
    if not wanted:
        return list(checkouts), []
    waiting = (TxnState.SENDING, TxnState.FAILED_RETRYABLE) + (() if queued_is_sent else (TxnState.QUEUED,))
    sales = {tid: record for tid, record in ledger.originals(scope, wanted).items()
             if record.transaction_type == TransactionType.SALE}
    ready: list[dict[str, Any]] = []
    held: list[EventResult] = []
    for checkout in checkouts:
        sale = sales.get(str(checkout.get("original_transaction_id"))) if (
            checkout.get("transaction_type") == TransactionType.RETURN) else None
        tid = str(checkout["transaction_id"])
        if sale is not None and sale.state is TxnState.FAILED_PERMANENT:
            held.append(sale_refused(tid, str(sale.transaction_id), sale.last_error_code or "no code"))
        elif sale is not None and sale.state in waiting:
            state = "in doubt" if sale.state is TxnState.SENDING else sale.state.value
            held.append(sale_not_accepted(tid, f"{sale.transaction_id} is not accepted yet ({state})"))
        else:
            ready.append(checkout)
    return ready, held


def gave_up(result: EventResult, recorded_at: datetime, now: datetime, hours: float, feed: str
            ) -> EventResult:
    """``result``, or, for a return still waiting for its sale (``original_not_found``) first
    recorded more than ``hours`` before ``now``, the same failed for good, naming the sale."""
    if result.outcome is not Outcome.RETRYABLE or result.error_code != ORIGINAL_NOT_FOUND:
        return result
    if (now - recorded_at).total_seconds() <= hours * 3600:
        return result
    why = (result.error_message or "").removeprefix("not sent: ").split(";")[0]
    return replace(result, outcome=Outcome.REJECTED, retry_class=None, error_message=(
        f"never sent: {why} and the return waited {hours:g} hours for it (resume.sale_wait_hours); once "
        f"the sale is delivered, `posfeed rerun --feed {feed} --failed --include-permanent` sends it"))


def past_the_wait(ledger: Ledger, feed: Feed, results: Sequence[EventResult],
                  now: datetime | None = None) -> list[EventResult]:
    """``results`` with :func:`gave_up` applied to each, against when the ledger first recorded it."""
    waiting = [r.transaction_id for r in results
               if r.outcome is Outcome.RETRYABLE and r.error_code == ORIGINAL_NOT_FOUND]
    if not waiting:
        return list(results)
    recorded = ledger.recorded_at(feed.scope, waiting)
    moment = now or datetime.now(UTC)
    return [gave_up(r, datetime.fromisoformat(recorded[r.transaction_id]), moment,
                    feed.resume.sale_wait_hours, feed.name)
            if r.transaction_id in recorded else r for r in results]
