"""The Antavo sink against the sandbox: routes, refunds, bulk positions, auth, stop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline.errors import SecretError
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import make_sink
from pipeline.sinks.base import EventResult, Outcome
from tests.sandbox_fixtures import antavo_feed, make_checkout, submit_rows


def test_guests_go_one_by_one_and_members_in_bulk(sandbox_env: SandboxServer) -> None:
    rows = [make_checkout(f"M-{n}", f"cust-{n}") for n in range(7)] + [make_checkout("G-1", None)]
    done = submit_rows(antavo_feed(sandbox_env, bulk_size=3), rows)
    assert set(done.outcomes().values()) == {"accepted"}
    sizes = sorted(len(ids) for ids in done.sending)
    assert sizes == [1, 1, 3, 3]  # the guest alone; 7 members as 3 + 3 + 1
    guest = next(tx for tx in sandbox_env.state.listing("antavo") if tx["transaction_id"] == "G-1")
    assert guest["guest"] is True
    assert guest["customer"] is None


def test_bulk_results_map_by_position(sandbox_env: SandboxServer) -> None:
    rows = [make_checkout("B-1", "cust-1"), make_checkout("B-2", "unknown-x"), make_checkout("B-3")]
    submit_rows(antavo_feed(sandbox_env), [make_checkout("B-3")])
    done = submit_rows(antavo_feed(sandbox_env), rows)
    assert done.outcomes() == {"B-1": "accepted", "B-2": "rejected", "B-3": "already_accepted"}
    assert done.results["B-2"].error_code == "160212"
    assert done.results["B-2"].error_message == "Customer not found"
    assert done.results["B-3"].error_code == "5003"
    assert len(done.sending) == 1


def test_refund_in_the_same_submission_follows_its_sale(sandbox_env: SandboxServer) -> None:
    rows = [
        make_checkout("RT-9", "cust-1", kind="return", original_transaction_id="ST-9"),
        make_checkout("ST-9", "cust-1"),
    ]
    done = submit_rows(antavo_feed(sandbox_env), rows)
    assert done.outcomes() == {"ST-9": "accepted", "RT-9": "accepted"}
    [sale] = sandbox_env.state.listing("antavo")
    assert sale["status"] == "refunded"
    assert done.sending[0] == ["ST-9"]


def test_refund_of_an_unknown_transaction_is_rejected_with_112201(sandbox_env: SandboxServer) -> None:
    row = make_checkout("RT-1", "cust-1", kind="return", original_transaction_id="NOPE")
    result = submit_rows(antavo_feed(sandbox_env), [row]).results["RT-1"]
    assert result.outcome is Outcome.REJECTED
    assert result.error_code == "112201"


def test_refund_item_mode_sends_one_event_per_line(sandbox_env: SandboxServer) -> None:
    feed = antavo_feed(sandbox_env, return_mode="refund_item")
    submit_rows(feed, [make_checkout("S-2", "cust-1", lines=3)])
    done = submit_rows(feed, [make_checkout("R-2", "cust-1", kind="return", original_transaction_id="S-2",
                                            lines=2)])
    result = done.results["R-2"]
    assert result.outcome is Outcome.ACCEPTED
    assert len(result.event_ids) == 2
    [sale] = sandbox_env.state.listing("antavo")
    assert [r["action"] for r in sale["refunds"]] == ["refund_item", "refund_item"]
    assert sale["refunded"] == "25.00"
    assert sale["status"] == "accepted"  # one line of three still stands


def test_unmatched_return_is_reported_not_sent(sandbox_env: SandboxServer) -> None:
    done = submit_rows(antavo_feed(sandbox_env), [make_checkout("R-3", kind="return")])
    assert done.results["R-3"].outcome is Outcome.NOT_SENT
    assert done.results["R-3"].error_code == "unmatched_return"
    assert done.sending == []


def test_wrong_secret_halts_the_submission_after_one_refusal(sandbox_env: SandboxServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTAVO_API_SECRET", "not-the-secret")
    rows = [make_checkout(f"W-{n}", f"cust-{n}") for n in range(6)]
    done = submit_rows(antavo_feed(sandbox_env, bulk_size=2, max_concurrency=1), rows)
    assert set(done.outcomes().values()) == {"retryable"}
    assert {r.error_code for r in done.results.values()} == {"101021"}
    assert len(done.sending) == 1
    assert sandbox_env.state.stats["auth_failures"] == 1


def test_missing_secret_is_a_configuration_error(sandbox: SandboxServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTAVO_API_KEY", "k")
    monkeypatch.delenv("ANTAVO_API_SECRET", raising=False)
    with pytest.raises(SecretError, match="ANTAVO_API_SECRET"):
        make_sink(antavo_feed(sandbox))


def test_api_key_mode_sends_unsigned_requests(sandbox_env: SandboxServer) -> None:
    done = submit_rows(antavo_feed(sandbox_env, auth="api_key"), [make_checkout("K-1")])
    assert done.results["K-1"].outcome is Outcome.ACCEPTED
    sandbox_env.config.allow_api_key = False
    refused = submit_rows(antavo_feed(sandbox_env, auth="api_key"), [make_checkout("K-2")])
    assert refused.results["K-2"].outcome is Outcome.RETRYABLE
    assert refused.results["K-2"].error_code == "101021"


def test_stop_leaves_unsent_transactions_retryable(sandbox_env: SandboxServer) -> None:
    stop = threading.Event()
    sink = make_sink(antavo_feed(sandbox_env, bulk_size=1, max_concurrency=1))
    results: dict[str, EventResult] = {}

    def on_sending(ids: object) -> None:
        stop.set()  # a SIGTERM arrives while the first request is going out

    asyncio.run(sink.submit([make_checkout(f"X-{n}") for n in range(4)], on_sending,
                            lambda r: results.setdefault(r.transaction_id, r), stop=stop))
    outcomes = sorted(str(r.outcome) for r in results.values())
    assert outcomes == ["accepted", "retryable", "retryable", "retryable"]
    assert {r.error_code for r in results.values() if r.outcome is Outcome.RETRYABLE} == {"stopped"}


def test_timeouts_are_retried_and_the_transaction_lands_once(sandbox_env: SandboxServer) -> None:
    sandbox_env.config.fault_kinds = ("slow",)
    sandbox_env.config.slow_ms = 600
    sandbox_env.config.fault_rate = 1.0
    calls = 0

    def heal(ids: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            sandbox_env.config.fault_rate = 0.0

    sink = make_sink(antavo_feed(sandbox_env, timeout_seconds=0.2, backoff_base_seconds=0.5,
                                 backoff_max_seconds=1.0))
    results: dict[str, EventResult] = {}
    asyncio.run(sink.submit([make_checkout("TO-1")], heal, lambda r: results.setdefault(r.transaction_id, r)))
    assert results["TO-1"].outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED)
    assert results["TO-1"].attempts == 2
    assert [tx["transaction_id"] for tx in sandbox_env.state.listing("antavo")] == ["TO-1"]


def test_a_wrong_url_leaves_transactions_retryable_not_rejected(sandbox_env: SandboxServer) -> None:
    feed = antavo_feed(sandbox_env, base_url=sandbox_env.url + "/wrong-prefix", bulk_size=1)
    done = submit_rows(feed, [make_checkout("WU-1"), make_checkout("WU-2", None)])
    assert done.outcomes() == {"WU-1": "retryable", "WU-2": "retryable"}
    assert {r.error_code for r in done.results.values()} == {"0"}  # Antavo's code of a 404
