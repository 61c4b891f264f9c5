"""A validation rule, and the text of the reason it gives."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.core.rejects import RejectCode

__all__ = ["Rule", "reason"]


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


def money_text(amount: pl.Expr) -> pl.Expr:
    """A computed decimal as a till would print it: at least 2 decimals, no trailing zeros beyond
    (``25.0000`` is ``25.00``, ``0.0375`` stays)."""
    return amount.cast(pl.String).str.replace(r"^(-?\d+\.\d\d\d*?)0+$", "${1}")


def reason(template: str, *args: pl.Expr) -> pl.Expr:
    """A reason text; an empty value shows as '' instead of making the whole text null."""
    return pl.format(template, *[a.cast(pl.String).fill_null("") for a in args])
