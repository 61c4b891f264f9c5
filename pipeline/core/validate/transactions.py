"""Lines into transactions: copy numbers, one id per transaction, and facts about each one.

**A transaction is atomic.** Lines are grouped into transactions by ``(source_file,
transaction_id, copy)``: one failing line rejects the whole transaction (see
:mod:`pipeline.core.validate.engine`). ``copy`` numbers exact repeats of a whole line (same
content *and* the same ``line_no``) inside one file: an export that repeats a block produces a
second copy of the transaction, which normalizes to a checkout with the same content hash and is
counted as a duplicate by dedup instead of being rejected for repeated line numbers. A partial
repeat becomes a second copy with different content: a conflict, held for review; when one copy
is rejected, the engine rejects every other copy of it too (``R034_COPY_OF_REJECTED``). Lines without a
``line_no`` are never treated as repeats (two identical scans of one product are two items).

**Returns.** A transaction is a return when its ``transaction_type`` is ``return``, or (with
``validation.treat_negative_quantity_as_return``) when it has no explicit type other than sale and
every line has a negative quantity.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipeline.config import Feed
from pipeline.records import CANONICAL_COLUMNS, TransactionType

__all__ = ["GROUP_ID", "GROUP_KEYS", "runs", "transaction_columns", "with_copy_number", "with_group_id"]

GROUP_KEYS: tuple[str, ...] = ("source_file", "v_transaction_id", "v_copy")
GROUP_ID = "v_group"  # one integer per GROUP_KEYS value


def runs(frame: pl.DataFrame, keys: Sequence[str]) -> tuple[pl.Series, pl.DataFrame]:
    """Runs of equal ``keys`` in adjacent rows: (run number of each row, first row of each run).

    Exports list a transaction's lines together, so there are far fewer runs than rows; work done
    once per run and gathered back by run number is cheap and exact (equal keys in two separate
    runs are simply computed twice).
    """
    changed = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
    starts = frame.select(changed.fill_null(True).alias("start")).to_series()
    if frame.height:
        starts[0] = True
    run = (starts.cast(pl.Int64).cum_sum() - 1).alias("run")
    return run, frame.filter(starts).select(keys)


def with_copy_number(frame: pl.DataFrame) -> pl.DataFrame:
    """Add v_copy: 0 for a line's first occurrence in a file, 1 for its first exact repeat, ...

    Only lines with a line_no count as repeats (see the module docstring); only lines whose
    (file, transaction_id, line_no) occurs more than once are looked at.
    """
    has_no = pl.col("v_line_no").is_not_null()
    if frame.height == 0 or frame.get_column("v_line_no").null_count() == frame.height:
        return frame.with_columns(pl.lit(0, dtype=pl.Int64).alias("v_copy"))
    repeated = has_no & pl.struct("source_file", "v_transaction_id", "v_line_no").is_duplicated()
    if not frame.select(repeated.any()).item():
        return frame.with_columns(pl.lit(0, dtype=pl.Int64).alias("v_copy"))
    frame = frame.with_row_index("_row")
    content = [pl.col(c) for c in ("source_file", "transaction_id", "line_no", *_content_columns())]
    copies = frame.filter(repeated).select(
        "_row", pl.int_range(pl.len(), dtype=pl.Int64).over(content).alias("v_copy")
    )
    return (
        frame.join(copies, on="_row", how="left", maintain_order="left")
        .with_columns(pl.col("v_copy").fill_null(0))
        .drop("_row")
    )


def _content_columns() -> list[str]:
    return [c for c in CANONICAL_COLUMNS if c not in ("transaction_id", "line_no")]


def with_group_id(frame: pl.DataFrame, id_runs: tuple[pl.Series, pl.DataFrame]) -> pl.DataFrame:
    """Add GROUP_ID: one integer per transaction (exact, unlike a hash), so windows over one int
    key are cheap.

    Ranked over the first line of each run of lines, then spread back to every line. ``id_runs``
    are the runs of ``(source_file, v_transaction_id)`` already known (see :func:`runs`): without
    repeated copies they never span two transactions, and are used as they are.
    """
    if frame.height == 0 or frame.get_column("v_copy").max() == 0:
        # no repeated copies: the runs of lines above never span two transactions
        run, id_keys = id_runs
        firsts = id_keys.with_columns(pl.lit(0, dtype=pl.Int64).alias("v_copy"))
    else:
        run, firsts = runs(frame, GROUP_KEYS)
    group = firsts.select(pl.struct(GROUP_KEYS).rank("dense").cast(pl.Int64)).to_series()
    return frame.with_columns(group[run].alias(GROUP_ID))


def _per_transaction(
    frame: pl.DataFrame, *aggs: pl.Expr, then: Sequence[pl.Expr] = ()
) -> pl.DataFrame:
    """One aggregate row per transaction (plus ``then``, computed from the aggregates), spread
    back to every line (in line order).

    ``GROUP_ID`` is a dense rank (1..n), so the aggregates sorted by it are gathered back by
    position: one group_by and one gather instead of a window per fact.
    """
    if frame.height == 0:
        return frame.select(aggs).clear().with_columns(then)
    per_group = frame.group_by(GROUP_ID).agg(*aggs).sort(GROUP_ID).with_columns(then)
    index = frame.get_column(GROUP_ID) - 1
    return per_group.drop(GROUP_ID)[index]


# (typed column, count column, whether nulls are left out of the count)
_DISTINCT: tuple[tuple[str, str, bool], ...] = (
    ("v_type_given", "v_type_count", True),
    ("v_store_id", "v_store_count", False),
    ("v_customer_id", "v_customer_count", True),
    ("v_currency", "v_currency_count", True),
    # a value of the transaction itself, which normalize takes from its first line that has one
    ("v_business_date_text", "v_business_date_count", True),
    ("v_register_id", "v_register_count", True),
    ("v_original_transaction_id", "v_original_count", True),
    ("v_transaction_total", "v_total_count", True),
    ("v_points_burned", "v_points_count", True),
)


def _distinct_expr(col: str, drop_nulls: bool) -> pl.Expr:
    value = pl.col(col).drop_nulls() if drop_nulls else pl.col(col)
    return value.n_unique()


def _distinct_counts(frame: pl.DataFrame) -> pl.DataFrame:
    """The number of distinct values of each _DISTINCT column in the line's transaction.

    Exports list a transaction's lines together: within one run of adjacent lines of a
    transaction there is one value unless it changes between two adjacent lines, and that
    comparison is far cheaper than counting distinct strings per transaction. Only transactions
    with such a change, or whose lines form more than one run, are counted exactly.
    """
    gid = pl.col(GROUP_ID)
    exact = [_distinct_expr(c, drop).alias(name) for c, name, drop in _DISTINCT]
    if frame.height == 0:
        return frame.select(exact).clear()
    same_group = gid.eq(gid.shift(1)).fill_null(False)
    changed = pl.any_horizontal(
        [pl.col(c).ne_missing(pl.col(c).shift(1)) & same_group for c, _, _ in _DISTINCT]
    )
    flags = frame.select(changed.alias("changed"), (~same_group).alias("start"))
    run_groups = frame.get_column(GROUP_ID).filter(flags.get_column("start"))
    look = pl.concat(
        [
            frame.get_column(GROUP_ID).filter(flags.get_column("changed")),
            run_groups.filter(run_groups.is_duplicated()),  # a transaction in several runs
        ]
    )
    counts = frame.select(
        [
            (pl.col(c).is_not_null() if drop else pl.lit(True)).cast(pl.UInt32).alias(name)
            for c, name, drop in _DISTINCT
        ]
    )
    if look.len():
        in_mixed = frame.select(gid.is_in(look.unique().implode())).to_series()
        positions = in_mixed.arg_true()
        mixed = frame.filter(in_mixed).select([e.over(GROUP_ID).cast(pl.UInt32) for e in exact])
        counts = counts.with_columns(
            counts.get_column(name).scatter(positions, mixed.get_column(name)) for _, name, _ in _DISTINCT
        )
    return counts


def transaction_columns(frame: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    """Per-transaction facts (one group_by over the transaction's lines), on every line."""
    keys = GROUP_ID
    given = pl.col("v_type_given")
    explicit = pl.col("v_type_explicit")
    is_return = (explicit == TransactionType.RETURN) | (
        pl.lit(feed.validation.treat_negative_quantity_as_return)
        & explicit.fill_null(TransactionType.SALE).eq(TransactionType.SALE)
        & pl.col("v_all_negative")
    )
    txn_type = (
        pl.when(is_return)
        .then(pl.lit(TransactionType.RETURN.value))
        .otherwise(explicit.fill_null(TransactionType.SALE.value))
    )
    facts = _per_transaction(
        frame,
        given.drop_nulls().first().alias("v_type_explicit"),
        (pl.col("v_quantity") < 0).fill_null(False).all().alias("v_all_negative"),
        then=[txn_type.alias("v_type")],  # once per transaction, not per line
    ).hstack(_distinct_counts(frame))
    frame = frame.hstack(facts)
    if frame.get_column("v_line_no").null_count() == frame.height:
        # no line numbers: the count only matters where line_no is set, which is nowhere
        return frame.with_columns(pl.lit(None, dtype=pl.UInt32).alias("v_line_no_count"))
    return frame.with_columns(pl.len().over(keys, "v_line_no").alias("v_line_no_count"))
