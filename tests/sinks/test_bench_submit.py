"""Smoke run of the submit benchmark (tiny sizes; no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.benchmarks.submit import markdown_section, update_docs
from pipeline.cli import cli


def test_bench_submit_smoke(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "submit", "--events", "60", "--naive-events", "10",
                                      "--latency-ms", "0", "--limited-seconds", "1",
                                      "--limited-latency-ms", "5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["throughput"]["ours"]["outcomes"] == {"accepted": 60}
    assert report["throughput"]["naive"]["accepted"] == 10
    assert report["throughput_zero_latency"] is None  # (a) already ran with no latency
    limited = report["limited"]
    assert limited["ours"]["outcomes"] == {"accepted": limited["ours"]["events"]}
    assert limited["responses_429"] == 0
    for key in ("ratio", "met", "target_ratio"):
        assert key in report["throughput"]

    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Transform\n\nkept\n\n## Submit\n\n## Fetch\n\nkept too\n")
    for _ in range(2):  # rewriting replaces the generated block, never duplicates it
        update_docs(docs, markdown_section(report, command="posfeed bench submit --events 60"))
    text = docs.read_text()
    assert text.count("posfeed bench submit --events 60") == 1
    assert text.index("## Submit") < text.index("events/s") < text.index("## Fetch")
    assert "kept too" in text
