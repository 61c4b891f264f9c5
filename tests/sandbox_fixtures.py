"""A real sandbox HTTP server on 127.0.0.1, for tests of sinks, runs, demos and benchmarks.

Fixtures:

* ``sandbox`` (function): a fresh :class:`SandboxServer` on a free port with the default key and
  secret (``sandbox-key`` / ``sandbox-secret``), no limit, no faults. Change behaviour while it
  runs through ``sandbox.config`` (e.g. ``sandbox.config.fault_rate = 0.1``).
* ``sandbox_env`` (function): ``sandbox`` plus the credentials in the environment variables the
  default target settings name (``ANTAVO_API_KEY``, ``ANTAVO_API_SECRET``, and CRM.COM's when
  its platform registers them in :data:`TARGET_KITS`).
* ``target_kind`` (parametrized over :data:`TARGET_KINDS`) and ``target_kit``: what a
  platform-independent test needs per platform: a feed pointing at the sandbox and a customer id
  the platform does not know.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from pipeline.config import Feed
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import make_sink
from pipeline.sinks.base import EventResult

__all__ = [
    "TARGET_KINDS",
    "TARGET_KITS",
    "Submission",
    "TargetKit",
    "antavo_feed",
    "crmcom_env",
    "crmcom_feed",
    "make_checkout",
    "submit_rows",
]


@dataclass
class Submission:
    """What one sink submission produced: results by id, on_sending calls, the sink."""

    results: dict[str, EventResult]
    sending: list[list[str]]
    sink: Any

    def outcomes(self) -> dict[str, str]:
        """Outcome value by transaction id."""
        return {tid: str(result.outcome) for tid, result in self.results.items()}


def submit_rows(feed: Feed, rows: Sequence[Mapping[str, Any]], **sink_options: Any) -> Submission:
    """Build the feed's sink and submit ``rows``; fails if any transaction gets two results."""
    sink = make_sink(feed, **sink_options)
    results: dict[str, EventResult] = {}
    sending: list[list[str]] = []

    def on_result(result: EventResult) -> None:
        assert result.transaction_id not in results, f"second result for {result.transaction_id}"
        results[result.transaction_id] = result

    async def go() -> None:
        try:
            await sink.submit(rows, lambda ids: sending.append(list(ids)), on_result)
        finally:
            await sink.aclose()

    asyncio.run(go())
    return Submission(results, sending, sink)


def make_checkout(
    transaction_id: str,
    customer_id: str | None = "cust-1",
    *,
    kind: str = "sale",
    original_transaction_id: str | None = None,
    lines: int = 1,
    unit_price: str = "6.25",
    quantity: str = "2",
    currency: str = "EUR",
    store_id: str = "S1",
) -> dict[str, Any]:
    """One checkout row as the submit stage hands it to a sink (CHECKOUT_SCHEMA keys, Decimals)."""
    sign = Decimal(-1) if kind == "return" else Decimal(1)
    qty = Decimal(quantity) * sign
    price = Decimal(unit_price)
    items = [
        {
            "line_no": n + 1,
            "product_id": f"P{n + 1}",
            "product_name": f"Product {n + 1}",
            "product_category": "Coffee" if n == 0 else None,
            "quantity": qty,
            "unit_price": price,
            "discount": Decimal("0"),
            "line_total": qty * price,
            "source_line": n + 2,
        }
        for n in range(lines)
    ]
    moment = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    return {
        "transaction_id": transaction_id,
        "store_id": store_id,
        "register_id": "R1",
        "customer_id": customer_id,
        "is_guest": customer_id is None,
        "transaction_type": kind,
        "return_status": ("matched" if original_transaction_id else "unmatched")
        if kind == "return" else None,
        "original_transaction_id": original_transaction_id,
        "business_date": moment.date(),
        "timestamp_utc": moment,
        "timestamp_local": moment.isoformat(),
        "timezone": "UTC",
        "currency": currency,
        "total": sum((item["line_total"] for item in items), Decimal(0)),
        "points_burned": Decimal("0"),
        "line_count": lines,
        "source_file": "test.csv",
        "source_lines": [item["source_line"] for item in items],
        "content_hash": "0" * 64,
        "items": items,
    }


def antavo_feed(sandbox: SandboxServer, name: str = "antavo-test", **target: Any) -> Feed:
    """A feed whose Antavo target is the sandbox (fast retries; credentials from the env)."""
    settings: dict[str, Any] = {
        "kind": "antavo",
        "base_url": sandbox.url,
        "region": sandbox.config.region,
        "requests_per_minute": 60000,
        "backoff_base_seconds": 0.02,
        "backoff_max_seconds": 0.2,
        "timeout_seconds": 10,
    }
    settings.update(target)
    return Feed.model_validate({"name": name, "target": settings})


def crmcom_feed(sandbox: SandboxServer, name: str = "crmcom-test", **target: Any) -> Feed:
    """A feed whose CRM.COM target is the sandbox (fast retries; credentials from the env)."""
    settings: dict[str, Any] = {
        "kind": "crmcom",
        "base_url": sandbox.url,
        "requests_per_minute": 60000,
        "backoff_base_seconds": 0.02,
        "backoff_max_seconds": 0.2,
        "timeout_seconds": 10,
    }
    settings.update(target)
    return Feed.model_validate({"name": name, "target": settings})


def crmcom_env(sandbox: SandboxServer) -> dict[str, str]:
    """The sandbox's CRM.COM credentials under the default target's variable names."""
    config = sandbox.state.platforms["crmcom"].config
    return {
        "CRMCOM_USERNAME": config.username,
        "CRMCOM_PASSWORD": config.password,
        "CRMCOM_ORGANISATION": config.organisation,
    }


@dataclass(frozen=True)
class TargetKit:
    """Per-platform pieces of the shared sink suites."""

    feed: Callable[..., Feed]  # (sandbox, **target overrides) -> Feed
    env: Callable[[SandboxServer], dict[str, str]]  # credentials as environment variables
    unknown_customer: str  # a customer id the platform answers "not found" for


TARGET_KITS: dict[str, TargetKit] = {
    "antavo": TargetKit(
        feed=antavo_feed,
        env=lambda sandbox: {
            "ANTAVO_API_KEY": sandbox.config.api_key,
            "ANTAVO_API_SECRET": sandbox.config.api_secret,
        },
        unknown_customer="unknown-0001",
    ),
    "crmcom": TargetKit(feed=crmcom_feed, env=crmcom_env, unknown_customer="unknown-0001"),
}
TARGET_KINDS = ["antavo", "crmcom"]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fresh sandbox server on a free loopback port."""
    with SandboxServer() as server:
        yield server


@pytest.fixture
def sandbox_env(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    """The sandbox, with every registered platform's credentials in the environment."""
    for kit in TARGET_KITS.values():
        for name, value in kit.env(sandbox).items():
            monkeypatch.setenv(name, value)
    return sandbox


@pytest.fixture(params=TARGET_KINDS)
def target_kind(request: pytest.FixtureRequest) -> str:
    """Each platform in turn."""
    kind: str = request.param
    return kind


@pytest.fixture
def target_kit(target_kind: str) -> TargetKit:
    """The platform pieces of ``target_kind``."""
    return TARGET_KITS[target_kind]
