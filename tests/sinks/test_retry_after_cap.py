"""A platform that asks to wait for days: the wait is capped, the submission ends with a clear error."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.base import Outcome
from tests.sandbox_fixtures import antavo_feed, make_checkout, submit_rows


def test_a_retry_after_of_days_is_waited_only_up_to_the_configured_maximum(
        sandbox_env: SandboxServer, caplog: pytest.LogCaptureFixture) -> None:
    sandbox_env.config.requests_per_minute = 1  # every request after the first: 429
    sandbox_env.config.retry_after_seconds = 3 * 86400  # "come back in three days"
    feed = antavo_feed(sandbox_env, bulk_size=1, max_attempts=3, retry_after_max_seconds=0.05)
    rows = [make_checkout(f"RA-{n}", f"cust-{n}") for n in range(3)]

    done = submit_rows(feed, rows)

    outcomes = Counter(result.outcome for result in done.results.values())
    assert outcomes == {Outcome.ACCEPTED: 1, Outcome.RETRYABLE: 2}
    refused = [r for r in done.results.values() if r.outcome is Outcome.RETRYABLE]
    assert {r.error_code for r in refused} == {"429"}
    assert all(r.attempts == 3 for r in refused)
    assert "waiting 0.05 s (target.retry_after_max_seconds)" in caplog.text
    assert len(sandbox_env.state.listing("antavo")) == 1
