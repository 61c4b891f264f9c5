"""What every sink (target platform) promises the submit stage.

A sink takes checkout rows (dicts with the keys of :data:`pipeline.records.CHECKOUT_SCHEMA`,
money as :class:`decimal.Decimal`, ``items`` a list of dicts) and delivers each to its platform. For crash
safety it calls ``on_sending`` with the transaction ids of a request *before* the request goes out
(the ledger marks them in doubt; when it returns an awaitable, the sink awaits it first: the mark
is committed only then) and ``on_result`` once per transaction with its final
:class:`EventResult` for this submission.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from pipeline.records import ORIGINAL_NOT_FOUND, VOIDED_IN_DOUBT, EventResult, Outcome, RetryClass

__all__ = ["DRY_RUN_LOOKUP", "ORIGINAL_NOT_FOUND", "VOIDED_IN_DOUBT", "CheckoutRow", "EventResult",
           "OnResult", "OnSending", "Outcome", "RetryClass", "Sink", "sale_not_found", "voided_not_landed"]

CheckoutRow = Mapping[str, Any]


OnSending = Callable[[Sequence[str]], Awaitable[None] | None]
OnResult = Callable[[EventResult], None]


def sale_not_found(tid: str, sale: str, where: str = "the ledger does not know it") -> EventResult:
    """A return not sent yet: its ``sale`` has not arrived (``where`` it was looked for); it waits
    for it (retryable, :attr:`RetryClass.WAITING`): the plain run after the sale is delivered sends it."""
    return EventResult(tid, Outcome.RETRYABLE, error_code=ORIGINAL_NOT_FOUND, attempts=0,
                       retry_class=RetryClass.WAITING,
                       error_message=f"not sent: its sale {sale} has not arrived ({where}); the return "
                                     "waits for it: the run after the sale is delivered sends it")


def voided_not_landed(tid: str, void: str, where: str) -> EventResult:
    """A sale in doubt that the void ``void`` names, which a lookup (``where``) did not find on the
    platform: not sent again, so a voided sale does not land. Its message stays the sale's once it
    is post-voided (an earlier request went out: "never sent" would contradict the earlier log)."""
    return EventResult(tid, Outcome.REJECTED, error_code=VOIDED_IN_DOUBT, attempts=0,
                       error_message=f"voided at the till by {void} and not found on the platform "
                                     f"({where}): not sent again (nothing to cancel or refund)")


# what a dry run, which asks the platform nothing, says of where a sale a void names was looked for
DRY_RUN_LOOKUP = "a dry run asks the platform nothing: shown as a lookup that does not find it"


class Sink(Protocol):
    """A target platform."""

    async def submit(
        self,
        checkouts: Sequence[CheckoutRow],
        on_sending: OnSending,
        on_result: OnResult,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        """Deliver every checkout; call ``on_result`` exactly once per transaction id.

        When ``stop`` is set (graceful shutdown), nothing new is sent: requests in flight finish
        and every transaction not yet sent gets a ``RETRYABLE`` result with code ``stopped``.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
