"""Reading transaction rows: by id, by run, by business date, for a rerun, counted by state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pipeline.ledger.db import PAGE_ROWS, Db, chunks, marks, pages
from pipeline.ledger.records import TXN_COLUMNS, TXN_COLUMNS_AT_END, TxnRecord, txn_record
from pipeline.ledger.states import PRIMARY_SQL, TxnState


class Transactions:
    """Reading transactions (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def originals(self, scope: str, transaction_ids: Sequence[str]) -> dict[str, TxnRecord]:
        """The primary rows of ``transaction_ids`` in ``scope``, by transaction id (e.g. the sales
        that returns name; a target that cancels purchases needs their platform event ids)."""
        found: dict[str, TxnRecord] = {}
        for chunk in chunks(list(dict.fromkeys(transaction_ids))):
            for row in self._db.query(
                f"SELECT {TXN_COLUMNS} FROM transactions t WHERE t.scope = ? "
                f"AND t.transaction_id IN ({marks(len(chunk))}) AND t.state IN {PRIMARY_SQL}",
                (scope, *chunk),
            ):
                found[row["transaction_id"]] = txn_record(row)
        return found

    def recorded_at(self, scope: str, transaction_ids: Sequence[str], *, last_changed: bool = False
                    ) -> dict[str, str]:
        """When the primary row of each of ``transaction_ids`` in ``scope`` was first recorded, or
        with ``last_changed`` last changed (for a row in doubt: when its last request may have gone
        out), ISO 8601 UTC, by transaction id."""
        column = "updated_at" if last_changed else "created_at"
        found: dict[str, str] = {}
        for chunk in chunks(list(dict.fromkeys(transaction_ids))):
            for row in self._db.query(
                f"SELECT transaction_id, {column} FROM transactions WHERE scope = ? "
                f"AND transaction_id IN ({marks(len(chunk))}) AND state IN {PRIMARY_SQL}",
                (scope, *chunk),
            ):
                found[row[0]] = row[1]
        return found

    def signups(self, scope: str, keys: Sequence[str]) -> dict[str, list[TxnRecord]]:
        """The sign-ups (primary ``enrollment`` rows) of each member key of ``scope``, oldest
        first: the row keyed ``key``, then its corrected sign-ups ``key+1``, ``key+2``... (each
        looked up by its exact key). A member the ledger holds no sign-up of is left out."""
        found: dict[str, list[TxnRecord]] = {}
        level = {key: key for key in keys}  # the ids to look up -> their member's key
        number = 0
        while level:
            ids = list(level)
            deeper: dict[str, str] = {}
            for chunk in chunks(ids):
                for row in self._db.query(
                    f"SELECT {TXN_COLUMNS} FROM transactions t WHERE t.scope = ? "
                    f"AND t.transaction_id IN ({marks(len(chunk))}) AND t.state IN {PRIMARY_SQL} "
                    "AND t.transaction_type = 'enrollment'",
                    (scope, *chunk),
                ):
                    record = txn_record(row)
                    member = level[str(record.transaction_id)]
                    found.setdefault(member, []).append(record)
                    deeper[f"{member}+{number + 1}"] = member
            level, number = deeper, number + 1
        return found

    def transactions_by_row_id(
        self, row_ids: Sequence[int], *, with_checkout: bool = False
    ) -> list[TxnRecord]:
        """Transaction rows by ledger id, in the given order."""
        cols = TXN_COLUMNS + (", t.checkout" if with_checkout else "")
        found: dict[int, TxnRecord] = {}
        for chunk in chunks(row_ids):
            for row in self._db.query(
                f"SELECT {cols} FROM transactions t WHERE t.id IN ({marks(len(chunk))})", chunk
            ):
                found[row["id"]] = txn_record(row, checkout=row["checkout"] if with_checkout else None)
        return [found[i] for i in row_ids if i in found]

    def rows_in_state(self, row_ids: Sequence[int], *states: TxnState) -> set[int]:
        """The ledger ids among ``row_ids`` whose transaction is in one of ``states``."""
        return self._ids_where(row_ids, f"state IN ({marks(len(states))})", [s.value for s in states])

    def rows_of_type(self, row_ids: Sequence[int], transaction_type: str) -> set[int]:
        """The ledger ids among ``row_ids`` whose transaction is of ``transaction_type``."""
        return self._ids_where(row_ids, "transaction_type = ?", (transaction_type,))

    def never_requested(self, row_ids: Sequence[int]) -> set[int]:
        """The ledger ids among ``row_ids`` queued without any request ever carrying them (attempts
        0): known not to be on the platform, so a void read later may still keep them off it."""
        return self._ids_where(row_ids, "state = 'queued' AND attempts = 0")

    def sales_in_doubt(self, row_ids: Sequence[int]) -> set[int]:
        """The sales among ``row_ids`` that a request carried (in doubt, or resent: they may have
        landed) and that no return in doubt among ``row_ids`` names (such a sale is read back with
        its return): a void read later may still keep one of them off the platform, by a lookup."""
        original = self._db.json_text("checkout", "original_transaction_id")
        sales: dict[int, str] = {}
        named: set[str] = set()
        for chunk in chunks(row_ids):
            sales.update((r[0], str(r[1])) for r in self._db.query(
                f"SELECT id, transaction_id FROM transactions WHERE id IN ({marks(len(chunk))}) "
                "AND transaction_type = 'sale' AND NOT (state = 'queued' AND attempts = 0)", chunk))
            named.update(str(r[0]) for r in self._db.query(
                f"SELECT {original} FROM transactions WHERE id IN ({marks(len(chunk))}) "
                "AND transaction_type = 'return' AND state = 'sending'", chunk) if r[0] is not None)
        return {i for i, tid in sales.items() if tid not in named}

    def returns_before_their_sale(self, scope: str, row_ids: Sequence[int], *,
                                  in_doubt: bool = False) -> set[int]:
        """The returns among ``row_ids`` not in doubt (``sending``; only those in doubt with
        ``in_doubt``) whose sale the ledger does not hold as accepted (not arrived, or not
        delivered yet): nothing says their sale is on the platform, so a run sends them after the
        sales its files bring (one in doubt once it is read back and found not to have landed)."""
        original = self._db.json_text("checkout", "original_transaction_id")
        doubt = "=" if in_doubt else "<>"
        named: dict[int, str] = {}
        for chunk in chunks(row_ids):
            named.update((r[0], r[1]) for r in self._db.query(
                f"SELECT id, {original} FROM transactions WHERE id IN ({marks(len(chunk))}) "
                f"AND transaction_type = 'return' AND state {doubt} 'sending'", chunk,
            ))
        sales = self.originals(scope, [str(n) for n in named.values() if n is not None])
        return {i for i, sale in named.items() if sale is None or sales.get(str(sale)) is None
                or sales[str(sale)].state is not TxnState.ACCEPTED}

    def waiting_for_sale(self, row_ids: Sequence[int]) -> set[int]:
        """The ledger ids among ``row_ids`` held waiting for their sale (``failed_retryable``,
        ``original_not_found``: nothing of them went out)."""
        return self._ids_where(row_ids,
                               "state = 'failed_retryable' AND last_error_code = 'original_not_found'")

    def _ids_where(self, row_ids: Sequence[int], condition: str, params: Sequence[Any] = ()) -> set[int]:
        """The ledger ids among ``row_ids`` whose row meets the SQL ``condition``."""
        found: set[int] = set()
        for chunk in chunks(row_ids):
            found.update(r[0] for r in self._db.query(
                f"SELECT id FROM transactions WHERE id IN ({marks(len(chunk))}) AND {condition}",
                (*chunk, *params),
            ))
        return found

    def run_transactions(self, run_id: str, *, at_end: bool = True) -> list[TxnRecord]:
        """The transactions a run handled, with their origin and (``at_end``) the outcome the run
        left them in: state, attempts, error, event ids, points and last run as of its end (the
        current ones while the run is still going), whatever later runs did."""
        columns = TXN_COLUMNS_AT_END if at_end else TXN_COLUMNS
        rows = self._db.query(
            f"SELECT {columns}, rt.origin, rt.state_at_end FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? ORDER BY t.file_id, t.id",
            (run_id,),
        )
        return [
            txn_record(r, origin=r["origin"], state=(r["state_at_end"] if at_end else None) or None)
            for r in rows
        ]

    def day_transactions(self, feed: str, business_date: str, *,
                         undated_files: Iterable[int] = ()) -> list[TxnRecord]:
        """Every transaction row of a feed's files for one business date, in its current state,
        and of the files in ``undated_files`` those with no business date (none readable)."""
        sql, params = _day_sql(feed, business_date, undated_files)
        return [txn_record(r, origin="file") for r in self._db.query(sql, params)]

    def iter_run_transactions(self, run_id: str, *, at_end: bool = True,
                              page_rows: int = PAGE_ROWS) -> Iterator[TxnRecord]:
        """:meth:`run_transactions`, read ``page_rows`` rows at a time: only one page is in memory.
        Consume it (or close it) before the next write to the ledger."""
        columns = TXN_COLUMNS_AT_END if at_end else TXN_COLUMNS
        for r in pages(
            self._db,
            f"SELECT {columns}, rt.origin, rt.state_at_end FROM run_transactions rt "
            "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = ? ORDER BY t.file_id, t.id",
            (run_id,), page_rows,
        ):
            yield txn_record(r, origin=r["origin"], state=(r["state_at_end"] if at_end else None) or None)

    def iter_day_transactions(self, feed: str, business_date: str, *, undated_files: Iterable[int] = (),
                              page_rows: int = PAGE_ROWS) -> Iterator[TxnRecord]:
        """:meth:`day_transactions`, read ``page_rows`` rows at a time."""
        sql, params = _day_sql(feed, business_date, undated_files)
        for r in pages(self._db, sql, params, page_rows):
            yield txn_record(r, origin="file")

    def run_file_ids(self, run_id: str) -> set[int]:
        """The files whose rows came in with a run (its transactions of origin ``file``)."""
        return {r[0] for r in self._db.query(
            "SELECT DISTINCT t.file_id FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
            "WHERE rt.run_id = ? AND rt.origin = 'file'", (run_id,))}

    def day_file_ids(self, feed: str, business_date: str) -> set[int]:
        """The files with rows of a feed's business date."""
        return {r[0] for r in self._db.query(
            "SELECT DISTINCT file_id FROM transactions WHERE feed = ? AND business_date = ?",
            (feed, business_date))}

    def undated_file_ids(self, feed: str) -> set[int]:
        """The feed's files with rows of no business date (no date readable: rejected)."""
        return {r[0] for r in self._db.query(
            "SELECT DISTINCT file_id FROM transactions WHERE feed = ? "
            "AND (business_date IS NULL OR business_date = '')", (feed,))}

    def file_business_dates(self, file_id: int) -> list[str]:
        """The business dates of a file's rows, oldest first (rows of no date left out)."""
        return [r[0] for r in self._db.query(
            "SELECT DISTINCT business_date FROM transactions WHERE file_id = ? "
            "AND business_date IS NOT NULL AND business_date <> '' ORDER BY business_date", (file_id,))]

    def release_memory(self) -> None:
        """Give back what the database holds in memory and does not need (SQLite's unused page
        cache), where it can: between the groups of a stage."""
        release = getattr(self._db, "release_memory", None)
        if release is not None:
            release()

    def select_for_rerun(
        self,
        scope: str,
        *,
        run_id: str | None = None,
        file: str | None = None,
        store_id: str | None = None,
        business_date: str | None = None,
        include_permanent: bool = False,
        feed: str | None = None,
    ) -> list[int]:
        """Primary rows of ``scope`` matching the selection whose state a rerun may resend:
        failed_retryable (and failed_permanent with ``include_permanent``). Never accepted."""
        states = ["failed_retryable"] + (["failed_permanent"] if include_permanent else [])
        where, params = _selection_sql(scope, run_id=run_id, file=file, store_id=store_id,
                                       business_date=business_date, feed=feed)
        sql = f"SELECT t.id FROM transactions t WHERE {where} AND t.state IN ({marks(len(states))})"
        return [r[0] for r in self._db.query(sql + " ORDER BY t.id", [*params, *states])]

    def selection_holds(
        self,
        scope: str,
        *,
        run_id: str | None = None,
        file: str | None = None,
        store_id: str | None = None,
        business_date: str | None = None,
        feed: str | None = None,
    ) -> bool:
        """Whether any transaction of ``scope`` (in any state) matches every criterion given: a
        rerun's selection that holds none names something the ledger does not know."""
        where, params = _selection_sql(scope, run_id=run_id, file=file, store_id=store_id,
                                       business_date=business_date, feed=feed)
        return self._db.one(f"SELECT 1 FROM transactions t WHERE {where} LIMIT 1", params) is not None

    def state_counts(self, scope: str) -> dict[str, int]:
        """How many rows of ``scope`` are in each state."""
        rows = self._db.query(
            "SELECT state, COUNT(*) FROM transactions WHERE scope = ? GROUP BY state", (scope,)
        )
        return {r[0]: r[1] for r in rows}


def _selection_sql(
    scope: str,
    *,
    run_id: str | None,
    file: str | None,
    store_id: str | None,
    business_date: str | None,
    feed: str | None,
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a rerun's selection in ``scope``."""
    sql = "t.scope = ?"
    params: list[Any] = [scope]
    if run_id:
        sql += " AND t.id IN (SELECT txn_row_id FROM run_transactions WHERE run_id = ?)"
        params.append(run_id)
    for column, value in (("source_file", file), ("store_id", store_id),
                          ("business_date", business_date), ("feed", feed)):
        if value:
            sql += f" AND t.{column} = ?"
            params.append(value)
    return sql, params


def _day_sql(feed: str, business_date: str, undated_files: Iterable[int]) -> tuple[str, list[Any]]:
    """The query of a business day's transactions (those of no date, of ``undated_files``, too)."""
    undated = sorted(set(undated_files))
    sql = f"SELECT {TXN_COLUMNS} FROM transactions t WHERE t.feed = ? AND (t.business_date = ?"
    params: list[Any] = [feed, business_date]
    if undated:
        sql += (f" OR ((t.business_date IS NULL OR t.business_date = '') "
                f"AND t.file_id IN ({marks(len(undated))}))")
        params += undated
    return sql + ") ORDER BY t.file_id, t.id", params
