"""Feed configuration: `feeds/NAME.toml` parsed into frozen pydantic models, and global settings.

Secrets are only ever referenced (an environment variable name or a file path) and resolved at the
moment of use by :func:`resolve_secret`; the models never hold a secret value. Every key a feed file
may contain is documented in `feeds/README.md` (a test keeps the two in step).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import posixpath
import string
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError, SecretError
from pipeline.logs import register_feed_secrets, register_secret
from pipeline.records import CANONICAL_COLUMNS

__all__ = [
    "AlertsConfig",
    "AntavoTarget",
    "ClaimsConfig",
    "CrmcomTarget",
    "EnrollmentsConfig",
    "EnvNeed",
    "ExpectedFilesConfig",
    "Feed",
    "FeedLoadResult",
    "FormatConfig",
    "LoggingConfig",
    "PoslogConfig",
    "Settings",
    "SourceConfig",
    "TargetConfig",
    "ValidationConfig",
    "canonical_feed",
    "check_alongside",
    "env_needs",
    "env_status",
    "load_feed",
    "load_feeds",
    "register_env_secrets_of_feeds",
    "resolve_secret",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


MAX_NAME_CHARS = 100  # a feed name or scope names folders (reports), locks and ledger rows
MAX_WAIT_SECONDS = 3600.0  # a timeout, poll interval or retry delay of more than an hour is a typo
YEAR_MINUTES = 366 * 24 * 60  # an age or allowance of more than a year is a typo (and larger ones
# overflow date arithmetic mid-run)


def _safe_name(value: str) -> str:
    """A feed name or ledger scope: it names folders (reports, locks) and ledger rows, so nothing
    empty, blank-edged, path-like, unprintable or longer than a folder name may be."""
    if not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError("must not start or end with blanks")
    if "/" in value or "\\" in value or value in {".", ".."}:
        raise ValueError("must hold no path separator ('/' or '\\') and not be '.' or '..'")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in value):
        raise ValueError("must hold no control character")
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"is longer than {MAX_NAME_CHARS} characters")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


def _suffixes(value: tuple[str, ...]) -> tuple[str, ...]:
    """File name suffixes: an empty one would match every file."""
    if any(not suffix.strip() for suffix in value):
        raise ValueError("an empty suffix matches every file name: remove it")
    return value


Suffixes = Annotated[tuple[str, ...], AfterValidator(_suffixes)]


def _file_glob(value: str, *, expected: bool) -> str:
    """A file name glob (``source.pattern``, ``expected.pattern``): one name, its placeholders known."""
    if not value.strip():
        raise ValueError("must not be empty")
    if "/" in value or "\\" in value:
        raise ValueError("is a file name glob and must hold no path separator: the folder is source.path")
    fields: dict[str, Any] = {"business_date": date(2000, 1, 1)}
    if expected:
        fields |= {"store_id": "S", "hour": 0}
    try:
        value.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        known = "{business_date:FORMAT}, {store_id} and {hour:02d}" if expected else "{business_date:FORMAT}"
        raise ValueError(f"bad placeholder ({exc}): the placeholders are {known}") from exc
    return value


def _env_name(value: str) -> str:
    """A ``*_env`` key: the name of an environment variable (a blank one would pass loading and
    fail only mid-run, when the secret is read)."""
    if not value.strip():
        raise ValueError("names no environment variable: name one, or leave the key out")
    if value != value.strip() or "=" in value or "\0" in value:
        raise ValueError("is not an environment variable name (no blanks around it, no '=')")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


SourceGlob = Annotated[str, AfterValidator(lambda v: _file_glob(v, expected=False))]
ExpectedGlob = Annotated[str, AfterValidator(lambda v: _file_glob(v, expected=True))]


# zone files of the host rather than places: a feed read in one would follow whatever the host is set to
_HOST_ZONES = {"localtime", "posixrules", "Factory"}


def _check_timezone(value: str) -> str:
    if value in _HOST_ZONES:
        raise ValueError(f"{value!r} is not an IANA timezone of a place (the host's own setting, which "
                         "other hosts on the ledger may not share); name the stores' zone, e.g. "
                         "'Europe/London'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {value!r}") from exc
    return value


class SourceConfig(_Model):
    """Where the feed's files come from (`[source]`)."""

    kind: Literal["local", "sftp"] = "local"
    path: str = "."
    pattern: SourceGlob = "*.csv"
    lookback_days: int = Field(default=1, ge=0, le=366)
    ignore_suffixes: Suffixes = (".part", ".tmp", ".filepart")
    readiness: Literal["stable", "marker", "none"] = "stable"
    stable_seconds: float = Field(default=2.0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    marker_suffixes: Suffixes = (".done", ".ok")
    after_success: Literal["keep", "archive", "delete"] = "keep"
    archive_path: str | None = None
    # unreadable files are moved here (archive/delete sources; "keep" sources only record them)
    quarantine_path: str | None = None
    # sftp only
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    username: str | None = None
    private_key_file: str | None = None
    private_key_passphrase_env: EnvName | None = None
    password_env: EnvName | None = None
    known_hosts_file: str | None = None
    trust_unknown_host: bool = False
    connect_timeout: float = Field(default=15.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    read_timeout: float = Field(default=60.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    keepalive_seconds: int = Field(default=30, ge=0, le=int(MAX_WAIT_SECONDS))
    fetch_attempts: int = Field(default=3, ge=1, le=100)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('must not be empty ("." is the feed file\'s folder; for sftp, the login\'s '
                             "home)")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and ("@" in value or any(ch.isspace() for ch in value.strip())):
            # never echoed: a "user:password@host" holds a secret
            raise ValueError("must be a host name only: the login goes in username, its secret in "
                             "password_env or private_key_file")
        return value

    @model_validator(mode="after")
    def _markers(self) -> SourceConfig:
        if self.readiness == "marker" and not self.marker_suffixes:
            raise ValueError('readiness = "marker" needs at least one marker_suffixes entry')
        return self

    @model_validator(mode="after")
    def _sftp_login(self) -> SourceConfig:
        """An sftp source names its server, its login and a credential."""
        if self.kind != "sftp":
            return self
        missing = [name for name in ("host", "username") if not (getattr(self, name) or "").strip()]
        if not self.private_key_file and not self.password_env:
            missing.append("private_key_file or password_env")
        if missing:
            raise ValueError("an sftp source needs host, username and a credential (private_key_file or "
                             f"password_env); missing: {', '.join(missing)}")
        return self


class FormatConfig(_Model):
    """How the feed's files are read and mapped to the canonical layout (`[format]`)."""

    kind: Literal["csv", "jsonl", "parquet", "poslog"] = "csv"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote_char: str = Field(default='"', min_length=1, max_length=1)
    has_header: bool = True
    encoding: Literal["utf-8", "utf-8-sig", "cp1252", "latin-1"] = "utf-8"
    decimal_comma: bool = False
    timestamp_format: str | None = None
    date_format: str | None = None
    # canonical name -> the export's column name (or, without a header, its 1-based position)
    columns: dict[str, str] = Field(default_factory=dict)
    # canonical name -> a constant for columns the export lacks (e.g. currency = "GBP")
    defaults: dict[str, str] = Field(default_factory=dict)
    # build transaction_id from other canonical columns, e.g. "{store_id}-{register_id}-{receipt}"
    transaction_id_template: str | None = None
    # customer ids written by a float-typed export ("17850.0") are read as "17850"
    normalize_float_customer_ids: bool = False
    # a gzipped file (named *.gz) decompressing to more than this is unreadable (a gzip bomb)
    max_decompressed_bytes: int = Field(default=2**30, gt=0)

    @field_validator("delimiter", "quote_char")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if value in "\r\n":
            raise ValueError("a line break cannot separate or quote fields")
        return value

    @field_validator("transaction_id_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        """Checked as :func:`pipeline.core.parse.template_fields` reads it, and naming a field at
        least: a constant id would make every transaction a repeat of the first."""
        if value is None:
            return value
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"bad template ({exc})") from exc
        if any(spec or conversion for _, _, spec, conversion in parsed):
            raise ValueError("a template field may not have a format spec or conversion")
        if any(field == "" for _, field, _, _ in parsed):
            raise ValueError("a template field may not be empty ({})")
        if not any(field for _, field, _, _ in parsed):
            raise ValueError("the template has no {field}: every transaction would get the same id")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> FormatConfig:
        if self.delimiter == self.quote_char:
            raise ValueError("delimiter and quote_char must differ")
        return self


ARTS_NAMESPACE = "http://www.nrf-arts.org/IXRetail/namespace/"
NCR_ACS_NAMESPACE = "http://www.ncr.com/rsd/acs/tlog/markup/poslog/2.1"


# vendor namespaces each POSLog profile brings (prefix -> URI)
POSLOG_PROFILE_NAMESPACES: dict[str, dict[str, str]] = {"arts": {}, "ncr_acs": {"acs": NCR_ACS_NAMESPACE}}


class PoslogConfig(_Model):
    """How ARTS POSLog XML is read (`[poslog]`, used when ``format.kind = "poslog"``).

    Paths are relative to the ``RetailTransaction`` (loyalty ids) or to the ``Sale``/``Return``
    element (item ids); ``prefix:Name`` names an element in the vendor namespace ``namespaces``
    gives the prefix, a bare ``Name`` one in ``namespace`` (the ARTS one). ``None`` keys take the
    profile's value (see pipeline.core.poslog.PROFILES).
    """

    profile: Literal["arts", "ncr_acs"] = "arts"
    namespace: str = ARTS_NAMESPACE  # "" for files whose elements have no namespace
    namespaces: dict[str, str] = Field(default_factory=dict)  # vendor prefix -> URI (adds to the profile's)
    loyalty_id_paths: tuple[str, ...] | None = None
    item_id_paths: tuple[str, ...] = ("ItemID", "POSIdentity/POSItemID")
    timestamp_elements: tuple[str, ...] = ("EndDateTime", "BeginDateTime")
    void_statuses: tuple[str, ...] = ("Voided", "PostVoided", "Canceled", "Cancelled", "Aborted")
    suspended_statuses: tuple[str, ...] = ("Suspended", "SuspendedDeleted", "SuspendedRetrieved")
    return_type_codes: tuple[str, ...] = ("Return", "Refund")
    # Sale/@ItemType values of items that take money off (any prefix): part of the discount, not items
    negative_item_types: tuple[str, ...] = ("NegativeItem", "DepositRefund")
    # a RetailTransaction whose TransactionLink has one of these ReasonCodes voids the linked one
    post_void_link_reasons: tuple[str, ...] = ("Voided", "PostVoid", "PostVoided")

    @model_validator(mode="after")
    def _prefixes_are_declared(self) -> PoslogConfig:
        known = {**POSLOG_PROFILE_NAMESPACES[self.profile], **self.namespaces}
        for path in (*(self.loyalty_id_paths or ()), *self.item_id_paths):
            for step in path.strip("/").split("/"):
                prefix = step.split(":", 1)[0] if ":" in step else None
                if prefix is not None and prefix not in known:
                    raise ValueError(
                        f"path {path!r} uses the prefix {prefix!r}: declare it in poslog.namespaces "
                        f"(known: {', '.join(sorted(known)) or 'none'})"
                    )
        return self


class ValidationConfig(_Model):
    """Tolerances and allowed values for the validation rules (`[validation]`)."""

    currencies: tuple[str, ...] | None = None  # None: every ISO 4217 code
    amount_tolerance: Decimal = Field(default=Decimal("0.01"), ge=0)
    max_days_from_business_date: int = Field(default=2, ge=0)
    max_future_minutes: int = Field(default=10, ge=0, le=YEAR_MINUTES)
    treat_negative_quantity_as_return: bool = True
    # a timestamp or business date before this day is not plausible (R025_DATE_TOO_EARLY)
    earliest_date: date = date(2000, 1, 1)
    # a text field (an id, a name, a code) longer than this many characters is no value a till
    # writes (R031_FIELD_TOO_LONG); a platform would refuse the request carrying it
    max_field_chars: int = Field(default=1000, ge=1)

    @field_validator("currencies")
    @classmethod
    def _iso_codes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from pipeline.core.rejects import ISO_4217

        if value is None:
            return value
        if not value:
            raise ValueError("an empty list would reject every transaction: leave the key out for every "
                             "ISO 4217 code")
        unknown = [code for code in value if code.upper() not in ISO_4217]
        if unknown:
            raise ValueError(f"not an ISO 4217 code: {', '.join(map(repr, unknown))}")
        return value


def _http_url_netloc(value: str) -> str:
    """The host part of an http(s) URL with a host (checked when the feed loads, not mid-run)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return parts.netloc


def _platform_url(value: str) -> str:
    """A target's ``base_url``: an http(s) URL without credentials, which would reach logs,
    reports and the ledger with the URL (a webhook URL, masked whole, may carry them)."""
    if "@" in _http_url_netloc(value):
        # never echoed: the value holds a secret
        raise ValueError("must not carry credentials (user:password@host): secrets are named by the "
                         "*_env and *_file keys, never written in the feed file")
    return value


def _http_url(value: str) -> str:
    _http_url_netloc(value)
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


PlatformUrl = Annotated[str, AfterValidator(_platform_url)]
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a request body's default bound (neither platform publishes one)


class AntavoTarget(_Model):
    """Antavo Events API target (`[target]` with kind = "antavo")."""

    kind: Literal["antavo"] = "antavo"
    base_url: PlatformUrl = "https://api.demo.antavo.com"
    region: str = "demo"
    auth: Literal["signed", "api_key"] = "signed"
    api_key_env: EnvName = "ANTAVO_API_KEY"
    api_secret_env: EnvName | None = "ANTAVO_API_SECRET"
    api_secret_file: str | None = None
    requests_per_minute: int = Field(default=1500, gt=0)
    max_concurrency: int = Field(default=8, ge=1, le=256)
    bulk_size: int = Field(default=50, ge=1, le=1000)
    # bytes a request body may hold (the platform publishes no limit: an assumption)
    max_request_bytes: int = Field(default=MAX_REQUEST_BYTES, ge=16384)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_base_seconds: float = Field(default=0.5, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    backoff_max_seconds: float = Field(default=30.0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    # the longest wait a platform's Retry-After gets (a longer one, "inf" or a far date: this)
    retry_after_max_seconds: float = Field(default=300.0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    return_mode: Literal["auto", "refund", "refund_item"] = "auto"
    # an in-doubt refund is read back no sooner than this after its request went out (None:
    # timeout_seconds), so a request the platform still held when the sender died has landed
    readback_wait_seconds: float | None = Field(default=None, ge=0, le=86400, allow_inf_nan=False)
    # where the transaction read API (GET /customers/{id}/transactions) is served (None: base_url)
    read_api_url: PlatformUrl | None = None
    send_guests: bool = True
    account: str | None = None
    # how the signed Date header is written: "long" (20181207T120000Z) or "rfc1123"
    date_style: Literal["long", "rfc1123"] = "long"
    # share of requests_per_minute kept unused, against clock and latency differences
    rate_headroom: float = Field(default=0.02, ge=0, lt=1, allow_inf_nan=False)
    # a signed empty bulk before any file proves the credentials (the platform authenticates before
    # it reads a body: an assumption of the spec, so it can be switched off)
    check_credentials: bool = True

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        """The first part of the signature's credential scope, ``<region>/api/antavo_request``."""
        if not value or "/" in value or any(ch.isspace() for ch in value):
            raise ValueError("must be the platform's region (e.g. 'demo'), no blanks or '/': it begins the "
                             "credential scope of every signed request, which the platform would refuse")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> AntavoTarget:
        return _check_backoff(self)


class CrmcomTarget(_Model):
    """CRM.COM purchases API target (`[target]` with kind = "crmcom")."""

    kind: Literal["crmcom"] = "crmcom"
    base_url: PlatformUrl = "https://sandbox.crm.com"
    auth: Literal["token", "web_api_key"] = "token"
    username_env: EnvName | None = "CRMCOM_USERNAME"
    password_env: EnvName | None = "CRMCOM_PASSWORD"
    organisation_env: EnvName | None = "CRMCOM_ORGANISATION"
    web_api_key_env: EnvName | None = None
    web_api_key_file: str | None = None
    password_file: str | None = None
    unit: str | None = None  # unit ID sent with the token call (default: the user's default unit)
    requests_per_minute: int = Field(default=600, gt=0)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    bulk_size: int = Field(default=1, ge=1, le=1000)
    # bytes a request body may hold, its token included (no published limit: an assumption)
    max_request_bytes: int = Field(default=MAX_REQUEST_BYTES, ge=16384)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_base_seconds: float = Field(default=0.5, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    backoff_max_seconds: float = Field(default=30.0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    # the longest wait a platform's Retry-After gets (a longer one, "inf" or a far date: this)
    retry_after_max_seconds: float = Field(default=300.0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    # URLs: {base_url}{path_prefix}/<resource>/<method>
    path_prefix: str = "/crmapi/rest/v2"
    create_path: str = "customer_events/purchases/create"
    create_multiple_path: str = "customer_events/purchases/create_multiple"
    cancel_path: str = "customer_events/purchases/cancel"
    # the token: R12+ tokens expire 2 hours after issue; renewed this long before expiry
    token_ttl_seconds: float = Field(default=7200.0, gt=0, allow_inf_nan=False)
    token_renew_margin_seconds: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    # API release: picks the business unit field (R17-: performed_by_unit_identifier,
    # R17: performed_by_tap_identifier, R18+: performed_by_business_unit_identifier)
    api_release: int = Field(default=18, ge=9, le=99)
    business_unit_field: str | None = None  # overrides the field name the release implies
    business_unit_key: str = "code"  # the identifier object's key: id | code | name | alternative_code
    business_unit: str | None = None  # a fixed business unit for every store
    business_units: dict[str, str] = Field(default_factory=dict)  # store_id -> business unit
    customer_field: str = "accounts_receivable_identifier"
    customer_key: str = "number"
    product_key: str = "code"
    products_field: str = "products_set"
    performed_on_format: str = "iso8601"  # "iso8601" (UTC), "epoch", or a strftime pattern (UTC)
    vat_rate: Decimal = Field(default=Decimal("0"), ge=0, lt=1)
    prices_include_vat: bool = True
    amount_decimals: int = Field(default=2, ge=0, le=6)
    external_system: str | None = None
    process_immediately: bool | None = None
    # status.code values of the error envelope (not documented by the platform)
    duplicate_codes: tuple[str, ...] = ("DUPLICATE_REFERENCE_NUMBER",)
    on_duplicate: Literal["already_accepted", "rejected"] = "already_accepted"
    token_error_codes: tuple[str, ...] = ("INVALID_TOKEN", "TOKEN_EXPIRED")
    already_cancelled_codes: tuple[str, ...] = ("ALREADY_CANCELLED",)
    retryable_codes: tuple[str, ...] = ("INTERNAL_ERROR", "SERVICE_UNAVAILABLE")
    # ---- returns, spends and exactly-once (docs/PLATFORMS.md cites the pages; [A] = assumption)
    # partial returns: "auto" sends them as ad hoc returns from R17 (the method is listed with the
    # R16.12 API-key methods: set "ad_hoc_return" for R16.12), else settles them not sent
    partial_returns: Literal["auto", "ad_hoc_return", "not_sent"] = "auto"
    ad_hoc_return_path: str = "purchases/ad_hoc_return"  # [A] request shape and base path
    # points burned at the till: R9-R16 purchases/create_spend, R17+ a spend amount on the
    # purchase ([A] field names); "off" sends the purchase without it
    spend: Literal["auto", "off"] = "auto"
    create_spend_path: str = "customer_events/purchases/create_spend"
    spend_field: str | None = None  # [A] default: spend_amount (create_spend), requested_spend_amount (R17+)
    spend_per_point: Decimal = Field(default=Decimal("0.01"), gt=0)  # [A] spend amount of one point
    # before resending what may have landed: "lookup" asks the platform (show by reference, or
    # list), "resend" trusts duplicate answers, "hold" settles it in doubt for review
    in_doubt: Literal["lookup", "resend", "hold"] = "lookup"
    # what may have landed is looked up no sooner than this after its request went out (None:
    # timeout_seconds), so a request the platform still held when the sender died has landed
    readback_wait_seconds: float | None = Field(default=None, ge=0, le=86400, allow_inf_nan=False)
    lookup: Literal["auto", "show", "list"] = "auto"  # auto: show from R11 (R10.1 has it: set "show")
    show_path: str = "customer_events/purchases/show"
    list_path: str = "customer_events/purchases/list"
    list_window_days: int = Field(default=7, ge=1)  # list: purchases submitted this far back
    list_page_size: int = Field(default=100, ge=1, le=1000)  # [A] number_of_results
    not_found_codes: tuple[str, ...] = ("NOT_FOUND",)  # [A] show's answer for an unknown purchase
    check_credentials: bool = True  # the token call before any file proves the credentials

    @model_validator(mode="after")
    def _timing(self) -> CrmcomTarget:
        if self.token_renew_margin_seconds >= self.token_ttl_seconds:
            raise ValueError("token_renew_margin_seconds must be less than token_ttl_seconds (every call "
                             "would ask for a new token)")
        return _check_backoff(self)


def _check_backoff(target: Any) -> Any:
    """A target's first retry delay is not longer than its longest one."""
    if target.backoff_base_seconds > target.backoff_max_seconds:
        raise ValueError("backoff_base_seconds must not be more than backoff_max_seconds")
    return target


TargetConfig = Annotated[AntavoTarget | CrmcomTarget, Field(discriminator="kind")]


class AlertsConfig(_Model):
    """Optional webhook alerts (`[alerts]`)."""

    webhook_url_env: EnvName | None = None
    webhook_url: HttpUrl | None = None
    reject_share_threshold: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False)
    on_failure: bool = True
    on_retryable: bool = True
    on_missing_files: bool = True
    on_conflicts: bool = True
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # work waiting (queued, in doubt, failed retryable) longer than this is a problem; longer than
    # the second age escalates it
    backlog_max_age_minutes: float = Field(default=60.0, ge=0, le=YEAR_MINUTES, allow_inf_nan=False)
    backlog_escalate_minutes: float = Field(default=240.0, ge=0, le=YEAR_MINUTES, allow_inf_nan=False)
    # error codes a target answers when it refuses the credentials [A]
    credential_error_codes: tuple[str, ...] = ("http_401", "http_403", "101021")
    # delivery: attempts within one run (with backoff), and how long a run may spend on them;
    # undelivered alerts stay in the ledger and are tried again by later runs
    delivery_attempts: int = Field(default=3, ge=1, le=20)
    delivery_budget_seconds: float = Field(default=20.0, gt=0, le=600)

    @model_validator(mode="after")
    def _backlog(self) -> AlertsConfig:
        if self.backlog_escalate_minutes < self.backlog_max_age_minutes:
            raise ValueError("backlog_escalate_minutes must not be less than backlog_max_age_minutes")
        return self


class ExpectedFilesConfig(_Model):
    """What files the feed expects per business day (`[expected]`)."""

    stores: tuple[str, ...] = ()
    cadence: Literal["none", "daily", "hourly"] = "none"
    # glob with {business_date:%Y%m%d}, {store_id} and (hourly) {hour:02d}; default source.pattern
    pattern: ExpectedGlob | None = None
    opening_hour: int = Field(default=8, ge=0, le=23)
    closing_hour: int = Field(default=22, ge=1, le=24)
    late_after_minutes: int = Field(default=60, ge=0, le=YEAR_MINUTES)
    # a file still missing this long after it became missing escalates its problem
    escalate_after_minutes: int = Field(default=240, ge=0, le=YEAR_MINUTES)

    @model_validator(mode="after")
    def _hours(self) -> ExpectedFilesConfig:
        if self.closing_hour <= self.opening_hour:
            raise ValueError("closing_hour must be after opening_hour (same business day)")
        return self


class EnrollmentsConfig(_Model):
    """How enrollments are checked and sent (`[enrollments]`, for ``records = "enrollments"``)."""

    # which contact a member must have, valid: "email", "phone", "either" or "both"
    contact_required: Literal["email", "phone", "either", "both"] = "either"
    # a member enrolled again with different details: "hold" (a conflict for review) or
    # "profile" (sent as a profile update)
    changes: Literal["hold", "profile"] = "hold"
    # a birth_date making the member older than this (at enrolled_at) is rejected (R105)
    max_age_years: int = Field(default=130, ge=1, le=200)


class ClaimsConfig(_Model):
    """How guest claims are checked and sent (`[claims]`, for ``records = "claims"``)."""

    # the ledger scope whose checkouts the claims name (default: the feed's own scope)
    checkout_scope: SafeName | None = None
    # a claim of a checkout this ledger does not know: "not_sent" (unmatched_claim) or "send"
    # (the checkout reached the platform another way)
    unknown_checkouts: Literal["not_sent", "send"] = "not_sent"
    # the ledger scope of the enrollment feed whose sign-ups the claims' members are: a claim
    # waits while its member's sign-up there is pending, and is not sent when it was refused
    # (None: not checked)
    enrollment_scope: SafeName | None = None


class ResumeConfig(_Model):
    """What a plain run resends by itself (`[resume]`): failed-retryable transactions whose
    failure was transient, a stop or refused credentials, until one of these caps; past them
    only `posfeed rerun` sends them. A return waiting for a sale not known yet is checked again
    by every plain run until ``sale_wait_hours``, then failed for good."""

    max_attempts: int = Field(default=25, ge=1)
    max_age_hours: float = Field(default=72.0, gt=0, le=10 * 366 * 24, allow_inf_nan=False)
    # a return whose sale is not known waits for it this long (past the caps above), then fails for good
    sale_wait_hours: float = Field(default=72.0, gt=0, le=10 * 366 * 24, allow_inf_nan=False)


class LoggingConfig(_Model):
    """What logs may show (`[logging]`)."""

    hash_customer_ids: bool = True


class Feed(_Model):
    """One feed: where files come from, how to read them, where checkouts go."""

    name: SafeName
    enabled: bool = True
    # what the feed's files hold: checkout lines, member enrollments or guest claims
    records: Literal["transactions", "enrollments", "claims"] = "transactions"
    # feeds that deliver the same transactions (an hourly and a daily export of one chain) share a
    # scope: the ledger dedups, locks and sends once per (scope, transaction_id)
    dedup_scope: SafeName | None = None
    timezone: str = "UTC"
    store_timezones: dict[str, str] = Field(default_factory=dict)
    schedule: str | None = None
    source: SourceConfig = Field(default_factory=SourceConfig)
    format: FormatConfig = Field(default_factory=FormatConfig)
    poslog: PoslogConfig = Field(default_factory=PoslogConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    target: TargetConfig = Field(default_factory=AntavoTarget)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    expected: ExpectedFilesConfig = Field(default_factory=ExpectedFilesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    resume: ResumeConfig = Field(default_factory=ResumeConfig)
    enrollments: EnrollmentsConfig = Field(default_factory=EnrollmentsConfig)
    claims: ClaimsConfig = Field(default_factory=ClaimsConfig)

    @field_validator("target", mode="before")
    @classmethod
    def _target_kind(cls, value: Any) -> Any:
        """A `[target]` table without `kind` is Antavo, the documented default."""
        if isinstance(value, dict) and "kind" not in value:
            return {**value, "kind": "antavo"}
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("store_timezones")
    @classmethod
    def _store_timezones(cls, value: dict[str, str]) -> dict[str, str]:
        for zone in value.values():
            _check_timezone(zone)
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                trigger = CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"not a 5-field cron expression {value!r}: {exc}") from exc
            if trigger.get_next_fire_time(None, datetime.now(trigger.timezone)) is None:
                raise ValueError(f"{value!r} never fires (no such day): fix it, or leave schedule out")
        return value

    @model_validator(mode="after")
    def _expected_pattern(self) -> Feed:
        expected = self.expected
        if expected.cadence == "none":
            return self
        pattern = expected.pattern or self.source.pattern
        if expected.stores and "{store_id" not in pattern and "{store" not in pattern:
            raise ValueError("expected.pattern needs a {store_id} placeholder when expected.stores is set")
        if expected.cadence == "hourly" and "{hour" not in pattern:
            raise ValueError("expected.pattern needs an {hour:02d} placeholder when cadence is hourly")
        return self

    @model_validator(mode="after")
    def _records_target(self) -> Feed:
        if self.records != "transactions" and self.target.kind != "antavo":
            raise ValueError(
                f'records = "{self.records}" needs an Antavo target: {self.target.kind} has no '
                "documented call for it (see docs/PLATFORMS.md)"
            )
        return self

    _config_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path:
        """The feed file (resolved), or a name in the working folder for a feed built in code."""
        return self._path or self._config_dir / f"{self.name}.toml"

    @property
    def scope(self) -> str:
        """The dedup and lock scope: ``dedup_scope`` or, by default, the feed's name."""
        return self.dedup_scope or self.name

    @property
    def config_dir(self) -> Path:
        """The folder of the feed file; relative paths in the file are resolved against it."""
        return self._config_dir

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the feed file: absolute as is, relative against the feed file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self._config_dir / path

    def timezone_of(self, store_id: str) -> str:
        """The timezone of one store (its override, else the feed's)."""
        return self.store_timezones.get(store_id, self.timezone)


def canonical_feed(name: str = "canonical") -> Feed:
    """The feed used when a canonical-layout file is checked without a feed file."""
    return Feed(name=name)


@dataclass(frozen=True)
class FeedLoadResult:
    """A feed file and either its parsed feed or the error that stopped it."""

    path: Path
    feed: Feed | None
    error: ConfigError | None


def _keys_at(loc: tuple[Any, ...]) -> set[str]:
    """The keys the feed file may have in the table ``loc`` names (a target's kind picks its model)."""
    models: list[type[BaseModel]] = [Feed]
    for part in loc:
        fields = [m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields]
        if not fields:  # a target's kind, as pydantic's tagged union names it
            models = [m for m in models if getattr(m.model_fields.get("kind"), "default", None) == part]
            continue
        models = [a for f in fields for a in (get_args(f.annotation) or (f.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
    return {name for m in models for name in m.model_fields}


def _problem(error: Any) -> str:
    """pydantic's message of one error, in the feed file's words."""
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][-1]), sorted(_keys_at(error["loc"][:-1])), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}feeds/README.md lists every key)"
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return f"should be one of {ctx.get('expected_tags')}, not {str(ctx.get('tag'))!r}"
    return str(error["msg"]).removeprefix("Value error, ")


def _error_key(error: Any) -> str:
    """The key path of one error; a tagged table's bad tag is its ``kind`` key."""
    loc = tuple(error["loc"])
    if error["type"] == "union_tag_invalid":
        loc += (str((error.get("ctx") or {}).get("discriminator", "kind")).strip("'"),)
    return _key_path(loc)


def _key_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in {"antavo", "crmcom"})]
    return ".".join(parts) or "(top level)"


def load_feed(name_or_path: str | Path, feeds_dir: Path | None = None) -> Feed:
    """Load one feed by name (from ``feeds_dir``) or by path.

    Raises ConfigError naming the file, the key path and the problem.
    """
    candidate = Path(name_or_path)
    if candidate.suffix != ".toml" or not candidate.exists():
        base = feeds_dir if feeds_dir is not None else Settings.from_env().feeds_dir
        named = base / f"{name_or_path}.toml"
        if named.exists():
            candidate = named
        elif not candidate.exists():
            raise ConfigError(f"no feed named {str(name_or_path)!r} (looked for {named})")
    try:
        raw = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=candidate) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=candidate) from exc
    raw.setdefault("name", candidate.stem)
    try:
        feed = Feed.model_validate(raw)
    except ValidationError as exc:
        first, *others = exc.errors()
        # every problem of the file at once, so one edit can fix them all: the first names the
        # error's key, the others follow with their own keys
        more = "".join(f"; {_error_key(error)}: {_problem(error)}" for error in others)
        key = _error_key(first)
        raise ConfigError(_problem(first) + more, source=candidate, key=key) from exc
    _check_checkout_columns(feed, candidate)
    feed._config_dir = candidate.resolve().parent
    feed._path = candidate.resolve()
    _check_source_folders(feed, candidate)
    return feed


def _check_source_folders(feed: Feed, source: Path) -> None:
    """``archive_path`` and ``quarantine_path`` are not the folder read: a file moved there would
    stay among the files listed (renamed ``.1``, ``.2``, ...) and be read again. Nor, when files are
    archived, are they one folder or one inside the other: archived and quarantined files would mix."""
    src = feed.source
    for key, value in (("archive_path", src.archive_path), ("quarantine_path", src.quarantine_path)):
        if value is None:
            continue
        target, folder = _moved_into(feed, value), _moved_into(feed, ".")
        if target == folder or (src.kind == "local" and Path(target).resolve() == Path(folder).resolve()):
            raise ConfigError(f"{value!r} is the source folder itself: files moved there would be read "
                              f"again; name another folder (default: {key.split('_')[0]} inside source.path)",
                              source=source, key=f"source.{key}")
    if src.after_success != "archive":
        return  # the archive folder is not used
    archive = _moved_into(feed, src.archive_path or "archive")
    quarantine = _moved_into(feed, src.quarantine_path or "quarantine")
    if _within(archive, quarantine) or _within(quarantine, archive):
        where = "the archive folder" if archive == quarantine else "inside the archive folder, or it in it"
        raise ConfigError(f"{src.quarantine_path or 'quarantine'!r} is {where} "
                          f"({src.archive_path or 'archive'!r}): archived and quarantined files would mix; "
                          "name two separate folders", source=source, key="source.quarantine_path")


def _moved_into(feed: Feed, value: str) -> str:
    """The folder a source's ``archive_path`` or ``quarantine_path`` names, normalized (absolute,
    or inside ``source.path``, as the sources read it)."""
    src = feed.source
    if src.kind == "sftp":
        return posixpath.normpath(posixpath.join(src.path, value))
    folder = feed.resolve_path(src.path)
    target = Path(value).expanduser()
    return os.path.normpath(target if target.is_absolute() else folder / target)


def _within(inner: str, outer: str) -> bool:
    """Whether folder ``inner`` is ``outer`` or inside it (both normalized, of one kind)."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _check_checkout_columns(feed: Feed, source: Path) -> None:
    """A checkout feed's ``[format.columns]`` and ``[format.defaults]`` name canonical columns (or
    a field of its ``transaction_id_template``): any other name is read by nothing, and the column
    it was meant for stays unmapped."""
    if feed.records != "transactions":
        return  # an enrollment's other names are custom profile properties
    fmt = feed.format
    allowed = set(CANONICAL_COLUMNS)
    if fmt.transaction_id_template:
        with contextlib.suppress(ValueError):  # a bad template is told when a file is read
            allowed |= {f for _, f, _, _ in string.Formatter().parse(fmt.transaction_id_template) if f}
    for table, mapping in (("columns", fmt.columns), ("defaults", fmt.defaults)):
        for name in mapping:
            if name not in allowed:
                close = difflib.get_close_matches(name, CANONICAL_COLUMNS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"not a canonical column ({hint}README.md lists them)", source=source,
                                  key=f"format.{table}.{name}")


def load_feeds(feeds_dir: Path) -> list[FeedLoadResult]:
    """Load every `*.toml` in ``feeds_dir``, keeping errors beside the feeds that loaded; feeds
    that clash with another file (see :func:`_clash`) are refused. A folder that does not exist
    is a ConfigError naming it (not an empty list: "no feeds" would be false)."""
    if not feeds_dir.is_dir():
        raise ConfigError(f"feeds folder does not exist: {feeds_dir.absolute()} "
                          "(--feeds-dir or POSFEED_FEEDS_DIR; default ./feeds)")
    return _refuse_clashes(_load_each(feeds_dir))


def _load_each(feeds_dir: Path) -> list[FeedLoadResult]:
    """Every `*.toml` in ``feeds_dir`` loaded on its own."""
    results = []
    for path in sorted(feeds_dir.glob("*.toml")):
        try:
            results.append(FeedLoadResult(path, load_feed(path), None))
        except ConfigError as exc:
            results.append(FeedLoadResult(path, None, exc))
    return results


def check_alongside(feed: Feed, feeds_dir: Path) -> None:
    """Raise the ConfigError of ``feed`` clashing with another feed file of ``feeds_dir`` (a feed
    run by name is refused as ``posfeed feeds`` refuses it). A feed file outside the folder, run by
    its path (a variant tried against a staging platform, often with a state folder of its own), is
    not held against the folder's files."""
    if not feeds_dir.is_dir() or feed.path.resolve().parent != feeds_dir.resolve():
        return
    others = [r for r in _load_each(feeds_dir) if r.feed is not None and r.path.resolve() != feed.path]
    result = _refuse_clashes([FeedLoadResult(feed.path, feed, None), *others])[0]
    if result.error is not None:
        raise result.error


def _target_of(feed: Feed) -> tuple[str, str, str | None]:
    """Where a feed's transactions go: the target's kind, server and (Antavo) account."""
    return feed.target.kind, feed.target.base_url.rstrip("/"), getattr(feed.target, "account", None)


def _clash(a: Feed, b: Feed) -> tuple[str, str] | None:
    """Why feeds ``a`` and ``b`` cannot live side by side (the key and a template), or None."""
    if a.name == b.name:
        return "name", "{name!r} is also the name of {other}: feed names are unique"
    if a.scope != b.scope:
        return _source_clash(a, b)
    if a.records != b.records:
        return ("dedup_scope", "scope {scope!r} is shared with {other}, which holds other records "
                f"({a.records} / {b.records}): give each its own dedup_scope")
    if _target_of(a) != _target_of(b):
        return ("dedup_scope", "scope {scope!r} is shared with {other}, which sends to another target: a "
                "transaction is sent once per scope, so the other platform would never get it; give each "
                "its own dedup_scope")
    return None


def _source_clash(a: Feed, b: Feed) -> tuple[str, str] | None:
    """Why feeds ``a`` and ``b`` of two scopes cannot read the same files, or None. Sources overlap
    when they list one folder (local: the same folder; sftp: the same server and path) with
    patterns that can match one name. Only the documented fan-out may: the same records sent to
    another target, each feed keeping the files (a feed moving them away would leave the other
    none)."""
    if _source_location(a) != _source_location(b) or not _globs_overlap(
            _pattern_glob(a.source.pattern), _pattern_glob(b.source.pattern)):
        return None
    if a.records != b.records:
        why = f"the other holds other records ({a.records} / {b.records}): each would read the other's files"
    elif _target_of(a) == _target_of(b):
        why = "both send to one target, which would get each transaction twice; give both one dedup_scope"
    elif a.source.after_success != "keep" or b.source.after_success != "keep":
        why = ("one moves its files away (after_success), so the other would miss them; keep the files "
               "in both to send them to both targets")
    else:
        return None
    return ("source.pattern", "reads the same files as {other} (one folder, patterns that match the same "
            f"names) in another dedup scope: {why}; or give them patterns that match other files")


def _source_location(feed: Feed) -> tuple[str, ...]:
    """The folder a feed's source lists, comparable across feeds."""
    src = feed.source
    if src.kind == "local":
        return ("local", str(feed.resolve_path(src.path).resolve()))
    path = posixpath.normpath(src.path)
    # a relative path is in the login's home: another login's is another folder
    login = "" if path.startswith("/") else (src.username or "")
    return ("sftp", (src.host or "").strip().lower(), str(src.port), login, path)


def _pattern_glob(pattern: str) -> str:
    """A source pattern as one glob for every business date: a date written in digits stands as
    ``[0-9]`` per digit, one written with words (a month's name) as ``*``."""
    out = []
    for literal, name, spec, _ in string.Formatter().parse(pattern):
        out.append(literal)
        if name is None:
            continue
        written = format(date(2000, 1, 1), spec or "")
        out.append("*" if any(ch.isalpha() for ch in written) else
                   "".join("[0-9]" if ch.isdigit() else ch for ch in written))
    return "".join(out)


def _glob_tokens(glob: str) -> list[str | frozenset[str] | None]:
    """A glob as tokens: ``"*"``, ``"?"``, a literal character, a set of characters (``[...]``),
    or None for a negated set (taken as matching any character: this check errs on overlap)."""
    tokens: list[str | frozenset[str] | None] = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        end = glob.find("]", i + 2) if ch == "[" else -1
        if end == -1:
            tokens.append(ch)
            i += 1
            continue
        body = glob[i + 1:end]
        if body.startswith("!"):
            tokens.append(None)
        else:
            chars: set[str] = set()
            j = 0
            while j < len(body):
                if j + 2 < len(body) and body[j + 1] == "-":
                    chars |= {chr(c) for c in range(ord(body[j]), ord(body[j + 2]) + 1)}
                    j += 3
                else:
                    chars.add(body[j])
                    j += 1
            tokens.append(frozenset(chars))
        i = end + 1
    return tokens


def _globs_overlap(a: str, b: str) -> bool:
    """Whether some file name matches both globs (``*``, ``?`` and ``[...]`` as fnmatch reads them)."""
    ta, tb = _glob_tokens(a), _glob_tokens(b)

    def chars(token: str | frozenset[str] | None) -> frozenset[str] | None:
        return None if token is None or token == "?" else frozenset(token)

    @functools.cache
    def overlap(i: int, j: int) -> bool:
        if i == len(ta) and j == len(tb):
            return True
        if i < len(ta) and ta[i] == "*":
            return overlap(i + 1, j) or (j < len(tb) and overlap(i, j + 1))
        if j < len(tb) and tb[j] == "*":
            return overlap(i, j + 1) or (i < len(ta) and overlap(i + 1, j))
        if i == len(ta) or j == len(tb):
            return False
        one, two = chars(ta[i]), chars(tb[j])
        return (one is None or two is None or bool(one & two)) and overlap(i + 1, j + 1)

    return overlap(0, 0)


def _refuse_clashes(results: list[FeedLoadResult]) -> list[FeedLoadResult]:
    """Feeds that cannot live side by side are refused, each naming the other file: two feeds of
    one name (``--feed NAME`` could mean either), and feeds of one dedup scope with other records
    or another target (the ledger sends a transaction once per scope: the other platform would
    never get it)."""
    loaded = [(r.path, r.feed) for r in results if r.feed is not None]
    problems: dict[Path, ConfigError] = {}
    for i, (path_a, a) in enumerate(loaded):
        for path_b, b in loaded[i + 1:]:
            clash = _clash(a, b)
            if clash is None:
                continue
            key, template = clash
            for path, feed, other in ((path_a, a, path_b), (path_b, b, path_a)):
                problem = template.format(name=feed.name, scope=feed.scope, other=other.name)
                problems.setdefault(path, ConfigError(problem, source=path, key=key))
    return [FeedLoadResult(r.path, None, problems[r.path]) if r.path in problems else r for r in results]


def register_env_secrets_of_feeds(feeds_dir: Path) -> None:
    """Register the secrets every loadable feed file of ``feeds_dir`` names (best effort)."""
    if feeds_dir.is_dir():
        # clashing feeds too: one may still be run by its path
        register_feed_secrets([r.feed for r in _load_each(feeds_dir) if r.feed is not None])


def resolve_secret(
    *, env: str | None = None, file: str | Path | None = None, what: str = "secret", masked: bool = True
) -> str:
    """Read a secret from the named environment variable or file; never log the value.

    The value is registered with the log masking filter, so it is redacted from every log line;
    ``masked=False`` for a value that is no secret (a user name: masked, every word equal to it
    would be).
    """
    if env:
        value = os.environ.get(env)
        if value:
            if masked:
                register_secret(value)
            return value
        if not file:
            raise SecretError(f"{what}: environment variable {env} is not set")
    if file:
        try:
            secret = Path(file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"{what}: cannot read secret file {file}: {exc.strerror}") from exc
        register_secret(secret)
        return secret
    raise SecretError(f"{what}: no environment variable or file configured")


@dataclass(frozen=True)
class EnvNeed:
    """An environment variable a run of a feed reads: its ``*_env`` key, the variable, and the secret
    file the run reads instead when the variable is not set (None: no such file)."""

    key: str
    variable: str
    file: Path | None = None


def env_needs(feed: Feed) -> list[EnvNeed]:
    """The environment variables a run of ``feed`` reads, as the run reads them: the SFTP login's,
    the target's for its ``auth`` (Antavo's secret and CRM.COM's password or Web API key may come
    from a file instead) and the alert webhook's. Keys a run does not read (a CRM.COM user name with
    ``auth = "web_api_key"``) are left out."""
    def need(key: str, variable: str | None, file: str | None = None) -> list[EnvNeed]:
        return [EnvNeed(key, variable, feed.resolve_path(file) if file else None)] if variable else []

    src, target = feed.source, feed.target
    needs: list[EnvNeed] = []
    if src.kind == "sftp":
        needs += need("source.private_key_passphrase_env", src.private_key_passphrase_env)
        needs += need("source.password_env", src.password_env)
    if isinstance(target, AntavoTarget):
        needs += need("target.api_key_env", target.api_key_env)
        if target.auth == "signed":
            needs += need("target.api_secret_env", target.api_secret_env, target.api_secret_file)
    elif target.auth == "web_api_key":
        needs += need("target.web_api_key_env", target.web_api_key_env, target.web_api_key_file)
    else:
        needs += need("target.username_env", target.username_env)
        needs += need("target.password_env", target.password_env, target.password_file)
        needs += need("target.organisation_env", target.organisation_env)
    needs += need("alerts.webhook_url_env", feed.alerts.webhook_url_env)
    return needs


def env_status(need: EnvNeed, environ: Mapping[str, str] | None = None) -> str:
    """``set``, ``file`` (not set; the run reads its secret file) or ``missing``; never the value."""
    if (os.environ if environ is None else environ).get(need.variable):
        return "set"
    if need.file is not None and need.file.is_file() and os.access(need.file, os.R_OK):
        return "file"
    return "missing"


@dataclass(frozen=True)
class Settings:
    """Global settings: where state, feeds and reports live, and the ledger when it is not in the
    state folder (``ledger_url``: a PostgreSQL database shared by several hosts)."""

    state_dir: Path = Path(".posfeed")
    feeds_dir: Path = Path("feeds")
    reports_dir: Path = Path("reports")
    ledger_url: str | None = field(default=None, repr=False)  # its password is a secret

    def __post_init__(self) -> None:
        if self.ledger_url is None:
            return
        from pipeline.ledger.location import is_postgres_url, masked_url, register_url_secret

        register_url_secret(self.ledger_url)
        if not is_postgres_url(self.ledger_url):
            scheme = self.ledger_url.split(":", 1)[0] if ":" in self.ledger_url else ""
            raise ConfigError(
                f"ledger URL {masked_url(self.ledger_url)!r}: scheme {scheme or '(none)'!r} is not "
                "supported: use postgresql://host/database, or no URL for the ledger in the state folder"
            )

    @classmethod
    def from_env(
        cls,
        *,
        state_dir: Path | None = None,
        feeds_dir: Path | None = None,
        reports_dir: Path | None = None,
        ledger_url: str | None = None,
    ) -> Settings:
        """Settings from explicit values, else `POSFEED_*` environment variables, else defaults."""
        env = os.environ
        return cls(
            state_dir=state_dir or Path(env.get("POSFEED_STATE_DIR", ".posfeed")),
            feeds_dir=feeds_dir or Path(env.get("POSFEED_FEEDS_DIR", "feeds")),
            reports_dir=reports_dir or Path(env.get("POSFEED_REPORTS_DIR", "reports")),
            ledger_url=ledger_url or env.get("POSFEED_LEDGER_URL") or None,
        )

    @property
    def ledger_path(self) -> Path:
        """The SQLite ledger file (used when there is no ``ledger_url``)."""
        return self.state_dir / "ledger.sqlite"

    @property
    def ledger_location(self) -> Path | str:
        """Where the ledger is: the PostgreSQL URL, else the SQLite file in the state folder."""
        return self.ledger_url or self.ledger_path

    @property
    def ledger_name(self) -> str:
        """The ledger's location for messages: the file, or the URL without its password."""
        if self.ledger_url:
            from pipeline.ledger.location import masked_url

            return masked_url(self.ledger_url)
        return str(self.ledger_path)

    def ledger_exists(self) -> bool:
        """Whether there is a ledger to read (a database server is asked when it is opened)."""
        return bool(self.ledger_url) or self.ledger_path.exists()

    @property
    def staging_dir(self) -> Path:
        """Where fetched files are staged."""
        return self.state_dir / "staging"
