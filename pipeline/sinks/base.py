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

from pipeline.records import EventResult, Outcome, RetryClass

__all__ = ["CheckoutRow", "EventResult", "OnResult", "OnSending", "Outcome", "RetryClass", "Sink"]

CheckoutRow = Mapping[str, Any]


OnSending = Callable[[Sequence[str]], Awaitable[None] | None]
OnResult = Callable[[EventResult], None]


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
