"""A platform's whole-request refusal that echoes our secrets or customer ids never reaches the log
as it came: the engine logs it redacted and, with customer-id hashing, masked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from pipeline.logs import mask_customer_id, register_secret
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.base import EventResult
from pipeline.sinks.delivery import Batch, DeliveryPolicy, PlatformSink, RequestFailure
from pipeline.sinks.http import HttpClient
from tests.sandbox_fixtures import make_checkout

SECRET = "echoed-secret-5e7a"


class EchoingAdapter:
    """Sends each transaction to the sandbox; every answer is read as a 503 quoting what was sent
    (the sandbox never echoes, so this one case needs a stand-in for the answer)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def plan(self, checkouts: Any) -> Any:
        from pipeline.sinks.delivery import Plan, Unit

        return Plan([Batch((Unit(c["transaction_id"], c["customer_id"]),)) for c in checkouts])

    async def build_request(self, batch: Batch, client: HttpClient) -> Any:
        from pipeline.sinks.delivery import PreparedRequest

        return PreparedRequest("GET", self.url + "/_sandbox/stats", {})

    def parse_response(self, batch: Batch, status: int, headers: Mapping[str, str],
                       body: bytes) -> list[EventResult] | RequestFailure:
        customer = batch.units[0].payload
        return RequestFailure(503, "busy", f"cannot serve customer {customer} with key {SECRET} now")


@pytest.mark.parametrize("hashing", [True, False])
def test_an_echoed_refusal_is_logged_redacted_and_masked(
        sandbox: SandboxServer, caplog: pytest.LogCaptureFixture, hashing: bool) -> None:
    register_secret(SECRET)  # as resolving the feed's secrets does
    sink = PlatformSink(EchoingAdapter(sandbox.url), DeliveryPolicy(max_attempts=2, backoff_base_seconds=0.01,
                                                                    backoff_max_seconds=0.01),
                        mask_customers=hashing)
    rows = [make_checkout("EC-1", "member-4711")]

    async def go() -> None:
        try:
            await sink.submit(rows, lambda ids: None, lambda result: None)
        finally:
            await sink.aclose()

    with caplog.at_level(logging.INFO, logger="pipeline.sinks.delivery"):
        asyncio.run(go())

    logged = [r.getMessage() for r in caplog.records if "request failed" in r.getMessage()]
    assert logged
    assert all(SECRET not in line and "key ***" in line for line in logged)
    if hashing:
        assert all("member-4711" not in line and mask_customer_id("member-4711") in line for line in logged)
    else:
        assert all("member-4711" in line for line in logged)
