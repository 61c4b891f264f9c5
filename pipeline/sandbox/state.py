"""What every emulated platform shares: counters, faults, latency, rate limit, accepted transactions.

One :class:`SandboxState` lives per sandbox server. Platform modules (``antavo.py``, ``crmcom.py``)
call, per request::

    state.count("requests")
    await state.delay()                      # configured latency
    retry_after = state.admit(PLATFORM)      # sliding-window rate limit; seconds to wait when refused
    fault = state.draw_fault()               # seeded: None or a Fault kind
    ...                                      # verify, process, store with state.put_transaction()

Faults: ``error_500`` / ``error_503`` (nothing processed), ``drop`` (connection closed, nothing
processed), ``slow`` (processed after ``slow_ms``), ``lost_response`` (processed and stored, then the
connection is closed: the client is left in doubt; transaction ids are remembered in
``lost_transaction_ids`` so tests can tell a legitimate duplicate attempt from a wrong one). Two
more are drawn only when ``fault_kinds`` names them: ``empty_answer`` (processed and stored, then
200 with an empty body: an answer that proves nothing) and ``trickle`` (processed and stored, then
a 200 whose body comes one byte at a time and never ends, until the client hangs up); both count
as lost answers. ``answer_without_id``, also drawn only when named, hits CRM.COM's single
``create`` / ``create_spend`` only (other calls answer as usual): the purchase is stored and the
answer is OK, but its ``data`` has no ``id``.

Accepted transactions are kept per platform (``put_transaction`` / ``get_transaction``); a platform
keeps any other record it needs with ``put_record(kind, key, record)`` / ``get_record`` /
``records(kind)``. With a ``state_file`` every change is written through to it (an SQLite file,
see :mod:`pipeline.sandbox.store`) before the platform answers, so a restart keeps every record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pipeline.sandbox.store import RecordStore

__all__ = [
    "ANSWER_LOST",
    "DEFAULT_FAULTS",
    "STAT_KEYS",
    "DropConnection",
    "Fault",
    "SandboxConfig",
    "SandboxState",
    "TrickleAnswer",
    "jsonable",
    "lost_answer",
]

logger = logging.getLogger(__name__)

STAT_KEYS = (
    "requests",
    "events_accepted",
    "events_rejected",
    "duplicate_transaction_attempts",
    "rate_limited",
    "faults_injected",
    "auth_failures",
    "bad_requests",
    "lost_responses",
)


class Fault(StrEnum):
    """Injected failure kinds."""

    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    DROP = "drop"
    SLOW = "slow"
    LOST_RESPONSE = "lost_response"
    EMPTY_ANSWER = "empty_answer"
    TRICKLE = "trickle"
    ANSWER_WITHOUT_ID = "answer_without_id"


# the faults drawn unless ``fault_kinds`` says otherwise (an answer that proves nothing or never
# ends is asked for by name)
DEFAULT_FAULTS: tuple[str, ...] = (Fault.ERROR_500, Fault.ERROR_503, Fault.DROP, Fault.SLOW,
                                   Fault.LOST_RESPONSE)
# the faults whose answer is lost after the request was processed
ANSWER_LOST = (Fault.LOST_RESPONSE, Fault.EMPTY_ANSWER, Fault.TRICKLE)
HOLD_POLL_SECONDS = 0.02  # how often a held request looks whether it was released


@dataclass
class SandboxConfig:
    """Behaviour of the sandbox; every field may be changed while it runs (tests do)."""

    region: str = "demo"
    api_key: str = "sandbox-key"
    api_secret: str = field(default="sandbox-secret", repr=False)
    clock_skew_seconds: float = 300.0
    allow_api_key: bool = True  # accept unsigned `?api_key=` requests (a development environment)
    requests_per_minute: int | None = None  # None: no limit
    rate_window_seconds: float = 60.0
    retry_after_seconds: float | None = None  # None: time until the window frees a slot
    send_retry_after: bool = True
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = DEFAULT_FAULTS
    latency_ms: float = 0.0
    # from the moment the counter named first reaches the number second, every request waits
    # until hold_after is cleared, ``hold_ms`` at most (a test catches a client mid-submission this
    # way, whatever the machine's speed, and releases the held requests after its kill)
    hold_after: tuple[str, int] | None = None
    hold_ms: float = 2000.0
    slow_ms: float = 1500.0
    seed: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    # a request body not all arrived after this many seconds: 408 and the connection closed
    body_timeout_seconds: float = 10.0
    # request body bytes held at once, all requests together (from the first byte read until the
    # answer): past it a request is answered 503 with Retry-After, so many slow or big bodies at
    # once cannot take the sandbox's memory
    max_buffered_bytes: int = 256 * 1024 * 1024
    # customer ids with this prefix are unknown to the platform (404 160212); None: all known
    unknown_customer_prefix: str | None = "unknown-"
    # every error answer's message quotes the request it refuses (its Authorization header, query
    # and body, customer ids and all), as some real platforms' messages do
    echo_requests: bool = False
    # Antavo: a ``refund_item`` of one of these product ids is refused (400 112204), the other
    # events of its request are processed as usual (a refund the platform accepts only in part)
    refuse_refund_items: tuple[str, ...] = ()
    # Antavo's read API: refund events younger than this many seconds are not listed yet (a read
    # model behind the events; raised mid-run, a read served by a replica further behind than the
    # one read before); 0: every event is listed at once
    read_lag_seconds: float = 0.0
    state_file: Path | None = None
    # how long a change waits for a state file another process holds (writing, or locked): the
    # wait happens in the event loop, where every client would wait with it. Past it the change
    # is answered 503 with Retry-After (nothing kept); 0: not at all
    state_busy_timeout_ms: int = 0
    # Antavo ``opt_in`` / ``profile``: the profile fields that take true or false ([A]: consents);
    # every other field takes a string (or null). A field of another type is refused 400 with
    # ``profile_type_error_code`` ([A]: 0, the code of Antavo's other "Property ..." errors)
    profile_flag_fields: tuple[str, ...] = ("consent_email", "consent_sms")
    profile_type_error_code: int = 0

    def public(self) -> dict[str, Any]:
        """The settings without the secret."""
        data = asdict(self)
        data["api_secret"] = "***"
        data["state_file"] = str(self.state_file) if self.state_file else None
        return data


class SandboxState:
    """Counters, fault dice, rate-limit windows and stored transactions; thread-safe."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.config = config or SandboxConfig()
        self.clock = clock
        self.lock = threading.RLock()
        self.platforms: dict[str, Any] = {}  # per-platform objects a platform module keeps here
        self._listings: dict[str, Callable[[], list[dict[str, Any]]]] = {}
        self.buffered_bytes = 0  # request body bytes held now (see max_buffered_bytes)
        self._store: RecordStore | None = None
        self._forget()
        if self.config.state_file is not None:
            self._store = RecordStore(self.config.state_file, background_checkpoints=True,
                                      busy_timeout_ms=self.config.state_busy_timeout_ms)
            self._load_store(self._store)

    # ---- bookkeeping ----------------------------------------------------------------------------

    @property
    def store(self) -> RecordStore | None:
        """The state file's store (None without a state file)."""
        return self._store

    def reset(self) -> None:
        """Forget counters, windows, faults' dice, transactions and records (not the config),
        in the state file first: when it cannot be emptied (StateFileError), nothing is forgotten."""
        with self.lock:
            if self._store is not None:
                self._store.clear()
            self._forget()

    def _forget(self) -> None:
        with self.lock:
            self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
            self.faults_by_kind: dict[str, int] = {}
            self.rng = random.Random(self.config.seed)
            self._windows: dict[str, deque[float]] = {}
            self.transactions: dict[str, dict[str, dict[str, Any]]] = {}
            self.lost_transaction_ids: set[str] = set()
            self.lost_answers: Counter[str] = Counter()  # lost answers per transaction id
            self.duplicate_transaction_ids: list[str] = []
            self.kept: dict[str, dict[str, Any]] = {}  # other records, by kind then key

    def take_body_bytes(self, size: int) -> bool:
        """Count ``size`` more body bytes held, unless that passes ``max_buffered_bytes``
        (then False, nothing counted)."""
        with self.lock:
            if self.buffered_bytes + size > self.config.max_buffered_bytes:
                return False
            self.buffered_bytes += size
            return True

    def give_back_body_bytes(self, size: int) -> None:
        """Body bytes :meth:`take_body_bytes` counted that are no longer held."""
        with self.lock:
            self.buffered_bytes -= size

    def count(self, key: str, amount: int = 1) -> None:
        """Add to one counter."""
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + amount

    def snapshot(self) -> dict[str, Any]:
        """The counters as `/_sandbox/stats` shows them."""
        with self.lock:
            data: dict[str, Any] = dict(self.stats)
            data["faults_by_kind"] = dict(self.faults_by_kind)
            data["transactions"] = {name: len(txs) for name, txs in self.transactions.items()}
            return data

    # ---- latency, rate limit, faults ---------------------------------------------------------------

    async def delay(self) -> None:
        """Sleep the configured latency; once ``hold_after`` is reached, hold the request until
        ``hold_after`` is cleared, ``hold_ms`` at most (at least the latency)."""
        latency, hold = self.config.latency_ms, self.config.hold_after
        if hold is not None and self.stats.get(hold[0], 0) >= hold[1]:
            started = time.monotonic()
            until = started + self.config.hold_ms / 1000
            while self.config.hold_after is not None and time.monotonic() < until:
                await asyncio.sleep(min(HOLD_POLL_SECONDS, until - time.monotonic()))
            latency -= (time.monotonic() - started) * 1000
        if latency > 0:
            await asyncio.sleep(latency / 1000)

    def admit(self, platform: str) -> float | None:
        """Count a request against the platform's sliding window; seconds to wait when refused."""
        limit = self.config.requests_per_minute
        if limit is None:
            return None
        window = self.config.rate_window_seconds
        now = time.monotonic()
        with self.lock:
            times = self._windows.setdefault(platform, deque())
            while times and times[0] <= now - window:
                times.popleft()
            if len(times) < limit * window / 60:
                times.append(now)
                return None
            self.stats["rate_limited"] += 1
            if self.config.retry_after_seconds is not None:
                return self.config.retry_after_seconds
            return max(0.0, times[0] + window - now)

    def draw_fault(self) -> Fault | None:
        """Roll the seeded dice: a fault kind or None."""
        config = self.config
        if config.fault_rate <= 0 or not config.fault_kinds:
            return None
        with self.lock:
            if self.rng.random() >= config.fault_rate:
                return None
            kind = Fault(self.rng.choice(config.fault_kinds))
            self.stats["faults_injected"] += 1
            self.faults_by_kind[kind] = self.faults_by_kind.get(kind, 0) + 1
            if kind in ANSWER_LOST:
                self.stats["lost_responses"] += 1
            return kind

    async def slow(self) -> None:
        """The extra wait of a ``slow`` fault."""
        await asyncio.sleep(self.config.slow_ms / 1000)

    # ---- transactions ---------------------------------------------------------------------------

    def get_transaction(self, platform: str, transaction_id: str) -> dict[str, Any] | None:
        """A stored transaction or None."""
        with self.lock:
            return self.transactions.get(platform, {}).get(transaction_id)

    def put_transaction(self, platform: str, transaction_id: str, record: dict[str, Any]) -> None:
        """Store (or replace) a transaction record; in the state file first, when there is one.

        With a state file, a record it cannot hold (a non-finite number, a NUL character) raises
        ValueError and a failed write StateFileError; either way nothing changes.
        """
        with self.lock:
            if self._store is not None:
                self._store.put(_transaction_kind(platform), transaction_id, record)
            self.transactions.setdefault(platform, {})[transaction_id] = record

    def put_record(self, kind: str, key: str, record: Any) -> None:
        """Store (or replace) a record of any other kind (``"<platform>.<what>"``), like
        :meth:`put_transaction`."""
        if kind.endswith(_TRANSACTION_SUFFIX):
            raise ValueError(f"kind {kind!r} is reserved for put_transaction")
        with self.lock:
            if self._store is not None:
                self._store.put(kind, key, record)
            self.kept.setdefault(kind, {})[key] = record

    def get_record(self, kind: str, key: str) -> Any | None:
        """A record stored with :meth:`put_record`, or None."""
        with self.lock:
            return self.kept.get(kind, {}).get(key)

    def records(self, kind: str) -> dict[str, Any]:
        """Every record of one kind, by key, in the order first stored (a copy)."""
        with self.lock:
            return dict(self.kept.get(kind, {}))

    def delete_record(self, kind: str, key: str) -> None:
        """Forget one record of :meth:`put_record`."""
        with self.lock:
            if self._store is not None:
                self._store.delete(kind, key)
            self.kept.get(kind, {}).pop(key, None)

    def note_duplicate(self, transaction_id: str) -> None:
        """A transaction id was submitted again."""
        with self.lock:
            self.stats["duplicate_transaction_attempts"] += 1
            self.duplicate_transaction_ids.append(transaction_id)

    def note_lost(self, transaction_ids: Iterable[str]) -> None:
        """These ids were processed but their response is about to be lost."""
        with self.lock:
            ids = list(transaction_ids)
            self.lost_transaction_ids.update(ids)
            self.lost_answers.update(ids)

    def register_listing(self, platform: str, listing: Callable[[], list[dict[str, Any]]]) -> None:
        """A platform that keeps its own store lists it for `/_sandbox/transactions`."""
        self._listings[platform] = listing

    def listing(self, platform: str | None = None) -> list[dict[str, Any]]:
        """Accepted transactions (every platform, or one), JSON-ready."""
        out: list[dict[str, Any]] = []
        with self.lock:
            for name, txs in sorted(self.transactions.items()):
                if platform in (None, name):
                    out.extend({"platform": name, **record} for record in txs.values())
        for name, listing in sorted(self._listings.items()):
            if platform in (None, name):
                out.extend({"platform": name, **record} for record in listing())
        return [jsonable(record) for record in out]

    # ---- persistence ------------------------------------------------------------------------------

    def save(self, path: Path | None = None) -> None:
        """Write every record to another state file ``path`` (replacing its records); without
        ``path`` nothing is left to do: every change is written to the state file when it happens."""
        if path is None or path == self.config.state_file:
            return
        copy = RecordStore(path)
        try:
            with self.lock:
                copy.clear()
                for platform, txs in self.transactions.items():
                    for key, record in txs.items():
                        copy.put(_transaction_kind(platform), key, record)
                for kind, records in self.kept.items():
                    for key, record in records.items():
                        copy.put(kind, key, record)
        finally:
            copy.close()

    def save_if_dirty(self) -> None:
        """Nothing to do: every change is written when it happens (kept for callers of old)."""

    def load(self, path: Path) -> None:
        """Add the records of another state file (SQLite, or the JSON of earlier versions, which
        is converted in place) to this state, and to its own state file when it has one."""
        other = RecordStore(path)
        try:
            with self.lock:
                for kind, key, record in other.rows():
                    if kind.endswith(_TRANSACTION_SUFFIX):
                        self.put_transaction(kind[: -len(_TRANSACTION_SUFFIX)], key, record)
                    else:
                        self.put_record(kind, key, record)
        finally:
            other.close()

    def close(self) -> None:
        """Close the state file (changes are already written); the state keeps working in memory."""
        with self.lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _load_store(self, store: RecordStore) -> None:
        with self.lock:
            for kind, key, record in store.rows():
                if kind.endswith(_TRANSACTION_SUFFIX):
                    self.transactions.setdefault(kind[: -len(_TRANSACTION_SUFFIX)], {})[key] = record
                else:
                    self.kept.setdefault(kind, {})[key] = record
        logger.info("loaded %d transactions from %s",
                    sum(len(t) for t in self.transactions.values()), store.path)


_TRANSACTION_SUFFIX = ".transaction"


def _transaction_kind(platform: str) -> str:
    return platform + _TRANSACTION_SUFFIX


def jsonable(value: Any) -> Any:
    """Decimals as exact strings, sets as lists, datetimes ISO; recursively."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class DropConnection(Response):
    """An ASGI response that starts answering and then closes the connection mid-way.

    ASGI gives an app no way to close a socket before answering; the server closes it when the
    app returns with the body incomplete, and the client sees the connection drop with no usable
    response (``httpx.RemoteProtocolError``).
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send headers promising a body that never comes."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})



# how long a trickled answer goes on at most, and the pause between two of its bytes
TRICKLE_LIMIT_SECONDS = 60.0
TRICKLE_PAUSE_SECONDS = 0.05


class TrickleAnswer(Response):
    """A 200 whose body comes one byte at a time and never ends: it stops when the client hangs up
    (or after :data:`TRICKLE_LIMIT_SECONDS`, the connection then closed mid-body)."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Headers without a length, then a space every :data:`TRICKLE_PAUSE_SECONDS`."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        deadline = time.monotonic() + TRICKLE_LIMIT_SECONDS
        try:
            while not gone.is_set() and time.monotonic() < deadline:
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), TRICKLE_PAUSE_SECONDS)
        finally:
            watcher.cancel()


def lost_answer(fault: Fault) -> Response:
    """The answer of a fault of :data:`ANSWER_LOST`, once the request was processed."""
    if fault is Fault.EMPTY_ANSWER:
        return Response(b"", status_code=200, media_type="application/json")
    if fault is Fault.TRICKLE:
        return TrickleAnswer()
    return DropConnection()
