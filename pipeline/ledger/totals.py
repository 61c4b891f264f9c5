"""Input totals: rows, transactions and amount of each file per store and business date, what a
run's report balances against."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from pipeline.ledger.db import Db, chunks, marks


def insert_totals(
    db: Db, file_id: int, totals: Iterable[tuple[str, str, int, int, Decimal]]
) -> tuple[int, Decimal]:
    """Record a file's input totals (store_id, business_date, rows, transactions, amount); returns
    its rows and amount in all."""
    rows_in, amount_in = 0, Decimal(0)
    values = []
    for store_id, business_date, rows, count, amount in totals:
        values.append((file_id, store_id, business_date, rows, count, str(amount)))
        rows_in += rows
        amount_in += amount
    db.copy_rows("file_totals", ("file_id", "store_id", "business_date", "rows", "transactions", "amount"),
                 values)
    return rows_in, amount_in


class Totals:
    """Reading input totals (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def file_totals(self, file_ids: Iterable[int]) -> list[tuple[int, str, str, int, int, Decimal]]:
        """Input totals (file_id, store_id, business_date, rows, transactions, amount)."""
        ids = sorted(set(file_ids))
        out: list[tuple[int, str, str, int, int, Decimal]] = []
        for chunk in chunks(ids):
            for r in self._db.query(
                f"SELECT * FROM file_totals WHERE file_id IN ({marks(len(chunk))})", chunk
            ):
                out.append(
                    (r["file_id"], r["store_id"], r["business_date"], r["rows"], r["transactions"],
                     Decimal(r["amount"]))
                )
        return out
