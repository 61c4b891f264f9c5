"""The CRM.COM sink against the real sandbox: tokens, renewal, bulk mapping, cancels, unsent rows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from pipeline.config import Feed
from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import SandboxConfig, SandboxState
from pipeline.sinks import make_sink
from pipeline.sinks.base import ORIGINAL_NOT_FOUND, EventResult, Outcome
from pipeline.sinks.crmcom import CrmcomAdapter, CrmcomRejectCode, OriginalLookup
from pipeline.sinks.crmcom_returns import ReturnCode
from pipeline.sinks.delivery import PlatformSink
from tests.sinks.test_crmcom_mapping import checkout, sale_of


class Clock:
    """A settable clock: UTC datetimes for the sandbox, monotonic seconds for the sink."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def crm(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxServer]:
    """A sandbox on a settable clock, with the CRM.COM credentials in the environment."""
    with SandboxServer(SandboxState(SandboxConfig(), clock=clock)) as server:
        cfg = platform_of(server).config
        monkeypatch.setenv("CRMCOM_USERNAME", cfg.username)
        monkeypatch.setenv("CRMCOM_PASSWORD", cfg.password)
        monkeypatch.setenv("CRMCOM_ORGANISATION", cfg.organisation)
        monkeypatch.setenv("CRMCOM_WEB_API_KEY", cfg.web_api_key)
        yield server


def platform_of(server: SandboxServer) -> CrmcomPlatform:
    platform: CrmcomPlatform = server.state.platforms[PLATFORM]
    return platform


def feed_of(server: SandboxServer, **target: Any) -> Feed:
    settings: dict[str, Any] = {
        "kind": "crmcom",
        "base_url": server.url,
        "requests_per_minute": 60000,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "timeout_seconds": 10,
        **target,
    }
    return Feed.model_validate({"name": "crmcom-test", "target": settings})


def sink_of(
    server: SandboxServer, clock: Clock | None = None, originals: OriginalLookup | None = None, **target: Any
) -> PlatformSink:
    options: dict[str, Any] = {"originals": originals}
    if clock is not None:
        options["clock"] = clock.monotonic
    sink = make_sink(feed_of(server, **target), **options)
    assert isinstance(sink, PlatformSink)
    return sink


def submit(sink: PlatformSink, rows: Sequence[dict[str, Any]]) -> dict[str, EventResult]:
    results: list[EventResult] = []
    sent: list[str] = []
    asyncio.run(sink.submit(rows, sent.extend, results.append))
    by_id = {r.transaction_id: r for r in results}
    assert len(by_id) == len(results) == len(rows), "one result per transaction"
    return by_id


def adapter_of(sink: PlatformSink) -> CrmcomAdapter:
    adapter = sink.adapter
    assert isinstance(adapter, CrmcomAdapter)
    return adapter


def stored(server: SandboxServer) -> dict[str, dict[str, Any]]:
    listing = httpx.get(f"{server.url}/_sandbox/transactions", params={"platform": "crmcom"}).json()
    return {t["transaction_id"]: t for t in listing["transactions"]}


def test_one_token_serves_many_requests(crm: SandboxServer) -> None:
    sink = sink_of(crm)
    first = submit(sink, [checkout("T1"), checkout("T2")])
    second = submit(sink, [checkout("T3")])
    assert {r.outcome for r in [*first.values(), *second.values()]} == {Outcome.ACCEPTED}
    assert adapter_of(sink).tokens.issued == 1
    assert len(platform_of(crm).tokens) == 1
    assert set(stored(crm)) == {"T1", "T2", "T3"}


def test_the_token_is_renewed_before_it_expires(crm: SandboxServer, clock: Clock) -> None:
    sink = sink_of(crm, clock, token_ttl_seconds=600, token_renew_margin_seconds=60)
    submit(sink, [checkout("T1")])
    clock.now += timedelta(seconds=500)
    submit(sink, [checkout("T2")])
    assert adapter_of(sink).tokens.issued == 1
    clock.now += timedelta(seconds=50)  # within the renewal margin
    submit(sink, [checkout("T3")])
    assert adapter_of(sink).tokens.issued == 2
    assert crm.state.stats["auth_failures"] == 0


def test_an_expired_token_is_renewed_and_the_request_retried_once(crm: SandboxServer, clock: Clock) -> None:
    # the platform expires tokens sooner than the target believes: the answer says so
    platform_of(crm).config.token_ttl_seconds = 60
    sink = sink_of(crm, clock)
    submit(sink, [checkout("T1")])
    clock.now += timedelta(seconds=61)
    results = submit(sink, [checkout("T2")])
    assert results["T2"].outcome is Outcome.ACCEPTED
    assert results["T2"].attempts == 2
    assert adapter_of(sink).tokens.issued == 2
    assert crm.state.stats["auth_failures"] == 1
    assert set(stored(crm)) == {"T1", "T2"}


def test_a_token_refused_again_after_renewal_stops_sending(crm: SandboxServer) -> None:
    platform_of(crm).config.token_ttl_seconds = 0  # every token is born expired
    sink = sink_of(crm)
    results = submit(sink, [checkout("T1"), checkout("T2")])
    assert {r.outcome for r in results.values()} == {Outcome.RETRYABLE}
    assert {r.error_code for r in results.values()} == {"TOKEN_EXPIRED"}
    # one renewal, then the engine halts: no request loops
    assert adapter_of(sink).tokens.issued == 2
    assert stored(crm) == {}


def test_wrong_credentials_halt_the_submission(crm: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMCOM_PASSWORD", "wrong")
    results = submit(sink_of(crm), [checkout("T1"), checkout("T2"), checkout("T3")])
    assert {r.outcome for r in results.values()} == {Outcome.RETRYABLE}
    assert {r.error_code for r in results.values()} == {"AUTHENTICATION_FAILED"}
    assert crm.state.stats["auth_failures"] == 1
    assert stored(crm) == {}


def test_web_api_key_authentication(crm: SandboxServer) -> None:
    sink = sink_of(crm, auth="web_api_key", web_api_key_env="CRMCOM_WEB_API_KEY")
    assert submit(sink, [checkout("T1")])["T1"].outcome is Outcome.ACCEPTED


def test_bulk_maps_processed_and_unprocessed_back_to_each_transaction(crm: SandboxServer) -> None:
    sink = sink_of(crm, bulk_size=3)
    submit(sink, [checkout("T1")])
    before = crm.state.stats["requests"]
    rows = [checkout("T1"), checkout("T2"), checkout("T3", "unknown-7"), checkout("T4"), checkout("T5")]
    results = submit(sink, rows)
    assert crm.state.stats["requests"] - before == 2  # 5 purchases in calls of up to 3
    assert results["T1"].outcome is Outcome.ALREADY_ACCEPTED
    assert results["T3"].outcome is Outcome.REJECTED and results["T3"].error_code == "CUSTOMER_NOT_FOUND"
    for tid in ("T2", "T4", "T5"):
        assert results[tid].outcome is Outcome.ACCEPTED
        assert results[tid].event_ids == (stored(crm)[tid]["events"][0]["id"],)
    assert set(stored(crm)) == {"T1", "T2", "T4", "T5"}


def test_duplicate_reference_can_be_treated_as_a_conflict(crm: SandboxServer) -> None:
    submit(sink_of(crm), [checkout("T1")])
    results = submit(sink_of(crm, on_duplicate="rejected"), [checkout("T1")])
    assert results["T1"].outcome is Outcome.REJECTED
    assert results["T1"].error_code == "DUPLICATE_REFERENCE_NUMBER"


def test_a_returned_transaction_cancels_its_purchase(crm: SandboxServer) -> None:
    accepted = submit(sink_of(crm), [checkout("T1")])["T1"]
    ledger = {"T1": sale_of(event_ids=accepted.event_ids)}
    sink = sink_of(crm, originals=ledger.get)
    results = submit(sink, [checkout("R1", kind="return", original="T1")])
    assert results["R1"].outcome is Outcome.ACCEPTED
    assert results["R1"].event_ids == accepted.event_ids
    assert stored(crm)["T1"]["status"] == "cancelled"
    # sent again after a crash (in doubt): the lookup finds the purchase cancelled, nothing is resent
    requests = crm.state.stats["requests"]
    again = submit(sink, [{**checkout("R1", kind="return", original="T1"), "may_have_landed": True}])
    assert (again["R1"].outcome, again["R1"].error_code) == (Outcome.ALREADY_ACCEPTED, "found_by_lookup")
    assert crm.state.stats["lookups"] == 1 and crm.state.stats["requests"] == requests + 1  # the show only
    # a cancel the platform refuses as already cancelled is its own outcome, never sent money
    refused = submit(sink_of(crm, originals=ledger.get), [checkout("R1", kind="return", original="T1")])
    assert (refused["R1"].outcome, refused["R1"].error_code) == (
        Outcome.NOT_SENT,
        CrmcomRejectCode.ALREADY_CANCELLED,
    )
    # a second whole return of the sale, with the first on record, is caught before sending
    ledger["T1"] = sale_of(
        event_ids=accepted.event_ids,
        earlier_returns=(
            {
                "transaction_id": "R1",
                "state": "accepted",
                "items": [{"product_id": "P1", "quantity": "-1.000", "line_total": "-12.50"}],
            },
        ),
    )
    requests = crm.state.stats["requests"]
    repeated = submit(sink_of(crm, originals=ledger.get), [checkout("R1b", kind="return", original="T1")])
    assert (repeated["R1b"].outcome, repeated["R1b"].error_code) == (Outcome.NOT_SENT, "already_returned")
    assert crm.state.stats["requests"] == requests


@pytest.mark.parametrize("bulk_size", [1, 10])
def test_a_sale_and_its_return_in_one_submission(crm: SandboxServer, bulk_size: int) -> None:
    rows = [checkout("R1", kind="return", original="T1"), checkout("T1"), checkout("T2")]
    results = submit(sink_of(crm, bulk_size=bulk_size), rows)
    assert {tid: r.outcome for tid, r in results.items()} == dict.fromkeys(
        ["R1", "T1", "T2"], Outcome.ACCEPTED
    )
    assert stored(crm)["T1"]["status"] == "cancelled"
    assert stored(crm)["T2"]["status"] == "accepted"


def test_a_return_whose_sale_failed_in_the_same_submission_waits_or_is_held(crm: SandboxServer) -> None:
    """A sale that failed retryably may still land: its return stays retryable. One refused for good
    never will by itself: its return is held for good (`original_refused`, see
    test_crmcom_hostile_returns)."""
    rows = [checkout("T1", "unknown-1"), checkout("R1", "unknown-1", kind="return", original="T1")]
    results = submit(sink_of(crm, max_attempts=2), rows)
    assert results["T1"].outcome is Outcome.REJECTED
    assert results["R1"].outcome is Outcome.REJECTED
    assert results["R1"].error_code == ReturnCode.ORIGINAL_REFUSED
    crm.config.fault_kinds = ("error_503",)
    crm.config.fault_rate = 1.0
    rows = [checkout("T2"), checkout("R2", kind="return", original="T2")]
    results = submit(sink_of(crm, max_attempts=2), rows)
    assert results["T2"].outcome is Outcome.RETRYABLE
    assert results["R2"].outcome is Outcome.RETRYABLE
    assert results["R2"].error_code == CrmcomRejectCode.ORIGINAL_NOT_DELIVERED


def test_guests_partial_and_unmatched_returns_are_not_sent_and_one_of_an_unknown_sale_waits(
    crm: SandboxServer,
) -> None:
    ledger = {"T1": sale_of(totals=("12.50", "2.50"))}
    rows = [
        checkout("G1", None),
        checkout("R1", kind="return", original="T1", totals=("12.50",)),
        checkout("R2", kind="return"),
        checkout("R3", kind="return", original="T404"),
    ]
    results = submit(sink_of(crm, originals=ledger.get, partial_returns="not_sent"), rows)
    assert {tid: (r.outcome, r.error_code) for tid, r in results.items()} == {
        "G1": (Outcome.NOT_SENT, CrmcomRejectCode.GUEST),
        "R1": (Outcome.NOT_SENT, CrmcomRejectCode.PARTIAL_RETURN),
        "R2": (Outcome.NOT_SENT, CrmcomRejectCode.UNMATCHED_RETURN),
        "R3": (Outcome.RETRYABLE, ORIGINAL_NOT_FOUND),  # its sale has not arrived: it waits
    }
    assert crm.state.stats["requests"] == 0


def test_api_release_17_sends_the_tap_identifier(crm: SandboxServer) -> None:
    submit(sink_of(crm, api_release=17, business_unit="TAP-1", vat_rate="0.2"), [checkout("T1")])
    record = stored(crm)["T1"]
    assert (record["business_unit_field"], record["business_unit"]) == (
        "performed_by_tap_identifier",
        "TAP-1",
    )
    assert (Decimal(record["net"]), Decimal(record["vat"]), Decimal(record["total"])) == (
        Decimal("10.42"),
        Decimal("2.08"),
        Decimal("12.50"),
    )


def test_missing_credentials_fail_when_the_sink_is_built(
    crm: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import SecretError

    monkeypatch.delenv("CRMCOM_ORGANISATION")
    with pytest.raises(SecretError, match="organisation"):
        sink_of(crm)


@pytest.mark.parametrize("bulk_size", [1, 4])
def test_faults_never_lose_or_double_a_purchase(crm: SandboxServer, bulk_size: int) -> None:
    crm.config.fault_rate = 0.3
    crm.config.slow_ms = 20
    crm.config.seed = 7
    crm.state.reset()
    sales = [checkout(f"T{n}") for n in range(30)]
    returns = [checkout(f"R{n}", kind="return", original=f"T{n}") for n in range(0, 30, 5)]
    results = submit(sink_of(crm, bulk_size=bulk_size, max_attempts=12), [*sales, *returns])
    assert {r.outcome for r in results.values()} <= {Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED}
    assert crm.state.stats["faults_injected"] > 0
    purchases = stored(crm)
    assert set(purchases) == {f"T{n}" for n in range(30)}
    assert {tid for tid, p in purchases.items() if p["status"] == "cancelled"} == {
        f"T{n}" for n in range(0, 30, 5)
    }
    # a repeated reference or cancel only ever follows a response the client never saw
    assert set(crm.state.duplicate_transaction_ids) <= crm.state.lost_transaction_ids


@pytest.mark.parametrize("bulk_size", [1, 5])
def test_a_path_the_platform_does_not_have_fails_the_request_not_the_purchases(
    crm: SandboxServer, bulk_size: int
) -> None:
    # a mistyped path answers HTTP 404 with an error envelope: no verdict on the purchases (the
    # platform's errors come with HTTP 200), so they stay retryable instead of refused for good
    sink = sink_of(crm, create_path="customer_events/purchases/crate",
                   create_multiple_path="customer_events/purchases/crate_multiple", bulk_size=bulk_size,
                   max_attempts=2)
    results = submit(sink, [checkout("T1"), checkout("T2")])
    assert {r.outcome for r in results.values()} == {Outcome.RETRYABLE}
    assert {r.error_code for r in results.values()} == {"http_404"}
    assert stored(crm) == {}
    again = submit(sink_of(crm, bulk_size=bulk_size), [checkout("T1"), checkout("T2")])  # path mended
    assert {r.outcome for r in again.values()} == {Outcome.ACCEPTED}
    assert set(stored(crm)) == {"T1", "T2"}
