"""Where a ledger lives: a SQLite file path, or a PostgreSQL URL whose password is never shown.

Kept apart from the PostgreSQL backend so settings and commands can tell the two apart and mask a
URL without importing the database driver.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.logs import register_secret

POSTGRES_SCHEMES = ("postgresql", "postgres")  # the two spellings libpq accepts


def is_postgres_url(location: str | Path | None) -> bool:
    """Whether a ledger location is a PostgreSQL URL (else it is a SQLite file path)."""
    return isinstance(location, str) and urlsplit(location).scheme.lower() in POSTGRES_SCHEMES


def masked_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``: what messages and listings show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_password(url: str) -> str | None:
    """The URL's password, if it has one (in the URL itself; libpq may also find one elsewhere)."""
    return urlsplit(url).password or None


def register_url_secret(url: str) -> None:
    """Register the URL's password (if any) with the log masking filter."""
    password = url_password(url)
    if password:
        register_secret(password)
