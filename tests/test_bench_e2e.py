"""The end-to-end benchmark: its workload generator, its meter, and a smoke run through real parts.

The smoke run goes through the real sshd, the sandbox HTTP server and the runner with a tiny
workload; it asserts the report's shape and that the pipeline balanced, never a timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from pipeline.benchmarks.e2e import E2E_KEYS, STAGE_KEYS, growth, plot_scaling
from pipeline.benchmarks.meter import ResourceMeter
from pipeline.benchmarks.workload import WorkloadSpec, write_workload
from pipeline.cli import cli
from pipeline.records import CANONICAL_COLUMNS


def _read_all(paths: tuple[Path, ...]) -> pl.DataFrame:
    return pl.concat(
        [pl.read_csv(p, infer_schema=False).with_columns(file=pl.lit(p.name)) for p in paths]
    )


def test_workload_writes_daily_and_overlapping_hourly_files(tmp_path: Path) -> None:
    spec = WorkloadSpec(line_items=5_000, stores=3, conflict_share=0.05)
    workload = write_workload(spec, tmp_path)
    frame = _read_all(workload.files)

    assert list(frame.columns[:-1]) == list(CANONICAL_COLUMNS)
    assert frame.height == workload.line_items
    assert abs(workload.line_items - 5_000) < 250
    daily = frame.filter(pl.col("file").str.ends_with("_daily.csv"))
    hourly = frame.filter(~pl.col("file").str.ends_with("_daily.csv"))
    assert daily.height == workload.unique_line_items
    assert daily["transaction_id"].n_unique() == workload.transactions
    assert len([p for p in workload.files if p.name.endswith("_daily.csv")]) == 3
    # every hourly transaction is repeated in the daily file: exactly, or (conflicts) with changes
    assert set(hourly["transaction_id"]) <= set(daily["transaction_id"])
    repeats = hourly.join(daily, on=[c for c in CANONICAL_COLUMNS], how="semi", nulls_equal=True)
    changed = hourly.join(repeats, on="transaction_id", how="anti")["transaction_id"].n_unique()
    assert changed == workload.conflicting_transactions > 0
    assert workload.repeated_transactions + workload.conflicting_transactions == hourly[
        "transaction_id"
    ].n_unique()
    # a realistic mix
    assert daily.filter(pl.col("customer_id").is_null()).height > 0
    assert set(daily["transaction_type"]) == {"sale", "return", "void"}
    assert workload.defect_lines > 0
    assert daily.filter(pl.col("product_id").is_null() | (pl.col("currency") != "GBP")).height > 0


def test_workload_is_deterministic(tmp_path: Path) -> None:
    first = write_workload(WorkloadSpec(line_items=1_500), tmp_path / "a")
    second = write_workload(WorkloadSpec(line_items=1_500), tmp_path / "b")
    assert [p.name for p in first.files] == [p.name for p in second.files]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first.files, second.files, strict=True))


def test_meter_measures_each_stage() -> None:
    meter = ResourceMeter(interval_seconds=0.001)
    with meter:
        with meter.stage("busy"):
            block = bytearray(64 * 2**20)
            time.sleep(0.02)
            del block
        meter.enter("idle")
        time.sleep(0.01)
        meter.leave("idle")
    busy, idle = meter.stages["busy"], meter.stages["idle"]
    assert busy.entries == idle.entries == 1
    assert busy.wall_seconds > 0 and idle.wall_seconds > 0
    assert busy.peak_rss_bytes > idle.peak_rss_bytes > 0
    assert set(busy.to_dict()) == {"wall_seconds", "cpu_seconds", "peak_rss_bytes"}


def _point(size: int, seconds: float, rss: int) -> dict[str, object]:
    return {"line_items": size, "total": {"wall_seconds": seconds}, "peak_rss_bytes": rss}


def test_growth_and_plot(tmp_path: Path) -> None:
    points = [_point(100_000, 2.0, 200 * 2**20), _point(1_000_000, 18.0, 600 * 2**20)]
    (step,) = growth(points)
    assert step["size_ratio"] == 10.0
    assert step["time_growth_vs_linear"] == 0.9
    assert step["memory_growth_vs_linear"] == 0.3
    png = plot_scaling(points, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_e2e_smoke_through_sshd_sandbox_and_runner(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["bench", "e2e", "--line-items", "2000", "--json", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    run = report["e2e"]
    assert set(E2E_KEYS) <= set(run)
    for stage in ("fetch", "transform", "submit"):
        assert set(STAGE_KEYS) <= set(run["stages"][stage]), stage
    assert set(STAGE_KEYS) <= set(run["total"])
    assert run["balanced"] is True
    assert run["sandbox_matches_ledger"] is True
    summary = run["summary"]
    assert summary["rows_in"] == run["line_items"]
    assert summary["accepted"] > 0
    assert summary["duplicates"] > 0
    assert summary["rows_rejected"] > 0
    assert run["events_accepted"] >= summary["accepted"]
    assert (tmp_path / "out" / "e2e.json").exists()
