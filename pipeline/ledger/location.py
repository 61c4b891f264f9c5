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


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password before the host is in ``url``, read as libpq reads it: the user
    information ends at the first ``@`` before any ``/``, so ``?`` and ``#`` belong to the password
    (:func:`urllib.parse.urlsplit` would cut it there and leave the rest in plain sight)."""
    head = url.find("://")
    if head < 0:
        return None
    start = end = head + 3
    while end < len(url) and url[end] not in "@/":
        end += 1
    colon = url.find(":", start, end)
    if end >= len(url) or url[end] != "@" or colon < 0:
        return None
    return colon + 1, end


def masked_url(url: str) -> str:
    """The URL with its password (if any, before the host or as ``?password=``) replaced by
    ``***``: what messages and listings show."""
    span = _password_span(url)
    if span is not None:
        url = f"{url[:span[0]]}***{url[span[1]:]}"
    parts = urlsplit(url)
    query = parts.query
    if "password" in {key for key, _ in parse_qsl(query, keep_blank_values=True)}:
        query = "&".join(
            f"{key}=***" if key == "password" else f"{quote(key)}={quote(value)}"
            for key, value in parse_qsl(query, keep_blank_values=True)
        )
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    return url


def _written_password(url: str) -> str | None:
    span = _password_span(url)
    return url[span[0]:span[1]] if span else None


def url_password(url: str) -> str | None:
    """The URL's password as libpq reads it (percent-decoded), if the URL has one (libpq may also
    find one elsewhere, e.g. in its password file)."""
    written = _written_password(url)
    if written:
        return unquote(written)
    in_query = [value for key, value in parse_qsl(urlsplit(url).query) if key == "password" and value]
    return in_query[0] if in_query else None


def password_forms(url: str) -> list[str]:
    """Every spelling of the URL's password to keep out of output: as written and as decoded."""
    decoded = url_password(url)
    written = _written_password(url)
    return [form for form in dict.fromkeys((decoded, written)) if form]


def register_url_secret(url: str) -> None:
    """Register the URL's password (if any, in each spelling) with the log masking filter."""
    for form in password_forms(url):
        register_secret(form)
