"""Number fields: each read into a typed column, with a flag where the text is not a number.

With ``format.decimal_comma``, a text holding a comma reads it as the decimal mark and its dots
as thousands separators. A value is read only when it has at most the field's decimal places and
fits its type; otherwise ``v_bad_<field>`` is true and the typed value is null.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipeline.config import Feed
from pipeline.core.validate.exprs import strip
from pipeline.records import MONEY, MONEY_SCALE, QUANTITY

__all__ = ["NUMBER_FIELDS", "with_numbers"]

# field -> (dtype of v_<field>, decimal places)
NUMBER_FIELDS: dict[str, tuple[pl.DataType, int]] = {
    "quantity": (QUANTITY, 3),
    "unit_price": (MONEY, MONEY_SCALE),
    "discount": (MONEY, MONEY_SCALE),
    "line_total": (MONEY, MONEY_SCALE),
    "transaction_total": (MONEY, MONEY_SCALE),
    "points_burned": (MONEY, MONEY_SCALE),
    "line_no": (pl.Int64(), 0),
}

# a column with at most one distinct text per this many rows is parsed once per distinct text
_DISTINCT_RATIO = 8


def _parse_numbers(frame: pl.DataFrame, fields: Sequence[str], feed: Feed) -> pl.DataFrame:
    """v_<field> and v_bad_<field> of each field, one row per row of ``frame`` (only those columns)."""
    texts = []
    for field in fields:
        text = strip(field)
        if feed.format.decimal_comma:
            text = (
                pl.when(text.str.contains(",", literal=True))
                .then(text.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
                .otherwise(text)
            )
        texts.append(text.alias(f"_n_{field}"))
    frame = frame.select(texts)  # once, then read by both expressions below
    # each regex and each conversion runs once per field (eager frames share no subexpressions)
    parsed: list[pl.Expr] = []
    for field in fields:
        dtype, places = NUMBER_FIELDS[field]
        text = pl.col(f"_n_{field}")
        if places:
            ok = text.str.contains(rf"^[+-]?(\d+(\.\d{{0,{places}}})?|\.\d{{1,{places}}})$")
            value = text.str.to_decimal(scale=places).cast(dtype)
        else:
            ok = text.str.contains(r"^[+-]?\d{1,18}$")
            value = text.cast(pl.Int64, strict=False)
        parsed += [ok.alias(f"_ok_{field}"), value.alias(f"_v_{field}")]
    frame = frame.with_columns(parsed)
    exprs: list[pl.Expr] = []
    for field in fields:
        text, ok, value = pl.col(f"_n_{field}"), pl.col(f"_ok_{field}"), pl.col(f"_v_{field}")
        exprs.append(pl.when(ok).then(value).alias(f"v_{field}"))
        # unreadable, or well-formed but too large for the type (it would come back null)
        bad = (text.str.len_bytes() > 0) & (~ok | value.is_null())
        exprs.append(bad.fill_null(False).alias(f"v_bad_{field}"))
    return frame.select(exprs)


def with_numbers(frame: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    """v_<field> (typed, null when blank or unreadable) and v_bad_<field> for every number field.

    Quantities and prices repeat a lot (a few hundred distinct texts in half a million lines):
    such a column is parsed once per distinct text and joined back, which is far cheaper than a
    regex and a decimal conversion on every line.
    """
    present = [f for f in NUMBER_FIELDS if frame.get_column(f).null_count() < frame.height]
    per_line: list[str] = []
    columns: dict[str, pl.Series] = {}
    for field in present:
        distinct = frame.get_column(field).unique()
        if distinct.len() * _DISTINCT_RATIO > frame.height:
            per_line.append(field)
            continue
        table = distinct.to_frame()
        table = table.hstack(_parse_numbers(table, [field], feed))
        joined = frame.select(field).join(
            table, on=field, how="left", nulls_equal=True, maintain_order="left"
        )
        columns.update({c.name: c for c in joined.drop(field).iter_columns()})
    if per_line:
        columns.update({c.name: c for c in _parse_numbers(frame, per_line, feed).iter_columns()})
    exprs: list[pl.Expr | pl.Series] = []
    for field, (dtype, _) in NUMBER_FIELDS.items():
        if field not in present:  # the export lacks the column
            exprs.append(pl.lit(None, dtype=dtype).alias(f"v_{field}"))
            exprs.append(pl.lit(False).alias(f"v_bad_{field}"))
        else:
            exprs += [columns[f"v_{field}"], columns[f"v_bad_{field}"]]
    return frame.with_columns(exprs)
