"""Where a ledger lives: a SQLite file path, or a PostgreSQL URL whose password is never shown.

Kept apart from the PostgreSQL backend so settings and commands can tell the two apart and mask a
URL without importing the database driver.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from pipeline.logs import register_secret

POSTGRES_SCHEMES = ("postgresql", "postgres")  # the two spellings libpq accepts


def is_postgres_url(location: str | Path | None) -> bool:
    """Whether a ledger location is a PostgreSQL URL (else it is a SQLite file path)."""
    return isinstance(location, str) and urlsplit(location).scheme.lower() in POSTGRES_SCHEMES


def masked_url(url: str) -> str:
    """The URL with its password (if any, before the host or as ``?password=``) replaced by
    ``***``: what messages and listings show."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    if "password" in {key for key, _ in parse_qsl(query, keep_blank_values=True)}:
        query = "&".join(
            f"{key}=***" if key == "password" else f"{quote(key)}={quote(value)}"
            for key, value in parse_qsl(query, keep_blank_values=True)
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_password(url: str) -> str | None:
    """The URL's password as libpq reads it (percent-decoded), if the URL has one (libpq may also
    find one elsewhere, e.g. in its password file)."""
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    in_query = [value for key, value in parse_qsl(parts.query) if key == "password" and value]
    return in_query[0] if in_query else None


def password_forms(url: str) -> list[str]:
    """Every spelling of the URL's password to keep out of output: as written and as decoded."""
    decoded = url_password(url)
    written = urlsplit(url).password
    return [form for form in dict.fromkeys((decoded, written)) if form]


def register_url_secret(url: str) -> None:
    """Register the URL's password (if any, in each spelling) with the log masking filter."""
    for form in password_forms(url):
        register_secret(form)
