"""Row rules, then: are the readable values plausible, and do the transaction's lines agree?

Each function is one family of rules, in catalog order; :func:`pipeline.core.validate.rules.row_rules`
puts the families in order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.config import Feed
from pipeline.core.rejects import RejectCode
from pipeline.core.validate.exprs import money
from pipeline.core.validate.rule import (
    Rule,
    hashes_customer,
    masked_customer,
    money_text,
    read_flag,
    read_reason,
    reason,
)
from pipeline.records import TransactionType

__all__ = ["amount_rules", "date_range_rules", "shape_rules"]


def amount_rules(feed: Feed) -> list[Rule]:
    """Quantities, prices, discounts and points of the right sign, and a line total that adds up."""
    q = pl.col("v_quantity")
    txn_type = pl.col("v_type")
    tolerance = money(feed.validation.amount_tolerance)
    given, expected = pl.col("v_line_total"), pl.col("v_line_expected")
    off = (
        pl.when(txn_type == TransactionType.RETURN)
        .then((given.abs() - expected.abs()).abs())
        .otherwise((given - expected).abs())
    )
    return [
        Rule(
            "non_positive_quantity",
            RejectCode.NON_POSITIVE_QUANTITY,
            "quantity",
            ((txn_type == TransactionType.SALE) & (q <= 0))
            | ((txn_type == TransactionType.RETURN) & (q == 0)),
            reason("quantity {} on a {}", pl.col("quantity"), txn_type),
        ),
        Rule(
            "negative_price",
            RejectCode.NEGATIVE_PRICE,
            "unit_price",
            pl.col("v_unit_price") < 0,
            reason("unit_price {} is negative", pl.col("unit_price")),
        ),
        Rule(
            "negative_discount",
            RejectCode.NEGATIVE_DISCOUNT,
            "discount",
            pl.col("v_discount") < 0,
            reason("discount {} is negative", pl.col("discount")),
            needs=("v_discount",),
        ),
        Rule(
            "discount_exceeds_line",
            RejectCode.DISCOUNT_EXCEEDS_LINE,
            "discount",
            pl.col("v_discount") > pl.col("v_gross").abs(),
            reason(
                "discount {} is more than quantity × unit_price = {}",
                pl.col("discount"),
                money_text(pl.col("v_gross").abs(), feed),
            ),
            needs=("v_discount",),
        ),
        Rule(
            "negative_points_burned",
            RejectCode.NEGATIVE_POINTS_BURNED,
            "points_burned",
            (txn_type == TransactionType.SALE) & (pl.col("v_points_burned") < 0),
            reason("points_burned {} is negative on a sale", pl.col("points_burned")),
            needs=("v_points_burned",),
        ),
        Rule(
            "line_total_mismatch",
            RejectCode.LINE_TOTAL_MISMATCH,
            "line_total",
            off > tolerance,
            reason(
                "line_total {} but quantity × unit_price − discount = {}",
                pl.col("line_total"),
                money_text(expected, feed),
            ),
            needs=("v_line_total",),
        ),
    ]


def date_range_rules(feed: Feed, now: datetime) -> list[Rule]:
    """A timestamp or business date in the future, too long ago, or far from each other."""
    v = feed.validation
    now_utc = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    latest = now_utc + timedelta(minutes=v.max_future_minutes)
    earliest = datetime.combine(v.earliest_date, datetime.min.time(), tzinfo=UTC)
    days = (pl.col("v_local_date") - pl.col("v_business_date_given")).dt.total_days().abs()
    return [
        Rule(
            "timestamp_in_future",
            RejectCode.TIMESTAMP_IN_FUTURE,
            "timestamp",
            pl.col("v_ts_utc") > pl.lit(latest).dt.convert_time_zone("UTC"),
            reason(
                f"timestamp '{{}}' is after now ({now_utc:%Y-%m-%dT%H:%M}Z) + {v.max_future_minutes} min",
                pl.col("timestamp"),
            ),
        ),
        Rule(
            "timestamp_too_early",
            RejectCode.DATE_TOO_EARLY,
            "timestamp",
            pl.col("v_ts_utc") < pl.lit(earliest).dt.convert_time_zone("UTC"),
            reason(
                f"timestamp '{{}}' is before validation.earliest_date {v.earliest_date}",
                pl.col("timestamp"),
            ),
        ),
        Rule(
            "business_date_too_early",
            RejectCode.DATE_TOO_EARLY,
            "business_date",
            pl.col("v_business_date_given") < pl.lit(v.earliest_date),
            reason(
                f"business_date '{{}}' is before validation.earliest_date {v.earliest_date}",
                pl.col("business_date"),
            ),
            needs=("v_business_date_given",),
        ),
        Rule(
            "timestamp_far_from_business_date",
            RejectCode.TIMESTAMP_FAR_FROM_BUSINESS_DATE,
            "timestamp",
            days > v.max_days_from_business_date,
            reason(
                "timestamp '{}' is {} days from business_date {}",
                pl.col("timestamp"),
                days,
                pl.col("business_date"),
            ),
            needs=("v_business_date_given",),
        ),
    ]


def shape_rules(feed: Feed) -> list[Rule]:
    """A transaction whose lines repeat a line number or disagree on its own fields (a hashed
    customer id shown hashed)."""
    rules = [
        Rule(
            "repeated_line_number",
            RejectCode.REPEATED_LINE_NUMBER,
            "line_no",
            pl.col("v_line_no").is_not_null() & (pl.col("v_line_no_count") > 1),
            reason(
                "line_no {} appears {} times in transaction {}",
                pl.col("line_no"),
                pl.col("v_line_no_count"),
                pl.col("transaction_id"),
            ),
            needs=("v_line_no",),
        )
    ]
    for name, code, field, count in (
        ("mixed_stores", RejectCode.MIXED_STORES, "store_id", "v_store_count"),
        ("mixed_customers", RejectCode.MIXED_CUSTOMERS, "customer_id", "v_customer_count"),
        ("mixed_currencies", RejectCode.MIXED_CURRENCIES, "currency", "v_currency_count"),
        ("mixed_transaction_types", RejectCode.MIXED_TRANSACTION_TYPES, "transaction_type", "v_type_count"),
        *(
            (f"mixed_{field}", RejectCode.MIXED_TRANSACTION_VALUES, field, count)
            for field, count in (
                ("business_date", "v_business_date_count"),
                ("register_id", "v_register_count"),
                ("original_transaction_id", "v_original_count"),
                ("transaction_total", "v_total_count"),
                ("points_burned", "v_points_count"),
            )
        ),
    ):
        # a reader that saw the transaction write the value twice (POSLog: one element, two
        # values) flags it with this code and a reason starting with the field
        flagged = read_flag(code, field)
        rules.append(
            Rule(
                name,
                code,
                field,
                (pl.col(count) > 1) | flagged.fill_null(False),
                pl.when(flagged).then(read_reason(field)).otherwise(reason(
                    f"transaction {{}} has {{}} different values of {field} (this line: '{{}}')",
                    pl.col("transaction_id"),
                    pl.col(count),
                    masked_customer(field) if hashes_customer(field, feed) else pl.col(field),
                )),
            )
        )
    return rules
