"""The transform stage's bookkeeping: every input row lands in exactly one ledger transaction."""

from __future__ import annotations

import csv
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Feed
from pipeline.core.transform import transform_files
from pipeline.ledger import Ledger
from pipeline.stages.transform import records_of

HEADER = ["transaction_id", "store_id", "timestamp", "customer_id", "transaction_type", "line_no",
          "product_id", "quantity", "unit_price", "currency"]

row = st.fixed_dictionaries({
    "transaction_id": st.sampled_from(["T1", "T2", "T3", "T4", ""]),
    "store_id": st.sampled_from(["S1", "S2"]),
    "timestamp": st.sampled_from(["2026-11-20 10:00:00", "2026-11-20 11:30:00", "not a time"]),
    "customer_id": st.sampled_from(["C1", "C2", ""]),
    "transaction_type": st.sampled_from(["sale", "sale", "return", "void"]),
    "line_no": st.sampled_from(["1", "2", "3"]),
    "product_id": st.sampled_from(["P1", "P2", ""]),
    "quantity": st.sampled_from(["1", "2", "-1", "0", "x"]),
    "unit_price": st.sampled_from(["1.50", "2", "0.10", "abc"]),
    "currency": st.sampled_from(["GBP", "GBP", "XXX"]),
})
files = st.lists(st.lists(row, min_size=0, max_size=12), min_size=1, max_size=3)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files)
def test_every_row_is_recorded_exactly_once(contents: list[list[dict[str, str]]]) -> None:
    feed = Feed(name="prop")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index, rows in enumerate(contents):
            path = Path(tmp) / f"f{index}.csv"
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, HEADER)
                writer.writeheader()
                writer.writerows(rows)
            paths.append(path)
        result = transform_files(paths, feed, now=datetime(2026, 11, 21, tzinfo=UTC))
        per_file = records_of(result)
        transactions = [t for f in per_file.values() for t in f.transactions]
        assert sum(t.rows for t in transactions) == result.summary["rows_in"]
        for currency, amounts in result.summary["currencies"].items():
            recorded = sum((t.amount for t in transactions if (t.currency or "") == currency), Decimal(0))
            assert recorded == Decimal(amounts["amount_in"]), currency
        assert len(transactions) == result.summary["transactions_in"]
        lines = [(name, line) for name, f in per_file.items() for t in f.transactions
                 for line in t.source_lines]
        assert len(lines) == len(set(lines))  # no row in two transactions
        for name, f in per_file.items():
            assert sum(total[2] for total in f.totals) == sum(t.rows for t in f.transactions), name
            assert sum((total[4] for total in f.totals), Decimal(0)) == sum(
                (t.amount for t in f.transactions), Decimal(0)), name
            assert len(f.rejects) == sum(t.rows for t in f.transactions if t.state == "rejected")
        # the ledger takes them as they are (one primary per transaction id, in file order)
        with Ledger(Path(tmp) / "ledger.sqlite") as ledger:
            run_id = ledger.start_run(feed="prop", scope="prop")
            for path in paths:
                record = ledger.register_file(run_id, scope="prop", feed="prop", name=path.name, size=1,
                                              mtime=1.0, sha256=path.name)
                f = per_file.get(path.name)
                if f is not None:
                    ledger.record_file(run_id, record, transactions=f.transactions, rejects=f.rejects,
                                       totals=f.totals)
            assert sum(ledger.state_counts("prop").values()) == len(transactions)


def test_gzipped_files_are_grouped_by_what_they_decompress_to(tmp_path: Path) -> None:
    """A transform group is bounded by the bytes its files hold once read: a .gz of a few
    kilobytes holding megabytes counts as the megabytes (before: as the kilobytes, so a group of
    gzipped files held many times the bytes a group is meant to)."""
    import gzip

    from pipeline.ledger import FileRecord
    from pipeline.sources.base import FetchedFile, RemoteFile
    from pipeline.stages.fetch import StagedFile
    from pipeline.stages.transform import _groups

    def staged(name: str, data: bytes) -> StagedFile:
        path = tmp_path / name
        path.write_bytes(data)
        size = len(data)
        return StagedFile(RemoteFile(name, size, 0.0), FetchedFile(name, path, size, 0.0, "0" * 64),
                          FileRecord(1, "s", "f", name, size, 0.0, "0" * 64, "fetched", "run"))

    big = b"x" * 600_000  # decompressed: 600 kB; compressed: under a kilobyte
    files = [staged(f"f{i}.csv.gz", gzip.compress(big)) for i in range(3)]
    assert all(f.record.size < 2_000 for f in files)
    assert [len(g) for g in _groups(files, 1_000_000)] == [1, 1, 1]
    plain = [staged(f"p{i}.csv", b"x" * 1000) for i in range(3)]
    assert [len(g) for g in _groups(plain, 1_000_000)] == [3]
