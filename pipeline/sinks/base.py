"""What every sink (target platform) promises the submit stage.

A sink takes checkout rows (dicts with the keys of :data:`pipeline.records.CHECKOUT_SCHEMA`,
money as :class:`decimal.Decimal`, ``items`` a list of dicts) and delivers each to its platform. For crash
safety it calls ``on_sending`` with the transaction ids of a request *before* the request goes out
(the ledger marks them in doubt) and ``on_result`` once per transaction with its final
:class:`EventResult` for this submission.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

__all__ = ["CheckoutRow", "EventResult", "OnResult", "OnSending", "Outcome", "RetryClass", "Sink"]

CheckoutRow = Mapping[str, Any]


class Outcome(StrEnum):
    """The outcome of delivering one transaction."""

    ACCEPTED = "accepted"
    # the platform says this id was used already: an earlier send landed
    ALREADY_ACCEPTED = "already_accepted"
    # permanent: the platform refused the event for a reason retrying won't fix
    REJECTED = "rejected"
    RETRYABLE = "retryable"  # not delivered yet: 429, 5xx, timeout, connection error
    NOT_SENT = "not_sent"  # the sink cannot express it (e.g. an unmatched return); permanent


class RetryClass(StrEnum):
    """Why a ``RETRYABLE`` transaction was not delivered: whether the next plain run resends it."""

    TRANSIENT = "transient"  # the platform was unreachable, busy or failing: the next run resends it
    STOPPED = "stopped"  # the run stopped before sending it: the next run sends it
    CREDENTIALS = "credentials"  # our credentials were refused: sent once they are fixed
    DEFERRED = "deferred"  # the request itself was refused (wrong URL, too large): `posfeed rerun` only


@dataclass(frozen=True)
class EventResult:
    """One transaction's outcome, with the platform's evidence."""

    transaction_id: str
    outcome: Outcome
    event_ids: tuple[str, ...] = ()
    points: Decimal | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1
    retry_class: RetryClass | None = None  # for RETRYABLE: why (None: transient)


OnSending = Callable[[Sequence[str]], None]
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
