"""Rejects: every rejected input line with its original columns, the code, field and reason."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from pipeline.ledger.db import PAGE_ROWS, Db, marks, pages
from pipeline.ledger.records import FileRecord, NewReject


def insert_rejects(
    db: Db, run_id: str, file: FileRecord, rejects: Iterable[NewReject], row_of_line: Mapping[int, int]
) -> None:
    """Record a file's rejected lines; ``row_of_line`` is the rejected transaction row of a line."""
    db.copy_rows(
        "rejects",
        ("run_id", "file_id", "txn_row_id", "source_file", "source_line", "transaction_id", "store_id",
         "business_date", "code", "field", "reason", "amount", "original"),
        [
            (
                run_id,
                file.id,
                row_of_line.get(r.source_line) if r.source_line is not None else None,
                file.name,
                r.source_line,
                r.transaction_id,
                r.store_id,
                r.business_date,
                r.code,
                r.field,
                r.reason,
                str(r.amount),
                json.dumps(r.original, ensure_ascii=False, default=str),
            )
            for r in rejects
        ],
    )


class Rejects:
    """Reading rejected lines (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def rejects(
        self, *, run_id: str | None = None, feed: str | None = None, business_date: str | None = None,
        undated_files: Iterable[int] = (),
    ) -> list[dict[str, Any]]:
        """Rejected lines of a run, or of a feed's business date: every line of the transactions
        of that date (a line counts in its transaction's date, its own date unreadable or not),
        and, of the files in ``undated_files``, the lines of transactions with no date at all."""
        sql, params = _rejects_sql(run_id, feed, business_date, undated_files)
        return [_reject(r) for r in self._db.query(sql, params)]

    def iter_rejects(
        self, *, run_id: str | None = None, feed: str | None = None, business_date: str | None = None,
        undated_files: Iterable[int] = (), page_rows: int = PAGE_ROWS,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`rejects`, read ``page_rows`` rows at a time."""
        sql, params = _rejects_sql(run_id, feed, business_date, undated_files)
        for r in pages(self._db, sql, params, page_rows):
            yield _reject(r)


# a rejected line's business date: its transaction's (else its own, as recorded)
_DAY_OF_REJECT = "COALESCE(NULLIF(t.business_date, ''), NULLIF(r.business_date, ''))"


def _rejects_sql(
    run_id: str | None, feed: str | None, business_date: str | None, undated_files: Iterable[int]
) -> tuple[str, list[Any]]:
    sql = ("SELECT r.* FROM rejects r JOIN files f ON f.id = r.file_id "
           "LEFT JOIN transactions t ON t.id = r.txn_row_id WHERE 1=1")
    params: list[Any] = []
    for column, value in (("r.run_id", run_id), ("f.feed", feed)):
        if value:
            sql += f" AND {column} = ?"
            params.append(value)
    if business_date:
        undated = sorted(set(undated_files))
        sql += f" AND ({_DAY_OF_REJECT} = ?"
        params.append(business_date)
        if undated:
            sql += f" OR ({_DAY_OF_REJECT} IS NULL AND r.file_id IN ({marks(len(undated))}))"
            params += undated
        sql += ")"
    return sql + " ORDER BY r.file_id, r.source_line, r.id", params


def _reject(row: Any) -> dict[str, Any]:
    item = dict(row)
    item["original"] = json.loads(item["original"])
    item["amount"] = Decimal(item["amount"])
    return item
