"""A checkout row to JSON and back, exactly: money as decimal strings, dates in ISO 8601.

The ledger keeps every checkout it may have to send in this form, so a transaction can be sent
(and re-sent after a crash or in a rerun) long after its source file is gone, and what is sent is
always rebuilt the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.records import CHECKOUT_SCHEMA, ITEM_STRUCT

__all__ = ["decode_checkout", "encode_checkout", "encode_checkouts"]

_DECIMAL_FIELDS = frozenset(name for name, dtype in CHECKOUT_SCHEMA.items() if isinstance(dtype, pl.Decimal))
_ITEM_DECIMAL_FIELDS = frozenset(f.name for f in ITEM_STRUCT.fields if isinstance(f.dtype, pl.Decimal))


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_checkout(row: Mapping[str, Any]) -> str:
    """JSON text of one checkout row (the keys of CHECKOUT_SCHEMA; extra keys are dropped)."""
    return json.dumps(
        {key: row.get(key) for key in CHECKOUT_SCHEMA}, default=_default, ensure_ascii=False, sort_keys=True
    )


def _as_text(expr: pl.Expr, dtype: Any) -> pl.Expr:
    if isinstance(dtype, pl.Decimal):
        return expr.cast(pl.String)  # keeps the scale: "2.5000"
    if isinstance(dtype, pl.Datetime):
        return expr.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    if dtype == pl.Date:
        return expr.dt.strftime("%Y-%m-%d")
    return expr


def encode_checkouts(checkouts: pl.DataFrame) -> pl.Series:
    """:func:`encode_checkout` of every row of a CHECKOUT_SCHEMA frame, vectorized (same JSON
    content, keys in schema order)."""
    fields = []
    for name, dtype in CHECKOUT_SCHEMA.items():
        if name == "items":
            item = pl.struct(
                [_as_text(pl.element().struct.field(f.name), f.dtype).alias(f.name)
                 for f in ITEM_STRUCT.fields]
            )
            fields.append(pl.col("items").list.eval(item).alias("items"))
        else:
            fields.append(_as_text(pl.col(name), dtype).alias(name))
    return checkouts.select(pl.struct(fields).struct.json_encode().alias("checkout")).get_column("checkout")


def decode_checkout(text: str) -> dict[str, Any]:
    """The checkout row of :func:`encode_checkout`, with Decimal money, date and datetime values."""
    data: dict[str, Any] = json.loads(text)
    for key in _DECIMAL_FIELDS:
        if data.get(key) is not None:
            data[key] = Decimal(data[key])
    if data.get("business_date"):
        data["business_date"] = date.fromisoformat(data["business_date"])
    if data.get("timestamp_utc"):
        data["timestamp_utc"] = datetime.fromisoformat(data["timestamp_utc"])
    items = []
    for item in data.get("items") or []:
        for key in _ITEM_DECIMAL_FIELDS:
            if item.get(key) is not None:
                item[key] = Decimal(item[key])
        items.append(item)
    data["items"] = items
    return data
