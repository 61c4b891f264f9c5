"""The report stage's server work on PostgreSQL, statement against alternatives: a run's kept
outcomes (``UPDATE run_transactions ... = (SELECT ... FROM transactions ...)``) and the end-of-run
customer-id mask read, on a throwaway cluster with the ledger's own schema.

    python bench/report_server.py                       # 50,000 rows, 5 rounds
    python bench/report_server.py --rows 20000 --rounds 3

Each round records a fresh run of ``--rows`` rows in each membership table (as ``COPY`` does:
full pages) and times each form once, in turn; the medians are printed in microseconds per row
(wall time of the one statement, so the server's time plus one round trip).

The membership table ``run_transactions`` (run, row, origin, then the kept outcome columns) has
one index, its primary key (run_id, txn_row_id), and keeping the outcomes changes neither: with
room on the page (``fillfactor``) the update is HOT, no new index entry. Measured 2026-12-07 on
the shared 2-core machine, 50,000 rows, 5 rounds, medians in µs per row: subquery on full pages
6.91 (the ledger before migration 13), join 5.91, subquery with fillfactor 40 3.51, join with
fillfactor 40 2.48 (91% of updates HOT), join with fillfactor 30 2.41 (all HOT; the ledger
now), the outcomes inserted into a narrow table of their own 2.62; the mask read 6.62 as
``jsonb``, 5.33 as ``json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402

from pipeline.ledger import Ledger  # noqa: E402

_OUTCOME = ("state_at_end, attempts_at_end, error_code_at_end, error_message_at_end, event_ids_at_end, "
            "points_at_end, last_run_id_at_end, refunded_at_end")
_SOURCE = ("t.state, t.attempts, t.last_error_code, t.last_error_message, t.event_ids, t.points, "
           "t.last_run_id, t.refunded")
_SUBQUERY = (f"UPDATE {{table}} SET ({_OUTCOME}) = (SELECT {_SOURCE} FROM transactions t "
             "WHERE t.id = {table}.txn_row_id) WHERE run_id = %s")
_JOIN = (f"UPDATE {{table}} rt SET ({_OUTCOME}) = ({_SOURCE}) FROM transactions t "
         "WHERE t.id = rt.txn_row_id AND rt.run_id = %s")
_NARROW = (f"INSERT INTO run_outcomes (run_id, txn_row_id, {_OUTCOME}) SELECT rt.run_id, rt.txn_row_id, "
           f"{_SOURCE} FROM run_transactions rt JOIN transactions t ON t.id = rt.txn_row_id "
           "WHERE rt.run_id = %s")
_MASK_READ = ("SELECT t.id, (t.checkout::{kind} ->> 'customer_id') FROM run_transactions rt "
              "JOIN transactions t ON t.id = rt.txn_row_id WHERE rt.run_id = %s AND t.scope = 's' "
              "AND t.state IN ('accepted','not_sent','conflict','void') AND t.checkout IS NOT NULL")

FORMS = {
    "keep: subquery, full pages (before migration 13)": ("run_transactions", _SUBQUERY),
    "keep: join, full pages": ("run_transactions", _JOIN),
    "keep: subquery, fillfactor 40": ("run_transactions_ff", _SUBQUERY),
    "keep: join, fillfactor 30 (the ledger's)": ("run_transactions_ff30", _JOIN),
    "keep: join, fillfactor 40": ("run_transactions_ff", _JOIN),
    "keep: narrow table INSERT ... SELECT": ("run_transactions", _NARROW),
    "mask read: jsonb (before)": ("run_transactions", _MASK_READ.format(kind="jsonb")),
    "mask read: json (the ledger's)": ("run_transactions", _MASK_READ.format(kind="json")),
}


def _checkout(i: int) -> str:
    lines = [{"sku": f"SKU-{i % 977:05d}-{n}", "quantity": "1", "unit_price": "3.49", "amount": "3.49",
              "description": "Organic semi-skimmed milk 2L"} for n in range(4)]
    return json.dumps({"transaction_id": f"T{i:09d}", "store_id": f"S{i % 40:03d}",
                       "business_date": "2026-12-01", "customer_id": f"cust:{i:016x}", "currency": "GBP",
                       "amount": "13.96", "transaction_type": "sale", "lines": lines})


def _setup(url: str, rows: int) -> None:
    Ledger(url).close()  # the ledger's own schema
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) VALUES "
                     "('r0', 'f', 's', 'run', 'ok', 'x')")
        conn.execute("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, "
                     "updated_at) VALUES ('s', 'f', 'a.csv', 1, 0, 'h', 'done', 'r0', 'x')")
        file_id = conn.execute("SELECT id FROM files").fetchone()[0]  # type: ignore[index]
        with conn.cursor().copy(
            "COPY transactions (scope, feed, transaction_id, state, attempts, event_ids, points, file_id, "
            "source_file, source_lines, rows, store_id, business_date, transaction_type, currency, amount, "
            "checkout, first_run_id, last_run_id, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(rows):
                copy.write_row(("s", "f", f"T{i:09d}", "accepted", 1, f'["evt-{i:012d}"]', "14", file_id,
                                "a.csv", f"[{i * 4 + 2}, {i * 4 + 3}, {i * 4 + 4}, {i * 4 + 5}]", 4,
                                f"S{i % 40:03d}", "2026-12-01", "sale", "GBP", "13.96", _checkout(i),
                                "r0", "r0", "2026-12-01T02:00:00", "2026-12-01T02:00:00"))
        conn.execute("CREATE TABLE run_transactions_ff (LIKE run_transactions INCLUDING ALL) "
                     "WITH (fillfactor = 40)")
        conn.execute("CREATE TABLE run_transactions_ff30 (LIKE run_transactions INCLUDING ALL) "
                     "WITH (fillfactor = 30)")
        for table in ("run_transactions_ff", "run_transactions_ff30"):
            conn.execute(f"ALTER TABLE {table} ADD FOREIGN KEY (run_id) REFERENCES runs (id), "
                         "ADD FOREIGN KEY (txn_row_id) REFERENCES transactions (id)")
        outcome = ", ".join(c + " TEXT" for c in _OUTCOME.split(", "))
        conn.execute(f"CREATE TABLE run_outcomes (run_id TEXT NOT NULL, txn_row_id BIGINT NOT NULL, "
                     f"{outcome}, PRIMARY KEY (run_id, txn_row_id))")
        conn.execute("ALTER TABLE run_outcomes ALTER COLUMN attempts_at_end TYPE INTEGER "
                     "USING attempts_at_end::integer")
        conn.execute("VACUUM ANALYZE")


def _new_run(conn: psycopg.Connection[Any], run_id: str, table: str) -> None:
    """A run whose ``rows`` rows ``table`` holds, written as recording writes them (full pages)."""
    conn.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) VALUES "
                 "(%s, 'f', 's', 'run', 'ok', 'x')", (run_id,))
    conn.execute(f"INSERT INTO {table} (run_id, txn_row_id, origin) SELECT %s, id, 'new' "
                 "FROM transactions ORDER BY id", (run_id,))
    conn.execute(f"ANALYZE {table}")


def measure(url: str, rows: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per row of each form, one figure per round (each form on a run of its own)."""
    _setup(url, rows)
    times: dict[str, list[float]] = {name: [] for name in FORMS}
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(rounds):
            names = list(FORMS) if n % 2 == 0 else list(reversed(FORMS))
            for i, name in enumerate(names):
                table, sql = FORMS[name]
                run_id = f"run-{n}-{i}"
                _new_run(conn, run_id, table)
                conn.execute("CHECKPOINT")
                with conn.transaction():
                    start = time.perf_counter()
                    cursor = conn.execute(sql.format(table=table), (run_id,))
                    if cursor.description:
                        cursor.fetchall()
                    times[name].append((time.perf_counter() - start) * 1e6 / rows)
            hot = conn.execute("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                               "WHERE relname LIKE 'run_transactions%' ORDER BY relname").fetchall()
            hot_text = "; ".join(f"{r[0]} updates {r[1]} HOT {r[2]}" for r in hot)
            print(f"round {n + 1} (counts lag up to a second): {hot_text}", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a database of your own (default: a throwaway cluster)")
    args = parser.parse_args(argv)
    from postgres import _database  # bench/postgres.py's throwaway cluster

    with _database(args.url) as url:
        times = measure(url, args.rows, args.rounds)
    width = max(map(len, times))
    print(f"{'form':<{width}}  median µs/row  (each round)")
    for name, values in times.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:<{width}}  {statistics.median(values):13.2f}  ({each})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
