"""Smoke run of `posfeed bench transform` on a tiny synthetic input (no timing assertions)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.benchmarks.transform import DOCS_END, DOCS_START, VARIANTS, online_retail_feed, update_docs
from pipeline.cli import cli
from pipeline.config import load_feed

FIXTURE_FEED = Path(__file__).parent / "fixtures" / "online_retail" / "online_retail.toml"


def test_bench_transform_smoke_runs_every_variant_on_the_same_rows(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Run\n\nother section\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["bench", "transform", "--synthetic", "--rows", "2000", "--repeat", "1", "--json",
         "--update-docs", str(docs)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"input", "machine", "variants", "ratios", "targets"}
    assert report["input"]["source"] == "synthetic" and report["input"]["rows"] == 2000
    assert set(report["variants"]) == set(VARIANTS)
    for variant in report["variants"].values():
        assert variant["rows"] == 2000
        assert set(variant) >= {"wall_seconds", "rows_per_second", "peak_rss_bytes"}
        assert variant["peak_rss_bytes"] > 0
    ours, naive = report["variants"]["posfeed_transform"], report["variants"]["naive_pydantic"]
    assert ours["transactions"] == naive["transactions"]
    assert set(ours["stages"]) >= {"read_file", "validate", "normalize", "dedup"}
    assert set(report["ratios"]) == {
        "transform_over_read", "naive_over_transform", "minimal_over_read", "naive_over_minimal",
        "read_file_over_read",
    }
    assert report["variants"]["posfeed_read_file"]["rows"] == 2000
    assert report["variants"]["minimal_checkouts"]["checkouts"] == ours["checkouts"]
    text = docs.read_text(encoding="utf-8")
    assert "other section" in text and "## Transform" in text
    assert text.count(DOCS_START) == 1 and "(c) naive" in text


@pytest.mark.parametrize("naive_repeat", [1, 2])
def test_the_docs_count_the_naive_runs_in_words_that_agree(tmp_path: Path, naive_repeat: int) -> None:
    """"(c) runs 1 time in its own process", "(c) runs 2 times ...": never "time(s)"."""
    docs = tmp_path / "BENCHMARKS.md"
    result = CliRunner().invoke(
        cli,
        ["bench", "transform", "--synthetic", "--rows", "200", "--repeat", "1", "--naive-repeat",
         str(naive_repeat), "--json", "--update-docs", str(docs)],
    )
    assert result.exit_code == 0, result.output
    times = "1 time" if naive_repeat == 1 else "2 times"
    assert f"(c) runs {times} in its own process." in docs.read_text(encoding="utf-8")


def test_update_docs_replaces_only_its_own_block(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text(f"# B\n\n## Transform\n\nintro\n\n{DOCS_START}\nold\n{DOCS_END}\n\n## Run\n\nkeep\n")
    update_docs(docs, "new figures")
    text = docs.read_text()
    assert "old" not in text and "new figures" in text
    assert text.startswith("# B\n\n## Transform\n\nintro\n") and text.endswith("## Run\n\nkeep\n")


def test_update_docs_fills_an_existing_transform_section_without_markers(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# B\n\n## Transform\n\nintro\n\n## Submit\n\nkeep\n")
    update_docs(docs, "figures")
    block = f"{DOCS_START}\nfigures\n{DOCS_END}"
    assert docs.read_text() == f"# B\n\n## Transform\n\nintro\n\n{block}\n\n## Submit\n\nkeep\n"
    docs.write_text("# B\n\n## Transform\n")
    update_docs(docs, "figures")
    assert docs.read_text() == f"# B\n\n## Transform\n\n{DOCS_START}\nfigures\n{DOCS_END}\n"
    update_docs(docs, "again")  # idempotent through the markers
    assert docs.read_text() == f"# B\n\n## Transform\n\n{DOCS_START}\nagain\n{DOCS_END}\n"


def test_benchmark_feed_is_the_fixture_feed() -> None:
    fixture = load_feed(FIXTURE_FEED)
    ours = online_retail_feed()
    assert ours.format == fixture.format
    assert ours.validation == fixture.validation
    assert ours.timezone == fixture.timezone
    assert "format" in tomllib.loads(FIXTURE_FEED.read_text(encoding="utf-8"))
