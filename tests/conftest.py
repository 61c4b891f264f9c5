"""Shared pytest setup: fixture modules other test packages reuse, and the order tests start in."""

import pytest

pytest_plugins = [
    "tests.sftp_fixtures",
    "tests.sandbox_fixtures",
    "tests.logging_fixtures",
    "tests.pg_cluster",
    "tests.ledger_backends",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``waits_on_clock`` (they wait for the wall clock, e.g. the next minute's
    scheduled run, using little CPU) start first, so the other worker's tests fill that wait."""
    items.sort(key=lambda item: item.get_closest_marker("waits_on_clock") is None)
