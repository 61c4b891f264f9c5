"""What one change costs the sandbox's ``--state`` file with N transactions stored, side by side.

* *JSON rewrite*: what the state file used to be, the whole document serialised and replaced
  atomically at each save;
* *SQLite row*: :class:`pipeline.sandbox.store.RecordStore`, one upsert committed per change.

``python -m pipeline.benchmarks.sandbox_state [N ...]`` prints a Markdown table (defaults: 1,000
and 20,000 transactions); each figure is the median of 15 saves.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.sandbox.state import jsonable
from pipeline.sandbox.store import RecordStore

__all__ = ["measure", "record", "table"]

ROUNDS = 15


def record(n: int) -> dict[str, Any]:
    """An accepted Antavo checkout as the sandbox keeps it (two items, one event)."""
    return {
        "transaction_id": f"T-{n:08d}", "customer": f"cust-{n % 5000}", "guest": False, "account": None,
        "status": "accepted", "total": Decimal("25.00"), "currency": "EUR", "store": "S1",
        "points_burned": None, "effective_timestamp": 1_795_000_000 + n,
        "timestamp": "2026-11-20T09:30:00+00:00", "process_timestamp": "2026-11-20T09:30:01+00:00",
        "items": [{"product_id": f"P{i}", "quantity": 2, "price": Decimal("6.25"),
                   "subtotal": Decimal("12.50")} for i in range(2)],
        "events": [{"id": f"{n:024x}", "action": "checkout", "points": 25}],
        "earned": 25, "refunded": Decimal(0), "refunds": [],
    }


def _json_rewrite(path: Path, transactions: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"transactions": jsonable({"antavo": transactions})}, indent=1,
                              sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def measure(stored: int, folder: Path) -> dict[str, float]:
    """Median seconds of one save with ``stored`` transactions already kept, both ways."""
    transactions = {f"T-{n:08d}": record(n) for n in range(stored)}
    json_path = folder / f"state-{stored}.json"
    rewrite = []
    for round_ in range(ROUNDS):
        transactions[f"X-{round_}"] = record(stored + round_)
        started = time.perf_counter()
        _json_rewrite(json_path, transactions)
        rewrite.append(time.perf_counter() - started)
    store = RecordStore(folder / f"state-{stored}.db")
    try:
        for key, value in transactions.items():
            store.put("antavo.transaction", key, value)
        row = []
        for round_ in range(ROUNDS):
            started = time.perf_counter()
            store.put("antavo.transaction", f"Y-{round_}", record(stored + round_))
            row.append(time.perf_counter() - started)
    finally:
        store.close()
    return {"json_rewrite_s": statistics.median(rewrite), "sqlite_row_s": statistics.median(row)}


def table(sizes: list[int]) -> str:
    """The Markdown table of :func:`measure` at each size."""
    lines = ["| transactions stored | JSON rewrite per save | SQLite row per save | ratio |",
             "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            result = measure(size, Path(folder))
            old, new = result["json_rewrite_s"], result["sqlite_row_s"]
            lines.append(f"| {size:,} | {old * 1000:,.1f} ms | {new * 1000:,.3f} ms | {old / new:,.0f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([int(arg) for arg in sys.argv[1:]] or [1_000, 20_000]))
