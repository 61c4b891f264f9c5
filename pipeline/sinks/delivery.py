"""The platform-independent delivery engine: rate limit, concurrency, retries, per-event outcomes.

A platform plugs in through a :class:`PlatformAdapter`:

* ``plan(checkouts)`` turns checkout rows into :class:`Batch` es (one request each) plus the
  results it can decide without sending (``NOT_SENT``);
* ``build_request(batch, client)`` builds (and signs) one attempt's request; it is called again
  for every retry, so signatures carry a fresh date (it may instead return a ``RequestFailure``
  or the batch's results when nothing can be sent, e.g. a token call failed; a request carrying
  only some of the batch names them, ``PreparedRequest.carries``);
* ``parse_response(batch, status, headers, body)`` returns one :class:`EventResult` per unit of the
  batch, or a :class:`RequestFailure` when the whole request failed.

The engine owns everything else: a token bucket in requests per minute that starts with a small
burst and refills slightly below the limit (so a sliding-window limiter is never tripped), bounded
concurrency over one connection-reusing :class:`pipeline.sinks.http.HttpClient`, retries with
exponential backoff and jitter that honour ``Retry-After`` (which also pauses every other
sender), ``on_sending`` before each request (awaited when it returns an awaitable: the request
goes out only once it is done) and ``on_result`` exactly once per transaction. A transaction's
result counts the ``on_sending`` marks whose request did not carry it (``EventResult.withdrawn``:
refused or stopped meanwhile, nothing built, or decided without it), so that the ledger counts
only requests that could have reached the platform.
Whether a failed request is retried now, left for a rerun, or stops the whole submission is
decided in one place, :func:`disposition`.
Batches of a later ``phase`` start only after every batch of earlier phases settled (refunds after
the sales they refund).

Requests are bounded by size as well as count: adapters encode each unit once when they plan
(``Unit.body``) and group units with :func:`pack`, which closes a request before the next unit
would take its body over the target's ``max_request_bytes``; a unit too large for a request of its
own is never sent (:func:`too_large`, code ``request_too_large``, failed permanent). A request the
platform refuses as too large anyway (HTTP 413: refused before it was processed) is sent again in
halves, down to single transactions; a single one refused so is settled the same way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol

from pipeline.core.members import PERSONAL_FIELDS
from pipeline.logs import REDACTED, customer_ids_pattern, masked_match, redact
from pipeline.sinks.base import CheckoutRow, EventResult, OnResult, OnSending, Outcome, RetryClass
from pipeline.sinks.http import HttpClient, HttpError, HttpTimeout, tls_context

__all__ = [
    "REQUEST_TOO_LARGE",
    "Batch",
    "DeliveryEngine",
    "DeliveryPolicy",
    "DeliveryReport",
    "Disposition",
    "Plan",
    "PlatformAdapter",
    "PlatformSink",
    "PreparedRequest",
    "RequestFailure",
    "StoppedWaiting",
    "TokenBucket",
    "Unit",
    "disposition",
    "landed_by_now",
    "pack",
    "parse_retry_after",
    "too_large",
    "wait_left",
]

logger = logging.getLogger(__name__)


# ---- what an adapter exchanges with the engine ----------------------------------------------------


REQUEST_TOO_LARGE = "request_too_large"  # a target-level code of both targets (failed permanent)


@dataclass(frozen=True)
class Unit:
    """One transaction's share of a request: its id, the platform payload (e.g. its events) and,
    once planned, ``body``: the payload encoded as it goes into the request body."""

    transaction_id: str
    payload: Any
    body: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class Batch:
    """Units sent in one request. ``route`` is the adapter's (e.g. "bulk" or "single")."""

    units: tuple[Unit, ...]
    route: str = ""
    phase: int = 0

    @property
    def transaction_ids(self) -> list[str]:
        """The transaction ids in this batch, in order."""
        return [unit.transaction_id for unit in self.units]

    def subset(self, transaction_ids: set[str]) -> Batch:
        """The same request shape with only some of the units (for retries)."""
        return replace(self, units=tuple(u for u in self.units if u.transaction_id in transaction_ids))


@dataclass(frozen=True)
class Plan:
    """What ``plan`` decided: batches to send and results settled without sending."""

    batches: list[Batch]
    unsent: list[EventResult] = field(default_factory=list)


@dataclass(frozen=True)
class PreparedRequest:
    """One HTTP request, body exactly as it will be sent."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""
    # the transactions it carries when not all of its batch's (the others were decided without it)
    carries: frozenset[str] | None = None


@dataclass(frozen=True)
class RequestFailure:
    """The whole request failed. ``status`` is None when no response arrived.

    ``reauthenticate`` tells the engine the adapter has dropped cached credentials (an expired
    token) and one more attempt can succeed.
    """

    status: int | None
    code: str
    message: str
    retry_after: float | None = None
    reauthenticate: bool = False


def too_large(transaction_id: str, *, size: int = 0, limit: int = 0, refused: str = "",
              attempts: int = 0) -> EventResult:
    """The result of a transaction too large to send: never sent, as its request alone would be
    ``size`` bytes, over ``limit``; or ``refused`` by the platform as too large (its message).
    Failed permanent, for review; ``posfeed rerun --feed NAME --failed --include-permanent`` sends
    it again (once ``max_request_bytes`` is raised, or the platform takes more)."""
    message = (f"its request was refused as too large: {refused}" if refused else
               f"never sent: its request would be {size} bytes, over target.max_request_bytes ({limit})")
    return EventResult(transaction_id, Outcome.REJECTED, error_code=REQUEST_TOO_LARGE,
                       error_message=message, attempts=attempts)


def pack(
    units: Sequence[Unit],
    *,
    route: str,
    phase: int = 0,
    max_count: int,
    max_bytes: int,
    overhead: int,
    count: Callable[[Unit], int] = lambda unit: 1,
) -> tuple[list[Batch], list[EventResult]]:
    """``units`` in order, in requests of at most ``max_count`` (as ``count`` counts a unit: a unit
    counting more goes alone) whose body stays within ``max_bytes``: ``overhead`` bytes plus the
    units' bodies with a comma between each two. A unit whose request alone would pass
    ``max_bytes`` is not sent: its :func:`too_large` result is returned instead."""
    batches: list[Batch] = []
    refused: list[EventResult] = []
    current: list[Unit] = []
    counted = size = 0
    for unit in units:
        alone = overhead + len(unit.body)
        if alone > max_bytes:
            refused.append(too_large(unit.transaction_id, size=alone, limit=max_bytes))
            continue
        if current and (counted + count(unit) > max_count or size + 1 + len(unit.body) > max_bytes):
            batches.append(Batch(tuple(current), route=route, phase=phase))
            current = []
        if current:
            counted, size = counted + count(unit), size + 1 + len(unit.body)
        else:
            counted, size = count(unit), alone
        current.append(unit)
    if current:
        batches.append(Batch(tuple(current), route=route, phase=phase))
    return batches, refused


class PlatformAdapter(Protocol):
    """What a platform provides to the engine."""

    def plan(self, checkouts: Sequence[CheckoutRow]) -> Plan:
        """Map checkouts into batches (and results for what cannot be sent)."""
        ...

    async def build_request(
        self, batch: Batch, client: HttpClient
    ) -> PreparedRequest | RequestFailure | list[EventResult]:
        """Build one attempt's request (sign it now; fetch a token with ``client`` if needed).

        Instead of a request it may return a :class:`RequestFailure` (e.g. the token call failed)
        or the batch's results (decided only now, e.g. a cancel whose purchase was not created).
        """
        ...

    def parse_response(
        self, batch: Batch, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[EventResult] | RequestFailure:
        """One result per unit of the batch, or a whole-request failure."""
        ...


# ---- policy ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """Limits and retry settings (from the feed's ``[target]``)."""

    requests_per_minute: float | None = 1500
    max_concurrency: int = 8
    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    timeout_seconds: float = 30.0
    # the longest a platform's Retry-After is honoured (a longer one, "inf" or a far date: this)
    retry_after_max_seconds: float = 300.0
    # keep this share of the limit as headroom for clock and latency differences with the server
    rate_headroom: float = 0.02
    burst: int | None = None  # None: a few requests, never a minute's worth

    @classmethod
    def from_target(cls, target: Any) -> DeliveryPolicy:
        """Read the common ``[target]`` keys (both platforms share their names)."""
        return cls(
            requests_per_minute=target.requests_per_minute,
            max_concurrency=target.max_concurrency,
            max_attempts=target.max_attempts,
            backoff_base_seconds=target.backoff_base_seconds,
            backoff_max_seconds=target.backoff_max_seconds,
            timeout_seconds=target.timeout_seconds,
            retry_after_max_seconds=getattr(target, "retry_after_max_seconds", 300.0),
            rate_headroom=getattr(target, "rate_headroom", 0.02),
        )

    def bucket_burst(self) -> int:
        """Tokens available at the start: a second's worth at most, capped by concurrency."""
        if self.burst is not None:
            return max(1, self.burst)
        if self.requests_per_minute is None:
            return self.max_concurrency
        return max(1, min(self.max_concurrency, math.ceil(self.requests_per_minute / 600)))

    def bucket_capacity(self) -> int:
        """Tokens the bucket may hold: the burst plus one, so a late wake-up loses no time."""
        return self.bucket_burst() + 1

    def refill_per_minute(self) -> float | None:
        """Refill rate so that a full bucket + one minute of refill never exceeds the limit."""
        if self.requests_per_minute is None:
            return None
        limit = self.requests_per_minute * (1 - self.rate_headroom)
        return max(limit - self.bucket_capacity(), self.requests_per_minute / 10)

    def honoured(self, retry_after: float | None) -> float | None:
        """A platform's Retry-After as it is waited: never below 0 nor above
        ``retry_after_max_seconds`` (so "inf", "1e999" or a date years ahead wait that long)."""
        if retry_after is None or math.isnan(retry_after):
            return None
        return min(max(0.0, retry_after), self.retry_after_max_seconds)

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Delay before attempt ``attempt + 1``: Retry-After when given (see :meth:`honoured`),
        else exponential + jitter."""
        retry_after = self.honoured(retry_after)
        if retry_after is not None:
            return retry_after + rng.uniform(0, min(1.0, retry_after * 0.1))
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


class Disposition(StrEnum):
    """What to do after a whole request failed."""

    RETRY = "retry"  # transient: try again in this submission (bounded attempts)
    SPLIT = "split"  # too large (413): refused before processing, send it again in halves
    DEFER = "defer"  # not fixable by retrying now: leave failed-retryable for a rerun
    HALT = "halt"  # credentials refused: send nothing more in this submission


class StoppedWaiting(Exception):
    """A stop (SIGTERM, Ctrl-C) came while :func:`landed_by_now` waited: the read it waited for is
    not made, so the rows of the batch stay as they were (in doubt) for the next run."""


# the stop event of the submission under way (set by :meth:`DeliveryEngine.deliver`), which the
# adapters' waits before a read of the platform watch
_STOP: ContextVar[threading.Event | None] = ContextVar("delivery_stop", default=None)
STOP_POLL_SECONDS = 0.2  # how soon a wait before a read notices a stop


async def landed_by_now(since: float | None, wait: float) -> None:
    """Until ``wait`` seconds after ``since`` (Unix seconds, when a request may have gone out; None:
    long ago): a request the platform still held when its sender died has landed by then, so a
    read of the platform made after it finds what that request did. A stop of the submission
    during the wait raises :class:`StoppedWaiting` (a read made sooner could miss what landed)."""
    left = wait_left(since, wait, time.time())
    stop = _STOP.get()
    end = time.monotonic() + left
    while left > 0:
        if stop is not None and stop.is_set():
            raise StoppedWaiting
        await asyncio.sleep(min(left, STOP_POLL_SECONDS))
        left = end - time.monotonic()


def wait_left(since: float | None, wait: float, now: float) -> float:
    """Seconds still to wait at ``now`` for ``wait`` to pass after ``since``, never more than
    ``wait``: a ``since`` ahead of ``now`` (written by a host of a shared ledger whose clock runs
    ahead of this one's) counts as now, not as a wait of hours."""
    return max(0.0, min(wait, (since or 0) + wait - now))


def disposition(failure: RequestFailure) -> Disposition:
    """The one place that decides retryable-now vs later vs stop for a failed request."""
    if failure.reauthenticate:
        return Disposition.RETRY
    # no answer, or a 2xx that is no verdict (empty, not JSON, naming nothing sent): the request
    # may have landed, and the adapter settles that before anything goes out again
    if (failure.status is None or failure.status in (408, 425, 429) or failure.status >= 500
            or 200 <= failure.status < 300):
        return Disposition.RETRY
    if failure.status in (401, 403):
        return Disposition.HALT
    if failure.status == 413:
        return Disposition.SPLIT
    return Disposition.DEFER


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None when absent/invalid.

    Never negative; ``nan`` is invalid, ``inf`` / ``1e999`` / a date years ahead are returned as
    they are, for :meth:`DeliveryPolicy.honoured` to cap."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# ---- rate limit ----------------------------------------------------------------------------------


class TokenBucket:
    """Requests-per-minute token bucket with a pause (after a 429 / Retry-After). FIFO waiters."""

    def __init__(
        self,
        per_minute: float | None,
        burst: int,
        *,
        capacity: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self._rate = per_minute / 60 if per_minute else None
        self._capacity = float(max(burst, capacity or burst))
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` and restart with an empty bucket."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._tokens = 0.0

    async def acquire(self) -> None:
        """Wait for one request's token."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:  # the bucket outlives event loops
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    self._updated = self._clock()
                    continue
                if self._rate is None:
                    return
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1 - 1e-9:  # float dust must not stall the bucket
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self._sleep((1 - self._tokens) / self._rate)


# ---- the engine ------------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """Counters of one submission (for logs and benchmarks)."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    credentials_refused: str | None = None  # the platform's answer when it refused our credentials

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "failures": self.failures,
            "outcomes": dict(self.outcomes),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


class DeliveryEngine:
    """Delivers one submission's batches through an adapter; see the module docstring."""

    def __init__(
        self,
        adapter: PlatformAdapter,
        policy: DeliveryPolicy,
        *,
        client: HttpClient | None = None,
        rng: random.Random | None = None,
        mask_customers: bool = False,
    ):
        self.adapter = adapter
        self.policy = policy
        self.mask_customers = mask_customers
        self._client = client
        self._rng = rng or random.Random()
        # one bucket for the engine's life: submissions in a row share the limit (and any pause)
        self.bucket = TokenBucket(policy.refill_per_minute(), policy.bucket_burst(),
                                  capacity=policy.bucket_capacity())
        self._owned: HttpClient | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None

    def _client_for_this_loop(self) -> HttpClient:
        """The given client, or our own pooled one, reused by submissions on the same loop."""
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            if self._ssl is None:
                self._ssl = tls_context()  # loading CA certificates is slow: once
            self._owned = HttpClient(
                timeout_seconds=self.policy.timeout_seconds,
                max_connections=self.policy.max_concurrency,
                tls=self._ssl,
            )
            self._owned_loop = loop
        return self._owned

    async def aclose(self) -> None:
        """Close our own connection pool (a given client is the caller's to close)."""
        if self._owned is not None and self._owned_loop is asyncio.get_running_loop():
            await self._owned.aclose()
        self._owned = None
        self._owned_loop = None

    async def deliver(
        self,
        checkouts: Sequence[CheckoutRow],
        on_sending: OnSending,
        on_result: OnResult,
        *,
        stop: threading.Event | None = None,
    ) -> DeliveryReport:
        """Deliver every checkout; ``on_result`` is called exactly once per transaction."""
        run = _Submission(self, on_sending, on_result, stop)
        _STOP.set(stop)  # the waits before a read, in this task and its workers, watch it
        if self.mask_customers:
            run.customers = {str(c["transaction_id"]): str(c["customer_id"])
                             for c in checkouts if c.get("customer_id")}
        run.personal = sorted({str(v) for c in checkouts for k, v in (c.get("profile") or {}).items()
                               if k in PERSONAL_FIELDS and v}, key=len, reverse=True)
        started = time.monotonic()
        plan = self.adapter.plan(checkouts)
        for result in plan.unsent:
            run.settle(result)
        client = self._client_for_this_loop() if plan.batches else None
        for phase in sorted({batch.phase for batch in plan.batches}):
            assert client is not None
            await run.run_phase([b for b in plan.batches if b.phase == phase], client)
        run.report.elapsed_seconds = time.monotonic() - started
        return run.report


class _Submission:
    """State of one ``deliver`` call."""

    def __init__(
        self,
        engine: DeliveryEngine,
        on_sending: OnSending,
        on_result: OnResult,
        stop: threading.Event | None,
    ):
        self.engine = engine
        self.policy = engine.policy
        self.on_sending = on_sending
        self.on_result = on_result
        self.stop = stop
        self.settled: set[str] = set()
        self.report = DeliveryReport()
        self.halted: RequestFailure | None = None
        self.bucket = engine.bucket
        self.pending = 0
        self.queue: asyncio.Queue[tuple[Batch, int] | None] = asyncio.Queue()
        self.customers: dict[str, str] = {}  # with masking: each transaction's customer id
        self.personal: list[str] = []  # enrollments: the members' details, longest first
        self.withdrawn: dict[str, int] = {}  # marks (on_sending) whose request did not carry it

    def loggable(self, batch: Batch, text: str) -> str:
        """A platform's message as the log may show it: our secrets and the members' details
        redacted and, with masking, the batch's customer ids masked (a platform may echo what it
        was sent)."""
        text = redact(text)
        for value in self.personal:
            text = text.replace(value, REDACTED)
        customers = [self.customers[t] for t in batch.transaction_ids if t in self.customers]
        return customer_ids_pattern(customers).sub(masked_match, text) if customers else text

    def settle(self, result: EventResult) -> None:
        if result.transaction_id in self.settled:
            logger.error("second result for transaction %s ignored", result.transaction_id)
            return
        self.settled.add(result.transaction_id)
        withdrawn = self.withdrawn.pop(result.transaction_id, 0)
        if withdrawn:
            result = replace(result, withdrawn=result.withdrawn + withdrawn)
        key = str(result.outcome)
        self.report.outcomes[key] = self.report.outcomes.get(key, 0) + 1
        self.on_result(result)

    def settle_all(self, batch: Batch, code: str, message: str, attempts: int,
                   retry_class: RetryClass = RetryClass.TRANSIENT) -> None:
        for tid in batch.transaction_ids:
            self.settle(EventResult(tid, Outcome.RETRYABLE, error_code=code, error_message=message,
                                    attempts=attempts, retry_class=retry_class))

    def withdraw(self, transaction_ids: Iterable[str]) -> None:
        """Their latest mark (``on_sending``) went with no request carrying them: their results
        give back the attempt it added."""
        for tid in transaction_ids:
            self.withdrawn[tid] = self.withdrawn.get(tid, 0) + 1

    async def run_phase(self, batches: list[Batch], client: HttpClient) -> None:
        if not batches:
            return
        self.queue = asyncio.Queue()
        for batch in batches:
            self.queue.put_nowait((batch, 1))
        self.pending = len(batches)
        workers = min(self.policy.max_concurrency, len(batches))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self.worker(client))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None

    def _finish_one(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            for _ in range(self.policy.max_concurrency):
                self.queue.put_nowait(None)

    def _later(self, batch: Batch, attempt: int, delay: float) -> None:
        self.report.retries += 1
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self.queue.put_nowait, (batch, attempt))

    async def worker(self, client: HttpClient) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            batch, attempt = item
            if not self._may_send(batch, attempt):
                self._finish_one()
                continue
            await self.bucket.acquire()
            if not self._may_send(batch, attempt):
                self._finish_one()
                continue
            outcome = await self.send(client, batch, attempt)
            if outcome is None:  # not sent after all: settled as unsent
                self._finish_one()
            elif isinstance(outcome, RequestFailure):
                self.on_failure(batch, attempt, outcome)
            else:
                self.on_results(batch, attempt, outcome)

    def _may_send(self, batch: Batch, attempt: int, *, marked: bool = False) -> bool:
        """Whether ``batch`` may go out now; if not, it is settled unsent (``marked``: its in-doubt
        mark is committed, and its results give back the attempt the mark added)."""
        if self.halted is None and (self.stop is None or not self.stop.is_set()):
            return True
        if marked:
            self.withdraw(batch.transaction_ids)
        if self.halted is not None:
            self.settle_all(batch, self.halted.code, self.halted.message, attempt - 1, RetryClass.CREDENTIALS)
        else:
            self.settle_all(batch, "stopped", "submission stopped before this was sent", attempt - 1,
                            RetryClass.STOPPED)
        return False

    async def send(self, client: HttpClient, batch: Batch, attempt: int
                   ) -> list[EventResult] | RequestFailure | None:
        """The request of ``batch``: its results, or a whole-request failure; None when it is not
        sent after all (credentials refused or a stop while its mark was committed: settled)."""
        marked = self.on_sending(batch.transaction_ids)
        if marked is not None:
            await marked  # the in-doubt mark is committed before the request goes out
            if not self._may_send(batch, attempt, marked=True):  # refused or stopped meanwhile
                return None
        try:
            request = await self.engine.adapter.build_request(batch, client)
        except StoppedWaiting:  # nothing read, nothing sent: settled stopped, as before the mark
            self._may_send(batch, attempt, marked=marked is not None)
            return None
        if not isinstance(request, PreparedRequest):
            # nothing was sent (a failure, e.g. of the token call, or results decided at build time)
            self.withdraw(batch.transaction_ids)
            return request
        if request.carries is not None:  # the others were decided without this request
            self.withdraw(t for t in batch.transaction_ids if t not in request.carries)
        self.report.requests += 1
        try:
            reply = await client.request(
                request.method, request.url, headers=request.headers, body=request.body
            )
        except HttpTimeout as exc:
            return RequestFailure(None, "timeout", f"no answer in time ({exc.kind})")
        except HttpError as exc:
            return RequestFailure(None, "connection_error", str(exc))
        if reply.status == 429:
            self.report.rate_limited += 1
        return self.engine.adapter.parse_response(batch, reply.status, reply.headers, reply.body)

    def on_failure(self, batch: Batch, attempt: int, failure: RequestFailure) -> None:
        self.report.failures += 1
        decision = disposition(failure)
        wait = self.policy.honoured(failure.retry_after)
        if wait is not None:
            if failure.retry_after is not None and failure.retry_after > wait:
                logger.warning("the platform asked to wait %s s (Retry-After); waiting %s s "
                               "(target.retry_after_max_seconds)", failure.retry_after, wait)
            self.bucket.pause(wait)
        if decision is Disposition.SPLIT:
            self._split(batch, attempt, failure)
            return
        if decision is Disposition.RETRY and attempt < self.policy.max_attempts:
            delay = self.policy.backoff(attempt, failure.retry_after, self.engine._rng)
            if failure.status == 429 and failure.retry_after is None:
                self.bucket.pause(delay)  # over the limit: everyone waits, not just this batch
            logger.info("request failed (%s: %s); attempt %d of %d in %.2fs", failure.code,
                        self.loggable(batch, failure.message), attempt + 1, self.policy.max_attempts, delay)
            self._later(batch, attempt + 1, delay)
            return
        retry_class = {Disposition.HALT: RetryClass.CREDENTIALS,
                       Disposition.DEFER: RetryClass.DEFERRED}.get(decision, RetryClass.TRANSIENT)
        if decision is Disposition.HALT:
            logger.error("platform refused our credentials (%s: %s); sending stops",
                         failure.code, self.loggable(batch, failure.message))
            self.halted = failure
            # the run's summary, exit cause and problem quote it: as the log may show it
            self.report.credentials_refused = f"{failure.code}: {self.loggable(batch, failure.message)}"
        self.settle_all(batch, failure.code, failure.message, attempt, retry_class)
        self._finish_one()

    def _split(self, batch: Batch, attempt: int, failure: RequestFailure) -> None:
        """A request refused as too large was not processed: its halves go out as requests of
        their own (now, same attempt); a single transaction refused so is too large to send."""
        if len(batch.units) == 1:
            self.settle(too_large(batch.units[0].transaction_id, refused=failure.message or "HTTP 413",
                                  attempts=attempt))
            self._finish_one()
            return
        logger.info("a request of %d transactions was refused as too large (%s); sending it in halves",
                    len(batch.units), self.loggable(batch, failure.message))
        half = len(batch.units) // 2
        self.pending += 1  # one batch becomes two
        for units in (batch.units[:half], batch.units[half:]):
            self.queue.put_nowait((replace(batch, units=units), attempt))

    def on_results(self, batch: Batch, attempt: int, results: list[EventResult]) -> None:
        by_id = {r.transaction_id: r for r in results}
        retry: set[str] = set()
        for tid in batch.transaction_ids:
            result = by_id.get(tid)
            if result is None:
                result = EventResult(tid, Outcome.RETRYABLE, error_code="missing_result",
                                     error_message="the response had no result for this transaction")
            # a retryable result decided without a request (attempts 0: e.g. held for review) is
            # not retried in this submission: nothing would change
            if (result.outcome is Outcome.RETRYABLE and attempt < self.policy.max_attempts
                    and result.attempts != 0):
                retry.add(tid)
                continue
            self.settle(result if result.attempts == attempt else replace(result, attempts=attempt))
        if retry:
            delay = self.policy.backoff(attempt, None, self.engine._rng)
            self._later(batch.subset(retry), attempt + 1, delay)
        else:
            self._finish_one()


class PlatformSink:
    """A :class:`pipeline.sinks.base.Sink` made of an adapter and the delivery engine."""

    def __init__(
        self,
        adapter: PlatformAdapter,
        policy: DeliveryPolicy,
        *,
        client: HttpClient | None = None,
        rng: random.Random | None = None,
        mask_customers: bool = False,
    ):
        self.adapter = adapter
        self.policy = policy
        self._engine = DeliveryEngine(adapter, policy, client=client, rng=rng, mask_customers=mask_customers)
        self.last_report: DeliveryReport | None = None

    async def submit(
        self,
        checkouts: Sequence[CheckoutRow],
        on_sending: OnSending,
        on_result: OnResult,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        """Deliver every checkout; ``on_result`` exactly once per transaction id."""
        self.last_report = await self._engine.deliver(checkouts, on_sending, on_result, stop=stop)

    async def aclose(self) -> None:
        """Close the connection pool (submissions on one event loop share it until then) and let
        the adapter drop what it holds for the platform (a session token)."""
        await self._engine.aclose()
        close = getattr(self.adapter, "close", None)
        if close is not None:
            close()

    def learned_event_ids(self) -> dict[str, tuple[str, ...]]:
        """Platform event ids the adapter found (by lookups) for accepted transactions the ledger
        holds without one, each given once; nothing for an adapter that finds none."""
        learned = getattr(self.adapter, "learned_event_ids", None)
        return learned() if learned is not None else {}
