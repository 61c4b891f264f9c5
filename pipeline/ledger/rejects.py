"""Rejects: every rejected input line with its original columns, the code, field and reason."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from pipeline.ledger.db import PAGE_ROWS, Db, pages
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
        self, *, run_id: str | None = None, feed: str | None = None, business_date: str | None = None
    ) -> list[dict[str, Any]]:
        """Rejected lines of a run, or of a feed's business date."""
        sql = "SELECT r.* FROM rejects r JOIN files f ON f.id = r.file_id WHERE 1=1"
        params: list[Any] = []
        if run_id:
            sql += " AND r.run_id = ?"
            params.append(run_id)
        if feed:
            sql += " AND f.feed = ?"
            params.append(feed)
        if business_date:
            sql += " AND r.business_date = ?"
            params.append(business_date)
        out = []
        for r in self._db.query(sql + " ORDER BY r.file_id, r.source_line, r.id", params):
            item = dict(r)
            item["original"] = json.loads(item["original"])
            item["amount"] = Decimal(item["amount"])
            out.append(item)
        return out

    def iter_rejects(
        self, *, run_id: str | None = None, feed: str | None = None, business_date: str | None = None,
        page_rows: int = PAGE_ROWS,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`rejects`, read ``page_rows`` rows at a time."""
        sql = "SELECT r.* FROM rejects r JOIN files f ON f.id = r.file_id WHERE 1=1"
        params: list[Any] = []
        for column, value in (("r.run_id", run_id), ("f.feed", feed), ("r.business_date", business_date)):
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        for r in pages(self._db, sql + " ORDER BY r.file_id, r.source_line, r.id", params, page_rows):
            item = dict(r)
            item["original"] = json.loads(item["original"])
            item["amount"] = Decimal(item["amount"])
            yield item
