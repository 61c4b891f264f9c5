"""`posfeed bench poslog` at smoke size: the POSLog file and the CSV hold the same line items, both
transforms agree, and the report has the figures docs/BENCHMARKS.md shows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

from pipeline.benchmarks.poslog import VARIANTS, markdown_section, update_docs, write_day

ARTS = {"a": "http://www.nrf-arts.org/IXRetail/namespace/"}


def test_generated_day_holds_the_same_money_in_both_files(tmp_path: Path) -> None:
    day = write_day(tmp_path, size_mb=0.2)
    assert day.xml_bytes >= 200_000
    paid = Decimal(0)
    for txn in ET.parse(day.xml_path).getroot().findall("a:Transaction", ARTS):
        body = txn.find("a:RetailTransaction", ARTS)
        if body is not None:
            figures = {t.get("TotalType"): Decimal(t.text or "0") for t in body.findall("a:Total", ARTS)}
            paid += figures["TransactionGrandAmount"] - figures["TransactionTaxAmount"]
    with day.csv_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == day.line_items
    assert sum(Decimal(r["line_total"]) for r in rows) == paid


def test_bench_poslog_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "poslog", "--size-mb", "0.3", "--json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["same_result"] is True and report["xml_bytes"] >= 300_000
    variants = report["variants"]
    assert set(variants) == set(VARIANTS)
    assert {v["line_items"] for v in variants.values()} == {report["line_items"]}
    assert variants["csv_transform"]["rows_rejected"] == 0
    assert all(v["line_items_per_second"] > 0 and v["peak_rss_bytes"] > 0 for v in variants.values())
    section = markdown_section(report, command="posfeed bench poslog --size-mb 0.3")
    assert "| (b) POSLog: `read_file` + `transform` |" in section and "peak RSS" in section
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Transform\n\nkept\n", encoding="utf-8")
    update_docs(doc, section)
    update_docs(doc, section)  # idempotent: the block is replaced, not added again
    text = doc.read_text(encoding="utf-8")
    assert text.count("## POSLog") == 1 and "kept" in text and text.count(section) == 1
