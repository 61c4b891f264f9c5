"""Returns and the sales they name: a return is decided against its sale and the sale's earlier
returns (read through the index of migration 6, by the sale named in the stored checkout)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

from pipeline.ledger.db import Db, Row, chunks, marks
from pipeline.ledger.records import TXN_COLUMNS, ReturnOf, TxnRecord, txn_record
from pipeline.ledger.states import PRIMARY_SQL, PRIMARY_STATES


def rows_naming(db: Db, scope: str, original_ids: Sequence[str], kind: Literal["return", "void"],
                columns: str = "", where: str = "") -> Iterator[Row]:
    """The rows of ``scope`` of transaction type ``kind`` whose stored checkout names one of
    ``original_ids`` (``original``: the id it names; ``columns`` beyond TXN_COLUMNS, ``where`` an
    extra term), in ledger order for each id. Read through the index of migration 6 (returns) or 10
    (voids): the named id in the database's own words for ORIGINAL_SQL and the type as a literal,
    word for word, so SQLite uses the partial index."""
    original = db.json_text("checkout", "original_transaction_id")
    for chunk in chunks(list(dict.fromkeys(original_ids))):  # each id in one chunk: its rows in order
        yield from db.query(
            f"SELECT {TXN_COLUMNS}{columns}, {original} AS original FROM transactions t WHERE t.scope = ? "
            f"AND {original} IN ({marks(len(chunk))}) AND transaction_type = '{kind}'{where} ORDER BY t.id",
            (scope, *chunk),
        )


class Returns:
    """Returns by sale (a part of :class:`~pipeline.ledger.Ledger`)."""

    _db: Db

    def returns_of(self, scope: str, original_ids: Sequence[str]) -> dict[str, list[ReturnOf]]:
        """Every return row of ``scope`` (any state, repeats included) naming one of
        ``original_ids``, by the original's id, in ledger order, with its stored checkout."""
        found: dict[str, list[ReturnOf]] = {}
        for row in rows_naming(self._db, scope, original_ids, "return", ", t.checkout, t.updated_at"):
            found.setdefault(row["original"], []).append(
                ReturnOf(txn_record(row, checkout=row["checkout"]), row["updated_at"]))
        return found

    def sales_with_checkouts(self, scope: str, transaction_ids: Sequence[str]) -> dict[str, TxnRecord]:
        """Like :meth:`originals`, with the stored checkout (a return is checked against its lines)."""
        found: dict[str, TxnRecord] = {}
        for chunk in chunks(list(dict.fromkeys(transaction_ids))):
            for row in self._db.query(
                f"SELECT {TXN_COLUMNS}, t.checkout FROM transactions t WHERE t.scope = ? "
                f"AND t.transaction_id IN ({marks(len(chunk))}) AND t.state IN {PRIMARY_SQL}",
                (scope, *chunk),
            ):
                found[row["transaction_id"]] = txn_record(row, checkout=row["checkout"])
        return found

    def returns_naming(self, scope: str, original_ids: Sequence[str]) -> dict[str, list[TxnRecord]]:
        """The recorded returns (primary rows, with checkouts) that name each of ``original_ids``
        as their sale, oldest first (:meth:`returns_of` without repeats and final duplicates)."""
        return {
            original: primary
            for original, rows in self.returns_of(scope, original_ids).items()
            if (primary := [r.record for r in rows if r.record.state in PRIMARY_STATES])
        }
