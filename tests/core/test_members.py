"""Enrollment and claim rows: mapping, validation, dedup and masking (the pure core)."""

from __future__ import annotations

from datetime import date

import pytest

from pipeline.config import Feed
from pipeline.core.members import (
    dedup_members,
    mask_email,
    mask_personal,
    mask_phone,
    member_records,
    missing_columns,
)
from pipeline.core.rejects import MEMBER_CODES
from pipeline.errors import UnreadableFileError

TODAY = date(2026, 11, 20)


def enrollment(**fields: str) -> dict[str, str]:
    row = {"customer_id": "N1", "email": "sam@example.org", "first_name": "Sam", "last_name": "Jones",
           "phone": "", "birth_date": "1990-04-12", "store_id": "LON01",
           "enrolled_at": "2026-11-20T10:00:00Z"}
    return {**row, **fields}


def codes(feed: Feed, *rows: dict[str, str]) -> list[str | None]:
    return [r.reject_code for r in member_records(enumerate(rows, start=2), feed, today=TODAY)]


@pytest.mark.parametrize("email", ["sam@example", "sam example@x.org", "@example.org", "sam@@x.org", "sam"])
def test_bad_emails_are_rejected(email: str) -> None:
    assert codes(Feed(name="m", records="enrollments"), enrollment(email=email)) == ["R102_BAD_EMAIL"]


def test_which_contact_is_required_is_configurable() -> None:
    phone_only = enrollment(email="", phone="+44 20 7946 0101")
    neither = enrollment(email="", phone="")
    either = Feed(name="m", records="enrollments")
    assert codes(either, phone_only, neither) == [None, "R104_NO_CONTACT"]
    email = Feed(name="m", records="enrollments", enrollments={"contact_required": "email"})
    assert codes(email, phone_only, enrollment()) == ["R102_BAD_EMAIL", None]
    both = Feed(name="m", records="enrollments", enrollments={"contact_required": "both"})
    assert codes(both, enrollment(), enrollment(phone="0770 0900 123")) == ["R103_BAD_PHONE", None]
    assert codes(either, enrollment(phone="12ab")) == ["R103_BAD_PHONE"]
    # digits of another script are no phone number a platform can dial
    assert codes(either, enrollment(phone="+\u0664\u0664 \u0667\u0667\u0660\u0660 \u0669\u0660\u0660")) == [
        "R103_BAD_PHONE"]


def test_required_fields_dates_and_consents() -> None:
    feed = Feed(name="m", records="enrollments")
    assert codes(feed, enrollment(customer_id=""), enrollment(enrolled_at="yesterday"),
                 enrollment(birth_date="2030-01-01"), enrollment(consent_sms="maybe")) == [
        "R101_MEMBER_MISSING_FIELD", "R107_BAD_MEMBER_TIMESTAMP", "R105_BAD_BIRTH_DATE", "R106_BAD_CONSENT"]


def test_mapped_columns_defaults_and_custom_properties() -> None:
    feed = Feed(name="m", records="enrollments", format={
        "columns": {"customer_id": "Card", "email": "Mail", "favourite_store": "Fav"},
        "defaults": {"language": "fr"}})
    raw = {"Card": "C9", "Mail": "A@Example.org", "enrolled_at": "2026-11-20T09:00:00+01:00",
           "Fav": "PAR01"}
    [record] = member_records([(2, raw)], feed, today=TODAY)
    assert record.reject_code is None and record.payload is not None
    assert record.payload["customer_id"] == "C9"
    assert record.payload["profile"] == {"email": "a@example.org", "language": "fr",
                                         "favourite_store": "PAR01"}
    assert record.key is not None and record.key.startswith("cust:") and "C9" not in record.key


def test_repeats_are_duplicates_and_changes_conflicts_or_updates() -> None:
    changed = enrollment(email="sam@example.net")
    rows = [enrollment(), enrollment(), changed, dict(changed)]
    held = Feed(name="m", records="enrollments")
    records = member_records(enumerate(rows, start=2), held, today=TODAY)
    dedup_members(records, {}, held)
    assert [r.status for r in records] == ["new", "duplicate", "conflict", "duplicate"]
    updates = Feed(name="m", records="enrollments", enrollments={"changes": "profile"})
    records = member_records(enumerate(rows, start=2), updates, today=TODAY)
    dedup_members(records, {}, updates)
    assert [r.status for r in records] == ["new", "duplicate", "update", "duplicate"]
    assert records[2].payload is not None and records[2].payload["record"] == "profile"
    # against the ledger: what an earlier run recorded is a duplicate now
    first = member_records([(2, enrollment())], held, today=TODAY)
    assert first[0].key is not None and first[0].content_hash is not None
    again = member_records([(2, enrollment())], held, today=TODAY)
    dedup_members(again, {first[0].key: {first[0].content_hash}}, held)
    assert again[0].status == "duplicate"


def test_claims_are_keyed_by_transaction() -> None:
    feed = Feed(name="c", records="claims")
    rows = [{"transaction_id": "T1", "customer_id": "M1", "claimed_at": "2026-11-20T12:00:00Z"},
            {"transaction_id": "T1", "customer_id": "M1", "claimed_at": "2026-11-20T13:00:00Z"},
            {"transaction_id": "T1", "customer_id": "M2", "claimed_at": "2026-11-20T13:00:00Z"},
            {"transaction_id": "", "customer_id": "M1", "claimed_at": "2026-11-20T13:00:00Z"}]
    records = member_records(enumerate(rows, start=2), feed, today=TODAY)
    dedup_members(records, {}, feed)
    assert [r.key for r in records[:3]] == ["claim:T1"] * 3
    assert [r.status for r in records[:3]] == ["new", "duplicate", "conflict"]
    assert records[3].reject_code == "R101_MEMBER_MISSING_FIELD"


def test_masks() -> None:
    assert mask_email("sam.jones@example.org") == "s***@example.org"
    assert mask_phone("+44 20 7946 0123") == "***23"
    masked = mask_personal({"Mail": "sam@example.org", "first_name": "Sam", "phone": "0123456",
                            "customer_id": "N1", "store_id": "LON01"}, {"email": "Mail"})
    assert masked["Mail"] == "s***@example.org" and masked["first_name"] == "***"
    assert masked["phone"] == "***56" and masked["customer_id"].startswith("cust:")
    assert masked["store_id"] == "LON01"


def test_a_file_without_a_required_column_is_named() -> None:
    claims = Feed(name="c", records="claims", format={"columns": {"claimed_at": "When"}})
    assert missing_columns(["transaction_id", "customer_id", "store_id"], claims, file="c.csv") == ["When"]
    assert missing_columns(["transaction_id", "customer_id", "When"], claims, file="c.csv") == []
    defaulted = Feed(name="m", records="enrollments", format={"defaults": {"enrolled_at": "2026-11-20"}})
    assert missing_columns(["customer_id"], defaulted, file="m.csv") == []


def test_columns_named_in_another_case_or_with_blanks_are_read_as_checkout_columns_are() -> None:
    """Before, only an exact name was looked up: a header a spreadsheet capitalised lost the
    email (read as none), the custom property, or made the file lack a required column."""
    feed = Feed(name="m", records="enrollments", format={"columns": {"favourite_store": "Fav Store"}})
    raw = {"Customer ID": "C9", "EMAIL": "sam@example.org", " First_Name ": "Sam",
           "Enrolled_At": "2026-11-20T09:00:00Z", "fav_store": "PAR01"}
    assert missing_columns(raw, feed, file="m.csv") == []
    [record] = member_records([(2, raw)], feed, today=TODAY)
    assert record.reject_code is None and record.payload is not None
    assert record.payload["customer_id"] == "C9"
    assert record.payload["profile"]["email"] == "sam@example.org"
    assert record.payload["profile"]["first_name"] == "Sam"
    assert record.payload["profile"]["favourite_store"] == "PAR01"
    masked = mask_personal(raw, feed.format.columns)  # a rejected row's personal data stays masked
    assert masked["EMAIL"] == "s***@example.org" and masked[" First_Name "] == "***"
    assert masked["Customer ID"].startswith("cust:")
    assert mask_personal({"MAIL": "sam@example.org"}, {"email": "Mail"})["MAIL"] == "s***@example.org"
    claims = Feed(name="c", records="claims", format={"columns": {"claimed_at": "When"}})
    assert missing_columns(["Transaction_ID", "CUSTOMER ID", "when"], claims, file="c.csv") == []


def test_two_columns_matching_one_name_make_a_members_file_unreadable_naming_both() -> None:
    feed = Feed(name="m", records="enrollments")
    with pytest.raises(UnreadableFileError) as raised:
        missing_columns(["customer_id", "email", "Email", "enrolled_at"], feed, file="m.csv")
    assert raised.value.file == "m.csv"
    assert "'email'" in raised.value.reason and "'Email'" in raised.value.reason
    # two columns matching a name the feed does not read are no guess
    assert missing_columns(["customer_id", "enrolled_at", "note", "Note"], feed, file="m.csv") == []


def test_every_member_code_has_a_case() -> None:
    feed = Feed(name="m", records="enrollments")
    seen = set(codes(feed, enrollment(customer_id=""), enrollment(email="x"), enrollment(phone="1"),
                     enrollment(email=""), enrollment(birth_date="soon"), enrollment(consent_email="?"),
                     enrollment(enrolled_at="?"), enrollment(first_name="S\x07")))
    assert seen == {code.value for code in MEMBER_CODES}


def test_text_no_till_writes_is_rejected_not_sent() -> None:
    feed = Feed(name="m", records="enrollments", validation={"max_field_chars": 50})
    records = member_records(enumerate([
        enrollment(first_name="S" * 51),                      # longer than validation.max_field_chars
        enrollment(customer_id="N\u200b1"),                  # a zero-width space in the id
        enrollment(store_id="LON\t01"),
        enrollment(email="sam@example.org\u200f"),            # a right-to-left mark after the address
        enrollment(first_name="Sam\x1b[2J"),                  # a terminal escape in a name
        enrollment(last_name="Jones\nSmith"),                 # a line break in a name
        enrollment(first_name="\u05e9\u05e8\u05d4\u200f"),    # Hebrew with its mark: a name as written
    ], start=2), feed, today=TODAY)
    assert [(r.reject_code, r.reject_field) for r in records] == [
        ("R031_FIELD_TOO_LONG", "first_name"), ("R023_CONTROL_CHARACTER_IN_ID", "customer_id"),
        ("R023_CONTROL_CHARACTER_IN_ID", "store_id"), ("R102_BAD_EMAIL", "email"),
        ("R108_CONTROL_CHARACTER_IN_TEXT", "first_name"), ("R108_CONTROL_CHARACTER_IN_TEXT", "last_name"),
        (None, None)]
    assert records[0].reject_reason == "first_name is 51 characters long; at most 50 are kept " \
                                       "(validation.max_field_chars)"
    claims = Feed(name="c", records="claims", validation={"max_field_chars": 50})
    rows = [{"transaction_id": "T\x001", "customer_id": "M1", "claimed_at": "2026-11-20T12:00:00Z"},
            {"transaction_id": "T1", "customer_id": "M" * 60, "claimed_at": "2026-11-20T12:00:00Z"}]
    assert [r.reject_code for r in member_records(enumerate(rows, start=2), claims, today=TODAY)] == [
        "R023_CONTROL_CHARACTER_IN_ID", "R031_FIELD_TOO_LONG"]


def test_dates_no_member_can_have_are_rejected() -> None:
    feed = Feed(name="m", records="enrollments")
    assert codes(feed, enrollment(enrolled_at="2099-11-20T10:00:00Z"),
                 enrollment(birth_date="2026-11-20", enrolled_at="2026-11-19T10:00:00Z"),
                 enrollment(enrolled_at="2026-11-21T09:00:00+14:00")) == [
        "R107_BAD_MEMBER_TIMESTAMP", "R105_BAD_BIRTH_DATE", None]
    claims = Feed(name="c", records="claims")
    assert codes(claims, {"transaction_id": "T1", "customer_id": "M1", "claimed_at": "2099-01-01T00:00:00Z"}
                 ) == ["R107_BAD_MEMBER_TIMESTAMP"]


def test_customer_ids_in_scientific_notation_are_rejected() -> None:
    feed = Feed(name="m", records="enrollments")
    rows = [enrollment(customer_id=cid) for cid in ("1.23457E+11", "1.2E+5", "12E45")]
    records = member_records(enumerate(rows, start=2), feed, today=TODAY)
    assert [(r.reject_code, r.reject_field) for r in records] == [
        ("R033_ID_IN_SCIENTIFIC_NOTATION", "customer_id"), ("R033_ID_IN_SCIENTIFIC_NOTATION", "customer_id"),
        (None, None)]
    assert records[0].reject_reason is not None and "1.23457E+11" not in records[0].reject_reason
    claims = Feed(name="c", records="claims")
    assert codes(claims, {"transaction_id": "T1", "customer_id": "9.87654E+12",
                          "claimed_at": "2026-11-20T12:00:00Z"}) == ["R033_ID_IN_SCIENTIFIC_NOTATION"]


def test_a_birth_date_older_than_the_oldest_member_is_rejected() -> None:
    feed = Feed(name="m", records="enrollments")
    assert codes(feed, enrollment(birth_date="1800-01-01"), enrollment(birth_date="1896-11-19"),
                 enrollment(birth_date="1896-11-21")) == [
        "R105_BAD_BIRTH_DATE", "R105_BAD_BIRTH_DATE", None]
    [record] = member_records([(2, enrollment(birth_date="1800-01-01"))], feed, today=TODAY)
    assert record.reject_reason == "birth_date makes the member older than 130 years " \
                                   "(enrollments.max_age_years)"
    younger = Feed(name="m", records="enrollments", enrollments={"max_age_years": 110})
    assert codes(younger, enrollment(birth_date="1915-01-01")) == ["R105_BAD_BIRTH_DATE"]


def test_timestamps_before_the_earliest_date_are_rejected() -> None:
    feed = Feed(name="m", records="enrollments")
    assert codes(feed, enrollment(enrolled_at="0001-01-01T00:00:00"),
                 enrollment(enrolled_at="1999-12-31T23:00:00Z", birth_date="")) == [
        "R107_BAD_MEMBER_TIMESTAMP", "R107_BAD_MEMBER_TIMESTAMP"]
    late = Feed(name="m", records="enrollments", validation={"earliest_date": "1990-01-01"})
    assert codes(late, enrollment(enrolled_at="1999-12-31T23:00:00Z", birth_date="")) == [None]
    claims = Feed(name="c", records="claims")
    assert codes(claims, {"transaction_id": "T1", "customer_id": "M1", "claimed_at": "1970-01-01T00:00:00Z"}
                 ) == ["R107_BAD_MEMBER_TIMESTAMP"]


def test_a_members_business_date_is_read_as_a_checkouts_is() -> None:
    from tests.core.helpers import row, run

    stamps = ["2026-11-20T23:30:00Z", "2026-11-20T23:30:00+01:00", "2026-11-20T23:30:00",
              "2026-11-21T00:30:00+01:00"]
    feed = Feed(name="m", records="enrollments", timezone="Europe/Berlin")
    members = member_records(enumerate([enrollment(enrolled_at=s) for s in stamps], start=2), feed,
                             today=TODAY)
    lines = [row(transaction_id=f"T{i}", timestamp=s, business_date="") for i, s in enumerate(stamps)]
    checkouts = run(lines, Feed(name="c", timezone="Europe/Berlin")).checkouts
    days = [str(d) for d in checkouts.sort("transaction_id").get_column("business_date").to_list()]
    assert [m.business_date for m in members] == days == ["2026-11-20", "2026-11-20", "2026-11-20",
                                                          "2026-11-21"]
