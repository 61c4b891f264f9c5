"""Control and format characters in ids: the flag columns, and the ids made visible in reasons."""

from __future__ import annotations

import unicodedata

import polars as pl

__all__ = ["CONTROL_RE", "ID_FIELDS", "SCIENTIFIC_RE", "control_flag", "control_flag_per_line", "shown"]

# Unicode control and format characters (tabs, line breaks, NUL, zero-width and bidi marks)
CONTROL_RE = r"[\p{Cc}\p{Cf}]"
# a long numeric id as a spreadsheet saves it (1.23457E+11, 1.2E+5): the exponent's sign is always
# written, so an id such as 12E45 is not taken for one
SCIENTIFIC_RE = r"^[0-9]+(?:\.[0-9]+)?[eE][+-][0-9]+$"
# the id columns that may hold no control or format character, and their typed columns
ID_FIELDS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "v_transaction_id"),
    ("original_transaction_id", "v_original_transaction_id"),
    ("customer_id", "v_customer_id"),
    ("product_id", "v_product_id"),
    ("store_id", "v_store_id"),
    ("register_id", "v_register_id"),
)


def shown(col: str) -> pl.Expr:
    """A value for a reason with its control and format characters made visible (U+XXXX)."""
    text = pl.col(col)
    return pl.when(text.str.contains(CONTROL_RE)).then(
        text.map_elements(_visible, return_dtype=pl.String)
    ).otherwise(pl.format("'{}'", text)).str.slice(0, 80)


def _visible(text: str) -> str:
    return "'" + "".join(
        f"<U+{ord(ch):04X}>" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text
    ) + "'"


def control_flag(typed: str) -> pl.Expr:
    """v_ctrl_<field>: true where the typed id holds a control or format character, else null."""
    found = pl.col(typed).str.contains(CONTROL_RE)
    return pl.when(found).then(pl.lit(True)).alias(f"v_ctrl_{typed.removeprefix('v_')}")


def control_flag_per_line(frame: pl.DataFrame, typed: str) -> pl.Expr:
    """:func:`control_flag` for a column typed line by line: the Unicode check only runs when
    some value holds anything but printable ASCII (a cheap byte scan; usually nothing does)."""
    name = f"v_ctrl_{typed.removeprefix('v_')}"
    if not frame.select(pl.col(typed).str.contains(r"[^\x20-\x7E]").any()).item():
        return pl.lit(None, dtype=pl.Boolean).alias(name)
    return control_flag(typed)
