"""Timestamps: the instant in UTC and the local wall time of each transaction.

A timestamp with an offset (``+01:00``, ``+0100``, ``Z``) is honoured. Without one it is local
time in the store's timezone (``Feed.timezone_of``). At DST changes an ambiguous local time (the
repeated hour) takes the earlier instant; a nonexistent one (the skipped hour) is moved forward by
one hour, as the till's clock would show it. ``business_date`` defaults to the local date of the
timestamp.
"""

from __future__ import annotations

import polars as pl

from pipeline.config import Feed
from pipeline.core.validate.exprs import clean

__all__ = ["time_columns"]

_MAX_OFFSET_MINUTES = 14 * 60
_OFFSET_RE = r"[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?\s*(Z|[+-][0-9]{2}:?[0-9]{2})$"


def _timezones(feed: Feed) -> list[str]:
    return sorted({feed.timezone, *feed.store_timezones.values()})


def time_columns(distinct: pl.DataFrame, feed: Feed) -> pl.DataFrame:
    """v_local (naive wall time), v_ts_utc, v_ts_local (ISO text with offset), v_local_date,
    v_ts_blank, from the ``timestamp`` text and the ``v_tz`` timezone of each row.

    Called once per run of lines (see :func:`pipeline.core.validate.typed.typed_columns`): exports
    repeat the transaction's timestamp on every line, so this is far less work than once per line.
    """
    text = clean("timestamp")
    offset = text.str.extract(_OFFSET_RE, 1)
    wall = (
        pl.when(offset.is_not_null())
        .then(text.str.replace(r"\s*(Z|[+-][0-9]{2}:?[0-9]{2})$", ""))
        .otherwise(text)
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
