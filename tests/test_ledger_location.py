"""Where a ledger lives: a PostgreSQL URL is told from a path, and shown without its password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

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


@pytest.mark.parametrize(("url", "shown", "password"), [
    # libpq reads the password up to the first "@" before any "/": "?" and "#" are part of it
    ("postgresql://u:pa?ss@db:5432/x", "postgresql://u:***@db:5432/x", "pa?ss"),
    ("postgresql://u:pa#ss@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require", "pa#ss"),
    ("postgresql://u:s3cr:et@db/x", "postgresql://u:***@db/x", "s3cr:et"),
])
def test_a_password_with_url_delimiters_is_masked_as_libpq_reads_it(url: str, shown: str,
                                                                     password: str) -> None:
    assert masked_url(url) == shown and password not in masked_url(url)
    assert url_password(url) == password and password in password_forms(url)
    assert conninfo_to_dict(url)["password"] == password  # what the driver will send


def test_a_url_is_told_from_a_path() -> None:
    assert is_postgres_url("postgresql://db/x") and is_postgres_url("POSTGRES://db/x")
    assert not is_postgres_url(Path("postgresql:/x")) and not is_postgres_url("state/ledger.sqlite")
    assert not is_postgres_url(None) and not is_postgres_url("mysql://db/x")


def test_every_spelling_of_the_password_is_kept_out() -> None:
    assert password_forms("postgresql://u:s3cr%40t@db/x") == ["s3cr@t", "s3cr%40t"]
    assert password_forms("postgresql://u:plain@db/x") == ["plain"]
    assert password_forms("postgresql://u@db/x") == []


def test_a_postgresql_ledger_without_the_driver_says_what_to_install() -> None:
    script = """
import sys
sys.modules["psycopg"] = None  # as if the 'postgres' extra were not installed
from pipeline.errors import ConfigError
from pipeline.ledger import Ledger
try:
    Ledger("postgresql://posfeed:secret-pw@db.internal/posfeed")
except ConfigError as exc:
    print(exc.exit_code, exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.startswith("78 ") and "pip install 'posfeed[postgres]'" in out and "secret-pw" not in out
