"""Enrollments and guest claims: map, validate and deduplicate member records (pure).

A feed with ``records = "enrollments"`` or ``"claims"`` holds one record per row, in a canonical
layout (:data:`ENROLLMENT_COLUMNS`, :data:`CLAIM_COLUMNS`) or mapped to it by ``[format.columns]``
and ``[format.defaults]``. Each row becomes a :class:`MemberRecord`: its ledger key, a content
hash, and either the payload a sink sends or a reject code. Dedup against what the ledger knows
(key → content hashes) and within the batch: an exact repeat is a duplicate; the same key with
different details a conflict, or, for enrollments with ``enrollments.changes = "profile"``, a
profile update with a key of its own.

Keys never show personal data: an enrollment's key is the masked customer id
(``cust:<12 hex>``; ``cust:<12 hex>+<n>`` for a corrected sign-up after refused ones); a
claim's is ``claim:<transaction_id>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pipeline.config import Feed
from pipeline.core.parse import READ_CODE, READ_REASON, ColumnsByName, column_key
from pipeline.core.rejects import RejectCode
from pipeline.core.validate.control import SCIENTIFIC_RE
from pipeline.logs import mask_customer_id
from pipeline.records import PROFILE_UPDATE

__all__ = [
    "CLAIM_COLUMNS",
    "ENROLLMENT_COLUMNS",
    "PERSONAL_FIELDS",
    "MemberRecord",
    "dedup_members",
    "map_row",
    "mask_email",
    "mask_personal",
    "mask_phone",
    "member_records",
    "missing_columns",
    "signup_key",
    "signup_status",
]

ENROLLMENT_COLUMNS = (
    "customer_id", "email", "first_name", "last_name", "phone", "birth_date", "store_id", "enrolled_at",
    "language", "consent_email", "consent_sms",
)
CLAIM_COLUMNS = ("transaction_id", "customer_id", "claimed_at", "store_id")
# fields that identify a person: masked in reports and removed from the ledger once final
PERSONAL_FIELDS = ("email", "phone", "first_name", "last_name", "birth_date")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
_PHONE_STRIP = re.compile(r"[\s.\-()/]")
_PHONE = re.compile(r"^\+?[0-9]{6,15}$")
_SCIENTIFIC = re.compile(SCIENTIFIC_RE)
# ids, and an email, hold no control or format character (a zero-width space, a bidi mark...);
# names and other text none of the control characters (a name's bidi mark is how it is written)
_ID_CONTROL = ("Cc", "Cf")
_TEXT_CONTROL = ("Cc",)
_TRUE = {"true", "yes", "1", "y"}
# a timestamp may be a day ahead of the run's date (a store east of it, past midnight)
_A_DAY = timedelta(days=1)
_FALSE = {"false", "no", "0", "n"}


@dataclass
class MemberRecord:
    """One row of an enrollments or claims file, as the ledger records it."""

    source_line: int
    key: str | None  # ledger transaction_id
    store_id: str | None
    business_date: str | None
    content_hash: str | None = None
    payload: dict[str, Any] | None = None  # what the sink sends (None when rejected)
    reject_code: str | None = None
    reject_field: str | None = None
    reject_reason: str | None = None
    status: str = "new"  # new | duplicate | conflict | update (after dedup)
    original: dict[str, Any] = field(default_factory=dict)


def mask_email(value: str | None) -> str | None:
    """``sam@example.org`` → ``s***@example.org`` (a value without @ → ``***``)."""
    if not value:
        return value
    local, at, domain = value.strip().partition("@")
    return f"{local[:1]}***@{domain}" if at else "***"


def mask_phone(value: str | None) -> str | None:
    """A phone number with all but its last two digits hidden: ``***67``."""
    if not value:
        return value
    digits = re.sub(r"\D", "", value)
    return "***" + digits[-2:] if len(digits) > 2 else "***"


def mask_personal(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """A row (canonical or export column names) with personal data masked: email and phone
    shortened, names and birth date hidden, the customer id hashed. ``columns`` maps canonical
    names to the export's (``format.columns``)."""
    export_of = {canon: columns.get(canon, canon) for canon in (*PERSONAL_FIELDS, "customer_id")}
    kind_of = ({column_key(name): canon for canon, name in export_of.items()}
               | {column_key(c): c for c in export_of})  # names matched as a feed matches them
    out: dict[str, Any] = {}
    for key, value in row.items():
        canon = kind_of.get(column_key(str(key)))
        if value in (None, "") or canon is None:
            out[key] = value
        elif canon == "email":
            out[key] = mask_email(str(value))
        elif canon == "phone":
            out[key] = mask_phone(str(value))
        elif canon == "customer_id":
            out[key] = mask_customer_id(str(value))
        else:
            out[key] = "***"
    return out


def map_row(raw: Mapping[str, Any], feed: Feed) -> tuple[dict[str, str | None], dict[str, str]]:
    """One raw row → (canonical fields, custom properties). ``format.columns`` maps canonical names
    (and, for enrollments, custom property names) to the export's columns; unmapped canonical
    columns are read by their own name; names match as a checkout feed's do (whatever their case
    and blanks: :func:`pipeline.core.parse.column_key`, two columns of one name refused by
    :func:`missing_columns`); ``format.defaults`` fill empty cells."""
    fmt = feed.format
    canonical = ENROLLMENT_COLUMNS if feed.records == "enrollments" else CLAIM_COLUMNS
    by_key = {column_key(str(k)): v for k, v in raw.items()}

    def cell(name: str) -> str | None:
        column = fmt.columns.get(name, name)
        value = by_key.get(column_key(column))
        text = str(value).strip() if value is not None else ""
        if not text and name in fmt.defaults:
            text = fmt.defaults[name]
        return text or None

    fields = {name: cell(name) for name in canonical}
    custom: dict[str, str] = {}
    if feed.records == "enrollments":
        for name in fmt.columns:
            if name not in canonical:
                value = cell(name)
                if value is not None:
                    custom[name] = value
    return fields, custom


def missing_columns(columns: Iterable[str], feed: Feed, *, file: str) -> list[str]:
    """The required columns ``file`` lacks (as the export would name them), neither present nor
    given a default: such a file is unreadable, not a file of rejected rows. Names match whatever
    their case and blanks; two columns matching one name the feed reads (``email`` and ``Email``)
    raise UnreadableFileError naming both, as for a checkout feed."""
    required = ("customer_id", "enrolled_at") if feed.records == "enrollments" else (
        "transaction_id", "customer_id", "claimed_at")
    fmt = feed.format
    present = ColumnsByName([str(c) for c in columns], file)
    canonical = ENROLLMENT_COLUMNS if feed.records == "enrollments" else CLAIM_COLUMNS
    for name in (*canonical, *fmt.columns):  # every name map_row reads: one column each, or none
        present.get(fmt.columns.get(name, name))
    return [fmt.columns.get(name, name) for name in required
            if fmt.columns.get(name, name) not in present and name not in fmt.defaults]


def _timestamp(value: str, fmt: str | None) -> datetime:
    if fmt:
        return datetime.strptime(value, fmt)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _date(value: str, fmt: str | None) -> date:
    if fmt:
        return datetime.strptime(value, fmt).date()
    return date.fromisoformat(value)


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)


def _hash(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reject(record: MemberRecord, code: RejectCode, column: str, reason: str) -> MemberRecord:
    record.reject_code, record.reject_field, record.reject_reason = code.value, column, reason
    return record


def _control(value: str, categories: tuple[str, ...]) -> bool:
    return any(unicodedata.category(char) in categories for char in value)


def _out_of_range(day: date, today: date, feed: Feed) -> str | None:
    """Why a record's date is none a till writes today, or None."""
    if day > today + _A_DAY:
        return "after today"
    if day < feed.validation.earliest_date:
        return f"before {feed.validation.earliest_date} (validation.earliest_date)"
    return None


def _older_than(born: date, day: date, years: int) -> bool:
    """Whether someone born on ``born`` is more than ``years`` years old on ``day`` (a day past
    their ``years``-th birthday is older)."""
    age = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    return age > years or (age == years and (day.month, day.day) != (born.month, born.day))


def _bad_text(record: MemberRecord, values: Mapping[str, str | None], ids: tuple[str, ...],
              feed: Feed) -> MemberRecord | None:
    """``record`` rejected for a value longer than ``validation.max_field_chars`` (R031) or an
    id holding a control or format character (R023), or None. Reasons never show the value."""
    limit = feed.validation.max_field_chars
    for name, value in values.items():
        if value is not None and len(value) > limit:
            return _reject(record, RejectCode.FIELD_TOO_LONG, name, f"{name} is {len(value)} characters "
                           f"long; at most {limit} are kept (validation.max_field_chars)")
    for name in ids:
        value = values.get(name)
        if value and _control(value, _ID_CONTROL):
            return _reject(record, RejectCode.CONTROL_CHARACTER_IN_ID, name,
                           f"{name} holds a control or format character")
    customer = values.get("customer_id")
    if customer and _SCIENTIFIC.match(customer):
        return _reject(record, RejectCode.ID_IN_SCIENTIFIC_NOTATION, "customer_id",
                       f"customer_id '{mask_customer_id(customer)}' is a number in scientific notation "
                       "(a spreadsheet's rounding): the real id is lost")
    return None


def _enrollment(line: int, fields: dict[str, str | None], custom: dict[str, str], feed: Feed,
                today: date) -> MemberRecord:
    fmt = feed.format
    customer = fields["customer_id"]
    record = MemberRecord(line, mask_customer_id(customer) if customer else None, fields["store_id"], None)
    for name in ("customer_id", "enrolled_at"):
        if not fields[name]:
            return _reject(record, RejectCode.MEMBER_MISSING_FIELD, name, f"{name} is empty")
    if (bad := _bad_text(record, {**fields, **custom}, ("customer_id", "store_id"), feed)) is not None:
        return bad
    try:
        enrolled = _timestamp(str(fields["enrolled_at"]), fmt.timestamp_format)
    except ValueError:
        return _reject(record, RejectCode.BAD_MEMBER_TIMESTAMP, "enrolled_at", "enrolled_at cannot be read")
    if (odd := _out_of_range(enrolled.date(), today, feed)) is not None:
        return _reject(record, RejectCode.BAD_MEMBER_TIMESTAMP, "enrolled_at", f"enrolled_at is {odd}")
    record.business_date = enrolled.date().isoformat()
    email = fields["email"].lower() if fields["email"] else None
    phone = _PHONE_STRIP.sub("", fields["phone"]) if fields["phone"] else None
    required = feed.enrollments.contact_required
    if email is not None and (not _EMAIL.match(email) or _control(email, _ID_CONTROL)):
        return _reject(record, RejectCode.BAD_EMAIL, "email", "the email is not an address")
    if phone is not None and not _PHONE.match(phone):
        return _reject(record, RejectCode.BAD_PHONE, "phone", "the phone is not a number")
    if required in ("email", "both") and email is None:
        return _reject(record, RejectCode.BAD_EMAIL, "email", f"an email is required ({required})")
    if required in ("phone", "both") and phone is None:
        return _reject(record, RejectCode.BAD_PHONE, "phone", f"a phone is required ({required})")
    if required == "either" and email is None and phone is None:
        return _reject(record, RejectCode.NO_CONTACT, "email", "neither an email nor a phone")
    for name, text in {**fields, **custom}.items():
        if text and name not in ("email", "phone") and _control(text, _TEXT_CONTROL):
            return _reject(record, RejectCode.CONTROL_CHARACTER_IN_TEXT, name,
                           f"{name} holds a control character")
    birth: str | None = None
    if fields["birth_date"]:
        try:
            born = _date(str(fields["birth_date"]), fmt.date_format)
        except ValueError:
            return _reject(record, RejectCode.BAD_BIRTH_DATE, "birth_date", "birth_date cannot be read")
        if born > today:
            return _reject(record, RejectCode.BAD_BIRTH_DATE, "birth_date", "birth_date is in the future")
        if born > enrolled.date():
            return _reject(record, RejectCode.BAD_BIRTH_DATE, "birth_date", "birth_date is after enrolled_at")
        if _older_than(born, enrolled.date(), feed.enrollments.max_age_years):
            return _reject(record, RejectCode.BAD_BIRTH_DATE, "birth_date",
                           f"birth_date makes the member older than {feed.enrollments.max_age_years} "
                           "years (enrollments.max_age_years)")
        birth = born.isoformat()
    consents: dict[str, bool] = {}
    for name in ("consent_email", "consent_sms"):
        try:
            value = _bool(fields[name])
        except ValueError:
            return _reject(record, RejectCode.BAD_CONSENT, name, f"{name} is not true or false")
        if value is not None:
            consents[name] = value
    profile = {
        "email": email,
        "phone": phone,
        "first_name": fields["first_name"],
        "last_name": fields["last_name"],
        "birth_date": birth,
        "language": fields["language"],
        **consents,
        **custom,
    }
    profile = {k: v for k, v in profile.items() if v is not None}
    record.content_hash = _hash({"customer_id": customer, **profile})
    record.payload = {
        "record": "enrollment",
        "transaction_id": record.key,
        "customer_id": customer,
        "store_id": fields["store_id"],
        "enrolled_at": enrolled.isoformat(),
        "profile": profile,
    }
    return record


def _claim(line: int, fields: dict[str, str | None], feed: Feed, today: date) -> MemberRecord:
    tid = fields["transaction_id"]
    record = MemberRecord(line, f"claim:{tid}" if tid else None, fields["store_id"], None)
    for name in ("transaction_id", "customer_id", "claimed_at"):
        if not fields[name]:
            return _reject(record, RejectCode.MEMBER_MISSING_FIELD, name, f"{name} is empty")
    if (bad := _bad_text(record, fields, ("transaction_id", "customer_id", "store_id"), feed)) is not None:
        return bad
    try:
        claimed = _timestamp(str(fields["claimed_at"]), feed.format.timestamp_format)
    except ValueError:
        return _reject(record, RejectCode.BAD_MEMBER_TIMESTAMP, "claimed_at", "claimed_at cannot be read")
    if (odd := _out_of_range(claimed.date(), today, feed)) is not None:
        return _reject(record, RejectCode.BAD_MEMBER_TIMESTAMP, "claimed_at", f"claimed_at is {odd}")
    record.business_date = claimed.date().isoformat()
    # the claimed_at of a repeat may differ (a second receipt lookup): who claims what is the content
    record.content_hash = _hash({"transaction_id": tid, "customer_id": fields["customer_id"]})
    record.payload = {
        "record": "claim",
        "transaction_id": record.key,
        "claimed_transaction_id": tid,
        "customer_id": fields["customer_id"],
        "store_id": fields["store_id"],
        "claimed_at": claimed.isoformat(),
    }
    return record


def signup_key(key: str) -> str:
    """The member key a record's key belongs to: a profile update's ``<key>#<hash>`` and a
    corrected sign-up's ``<key>+<hash>`` belong to ``<key>``."""
    return re.split(r"[#+]", key, maxsplit=1)[0]


def signup_status(states: Iterable[str]) -> str | None:
    """Where a member's sign-up stands, from the states of its sign-up rows (the first and any
    corrected ones): ``"accepted"`` (one reached the platform), ``"pending"`` (one may still:
    queued, in doubt or failed retryable), ``"refused"`` (every one was refused or not sent), or
    None (this ledger sent none: the member signed up another way)."""
    seen = set(states)
    if "accepted" in seen:
        return "accepted"
    if seen & {"queued", "sending", "failed_retryable"}:
        return "pending"
    if seen & {"failed_permanent", "not_sent"}:
        return "refused"
    return None


def member_records(rows: Iterable[tuple[int, Mapping[str, Any]]], feed: Feed, *, today: date
                   ) -> list[MemberRecord]:
    """Validate ``(source_line, raw row)`` pairs into records (not yet deduplicated). A row the
    reader could not read (its ``read_code``: a NUL, a quote never closed, too many fields) is
    rejected with that code before any field of it is trusted."""
    out: list[MemberRecord] = []
    for line, raw in rows:
        raw = dict(raw)
        read_code, read_reason = raw.pop(READ_CODE, None), raw.pop(READ_REASON, None)
        fields, custom = map_row(raw, feed)
        if read_code:
            record = _unreadable(line, fields, feed, str(read_code), str(read_reason or ""))
        elif feed.records == "enrollments":
            record = _enrollment(line, fields, custom, feed, today)
        else:
            record = _claim(line, fields, feed, today)
        record.original = {str(k): v for k, v in raw.items()}
        out.append(record)
    return out


def _unreadable(line: int, fields: dict[str, str | None], feed: Feed, code: str, reason: str
                ) -> MemberRecord:
    """A record the reader flagged: rejected with its code. The reader's reason may quote the
    line (an excerpt after ``(`` or ``:``); an enrollment's line holds personal data, so only
    the words before the quote are kept."""
    if feed.records == "enrollments":
        customer = fields["customer_id"]
        key = mask_customer_id(customer) if customer else None
        reason = re.split(r" \(|: ", reason, maxsplit=1)[0]
    else:
        key = f"claim:{fields['transaction_id']}" if fields["transaction_id"] else None
    record = MemberRecord(line, key, fields["store_id"], None)
    record.reject_code, record.reject_field, record.reject_reason = code, None, reason
    return record


def dedup_members(records: list[MemberRecord], known: Mapping[str, set[str]], feed: Feed, *,
                  signups: Mapping[str, Sequence[tuple[str, str | None]]] | None = None) -> None:
    """Mark each valid record new, duplicate, conflict or update, in order, against ``known``
    (key → content hashes the ledger holds) and the records before it.

    An exact repeat is a duplicate. A key seen with other content is a conflict; for enrollments
    with ``enrollments.changes = "profile"`` it is an update instead, keyed
    ``<key>#<12 hex of its hash>`` (sent once as a profile event, itself deduplicated).

    ``signups`` (enrollments): each member's sign-ups the ledger holds, oldest first, as
    (state, content hash). When the platform refused every one of them, a version that is none
    of them is a corrected sign-up: new, keyed ``<key>+<n>`` (the member's n-th correction) and
    sent as an ``opt_in`` once (the platform created nobody; an ``opt_in`` that finds the member
    anyway is settled as already accepted). A repeat of any sign-up is a duplicate.
    """
    seen: dict[str, set[str]] = {k: set(v) for k, v in known.items()}
    updates = feed.records == "enrollments" and feed.enrollments.changes == "profile"
    signed: dict[str, list[tuple[str, str | None]]] = (
        {k: list(v) for k, v in (signups or {}).items()} if feed.records == "enrollments" else {})
    for record in records:
        if record.payload is None or record.key is None or record.content_hash is None:
            continue
        hashes = seen.setdefault(record.key, set())
        mine = signed.get(record.key, [])
        if record.content_hash in {content for _, content in mine[1:]}:
            record.status = "duplicate"  # a corrected sign-up again
            hashes.add(record.content_hash)
            continue
        if signup_status(state for state, _ in mine) == "refused" and record.content_hash not in {
                content for _, content in mine}:
            corrected = f"{record.key}+{len(mine)}"
            mine.append(("queued", record.content_hash))  # later versions follow this one
            record.status = "new"
            record.key = corrected
            record.payload = {**record.payload, "transaction_id": corrected}
            hashes.add(record.content_hash)
            continue
        if not hashes:
            record.status = "new"
        elif record.content_hash in hashes:
            record.status = "duplicate"
        elif updates:
            update_key = f"{record.key}#{record.content_hash[:12]}"
            if record.content_hash in seen.get(update_key, set()):
                record.status = "duplicate"
            else:
                record.status = "update"
                record.key = update_key
                record.payload = {**record.payload, "transaction_id": update_key, "record": PROFILE_UPDATE}
                seen.setdefault(update_key, set()).add(record.content_hash)
            hashes.add(record.content_hash)
            continue
        else:
            record.status = "conflict"
        hashes.add(record.content_hash)
