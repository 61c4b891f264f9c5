"""The engine: apply the rules to typed lines, reject whole transactions, explain each reject.

A row keeps the first rule it breaks (:mod:`pipeline.core.validate.rules` gives the order). The
transaction rules judge only transactions whose lines all passed the row rules. One failing line
rejects its whole transaction: the failing line keeps its code, its siblings get
``R099_SIBLING_REJECTED``. Every other copy of a rejected transaction in its file (an export that
repeats some of its lines) is rejected too, ``R034_COPY_OF_REJECTED``: a fragment of a rejected
transaction is never a valid transaction of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import READ_CODE, READ_REASON
from pipeline.core.rejects import RejectCode
from pipeline.core.validate.amounts import with_line_amounts
from pipeline.core.validate.field_rules import line_break_flag, long_text_flag
from pipeline.core.validate.rule import Rule, reason
from pipeline.core.validate.rules import row_rules, transaction_rules
from pipeline.core.validate.transactions import GROUP_ID, transaction_columns
from pipeline.core.validate.typed import typed_columns

__all__ = ["validate"]


def _first_failure(rules: Sequence[Rule], offset: int = 0) -> pl.Expr:
    """The index (+ offset) of the first rule each row breaks, else null."""
    return pl.coalesce(
        [
            pl.when(r.failing.fill_null(False)).then(pl.lit(i + offset, dtype=pl.Int32))
            for i, r in enumerate(rules)
        ]
    )


def _rule_index(frame: pl.DataFrame, rules: Sequence[Rule]) -> pl.Series:
    """v_rule: the index of the first rule each row breaks (null for a clean row).

    One cheap OR over every rule finds the failing rows; the rule index is only worked out for
    those (usually few) rows.
    """
    absent = {c for r in rules for c in r.needs if frame.get_column(c).null_count() == frame.height}
    screen = [r.failing.fill_null(False) for r in rules if absent.isdisjoint(r.needs)]
    broken = frame.select(pl.any_horizontal(screen).alias("broken")).to_series()
    index = pl.Series("v_rule", [], dtype=pl.Int32).extend_constant(None, frame.height)
    if broken.any():
        failing = frame.filter(broken)
        positions = broken.arg_true()
        index = index.scatter(positions, failing.select(_first_failure(rules)).to_series())
    return index


def _explain(
    frame: pl.DataFrame, rules: Sequence[Rule], bad_groups: pl.DataFrame, bad_ids: pl.DataFrame
) -> pl.DataFrame:
    """reject_code, reject_field, reject_reason from the rule index (only rejected rows pay)."""
    index = pl.col("v_rule")
    codes = {i: r.code.value for i, r in enumerate(rules)}
    fields = {i: r.field for i, r in enumerate(rules)}
    failed = (
        frame.filter(index.is_not_null())
        .join(bad_groups, on=GROUP_ID, how="left")
        .join(bad_ids, on=list(_ID_KEYS), how="left", nulls_equal=False)
    )
    reasons = failed.select(
        "_row",
        index.replace_strict(codes, return_dtype=pl.String).alias("reject_code"),
        index.replace_strict(fields, return_dtype=pl.String).alias("reject_field"),
        pl.coalesce([pl.when(index == i).then(r.reason.cast(pl.String)) for i, r in enumerate(rules)]).alias(
            "reject_reason"
        ),
    )
    if failed.height == 0:
        return frame.drop("_row").with_columns(
            pl.lit(None, dtype=pl.String).alias(c) for c in ("reject_code", "reject_field", "reject_reason")
        )
    rows = reasons.get_column("_row")
    found = [
        pl.Series(name, [], dtype=pl.String)
        .extend_constant(None, frame.height)
        .scatter(rows, reasons.get_column(name))
        for name in ("reject_code", "reject_field", "reject_reason")
    ]
    return frame.drop("_row").hstack(found)


def validate(lines: pl.DataFrame, feed: Feed, *, now: datetime) -> pl.DataFrame:
    """Type every line and give each at most one reject code (see :mod:`pipeline.core.validate`).

    ``now`` is injected (no clock in the core); a naive ``now`` is taken as UTC.
    """
    keys = GROUP_ID
    if READ_CODE not in lines.columns:
        lines = lines.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (READ_CODE, READ_REASON))
    frame = typed_columns(lines, feed).with_columns(long_text_flag(feed), line_break_flag())
    frame = transaction_columns(frame, feed)
    frame = with_line_amounts(frame)
    per_row = row_rules(feed, now)
    per_txn = transaction_rules(feed)
    frame = frame.with_columns(_rule_index(frame, per_row))
    if frame.get_column("v_transaction_total").null_count() < frame.height:
        # the transaction rules judge only transactions whose lines all passed the row rules
        clean_group = pl.col("v_rule").is_null().all().over(keys)
        frame = frame.with_columns(
            pl.when(clean_group)
            .then(_first_failure(per_txn, len(per_row)))
            .otherwise(pl.col("v_rule"))
            .alias("v_rule")
        )
    sibling = len(per_row) + len(per_txn)
    failed = pl.col("v_rule").is_not_null()
    # the few transactions with a failing line, and the first failing line of each
    bad_groups = (
        frame.filter(failed).group_by(keys).agg(pl.col("source_line").min().alias("v_first_bad_line"))
    )
    in_bad_group = pl.col(keys).is_in(bad_groups.get_column(keys).implode())
    bad_ids = _bad_ids(frame, failed, bad_groups)
    copy_of_bad = pl.struct(_ID_KEYS).is_in(bad_ids.select(pl.struct(_ID_KEYS)).to_series().implode())
    frame = frame.with_columns(
        pl.when(failed)
        .then(pl.col("v_rule"))
        .when(in_bad_group)
        .then(sibling)
        .when(copy_of_bad if bad_ids.height else pl.lit(False))
        .then(sibling + 1)
        .alias("v_rule")
    ).with_row_index("_row")
    sibling_rule = Rule(
        "sibling_rejected",
        RejectCode.SIBLING_REJECTED,
        "transaction_id",
        pl.lit(False),
        reason(
            "line {} of transaction {} was rejected", pl.col("v_first_bad_line"), pl.col("transaction_id")
        ),
    )
    copy_rule = Rule(
        "copy_of_rejected",
        RejectCode.COPY_OF_REJECTED,
        "transaction_id",
        pl.lit(False),
        reason(
            "transaction {} was rejected (line {} of this file); this repeated copy of some of its lines is "
            "not sent on its own",
            pl.col("transaction_id"),
            pl.col("v_id_first_bad_line"),
        ),
    )
    return _explain(frame, [*per_row, *per_txn, sibling_rule, copy_rule], bad_groups, bad_ids)


# a transaction id in one file: its copies (GROUP_KEYS without the copy number)
_ID_KEYS: tuple[str, ...] = ("source_file", "v_transaction_id")


def _bad_ids(frame: pl.DataFrame, failed: pl.Expr, bad_groups: pl.DataFrame) -> pl.DataFrame:
    """The (file, transaction id) of every rejected transaction that has other copies in its file,
    with the first failing line of the id (``v_id_first_bad_line``); empty when no file repeats
    lines of a rejected transaction (the usual case: nothing more to look at)."""
    empty = pl.DataFrame(
        schema={
            "source_file": frame.schema["source_file"],
            "v_transaction_id": frame.schema["v_transaction_id"],
            "v_id_first_bad_line": frame.schema["source_line"],
        }
    )
    if bad_groups.height == 0 or not frame.get_column("v_copy").max():
        return empty
    copied = frame.filter(pl.col("v_transaction_id").is_not_null()).select(
        *_ID_KEYS, GROUP_ID, "source_line", failed.alias("_failed")
    )
    ids = copied.group_by(_ID_KEYS).agg(
        pl.col(GROUP_ID).n_unique().alias("_copies"),
        pl.col("source_line").filter(pl.col("_failed")).min().alias("v_id_first_bad_line"),
    )
    return ids.filter((pl.col("_copies") > 1) & pl.col("v_id_first_bad_line").is_not_null()).drop("_copies")
