"""The rules in catalog order: a row keeps the first rule it breaks, so this order is precedence."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from pipeline.config import Feed
from pipeline.core.rejects import RejectCode
from pipeline.core.validate.exprs import money
from pipeline.core.validate.field_rules import (
    code_rules,
    control_character_rules,
    field_length_rules,
    line_break_rules,
    missing_field_rules,
    number_rules,
    reader_rules,
    scientific_id_rules,
    time_format_rules,
)
from pipeline.core.validate.rule import Rule, money_text, reason
from pipeline.core.validate.transactions import GROUP_ID
from pipeline.core.validate.value_rules import amount_rules, date_range_rules, shape_rules
from pipeline.records import TransactionType

__all__ = ["row_rules", "transaction_rules"]


def row_rules(feed: Feed, now: datetime) -> list[Rule]:
    """The rules judged line by line and by transaction shape, in catalog order."""
    return [
        *reader_rules(feed),
        *missing_field_rules(),
        *field_length_rules(feed),
        *control_character_rules(feed),
        *scientific_id_rules(feed),
        *number_rules(feed),
        *time_format_rules(),
        *code_rules(feed),
        *line_break_rules(),
        *amount_rules(feed),
        *date_range_rules(feed, now),
        *shape_rules(feed),
    ]


def transaction_rules(feed: Feed) -> list[Rule]:
    """Rules judged on a transaction whose lines all passed :func:`row_rules`."""
    tolerance = money(feed.validation.amount_tolerance)
    keys = GROUP_ID
    line_sum = pl.col("v_line_amount").sum().over(keys)
    given = pl.col("v_transaction_total")
    expected_total = pl.when(pl.col("v_type") == TransactionType.RETURN).then(-given.abs()).otherwise(given)
    return [
        Rule(
            "transaction_total_mismatch",
            RejectCode.TRANSACTION_TOTAL_MISMATCH,
            "transaction_total",
            (expected_total - line_sum).abs() > tolerance,
            reason("transaction_total {} but the lines sum to {}", pl.col("transaction_total"),
                   money_text(line_sum, feed)),
        )
    ]
