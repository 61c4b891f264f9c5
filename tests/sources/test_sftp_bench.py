"""Smoke run of `posfeed bench fetch` with a tiny file (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.benchmarks.fetch import markdown_section, run_fetch_benchmark, update_docs
from pipeline.cli import cli


def test_fetch_benchmark_runs_both_clients(tmp_path: Path) -> None:
    result = run_fetch_benchmark(0.5, rounds=1, workdir=tmp_path)
    report = result.to_dict()
    assert report["size_mib"] == 0.5 and report["rounds"] == 1
    assert report["ours_seconds"] > 0 and report["sftp_seconds"] > 0
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Fetch\n\n## Where a target is missed\n")
    update_docs(docs, markdown_section(result, command="posfeed bench fetch --size-mb 0.5"))
    update_docs(docs, markdown_section(result, command="posfeed bench fetch --size-mb 0.5"))
    text = docs.read_text()
    assert text.count("fetch:start") == 1 and "OpenSSH `sftp -b`" in text
    assert text.index("## Fetch") < text.index("fetch:start") < text.index("## Where a target")


def test_bench_fetch_command_json() -> None:
    outcome = CliRunner().invoke(cli, ["bench", "fetch", "--size-mb", "0.25", "--rounds", "1", "--json"])
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    assert {"ours_mib_s", "sftp_mib_s", "ratio", "meets_target"} <= set(report)
