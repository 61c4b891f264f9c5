"""Small builders for core tests: canonical rows as CSV text, feeds, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Feed
from pipeline.core.parse import read_bytes
from pipeline.core.transform import TransformResult, transform
from pipeline.records import CANONICAL_COLUMNS

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

BASE: dict[str, str] = {
    "transaction_id": "T1",
    "store_id": "S1",
    "register_id": "R1",
    "timestamp": "2026-11-20 10:00:00",
    "business_date": "2026-11-20",
    "customer_id": "C1",
    "transaction_type": "sale",
    "line_no": "1",
    "product_id": "P1",
    "product_name": "Tea",
    "product_category": "Drinks",
    "quantity": "2",
    "unit_price": "2.50",
    "discount": "0",
    "line_total": "5.00",
    "currency": "GBP",
    "transaction_total": "",
    "points_burned": "",
    "original_transaction_id": "",
}


def row(**changes: Any) -> dict[str, str]:
    """A canonical row (the BASE sale line) with some fields changed."""
    out = dict(BASE)
    out.update({k: "" if v is None else str(v) for k, v in changes.items()})
    return out


def csv_text(rows: list[dict[str, str]], *, delimiter: str = ",") -> str:
    """Rows as canonical CSV text (header first)."""

    def cell(value: str) -> str:
        if any(ch in value for ch in (delimiter, '"', "\n")):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [delimiter.join(CANONICAL_COLUMNS)]
    lines += [delimiter.join(cell(r.get(c, "")) for c in CANONICAL_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def feed(**settings: Any) -> Feed:
    """A feed from keyword settings (sections as dicts)."""
    settings.setdefault("name", "test")
    return Feed.model_validate(settings)


def lines_of(
    rows: list[dict[str, str]], the_feed: Feed | None = None, name: str = "case.csv"
) -> pl.DataFrame:
    """Parse canonical rows as a CSV file would be."""
    return read_bytes(csv_text(rows).encode(), the_feed or feed(), source_name=name)


def run(rows: list[dict[str, str]], the_feed: Feed | None = None, **kwargs: Any) -> TransformResult:
    """Transform canonical rows with the fixed clock."""
    f = the_feed or feed()
    return transform(lines_of(rows, f), f, now=kwargs.pop("now", NOW), **kwargs)


def codes(result: TransformResult) -> list[str | None]:
    """reject_code of every line, in input order."""
    return result.lines.get_column("reject_code").to_list()


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    """Write a case file and return its path."""
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
