"""Shared pytest setup: fixture modules other test packages reuse."""

pytest_plugins = [
    "tests.sftp_fixtures",
    "tests.sandbox_fixtures",
    "tests.logging_fixtures",
    "tests.pg_cluster",
]
