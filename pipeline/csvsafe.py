"""CSV files that are safe to open in a spreadsheet, written atomically.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return would be run as
a formula by Excel, LibreOffice or Google Sheets (CSV injection); such a cell gets a leading ``'``.
Plain numbers (``-12.50``) are left alone so that amounts stay numbers.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["safe_cell", "safe_frame", "write_atomic", "write_csv", "write_frame_csv"]

_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")
_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
_RISKY_FIRST = frozenset(_DANGEROUS)


def safe_cell(value: Any) -> str:
    """The text of a cell, neutralised when a spreadsheet would read it as a formula."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.startswith(_DANGEROUS) and not _NUMBER.match(text):
        return "'" + text
    return text


def write_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a spreadsheet-safe UTF-8 CSV atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([safe_cell(h) for h in header])
            # csv writes None as an empty cell and an int as its digits, as safe_cell does; only
            # text that starts with a risky character (and anything else) goes through safe_cell
            writer.writerows(
                [
                    v if v is None or type(v) is int or (type(v) is str and v[:1] not in _RISKY_FIRST)
                    else safe_cell(v)
                    for v in row
                ]
                for row in rows
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


_DANGEROUS_PATTERN = r"^[=+\-@\t\r]"
_NUMBER_PATTERN = r"^[+-]?\d+(\.\d+)?$"


def safe_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every text cell neutralised as :func:`safe_cell` does (vectorized)."""
    exprs = []
    for name, dtype in frame.schema.items():
        if dtype == pl.String:
            col = pl.col(name)
            risky = col.str.contains(_DANGEROUS_PATTERN) & ~col.str.contains(_NUMBER_PATTERN)
            exprs.append(pl.when(risky).then(pl.lit("'") + col).otherwise(col).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def write_frame_csv(path: Path, frame: pl.DataFrame) -> None:
    """Write a polars frame as a spreadsheet-safe UTF-8 CSV atomically.

    Decimals and dates are written as text (never through a float); nested columns as JSON.
    """
    flat = frame.with_columns(
        pl.col(name).cast(pl.String)
        for name, dtype in frame.schema.items()
        if dtype.is_decimal() or dtype.is_temporal()
    )
    flat = flat.with_columns(
        pl.col(name).map_batches(_json_text, return_dtype=pl.String)
        for name, dtype in flat.schema.items()
        if dtype.is_nested()
    )
    safe_header = [safe_cell(name) for name in flat.columns]
    write_atomic(path, safe_frame(flat).rename(dict(zip(flat.columns, safe_header, strict=True))).write_csv())


def _json_text(series: pl.Series) -> pl.Series:
    import json

    return pl.Series(
        series.name,
        [None if v is None else json.dumps(v, default=str) for v in series.to_list()],
        dtype=pl.String,
    )
