"""Escher request signing (Antavo's ``ANTAVO-HMAC-SHA256``), client and server side.

Escher is AWS Signature Version 4 with a configurable prefix and credential scope. The client signs
``Date`` and ``Host`` (plus any header it chooses) over a canonical request; the server rebuilds the
canonical request from what it received and compares signatures::

    CanonicalRequest = METHOD \\n path \\n query \\n (name:value \\n)* \\n signed;names \\n hex(sha(body))
    StringToSign     = PREFIX-HMAC-SHA256 \\n LONG_DATE \\n SHORT_DATE/scope \\n hex(sha(CanonicalRequest))
    SigningKey       = HMAC chain over [SHORT_DATE, *scope.split("/")], starting from PREFIX + secret
    Authorization    = PREFIX-HMAC-SHA256 Credential=key/SHORT_DATE/scope, SignedHeaders=..., Signature=...

Everything here is pure: the clock is passed in. :func:`verify` checks in the reference server's
order and raises :class:`EscherError` with the reference implementation's messages.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "EscherConfig",
    "EscherError",
    "EscherSigner",
    "SignedParts",
    "antavo_config",
    "auth_header",
    "canonical_headers",
    "canonical_path",
    "canonical_query",
    "canonical_request",
    "format_date_header",
    "long_date",
    "parse_date",
    "short_date",
    "signing_key",
    "string_to_sign",
    "verify",
]

_HASHES: dict[str, Callable[..., hashlib._Hash]] = {"SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


@dataclass(frozen=True)
class EscherConfig:
    """How a vendor configures Escher: prefix, scope, header names, hash and allowed clock skew."""

    credential_scope: str  # e.g. "demo/api/antavo_request"
    algo_prefix: str = "ANTAVO"
    hash_algo: str = "SHA256"
    date_header: str = "Date"
    auth_header: str = "Authorization"
    clock_skew_seconds: float = 300.0

    @property
    def algorithm(self) -> str:
        """The algorithm id at the start of the auth header, e.g. ``ANTAVO-HMAC-SHA256``."""
        return f"{self.algo_prefix}-HMAC-{self.hash_algo}"


def antavo_config(region: str, *, clock_skew_seconds: float = 300.0) -> EscherConfig:
    """Antavo's configuration: scope ``<region>/api/antavo_request``, prefix ``ANTAVO``."""
    return EscherConfig(
        credential_scope=f"{region}/api/antavo_request", clock_skew_seconds=clock_skew_seconds
    )


class EscherError(Exception):
    """A request failed authentication; ``message`` is the reference server's wording."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


# ---- dates ------------------------------------------------------------------------------------


def long_date(moment: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC."""
    return _utc(moment).strftime("%Y%m%dT%H%M%SZ")


def short_date(moment: datetime) -> str:
    """``YYYYMMDD`` in UTC."""
    return _utc(moment).strftime("%Y%m%d")


def format_date_header(moment: datetime, style: str = "long") -> str:
    """The ``Date`` header value: ``long`` (20181207T120000Z) or ``rfc1123``."""
    if style == "rfc1123":
        return format_datetime(_utc(moment).replace(microsecond=0), usegmt=True)
    return long_date(moment)


def parse_date(value: str) -> datetime:
    """Parse a ``Date`` header in any form real clients send (Escher long, RFC 1123, ISO 8601)."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{8}T\d{6}Z", text):
            return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if re.match(r"\d{4}-\d{2}-\d{2}", text):
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        else:
            parsed = parsedate_to_datetime(text)
        return _utc(parsed)
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        # OverflowError: a time that is valid in its own offset but outside what UTC can hold
        raise ValueError(f"unparseable date {value!r}") from exc


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# ---- canonical request --------------------------------------------------------------------------


def canonical_path(path: str) -> str:
    """RFC 3986 path normalisation: remove dot segments, collapse ``//``, empty becomes ``/``."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return normalized


def _encode(text: str) -> str:
    return quote(unquote(text), safe="-_.~!*")


def canonical_query(query: str) -> str:
    """Each ``k=v`` decoded then RFC 3986 encoded (``k=`` when empty), sorted, joined with ``&``."""
    if not query:
        return ""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append(f"{_encode(key.replace('+', ' '))}={_encode(value.replace('+', ' '))}")
    return "&".join(sorted(pairs))


_QUOTED_OR_SPACE = re.compile(r'("[^"]*")|\s+')


def _header_value(value: str) -> str:
    # trim; collapse whitespace runs to one space, but not inside double quotes
    return _QUOTED_OR_SPACE.sub(lambda m: m.group(1) or " ", value.strip())


def canonical_headers(headers: Iterable[tuple[str, str]], signed: Sequence[str]) -> list[str]:
    """``name:value`` lines for the signed headers, sorted by name; repeats joined by ``,``."""
    wanted = {name.lower() for name in signed}
    values: dict[str, list[str]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in wanted:
            values.setdefault(lower, []).append(_header_value(value))
    return [f"{name}:{','.join(values[name])}" for name in sorted(values)]


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    signed_headers: Sequence[str],
    body: bytes,
    hash_algo: str = "SHA256",
) -> str:
    """The canonical request string of Escher step 2."""
    signed = sorted({name.lower() for name in signed_headers})
    lines = [
        method.upper(),
        canonical_path(path),
        canonical_query(query),
        *canonical_headers(headers, signed),
        "",
        ";".join(signed),
        _HASHES[hash_algo](body).hexdigest(),
    ]
    return "\n".join(lines)


def string_to_sign(config: EscherConfig, moment: datetime, canonical: str) -> str:
    """The string to sign of Escher step 3."""
    digest = _HASHES[config.hash_algo](canonical.encode("utf-8")).hexdigest()
    return "\n".join(
        [
            config.algorithm,
            long_date(moment),
            f"{short_date(moment)}/{config.credential_scope}",
            digest,
        ]
    )


def signing_key(config: EscherConfig, secret: str, short: str) -> bytes:
    """The signing key of Escher step 4: ``prefix + secret`` then HMAC over date and scope parts."""
    digest = _HASHES[config.hash_algo]
    key = (config.algo_prefix + secret).encode("utf-8")
    for part in [short, *config.credential_scope.split("/")]:
        key = hmac.new(key, part.encode("utf-8"), digest).digest()
    return key


def _signature(config: EscherConfig, secret: str, moment: datetime, canonical: str) -> str:
    key = signing_key(config, secret, short_date(moment))
    message = string_to_sign(config, moment, canonical).encode("utf-8")
    return hmac.new(key, message, _HASHES[config.hash_algo]).hexdigest()


def auth_header(
    config: EscherConfig, api_key: str, moment: datetime, signed_headers: Sequence[str], signature: str
) -> str:
    """The ``Authorization`` header value of Escher step 6."""
    signed = ";".join(sorted({name.lower() for name in signed_headers}))
    return (
        f"{config.algorithm} Credential={api_key}/{short_date(moment)}/{config.credential_scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


# ---- client -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedParts:
    """What signing produced: the headers to send and the intermediate strings (for tests)."""

    headers: dict[str, str]
    canonical_request: str
    string_to_sign: str


class EscherSigner:
    """Signs requests with one key pair; ``clock`` returns the current UTC time."""

    def __init__(
        self,
        config: EscherConfig,
        api_key: str,
        api_secret: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        date_style: str = "long",
    ):
        self.config = config
        self.api_key = api_key
        self._secret = api_secret
        self._clock = clock
        self._date_style = date_style

    def __repr__(self) -> str:
        return f"EscherSigner(scope={self.config.credential_scope!r}, key={self.api_key!r})"

    def sign(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        extra_signed: Sequence[str] = (),
        moment: datetime | None = None,
        date_value: str | None = None,
    ) -> SignedParts:
        """Sign one request; returns every header to send (given ones + Date, Host, Authorization).

        ``url`` is absolute; ``Host`` is its host with ``:port`` when the port is explicit.
        ``date_value`` overrides the Date header text (its parsed time must equal ``moment``).
        """
        when = moment if moment is not None else self._clock()
        parts = urlsplit(url)
        out = dict(headers or {})
        out.setdefault("Host", parts.netloc)
        out[self.config.date_header] = (
            date_value if date_value is not None else format_date_header(when, self._date_style)
        )
        signed = sorted({"host", self.config.date_header.lower(), *(h.lower() for h in extra_signed)})
        canonical = canonical_request(
            method, parts.path, parts.query, out.items(), signed, body, self.config.hash_algo
        )
        to_sign = string_to_sign(self.config, when, canonical)
        key = signing_key(self.config, self._secret, short_date(when))
        signature = hmac.new(key, to_sign.encode("utf-8"), _HASHES[self.config.hash_algo]).hexdigest()
        out[self.config.auth_header] = auth_header(self.config, self.api_key, when, signed, signature)
        return SignedParts(out, canonical, to_sign)


# ---- server -------------------------------------------------------------------------------------


def _auth_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(
        "^" + re.escape(prefix) + r"-HMAC-([A-Z0-9,]+) Credential=([A-Za-z0-9/\-_ ]+), "
        r"SignedHeaders=([A-Za-z\-;]+), Signature=([0-9a-f]+)$"
    )


def verify(
    config: EscherConfig,
    secrets: Mapping[str, str],
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    now: datetime,
) -> str:
    """Authenticate one received request in the reference server's order; return the API key.

    ``headers`` are (name, value) pairs as received; ``secrets`` maps API keys to secrets.
    Raises :class:`EscherError` with the reference message on the first failed check.
    """
    by_name: dict[str, str] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), value)
    match = _auth_pattern(config.algo_prefix).match(by_name.get(config.auth_header.lower(), ""))
    if match is None:
        raise EscherError("Could not parse auth header")
    hash_algo, credential, signed_list, signature = match.groups()
    credential_parts = credential.split("/", 2)
    if len(credential_parts) != 3:
        raise EscherError("Could not parse auth header")
    api_key, credential_date, scope = credential_parts
    signed = signed_list.split(";")

    date_name = config.date_header.lower()
    if "host" not in by_name:
        raise EscherError("The host header is missing")
    if date_name not in by_name:
        raise EscherError("The date header is missing")
    try:
        request_time = parse_date(by_name[date_name])
    except ValueError as exc:
        raise EscherError("Invalid date in date header") from exc
    if "host" not in signed:
        raise EscherError("The host header is not signed")
    if date_name not in signed:
        raise EscherError("The date header is not signed")
    if hash_algo not in _HASHES:
        raise EscherError("Only SHA256 and SHA512 hash algorithms are allowed")
    if credential_date != short_date(request_time):
        raise EscherError("The credential date does not match with the request date")
    if abs((_utc(now) - request_time).total_seconds()) > config.clock_skew_seconds:
        raise EscherError("The request date is not within the accepted time range")
    if scope != config.credential_scope:
        raise EscherError("The credential scope is invalid")
    secret = secrets.get(api_key)
    if secret is None:
        raise EscherError("Invalid Escher key")
    server_config = EscherConfig(
        credential_scope=scope,
        algo_prefix=config.algo_prefix,
        hash_algo=hash_algo,
        date_header=config.date_header,
        auth_header=config.auth_header,
        clock_skew_seconds=config.clock_skew_seconds,
    )
    canonical = canonical_request(method, path, query, headers, signed, body, hash_algo)
    expected = _signature(server_config, secret, request_time, canonical)
    if not hmac.compare_digest(expected, signature):
        raise EscherError("The signatures do not match")
    return api_key
