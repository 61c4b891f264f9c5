"""Fixtures of the sink tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer


@pytest.fixture
def crm(monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxServer]:
    """A sandbox with the CRM.COM credentials in the environment (a module may define its own)."""
    with SandboxServer() as server:
        platform: CrmcomPlatform = server.state.platforms[PLATFORM]
        monkeypatch.setenv("CRMCOM_USERNAME", platform.config.username)
        monkeypatch.setenv("CRMCOM_PASSWORD", platform.config.password)
        monkeypatch.setenv("CRMCOM_ORGANISATION", platform.config.organisation)
        yield server
