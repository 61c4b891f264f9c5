"""A validation rule, and the text of the reason it gives."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import READ_CODE, READ_REASON
from pipeline.core.rejects import RejectCode
from pipeline.logs import mask_customer_id

__all__ = ["Rule", "hashes_customer", "large_number_text", "masked_customer", "money_text", "read_flag",
           "read_reason", "reason"]


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


def money_text(amount: pl.Expr, feed: Feed) -> pl.Expr:
    """A computed decimal as a till would print it, in the export's notation: at least 2 decimals,
    no trailing zeros beyond (``25.0000`` is ``25.00``, ``0.0375`` stays), with a decimal comma
    when the feed reads one (``25,00``), like the values the reason quotes from the file."""
    text = amount.cast(pl.String).str.replace(r"^(-?\d+\.\d\d\d*?)0+$", "${1}")
    return text.str.replace(".", ",", literal=True) if feed.format.decimal_comma else text


def large_number_text(digits: int, feed: Feed) -> str:
    """``10**digits`` with its thousands grouped as the export groups them (``1,000,000`` with a
    decimal point, ``1.000.000`` with a decimal comma)."""
    grouped = f"{10**digits:,}"
    return grouped.replace(",", ".") if feed.format.decimal_comma else grouped


def hashes_customer(field: str, feed: Feed) -> bool:
    """Whether a reason about ``field`` must show its value hashed (a customer id, with the feed's
    ``logging.hash_customer_ids``), as rejects.csv and the ledger show it."""
    return field == "customer_id" and feed.logging.hash_customer_ids


def masked_customer(col: str) -> pl.Expr:
    """A customer id column as ``cust:<12 hex>`` (empty and missing ids kept as they are)."""
    value = pl.col(col)
    return pl.when(value == "").then(value).otherwise(
        value.map_elements(mask_customer_id, return_dtype=pl.String))


def read_flag(code: RejectCode, field: str) -> pl.Expr:
    """Where a reader flagged ``field`` with ``code`` (POSLog: a value it saw written twice, a
    number element there but empty): its read_reason starts with ``field: ``."""
    return (pl.col(READ_CODE) == code.value) & pl.col(READ_REASON).str.starts_with(f"{field}: ")


def read_reason(field: str) -> pl.Expr:
    """The reason a reader gave with :func:`read_flag`, without its field."""
    return pl.col(READ_REASON).str.strip_prefix(f"{field}: ")


# characters of one value a reason quotes; a longer one is cut (``…``)
QUOTED_CHARS = 80


def quoted(value: pl.Expr) -> pl.Expr:
    """A value as a reason quotes it: on one line (a line break or NUL shown as ``\\n``, ``\\r``,
    ``\\0``) and at most :data:`QUOTED_CHARS` characters, so a reason stays one short line
    whatever the file holds (a price of thousands of digits, a quoted field with line breaks)."""
    text = value.cast(pl.String).fill_null("")
    for char, shown in (("\r", "\\r"), ("\n", "\\n"), ("\x00", "\\0")):
        text = text.str.replace_all(char, shown, literal=True)
    cut = text.str.slice(0, QUOTED_CHARS - 1) + pl.lit("…")
    return pl.when(text.str.len_chars() > QUOTED_CHARS).then(cut).otherwise(text)


def reason(template: str, *args: pl.Expr) -> pl.Expr:
    """A reason text, each value :func:`quoted`; an empty value shows as '' instead of making the
    whole text null."""
    return pl.format(template, *[quoted(a) for a in args])
