"""The whole pure transform: lines → validate → normalize → dedup, with a balanced summary.

:func:`transform_files` reads files (unreadable ones are collected, never raised) and calls
:func:`transform`. The result's ``summary`` has the `posfeed check --json` keys of PRODUCT.md,
amounts as decimal strings with their currency's minor units, and balances exactly: ``rows_in =
rows_valid + rows_rejected`` and, per currency (``currencies``), ``amount_in = amount_valid +
amount_rejected``; the top-level ``amount_*`` are the one currency's (None with several).

``TransformResult.lines`` keeps every input row: the canonical columns as read (strings), every
export column as the file had it (``src:<name>``, in the file's order), ``source_file``,
``source_line``, ``reject_code``, ``reject_field``, ``reject_reason``, ``amount`` (MONEY: the
signed line amount, 0 when unparseable), ``business_day`` (Date: business_date, else the
timestamp's local date; null if neither can be read), ``transaction_type_normalized`` and
``store`` (stripped store_id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Feed
from pipeline.core.dedup import dedup
from pipeline.core.normalize import normalize, normalize_columns
from pipeline.core.parse import EXTRA_PREFIX, read_file
from pipeline.core.readstats import ReadStats
from pipeline.core.rejected_copies import reject_fragments
from pipeline.core.validate import GROUP_ID, validate
from pipeline.currencies import money_text, single_currency_amounts
from pipeline.errors import UnreadableFileError
from pipeline.records import (
    CANONICAL_COLUMNS,
    CHECKOUT_ITEM_SCHEMA,
    CHECKOUT_SCHEMA,
    DedupStatus,
    ReturnStatus,
    TransactionType,
)

__all__ = ["REJECT_COLUMNS", "TransformResult", "empty_lines", "transform", "transform_files"]

log = logging.getLogger(__name__)

_ZERO = Decimal("0")

REJECT_COLUMNS: tuple[str, ...] = (
    "reject_code",
    "reject_reason",
    "reject_field",
    "source_file",
    "source_line",
)
_LINE_EXTRAS: tuple[str, ...] = (
    "source_file",
    "source_line",
    "reject_code",
    "reject_field",
    "reject_reason",
    "amount",
    "business_day",
)


@dataclass(frozen=True)
class TransformResult:
    """Everything one transform produced (see the module docstring for ``lines``)."""

    lines: pl.DataFrame
    checkouts: pl.DataFrame  # CHECKOUT_SCHEMA + dedup_status
    items: pl.DataFrame  # CHECKOUT_ITEM_SCHEMA
    rejects: pl.DataFrame  # original columns + REJECT_COLUMNS
    unreadable: tuple[UnreadableFileError, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def sendable(self) -> pl.DataFrame:
        """Checkouts to submit: new, and not voids."""
        return self.checkouts.filter(
            (pl.col("dedup_status") == DedupStatus.NEW) & (pl.col("transaction_type") != TransactionType.VOID)
        )


def empty_lines() -> pl.DataFrame:
    """A lines frame with no rows (every canonical column, source_file, source_line)."""
    schema: dict[str, pl.DataType] = {c: pl.String() for c in CANONICAL_COLUMNS}
    schema["source_line"] = pl.Int64()
    schema["source_file"] = pl.String()
    return pl.DataFrame(schema=schema)


# a line counts in its transaction's currency (its first line's that names one), as the ledger
# records it; a line without a transaction id counts in its own
_TRANSACTION_CURRENCY = (
    pl.when(pl.col("v_transaction_id").is_not_null())
    .then(pl.col("v_currency").drop_nulls().first().over(GROUP_ID))
    .otherwise(pl.col("v_currency"))
    .fill_null("")
    .alias("summary_currency")
)


def _currency_amounts(checked: pl.DataFrame, failed: pl.Expr) -> dict[str, dict[str, str]]:
    """``{currency: {amount_in, amount_valid, amount_rejected}}``, each with its minor units."""
    per = checked.group_by("summary_currency").agg(
        pl.col("amount").sum().alias("amount_in"),
        pl.col("amount").filter(~failed).sum().alias("amount_valid"),
    )
    out: dict[str, dict[str, str]] = {}
    for currency, amount_in, amount_valid in sorted(per.iter_rows(), key=lambda r: r[0]):
        amount_in, amount_valid = amount_in or _ZERO, amount_valid or _ZERO
        out[currency] = {
            "amount_in": money_text(amount_in, currency),
            "amount_valid": money_text(amount_valid, currency),
            "amount_rejected": money_text(amount_in - amount_valid, currency),
        }
    return out


def _summary(
    checked: pl.DataFrame,
    checkouts: pl.DataFrame,
    unreadable: Sequence[UnreadableFileError],
    read_stats: ReadStats | None = None,
    files_read: Sequence[str] = (),
) -> dict[str, Any]:
    failed = pl.col("reject_code").is_not_null()
    has_id = pl.col("v_transaction_id").is_not_null()
    counts = checked.select(
        failed.sum().alias("rejected"),
        pl.col(GROUP_ID).filter(has_id).n_unique().alias("groups"),
        (~has_id).sum().alias("no_id"),  # a line without an id stands alone
    ).row(0, named=True)
    rows_rejected = int(counts["rejected"] or 0)
    transactions_in = int(counts["groups"] or 0) + int(counts["no_id"] or 0)
    by_code = (
        checked.filter(failed).group_by("reject_code").len().sort("reject_code").iter_rows()
        if rows_rejected
        else iter(())
    )
    status = checkouts.get_column("dedup_status")
    kind = checkouts.get_column("transaction_type")
    currencies = _currency_amounts(checked, failed)
    with_rows = checked.get_column("source_file").unique().to_list()
    return {
        "rows_in": checked.height,
        "rows_valid": checked.height - rows_rejected,
        "rows_rejected": rows_rejected,
        "transactions_in": transactions_in,
        "transactions_valid": checkouts.height,
        "transactions_rejected": transactions_in - checkouts.height,
        "rejects_by_code": {code: count for code, count in by_code},
        "new": int((status == DedupStatus.NEW).sum()),
        "duplicates": int((status == DedupStatus.DUPLICATE).sum()),
        "conflicts": int((status == DedupStatus.CONFLICT).sum()),
        "sales": int((kind == TransactionType.SALE).sum()),
        "returns": int((kind == TransactionType.RETURN).sum()),
        "returns_unmatched": int((checkouts.get_column("return_status") == ReturnStatus.UNMATCHED).sum()),
        "voids": int((kind == TransactionType.VOID).sum()),
        "guests": int(checkouts.get_column("is_guest").sum()),
        **single_currency_amounts(currencies, ("amount_in", "amount_valid", "amount_rejected")),
        "currencies": currencies,
        "files": sorted(set(with_rows) | set(files_read)),
        "files_without_rows": sorted(set(files_read) - set(with_rows)),
        "unreadable_files": [{"file": e.file, "reason": e.reason} for e in unreadable],
        # what the readers counted and did not turn into lines (POSLog's control transactions...)
        **(read_stats or ReadStats()).summary(),
    }


def _rejects(rejected: pl.DataFrame) -> pl.DataFrame:
    """Rejected rows with exactly the export's columns, in the export's order, as the file had them
    (empty columns too), then code, reason, field, file and line.

    Files of different layouts read together give the union of their columns, in first-seen
    order. An export column named like one of the trailing columns keeps its ``src:`` prefix.
    """
    originals = [c for c in rejected.columns if c.startswith(EXTRA_PREFIX)]
    names = {c: c[len(EXTRA_PREFIX) :] for c in originals}
    taken = set(REJECT_COLUMNS)
    renamed = [pl.col(c).alias(names[c] if names[c] not in taken else c) for c in originals]
    return rejected.select(*renamed, *[pl.col(c) for c in REJECT_COLUMNS])


def transform(
    lines: pl.DataFrame,
    feed: Feed,
    *,
    known: pl.DataFrame | None = None,
    now: datetime,
    unreadable: Sequence[UnreadableFileError] = (),
    read_stats: ReadStats | None = None,
    files_read: Sequence[str] = (),
    rejected_before: pl.DataFrame | None = None,
) -> TransformResult:
    """Validate, normalize and dedup a lines frame (from :mod:`pipeline.core.parse`).

    ``files_read`` names the files the lines were read from, so that one with no data rows is
    still listed (``files``, ``files_without_rows``). ``rejected_before`` holds the lines of
    transactions the scope rejected in earlier files (``EARLIER_REJECTS_SCHEMA`` of
    :mod:`pipeline.core.rejected_copies`): a fragment of one, or of one rejected in another file
    of ``lines``, is rejected too."""
    checked = reject_fragments(validate(lines, feed, now=now), feed, rejected_before)
    is_valid = checked.get_column("reject_code").is_null()
    extras = [c for c in checked.columns if c.startswith(EXTRA_PREFIX)]
    # only what each consumer reads is filtered (cheaper than filtering every column)
    valid = checked.select(normalize_columns(checked))
    if not is_valid.all():  # nothing to filter when every row is valid
        valid = valid.filter(is_valid)
    rejected = checked.select(*CANONICAL_COLUMNS, *extras, *REJECT_COLUMNS)
    rejected = rejected.filter(~is_valid) if not is_valid.all() else rejected.clear()
    out_lines = checked.select(
        *CANONICAL_COLUMNS,
        *extras,
        *_LINE_EXTRAS,
        pl.col("v_type").alias("transaction_type_normalized"),
        pl.col("v_store_id").alias("store"),
    )
    counted = checked.select("reject_code", "v_transaction_id", GROUP_ID, "amount", "source_file",
                             _TRANSACTION_CURRENCY)
    del checked  # validation's working columns are not needed any more: free them before normalize
    checkouts, items = normalize(valid, feed)
    checkouts = dedup(checkouts, known)
    summary = _summary(counted, checkouts, unreadable, read_stats, files_read)
    log.info(
        "transform: %d rows, %d valid transactions, %d rows rejected",
        summary["rows_in"],
        summary["transactions_valid"],
        summary["rows_rejected"],
    )
    return TransformResult(
        lines=out_lines,
        checkouts=checkouts,
        items=items,
        rejects=_rejects(rejected),
        unreadable=tuple(unreadable),
        summary=summary,
    )


def transform_files(
    paths: Sequence[Path],
    feed: Feed,
    *,
    known: pl.DataFrame | None = None,
    now: datetime,
    source_names: Sequence[str] | None = None,
    read_with: Sequence[Feed] | None = None,
) -> TransformResult:
    """Read every file and transform them together; unreadable files land in ``.unreadable``.

    Files are read in the order given; dedup marks a repeat in a later file as the duplicate.
    ``read_with`` gives the feed each file is read with (default: ``feed`` for all of them).
    """
    names = list(source_names) if source_names is not None else [p.name for p in paths]
    readers = list(read_with) if read_with is not None else [feed] * len(paths)
    frames: list[pl.DataFrame] = []
    unreadable: list[UnreadableFileError] = []
    read: list[str] = []
    stats = ReadStats()
    for path, name, reader in zip(paths, names, readers, strict=True):
        try:
            frames.append(read_file(path, reader, source_name=name, stats=stats))
        except UnreadableFileError as exc:
            log.warning("unreadable file %s: %s", exc.file, exc.reason)
            unreadable.append(exc)
        else:
            read.append(name)
    lines = pl.concat([empty_lines(), *frames], how="diagonal_relaxed") if frames else empty_lines()
    return transform(lines, feed, known=known, now=now, unreadable=unreadable, read_stats=stats,
                     files_read=read)


# schemas re-exported for callers that build empty results
CHECKOUT_COLUMNS = (*CHECKOUT_SCHEMA, "dedup_status")
ITEM_COLUMNS = tuple(CHECKOUT_ITEM_SCHEMA)
