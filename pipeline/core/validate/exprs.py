"""Small expressions the validation steps share: stripped text and money literals."""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from pipeline.records import MONEY

__all__ = ["clean", "money", "strip"]


def money(value: Decimal | int | str) -> pl.Expr:
    return pl.lit(Decimal(value), dtype=MONEY)


def clean(col: str) -> pl.Expr:
    """Stripped text, empty as null."""
    text = pl.col(col).str.strip_chars()
    return pl.when(text.str.len_bytes() > 0).then(text)


def strip(col: str) -> pl.Expr:
    """Stripped text (cheaper than :func:`clean`; an empty id is caught as a missing field)."""
    return pl.col(col).str.strip_chars()
