"""The delivery engine's pure parts: token bucket, Retry-After, the one retry decision."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime

import pytest

from pipeline.sinks.delivery import (
    DeliveryPolicy,
    Disposition,
    RequestFailure,
    TokenBucket,
    disposition,
    parse_retry_after,
    wait_left,
)


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sends: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _send_times(per_minute: float, burst: int, count: int, capacity: int | None = None,
                late: float = 0.0) -> list[float]:
    fake = FakeTime()

    async def late_sleep(seconds: float) -> None:
        await fake.sleep(seconds + late)  # a loaded machine wakes sleepers late

    bucket = TokenBucket(per_minute, burst, capacity=capacity, clock=fake.clock, sleep=late_sleep)

    async def go() -> None:
        for _ in range(count):
            await bucket.acquire()
            fake.sends.append(fake.now)

    asyncio.run(go())
    return fake.sends


def test_bucket_starts_with_a_small_burst_then_paces() -> None:
    times = _send_times(600, 2, 12)
    assert times[:2] == [0.0, 0.0]
    gaps = [b - a for a, b in itertools.pairwise(times[2:])]
    assert all(gap == pytest.approx(0.1) for gap in gaps)


@pytest.mark.parametrize("limit", [60, 600, 1500, 20000])
def test_policy_never_exceeds_the_limit_in_any_sliding_minute(limit: int) -> None:
    policy = DeliveryPolicy(requests_per_minute=limit)
    times = _send_times(policy.refill_per_minute() or 0, policy.bucket_burst(), limit + 50,
                        capacity=policy.bucket_capacity(), late=0.001)
    start = 0
    for end, moment in enumerate(times):
        while times[start] <= moment - 60:
            start += 1
        assert end - start + 1 <= limit
    # and the limit is kept busy even when every wake-up comes 1 ms late
    assert sum(1 for t in times if t < 60) >= 0.95 * limit


def test_pause_empties_the_bucket_and_waits() -> None:
    fake = FakeTime()
    bucket = TokenBucket(6000, 5, clock=fake.clock, sleep=fake.sleep)

    async def go() -> None:
        await bucket.acquire()
        bucket.pause(3.0)
        await bucket.acquire()

    asyncio.run(go())
    assert fake.now >= 3.0


def test_retry_after_in_seconds_or_http_date() -> None:
    now = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Fri, 20 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Fri, 20 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999", "-inf", "nan", "-5", "864000",
                                   "Fri, 31 Dec 9999 23:59:59 GMT", "Sat, 01 Jan 10000 00:00:00 GMT",
                                   "Fri, 20 Nov 2126 12:00:00 GMT", "", "  ", "1e-999", "0x10"])
def test_any_retry_after_waits_at_most_the_configured_maximum(value: str) -> None:
    now = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
    policy = DeliveryPolicy(retry_after_max_seconds=60, backoff_max_seconds=8)
    parsed = parse_retry_after(value, now)

    assert parsed is None or parsed >= 0
    wait = policy.honoured(parsed)
    assert wait is None or 0 <= wait <= 60
    delay = policy.backoff(1, parsed, random.Random(1))
    assert 0 <= delay <= 61  # the cap and at most a second of jitter


def test_a_retry_after_of_days_pauses_the_bucket_for_the_maximum_only() -> None:
    fake = FakeTime()
    policy = DeliveryPolicy(retry_after_max_seconds=60)
    bucket = TokenBucket(6000, 5, clock=fake.clock, sleep=fake.sleep)

    async def go() -> None:
        await bucket.acquire()
        bucket.pause(policy.honoured(parse_retry_after("1e999")) or 0)
        await bucket.acquire()

    asyncio.run(go())
    assert 60.0 <= fake.now < 61.0  # the pause, then one token's refill


def test_nan_and_negative_retry_after_are_no_reason_to_wait() -> None:
    assert parse_retry_after("nan") is None
    assert parse_retry_after("-30") == 0.0
    assert DeliveryPolicy().honoured(float("nan")) is None
    assert DeliveryPolicy().honoured(-1.0) == 0.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [(None, Disposition.RETRY), (429, Disposition.RETRY), (500, Disposition.RETRY),
     (503, Disposition.RETRY), (408, Disposition.RETRY), (401, Disposition.HALT),
     (403, Disposition.HALT), (400, Disposition.DEFER), (413, Disposition.SPLIT),
     # a 2xx that is no verdict (empty, not JSON, naming nothing sent) is as good as no answer
     (200, Disposition.RETRY), (204, Disposition.RETRY)],
)
def test_one_place_decides_what_a_failed_request_means(status: int | None, expected: Disposition) -> None:
    assert disposition(RequestFailure(status, "x", "y")) is expected


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = DeliveryPolicy(backoff_base_seconds=1, backoff_max_seconds=8)
    rng = random.Random(1)
    delays = [policy.backoff(attempt, None, rng) for attempt in (1, 2, 3, 4, 5, 6)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(8, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert policy.backoff(1, 12.0, rng) >= 12.0


@pytest.mark.parametrize(
    ("since", "now", "left"),
    [
        (None, 1_000.0, 0.0),  # no request known: long ago
        (1_000.0, 1_000.0, 30.0),  # it just went out: the whole wait
        (1_000.0, 1_010.0, 20.0),
        (1_000.0, 1_045.0, 0.0),  # waited long enough
        # written by a host of a shared ledger whose clock runs an hour ahead: counts as now, so
        # the lookup comes after the wait, not an hour and a wait later
        (4_600.0, 1_000.0, 30.0),
    ],
)
def test_the_wait_before_a_read_back_never_exceeds_the_configured_wait(
    since: float | None, now: float, left: float
) -> None:
    assert wait_left(since, 30.0, now) == left
