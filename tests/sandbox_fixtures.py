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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.config import Feed
from pipeline.sandbox.server import SandboxServer

__all__ = ["TARGET_KINDS", "TARGET_KITS", "TargetKit", "antavo_feed", "crmcom_env", "crmcom_feed"]


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
