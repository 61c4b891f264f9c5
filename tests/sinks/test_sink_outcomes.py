"""Every outcome class, client <-> sandbox over loopback, for each platform (``target_kind``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import make_sink
from pipeline.sinks.base import EventResult, Outcome
from tests.sandbox_fixtures import TargetKit, make_checkout, submit_rows


def _listed(sandbox: SandboxServer, kind: str) -> list[str]:
    return [tx["transaction_id"] for tx in sandbox.state.listing(kind)]


def test_accepted_with_platform_evidence(sandbox_env: SandboxServer, target_kind: str,
                                         target_kit: TargetKit) -> None:
    feed = target_kit.feed(sandbox_env)
    rows = [make_checkout(f"A-{n}", f"cust-{n}") for n in range(5)]
    done = submit_rows(feed, rows)
    assert set(done.outcomes().values()) == {"accepted"}
    assert all(r.event_ids for r in done.results.values())
    assert sorted(_listed(sandbox_env, target_kind)) == sorted(r["transaction_id"] for r in rows)
    sent = {tid for ids in done.sending for tid in ids}
    assert sent == set(done.results)


def test_second_send_is_already_accepted(sandbox_env: SandboxServer, target_kind: str,
                                         target_kit: TargetKit) -> None:
    feed = target_kit.feed(sandbox_env)
    rows = [make_checkout("D-1"), make_checkout("D-2")]
    assert set(submit_rows(feed, rows).outcomes().values()) == {"accepted"}
    again = submit_rows(feed, rows)
    assert set(again.outcomes().values()) == {"already_accepted"}
    assert sorted(_listed(sandbox_env, target_kind)) == ["D-1", "D-2"]
    assert sandbox_env.state.stats["duplicate_transaction_attempts"] == 2


def test_unknown_customer_is_rejected_permanently_with_the_platform_code(
    sandbox_env: SandboxServer, target_kit: TargetKit
) -> None:
    feed = target_kit.feed(sandbox_env)
    done = submit_rows(feed, [make_checkout("U-1", target_kit.unknown_customer), make_checkout("U-2")])
    rejected = done.results["U-1"]
    assert rejected.outcome is Outcome.REJECTED
    assert rejected.error_code
    assert rejected.error_message
    assert done.results["U-2"].outcome is Outcome.ACCEPTED


def test_server_errors_are_retried_then_left_retryable(sandbox_env: SandboxServer,
                                                      target_kit: TargetKit) -> None:
    feed = target_kit.feed(sandbox_env, max_attempts=3)
    sandbox_env.config.fault_kinds = ("error_503",)
    sandbox_env.config.fault_rate = 1.0
    done = submit_rows(feed, [make_checkout("F-1")])
    result = done.results["F-1"]
    assert result.outcome is Outcome.RETRYABLE
    assert result.attempts == 3
    assert len(done.sending) == 3  # announced before every attempt
    assert sandbox_env.state.listing() == []


def test_unreachable_platform_is_retryable(sandbox_env: SandboxServer, target_kit: TargetKit) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    feed = target_kit.feed(sandbox_env, max_attempts=2)
    target = feed.target.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    feed = feed.model_copy(update={"target": target})
    done = submit_rows(feed, [make_checkout("C-1")])
    assert done.results["C-1"].outcome is Outcome.RETRYABLE


def test_lost_response_is_settled_by_the_duplicate_answer(sandbox_env: SandboxServer, target_kind: str,
                                                         target_kit: TargetKit) -> None:
    feed = target_kit.feed(sandbox_env)
    sandbox_env.config.fault_kinds = ("lost_response",)
    sandbox_env.config.fault_rate = 1.0
    announced: list[list[str]] = []

    def heal_after_first_send(ids: Sequence[str]) -> None:
        announced.append(list(ids))
        if len(announced) > 1:  # the first request is processed but its answer is lost
            sandbox_env.config.fault_rate = 0.0

    results: dict[str, EventResult] = {}
    sink = make_sink(feed)
    asyncio.run(sink.submit([make_checkout("L-1")], heal_after_first_send,
                            lambda r: results.setdefault(r.transaction_id, r)))
    # Antavo answers 5003; a platform whose duplicate answer names the existing event may settle
    # it as accepted with that evidence
    settled = {Outcome.ALREADY_ACCEPTED} if target_kind == "antavo" else {Outcome.ALREADY_ACCEPTED,
                                                                          Outcome.ACCEPTED}
    assert results["L-1"].outcome in settled
    assert results["L-1"].attempts == 2
    assert _listed(sandbox_env, target_kind) == ["L-1"]
    assert sandbox_env.state.lost_transaction_ids == {"L-1"}
    # Antavo answers the resend "already used"; CRM.COM documents no such answer, so the purchase is
    # looked up instead of sent again
    assert sandbox_env.state.duplicate_transaction_ids == (["L-1"] if target_kind == "antavo" else [])


def test_voids_are_not_sent(sandbox_env: SandboxServer, target_kit: TargetKit) -> None:
    feed = target_kit.feed(sandbox_env)
    done = submit_rows(feed, [make_checkout("V-1", kind="void")])
    assert done.results["V-1"].outcome is Outcome.NOT_SENT
    assert done.sending == []


def test_retry_after_makes_the_sender_wait_instead_of_hammering(sandbox_env: SandboxServer,
                                                               target_kind: str,
                                                               target_kit: TargetKit) -> None:
    # the platform allows 4 requests per 1-second window; the feed believes in far more
    sandbox_env.config.requests_per_minute = 240
    sandbox_env.config.rate_window_seconds = 1.0
    sandbox_env.config.retry_after_seconds = 1.0
    feed = target_kit.feed(sandbox_env, bulk_size=1, max_concurrency=2, max_attempts=6,
                           requests_per_minute=60000)
    rows = [make_checkout(f"R-{n}", f"cust-{n}") for n in range(10)]
    done = submit_rows(feed, rows)
    assert set(done.outcomes().values()) == {"accepted"}
    assert len(_listed(sandbox_env, target_kind)) == 10
    limited = sandbox_env.state.stats["rate_limited"]
    assert limited >= 1
    # every 429 paused all senders for Retry-After: far fewer refusals than requests
    assert limited <= 6
