"""Row rules, first: is each field there and readable?

Each function is one family of rules, in catalog order; :func:`pipeline.core.validate.rules.row_rules`
puts the families in order.
"""

from __future__ import annotations

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import READ_CODE, READ_REASON
from pipeline.core.rejects import ISO_4217, READER_CODES, RejectCode
from pipeline.core.validate.control import ID_FIELDS, SCIENTIFIC_RE, shown
from pipeline.core.validate.exprs import money
from pipeline.core.validate.numbers import MONEY_WHOLE_DIGITS, NUMBER_FIELDS
from pipeline.core.validate.rule import (
    Rule,
    hashes_customer,
    large_number_text,
    masked_customer,
    money_text,
    read_flag,
    read_reason,
    reason,
)
from pipeline.records import CANONICAL_COLUMNS, REQUIRED_COLUMNS, TransactionType

__all__ = [
    "code_rules",
    "control_character_rules",
    "field_length_rules",
    "line_break_flag",
    "line_break_rules",
    "long_text_flag",
    "missing_field_rules",
    "number_rules",
    "reader_rules",
    "scientific_id_rules",
    "time_format_rules",
]

_TYPES = [t.value for t in TransactionType]
# the text fields whose length is bounded (numbers, times and dates are bounded by their reading)
TEXT_FIELDS = ("transaction_id", "store_id", "register_id", "customer_id", "transaction_type", "product_id",
               "product_name", "product_category", "currency", "original_transaction_id")
# free text a till may write on several lines; no other field holds a line break
FREE_TEXT_FIELDS = ("product_name", "product_category")
BREAKLESS_FIELDS = tuple(f for f in CANONICAL_COLUMNS if f not in FREE_TEXT_FIELDS)
# a line's computed amount must fit the money kept, like every amount read
LARGEST_LINE_AMOUNT = money(10**MONEY_WHOLE_DIGITS)


# the excerpt of the line a reader's reason ends with (``: '...'``, before a closing parenthesis)
_LINE_EXCERPT = r""": (?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(\)?)$"""


def reader_rules(feed: Feed) -> list[Rule]:
    """A record a reader could not read: its code and reason come from the reader. The excerpt of
    the line a reason quotes holds the line's customer id: with ``logging.hash_customer_ids`` the
    reason tells where the line broke and leaves the excerpt out."""
    text = pl.col(READ_REASON)
    if feed.logging.hash_customer_ids:
        text = text.str.replace(_LINE_EXCERPT, "${1}")
    return [
        Rule(
            f"read_{code.name.lower()}",
            code,
            "record",
            pl.col(READ_CODE) == code.value,
            text,
            needs=(READ_CODE,),
        )
        for code in READER_CODES
    ]


def missing_field_rules() -> list[Rule]:
    """A required field left empty."""
    rules: list[Rule] = []
    for field in REQUIRED_COLUMNS:
        if field in NUMBER_FIELDS:  # blank: no value and not flagged as a bad number
            missing = pl.col(f"v_{field}").is_null() & ~pl.col(f"v_bad_{field}")
        elif field == "timestamp":
            missing = pl.col("v_ts_blank")  # judged once per distinct timestamp text
        else:
            typed = pl.col(f"v_{field}")
            missing = typed.is_null() | (typed.str.len_bytes() == 0)
        rules.append(
            Rule(
                f"missing_{field}",
                RejectCode.MISSING_FIELD,
                field,
                missing,
                pl.lit(f"required field {field} is empty"),
            )
        )
    return rules


def long_text_flag(feed: Feed) -> pl.Expr:
    """``v_long_text``: true where a text field has more bytes than ``validation.max_field_chars``
    (a character takes a byte at least, so no other line has one too long), null elsewhere: when
    no line has one, :func:`field_length_rules` are skipped (a byte count costs nothing)."""
    limit = feed.validation.max_field_chars
    long_text = pl.any_horizontal(pl.col(f).str.len_bytes() > limit for f in TEXT_FIELDS)
    return pl.when(long_text).then(True).alias("v_long_text")


def field_length_rules(feed: Feed) -> list[Rule]:
    """A text field longer than ``validation.max_field_chars`` characters (the reason gives its
    length, never its value)."""
    limit = feed.validation.max_field_chars
    return [
        Rule(
            f"{field}_too_long",
            RejectCode.FIELD_TOO_LONG,
            field,
            pl.col("v_long_text") & (pl.col(field).str.len_chars() > limit),
            reason(f"{field} is {{}} characters long; at most {limit} are kept (validation.max_field_chars)",
                   pl.col(field).str.len_chars()),
            needs=("v_long_text",),
        )
        for field in TEXT_FIELDS
    ]


def control_character_rules(feed: Feed) -> list[Rule]:
    """An id holding a control or format character (a hashed customer id shown hashed)."""
    rules: list[Rule] = []
    for field, typed_id in ID_FIELDS:
        flag = f"v_ctrl_{typed_id.removeprefix('v_')}"
        value = pl.format("'{}'", masked_customer(field)) if hashes_customer(field, feed) else shown(field)
        rules.append(
            Rule(
                f"control_character_in_{field}",
                RejectCode.CONTROL_CHARACTER_IN_ID,
                field,
                pl.col(flag),
                reason(f"{field} {{}} holds a control or format character", value),
                needs=(flag,),
            )
        )
    return rules


def scientific_id_rules(feed: Feed) -> list[Rule]:
    """A customer id a spreadsheet saved in scientific notation (``1.23457E+11``): the real id is
    lost (a hashed customer id shown hashed)."""
    value = masked_customer("customer_id") if hashes_customer("customer_id", feed) else pl.col("customer_id")
    return [
        Rule(
            "customer_id_in_scientific_notation",
            RejectCode.ID_IN_SCIENTIFIC_NOTATION,
            "customer_id",
            pl.col("v_customer_id").str.contains(SCIENTIFIC_RE),
            reason("customer_id '{}' is a number in scientific notation (a spreadsheet's rounding): "
                   "the real id is lost", value),
            needs=("v_customer_id",),
        )
    ]


def number_rules(feed: Feed) -> list[Rule]:
    """A number field whose text is not a number of its kind, or one too large to keep."""
    rules: list[Rule] = []
    written = " written with a decimal comma (dots only between thousands: 1.234,50)"
    for field, (_, places, _) in NUMBER_FIELDS.items():
        what = "a whole number" if places == 0 else f"a number with at most {places} decimal places"
        if places and feed.format.decimal_comma:
            what += written
        rules.append(
            Rule(
                f"bad_{field}",
                RejectCode.BAD_NUMBER,
                field,
                pl.col(f"v_bad_{field}") & ~pl.col(f"v_big_{field}"),
                pl.when(read_flag(RejectCode.BAD_NUMBER, field))  # a reader's (see with_numbers)
                .then(read_reason(field))
                .otherwise(reason(f"{field} '{{}}' is not {what}", pl.col(field))),
            )
        )
    for field, (_, _, whole) in NUMBER_FIELDS.items():
        rules.append(
            Rule(
                f"big_{field}",
                RejectCode.NUMBER_TOO_LARGE,
                field,
                pl.col(f"v_big_{field}"),
                reason(f"{field} '{{}}' has more than {whole} whole digits", pl.col(field)),
            )
        )
    expected = pl.col("v_line_expected")
    limit = large_number_text(MONEY_WHOLE_DIGITS, feed)
    rules.append(
        Rule(
            "big_line_amount",
            RejectCode.NUMBER_TOO_LARGE,
            "unit_price",
            expected.abs() >= LARGEST_LINE_AMOUNT,
            reason(f"quantity × unit_price − discount = {{}} reaches {limit}", money_text(expected, feed)),
        )
    )
    return rules


def time_format_rules() -> list[Rule]:
    """A timestamp or business date that cannot be read, or an offset no place has."""
    return [
        Rule(
            "bad_timestamp",
            RejectCode.BAD_TIMESTAMP,
            "timestamp",
            pl.col("v_ts_utc").is_null(),
            reason("timestamp '{}' cannot be read", pl.col("timestamp")),
        ),
        Rule(
            "offset_out_of_range",
            RejectCode.OFFSET_OUT_OF_RANGE,
            "timestamp",
            pl.col("v_offset_bad"),
            reason("timestamp '{}' has a UTC offset outside -14:00..+14:00", pl.col("timestamp")),
            needs=("v_offset_bad",),
        ),
        Rule(
            "bad_business_date",
            RejectCode.BAD_BUSINESS_DATE,
            "business_date",
            pl.col("v_business_date_text").is_not_null() & pl.col("v_business_date_given").is_null(),
            reason("business_date '{}' is not a date", pl.col("business_date")),
        ),
    ]


def code_rules(feed: Feed) -> list[Rule]:
    """A transaction type or currency that is not one of the known codes."""
    v = feed.validation
    allowed = sorted(ISO_4217 if v.currencies is None else {c.upper() for c in v.currencies})
    return [
        Rule(
            "unknown_transaction_type",
            RejectCode.UNKNOWN_TRANSACTION_TYPE,
            "transaction_type",
            pl.col("v_type_given").is_not_null() & ~pl.col("v_type_given").is_in(_TYPES),
            reason("transaction_type '{}' is not sale, return or void", pl.col("transaction_type")),
        ),
        Rule(
            "unknown_currency",
            RejectCode.UNKNOWN_CURRENCY,
            "currency",
            ~pl.col("v_currency").is_in(allowed),
            reason(
                "currency '{}' is not "
                + ("an ISO 4217 code" if v.currencies is None else "one of " + ", ".join(allowed)),
                pl.col("currency"),
            ),
        ),
    ]


def _has_break(field: str) -> pl.Expr:
    return pl.col(field).str.contains(r"[\r\n]")  # one pass: twice as fast as two literal searches


def line_break_flag() -> pl.Expr:
    """``v_line_break``: true where a field of :data:`BREAKLESS_FIELDS` holds a line break, null
    elsewhere: when no line has one (the usual case), :func:`line_break_rules` are skipped."""
    found = pl.any_horizontal(_has_break(f).fill_null(False) for f in BREAKLESS_FIELDS)
    return pl.when(found).then(True).alias("v_line_break")


def line_break_rules() -> list[Rule]:
    """A line break in a field that cannot hold one (a quoted CSV field spanning lines): the value
    is not read trimmed as if nothing were wrong. The reason names the field, never its value."""
    return [
        Rule(
            f"line_break_in_{field}",
            RejectCode.LINE_BREAK_IN_FIELD,
            field,
            pl.col("v_line_break") & _has_break(field),
            pl.lit(f"{field} holds a line break (a quoted field spanning lines); a {field} never does"),
            needs=("v_line_break",),
        )
        for field in BREAKLESS_FIELDS
    ]
