"""The end-to-end benchmark: its workload generator, its meter, and a smoke run through real parts.

The smoke run goes through the real sshd, the sandbox HTTP server and the runner with a tiny
workload; it asserts the report's shape and that the pipeline balanced, never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psycopg
import pytest
from click.testing import CliRunner

from pipeline.benchmarks.e2e import E2E_KEYS, STAGE_KEYS, run_side_by_side
from pipeline.benchmarks.e2e_report import (
    DOCS_END,
    DOCS_START,
    growth,
    plot_scaling,
    render_summary,
    update_side_by_side_docs,
)
from pipeline.benchmarks.meter import ResourceMeter
from pipeline.benchmarks.workload import WorkloadSpec, write_workload
from pipeline.cli import cli
from pipeline.records import CANONICAL_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


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
    trips = iter(range(0, 100, 7))  # a counter read at each stage's start and end
    meter = ResourceMeter(interval_seconds=0.001, round_trips=lambda: next(trips))
    with meter:
        with meter.stage("busy"):
            block = b"\x01" * (64 * 2**20)  # written, so its pages are resident (calloc'd ones are not)
            time.sleep(0.02)
            del block
        meter.enter("idle")
        time.sleep(0.01)
        meter.leave("idle")
    busy, idle = meter.stages["busy"], meter.stages["idle"]
    assert busy.entries == idle.entries == 1
    assert busy.wall_seconds > 0 and idle.wall_seconds > 0
    assert busy.peak_rss_bytes > idle.peak_rss_bytes > 0
    assert busy.round_trips == idle.round_trips == 7
    assert set(busy.to_dict()) == {"wall_seconds", "cpu_seconds", "peak_rss_bytes", "round_trips"}


def _point(size: int, seconds: float, rss: int) -> dict[str, object]:
    return {"line_items": size, "total": {"wall_seconds": seconds}, "peak_rss_bytes": rss}


def test_growth_and_plot(tmp_path: Path) -> None:
    points = [_point(100_000, 2.0, 200 * 2**20), _point(1_000_000, 18.0, 600 * 2**20)]
    (step,) = growth(points)
    assert step["size_ratio"] == 10.0
    assert step["time_growth_vs_linear"] == 0.9
    assert step["memory_growth_vs_linear"] == 0.3
    assert "sandbox_cpu_per_event_ratio" not in step  # no references measured: none reported
    png = plot_scaling(points, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_growth_reports_how_the_references_grew() -> None:
    def point(size: int, transform_cpu: float, events: int, sandbox_cpu: float) -> dict[str, object]:
        return {**_point(size, size / 1000, 2**20), "stages": {"transform": {"cpu_seconds": transform_cpu}},
                "events_accepted": events, "sandbox_cpu_seconds": sandbox_cpu}

    # 3x the line items; transform CPU per line item up 10%, sandbox CPU per event down 20%
    (step,) = growth([point(1000, 1.0, 250, 2.0), point(3000, 3.3, 750, 4.8)])
    assert step["transform_cpu_per_line_item_ratio"] == 1.1
    assert step["sandbox_cpu_per_event_ratio"] == 0.8


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_e2e_smoke_through_sshd_sandbox_and_runner(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text((REPO / "docs" / "BENCHMARKS.md").read_text())
    result = CliRunner().invoke(
        cli,
        ["bench", "e2e", "--line-items", "2000", "--scaling", "1000,2000", "--json",
         "--out", str(tmp_path / "out"), "--update-docs", str(docs)],
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
    assert json.loads((tmp_path / "out" / "e2e.json").read_text())["e2e"]["line_items"] == run["line_items"]
    assert (tmp_path / "out" / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["line_items"] for p in report["scaling"]["points"]][1] == run["line_items"]
    text = docs.read_text()
    block = text.split(DOCS_START, 1)[1].split(DOCS_END, 1)[0]
    for heading in ("## Machine and versions", "## End to end", "## Scaling"):
        assert heading in block
    assert "## Transform" in text and "## Fetch" in text  # the other sections are kept


@pytest.mark.slow
def test_bench_ledger_smoke_runs_one_day_against_an_empty_and_a_filled_ledger(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text((REPO / "docs" / "BENCHMARKS.md").read_text())
    result = CliRunner().invoke(
        cli, ["bench", "ledger", "--prefill", "2000", "--line-items", "1000", "--rounds", "2",
              "--json", "--update-docs", str(docs)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["order"] == ["empty", "grown", "grown", "empty"]
    # the filled ledger holds the prefill day; each grown run added its own day on top of a copy
    assert 500 < report["ledger_rows"] < 2000
    for run in report["runs"]:
        assert run["balanced"] is True and run["sandbox_matches_ledger"] is True
        assert run["stages"]["submit"]["cpu_seconds"] > 0
    per_item = report["cpu_us_per_line_item"]
    assert set(report["ratio"]) == {"transform", "record", "submit", "report", "total"}
    assert report["ratio"]["submit"] == round(per_item["grown"]["submit"] / per_item["empty"]["submit"], 3)
    scaling = docs.read_text().split("\n## Scaling\n", 1)[1].split("\n## ", 1)[0]
    assert "ledger-growth:start" in scaling and "| submit |" in scaling


@pytest.mark.slow
def test_side_by_side_calls_the_other_benchmarks_and_rewrites_their_sections(tmp_path: Path) -> None:
    side = run_side_by_side(
        {
            "transform": {"rows": 1000, "repeat": 1, "naive_repeat": 1},
            "submit": {"events": 60, "naive_events": 10, "latency_ms": 0.0, "limit": 600,
                       "limited_latency_ms": 0.0, "limited_seconds": 1.0, "zero_latency": False},
            "fetch": {"size_mb": 1, "rounds": 1},
        }
    )
    assert set(side) == {"transform", "submit", "fetch"}
    for entry in side.values():
        assert entry["comparisons"] and entry["command"].startswith("posfeed bench ")
        for row in entry["comparisons"]:
            assert {"name", "ours_seconds", "baseline_seconds", "ratio", "target", "met"} <= set(row)
    summary = "\n".join(render_summary({"side_by_side": side}))
    assert "| transform vs bare" in summary and "| lower bound (d)" in summary
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text((REPO / "docs" / "BENCHMARKS.md").read_text())
    update_side_by_side_docs(docs, side)
    text = docs.read_text()
    for marker in ("<!-- transform-benchmark:start", "<!-- submit:start", "<!-- fetch:start"):
        assert text.count(marker) == 1, marker


def test_bench_ledger_smoke_runs_one_day_on_sqlite_and_postgresql_side_by_side(postgres_db: str,
                                                                               tmp_path: Path) -> None:
    """Both ledger backends on the same day, alternating; shape and balance only, never a timing;
    the database's password never reaches the output."""
    url = postgres_db.replace("postgresql://postgres@", "postgresql://postgres:not-printed@")
    result = CliRunner().invoke(
        cli, ["bench", "ledger", "--postgres-url", url, "--line-items", "1000", "--rounds", "1", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "not-printed" not in result.output
    report = json.loads(result.output)
    assert report["order"] == ["sqlite", "postgresql"]
    for run in report["runs"]:
        assert run["balanced"] is True and run["sandbox_matches_ledger"] is True
    assert set(report["cpu_ratio"]) == {"transform", "record", "submit", "report", "total"}
    # the round trips: counted on PostgreSQL (none on SQLite), weighed at what SELECT 1 took
    counted = [sum(s["round_trips"] for s in run["stages"].values()) for run in report["runs"]]
    assert counted[0] == 0 and counted[1] > 0
    trips, wall = report["round_trips_per_1000_line_items"], report["wall_us_per_line_item"]
    assert trips["submit"] > 0 and report["round_trip_us"] > 0
    for stage, beyond in report["beyond_round_trips_us_per_line_item"].items():
        assert beyond == pytest.approx(wall["postgresql"][stage] - wall["sqlite"][stage]
                                       - trips[stage] / 1000 * report["round_trip_us"], abs=0.05)
    with psycopg.connect(postgres_db) as db:  # the PostgreSQL run wrote there, the SQLite one did not
        scopes = db.execute("SELECT DISTINCT scope FROM transactions").fetchall()
    assert len(scopes) == 1 and str(scopes[0][0]).startswith("backends-") and str(scopes[0][0]).endswith("-1")
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Scaling\n\nearlier text\n\n## Later\n", encoding="utf-8")
    # bench/postgres.py: the same benchmark, then the server's time per statement
    script = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "postgres.py"), "--url", url, "--line-items", "500",
         "--rounds", "1", "--top", "3", "--update-docs", str(docs)],
        capture_output=True, text=True, timeout=600, check=False)
    text = script.stdout
    assert script.returncode == 0, script.stderr[-2000:]
    assert "| record |" in text and "--postgres-url URL" in text and "not-printed" not in text
    assert "| stage | round trips per 1,000 line items |" in text
    statements = [line for line in text.split("Server time per statement")[1].splitlines()
                  if line.startswith("| ")][1:]
    assert len(statements) == 3 and any("transactions" in line for line in statements)
    written = docs.read_text(encoding="utf-8")  # its own block at the end of Scaling, the rest kept
    assert written.index("earlier text") < written.index("<!-- ledger-backends:start") < written.index(
        "| record |") < written.index("<!-- ledger-backends:end -->") < written.index("## Later")
    assert "not-printed" not in written


def test_bench_postgres_server_apart_pins_the_server_and_writes_its_own_block(tmp_path: Path) -> None:
    """``--server-cpus``: every process of the throwaway server, backends forked later included,
    runs on the CPUs given and the benchmark on the others; the figures go in a block of their
    own, the shared-CPU block kept. A set leaving the benchmark no CPU is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_postgres", ROOT / "bench" / "postgres.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "the test machine has two CPUs or more"
    server, rest = {cpus[-1]}, set(cpus[:-1])
    with bench._database(None, server) as url, psycopg.connect(url) as db:
        backend = int(db.execute("SELECT pg_backend_pid()").fetchone()[0])  # forked after the pinning
        checkpointer = int(db.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
                                    ).fetchone()[0])  # started with the server
        assert os.sched_getaffinity(backend) == server and os.sched_getaffinity(checkpointer) == server
    assert os.sched_getaffinity(0) == set(cpus)  # this process is not pinned
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Scaling\n\n<!-- ledger-backends:start (x) -->\nshared\n"
                    "<!-- ledger-backends:end -->\n\n## Later\n", encoding="utf-8")
    script = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "postgres.py"), "--server-cpus", str(cpus[-1]),
         "--line-items", "500", "--rounds", "1", "--top", "2", "--update-docs", str(docs)],
        capture_output=True, text=True, timeout=600, check=False)
    assert script.returncode == 0, script.stderr[-2000:]
    pinned = f"The server ran on CPU {cpus[-1]}, posfeed and its sandbox (both ledgers' runs) on CPU " + (
        ", ".join(map(str, sorted(rest))))
    assert pinned in script.stdout
    written = docs.read_text(encoding="utf-8")
    block = written.split("<!-- ledger-backends-server-apart:start")[1].split(
        "<!-- ledger-backends-server-apart:end -->")[0]
    assert pinned in block and "`python bench/postgres.py --server-cpus" in block
    # the stages in the run's order, though the report came through JSON (sorted keys)
    rows = [line.split(" | ")[0] for line in block.splitlines() if line.startswith("| ")]
    assert rows[:6] == ["| stage", "| transform", "| record", "| submit", "| report", "| total"]
    assert "shared\n<!-- ledger-backends:end -->" in written and written.index("apart:end") < written.index(
        "## Later")
    every = ",".join(map(str, cpus))
    refused = subprocess.run([sys.executable, str(ROOT / "bench" / "postgres.py"), "--server-cpus", every],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "must be some, not all" in refused.stderr


def test_row_designs_smoke_measures_both_designs_on_both_backends(postgres_db: str) -> None:
    # bench/row_designs.py: every transaction of each design settled once, masked (it exits
    # otherwise), and the figures printed for both stages of both designs
    script = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "row_designs.py"), "--url", postgres_db, "--transactions",
         "120", "--rounds", "1"],
        capture_output=True, text=True, timeout=600, check=False)
    assert script.returncode == 0, script.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in script.stdout.splitlines() if line.startswith("| ")][1:]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("today", "record"), ("today", "submit"), ("today, foreign keys unchecked", "record"),
        ("today, foreign keys unchecked", "submit"), ("foreign keys checked per row", "record"),
        ("foreign keys checked per row", "submit"), ("narrow", "record"), ("narrow", "submit"),
        ("narrow, one statement", "record"), ("narrow, one statement", "submit")]
    for row in rows:
        lite, pg, ratio = (float(cell) for cell in row[2:5])
        assert lite > 0 and pg > 0 and ratio == pytest.approx(pg / lite, rel=0.02, abs=0.01)
    submit_trips = [float(r[5]) for r in rows if r[1].strip() == "submit"]
    # the narrow design commits as the ledger does; one statement waits for its answer (one more)
    assert submit_trips[0] == submit_trips[1] == submit_trips[2] == submit_trips[3] > 0
    assert submit_trips[4] > submit_trips[3]


def test_report_server_smoke_times_each_form_on_the_ledgers_schema(postgres_db: str) -> None:
    # bench/report_server.py: every form timed once per round on a ledger of the current schema
    # (its membership table with migration 13's room), and a median printed for each
    script = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "report_server.py"), "--url", postgres_db, "--rows", "200",
         "--rounds", "2"],
        capture_output=True, text=True, timeout=600, check=False)
    assert script.returncode == 0, script.stderr[-2000:]
    lines = script.stdout.split("median µs/row")[1].splitlines()[1:]
    medians = {line.split("  ")[0]: float(line.split("(")[-2].split()[-1]) for line in lines if line}
    assert set(medians) == {
        "keep: subquery, full pages (before migration 13)", "keep: join, full pages",
        "keep: subquery, fillfactor 40", "keep: join, fillfactor 30 (the ledger's)",
        "keep: join, fillfactor 40",
        "keep: narrow table INSERT ... SELECT", "mask read: jsonb (before)", "mask read: json (the ledger's)"}
    assert all(value > 0 for value in medians.values())
    with psycopg.connect(postgres_db) as db:
        (options,) = db.execute("SELECT reloptions FROM pg_class WHERE relname = 'run_transactions'"
                                ).fetchone()
        kept = db.execute("SELECT count(*) FROM run_transactions WHERE state_at_end = 'accepted'").fetchone()
    assert options == ["fillfactor=30"] and kept == (2 * 200 * 2,)  # two forms, two rounds
