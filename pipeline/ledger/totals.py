"""Input totals: rows, transactions and amount of each file per store, business date and
currency, what a run's report balances against."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from pipeline.ledger.db import Db, chunks, marks

# (store_id, business_date, rows, transactions, amount[, currency])
Total = tuple[str, str, int, int, Decimal] | tuple[str, str, int, int, Decimal, str]


def insert_totals(db: Db, file_id: int, totals: Iterable[Total]) -> tuple[int, Decimal]:
    """Record a file's input totals (store_id, business_date, rows, transactions, amount and an
    optional currency); returns its rows and amount in all."""
    rows_in, amount_in = 0, Decimal(0)
    for store_id, business_date, rows, count, amount, *rest in totals:
        currency = (rest[0] if rest else "") or ""
        db.execute(
            "INSERT INTO file_totals (file_id, store_id, business_date, currency, rows, "
            "transactions, amount) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (file_id, store_id, business_date, currency, rows, count, str(amount)),
        )
        rows_in += rows
        amount_in += amount
    return rows_in, amount_in


class Totals:
    """Reading input totals (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def file_totals(self, file_ids: Iterable[int]) -> list[tuple[int, str, str, int, int, Decimal]]:
        """Input totals (file_id, store_id, business_date, rows, transactions, amount), all
        currencies of a store and day together (:meth:`currency_totals` keeps them apart)."""
        merged: dict[tuple[int, str, str], tuple[int, int, Decimal]] = {}
        for file_id, store, day, _currency, rows, count, amount in self.currency_totals(file_ids):
            before = merged.get((file_id, store, day), (0, 0, Decimal(0)))
            merged[(file_id, store, day)] = (before[0] + rows, before[1] + count, before[2] + amount)
        return [(*key, *value) for key, value in merged.items()]

    def currency_totals(self, file_ids: Iterable[int]) -> list[tuple[int, str, str, str, int, int, Decimal]]:
        """Input totals per currency (file_id, store_id, business_date, currency, rows,
        transactions, amount); currency '' where the rows name none."""
        ids = sorted(set(file_ids))
        out: list[tuple[int, str, str, str, int, int, Decimal]] = []
        for chunk in chunks(ids):
            for r in self._db.query(
                f"SELECT * FROM file_totals WHERE file_id IN ({marks(len(chunk))}) "
                "ORDER BY file_id, store_id, business_date, currency", chunk
            ):
                out.append(
                    (r["file_id"], r["store_id"], r["business_date"], r["currency"], r["rows"],
                     r["transactions"], Decimal(r["amount"]))
                )
        return out
