"""Fragments of rejected transactions across files: never a transaction of their own.

A transaction rejected in one file may come again in another one (the next file of a run, or a
file of a later run of the dedup scope): a till repeating part of its export. An occurrence of the
id that is valid on its own but whose every line is an exact copy of a line of the rejected
occurrence, and that has fewer (distinct) lines than it, is a *fragment* of it: its lines are
rejected ``R034_COPY_OF_REJECTED``, and it is never sent on its own. An occurrence with a line of
its own (a corrected line, another product) is a correction, and one with every line again is the
same transaction once more: both are judged afresh (a correction is sent when valid). Copies inside
one file are the validator's (:mod:`pipeline.core.validate.engine`): there every copy of a rejected
transaction is rejected.

Lines are compared by the export's columns as the file had them, empty ones and the customer id
left out (the ledger keeps the rejected lines' customer ids hashed when the feed asks for it).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import EXTRA_PREFIX
from pipeline.core.rejects import RejectCode
from pipeline.core.validate import GROUP_ID

__all__ = ["EARLIER_REJECTS_SCHEMA", "customer_columns", "line_key", "reject_fragments"]

# the lines of transactions rejected before (earlier files of the scope): one row per line
EARLIER_REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.String(),
    "occurrence": pl.String(),  # one value per rejected occurrence (the ledger row)
    "line_key": pl.String(),  # :func:`line_key` of the line
    "source_file": pl.String(),
    "source_line": pl.Int64(),
    "reject_code": pl.String(),
}

_HELD_BACK = (RejectCode.SIBLING_REJECTED.value, RejectCode.COPY_OF_REJECTED.value)


def customer_columns(feed: Feed) -> set[str]:
    """The columns of a line that hold the customer id (canonical and the export's own name)."""
    return {"customer_id", feed.format.columns.get("customer_id", "customer_id")}


def line_key(values: Mapping[str, Any], skip: Collection[str]) -> str:
    """A line's export columns as one comparable text: non-empty values by column name (a
    ``src:`` prefix dropped), the ``skip`` columns left out."""
    pairs = sorted(
        (name.removeprefix(EXTRA_PREFIX), str(value))
        for name, value in values.items()
        if value is not None and value != "" and name.removeprefix(EXTRA_PREFIX) not in skip
    )
    return json.dumps(pairs, ensure_ascii=False)


@dataclass
class _Rejected:
    keys: set[str]
    where: tuple[str, int]  # the file and line that failed (the first one)


def _keys_of(frame: pl.DataFrame, skip: Collection[str]) -> list[str]:
    originals = [c for c in frame.columns if c.startswith(EXTRA_PREFIX)]
    return [line_key(values, skip) for values in frame.select(originals).iter_rows(named=True)]


def _occurrences(rows: pl.DataFrame, key: str) -> dict[str, list[_Rejected]]:
    """Rejected occurrences by transaction id (``rows``: transaction_id, ``key``, line_key,
    source_file, source_line, reject_code)."""
    out: dict[str, list[_Rejected]] = {}
    for tid, _, keys, files, lines, codes in rows.group_by("transaction_id", key, maintain_order=True).agg(
        "line_key", "source_file", "source_line", "reject_code"
    ).iter_rows():
        failing = [(f, n) for f, n, c in zip(files, lines, codes, strict=True) if c not in _HELD_BACK]
        where = min(failing or list(zip(files, lines, strict=True)), key=lambda p: (p[1] is None, p[1] or 0))
        out.setdefault(tid, []).append(_Rejected(set(keys), where))
    return out


def reject_fragments(checked: pl.DataFrame, feed: Feed, earlier: pl.DataFrame | None = None) -> pl.DataFrame:
    """``checked`` (validated lines) with every fragment of a rejected transaction rejected
    ``R034_COPY_OF_REJECTED`` (see the module docstring): against the other files of the frame and
    ``earlier`` (:data:`EARLIER_REJECTS_SCHEMA`)."""
    failed = pl.col("reject_code").is_not_null()
    tid = pl.col("v_transaction_id")
    has_id = tid.is_not_null() & (tid != "")
    ids = set(checked.filter(failed & has_id).get_column("v_transaction_id").unique().to_list())
    if earlier is not None:
        ids |= set(earlier.get_column("transaction_id").unique().to_list())
    if not ids:
        return checked
    candidates = checked.filter(~failed & has_id & tid.is_in(sorted(ids)))
    if candidates.height == 0:
        return checked
    skip = customer_columns(feed)
    known_ids = sorted(set(candidates.get_column("v_transaction_id").to_list()))
    rejected_here = checked.filter(failed & tid.is_in(known_ids))
    here = rejected_here.select(
        pl.col("v_transaction_id").alias("transaction_id"),
        pl.col("source_file").alias("occurrence"),
        pl.Series("line_key", _keys_of(rejected_here, skip), dtype=pl.String),
        "source_file",
        pl.col("source_line").cast(pl.Int64),
        "reject_code",
    )
    rejected = _occurrences(here, "occurrence")
    if earlier is not None:
        before = _occurrences(earlier.filter(pl.col("transaction_id").is_in(known_ids)), "occurrence")
        for tid_, occurrences in before.items():
            rejected.setdefault(tid_, []).extend(occurrences)
    groups = candidates.select(
        GROUP_ID, "v_transaction_id", "source_file", pl.Series("line_key", _keys_of(candidates, skip))
    ).group_by(GROUP_ID, maintain_order=True).agg(
        pl.col("v_transaction_id").first(), pl.col("source_file").first(), "line_key"
    )
    marks: dict[int, str] = {}
    for group, txn, _, keys in groups.iter_rows():
        mine = set(keys)
        # (a rejected occurrence in the candidate's own file cannot be: the validator rejects every
        # copy of a rejected transaction in its file)
        for other in rejected.get(txn, []):
            if mine <= other.keys and len(mine) < len(other.keys):
                marks[group] = (
                    f"transaction {txn} was rejected ({other.where[0]} line {other.where[1]}); every line of "
                    f"this one is a copy of one of its lines: a fragment is not sent on its own"
                )
                break
    if not marks:
        return checked
    found = pl.DataFrame(
        {GROUP_ID: list(marks), "_copy_reason": list(marks.values())},
        schema={GROUP_ID: checked.schema[GROUP_ID], "_copy_reason": pl.String()},
    )
    marked = pl.col("_copy_reason").is_not_null()
    return (
        checked.join(found, on=GROUP_ID, how="left", maintain_order="left")
        .with_columns(
            pl.when(marked).then(pl.lit(RejectCode.COPY_OF_REJECTED.value)).otherwise("reject_code")
            .alias("reject_code"),
            pl.when(marked).then(pl.lit("transaction_id")).otherwise("reject_field").alias("reject_field"),
            pl.when(marked).then("_copy_reason").otherwise("reject_reason").alias("reject_reason"),
        )
        .drop("_copy_reason")
    )
