"""The reject code catalog: every reason a row can be rejected, with a stable code.

Codes never change meaning and are never reused; a new code takes the next number. The order of
the catalog is the order in which rules are checked: a row failing several rules carries the first one.
The "Reject codes" table of docs/REPORTS.md is generated from :data:`CATALOG` (a test keeps them equal).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CATALOG", "ISO_4217", "MEMBER_CODES", "READER_CODES", "RejectCode", "catalog_rows", "readme_table",
]


class RejectCode(StrEnum):
    """Stable reject codes (numbered in the order they were added; :data:`CATALOG` holds the
    order in which they are checked)."""

    MISSING_FIELD = "R001_MISSING_FIELD"
    BAD_NUMBER = "R002_BAD_NUMBER"
    BAD_TIMESTAMP = "R003_BAD_TIMESTAMP"
    BAD_BUSINESS_DATE = "R004_BAD_BUSINESS_DATE"
    UNKNOWN_TRANSACTION_TYPE = "R005_UNKNOWN_TRANSACTION_TYPE"
    UNKNOWN_CURRENCY = "R006_UNKNOWN_CURRENCY"
    NON_POSITIVE_QUANTITY = "R007_NON_POSITIVE_QUANTITY"
    NEGATIVE_PRICE = "R008_NEGATIVE_PRICE"
    NEGATIVE_DISCOUNT = "R009_NEGATIVE_DISCOUNT"
    LINE_TOTAL_MISMATCH = "R010_LINE_TOTAL_MISMATCH"
    TIMESTAMP_IN_FUTURE = "R011_TIMESTAMP_IN_FUTURE"
    TIMESTAMP_FAR_FROM_BUSINESS_DATE = "R012_TIMESTAMP_FAR_FROM_BUSINESS_DATE"
    REPEATED_LINE_NUMBER = "R013_REPEATED_LINE_NUMBER"
    MIXED_STORES = "R014_MIXED_STORES"
    MIXED_CUSTOMERS = "R015_MIXED_CUSTOMERS"
    MIXED_CURRENCIES = "R016_MIXED_CURRENCIES"
    MIXED_TRANSACTION_TYPES = "R017_MIXED_TRANSACTION_TYPES"
    TRANSACTION_TOTAL_MISMATCH = "R018_TRANSACTION_TOTAL_MISMATCH"
    WRONG_FIELD_COUNT = "R019_WRONG_FIELD_COUNT"
    UNBALANCED_QUOTE = "R020_UNBALANCED_QUOTE"
    NOT_JSON = "R021_NOT_JSON"
    NUL_IN_ROW = "R022_NUL_IN_ROW"
    CONTROL_CHARACTER_IN_ID = "R023_CONTROL_CHARACTER_IN_ID"
    OFFSET_OUT_OF_RANGE = "R024_OFFSET_OUT_OF_RANGE"
    DATE_TOO_EARLY = "R025_DATE_TOO_EARLY"
    NUMBER_TOO_LARGE = "R026_NUMBER_TOO_LARGE"
    MIXED_TRANSACTION_VALUES = "R027_MIXED_TRANSACTION_VALUES"
    DISCOUNT_EXCEEDS_LINE = "R028_DISCOUNT_EXCEEDS_LINE"
    NEGATIVE_POINTS_BURNED = "R029_NEGATIVE_POINTS_BURNED"
    JSON_VALUE_NOT_TEXT = "R030_JSON_VALUE_NOT_TEXT"
    FIELD_TOO_LONG = "R031_FIELD_TOO_LONG"
    NO_ITEMS = "R032_NO_ITEMS"
    SIBLING_REJECTED = "R099_SIBLING_REJECTED"
    COPY_OF_REJECTED = "R034_COPY_OF_REJECTED"
    REPEATED_HEADER = "R035_REPEATED_HEADER"
    LINE_BREAK_IN_FIELD = "R036_LINE_BREAK_IN_FIELD"
    # enrollments and claims (records = "enrollments" | "claims")
    MEMBER_MISSING_FIELD = "R101_MEMBER_MISSING_FIELD"
    BAD_EMAIL = "R102_BAD_EMAIL"
    BAD_PHONE = "R103_BAD_PHONE"
    NO_CONTACT = "R104_NO_CONTACT"
    BAD_BIRTH_DATE = "R105_BAD_BIRTH_DATE"
    BAD_CONSENT = "R106_BAD_CONSENT"
    BAD_MEMBER_TIMESTAMP = "R107_BAD_MEMBER_TIMESTAMP"
    CONTROL_CHARACTER_IN_TEXT = "R108_CONTROL_CHARACTER_IN_TEXT"
    ID_IN_SCIENTIFIC_NOTATION = "R033_ID_IN_SCIENTIFIC_NOTATION"


# the codes the readers give a record they cannot read (checked first: such a record has no
# trustworthy values)
READER_CODES: tuple[RejectCode, ...] = (
    RejectCode.WRONG_FIELD_COUNT,
    RejectCode.UNBALANCED_QUOTE,
    RejectCode.NOT_JSON,
    RejectCode.NUL_IN_ROW,
    RejectCode.REPEATED_HEADER,
    RejectCode.JSON_VALUE_NOT_TEXT,
    RejectCode.NO_ITEMS,
)

CATALOG: dict[RejectCode, str] = {
    RejectCode.WRONG_FIELD_COUNT: "A CSV record has more fields than the header (extra empty fields, "
    "a trailing delimiter, are allowed; a record with fewer fields has its last fields empty), or the "
    "file's last record has fewer fields and no line break after it: a line the till was still writing.",
    RejectCode.UNBALANCED_QUOTE: "A quoted CSV field is not closed (by the end of the file or within "
    "1,000 lines), or text follows its closing quote; the record's first line is rejected and "
    "reading resumes on the next line.",
    RejectCode.NOT_JSON: "A JSON Lines line is not a JSON object, or repeats a key (which of its "
    "values counts would be a guess).",
    RejectCode.NUL_IN_ROW: "A NUL character (byte 0) anywhere in the record.",
    RejectCode.REPEATED_HEADER: "A CSV record repeats the file's header (the same column names in "
    "the same order, whatever their case and blanks): two exports joined into one file. The records "
    "after it are read as usual; a header in another order or with other columns makes the file "
    "unreadable instead.",
    RejectCode.JSON_VALUE_NOT_TEXT: "A JSON Lines field the feed reads holds an object, an array, "
    "true or false: no text or number a checkout can carry (keys the feed does not read may hold "
    "anything).",
    RejectCode.NO_ITEMS: "A POSLog retail transaction took money (a TransactionGrandAmount other "
    "than 0) but has no Sale or Return line left to carry it (none written, or all voided). Its one "
    "row carries the total as its line_total, so the money shows among the rejected amounts.",
    RejectCode.MISSING_FIELD: "A required field is empty or its column is missing: transaction_id, "
    "store_id, timestamp, product_id, quantity, unit_price, currency.",
    RejectCode.FIELD_TOO_LONG: "A text field (transaction_id, store_id, register_id, customer_id, "
    "transaction_type, product_id, product_name, product_category, currency, "
    "original_transaction_id; any field of an enrollment or claim) is longer than "
    "validation.max_field_chars characters (1,000 unless set): no value a till writes, and a request "
    "carrying it would be refused whole.",
    RejectCode.CONTROL_CHARACTER_IN_ID: "An id (transaction_id, original_transaction_id, customer_id, "
    "product_id, store_id, register_id; an enrollment's or claim's customer_id, store_id, "
    "transaction_id) holds a control or format character (Unicode categories Cc, Cf: tabs, line "
    "breaks, zero-width and bidi marks...).",
    RejectCode.ID_IN_SCIENTIFIC_NOTATION: "A customer_id (of a checkout, an enrollment or a claim) "
    "is a number in scientific notation, as a spreadsheet saves a long numeric id (1.23457E+11, "
    "1.2E+5: digits, an optional decimal part, E and a signed exponent): the real id is lost, and "
    "sent it would name another member or nobody. Export the column as text.",
    RejectCode.BAD_NUMBER: "A number (quantity, unit_price, discount, line_total, transaction_total, "
    "points_burned, line_no) cannot be read exactly: not a number, or more decimal places than kept "
    "(4 for money, 3 for quantities, 0 for line_no); in POSLog, also a number element that is there "
    "but empty, and a price modifier that gives a Percent but no Amount.",
    RejectCode.NUMBER_TOO_LARGE: "A number has more whole digits than kept (money below "
    "1,000,000,000,000, quantities below 1,000,000,000), or a line's quantity × unit_price − "
    "discount reaches 1,000,000,000,000.",
    RejectCode.BAD_TIMESTAMP: "The timestamp cannot be read (ISO 8601 or format.timestamp_format; "
    "an offset such as +01:00 or Z is honoured).",
    RejectCode.OFFSET_OUT_OF_RANGE: "The timestamp's UTC offset is outside -14:00..+14:00, or its "
    "minutes are not 00-59.",
    RejectCode.BAD_BUSINESS_DATE: "The business_date cannot be read (YYYY-MM-DD or format.date_format).",
    RejectCode.UNKNOWN_TRANSACTION_TYPE: "transaction_type is not one of sale, return, void.",
    RejectCode.UNKNOWN_CURRENCY: "The currency is not an ISO 4217 code, or not one of validation.currencies.",
    RejectCode.LINE_BREAK_IN_FIELD: "A field that no till writes on two lines holds a line break (a "
    "quoted CSV field spanning lines): a timestamp, a date, a number, a code or an id (every field "
    "but product_name and product_category, which are free text). Trimmed, the value would be read "
    "as if nothing were wrong with the record; the reason names the field, not its value.",
    RejectCode.NON_POSITIVE_QUANTITY: "A sale line has a zero or negative quantity (negative "
    "quantities make a return when validation.treat_negative_quantity_as_return and every line is "
    "negative); a return line has quantity zero.",
    RejectCode.NEGATIVE_PRICE: "unit_price is negative.",
    RejectCode.NEGATIVE_DISCOUNT: "discount is negative.",
    RejectCode.DISCOUNT_EXCEEDS_LINE: "discount is more than the line's quantity × unit_price: the "
    "line would be worth less than nothing (a sale sent with a negative amount, a return that takes "
    "money back).",
    RejectCode.NEGATIVE_POINTS_BURNED: "A sale's points_burned is negative (points spent at the "
    "till cannot be less than none; sent, it would credit the member).",
    RejectCode.LINE_TOTAL_MISMATCH: "line_total differs from quantity × unit_price − discount by more "
    "than validation.amount_tolerance.",
    RejectCode.TIMESTAMP_IN_FUTURE: "The timestamp is later than now + validation.max_future_minutes.",
    RejectCode.DATE_TOO_EARLY: "The timestamp or the business_date is before "
    "validation.earliest_date (2000-01-01 unless set).",
    RejectCode.TIMESTAMP_FAR_FROM_BUSINESS_DATE: "The local date of the timestamp is more than "
    "validation.max_days_from_business_date days from the business_date.",
    RejectCode.REPEATED_LINE_NUMBER: "Two different lines of one transaction in one file share a "
    "line_no (an exact repeat of a whole line is a repeated export block, counted as a duplicate).",
    RejectCode.MIXED_STORES: "The lines of one transaction name more than one store_id.",
    RejectCode.MIXED_CUSTOMERS: "The lines of one transaction name more than one customer_id.",
    RejectCode.MIXED_CURRENCIES: "The lines of one transaction use more than one currency.",
    RejectCode.MIXED_TRANSACTION_TYPES: "The lines of one transaction have more than one transaction_type.",
    RejectCode.MIXED_TRANSACTION_VALUES: "The lines of one transaction disagree on a value of the "
    "transaction itself: business_date, register_id, original_transaction_id, transaction_total or "
    "points_burned (lines that leave it empty agree with any).",
    RejectCode.TRANSACTION_TOTAL_MISMATCH: "transaction_total differs from the sum of the line totals "
    "by more than validation.amount_tolerance.",
    RejectCode.SIBLING_REJECTED: "Another line of the same transaction was rejected; a checkout is "
    "sent whole or not at all, so this line is held back with it.",
    RejectCode.COPY_OF_REJECTED: "A repeat of a rejected transaction: another copy of it in the same "
    "file (an export repeating some of its lines), or, in another file of the run or a later run, a "
    "fragment of it (only some of its lines, each an exact copy). Never sent on its own; a corrected "
    "transaction (a line of its own) is judged afresh.",
    RejectCode.MEMBER_MISSING_FIELD: "An enrollment without customer_id or enrolled_at, or a claim "
    "without transaction_id, customer_id or claimed_at.",
    RejectCode.BAD_EMAIL: "The email is not an address (one @, a local part, a domain with a dot, no "
    "spaces, no control or format character such as a bidi mark), or it is missing while "
    "enrollments.contact_required asks for it.",
    RejectCode.BAD_PHONE: "The phone is not a number (an optional +, then 6 to 15 digits; spaces, "
    "dots, dashes and brackets are ignored), or it is missing while enrollments.contact_required "
    "asks for it.",
    RejectCode.NO_CONTACT: "An enrollment has neither an email nor a phone "
    '(enrollments.contact_required = "either").',
    RejectCode.CONTROL_CHARACTER_IN_TEXT: "A name, language or custom property of an enrollment "
    "holds a control character (Unicode category Cc: tabs, line breaks, terminal escapes); format "
    "characters such as a right-to-left mark are how some names are written and are kept.",
    RejectCode.BAD_BIRTH_DATE: "The birth_date cannot be read (YYYY-MM-DD or format.date_format) or "
    "is in the future, after enrolled_at, or makes the member older than enrollments.max_age_years "
    "(130 unless set) at enrolled_at (1800-01-01: a placeholder, not a birthday).",
    RejectCode.BAD_CONSENT: "consent_email or consent_sms is not one of true, false, yes, no, 1, 0.",
    RejectCode.BAD_MEMBER_TIMESTAMP: "enrolled_at or claimed_at cannot be read (ISO 8601 or "
    "format.timestamp_format), or its date is before validation.earliest_date (2000-01-01 unless "
    "set) or more than a day after the run's.",
}

# the codes of enrollment and claim rows (pipeline.core.members); the others are checkout lines'
MEMBER_CODES: frozenset[RejectCode] = frozenset({
    RejectCode.MEMBER_MISSING_FIELD, RejectCode.BAD_EMAIL, RejectCode.BAD_PHONE, RejectCode.NO_CONTACT,
    RejectCode.BAD_BIRTH_DATE, RejectCode.BAD_CONSENT, RejectCode.BAD_MEMBER_TIMESTAMP,
    RejectCode.CONTROL_CHARACTER_IN_TEXT,
})


def catalog_rows() -> list[dict[str, str]]:
    """The catalog as a list of {code, description}, in check order."""
    return [{"code": code.value, "description": text} for code, text in CATALOG.items()]


def readme_table() -> str:
    """The Markdown table of every reject code, as docs/REPORTS.md shows it."""
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| `{code.value}` | {text} |" for code, text in CATALOG.items()]
    return "\n".join(lines)


# Active ISO 4217 alphabetic codes (plus the precious-metal and testing codes left out on purpose).
_ISO_4217_TEXT = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
    RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD
    TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    ZWL
"""
ISO_4217: frozenset[str] = frozenset(_ISO_4217_TEXT.split())
