"""What a narrower transaction row would buy a PostgreSQL ledger, measured against SQLite.

    python bench/row_designs.py                       # 20,000 transactions, 3 rounds
    python bench/row_designs.py --transactions 50000 --rounds 5
    python bench/row_designs.py --url postgresql://...  # a server of your own (tables are dropped)

PostgreSQL's ledger is slower than SQLite's by more than its round trips mostly in the server's
own work per row (see docs/BENCHMARKS.md, Scaling). Each update of a transaction writes a new
version of its whole row (the stored checkout included) into the heap and into each of its
indexes, because its ``state`` is indexed; masking the customer id rewrites the checkout's JSON.
This script measures that cost where the ledger pays it, and the cost of the alternative schema:

* **today**: the ledger's own ``transactions`` table, made by its own migrations, written by its
  own code: the ``COPY`` of a file's rows, then the submit stage's commits (``start_sending`` with
  the previous request's answers settled and their customer ids masked) in requests of 50.
* **today, foreign keys unchecked**: the same, with the table's foreign keys (its runs, its file,
  a duplicate's primary) not checked: what the checks cost each backend.
* **foreign keys checked per row**: the same, on PostgreSQL with the table's foreign keys as they
  were up to schema version 13 (one constraint trigger per row and key, each a
  ``SELECT ... FOR KEY SHARE`` of the parent) instead of the checks once per statement of version
  13; on SQLite the same as today.
* **narrow**: the same rows split in two, the written-once record (its checkout without the
  customer id) and a narrow row of what changes (state, attempts, answers, the customer id; on
  PostgreSQL with room for updates in place), written through the ledger's own connection with
  the same statements, transactions and round trips as today.
* **narrow, one statement**: the same, a request's answers settled by one
  ``UPDATE ... FROM (VALUES ...)`` instead of one pipelined statement each (whose count of rows
  the ledger would check: one more round trip per request).

Each design runs on a fresh SQLite ledger and a fresh PostgreSQL database, alternately, for
``--rounds`` rounds; the figures are medians in microseconds per transaction. *Beyond* is
PostgreSQL minus SQLite minus its round trips (timed as ``SELECT 1`` on the same connection).
Without ``--url`` a throwaway cluster starts with the settings of ``bench/postgres.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from postgres import _database  # noqa: E402  (the throwaway cluster of bench/postgres.py)

from pipeline.ledger import Ledger  # noqa: E402
from pipeline.ledger.db import Db, marks, round_trips  # noqa: E402
from pipeline.ledger.postgres import TABLES  # noqa: E402
from pipeline.ledger.schema import postgres_text  # noqa: E402
from pipeline.ledger.states import PRIMARY_SQL, SENDABLE_SQL  # noqa: E402
from pipeline.records import EventResult, Outcome  # noqa: E402

# seconds to record, seconds of the submit stage's commits, their round trips
Design = Callable[["Ledger", "Db", int], tuple[float, float, int]]
REQUEST = 50  # transactions per request, as the sinks batch them
SCOPE, FEED, RUN, FILE_RUN = "bench", "bench", "run-2", "run-1"
RECORD_COLUMNS = ("scope", "feed", "transaction_id", "content_hash", "primary_id", "file_id", "source_file",
                  "source_lines", "rows", "store_id", "business_date", "transaction_type", "currency",
                  "amount", "reject_code")
NARROW_SCHEMA = """
CREATE TABLE narrow_records (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, feed TEXT NOT NULL, transaction_id TEXT,
    content_hash TEXT, primary_id INTEGER REFERENCES narrow_records (id),
    file_id INTEGER NOT NULL REFERENCES files (id), source_file TEXT NOT NULL,
    source_lines TEXT NOT NULL, rows INTEGER NOT NULL, store_id TEXT, business_date TEXT,
    transaction_type TEXT, currency TEXT, amount TEXT NOT NULL, reject_code TEXT,
    original_transaction_id TEXT, checkout TEXT, first_run_id TEXT NOT NULL REFERENCES runs (id),
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX narrow_primary ON narrow_records (scope, transaction_id)
    WHERE primary_id IS NULL AND reject_code IS NULL;
CREATE INDEX narrow_file ON narrow_records (file_id);
CREATE INDEX narrow_day ON narrow_records (feed, business_date);
CREATE INDEX narrow_tid ON narrow_records (scope, transaction_id);
CREATE INDEX narrow_returns_of ON narrow_records (scope, original_transaction_id)
    WHERE transaction_type = 'return';
CREATE TABLE narrow_states (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, retry_class TEXT, last_error_code TEXT,
    last_error_message TEXT, event_ids TEXT, points TEXT, customer_id TEXT,
    last_run_id TEXT NOT NULL REFERENCES runs (id), updated_at TEXT NOT NULL
);
CREATE INDEX narrow_scope_state ON narrow_states (scope, state)
"""


def checkout(number: int, customer: bool = True) -> str:
    """A stored checkout of about the size of a real one (three lines)."""
    body: dict[str, Any] = {"transaction_id": f"T{number:09d}", "store_id": "S001",
                            "business_date": "2026-11-20", "transaction_type": "sale", "currency": "EUR",
                            "total": "12.34"}
    if customer:
        body["customer_id"] = f"C{number % 5000:07d}"
    body["items"] = [{"line_number": n, "product_id": f"P{n:05d}", "name": "A product with a name",
                      "quantity": "1", "unit_price": "4.11", "line_total": "4.11", "discount": "0.00"}
                     for n in range(1, 4)]
    return json.dumps(body)


def record_row(number: int, file_id: int) -> tuple[Any, ...]:
    return (SCOPE, FEED, f"T{number:09d}", f"h{number}", None, file_id, "day.csv", json.dumps([number]), 3,
            "S001", "2026-11-20", "sale", "EUR", "12.34", None)


def prepare(db: Db) -> int:
    """The run and file rows the transactions name; the file's id."""
    now = "2026-12-06T00:00:00Z"
    for run in (FILE_RUN, RUN):
        db.execute("INSERT INTO runs (id, feed, scope, kind, status, started_at) VALUES (?, ?, ?, 'run', "
                   "'running', ?)", (run, FEED, SCOPE, now))
    return db.insert("INSERT INTO files (scope, feed, name, size, mtime, sha256, status, first_run_id, "
                     "updated_at) VALUES (?, ?, 'day.csv', 1, 0, 'x', 'fetched', ?, ?)",
                     (SCOPE, FEED, FILE_RUN, now))


def answers(tids: Sequence[str]) -> list[EventResult]:
    return [EventResult(t, Outcome.ACCEPTED, ("event",), Decimal(10), None, None) for t in tids]


def requests(count: int) -> Iterator[list[str]]:
    for start in range(0, count, REQUEST):
        yield [f"T{n:09d}" for n in range(start, min(count, start + REQUEST))]


def today(ledger: Ledger, db: Db, count: int) -> tuple[float, float, int]:
    """The ledger's own table and code: seconds to record, seconds of the submit stage's commits
    and their round trips."""
    file_id = prepare(db)
    columns = (*RECORD_COLUMNS, "state", "checkout", "first_run_id", "last_run_id", "created_at",
               "updated_at")
    start = time.perf_counter()
    with db.transaction():
        db.copy_rows("transactions", columns, [(*record_row(n, file_id), "queued", checkout(n), FILE_RUN,
                                                 FILE_RUN, "now", "now") for n in range(count)])
    recorded, trips = time.perf_counter(), round_trips()
    settled: list[EventResult] = []
    for tids in requests(count):
        masks = {r.transaction_id: "masked" for r in settled}
        ledger.start_sending(SCOPE, tids, RUN, settled=settled, masks=masks)
        settled = answers(tids)
    ledger.apply_results(SCOPE, settled, RUN, masks={r.transaction_id: "masked" for r in settled})
    done = time.perf_counter(), round_trips() - trips
    settled_rows = db.one(f"SELECT COUNT(*) FROM transactions WHERE state = 'accepted' AND attempts = 1 "
                          f"AND {db.json_text('checkout', 'customer_id')} = 'masked'")
    return _checked(settled_rows, count, recorded - start, done[0] - recorded, done[1])


# the transactions table's foreign-key constraints (none from schema version 14 on) and its
# enabled triggers of the ledger's own (the checks once per statement of version 14)
_PG_CHECKS = ("SELECT (SELECT COUNT(*) FROM pg_constraint WHERE contype = 'f' "
              "AND conrelid = CAST('transactions' AS regclass)) AS constraints, "
              "(SELECT COUNT(*) FROM pg_trigger WHERE tgrelid = CAST('transactions' AS regclass) "
              "AND NOT tgisinternal AND tgenabled <> 'D') AS triggers")


def without_foreign_keys(ledger: Ledger, db: Db, count: int) -> tuple[float, float, int]:
    """:func:`today` with the transactions table's foreign keys not checked (their checks dropped
    or disabled on PostgreSQL, ``PRAGMA foreign_keys`` off on SQLite): what checking them costs."""
    if db.dialect == "postgresql":
        for row in db.query("SELECT conname FROM pg_constraint WHERE contype = 'f' "
                            "AND conrelid = CAST('transactions' AS regclass)"):
            db.execute(f'ALTER TABLE transactions DROP CONSTRAINT "{row[0]}"')
        db.execute("ALTER TABLE transactions DISABLE TRIGGER USER")
        checks = db.one(_PG_CHECKS)
        left = None if checks is None else (int(checks[0]) + int(checks[1]),)
    else:
        db.execute("PRAGMA foreign_keys = OFF")
        left = db.one("PRAGMA foreign_keys")
    if left is None or int(left[0]):
        raise SystemExit(f"{db.dialect}: the transactions' foreign keys are still checked")
    return today(ledger, db, count)


def per_row_foreign_keys(ledger: Ledger, db: Db, count: int) -> tuple[float, float, int]:
    """:func:`today` with the transactions table's foreign keys checked per row on PostgreSQL, as
    up to schema version 13 (its checks once per statement dropped, its constraints made again);
    SQLite's are per row either way."""
    if db.dialect == "postgresql":
        for row in db.query("SELECT t.tgname FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid "
                            "WHERE t.tgrelid = CAST('transactions' AS regclass) "
                            "AND f.proname LIKE 'posfeed_check_%'"):
            db.execute(f'DROP TRIGGER "{row[0]}" ON transactions')
        db.execute("ALTER TABLE transactions ADD FOREIGN KEY (primary_id) REFERENCES transactions (id), "
                   "ADD FOREIGN KEY (file_id) REFERENCES files (id), "
                   "ADD FOREIGN KEY (first_run_id) REFERENCES runs (id), "
                   "ADD FOREIGN KEY (last_run_id) REFERENCES runs (id)")
        checks = db.one(_PG_CHECKS)
        # left: the guards refusing a DELETE or a change of id (transactions_kept, _id_kept)
        if checks is None or int(checks[0]) != 4 or int(checks[1]) != 2:
            raise SystemExit("postgresql: the transactions' foreign keys are not as up to version 13: "
                             f"{tuple(checks or ())}")
    return today(ledger, db, count)


SETTLE = ("UPDATE narrow_states SET state = ?, retry_class = ?, last_run_id = ?, updated_at = ?, "
          "event_ids = COALESCE(?, event_ids), points = COALESCE(?, points), last_error_code = ?, "
          "last_error_message = ?, customer_id = COALESCE(?, customer_id) WHERE id = ?")
SETTLE_FROM_VALUES = (
    "UPDATE narrow_states SET state = v.column1, retry_class = v.column2, last_run_id = v.column3, "
    "updated_at = v.column4, event_ids = COALESCE(v.column5, event_ids), points = COALESCE(v.column6, "
    "points), last_error_code = v.column7, last_error_message = v.column8, customer_id = "
    "COALESCE(v.column9, customer_id) FROM (VALUES ")
VALUES_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS BIGINT))"


def narrow(ledger: Ledger, db: Db, count: int, *, one_statement: bool = False) -> tuple[float, float, int]:
    """The narrow design through the same connection, measured as :func:`today`; with
    ``one_statement``, a request's answers are settled by one ``UPDATE ... FROM (VALUES ...)``."""
    file_id = prepare(db)
    with db.transaction():
        for statement in NARROW_SCHEMA.split(";"):
            db.execute(postgres_text(statement) if db.dialect == "postgresql" else statement)
        if db.dialect == "postgresql":  # room on each page, so an update can stay on its page
            db.execute("ALTER TABLE narrow_states SET (fillfactor = 80)")
    start = time.perf_counter()
    with db.transaction():
        db.copy_rows("narrow_records", ("id", *RECORD_COLUMNS, "checkout", "first_run_id", "created_at"),
                     [(n + 1, *record_row(n, file_id), checkout(n, customer=False), FILE_RUN, "now")
                      for n in range(count)])
        db.copy_rows("narrow_states", ("id", "scope", "state", "customer_id", "last_run_id", "updated_at"),
                     [(n + 1, SCOPE, "queued", f"C{n % 5000:07d}", FILE_RUN, "now") for n in range(count)])
    recorded, trips = time.perf_counter(), round_trips()
    primary = "r.primary_id IS NULL AND r.reject_code IS NULL"
    settled: list[str] = []
    for tids in [*requests(count), []]:
        with db.transaction() as t:
            if settled:
                rows = t.query(f"SELECT r.id, s.state FROM narrow_records r JOIN narrow_states s "
                               f"ON s.id = r.id WHERE r.scope = ? AND r.transaction_id IN "
                               f"({marks(len(settled))}) AND {primary}", (SCOPE, *settled))
                answered = [("accepted", None, RUN, "now", '["event"]', "10", None, None, "masked", row[0])
                             for row in rows]
                if one_statement:
                    t.execute(SETTLE_FROM_VALUES + ", ".join([VALUES_ROW] * len(answered)) + ") AS v "
                              "WHERE id = v.column10", [value for row in answered for value in row])
                else:
                    t.executemany(SETTLE, answered)
            if tids:
                t.execute(f"UPDATE narrow_states SET state = 'sending', last_run_id = ?, updated_at = ?, "
                          f"attempts = attempts + 1 WHERE id IN (SELECT r.id FROM narrow_records r WHERE "
                          f"r.scope = ? AND r.transaction_id IN ({marks(len(tids))}) AND {primary}) "
                          f"AND state IN {PRIMARY_SQL} AND state IN {SENDABLE_SQL}",
                          (RUN, "now", SCOPE, *tids))
        settled = tids
    done = time.perf_counter(), round_trips() - trips
    settled_rows = db.one("SELECT COUNT(*) FROM narrow_states WHERE state = 'accepted' AND attempts = 1 "
                          "AND customer_id = 'masked'")
    return _checked(settled_rows, count, recorded - start, done[0] - recorded, done[1])


def _checked(settled_rows: Any, count: int, record: float, submit: float, trips: int
             ) -> tuple[float, float, int]:
    """The figures, once every transaction is accepted after one attempt with its customer masked."""
    if settled_rows is None or int(settled_rows[0]) != count:
        raise SystemExit(f"settled {settled_rows and settled_rows[0]} of {count} transactions")
    return record, submit, trips


def round_trip_seconds(db: Db) -> float:
    """One statement that does nothing, on this connection (median of 5 × 1,000)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(1000):
            db.query("SELECT 1")
        times.append((time.perf_counter() - start) / 1000)
    return statistics.median(times)


@contextmanager
def fresh_ledger(backend: str, url: str, folder: Path, number: int) -> Iterator[Ledger]:
    if backend == "sqlite":
        ledger = Ledger(folder / f"ledger-{number}.sqlite")
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS narrow_states, narrow_records, {', '.join(TABLES)} CASCADE")
        ledger = Ledger(url)
    try:
        yield ledger
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL database to use; its ledger tables are dropped")
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    designs: dict[str, Design] = {"today": today, "today, foreign keys unchecked": without_foreign_keys,
                                  "foreign keys checked per row": per_row_foreign_keys,
                                  "narrow": narrow,
                                  "narrow, one statement": functools.partial(narrow, one_statement=True)}
    seconds: dict[tuple[str, str, str], list[float]] = {}
    trips: dict[tuple[str, str], float] = {}
    rtt: list[float] = []
    with _database(args.url) as url, tempfile.TemporaryDirectory() as folder:
        number = 0
        for _ in range(args.rounds):
            for name, design in designs.items():
                for backend in ("sqlite", "postgresql"):
                    number += 1
                    with fresh_ledger(backend, url, Path(folder), number) as ledger:
                        db = ledger._db
                        record, submit, submit_trips = design(ledger, db, args.transactions)
                        trips[name, backend] = submit_trips / args.transactions
                        seconds.setdefault((name, backend, "record"), []).append(record)
                        seconds.setdefault((name, backend, "submit"), []).append(submit)
                        if backend == "postgresql" and name == "today":
                            rtt.append(round_trip_seconds(db))
    per = 1e6 / args.transactions
    trip_us = statistics.median(rtt) * 1e6
    print(f"{args.transactions:,} transactions, {args.rounds} round(s); microseconds per transaction "
          f"(medians); a round trip took {trip_us:.1f} µs\n")
    print("| design | stage | SQLite | PostgreSQL | ratio | round trips | beyond |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in designs:
        for stage in ("record", "submit"):
            lite = statistics.median(seconds[name, "sqlite", stage]) * per
            pg = statistics.median(seconds[name, "postgresql", stage]) * per
            rt = trips[name, "postgresql"] if stage == "submit" else 0.0
            print(f"| {name} | {stage} | {lite:.1f} | {pg:.1f} | {pg / lite:.2f} | {rt:.2f} | "
                  f"**{pg - lite - rt * trip_us:.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
