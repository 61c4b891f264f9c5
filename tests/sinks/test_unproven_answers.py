"""Answers that prove nothing (empty 200, a body that never ends, a body cut off): the transactions
stay in doubt, and the next submission settles each of them once, with the platform holding one copy."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.base import Outcome
from tests.sandbox_fixtures import TargetKit, make_checkout, submit_rows


@pytest.mark.parametrize("fault", ["empty_answer", "trickle", "lost_response"])
@pytest.mark.parametrize("bulk_size", [1, 10])
def test_an_answer_that_proves_nothing_leaves_the_batch_in_doubt_and_it_is_settled_once(
        sandbox_env: SandboxServer, target_kind: str, target_kit: TargetKit, fault: str,
        bulk_size: int) -> None:
    sandbox_env.config.fault_kinds = (fault,)
    sandbox_env.config.fault_rate = 1.0
    feed = target_kit.feed(sandbox_env, bulk_size=bulk_size, max_attempts=2, timeout_seconds=0.5,
                           in_doubt="lookup") if target_kind == "crmcom" else \
        target_kit.feed(sandbox_env, bulk_size=bulk_size, max_attempts=2, timeout_seconds=0.5)
    rows = [make_checkout(f"UA-{n}", f"cust-{n}") for n in range(3)]

    first = submit_rows(feed, rows)

    # every request was processed, but no answer said so: nothing is taken as a verdict
    assert {r.outcome for r in first.results.values()} == {Outcome.RETRYABLE}, first.outcomes()
    assert set(first.results) == {row["transaction_id"] for row in rows}

    sandbox_env.config.fault_rate = 0.0
    # what the submit stage hands over for rows sent before
    second = submit_rows(feed, [{**row, "may_have_landed": True} for row in rows])

    assert {r.outcome for r in second.results.values()} == {Outcome.ALREADY_ACCEPTED}, second.outcomes()
    listed = Counter(tx["transaction_id"] for tx in sandbox_env.state.listing(target_kind))
    assert listed == Counter({row["transaction_id"]: 1 for row in rows})
