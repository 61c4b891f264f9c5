"""Transform stage: run the pure core over the staged files and record every row in the ledger.

Every input row ends up in exactly one ledger transaction row (an *occurrence*):

* a valid checkout that dedup calls new → ``queued`` (``void`` for a void: counted, never sent;
  coded ``void_of_sent_sale`` when the sale it names is already on the platform; a sale a void
  names, of the file or recorded before and not on the platform, is ``void`` too, coded
  ``post_voided``: never sent);
* a valid checkout dedup calls duplicate / conflict → ``duplicate`` / ``conflict``;
* rejected lines → one ``rejected`` row per transaction (``source_file``, ``transaction_id``; a
  line without an id stands alone), each line also kept in ``rejects`` with its original columns.

Each file's input totals (rows, transactions, amount per store, business date and currency) are computed
from its lines independently of those states, so the report can prove that nothing was lost.
"""

from __future__ import annotations

import json
import logging
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.checkout_codec import encode_checkouts
from pipeline.config import Feed
from pipeline.core.gunzip import read_size
from pipeline.core.parse import read_file
from pipeline.core.readstats import ReadStats
from pipeline.core.rejected_copies import EARLIER_REJECTS_SCHEMA, customer_columns, line_key
from pipeline.core.transform import REJECT_COLUMNS, TransformResult, empty_lines, transform
from pipeline.currencies import money_text
from pipeline.errors import UnreadableFileError
from pipeline.ledger import Ledger, NewReject, NewTransaction, TxnRecord, TxnState
from pipeline.ledger.states import POST_VOIDED, VOID_OF_SENT_SALE
from pipeline.ledger.voids import not_on_platform
from pipeline.logs import counted, log_event, mask_customer_id
from pipeline.memory import release_memory
from pipeline.progress import NullProgress, Progress
from pipeline.records import CANONICAL_COLUMNS, MONEY, DedupStatus, TransactionType
from pipeline.stages.fetch import StagedFile

__all__ = ["TransformOutcome", "customer_columns", "mask_result_customers", "records_of", "transform_staged"]

log = logging.getLogger(__name__)

_ZERO = Decimal("0")
# a line's currency as the ledger keeps it: trimmed, upper case, null when blank
_LINE_CURRENCY = (
    pl.when(pl.col("currency").str.strip_chars() == "").then(None)
    .otherwise(pl.col("currency").str.strip_chars().str.to_uppercase())
)


@dataclass
class TransformOutcome:
    """What the transform stage recorded."""

    # ledger row ids queued by this run (8 bytes each: a day's ids are not a list of int objects)
    to_send: MutableSequence[int] = field(default_factory=lambda: array("q"))
    unreadable: list[UnreadableFileError] = field(default_factory=list)
    read_stats: ReadStats = field(default_factory=ReadStats)  # skipped transactions, line items by kind


@dataclass
class FileRecords:
    """Everything one file contributes to the ledger."""

    transactions: list[NewTransaction]
    rejects: list[NewReject]
    totals: list[tuple[str, str, int, int, Decimal, str]]  # store, day, rows, transactions, amount, currency


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _state(status: str, transaction_type: str | None) -> TxnState:
    if status == DedupStatus.DUPLICATE:
        return TxnState.DUPLICATE
    if status == DedupStatus.CONFLICT:
        return TxnState.CONFLICT
    return TxnState.VOID if transaction_type == TransactionType.VOID else TxnState.QUEUED


def void_of_sent_sale(void: NewTransaction, sale: TxnRecord | None) -> NewTransaction:
    """``void`` with the code :data:`VOID_OF_SENT_SALE` when the sale it names is on the platform
    (accepted) as its file is recorded: a void is never sent, so nothing cancels or refunds that
    sale, and finance must act on it. A void of a sale not delivered yet stays a plain void."""
    if sale is None or sale.state is not TxnState.ACCEPTED or sale.transaction_type != TransactionType.SALE:
        return void
    return replace(void, error_code=VOID_OF_SENT_SALE, error_message=void_of_sent_sale_message(sale))


def void_of_sent_sale_message(sale: TxnRecord) -> str:
    """The message of a void naming ``sale``, which the platform holds."""
    events = f" (event ids {', '.join(sale.event_ids)})" if sale.event_ids else ""
    return (f"voided at the till after its sale {sale.transaction_id} reached the platform{events}: a "
            "void is never sent, so the sale stays there with its points; cancel or refund it on the "
            "platform, or send a return of it")


def post_voided(sale: NewTransaction, void_id: str) -> NewTransaction:
    """``sale`` settled ``void`` with the code :data:`POST_VOIDED`: a void names it and it is not
    on the platform, so it is never sent (as a POSLog post-voided transaction)."""
    return replace(sale, state=TxnState.VOID, error_code=POST_VOIDED,
                   error_message=post_void_message(void_id))


def post_void_message(void_id: str) -> str:
    """The message of a sale post-voided by the void ``void_id``."""
    return (f"voided at the till by {void_id} before it reached the platform: never sent (nothing to "
            "cancel or refund)")


def _is_sale(t: NewTransaction) -> bool:
    """A queued sale (what a void may name and stop)."""
    return (t.state is TxnState.QUEUED and t.transaction_type == TransactionType.SALE
            and bool(t.transaction_id))


def _voids_and_sales(ledger: Ledger, scope: str, records: FileRecords
                     ) -> tuple[FileRecords, list[tuple[int, str]]]:
    """A file's records with its voids and the sales they name decided, whichever comes first: a
    sale of the file a void names (of the file or of the ledger) is post-voided
    (:func:`post_voided`); a void naming a sale the platform holds is coded (:func:`void_of_sent_sale`);
    and the earlier sale rows (id, message) the file's voids name that are known not to be on the
    platform (:func:`~pipeline.ledger.voids.not_on_platform`), to post-void as the file is recorded.
    A void of a sale in doubt stays a plain void: the sale is settled first (it may have landed),
    then decided (:func:`pipeline.stages.voids.settle_voided_sales`). The ledger is asked only when
    the file has voids naming sales, or has sales and the scope holds such voids."""
    txns = records.transactions
    voids = {str(t.names): str(t.transaction_id) for t in txns if t.state is TxnState.VOID and t.names}
    sales = {str(t.transaction_id) for t in txns if _is_sale(t)}
    voided_here = {sale: void for sale, void in voids.items() if sale in sales}
    unvoided = sorted(sales - voided_here.keys())
    if unvoided and ledger.any_voids_naming(scope):
        for sale, earlier in ledger.voids_naming(scope, unvoided).items():
            voided_here[sale] = str(earlier[0].transaction_id)
    outside = [sale for sale in voids if sale not in sales]
    elsewhere = ledger.originals(scope, outside) if outside else {}
    txns[:] = [
        post_voided(t, voided_here[str(t.transaction_id)])
        if _is_sale(t) and str(t.transaction_id) in voided_here
        else void_of_sent_sale(t, elsewhere.get(str(t.names))) if t.state is TxnState.VOID and t.names
        else t
        for t in txns
    ]
    earlier_sales = [
        (sale.id, post_void_message(voids[tid])) for tid, sale in elsewhere.items()
        if sale.transaction_type == TransactionType.SALE and not_on_platform(sale)
    ]
    return records, earlier_sales


def _rows(frame: pl.DataFrame) -> Iterator[tuple[Any, ...]]:
    """The frame's rows as tuples (column by column to Python, then zipped: far cheaper than
    building a dict per row)."""
    return zip(*(column.to_list() for column in frame.iter_columns()), strict=True)


def records_of(result: TransformResult) -> dict[str, FileRecords]:
    """Split a transform result into ledger records per source file (frame order kept)."""
    lines = result.lines.with_columns(pl.col("amount").cast(MONEY))
    checkouts = result.checkouts.with_row_index("_rec")
    # every valid line points at its checkout; every rejected line at its rejected transaction
    valid_map = checkouts.select(
        "_rec", "source_file", pl.col("source_lines").alias("source_line")
    ).explode("source_line")
    tid = pl.col("transaction_id").str.strip_chars()
    # an exact repeat of a whole line (same line_no) is another copy of its transaction, as the
    # core counts it; a line without line_no is never a repeat
    canonical = [c for c in CANONICAL_COLUMNS if c in lines.columns]
    line_no = pl.col("line_no").str.strip_chars()
    copy = (
        pl.when(line_no.is_null() | (line_no == ""))
        .then(pl.lit(0, pl.Int64))
        .otherwise(pl.int_range(pl.len(), dtype=pl.Int64).over(["source_file", *canonical]))
    )
    rejected_lines = lines.with_columns(copy.alias("_copy")).filter(pl.col("reject_code").is_not_null())
    rejected_lines = rejected_lines.with_columns(
        pl.when(tid.is_null() | (tid == ""))
        .then(pl.format("#line {}", pl.col("source_line")))
        .otherwise(tid)
        .alias("_key")
    )
    rejected_groups = (
        rejected_lines.group_by("source_file", "_key", "_copy", maintain_order=True)
        .agg(
            pl.col("source_line"),
            pl.col("amount").sum().alias("amount"),
            pl.col("store").drop_nulls().first().alias("store"),
            pl.col("business_day").drop_nulls().first().alias("business_day"),
            pl.col("transaction_id").str.strip_chars().first().alias("transaction_id"),
            _LINE_CURRENCY.drop_nulls().first().alias("currency"),
            pl.col("transaction_type_normalized").drop_nulls().first().alias("transaction_type"),
            # the line that failed, not its siblings
            pl.col("reject_code").sort_by(pl.col("reject_code") == "R099_SIBLING_REJECTED").first(),
        )
        .with_row_index("_rej")
        .with_columns((pl.col("_rej") + checkouts.height).alias("_rec"))
    )
    reject_map = rejected_groups.select("_rec", "source_file", "source_line").explode("source_line")
    line_map = pl.concat([valid_map, reject_map.cast(valid_map.schema)])
    group_of = pl.concat(
        [
            checkouts.select(
                "_rec",
                pl.col("store_id").alias("g_store"),
                pl.col("business_date").alias("g_day"),
                pl.col("currency").alias("g_currency"),
            ),
            rejected_groups.select(
                pl.col("_rec").cast(pl.UInt32),
                pl.col("store").alias("g_store"),
                pl.col("business_day").alias("g_day"),
                pl.col("currency").alias("g_currency"),
            ),
        ]
    )
    # only the columns the totals need go through the joins (a line carries every export column)
    assigned = (
        lines.select("source_file", "source_line", "store", "business_day", "currency", "amount")
        .join(line_map, on=["source_file", "source_line"], how="left")
        .join(group_of, on="_rec", how="left")
    )
    assigned = assigned.with_columns(
        pl.when(pl.col("_rec").is_null()).then(pl.col("store")).otherwise(pl.col("g_store")).alias("g_store"),
        pl.when(pl.col("_rec").is_null()).then(pl.col("business_day")).otherwise(pl.col("g_day")).alias("g_day"),
        # a line counts in its transaction's currency (a row of the totals never mixes two)
        pl.when(pl.col("_rec").is_null()).then(_LINE_CURRENCY).otherwise(pl.col("g_currency"))
        .alias("g_currency"),
    )
    amount_of = assigned.group_by("_rec").agg(pl.col("amount").sum())
    amounts: dict[int, Decimal] = {
        int(r): a if a is not None else _ZERO for r, a in amount_of.iter_rows() if r is not None
    }
    totals = (
        assigned.group_by("source_file", "g_store", "g_day", "g_currency", maintain_order=True)
        .agg(
            pl.len().alias("rows"),
            # a line that belongs to no transaction counts as one on its own (and unbalances)
            (pl.col("_rec").drop_nulls().n_unique() + pl.col("_rec").null_count()).alias("transactions"),
            pl.col("amount").sum().alias("amount"),
        )
    )

    out: dict[str, FileRecords] = {}

    def of(name: str) -> FileRecords:
        return out.setdefault(name, FileRecords([], [], []))

    wanted = ["_rec", "transaction_id", "dedup_status", "transaction_type", "source_file", "source_lines",
              "store_id", "business_date", "currency", "content_hash", "original_transaction_id"]
    rows_out = checkouts.select(*wanted, encode_checkouts(checkouts.drop("_rec")).alias("_json"))
    for rec, tid, status, kind, source_file, lines_of, store, day, currency, content_hash, named, text in (
        _rows(rows_out)
    ):
        state = _state(status, kind)
        of(source_file).transactions.append(
            NewTransaction(
                transaction_id=tid,
                state=state,
                source_lines=tuple(lines_of),
                rows=len(lines_of),
                amount=amounts.get(rec, _ZERO),
                store_id=store,
                business_date=_iso(day),
                transaction_type=kind,
                currency=currency,
                content_hash=content_hash,
                # a void's names its sale (found by it whichever is recorded first)
                checkout=text if state in (TxnState.QUEUED, TxnState.CONFLICT) or (
                    state is TxnState.VOID and named) else None,
                names=named if state is TxnState.VOID and named else None,
            )
        )
    rejected_out = rejected_groups.select("source_file", "transaction_id", "source_line", "amount", "store",
                                          "business_day", "transaction_type", "currency", "reject_code")
    for source_file, tid, lines_of, amount, store, day, kind, currency, code in _rows(rejected_out):
        of(source_file).transactions.append(
            NewTransaction(
                transaction_id=tid or None,
                state=TxnState.REJECTED,
                source_lines=tuple(lines_of),
                rows=len(lines_of),
                amount=amount if amount is not None else _ZERO,
                store_id=store,
                business_date=_iso(day),
                transaction_type=kind,
                currency=currency,
                reject_code=code,
            )
        )
    originals = result.rejects.drop([c for c in REJECT_COLUMNS if c not in ("source_file", "source_line")])
    rejected_full = rejected_lines.select(
        "source_file", "source_line", "transaction_id", "store", "business_day", "reject_code",
        "reject_field", "reject_reason", "amount",
    ).join(originals, on=["source_file", "source_line"], how="left", suffix="__orig")
    original_cols = [c for c in originals.columns if c not in ("source_file", "source_line")]
    for row in rejected_full.iter_rows(named=True):
        original = {c: row[c + "__orig"] if c + "__orig" in row else row[c] for c in original_cols}
        of(row["source_file"]).rejects.append(
            NewReject(
                source_line=row["source_line"],
                transaction_id=(row["transaction_id"] or "").strip() or None,
                store_id=row["store"],
                business_date=_iso(row["business_day"]),
                code=row["reject_code"],
                field=row["reject_field"],
                reason=row["reject_reason"],
                amount=row["amount"] if row["amount"] is not None else _ZERO,
                original=original,
            )
        )
    for row in totals.iter_rows(named=True):
        of(row["source_file"]).totals.append(
            (
                row["g_store"] or "",
                _iso(row["g_day"]) or "",
                int(row["rows"]),
                int(row["transactions"]),
                row["amount"] if row["amount"] is not None else _ZERO,
                row["g_currency"] or "",
            )
        )
    return out


def _mask_reject_customers(records: FileRecords, feed: Feed) -> FileRecords:
    """The file's records with customer ids in the rejected lines' original columns hashed
    (``logging.hash_customer_ids``): they go to the ledger and to rejects.csv."""
    columns = customer_columns(feed)
    rejects = [
        replace(r, original={k: mask_customer_id(v) if k in columns and v else v
                             for k, v in r.original.items()})
        for r in records.rejects
    ]
    return FileRecords(records.transactions, rejects, records.totals)


def mask_result_customers(result: TransformResult, feed: Feed) -> TransformResult:
    """``result`` with every customer id hashed (checkouts, items, rejected lines), as a run's
    rejects.csv and settled ledger rows hold them; empty ids (guests) stay empty."""

    def masked(frame: pl.DataFrame, columns: set[str]) -> pl.DataFrame:
        present = [c for c in columns if c in frame.columns]
        return frame.with_columns(
            pl.col(c).replace({v: mask_customer_id(v) for v in frame[c].drop_nulls().unique() if v})
            for c in present
        )

    return replace(
        result,
        checkouts=masked(result.checkouts, {"customer_id"}),
        items=masked(result.items, {"customer_id"}),
        rejects=masked(result.rejects, customer_columns(feed)),
    )


def _log_file(feed: Feed, name: str, records: FileRecords, queued: int) -> None:
    """One line per file with its counts (and no row content: customer ids stay out of logs)."""
    states = Counter(str(t.state) for t in records.transactions)
    rows = sum(total[2] for total in records.totals)
    amounts: dict[str, Decimal] = {}  # per currency: never added across currencies
    for total in records.totals:
        amounts[total[5]] = amounts.get(total[5], Decimal(0)) + total[4]
    log_event(
        log, "file",
        f"{name}: {counted(rows, 'row')}, {counted(len(records.transactions), 'transaction')}, "
        f"{queued} queued, {counted(len(records.rejects), 'rejected row')}",
        feed=feed.name, file=name, rows=rows, transactions=len(records.transactions), queued=queued,
        rejected_rows=len(records.rejects), states=dict(sorted(states.items())),
        amounts={currency: money_text(amount, currency) for currency, amount in sorted(amounts.items())},
    )


def _read_staged(
    staged: Sequence[StagedFile], feed: Feed, stats: ReadStats | None = None
) -> tuple[pl.DataFrame, list[UnreadableFileError]]:
    """Read every staged file under its source name (as :func:`transform_files` does); unreadable
    files are collected, never raised."""
    frames: list[pl.DataFrame] = []
    unreadable: list[UnreadableFileError] = []
    for item in staged:
        try:
            frames.append(read_file(item.fetched.path, feed, source_name=item.record.name, stats=stats))
        except UnreadableFileError as exc:
            log.warning("unreadable file %s: %s", exc.file, exc.reason)
            unreadable.append(exc)
    lines = pl.concat([empty_lines(), *frames], how="diagonal_relaxed") if frames else empty_lines()
    return lines, unreadable


# files transformed together hold at most about this many bytes (≈ 95,000 lines of a typical
# export): a whole day is never in memory at once, and each step's tables stay small. The peak
# memory of a run follows this size (a 32 MiB group took 1.1 GiB at its peak, a 12 MiB one 0.5)
CHUNK_BYTES = 12 * 2**20
_PAGE_IDS = 10_000  # row ids checked against the ledger at a time


def _groups(staged: Sequence[StagedFile], max_bytes: int) -> Iterator[list[StagedFile]]:
    """Consecutive staged files, in order, in groups of at most ``max_bytes`` (a larger file
    alone), a gzipped file counting as what it decompresses to."""
    group: list[StagedFile] = []
    size = 0
    for item in staged:
        try:
            own = read_size(item.fetched.path, item.record.name)
        except OSError:  # the reader will say what is wrong with it
            own = item.record.size
        if group and size + own > max_bytes:
            yield group
            group, size = [], 0
        group.append(item)
        size += own
    if group:
        yield group


def transform_staged(
    ledger: Ledger,
    run_id: str,
    feed: Feed,
    staged: Sequence[StagedFile],
    *,
    now: datetime,
    progress: Progress | None = None,
    on_stage: Callable[[str, str], None] | None = None,
) -> TransformOutcome:
    """Transform the staged files and record them, one ledger transaction per file, in the order
    they were staged.

    Files are transformed in groups of about CHUNK_BYTES, each
    deduplicated against the scope's ledger, which by then holds the earlier groups: a transaction
    repeated in a later group is a duplicate, and one whose content disagrees with a version an
    earlier group of this run queued holds both versions as conflicts, as if they had been
    transformed together.
    ``on_stage(name, "start" | "end")`` brackets each group's ``transform`` and ``record`` steps."""
    progress = progress or NullProgress()
    hook = on_stage or (lambda stage, event: None)
    outcome = TransformOutcome()
    if not staged:
        return outcome
    progress.start("transform", len(staged))
    held_possible = False
    for number, group in enumerate(_groups(staged, CHUNK_BYTES)):
        conflicts = _transform_group(ledger, run_id, feed, group, now, outcome, progress, hook)
        held_possible = held_possible or (number > 0 and conflicts)
        ledger.release_memory()  # what the group left is given back before the next one
        release_memory()
    if held_possible:
        # a conflict in a later group may have held a version an earlier group queued
        # (checked a page at a time: no set of the whole day's ids)
        kept: array[int] = array("q")
        for start in range(0, len(outcome.to_send), _PAGE_IDS):
            page = outcome.to_send[start : start + _PAGE_IDS]
            queued = ledger.rows_in_state(page, TxnState.QUEUED)
            kept.extend(i for i in page if i in queued)
        outcome.to_send = kept
    progress.finish("transform")
    log.info("%s: %s queued from %s", feed.name, counted(len(outcome.to_send), "transaction"),
             counted(len(staged), "file"))
    return outcome


def _rejected_before(feed: Feed, found: Sequence[tuple[str, int, str, int | None, str, str]]) -> pl.DataFrame:
    """The lines of the scope's rejected transactions under a group's ids (``Earlier.rejected_lines``:
    earlier files, this run's earlier groups included), as
    :func:`~pipeline.core.rejected_copies.reject_fragments` reads them."""
    skip = customer_columns(feed)
    return pl.DataFrame(
        {
            "transaction_id": [f[0] for f in found],
            "occurrence": [str(f[1]) for f in found],
            "line_key": [line_key(json.loads(f[5]), skip) for f in found],
            "source_file": [f[2] for f in found],
            "source_line": [f[3] for f in found],
            "reject_code": [f[4] for f in found],
        },
        schema=EARLIER_REJECTS_SCHEMA,
    )


def _transform_group(
    ledger: Ledger,
    run_id: str,
    feed: Feed,
    staged: Sequence[StagedFile],
    now: datetime,
    outcome: TransformOutcome,
    progress: Progress,
    hook: Callable[[str, str], None],
) -> bool:
    """Transform and record one group of files into ``outcome``; True when it recorded a conflict."""
    conflicts = False
    hook("transform", "start")
    lines, unreadable_files = _read_staged(staged, feed, outcome.read_stats)
    # the ledger is asked once, only about the ids these files contain: for dedup and fragments
    ids = lines.get_column("transaction_id").drop_nulls()
    candidates = set(ids.to_list()) | set(ids.str.strip_chars().to_list())
    earlier = ledger.earlier(feed.scope, candidates)
    known = pl.DataFrame(
        {
            "transaction_id": [k[0] for k in earlier.known],
            "content_hash": [k[1] for k in earlier.known],
        },
        schema={"transaction_id": pl.String(), "content_hash": pl.String()},
    )
    result = transform(lines, feed, known=known, now=now, unreadable=unreadable_files,
                       rejected_before=_rejected_before(feed, earlier.rejected_lines))
    del lines
    unreadable = {e.file: e for e in result.unreadable}
    per_file = records_of(result)
    del result
    hook("transform", "end")
    hook("record", "start")
    for item in staged:
        error = unreadable.get(item.record.name)
        if error is not None:
            ledger.mark_file_unreadable(item.record.id, error.reason)
            outcome.unreadable.append(error)
        else:
            records = per_file.pop(item.record.name, FileRecords([], [], []))
            records, earlier_sales = _voids_and_sales(ledger, feed.scope, records)
            if feed.logging.hash_customer_ids:
                records = _mask_reject_customers(records, feed)
            queued = ledger.record_file(
                run_id,
                item.record,
                transactions=records.transactions,
                rejects=records.rejects,
                totals=records.totals,
                post_voided=earlier_sales,
            )
            if earlier_sales:  # a sale this run queued from an earlier file is not sent now
                voided = ledger.rows_in_state([i for i, _ in earlier_sales], TxnState.VOID)
                outcome.to_send[:] = array("q", (i for i in outcome.to_send if i not in voided))
            outcome.to_send.extend(queued)
            conflicts = conflicts or any(t.state is TxnState.CONFLICT for t in records.transactions)
            _log_file(feed, item.record.name, records, len(queued))
        progress.advance("transform")
    hook("record", "end")
    return conflicts
