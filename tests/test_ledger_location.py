"""Where a ledger lives: a PostgreSQL URL is told from a path, and shown without its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ledger.location import is_postgres_url, masked_url, password_forms, url_password


@pytest.mark.parametrize(("url", "shown", "password"), [
    ("postgresql://posfeed:s3cr%40t@db.internal:5432/posfeed", "postgresql://posfeed:***@db.internal:5432/posfeed",
     "s3cr@t"),
    ("postgres://u:p@[::1]/db?sslmode=require", "postgres://u:***@[::1]/db?sslmode=require", "p"),
    ("postgresql://u@db/posfeed?sslmode=require&password=qw%26e", "postgresql://u@db/posfeed?sslmode=require&password=***",
     "qw&e"),
    ("postgresql://u@db/posfeed", "postgresql://u@db/posfeed", None),
])
def test_a_url_is_shown_without_its_password(url: str, shown: str, password: str | None) -> None:
    assert masked_url(url) == shown
    assert url_password(url) == password


def test_a_url_is_told_from_a_path() -> None:
    assert is_postgres_url("postgresql://db/x") and is_postgres_url("POSTGRES://db/x")
    assert not is_postgres_url(Path("postgresql:/x")) and not is_postgres_url("state/ledger.sqlite")
    assert not is_postgres_url(None) and not is_postgres_url("mysql://db/x")


def test_every_spelling_of_the_password_is_kept_out() -> None:
    assert password_forms("postgresql://u:s3cr%40t@db/x") == ["s3cr@t", "s3cr%40t"]
    assert password_forms("postgresql://u:plain@db/x") == ["plain"]
    assert password_forms("postgresql://u@db/x") == []
