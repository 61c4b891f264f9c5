"""A PostgreSQL ledger copied with PostgreSQL's own tools (``pg_dump``, then ``pg_restore`` into
an empty database) keeps its rows and its key checks: the checks are triggers, which a dump
restores after the rows (so the rows are not checked one table at a time, in the dump's order)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from pipeline.ledger import Ledger
from pipeline.ledger.schema import SCHEMA_VERSION
from tests.pg_cluster import PgCluster
from tests.test_ledger_keys import _refused, _setup


def _tool(cluster: PgCluster, name: str) -> str:
    return str(cluster.bin_dir / name)


def test_a_ledger_dumped_and_restored_into_an_empty_database_keeps_its_rows_and_checks(
    postgres_cluster: PgCluster, postgres_db: str, tmp_path: Path
) -> None:
    with Ledger(postgres_db) as ledger:
        file_id, txn = _setup(ledger)
        with ledger._db.transaction() as db:
            db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES ('r1', ?, 'file')",
                       (txn,))
            db.execute("INSERT INTO rejects (run_id, file_id, txn_row_id, source_file, source_line, code, "
                       "amount, original) VALUES ('r1', ?, ?, 'f.csv', 3, 'bad', '0', 'x')", (file_id, txn))
    dump = tmp_path / "ledger.dump"
    subprocess.run([_tool(postgres_cluster, "pg_dump"), "-Fc", "-f", str(dump), "-d", postgres_db],
                   check=True, capture_output=True)
    copy = postgres_cluster.create_database()
    restored = subprocess.run([_tool(postgres_cluster, "pg_restore"), "--exit-on-error", "-d", copy,
                               str(dump)], capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    with Ledger(copy) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        counts = [ledger._db.one(f"SELECT COUNT(*) FROM {t}")[0]  # type: ignore[index]
                  for t in ("runs", "files", "transactions", "run_transactions", "rejects")]
        assert counts == [1, 1, 1, 1, 1]
        _refused(ledger, lambda db: db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) "
                                               "VALUES ('r9', ?, 'retry')", (txn,)), column="run_id")
    with psycopg.connect(copy) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM pg_trigger WHERE tgname = 'runs_kept'").fetchone()
    assert kept == (1,)
    postgres_cluster.drop_database(copy)



def test_a_data_only_restore_is_refused_unless_its_triggers_are_disabled(
    postgres_cluster: PgCluster, postgres_db: str, tmp_path: Path
) -> None:
    """``pg_restore --data-only`` into a ledger posfeed created loads ``run_transactions`` before
    ``transactions``: the checks refuse it (nothing is half loaded by that table); with
    ``--disable-triggers`` (a superuser) every row is restored."""
    with Ledger(postgres_db) as ledger:
        _, txn = _setup(ledger)
        with ledger._db.transaction() as db:
            db.execute("INSERT INTO run_transactions (run_id, txn_row_id, origin) VALUES ('r1', ?, 'file')",
                       (txn,))
    dump = tmp_path / "ledger.dump"
    subprocess.run([_tool(postgres_cluster, "pg_dump"), "-Fc", "--data-only", "-f", str(dump),
                    "-d", postgres_db], check=True, capture_output=True)
    for options, refused in (([], True), (["--disable-triggers"], False)):
        copy = postgres_cluster.create_database()
        Ledger(copy).close()
        restored = subprocess.run([_tool(postgres_cluster, "pg_restore"), "--data-only", *options, "-d", copy,
                                   str(dump)], capture_output=True, text=True)
        assert (restored.returncode != 0) is refused, restored.stderr
        if refused:
            assert "run_transactions_txn_row_id_fkey" in restored.stderr, restored.stderr
        else:
            with Ledger(copy) as ledger:
                assert ledger._db.one("SELECT COUNT(*) FROM run_transactions")[0] == 1  # type: ignore[index]
        postgres_cluster.drop_database(copy)
