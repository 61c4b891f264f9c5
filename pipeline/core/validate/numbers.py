"""Number fields: each read into a typed column, with a flag where the text is not a number.

With ``format.decimal_comma``, the comma is the decimal mark and a dot only separates thousands
(``1.234,50``, ``1.500``); a text where a dot does not group three digits (``2.50``, ``1,000.0``)
is not a number of that feed. A value is read only when it has at most the field's decimal places
and whole digits (:data:`NUMBER_FIELDS`); otherwise ``v_bad_<field>`` is true and the typed value
null, and ``v_big_<field>`` tells a number with too many whole digits from text that is none.
Digits are ASCII ``0-9`` only (a regex's ``\\d`` also matches ``٣`` or ``５``, which no decimal
conversion reads: such a value would have been taken for an empty one).
Bounding the whole digits keeps every product and sum of the data path inside its decimal type
(which would overflow, or silently wrap when summed) and inside what a platform takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import READ_CODE
from pipeline.core.rejects import RejectCode
from pipeline.core.validate.exprs import strip
from pipeline.core.validate.rule import read_flag
from pipeline.records import MONEY, MONEY_SCALE, QUANTITY

__all__ = ["NUMBER_FIELDS", "with_numbers"]

# whole digits kept: money below a million million (10^12), quantities below a thousand million
MONEY_WHOLE_DIGITS = 12
QUANTITY_WHOLE_DIGITS = 9

# field -> (dtype of v_<field>, decimal places, whole digits)
NUMBER_FIELDS: dict[str, tuple[pl.DataType, int, int]] = {
    "quantity": (QUANTITY, 3, QUANTITY_WHOLE_DIGITS),
    "unit_price": (MONEY, MONEY_SCALE, MONEY_WHOLE_DIGITS),
    "discount": (MONEY, MONEY_SCALE, MONEY_WHOLE_DIGITS),
    "line_total": (MONEY, MONEY_SCALE, MONEY_WHOLE_DIGITS),
    "transaction_total": (MONEY, MONEY_SCALE, MONEY_WHOLE_DIGITS),
    "points_burned": (MONEY, MONEY_SCALE, MONEY_WHOLE_DIGITS),
    "line_no": (pl.Int64(), 0, 18),
}
# a decimal-comma number: dots only between groups of three digits, then the decimal comma
_DECIMAL_COMMA = r"^[+-]?([0-9]{1,3}(\.[0-9]{3})+|[0-9]*)(,[0-9]*)?$"

# a column with at most one distinct text per this many rows is parsed once per distinct text
_DISTINCT_RATIO = 8


def _parse_numbers(frame: pl.DataFrame, fields: Sequence[str], feed: Feed) -> pl.DataFrame:
    """v_<field>, v_bad_<field> and v_big_<field> of each field, one row per row of ``frame`` (only
    those columns)."""
    texts = []
    for field in fields:
        text = strip(field)
        if feed.format.decimal_comma:
            text = (
                pl.when(text.str.contains(_DECIMAL_COMMA))
                .then(text.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
                .otherwise(pl.lit("?") + text)  # no number of this feed: read as none
            )
        texts.append(text.alias(f"_n_{field}"))
    frame = frame.select(texts)  # once, then read by both expressions below
    # each regex and each conversion runs once per field (eager frames share no subexpressions)
    parsed: list[pl.Expr] = []
    for field in fields:
        dtype, places, whole = NUMBER_FIELDS[field]
        text = pl.col(f"_n_{field}")
        if places:
            ok = text.str.contains(rf"^[+-]?([0-9]+(\.[0-9]{{0,{places}}})?|\.[0-9]{{1,{places}}})$")
            # leading zeros aside, at most `whole` digits before the decimal mark
            fits = text.str.contains(rf"^[+-]?0*[0-9]{{0,{whole}}}(\.|$)")
            value = pl.when(fits).then(text).str.to_decimal(scale=places).cast(dtype)
        else:
            ok = text.str.contains(rf"^[+-]?[0-9]{{1,{whole}}}$")
            fits = pl.lit(True)
            value = text.cast(pl.Int64, strict=False)
        parsed += [ok.alias(f"_ok_{field}"), fits.alias(f"_fits_{field}"), value.alias(f"_v_{field}")]
    frame = frame.with_columns(parsed)
    exprs: list[pl.Expr] = []
    for field in fields:
        text, ok, fits = pl.col(f"_n_{field}"), pl.col(f"_ok_{field}"), pl.col(f"_fits_{field}")
        exprs.append(pl.when(ok & fits).then(pl.col(f"_v_{field}")).alias(f"v_{field}"))
        bad = (text.str.len_bytes() > 0) & ~(ok & fits)
        exprs.append(bad.fill_null(False).alias(f"v_bad_{field}"))
        exprs.append((ok & ~fits).fill_null(False).alias(f"v_big_{field}"))
    return frame.select(exprs)


def with_numbers(frame: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    """v_<field> (typed, null when blank or unreadable), v_bad_<field> and v_big_<field> for every
    number field.

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
    for field, (dtype, _, _) in NUMBER_FIELDS.items():
        if field not in present:  # the export lacks the column
            exprs.append(pl.lit(None, dtype=dtype).alias(f"v_{field}"))
            exprs.append(pl.lit(False).alias(f"v_bad_{field}"))
            exprs.append(pl.lit(False).alias(f"v_big_{field}"))
        else:
            exprs += [columns[f"v_{field}"], columns[f"v_bad_{field}"], columns[f"v_big_{field}"]]
    frame = frame.with_columns(exprs)
    if READ_CODE in frame.columns and frame.get_column(READ_CODE).null_count() < frame.height:
        # a number a reader could not read although its text is blank (POSLog: an empty element)
        frame = frame.with_columns(
            (pl.col(f"v_bad_{f}") | read_flag(RejectCode.BAD_NUMBER, f).fill_null(False)).alias(f"v_bad_{f}")
            for f in NUMBER_FIELDS
        )
    return frame
