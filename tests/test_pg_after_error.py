"""A PostgreSQL ledger's connection after a write transaction the server refused.

psycopg prepares a statement on the server once it has run it a few times on a connection, and
remembers that it did. In a pipeline, a statement queued after the refused one never reaches the
server, its preparation with it, while psycopg may still count it as prepared: the same ledger
must go on working all the same.
"""

from __future__ import annotations

import pytest

from pipeline.ledger import Ledger
from pipeline.ledger.errors import LedgerError
from tests.test_ledger import _ATTACH_A_MISSING_ROW, _MISSING_ROW, SCOPE, _finished_at, _queued

_STAMP = "UPDATE runs SET finished_at = ? WHERE id = ?"


def _refused(ledger: Ledger, run_id: str) -> None:
    """A write transaction whose bulk write a foreign key refuses (its row names no transaction):
    the refusal comes back once the ``COMMIT`` is queued behind it."""
    with pytest.raises(LedgerError, match="run_transactions"), ledger._db.transaction() as db:
        db.executemany(_ATTACH_A_MISSING_ROW, [(run_id, _MISSING_ROW)])


@pytest.mark.parametrize("good", range(8))
def test_writes_after_a_refused_bulk_write_work_on_the_same_ledger(postgres_db: str, good: int) -> None:
    """Refused writes with ``good`` write transactions between them (psycopg prepares a statement
    on its sixth run: for one of these counts that lands on the refused transaction's ``COMMIT``);
    after them, the same Ledger writes, reads and settles as before."""
    with Ledger(postgres_db) as ledger:
        run_id = _queued(ledger, "T1")
        _refused(ledger, run_id)
        _refused(ledger, run_id)
        for i in range(good):
            with ledger._db.transaction() as db:
                db.executemany(_STAMP, [(f"good {i}", run_id)])
        _refused(ledger, run_id)
        for i in range(8):
            with ledger._db.transaction() as db:
                db.executemany(_STAMP, [(f"after {i}", run_id)])
            assert _finished_at(ledger, run_id) == f"after {i}"
        ledger.start_sending(SCOPE, ["T1"], run_id)
        ledger.accept(SCOPE, "T1", run_id)
        assert ledger.state_counts(SCOPE) == {"accepted": 1}
        assert [r.id for r in ledger.runs()] == [run_id]


def test_a_row_with_two_columns_of_one_name_can_be_shown(postgres_db: str) -> None:
    """A join's two ``id`` columns: the row shows both (the first by its position), and by name
    reads the last, as psycopg's own rows do."""
    with Ledger(postgres_db) as ledger:
        run_id = ledger.start_run(feed="hourly", scope=SCOPE)
        row = ledger._db.one("SELECT r.id, r.feed, 7 AS id FROM runs r WHERE r.id = ?", (run_id,))
        assert row is not None
        assert repr(row) == f"PgRow({ {0: run_id, 'feed': 'hourly', 'id': 7}!r})"
        assert row["id"] == 7 and row[0] == run_id and row.keys() == ["id", "feed"]
