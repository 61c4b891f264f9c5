"""Validation: typed values and one reject code per row, as named polars expressions.

:func:`validate` adds typed columns (prefix ``v_``), ``reject_code``, ``reject_field``,
``reject_reason``, ``amount`` (the signed line amount, 0 when unparseable) and ``business_day``
(the business date as a Date, derived from the timestamp when the export has none).

Each rule is a :class:`Rule`: a name, its :class:`~pipeline.core.rejects.RejectCode`, the field it
judges, a boolean expression that is true where a row breaks it and a reason naming the value.
Rules run in catalog order and a row keeps the first rule it breaks.

**A transaction is atomic.** Lines are grouped into transactions by ``(source_file,
transaction_id, copy)``: one failing line rejects the whole transaction; the failing line keeps its
code, its siblings get ``R099_SIBLING_REJECTED``. ``copy`` numbers exact repeats of a whole line
(same content *and* the same ``line_no``) inside one file: an export that repeats a block produces
a second copy of the transaction, which normalizes to a checkout with the same content hash and is
counted as a duplicate by dedup instead of being rejected for repeated line numbers. A partial
repeat becomes a second copy with different content: a conflict, held for review. Lines without a
``line_no`` are never treated as repeats (two identical scans of one product are two items).

**Timestamps.** A timestamp with an offset (``+01:00``, ``+0100``, ``Z``) is honoured. Without
one it is local time in the store's timezone (``Feed.timezone_of``). At DST changes an ambiguous
local time (the repeated hour) takes the earlier instant; a nonexistent one (the skipped hour) is
moved forward by one hour, as the till's clock would show it. ``business_date`` defaults to the
local date of the timestamp.

**Returns.** A transaction is a return when its ``transaction_type`` is ``return``, or (with
``validation.treat_negative_quantity_as_return``) when it has no explicit type other than sale and
every line has a negative quantity. Amounts of returns are negative whatever sign the export used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import READ_CODE, READ_REASON
from pipeline.core.rejects import ISO_4217, READER_CODES, RejectCode
from pipeline.records import MONEY, MONEY_SCALE, QUANTITY, REQUIRED_COLUMNS, TransactionType

__all__ = ["GROUP_ID", "GROUP_KEYS", "NUMBER_FIELDS", "Rule", "row_rules", "transaction_rules", "validate"]

GROUP_KEYS: tuple[str, ...] = ("source_file", "v_transaction_id", "v_copy")
GROUP_ID = "v_group"  # one integer per GROUP_KEYS value

# field -> (typed column, dtype, decimal places)
NUMBER_FIELDS: dict[str, tuple[pl.DataType, int]] = {
    "quantity": (QUANTITY, 3),
    "unit_price": (MONEY, MONEY_SCALE),
    "discount": (MONEY, MONEY_SCALE),
    "line_total": (MONEY, MONEY_SCALE),
    "transaction_total": (MONEY, MONEY_SCALE),
    "points_burned": (MONEY, MONEY_SCALE),
    "line_no": (pl.Int64(), 0),
}

_MAX_OFFSET_MINUTES = 14 * 60
# Unicode control and format characters (tabs, line breaks, NUL, zero-width and bidi marks)
_CONTROL_RE = r"[\p{Cc}\p{Cf}]"
# the id columns that may hold no control or format character, and their typed columns
_ID_FIELDS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "v_transaction_id"),
    ("original_transaction_id", "v_original_transaction_id"),
    ("customer_id", "v_customer_id"),
    ("product_id", "v_product_id"),
    ("store_id", "v_store_id"),
    ("register_id", "v_register_id"),
)
_OFFSET_RE = r"[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(Z|[+-]\d{2}:?\d{2})$"
_TYPES = [t.value for t in TransactionType]


@dataclass(frozen=True)
class Rule:
    """One validation rule: true in ``failing`` where a row breaks it."""

    name: str
    code: RejectCode
    field: str
    failing: pl.Expr
    reason: pl.Expr
    # typed columns the rule cannot fail without: when one is null on every line, the rule is
    # skipped in the screening pass (it could not fail anyway)
    needs: tuple[str, ...] = ()


def _fmt(template: str, *args: pl.Expr) -> pl.Expr:
    """A reason text; an empty value shows as '' instead of making the whole text null."""
    return pl.format(template, *[a.cast(pl.String).fill_null("") for a in args])


def _shown(col: str) -> pl.Expr:
    """A value for a reason with its control and format characters made visible (U+XXXX)."""
    text = pl.col(col)
    return pl.when(text.str.contains(_CONTROL_RE)).then(
        text.map_elements(_visible, return_dtype=pl.String)
    ).otherwise(pl.format("'{}'", text)).str.slice(0, 80)


def _visible(text: str) -> str:
    import unicodedata

    return "'" + "".join(
        f"<U+{ord(ch):04X}>" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text
    ) + "'"


def _money(value: Decimal | int | str) -> pl.Expr:
    return pl.lit(Decimal(value), dtype=MONEY)


def _clean(col: str) -> pl.Expr:
    """Stripped text, empty as null."""
    text = pl.col(col).str.strip_chars()
    return pl.when(text.str.len_bytes() > 0).then(text)


def _strip(col: str) -> pl.Expr:
    """Stripped text (cheaper than :func:`_clean`; an empty id is caught as a missing field)."""
    return pl.col(col).str.strip_chars()


def _parse_numbers(frame: pl.DataFrame, fields: Sequence[str], feed: Feed) -> pl.DataFrame:
    """v_<field> and v_bad_<field> of each field, one row per row of ``frame`` (only those columns)."""
    texts = []
    for field in fields:
        text = _strip(field)
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


# a column with at most one distinct text per this many rows is parsed once per distinct text
_DISTINCT_RATIO = 8


def _with_numbers(frame: pl.DataFrame, feed: Feed) -> pl.DataFrame:
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


def _control_flag(typed: str) -> pl.Expr:
    """v_ctrl_<field>: true where the typed id holds a control or format character, else null."""
    found = pl.col(typed).str.contains(_CONTROL_RE)
    return pl.when(found).then(pl.lit(True)).alias(f"v_ctrl_{typed.removeprefix('v_')}")


def _control_flag_per_line(frame: pl.DataFrame, typed: str) -> pl.Expr:
    """:func:`_control_flag` for a column typed line by line: the Unicode check only runs when
    some value holds anything but printable ASCII (a cheap byte scan; usually nothing does)."""
    name = f"v_ctrl_{typed.removeprefix('v_')}"
    if not frame.select(pl.col(typed).str.contains(r"[^\x20-\x7E]").any()).item():
        return pl.lit(None, dtype=pl.Boolean).alias(name)
    return _control_flag(typed)


def _runs(frame: pl.DataFrame, keys: Sequence[str]) -> tuple[pl.Series, pl.DataFrame]:
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


def _timezones(feed: Feed) -> list[str]:
    return sorted({feed.timezone, *feed.store_timezones.values()})


def _time_columns(distinct: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    """v_local (naive wall time), v_ts_utc, v_ts_local (ISO text with offset), v_local_date,
    v_ts_blank, from the ``timestamp`` text and the ``v_tz`` timezone of each row.

    Called once per run of lines (see :func:`_typed`): exports repeat the transaction's timestamp
    on every line, so this is far less work than once per line.
    """
    text = _clean("timestamp")
    offset = text.str.extract(_OFFSET_RE, 1)
    wall = (
        pl.when(offset.is_not_null()).then(text.str.replace(r"\s*(Z|[+-]\d{2}:?\d{2})$", "")).otherwise(text)
    )
    if feed.format.timestamp_format:
        local = wall.str.to_datetime(feed.format.timestamp_format, time_unit="us", strict=False)
    else:
        iso = wall.str.replace("T", " ", literal=True)
        local = pl.coalesce(
            iso.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False),
            iso.str.to_datetime("%Y-%m-%d %H:%M", time_unit="us", strict=False),
        )
    distinct = distinct.with_columns(
        local.alias("v_local"),
        offset.str.replace("Z", "+00:00", literal=True).alias("v_offset"),
        text.is_null().alias("v_ts_blank"),
    )
    # offset given: wall time minus the offset
    off = pl.col("v_offset")
    sign = pl.when(off.str.starts_with("-")).then(-1).otherwise(1)
    off_minutes = off.str.slice(-2, 2).cast(pl.Int64)
    minutes = sign * (off.str.slice(1, 2).cast(pl.Int64) * 60 + off_minutes)
    # real offsets run from -12:00 to +14:00; minutes past 59 are no offset at all (true, else null)
    offset_bad = (minutes.abs() > _MAX_OFFSET_MINUTES) | (off_minutes > 59)
    distinct = distinct.with_columns(pl.when(offset_bad).then(pl.lit(True)).alias("v_offset_bad"))
    off_norm = off.str.slice(0, 3) + ":" + off.str.slice(-2, 2)
    utc_from_offset = pl.col("v_local").dt.replace_time_zone("UTC") - pl.duration(minutes=minutes)
    local_from_offset = pl.col("v_local").dt.strftime("%Y-%m-%dT%H:%M:%S") + off_norm
    # no offset: local time in the store's timezone, DST gaps shifted forward, overlaps earliest
    utc_by_zone = pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    text_by_zone = pl.lit(None, dtype=pl.String)
    for zone in _timezones(feed):
        aware = pl.coalesce(
            pl.col("v_local").dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null"),
            (pl.col("v_local") + pl.duration(hours=1)).dt.replace_time_zone(
                zone, ambiguous="earliest", non_existent="null"
            ),
        )
        in_zone = pl.col("v_tz") == zone
        utc_by_zone = pl.when(in_zone).then(aware.dt.convert_time_zone("UTC")).otherwise(utc_by_zone)
        text_by_zone = (
            pl.when(in_zone).then(aware.dt.strftime("%Y-%m-%dT%H:%M:%S%:z")).otherwise(text_by_zone)
        )
    has_offset = pl.col("v_offset").is_not_null()
    distinct = distinct.with_columns(
        pl.when(has_offset).then(utc_from_offset).otherwise(utc_by_zone).alias("v_ts_utc"),
        pl.when(has_offset).then(local_from_offset).otherwise(text_by_zone).alias("v_ts_local"),
        pl.col("v_local").dt.date().alias("v_local_date"),
    ).drop("v_offset")
    return distinct


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


def _typed(lines: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    date_format = feed.format.date_format or "%Y-%m-%d"

    def text(col: str, name: str, case: str | None = None, *, empty_is_null: bool = False) -> pl.Expr:
        if lines.get_column(col).null_count() == lines.height:  # the export lacks the column
            return pl.lit(None, dtype=pl.String).alias(name)
        value = _clean(col) if empty_is_null else _strip(col)
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
    run, distinct = _runs(lines, ["source_file", *present])
    distinct = distinct.with_columns(
        pl.lit(None, dtype=pl.String).alias(c) for c in _HEADER_COLUMNS if c not in present
    )
    distinct = distinct.with_columns(header)
    distinct = distinct.with_columns(
        _control_flag(typed) for _, typed in _ID_FIELDS if typed != "v_product_id"
    )
    distinct = distinct.with_columns(
        pl.col("v_store_id")
        .replace_strict(feed.store_timezones, default=feed.timezone, return_dtype=pl.String)
        .alias("v_tz")
        if feed.store_timezones
        else pl.lit(feed.timezone, dtype=pl.String).alias("v_tz")
    )
    distinct = _time_columns(distinct, feed)
    header_run, header_keys = run, distinct.select("source_file", "v_transaction_id")
    distinct = distinct.drop(raw)
    # flags that are null on every run (the usual case) are not spread line by line
    flags = [c for c in distinct.columns if c.startswith(("v_ctrl_", "v_offset_bad"))]
    unset = [c for c in flags if distinct.get_column(c).null_count() == distinct.height]
    distinct = distinct.drop(unset)
    frame = lines.with_columns(text("product_id", "v_product_id"))
    frame = frame.with_columns(_control_flag_per_line(frame, "v_product_id"))
    frame = frame.hstack(distinct[run])
    frame = frame.with_columns(pl.lit(None, dtype=pl.Boolean).alias(c) for c in unset)
    frame = _with_numbers(frame, feed)
    frame = frame.with_columns(
        pl.col("v_business_date_text").str.to_date(date_format, strict=False).alias("v_business_date_given"),
        pl.col("v_discount").fill_null(_money(0)).alias("v_discount_or_0"),
    )
    frame = _with_copy_number(frame).with_columns(
        pl.coalesce("v_business_date_given", "v_local_date").alias("business_day")
    )
    # one integer per transaction (exact, unlike a hash): windows over one int key are cheap;
    # ranked over the first line of each run of lines, then spread back to every line
    if frame.height == 0 or frame.get_column("v_copy").max() == 0:
        # no repeated copies: the runs of lines above never span two transactions
        run, firsts = header_run, header_keys.with_columns(pl.lit(0, dtype=pl.Int64).alias("v_copy"))
    else:
        run, firsts = _runs(frame, GROUP_KEYS)
    group = firsts.select(pl.struct(GROUP_KEYS).rank("dense").cast(pl.Int64)).to_series()
    return frame.with_columns(group[run].alias(GROUP_ID))


def _with_copy_number(frame: pl.DataFrame) -> pl.DataFrame:
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
    from pipeline.records import CANONICAL_COLUMNS

    return [c for c in CANONICAL_COLUMNS if c not in ("transaction_id", "line_no")]


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


def _transaction_columns(frame: pl.DataFrame, feed: Feed) -> pl.DataFrame:
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


def _with_line_amounts(frame: pl.DataFrame) -> pl.DataFrame:
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
    return frame.with_columns(pl.col("v_line_amount").fill_null(_money(0)).alias("amount"))


def row_rules(feed: Feed, now: datetime) -> list[Rule]:
    """The rules judged line by line and by transaction shape, in catalog order."""
    v = feed.validation
    # a record a reader could not read: its code and reason come from the reader
    rules: list[Rule] = [
        Rule(
            f"read_{code.name.lower()}",
            code,
            "record",
            pl.col(READ_CODE) == code.value,
            pl.col(READ_REASON),
            needs=(READ_CODE,),
        )
        for code in READER_CODES
    ]
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
    for field, typed_id in _ID_FIELDS:
        flag = f"v_ctrl_{typed_id.removeprefix('v_')}"
        rules.append(
            Rule(
                f"control_character_in_{field}",
                RejectCode.CONTROL_CHARACTER_IN_ID,
                field,
                pl.col(flag),
                _fmt(f"{field} {{}} holds a control or format character", _shown(field)),
                needs=(flag,),
            )
        )
    for field, (_, places) in NUMBER_FIELDS.items():
        what = "a whole number" if places == 0 else f"a number with at most {places} decimal places"
        rules.append(
            Rule(
                f"bad_{field}",
                RejectCode.BAD_NUMBER,
                field,
                pl.col(f"v_bad_{field}"),
                _fmt(f"{field} '{{}}' is not {what}", pl.col(field)),
            )
        )
    rules.append(
        Rule(
            "bad_timestamp",
            RejectCode.BAD_TIMESTAMP,
            "timestamp",
            pl.col("v_ts_utc").is_null(),
            _fmt("timestamp '{}' cannot be read", pl.col("timestamp")),
        )
    )
    rules.append(
        Rule(
            "offset_out_of_range",
            RejectCode.OFFSET_OUT_OF_RANGE,
            "timestamp",
            pl.col("v_offset_bad"),
            _fmt("timestamp '{}' has a UTC offset outside -14:00..+14:00", pl.col("timestamp")),
            needs=("v_offset_bad",),
        )
    )
    rules.append(
        Rule(
            "bad_business_date",
            RejectCode.BAD_BUSINESS_DATE,
            "business_date",
            pl.col("v_business_date_text").is_not_null() & pl.col("v_business_date_given").is_null(),
            _fmt("business_date '{}' is not a date", pl.col("business_date")),
        )
    )
    rules.append(
        Rule(
            "unknown_transaction_type",
            RejectCode.UNKNOWN_TRANSACTION_TYPE,
            "transaction_type",
            pl.col("v_type_given").is_not_null() & ~pl.col("v_type_given").is_in(_TYPES),
            _fmt("transaction_type '{}' is not sale, return or void", pl.col("transaction_type")),
        )
    )
    allowed = sorted(ISO_4217 if v.currencies is None else {c.upper() for c in v.currencies})
    rules.append(
        Rule(
            "unknown_currency",
            RejectCode.UNKNOWN_CURRENCY,
            "currency",
            ~pl.col("v_currency").is_in(allowed),
            _fmt(
                "currency '{}' is not "
                + ("an ISO 4217 code" if v.currencies is None else "one of " + ", ".join(allowed)),
                pl.col("currency"),
            ),
        )
    )
    q = pl.col("v_quantity")
    txn_type = pl.col("v_type")
    rules.append(
        Rule(
            "non_positive_quantity",
            RejectCode.NON_POSITIVE_QUANTITY,
            "quantity",
            ((txn_type == TransactionType.SALE) & (q <= 0))
            | ((txn_type == TransactionType.RETURN) & (q == 0)),
            _fmt("quantity {} on a {}", pl.col("quantity"), txn_type),
        )
    )
    rules.append(
        Rule(
            "negative_price",
            RejectCode.NEGATIVE_PRICE,
            "unit_price",
            pl.col("v_unit_price") < 0,
            _fmt("unit_price {} is negative", pl.col("unit_price")),
        )
    )
    rules.append(
        Rule(
            "negative_discount",
            RejectCode.NEGATIVE_DISCOUNT,
            "discount",
            pl.col("v_discount") < 0,
            _fmt("discount {} is negative", pl.col("discount")),
            needs=("v_discount",),
        )
    )
    tolerance = _money(v.amount_tolerance)
    given, expected = pl.col("v_line_total"), pl.col("v_line_expected")
    off = (
        pl.when(txn_type == TransactionType.RETURN)
        .then((given.abs() - expected.abs()).abs())
        .otherwise((given - expected).abs())
    )
    rules.append(
        Rule(
            "line_total_mismatch",
            RejectCode.LINE_TOTAL_MISMATCH,
            "line_total",
            off > tolerance,
            _fmt(
                "line_total {} but quantity × unit_price − discount = {}",
                pl.col("line_total"),
                expected,
            ),
            needs=("v_line_total",),
        )
    )
    now_utc = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    latest = now_utc + timedelta(minutes=v.max_future_minutes)
    rules.append(
        Rule(
            "timestamp_in_future",
            RejectCode.TIMESTAMP_IN_FUTURE,
            "timestamp",
            pl.col("v_ts_utc") > pl.lit(latest).dt.convert_time_zone("UTC"),
            _fmt(
                f"timestamp '{{}}' is after now ({now_utc:%Y-%m-%dT%H:%M}Z) + {v.max_future_minutes} min",
                pl.col("timestamp"),
            ),
        )
    )
    earliest = datetime.combine(v.earliest_date, datetime.min.time(), tzinfo=UTC)
    rules.append(
        Rule(
            "timestamp_too_early",
            RejectCode.DATE_TOO_EARLY,
            "timestamp",
            pl.col("v_ts_utc") < pl.lit(earliest).dt.convert_time_zone("UTC"),
            _fmt(
                f"timestamp '{{}}' is before validation.earliest_date {v.earliest_date}",
                pl.col("timestamp"),
            ),
        )
    )
    rules.append(
        Rule(
            "business_date_too_early",
            RejectCode.DATE_TOO_EARLY,
            "business_date",
            pl.col("v_business_date_given") < pl.lit(v.earliest_date),
            _fmt(
                f"business_date '{{}}' is before validation.earliest_date {v.earliest_date}",
                pl.col("business_date"),
            ),
            needs=("v_business_date_given",),
        )
    )
    days = (pl.col("v_local_date") - pl.col("v_business_date_given")).dt.total_days().abs()
    rules.append(
        Rule(
            "timestamp_far_from_business_date",
            RejectCode.TIMESTAMP_FAR_FROM_BUSINESS_DATE,
            "timestamp",
            days > v.max_days_from_business_date,
            _fmt(
                "timestamp '{}' is {} days from business_date {}",
                pl.col("timestamp"),
                days,
                pl.col("business_date"),
            ),
            needs=("v_business_date_given",),
        )
    )
    rules.append(
        Rule(
            "repeated_line_number",
            RejectCode.REPEATED_LINE_NUMBER,
            "line_no",
            pl.col("v_line_no").is_not_null() & (pl.col("v_line_no_count") > 1),
            _fmt(
                "line_no {} appears {} times in transaction {}",
                pl.col("line_no"),
                pl.col("v_line_no_count"),
                pl.col("transaction_id"),
            ),
            needs=("v_line_no",),
        )
    )
    for name, code, field, count in (
        ("mixed_stores", RejectCode.MIXED_STORES, "store_id", "v_store_count"),
        ("mixed_customers", RejectCode.MIXED_CUSTOMERS, "customer_id", "v_customer_count"),
        ("mixed_currencies", RejectCode.MIXED_CURRENCIES, "currency", "v_currency_count"),
        ("mixed_transaction_types", RejectCode.MIXED_TRANSACTION_TYPES, "transaction_type", "v_type_count"),
    ):
        rules.append(
            Rule(
                name,
                code,
                field,
                pl.col(count) > 1,
                _fmt(
                    f"transaction {{}} has {{}} different values of {field} (this line: '{{}}')",
                    pl.col("transaction_id"),
                    pl.col(count),
                    pl.col(field),
                ),
            )
        )
    return rules


def transaction_rules(feed: Feed) -> list[Rule]:
    """Rules judged on a transaction whose lines all passed :func:`row_rules`."""
    tolerance = _money(feed.validation.amount_tolerance)
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
            _fmt("transaction_total {} but the lines sum to {}", pl.col("transaction_total"), line_sum),
        )
    ]


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


def _explain(frame: pl.DataFrame, rules: Sequence[Rule], bad_groups: pl.DataFrame) -> pl.DataFrame:
    """reject_code, reject_field, reject_reason from the rule index (only rejected rows pay)."""
    index = pl.col("v_rule")
    codes = {i: r.code.value for i, r in enumerate(rules)}
    fields = {i: r.field for i, r in enumerate(rules)}
    failed = frame.filter(index.is_not_null()).join(bad_groups, on=GROUP_ID, how="left")
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
    """Type every line and give each at most one reject code (see the module docstring).

    ``now`` is injected (no clock in the core); a naive ``now`` is taken as UTC.
    """
    keys = GROUP_ID
    if READ_CODE not in lines.columns:
        lines = lines.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (READ_CODE, READ_REASON))
    frame = _typed(lines, feed)
    frame = _transaction_columns(frame, feed)
    frame = _with_line_amounts(frame)
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
    frame = frame.with_columns(
        pl.when(failed).then(pl.col("v_rule")).when(in_bad_group).then(sibling).alias("v_rule")
    ).with_row_index("_row")
    sibling_rule = Rule(
        "sibling_rejected",
        RejectCode.SIBLING_REJECTED,
        "transaction_id",
        pl.lit(False),
        _fmt("line {} of transaction {} was rejected", pl.col("v_first_bad_line"), pl.col("transaction_id")),
    )
    return _explain(frame, [*per_row, *per_txn, sibling_rule], bad_groups)
