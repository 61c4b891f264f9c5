"""Typed columns: every raw text field of a line as a typed value (prefix ``v_``).

The transaction's own fields repeat on each of its lines, so they are typed once per run of
adjacent lines with the same raw values and spread back to every line by run number.
"""

from __future__ import annotations

import polars as pl

from pipeline.config import Feed
from pipeline.core.validate.control import ID_FIELDS, control_flag, control_flag_per_line
from pipeline.core.validate.exprs import clean, money, strip
from pipeline.core.validate.numbers import with_numbers
from pipeline.core.validate.timestamps import time_columns
from pipeline.core.validate.transactions import runs, with_copy_number, with_group_id

__all__ = ["typed_columns"]

# raw columns that belong to the transaction (the same on each of its lines, as a rule)
_HEADER_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "store_id",
    "register_id",
    "customer_id",
    "currency",
    "transaction_type",
    "original_transaction_id",
    "business_date",
    "timestamp",
)


def typed_columns(lines: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    """The lines with their typed columns, ``business_day`` and the transaction id GROUP_ID."""
    date_format = feed.format.date_format or "%Y-%m-%d"

    def text(col: str, name: str, case: str | None = None, *, empty_is_null: bool = False) -> pl.Expr:
        if lines.get_column(col).null_count() == lines.height:  # the export lacks the column
            return pl.lit(None, dtype=pl.String).alias(name)
        value = clean(col) if empty_is_null else strip(col)
        if case == "upper":
            value = value.str.to_uppercase()
        elif case == "lower":
            value = value.str.to_lowercase()
        return value.alias(name)

    # the transaction's own fields repeat on each of its lines: they are typed once per run of
    # adjacent lines with the same raw values, and spread back to every line by run number
    header = [
        text("transaction_id", "v_transaction_id"),
        text("store_id", "v_store_id"),
        text("register_id", "v_register_id", empty_is_null=True),
        text("customer_id", "v_customer_id", empty_is_null=True),
        text("currency", "v_currency", "upper", empty_is_null=True),
        text("transaction_type", "v_type_given", "lower", empty_is_null=True),
        text("original_transaction_id", "v_original_transaction_id", empty_is_null=True),
        text("business_date", "v_business_date_text", empty_is_null=True),
    ]
    raw = ["source_file", *_HEADER_COLUMNS]
    present = [c for c in _HEADER_COLUMNS if lines.get_column(c).null_count() < lines.height]
    run, distinct = runs(lines, ["source_file", *present])
    distinct = distinct.with_columns(
        pl.lit(None, dtype=pl.String).alias(c) for c in _HEADER_COLUMNS if c not in present
    )
    distinct = distinct.with_columns(header)
    distinct = distinct.with_columns(
        control_flag(typed) for _, typed in ID_FIELDS if typed != "v_product_id"
    )
    distinct = distinct.with_columns(
        pl.col("v_store_id")
        .replace_strict(feed.store_timezones, default=feed.timezone, return_dtype=pl.String)
        .alias("v_tz")
        if feed.store_timezones
        else pl.lit(feed.timezone, dtype=pl.String).alias("v_tz")
    )
    distinct = time_columns(distinct, feed)
    header_runs = run, distinct.select("source_file", "v_transaction_id")
    distinct = distinct.drop(raw)
    # flags that are null on every run (the usual case) are not spread line by line
    flags = [c for c in distinct.columns if c.startswith(("v_ctrl_", "v_offset_bad"))]
    unset = [c for c in flags if distinct.get_column(c).null_count() == distinct.height]
    distinct = distinct.drop(unset)
    frame = lines.with_columns(text("product_id", "v_product_id"))
    frame = frame.with_columns(control_flag_per_line(frame, "v_product_id"))
    frame = frame.hstack(distinct[run])
    frame = frame.with_columns(pl.lit(None, dtype=pl.Boolean).alias(c) for c in unset)
    frame = with_numbers(frame, feed)
    frame = frame.with_columns(
        pl.col("v_business_date_text").str.to_date(date_format, strict=False).alias("v_business_date_given"),
        pl.col("v_discount").fill_null(money(0)).alias("v_discount_or_0"),
    )
    frame = with_copy_number(frame).with_columns(
        pl.coalesce("v_business_date_given", "v_local_date").alias("business_day")
    )
    return with_group_id(frame, header_runs)
