"""Line amounts: what each line is worth, signed (returns are negative whatever the export says)."""

from __future__ import annotations

import polars as pl

from pipeline.core.validate.exprs import money
from pipeline.records import MONEY, TransactionType

__all__ = ["with_line_amounts"]


def with_line_amounts(frame: pl.DataFrame) -> pl.DataFrame:
    """v_line_expected (quantity × price − discount), v_line_amount (signed) and amount (0 if null).

    Built in steps so that each product is computed once.
    """
    q, d = pl.col("v_quantity"), pl.col("v_discount_or_0")
    frame = frame.with_columns((q * pl.col("v_unit_price")).cast(MONEY).alias("v_gross"))
    gross = pl.col("v_gross")
    if frame.get_column("v_discount").null_count() == frame.height:
        # no discounts in the export: the expected amount is the gross amount itself
        frame = frame.with_columns(gross.alias("v_line_expected"))
    else:
        frame = frame.with_columns(
            pl.when(q < 0).then(gross + d).otherwise(gross - d).cast(MONEY).alias("v_line_expected")
        )
    if frame.get_column("v_line_total").null_count() == frame.height:
        raw = pl.col("v_line_expected")  # no line totals given: nothing to coalesce
    else:
        raw = pl.coalesce(pl.col("v_line_total"), pl.col("v_line_expected"))
    frame = frame.with_columns(
        pl.when(pl.col("v_type") == TransactionType.RETURN)
        .then(-raw.abs())
        .otherwise(raw)
        .cast(MONEY)
        .alias("v_line_amount")
    )
    return frame.with_columns(pl.col("v_line_amount").fill_null(money(0)).alias("amount"))
