"""Dedup: label each checkout new, duplicate or conflict against what is already known.

Pure: :func:`dedup` looks only at the checkouts it is given and the known
``(transaction_id, content_hash)`` pairs (the ledger's, for the feed's dedup scope).

For one ``transaction_id``:

* **known** with the same hash as this checkout: ``duplicate`` (sent or held before; skip).
* **known** with only other hashes: ``conflict`` (never sent; held for review).
* **not known**, and every occurrence in this frame has the same hash: the first occurrence (frame
  order) is ``new``, later ones ``duplicate`` (an hourly and a daily file of the same day, or an
  export that repeats a block).
* **not known**, and the occurrences in this frame disagree: *every* occurrence is ``conflict``.
  Nothing says which version is right, and a checkout cannot be changed once sent, so none is sent
  until someone decides; sending the first and holding the rest would pick a winner by file order.

Idempotent: labelling an already labelled frame gives the same labels, and adding the ``new``
checkouts to ``known`` turns them into ``duplicate`` without creating any new conflict.
"""

from __future__ import annotations

import polars as pl

from pipeline.records import DedupStatus

__all__ = ["KNOWN_SCHEMA", "dedup", "empty_known"]

KNOWN_SCHEMA: dict[str, pl.DataType] = {"transaction_id": pl.String(), "content_hash": pl.String()}


def empty_known() -> pl.DataFrame:
    """A known-pairs frame with nothing in it."""
    return pl.DataFrame(schema=KNOWN_SCHEMA)


def dedup(checkouts: pl.DataFrame, known: pl.DataFrame | None = None) -> pl.DataFrame:
    """``checkouts`` plus ``dedup_status`` (a :class:`~pipeline.records.DedupStatus` value)."""
    known = empty_known() if known is None else known.select(KNOWN_SCHEMA.keys()).cast(KNOWN_SCHEMA)  # type: ignore[arg-type]
    known_ids = known.group_by("transaction_id").agg(pl.col("content_hash").alias("_known_hashes"))
    frame = (
        checkouts.drop("dedup_status", strict=False)
        .with_columns(pl.col("transaction_id", "content_hash").cast(pl.String))
        .with_row_index("_order")
    )
    frame = frame.join(known_ids, on="transaction_id", how="left", maintain_order="left")
    is_known = pl.col("_known_hashes").is_not_null()
    known_same = pl.col("_known_hashes").list.contains(pl.col("content_hash"))
    disagree = pl.col("content_hash").n_unique().over("transaction_id") > 1
    first = pl.col("_order") == pl.col("_order").min().over("transaction_id")
    status = (
        pl.when(is_known & known_same)
        .then(pl.lit(DedupStatus.DUPLICATE.value))
        .when(is_known)
        .then(pl.lit(DedupStatus.CONFLICT.value))
        .when(disagree)
        .then(pl.lit(DedupStatus.CONFLICT.value))
        .when(first)
        .then(pl.lit(DedupStatus.NEW.value))
        .otherwise(pl.lit(DedupStatus.DUPLICATE.value))
    )
    return frame.with_columns(status.alias("dedup_status")).drop("_order", "_known_hashes")
