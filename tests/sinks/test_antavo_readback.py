"""Refunds exactly once against the sandbox: a refund whose answer was lost is read back from the
platform, not sent again; a guest's is held; the sandbox's read API and its unit check."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import Fault
from pipeline.sinks import make_sink
from pipeline.sinks.antavo import PARTLY_REFUNDED, AntavoAdapter
from pipeline.sinks.antavo_returns import REFUND_IN_DOUBT
from pipeline.sinks.base import EventResult, Outcome
from pipeline.sinks.delivery import Batch
from tests.sandbox_fixtures import antavo_feed, make_checkout, submit_rows


def _sale(sandbox: SandboxServer, tid: str) -> dict[str, Any]:
    return next(t for t in sandbox.state.listing("antavo") if t["transaction_id"] == tid)


def _lose_next_answers(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, count: int = 1,
                       kind: Fault = Fault.LOST_RESPONSE) -> None:
    """The next ``count`` requests are processed and their answers lost (then no more faults)."""
    left = [count]

    def draw() -> Fault | None:
        if left[0] > 0:
            left[0] -= 1
            sandbox.state.note_lost([])
            return kind
        return None

    monkeypatch.setattr(sandbox.state, "draw_fault", draw)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("auto", Fault.LOST_RESPONSE),
        ("refund", Fault.LOST_RESPONSE),
        ("auto", Fault.EMPTY_ANSWER),  # an empty 200: no verdict
        ("auto", Fault.TRICKLE),  # an answer that never ends
    ],
)
def test_a_refund_without_an_answer_is_read_back_in_the_same_submission(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch, mode: str, kind: Fault
) -> None:
    feed = antavo_feed(sandbox_env, return_mode=mode, readback_wait_seconds=0, timeout_seconds=0.5)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=3)])
    _lose_next_answers(sandbox_env, monkeypatch, kind=kind)
    done = submit_rows(feed, [make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1",
                                            lines=2)])
    result = done.results["R-1"]
    assert result.outcome is Outcome.ALREADY_ACCEPTED, result
    assert result.error_code == "read_back" and result.event_ids
    sale = _sale(sandbox_env, "S-1")
    assert len(sale["refunds"]) == (2 if mode == "auto" else 1)  # applied once, not twice
    assert Decimal(sale["refunded"]) == (Decimal("25.00") if mode == "auto" else Decimal("37.50"))
    assert len(done.sending) == 2  # the unanswered request, then its read-back (no third send)


@pytest.mark.parametrize("mode", ["auto", "refund"])
def test_an_in_doubt_refund_from_an_earlier_run_is_settled_from_the_platform(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    feed = antavo_feed(sandbox_env, return_mode=mode, readback_wait_seconds=0, max_attempts=1)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=3)])
    refund = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=2)
    _lose_next_answers(sandbox_env, monkeypatch)
    first = submit_rows(feed, [refund])
    assert first.results["R-1"].outcome is Outcome.RETRYABLE  # landed, but the answer was lost
    # the next run: the ledger says it may have landed
    again = submit_rows(feed, [{**refund, "in_doubt": True}])
    result = again.results["R-1"]
    assert result.outcome is Outcome.ALREADY_ACCEPTED and result.error_code == "read_back", result
    sale = _sale(sandbox_env, "S-1")
    assert len(sale["refunds"]) == (2 if mode == "auto" else 1)
    # in refund mode a resend would have been refused 112201 and recorded failed-permanent
    assert sandbox_env.state.stats["events_rejected"] == 0


def test_what_did_not_land_is_sent_after_the_read_back(sandbox_env: SandboxServer) -> None:
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=3)])
    refund = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=2)
    done = submit_rows(feed, [{**refund, "in_doubt": True}])  # in doubt, but it never went out
    assert done.results["R-1"].outcome is Outcome.ACCEPTED
    assert done.results["R-1"].error_code is None
    assert len(_sale(sandbox_env, "S-1")["refunds"]) == 2


def test_events_other_returns_own_are_not_taken_for_this_one(sandbox_env: SandboxServer) -> None:
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=1, quantity="3")])
    first = submit_rows(feed, [make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1",
                                             quantity="1")]).results["R-1"]
    # R-2 returns the same line again; R-1's event on the platform is R-1's (the ledger says so)
    second = make_checkout("R-2", "cust-1", kind="return", original_transaction_id="S-1", quantity="1")
    done = submit_rows(feed, [{**second, "in_doubt": True, "claimed_event_ids": list(first.event_ids)}])
    assert done.results["R-2"].outcome is Outcome.ACCEPTED and done.results["R-2"].error_code is None
    assert Decimal(_sale(sandbox_env, "S-1")["refunded"]) == Decimal("12.50")


def test_a_guest_refund_that_may_have_landed_is_held_not_resent(sandbox_env: SandboxServer) -> None:
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0)
    submit_rows(feed, [make_checkout("S-G", None)])
    refund = make_checkout("R-G", None, kind="return", original_transaction_id="S-G")
    done = submit_rows(feed, [{**refund, "in_doubt": True}])
    result = done.results["R-G"]
    assert result.outcome is Outcome.REJECTED and result.error_code == REFUND_IN_DOUBT
    assert done.sending == []
    assert _sale(sandbox_env, "S-G")["refunds"] == []


def test_sandbox_refuses_more_units_than_were_bought_and_serves_the_read_api(
    sandbox_env: SandboxServer,
) -> None:
    feed = antavo_feed(sandbox_env, return_mode="refund_item")
    submit_rows(feed, [make_checkout("S-1", "cust-1", quantity="2")])
    over = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", quantity="3",
                         unit_price="1")
    result = submit_rows(feed, [over]).results["R-1"]
    assert result.outcome is Outcome.REJECTED and result.error_code == "112205"
    fine = make_checkout("R-2", "cust-1", kind="return", original_transaction_id="S-1", quantity="2")
    assert submit_rows(feed, [fine]).results["R-2"].outcome is Outcome.ACCEPTED
    key = {"api_key": sandbox_env.config.api_key}
    base = f"{sandbox_env.url}/customers/cust-1/transactions"
    listing = httpx.get(base, params={**key, "id": "S-1"}, timeout=10).json()
    [tx] = listing["transactions"]
    assert tx["id"] == "S-1" and tx["refunded"] == "12.50" and tx["status"] == "refunded"
    events = httpx.get(f"{base}/S-1/events", params=key, timeout=10).json()["events"]
    assert [e["action"] for e in events] == ["checkout", "refund_item"]
    assert events[1]["data"]["product_id"] == "P1"
    assert httpx.get(f"{sandbox_env.url}/customers/cust-2/transactions/S-1/events", params=key,
                     timeout=10).status_code == 404
    assert httpx.get(base, params={"id": "S-1"}, timeout=10).status_code == 401


def test_a_read_api_that_does_not_answer_never_looks_like_a_refund_that_did_not_land(
    sandbox_env: SandboxServer,
) -> None:
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0, max_attempts=2)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=2)])
    refund = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1")
    wrong = antavo_feed(sandbox_env, readback_wait_seconds=0, max_attempts=2,
                        read_api_url=sandbox_env.url + "/nowhere")
    result = submit_rows(wrong, [{**refund, "in_doubt": True}]).results["R-1"]
    assert result.outcome is Outcome.RETRYABLE and result.error_code == "0", result  # a 404's code
    assert _sale(sandbox_env, "S-1")["refunds"] == []
    right = submit_rows(feed, [{**refund, "in_doubt": True}]).results["R-1"]
    assert right.outcome is Outcome.ACCEPTED


def test_identical_returns_of_one_sale_with_a_lost_answer_each_land_once(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0)
    submit_rows(feed, [make_checkout("S-1", "cust-1", quantity="3")])
    returns = [make_checkout(f"R-{n}", "cust-1", kind="return", original_transaction_id="S-1",
                             quantity="1") for n in (1, 2)]
    _lose_next_answers(sandbox_env, monkeypatch)
    done = submit_rows(feed, returns)
    assert {r.outcome for r in done.results.values()} <= {Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED}
    ids = [set(done.results[f"R-{n}"].event_ids) for n in (1, 2)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # each its own refund event
    sale = _sale(sandbox_env, "S-1")
    assert len(sale["refunds"]) == 2 and Decimal(sale["refunded"]) == Decimal("12.50")



def test_only_the_lines_not_found_are_sent_and_the_result_has_every_event(
    sandbox_env: SandboxServer,
) -> None:
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=3)])
    one_line = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=1)
    first = submit_rows(feed, [one_line]).results["R-1"]  # as if one of two lines had landed
    both = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=2)
    result = submit_rows(feed, [{**both, "in_doubt": True}]).results["R-1"]
    assert result.outcome is Outcome.ACCEPTED
    assert len(result.event_ids) == 2 and first.event_ids[0] in result.event_ids
    sale = _sale(sandbox_env, "S-1")
    assert [r["product_id"] for r in sale["refunds"]] == ["P1", "P2"]


def test_a_refund_read_back_then_refused_whole_is_read_back_again_not_sent_whole(
    sandbox_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines a read-back found stay found when the request of the rest is refused whole (429,
    413: nothing of it landed): the next attempt reads back again and sends only the rest."""
    feed = antavo_feed(sandbox_env, readback_wait_seconds=0)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=3, quantity="4")])
    one_line = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=1,
                             quantity="2")
    submit_rows(feed, [one_line])  # as if one of two lines had landed
    admit, calls = sandbox_env.state.admit, [0]

    def refuse_the_third(platform: str) -> float | None:  # two reads, then the send of the rest
        calls[0] += 1
        return 0.0 if calls[0] == 3 else admit(platform)

    monkeypatch.setattr(sandbox_env.state, "admit", refuse_the_third)
    sandbox_env.config.send_retry_after = False
    both = make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=2,
                         quantity="2")
    result = submit_rows(feed, [{**both, "in_doubt": True}]).results["R-1"]
    assert calls[0] > 3 and result.outcome is Outcome.ACCEPTED, result
    sale = _sale(sandbox_env, "S-1")
    assert [r["product_id"] for r in sale["refunds"]] == ["P1", "P2"]  # P1 once, not twice


@pytest.mark.parametrize("n", [1, 2])
def test_a_return_refused_beside_refund_events_no_read_back_counted_names_them_in_words_that_agree(
    sandbox_env: SandboxServer, n: int
) -> None:
    """A return whose lines were all refused while the platform holds refund events of it that no
    read-back of this submission counted: "1 refund event", "2 refund events", never "event(s)"."""
    feed = antavo_feed(sandbox_env)
    assert feed.target.kind == "antavo"
    adapter = AntavoAdapter(feed.target, feed_name=feed.name, api_key="key", api_secret="secret")
    refused = EventResult("R-1", Outcome.REJECTED, error_code="112204", error_message="nope",
                          event_ids=tuple(f"ev-{i}" for i in range(n)))
    result = adapter._refused_after_read_back(refused, Batch(()))
    events = "1 refund event" if n == 1 else "2 refund events"
    assert result.error_code == PARTLY_REFUNDED and result.refunded is None
    assert str(result.error_message).startswith(
        f"partly refunded: the platform holds {events} of it (read back) and refused the rest: 112204 nope;")


def test_a_stop_during_the_wait_before_a_read_back_reads_and_sends_nothing(
    sandbox_env: SandboxServer
) -> None:
    """An in-doubt refund whose read-back must wait ten minutes: a stop (SIGTERM) a moment into
    the wait ends it; nothing is read or sent, and the refund is settled ``stopped`` (retryable),
    left in doubt for the next run."""
    feed = antavo_feed(sandbox_env, readback_wait_seconds=600)
    submit_rows(feed, [make_checkout("S-1", "cust-1", lines=3)])
    refund = {**make_checkout("R-1", "cust-1", kind="return", original_transaction_id="S-1", lines=2),
              "in_doubt": True, "sent_since": time.time()}
    sink = make_sink(feed)
    stop = threading.Event()
    results: dict[str, EventResult] = {}
    before = dict(sandbox_env.state.stats)

    async def go() -> None:
        asyncio.get_running_loop().call_later(0.5, stop.set)
        try:
            await sink.submit([refund], lambda ids: None, lambda r: results.setdefault(r.transaction_id, r),
                              stop=stop)
        finally:
            await sink.aclose()

    asyncio.run(asyncio.wait_for(go(), timeout=60))  # a tenth of the wait: it did not wait it out
    result = results["R-1"]
    assert result.outcome is Outcome.RETRYABLE and result.error_code == "stopped", result
    assert dict(sandbox_env.state.stats) == before  # no read-back, no refund
    assert len(_sale(sandbox_env, "S-1")["refunds"]) == 0
