"""Where a PostgreSQL ledger's time goes: `posfeed bench ledger --postgres-url`, then the server's
own time per statement from `pg_stat_statements`.

    python bench/postgres.py                                   # 300,000 line items, 2 rounds
    python bench/postgres.py --line-items 60000 --rounds 1
    python bench/postgres.py --update-docs docs/BENCHMARKS.md  # as the Scaling section's figures
    python bench/postgres.py --url postgresql://...            # a server of your own

Without ``--url`` it starts a throwaway cluster of Debian's PostgreSQL on loopback (the tests'
``tests/pg_cluster.py``) with the settings the documented figures were measured with: ``fsync``
on and ``synchronous_commit`` off (as SQLite's WAL with ``synchronous=NORMAL``), 256 MB of shared
buffers, ``pg_stat_statements`` loaded. A server of your own needs ``pg_stat_statements`` in its
``shared_preload_libraries``; the script creates the extension and resets its counts first. The
benchmark's side-by-side table (and its round trips) is printed as `posfeed bench ledger` prints
it; then the statements that took the most server time: calls, milliseconds, microseconds per
call and per row.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402

BENCH_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "off",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
}
TOP_STATEMENTS = """
SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g')
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
AND query <> 'SELECT $1'  -- the benchmark's own round-trip timing
ORDER BY total_exec_time DESC LIMIT %s
"""


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str]:
    """The URL to measure against: ``url``, or a fresh database of a throwaway cluster."""
    if url is not None:
        yield url
        return
    import pg_cluster

    pg_cluster.SETTINGS.update(BENCH_SETTINGS)
    cluster = pg_cluster.PgCluster().start()
    try:
        yield cluster.create_database()
    finally:
        cluster.stop()


def server_time_table(rows: list[tuple[int, float, int, str]], width: int = 110) -> str:
    """The statements as a Markdown table: calls, server ms, µs per call and per row."""
    lines = ["| calls | server ms | µs per call | rows | µs per row | statement |",
             "|---:|---:|---:|---:|---:|---|"]
    for calls, total_ms, count, query in rows:
        per_row = f"{total_ms * 1000 / count:.1f}" if count else ""
        text = query if len(query) <= width else query[: width - 1] + "…"
        lines.append(f"| {calls:,} | {total_ms:,.1f} | {total_ms * 1000 / max(calls, 1):.1f} | {count:,} | "
                     f"{per_row} | `{text.replace('|', '¦')}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a throwaway cluster)")
    parser.add_argument("--line-items", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--update-docs", type=Path, help="write the side-by-side table into this file")
    parser.add_argument("--top", type=int, default=12, help="how many statements to list")
    args = parser.parse_args(argv)
    with _database(args.url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        command = [sys.executable, "-m", "pipeline", "bench", "ledger", "--postgres-url", url,
                   "--line-items", str(args.line_items), "--rounds", str(args.rounds)]
        if args.update_docs is not None:
            command += ["--update-docs", str(args.update_docs)]
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        bench = subprocess.run(command, env=env, check=False)
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(TOP_STATEMENTS, (args.top,)).fetchall()
    print("\nServer time per statement (pg_stat_statements, every PostgreSQL run together):\n")
    print(server_time_table([(int(c), float(t), int(n), str(q)) for c, t, n, q in rows]))
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
