"""Shared pytest setup: fixture modules other test packages reuse."""

pytest_plugins = [
    "tests.sandbox_fixtures",
]
