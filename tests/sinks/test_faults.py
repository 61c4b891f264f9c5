"""Thousands of checkouts through injected faults and a rate limit: each lands exactly once."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.base import Outcome
from tests.sandbox_fixtures import TargetKit, make_checkout, submit_rows

CHECKOUTS = 3000


@pytest.mark.slow
def test_every_checkout_lands_exactly_once_through_faults(sandbox_env: SandboxServer, target_kind: str,
                                                         target_kit: TargetKit) -> None:
    config = sandbox_env.config
    config.fault_rate = 0.10
    config.seed = 20261120
    config.latency_ms = 1
    config.slow_ms = 30
    # the platform allows 12000 requests a minute, counted over 1-second windows (200 per second)
    config.requests_per_minute = 12000
    config.rate_window_seconds = 1.0
    sandbox_env.state.reset()  # re-seed the fault dice
    feed = target_kit.feed(sandbox_env, requests_per_minute=12000, bulk_size=10, max_attempts=10,
                           max_concurrency=8)
    rows = [make_checkout(f"FT-{n:05d}", f"cust-{n % 97}") for n in range(CHECKOUTS)]

    done = submit_rows(feed, rows)

    outcomes = Counter(result.outcome for result in done.results.values())
    assert len(done.results) == CHECKOUTS
    assert set(outcomes) <= {Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED}, outcomes
    state = sandbox_env.state
    listed = Counter(tx["transaction_id"] for tx in state.listing(target_kind))
    assert set(listed) == {row["transaction_id"] for row in rows}
    assert max(listed.values()) == 1  # zero duplicates accepted
    assert state.stats["faults_injected"] > 0
    # a transaction was only ever submitted again when an earlier answer was lost on the way back
    assert set(state.duplicate_transaction_ids) <= state.lost_transaction_ids
    # ... and never more often than its answers were lost (a retry's answer can be lost again)
    for tid, count in Counter(state.duplicate_transaction_ids).items():
        assert count <= state.lost_answers[tid], tid
    already = {tid for tid, r in done.results.items() if r.outcome is Outcome.ALREADY_ACCEPTED}
    assert already <= state.lost_transaction_ids
    retried = {tid for tid, r in done.results.items() if r.attempts > 1}
    assert state.lost_transaction_ids <= retried
