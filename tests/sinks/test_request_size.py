"""Requests bounded by size (``target.max_request_bytes``), and a platform that refuses a request as
too large (413): each platform against the real sandbox (``target_kind``)."""

from __future__ import annotations

from collections import Counter

from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.base import Outcome
from pipeline.sinks.delivery import REQUEST_TOO_LARGE
from tests.sandbox_fixtures import TargetKit, make_checkout, submit_rows

LIMIT = 64 * 1024


def _held(sandbox: SandboxServer, kind: str) -> Counter[str]:
    """How many times the platform holds each transaction id."""
    return Counter(tx["transaction_id"] for tx in sandbox.state.listing(kind))


def _rows(count: int, *, lines: int = 3, huge: str | None = None) -> list[dict[str, object]]:
    rows = [make_checkout(f"N-{n:03d}", f"cust-{n}", lines=lines) for n in range(count)]
    if huge is not None:  # about 100 KB of body on either platform
        rows.insert(count // 2, make_checkout(huge, "cust-huge", lines=900))
    return rows


def test_one_transaction_too_large_for_a_request_is_never_sent_and_the_others_are_delivered(
    sandbox_env: SandboxServer, target_kind: str, target_kit: TargetKit
) -> None:
    sandbox_env.config.max_body_bytes = LIMIT  # the platform's limit, as configured
    feed = target_kit.feed(sandbox_env, bulk_size=50, max_request_bytes=LIMIT)
    rows = _rows(40, huge="HUGE-1")
    done = submit_rows(feed, rows)

    huge = done.results["HUGE-1"]
    assert (huge.outcome, huge.error_code, huge.attempts) == (Outcome.REJECTED, REQUEST_TOO_LARGE, 0)
    assert huge.error_message and f"max_request_bytes ({LIMIT})" in huge.error_message
    assert all("HUGE-1" not in ids for ids in done.sending)  # never marked in doubt: never sent
    normal = {tid: r.outcome for tid, r in done.results.items() if tid != "HUGE-1"}
    assert set(normal.values()) == {Outcome.ACCEPTED} and len(normal) == 40
    assert _held(sandbox_env, target_kind) == Counter({tid: 1 for tid in normal})
    assert sandbox_env.state.stats["bad_requests"] == 0  # no request was refused


def test_requests_close_before_the_body_passes_the_limit(
    sandbox_env: SandboxServer, target_kind: str, target_kit: TargetKit
) -> None:
    limit = 20_000
    sandbox_env.config.max_body_bytes = limit
    feed = target_kit.feed(sandbox_env, bulk_size=50, max_request_bytes=limit)
    rows = _rows(60, lines=20)  # about 3 KB each: 50 of them would be about 150 KB
    done = submit_rows(feed, rows)
    assert {r.outcome for r in done.results.values()} == {Outcome.ACCEPTED}
    assert all(len(ids) < 50 for ids in done.sending) and len(done.sending) > 2
    assert all(r.attempts == 1 for r in done.results.values())
    assert sandbox_env.state.stats["bad_requests"] == 0
    assert _held(sandbox_env, target_kind) == Counter({str(r["transaction_id"]): 1 for r in rows})


def test_a_request_the_platform_refuses_as_too_large_is_sent_in_halves_exactly_once(
    sandbox_env: SandboxServer, target_kind: str, target_kit: TargetKit
) -> None:
    sandbox_env.config.max_body_bytes = 20_000  # the platform's real limit is lower than configured
    feed = target_kit.feed(sandbox_env, bulk_size=50)  # max_request_bytes: 4 MiB
    rows = _rows(50, lines=10, huge="HUGE-2")  # about 75 KB of normal ones in one request, first
    done = submit_rows(feed, rows)

    huge = done.results["HUGE-2"]
    assert (huge.outcome, huge.error_code) == (Outcome.REJECTED, REQUEST_TOO_LARGE)
    assert huge.error_message and "refused as too large" in huge.error_message
    normal = {tid: r.outcome for tid, r in done.results.items() if tid != "HUGE-2"}
    assert set(normal.values()) == {Outcome.ACCEPTED} and len(normal) == 50
    assert _held(sandbox_env, target_kind) == Counter({tid: 1 for tid in normal})
    assert sandbox_env.state.stats["duplicate_transaction_attempts"] == 0
    assert sandbox_env.state.stats["bad_requests"] > 0  # it did refuse some requests
    sent = Counter(tid for ids in done.sending for tid in ids)
    assert sent["HUGE-2"] > 1 and max(len(ids) for ids in done.sending) == 50
