"""Normalization: valid lines into ``checkout`` and ``checkout_item`` frames (pipeline.records).

One checkout per transaction (``source_file``, ``transaction_id``, repeat copy; see
:mod:`pipeline.core.validate`), its items nested and sorted by ``line_no``. Items carry their
checkout's attributes, as Antavo's ``checkout_item`` inherits them.

* Money stays ``Decimal``; returns are negative (quantities and line totals), whatever sign the
  export used. The checkout total is ``transaction_total`` when the export gives it, else the sum
  of the line totals.
* ``timestamp_utc`` is the earliest line's instant; ``timestamp_local`` that instant as the till
  saw it (ISO 8601 with the store's UTC offset).
* An empty ``customer_id`` is a guest checkout (``is_guest``). A return is ``matched`` when it
  names its ``original_transaction_id``, else ``unmatched`` (kept and labelled). Voids are kept
  with type ``void``: counted, never sent.
* ``line_no`` missing in the export: the line's position in the transaction (1, 2, ...).
* ``content_hash``: sha256 over the normalized content: ids, customer, type, original id,
  business date, UTC time, currency, totals and, per item, line_no, product_id, quantity, unit
  price, discount and line total, in a canonical order. Left out: the source file and lines, the
  local time text and timezone (derived), and descriptive text (product names and categories), so
  the same transaction in an hourly and a daily file hashes equal even when "2.5" is written
  "2.50", the lines come in another order, or one export is cp1252 and the other UTF-8.
"""

from __future__ import annotations

import hashlib

import polars as pl

from pipeline.config import Feed
from pipeline.core.validate import GROUP_ID
from pipeline.records import (
    CHECKOUT_ITEM_SCHEMA,
    CHECKOUT_SCHEMA,
    ITEM_STRUCT,
    MONEY,
    QUANTITY,
    ReturnStatus,
    TransactionType,
)

__all__ = ["content_hashes", "normalize", "normalize_columns"]

_SEP = "\x1f"
_ITEM_SEP = "\x1e"


_ITEM_FIELDS = (
    "line_no", "product_id", "product_name", "product_category",
    "quantity", "unit_price", "discount", "line_total",
)


def _item_fields() -> list[pl.Expr]:
    """The typed line columns (``n_*``) under their item names, for the nested items and the items frame."""
    return [pl.col(f"n_{name}").alias(name) for name in _ITEM_FIELDS]


def _position_in_transaction(frame: pl.DataFrame) -> pl.Series:
    """1, 2, ... for each line within its transaction, in frame order.

    A transaction's lines nearly always come as one run of adjacent lines: the position is then
    the distance to the run's first line (no window over the whole frame). Transactions whose
    lines form several runs are numbered with a window over their own lines only.
    """
    if frame.height == 0:
        return pl.Series("n_line_no", [], dtype=pl.Int64)
    group = frame.get_column(GROUP_ID)
    start = group.ne_missing(group.shift(1))  # the first line is a start (shifted value is null)
    run = start.cast(pl.Int64).cum_sum() - 1
    first_row = start.arg_true().cast(pl.Int64)
    row = frame.select(pl.int_range(pl.len(), dtype=pl.Int64)).to_series()
    position = row - first_row.gather(run) + 1
    run_groups = group.filter(start)
    split = run_groups.filter(run_groups.is_duplicated()).unique()
    if split.len():
        in_split = frame.select(pl.col(GROUP_ID).is_in(split.implode())).to_series()
        exact = frame.filter(in_split).select(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(GROUP_ID))
        position = position.scatter(in_split.arg_true(), exact.to_series())
    return position.alias("n_line_no")


def _item_columns(frame: pl.DataFrame) -> list[pl.Expr]:
    is_return = pl.col("v_type") == TransactionType.RETURN
    q = pl.col("v_quantity")
    numbered = frame.get_column("v_line_no")
    if numbered.null_count() == 0:
        line_no = pl.col("v_line_no")
    else:
        line_no = pl.coalesce(pl.col("v_line_no"), pl.lit(_position_in_transaction(frame)))
    return [
        line_no.alias("n_line_no"),
        pl.col("v_product_id").alias("n_product_id"),
        pl.col("product_name").str.strip_chars().alias("n_product_name"),
        pl.col("product_category").str.strip_chars().alias("n_product_category"),
        pl.when(is_return).then(-q.abs()).otherwise(q).cast(QUANTITY).alias("n_quantity"),
        pl.col("v_unit_price").cast(MONEY).alias("n_unit_price"),
        pl.col("v_discount_or_0").cast(MONEY).alias("n_discount"),
        pl.col("v_line_amount").cast(MONEY).alias("n_line_total"),
    ]


def _text(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).fill_null("")


def _column_text(rows: pl.DataFrame, col: str) -> pl.Expr:
    """:func:`_text` of a column; one literal when the column holds a single value (or none).

    Exports often lack a column (no line numbers, no discounts): its text is then the same on
    every line, and formatting it once saves a number-to-text conversion per line.
    """
    series = rows.get_column(col)
    if series.dtype != pl.String and series.len() and series.null_count() in (0, series.len()):
        single = series.null_count() == series.len() or series.min() == series.max()
        if single:
            return pl.lit(series.head(1).cast(pl.String).fill_null("").item(), dtype=pl.String)
    return _text(col)


def content_hashes(texts: pl.Series) -> pl.Series:
    """sha256 hex of each canonical content text."""
    # as bytes straight from polars' UTF-8 buffers: no str objects to build and encode again
    data = texts.cast(pl.Binary).to_list()
    return pl.Series("content_hash", [hashlib.sha256(b).hexdigest() for b in data], dtype=pl.String)


_NEEDED = (
    GROUP_ID,
    "source_file",
    "source_line",
    "business_day",
    "product_name",
    "product_category",
    "v_transaction_id",
    "v_store_id",
    "v_register_id",
    "v_customer_id",
    "v_product_id",
    "v_currency",
    "v_type",
    "v_original_transaction_id",
    "v_ts_utc",
    "v_ts_local",
    "v_tz",
    "v_line_no",
    "v_quantity",
    "v_unit_price",
    "v_discount_or_0",
    "v_line_amount",
    "v_transaction_total",
    "v_points_burned",
)


def _in_line_order(rows: pl.DataFrame) -> bool:
    """True when, within every transaction, the lines come in ascending line_no order.

    Lines without a line_no are numbered by position, so they always are.
    """
    if rows.height < 2 or rows.get_column("v_line_no").null_count() == rows.height:
        return True
    line = pl.col("n_line_no")
    return bool(rows.select((line.diff().over(GROUP_ID).fill_null(1) > 0).all()).item())


def normalize_columns(validated: pl.DataFrame) -> list[str]:
    """The columns of validated lines that :func:`normalize` reads."""
    return [c for c in _NEEDED if c in validated.columns]


def normalize(valid_lines: pl.DataFrame, feed: Feed | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Build (checkouts, items) from validated lines that carry no reject code.

    ``valid_lines`` is :func:`pipeline.core.validate.validate` output filtered to
    ``reject_code is null``. ``feed`` is accepted for symmetry with the other stages.
    """
    keys = GROUP_ID
    rows = valid_lines.select(normalize_columns(valid_lines))
    rows = rows.with_columns(_item_columns(rows))
    # items must come in line order; exports nearly always list a transaction's lines together and
    # in order, and then no sort is needed (checked in one vectorized pass); else sort once here
    ordered = rows.with_row_index("_pos")
    resorted = not _in_line_order(rows)
    if resorted:
        ordered = ordered.sort(keys, "n_line_no", "_pos")
    all_numbered = rows.height == 0 or rows.get_column("v_line_no").null_count() == 0
    item_text = pl.concat_str(
        [
            _column_text(rows, c)
            for c in ("v_line_no", "n_product_id", "n_quantity", "n_unit_price", "n_discount", "n_line_total")
        ],
        separator=_SEP,
    )
    given_total = pl.col("v_transaction_total").drop_nulls().first()
    line_sum = pl.col("n_line_total").sum()
    is_return = pl.col("v_type").first() == TransactionType.RETURN
    total = pl.coalesce(pl.when(is_return).then(-given_total.abs()).otherwise(given_total), line_sum).cast(
        MONEY
    )
    by_time = pl.col("v_ts_utc").arg_min()
    # maintain_order: checkouts come in the order of their first line (file order)
    checkouts = ordered.group_by(keys, maintain_order=True).agg(
        pl.col("_pos").min().alias("_first"),
        pl.col("v_transaction_id").first(),
        pl.col("source_file").first(),
        pl.col("v_store_id").first().alias("store_id"),
        pl.col("v_register_id").drop_nulls().first().alias("register_id"),
        pl.col("v_customer_id").drop_nulls().first().alias("customer_id"),
        pl.col("v_type").first().alias("transaction_type"),
        pl.col("v_original_transaction_id").drop_nulls().first().alias("original_transaction_id"),
        pl.col("business_day").first().alias("business_date"),
        pl.col("v_ts_utc").min().alias("timestamp_utc"),
        pl.col("v_ts_local").get(by_time).alias("timestamp_local"),
        pl.col("v_tz").first().alias("timezone"),
        pl.col("v_currency").first().alias("currency"),
        total.alias("total"),
        pl.col("v_points_burned").drop_nulls().first().fill_null(0).cast(MONEY).alias("points_burned"),
        pl.len().cast(pl.Int64).alias("line_count"),
        # ascending already unless the lines were re-sorted into line order
        (pl.col("source_line").sort() if resorted else pl.col("source_line")).alias("source_lines"),
        # canonical item order for the hash: by line_no when every line has one, else by content
        item_text.alias("_items_text"),  # joined below: list.join is cheaper than str.join in agg
        pl.struct(
            *_item_fields(),
            pl.col("source_line"),
        ).alias("items"),
    )
    if resorted:
        checkouts = checkouts.sort("_first")
    texts = pl.col("_items_text")
    checkouts = checkouts.with_columns(
        (texts if all_numbered else texts.list.sort()).list.join(_ITEM_SEP).alias("_items_text")
    )
    checkouts = checkouts.with_columns(
        pl.col("v_transaction_id").alias("transaction_id"),
        pl.col("customer_id").is_null().alias("is_guest"),
        pl.when(pl.col("transaction_type") == TransactionType.RETURN)
        .then(
            pl.when(pl.col("original_transaction_id").is_not_null())
            .then(pl.lit(ReturnStatus.MATCHED.value))
            .otherwise(pl.lit(ReturnStatus.UNMATCHED.value))
        )
        .otherwise(None)
        .alias("return_status"),
    )
    header_text = pl.concat_str(
        [
            _text(c)
            for c in (
                "transaction_id",
                "store_id",
                "register_id",
                "customer_id",
                "transaction_type",
                "original_transaction_id",
                "business_date",
                "timestamp_utc",
                "currency",
                "total",
                "points_burned",
            )
        ]
        + [pl.col("_items_text")],
        separator=_SEP,
    )
    checkouts = checkouts.with_columns(content_hashes(checkouts.select(header_text).to_series()))
    checkouts = checkouts.with_columns(pl.col("items").cast(pl.List(ITEM_STRUCT)))

    attributes = checkouts.select(
        keys,
        "is_guest",
        pl.col("customer_id").alias("c_customer_id"),
        pl.col("business_date").alias("c_business_date"),
        pl.col("timestamp_utc").alias("c_timestamp_utc"),
        pl.col("timestamp_local").alias("c_timestamp_local"),
        pl.col("register_id").alias("c_register_id"),
    )
    # only the key goes through the join: the lines' own columns are not copied
    spread = rows.select(keys).join(attributes, on=keys, how="left", nulls_equal=True, maintain_order="left")
    items = rows.hstack(spread.drop(keys)).select(
        pl.col("v_transaction_id").alias("transaction_id"),
        pl.col("v_store_id").alias("store_id"),
        pl.col("c_register_id").alias("register_id"),
        pl.col("c_customer_id").alias("customer_id"),
        pl.col("is_guest"),
        pl.col("v_type").alias("transaction_type"),
        pl.col("c_business_date").alias("business_date"),
        pl.col("c_timestamp_utc").alias("timestamp_utc"),
        pl.col("c_timestamp_local").alias("timestamp_local"),
        pl.col("v_currency").alias("currency"),
        *_item_fields(),
        pl.col("source_file"),
        pl.col("source_line"),
    )
    checkouts = checkouts.select([pl.col(c).cast(t) for c, t in CHECKOUT_SCHEMA.items()])
    items = items.select([pl.col(c).cast(t) for c, t in CHECKOUT_ITEM_SCHEMA.items()])
    return checkouts, items
