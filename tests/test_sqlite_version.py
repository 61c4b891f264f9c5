"""The SQLite ledger needs SQLite 3.33 or newer (``UPDATE ... FROM``, which keeps a run's
outcomes at its end). Python's ``sqlite3`` is linked against whatever SQLite the machine's Python
was built with; an older one is refused when the ledger is opened, before anything is fetched or
sent, with the version found and the one needed, not at the end of a run that already sent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.ledger import Ledger
from pipeline.ledger.connection import MIN_SQLITE, sqlite_too_old


def test_the_minimum_is_the_first_sqlite_with_update_from() -> None:
    assert MIN_SQLITE == (3, 33, 0)
    assert sqlite_too_old((3, 32, 3), "3.32.3") is not None
    assert sqlite_too_old((3, 33, 0), "3.33.0") is None
    assert sqlite_too_old(sqlite3.sqlite_version_info, sqlite3.sqlite_version) is None  # this machine's


def test_a_ledger_opened_with_an_older_sqlite_is_refused_clearly(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigError) as refused:
        Ledger(tmp_path / "state" / "ledger.sqlite")
    text = str(refused.value)
    assert "SQLite 3.31.1" in text and "3.33" in text and "PostgreSQL" in text
    assert not (tmp_path / "state" / "ledger.sqlite").exists()  # nothing created


def test_the_ledgers_update_from_runs_on_this_sqlite(tmp_path: Path) -> None:
    """What the minimum is for: the statement that keeps a run's outcomes parses here."""
    with Ledger(tmp_path / "ledger.sqlite") as ledger, ledger._db.transaction() as db:
        db.execute("UPDATE run_transactions SET state_at_end = t.state FROM transactions t "
                   "WHERE t.id = run_transactions.txn_row_id AND run_transactions.run_id = ?", ("none",))
