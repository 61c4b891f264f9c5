"""The ledger's two backends as one fixture, so a suite runs against both without being copied.

``ledger_location`` (function): where a fresh, empty ledger goes, once per backend: ``sqlite``, the
file ``<tmp_path>/state/ledger.sqlite`` (the state folder's default ledger), and ``postgresql``, the
URL of a fresh database of the throwaway cluster (``tests/pg_cluster.py``). A test hands it to
:class:`~pipeline.ledger.Ledger`, or to a process as ``POSFEED_LEDGER_URL`` via :func:`ledger_env`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["ledger_env", "ledger_location", "stored_bytes"]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_db")
        return url
    return tmp_path / "state" / "ledger.sqlite"


def ledger_env(location: Path | str) -> dict[str, str]:
    """The environment a ``posfeed`` process needs for this ledger (the SQLite one is the default)."""
    return {} if isinstance(location, Path) else {"POSFEED_LEDGER_URL": location}


def stored_bytes(location: Path | str) -> bytes:
    """Everything a closed ledger stores, as bytes to search: the SQLite file and its write-ahead
    log (free pages and old page images included); for PostgreSQL, every value of every text
    column of every table."""
    if isinstance(location, Path):
        return b"".join(p.read_bytes() for p in (location, location.with_name(location.name + "-wal"))
                        if p.exists())
    import psycopg

    with psycopg.connect(location) as db:
        columns = db.execute("SELECT table_name, column_name FROM information_schema.columns "
                             "WHERE table_schema = current_schema() AND data_type = 'text'").fetchall()
        values = [value for table, column in columns
                  for (value,) in db.execute(f'SELECT "{column}" FROM "{table}"') if value is not None]
    return "\n".join(values).encode()
