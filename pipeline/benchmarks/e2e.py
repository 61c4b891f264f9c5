"""End-to-end benchmark: a chain's day of POS exports from a real SFTP server to the platform.

One measurement (:func:`run_e2e`) puts ``line_items`` generated rows
(:mod:`pipeline.benchmarks.workload`) on a real OpenSSH sshd on loopback
(:mod:`pipeline.testing.sshd`), starts the sandbox platform in its own process (no rate limit, a
little latency per request) and runs the feed with :func:`pipeline.runner.run_feed` in a fresh
Python process, so the figures are the pipeline's alone: per stage wall time, CPU time and peak
resident memory (:class:`pipeline.benchmarks.meter.ResourceMeter`), rows/s and events/s. The run
must balance and the sandbox must hold exactly the transactions the run reports accepted.

:func:`run_scaling` repeats it at several sizes (each measured process fresh, so peak memory is
per size). :func:`run_suite`
adds the side-by-side comparisons of the transform, submit and fetch benchmarks at sizes that fit
the time budget. Turning a report into text, docs sections and the chart is
:mod:`pipeline.benchmarks.e2e_report`'s part.

The measured process is ``python -m pipeline.benchmarks.e2e measure CONFIG OUT``; the sandbox
process is ``python -m pipeline.benchmarks.e2e sandbox``. Both are internal.
"""

from __future__ import annotations

import cProfile
import io
import json
import logging
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline.benchmarks.e2e_report import growth, plot_scaling, render_markdown
from pipeline.benchmarks.meter import ResourceMeter, peak_rss
from pipeline.benchmarks.workload import GUEST_SHARE, WorkloadSpec, write_workload
from pipeline.ledger.db import round_trips

__all__ = [
    "DEFAULT_LINE_ITEMS",
    "DEFAULT_SCALING",
    "E2E_KEYS",
    "FULL_LINE_ITEMS",
    "FULL_SCALING",
    "SIDE_BY_SIDE_SIZES",
    "STAGE_KEYS",
    "machine_info",
    "run_e2e",
    "run_ledger_growth",
    "run_scaling",
    "run_side_by_side",
    "run_suite",
    "write_outputs",
]

log = logging.getLogger(__name__)

DEFAULT_LINE_ITEMS = 1_000_000
DEFAULT_SCALING: tuple[int, ...] = (100_000, 1_000_000, 3_000_000)
# the scaling points of the whole suite (`bench e2e --full`, `bench all`); the 1M point is also
# the measured day of the per-stage table
FULL_SCALING: tuple[int, ...] = DEFAULT_SCALING
FULL_LINE_ITEMS = DEFAULT_LINE_ITEMS
DEFAULT_LATENCY_SECONDS = 0.005
# Requests in flight (the feed default is 8, sized for a platform tens of ms away). The sandbox is
# one process: while it handles a bulk of 50 events, the answers queued behind it wait, and with 8
# in flight the sender sat idle for a sixth of the submit stage (22 of 91 s at 1M). 16 keeps
# the measured time the pipeline's own, as a deployment close to its platform would set it.
IN_FLIGHT = 16
SANDBOX_API_KEY = "bench-key"
SANDBOX_API_SECRET = "bench-secret-not-for-production"  # a sandbox credential, nothing real

# keys of one e2e report (a test keeps these in step)
E2E_KEYS: tuple[str, ...] = (
    "line_items",
    "unique_line_items",
    "transactions",
    "files",
    "bytes",
    "generate_seconds",
    "stages",
    "total",
    "peak_rss_bytes",
    "summary",
    "sandbox",
    "events_accepted",
    "balanced",
    "sandbox_matches_ledger",
    "latency_seconds",
    "in_flight",
)
STAGE_KEYS: tuple[str, ...] = (
    "wall_seconds",
    "cpu_seconds",
    "peak_rss_bytes",
    "rows_per_second",
    "events_per_second",
)


# ---- the sandbox platform, in its own process ---------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc), 0.0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@contextmanager
def sandbox_process(latency_seconds: float) -> Iterator[tuple[str, int]]:
    """Run the sandbox platform in a child process; yield its base URL and pid. Stops it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.benchmarks.e2e", "sandbox", str(latency_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the sandbox process did not start (see its stderr above)")
        yield str(json.loads(line)["url"]), process.pid
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the child serves until its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve_sandbox(latency_seconds: float) -> None:
    from pipeline.sandbox.server import SandboxServer
    from pipeline.sandbox.state import SandboxConfig, SandboxState

    state = SandboxState(
        SandboxConfig(
            api_key=SANDBOX_API_KEY,
            api_secret=SANDBOX_API_SECRET,
            latency_ms=latency_seconds * 1000,
            requests_per_minute=None,
        )
    )
    with SandboxServer(state) as server:
        print(json.dumps({"url": server.url}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin


def _sandbox_get(url: str, path: str) -> Any:
    import httpx

    response = httpx.get(url.rstrip("/") + path, timeout=60)
    response.raise_for_status()
    return response.json()


# ---- the measured process -----------------------------------------------------------------------


def _measure(config: dict[str, Any]) -> dict[str, Any]:
    """Run the feed once under a :class:`ResourceMeter` (this is the fresh measured process)."""
    from pipeline.config import Settings, load_feed
    from pipeline.runner import run_feed

    feed = load_feed(Path(config["feed_file"]))
    settings = Settings(
        state_dir=Path(config["state_dir"]),
        feeds_dir=Path(config["feed_file"]).parent,
        reports_dir=Path(config["reports_dir"]),
        ledger_url=config.get("ledger_url"),
    )
    meter = ResourceMeter(round_trips=round_trips)
    profiler = cProfile.Profile() if config.get("profile_out") else None
    started = time.perf_counter()
    cpu_started = time.process_time()
    with meter:
        if profiler is not None:
            profiler.enable()
        summary = run_feed(
            feed,
            settings,
            business_dates=[date.fromisoformat(config["business_date"])],
            on_stage=_stage_hook(meter),
            dry_run=bool(config.get("dry_run")),
        )
        if profiler is not None:
            profiler.disable()
    if profiler is not None:
        _write_profile(profiler, Path(config["profile_out"]))
    data = summary.to_dict()
    return {
        "summary": data,
        "accepted_by_type": _accepted_by_type(Path(str(data.get("reports_path", "")))),
        "stages": {name: measure.to_dict() for name, measure in meter.stages.items()},
        "total": {
            "wall_seconds": round(time.perf_counter() - started, 4),
            "cpu_seconds": round(time.process_time() - cpu_started, 4),
            "peak_rss_bytes": peak_rss(),
            "round_trips": round_trips(),
        },
    }


def _write_profile(profiler: cProfile.Profile, out: Path) -> None:
    """``out``.pstats (for snakeviz, pstats) and ``out``.txt: the top functions by own and total time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(out.with_suffix(".pstats")))
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    text.write("# main thread, by own time\n")
    stats.sort_stats("tottime").print_stats(30)
    text.write("\n# main thread, by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(40)
    out.with_suffix(".txt").write_text(text.getvalue())


def _accepted_by_type(reports: Path) -> dict[str, int]:
    """Accepted transactions per transaction type, from the run's detail.csv."""
    import polars as pl

    detail = reports / "detail.csv"
    if not detail.is_file():
        return {}
    counts = (
        pl.scan_csv(detail, infer_schema=False)
        .filter(pl.col("state") == "accepted")
        .group_by("transaction_type")
        .len()
        .collect()
    )
    return {str(kind): int(n) for kind, n in counts.iter_rows()}


def _stage_hook(meter: ResourceMeter) -> Callable[[str, str], None]:
    def on_stage(stage: str, event: str) -> None:
        if event == "start":
            meter.enter(stage)
        else:
            meter.leave(stage)

    return on_stage


def _measure_in_child(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    config_file = workdir / "measure.json"
    out_file = workdir / "measured.json"
    config_file.write_text(json.dumps(config))
    env = dict(os.environ)
    env.update({"BENCH_ANTAVO_KEY": SANDBOX_API_KEY, "BENCH_ANTAVO_SECRET": SANDBOX_API_SECRET})
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline.benchmarks.e2e", "measure", str(config_file), str(out_file)],
        env=env,
        check=False,
    )
    if completed.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"the measured run failed (exit {completed.returncode}); see stderr above")
    result: dict[str, Any] = json.loads(out_file.read_text())
    return result


# ---- one end-to-end measurement -----------------------------------------------------------------


def _feed_toml(
    *, source: dict[str, Any], sandbox_url: str, business_date: date, scope: str = "bench"
) -> str:
    def value(v: Any) -> str:
        return json.dumps(v)  # TOML basic strings, ints and booleans read like JSON ones

    source_lines = "\n".join(f"{key} = {value(v)}" for key, v in source.items())
    return f"""# generated by `posfeed bench e2e`
dedup_scope = {value(scope)}
timezone = "Europe/London"

[source]
{source_lines}
pattern = "pos_*_{{business_date:%Y%m%d}}_*.csv"
readiness = "none"

[format]
kind = "csv"

[validation]
currencies = ["GBP"]

[target]
kind = "antavo"
base_url = {value(sandbox_url)}
region = "demo"
api_key_env = "BENCH_ANTAVO_KEY"
api_secret_env = "BENCH_ANTAVO_SECRET"
requests_per_minute = 10000000
max_concurrency = {IN_FLIGHT}
backoff_base_seconds = 0.05
"""


def _rates(measure: dict[str, Any], rows: int, events: int) -> dict[str, Any]:
    wall = float(measure["wall_seconds"]) or 1e-9
    out = dict(measure)
    out["rows_per_second"] = round(rows / wall, 1)
    out["events_per_second"] = round(events / wall, 1)
    return out


def run_e2e(
    line_items: int = DEFAULT_LINE_ITEMS,
    *,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    seed: int | None = None,
    workdir: Path | None = None,
    profile_out: Path | None = None,
    dry_run: bool = False,
    guest_share: float = GUEST_SHARE,
    scope: str = "bench",
    start_ledger: Path | None = None,
    keep_ledger: Path | None = None,
    ledger_url: str | None = None,
) -> dict[str, Any]:
    """Generate, serve over SFTP, run the whole pipeline in a fresh process; return the figures.

    The report has the keys :data:`E2E_KEYS`; each stage (and ``total``) has :data:`STAGE_KEYS`.
    With ``profile_out``, the measured run is profiled (cProfile, main thread) into
    ``profile_out``.pstats and a readable ``profile_out``.txt (timings then include its overhead).
    With ``dry_run`` the run stops before submit (the runner's dry run: fetch, transform, dedup and
    ledger on a copy, reports), which measures the data path at sizes where sending takes too long.
    The run starts from a copy of ``start_ledger`` (else an empty ledger) and deduplicates in
    ``scope``; ``keep_ledger`` receives the ledger it leaves. With ``ledger_url`` the ledger is
    that PostgreSQL database instead (``start_ledger`` and ``keep_ledger`` are SQLite files only).
    """
    if ledger_url is not None and (start_ledger is not None or keep_ledger is not None):
        raise ValueError("start_ledger and keep_ledger are SQLite files: not with ledger_url")
    from pipeline.testing.sshd import OpenSshServer

    spec = WorkloadSpec(line_items=line_items, guest_share=guest_share)
    if seed is not None:
        spec = replace(spec, seed=seed)
    with tempfile.TemporaryDirectory(prefix="posfeed-e2e-", dir=workdir) as tmp:
        base = Path(tmp)
        with OpenSshServer(base / "sshd") as sshd:
            started = time.perf_counter()
            workload = write_workload(spec, sshd.root / "exports")
            generate_seconds = time.perf_counter() - started
            with sandbox_process(latency_seconds) as (sandbox_url, sandbox_pid):
                feed_file = base / "feeds" / "bench.toml"
                feed_file.parent.mkdir()
                source = sshd.source_settings(str(workload.folder))
                feed_file.write_text(_feed_toml(
                    source=source, sandbox_url=sandbox_url, business_date=spec.business_date, scope=scope
                ))
                if start_ledger is not None:
                    (base / "state").mkdir()
                    shutil.copyfile(start_ledger, base / "state" / "ledger.sqlite")
                config = {
                    "feed_file": str(feed_file),
                    "state_dir": str(base / "state"),
                    "reports_dir": str(base / "reports"),
                    "business_date": spec.business_date.isoformat(),
                    "profile_out": str(profile_out.resolve()) if profile_out else None,
                    "dry_run": dry_run,
                    "ledger_url": ledger_url,
                }
                measured = _measure_in_child(config, base)
                stats = _sandbox_get(sandbox_url, "/_sandbox/stats")
                sandbox_cpu = process_cpu_seconds(sandbox_pid)
                if keep_ledger is not None:
                    shutil.move(base / "state" / "ledger.sqlite", keep_ledger)
    summary = measured["summary"]
    events = int(stats.get("events_accepted", 0))
    rows = workload.line_items
    # a sale becomes a transaction on the platform; a return refunds its sale's transaction
    stored = int(stats.get("transactions", {}).get("antavo", 0))
    accepted = measured["accepted_by_type"]
    matches = (
        sum(accepted.values()) == int(summary.get("accepted", -1))
        and stored == sum(n for kind, n in accepted.items() if kind != "return")
        and not stats.get("duplicate_transaction_attempts")
    )
    return {
        "requested_line_items": line_items,
        "line_items": rows,
        "unique_line_items": workload.unique_line_items,
        "transactions": workload.transactions,
        "files": len(workload.files),
        "bytes": workload.bytes,
        "generate_seconds": round(generate_seconds, 3),
        "stages": {
            name: _rates(measure, rows, events) for name, measure in measured["stages"].items()
        },
        "total": _rates(measured["total"], rows, events),
        "peak_rss_bytes": measured["total"]["peak_rss_bytes"],
        "summary": summary,
        "sandbox": stats,
        "events_accepted": events,
        "balanced": bool(summary.get("balanced")),
        # the platform holds exactly the transactions the ledger says were accepted, none sent twice
        "sandbox_matches_ledger": matches,
        "latency_seconds": latency_seconds,
        "in_flight": IN_FLIGHT,
        "guest_share": guest_share,
        "dry_run": dry_run,
        # the platform's own CPU (another process on the same cores): the pipeline's is in "total"
        "sandbox_cpu_seconds": round(sandbox_cpu, 2),
        "workload": {k: v for k, v in asdict(workload).items() if k not in {"folder", "files"}},
    }


# ---- scaling ------------------------------------------------------------------------------------


def run_scaling(
    sizes: Sequence[int] = DEFAULT_SCALING,
    *,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    workdir: Path | None = None,
    dry_run: bool = False,
    guest_share: float = GUEST_SHARE,
) -> list[dict[str, Any]]:
    """:func:`run_e2e` at each size (each measured in a fresh process), smallest first."""
    return [
        run_e2e(size, latency_seconds=latency_seconds, workdir=workdir, dry_run=dry_run,
                guest_share=guest_share)
        for size in sorted(sizes)
    ]


# ---- does the ledger's size cost time? ----------------------------------------------------------


LEDGER_GROWTH_STAGES = ("transform", "record", "submit", "report")


def run_ledger_growth(
    *,
    prefill: int = 1_000_000,
    line_items: int = 300_000,
    rounds: int = 2,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The same day against an empty ledger and against a grown one, alternating, in one run.

    A day of ``prefill`` line items fills a ledger first. Then a day of ``line_items`` runs
    ``rounds`` times each way, in the order empty, grown, grown, empty, ... so slow drift of the
    machine's speed falls on both sides alike; each grown run copies the filled ledger and uses a
    scope of its own (nothing in it is a duplicate, only its size differs). Reports the CPU
    seconds per line item of the stages that touch the ledger and their ratios grown / empty.
    """
    with tempfile.TemporaryDirectory(prefix="posfeed-ledger-", dir=workdir) as tmp:
        filled = Path(tmp) / "filled.sqlite"
        run_e2e(prefill, latency_seconds=latency_seconds, workdir=workdir, keep_ledger=filled)
        with sqlite3.connect(filled) as db:
            ledger_rows = int(db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0])
        ledger_bytes = filled.stat().st_size
        runs: list[dict[str, Any]] = []
        for index in range(rounds * 2):
            grown = index % 4 in (1, 2)
            point = run_e2e(
                line_items, latency_seconds=latency_seconds, workdir=workdir,
                scope=f"grown-{index}" if grown else "bench", start_ledger=filled if grown else None,
            )
            runs.append({"ledger": "grown" if grown else "empty", "point": point})

    def cpu_per_item(side: str, stage: str) -> float:
        points = [r["point"] for r in runs if r["ledger"] == side]
        return statistics.mean(
            (p["total"] if stage == "total" else p["stages"][stage])["cpu_seconds"] / p["line_items"]
            for p in points
        ) * 1e6

    stages = (*LEDGER_GROWTH_STAGES, "total")
    per_item = {side: {stage: round(cpu_per_item(side, stage), 2) for stage in stages}
                for side in ("empty", "grown")}
    return {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "prefill_line_items": prefill,
        "ledger_rows": ledger_rows,
        "ledger_bytes": ledger_bytes,
        "line_items": runs[0]["point"]["line_items"] if runs else line_items,
        "rounds": rounds,
        "order": [r["ledger"] for r in runs],
        "cpu_us_per_line_item": per_item,
        "ratio": {stage: round(per_item["grown"][stage] / (per_item["empty"][stage] or 1e-9), 3)
                  for stage in stages},
        "runs": [{"ledger": r["ledger"], "total": r["point"]["total"],
                  "stages": {k: r["point"]["stages"][k] for k in LEDGER_GROWTH_STAGES},
                  "balanced": r["point"]["balanced"],
                  "sandbox_matches_ledger": r["point"]["sandbox_matches_ledger"]} for r in runs],
    }


def run_ledger_backends(
    ledger_url: str,
    *,
    line_items: int = 100_000,
    rounds: int = 2,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The same day against an empty SQLite ledger and the PostgreSQL ledger at ``ledger_url``,
    alternating (sqlite, postgresql, postgresql, sqlite, ...) so drift of the machine's speed falls
    on both alike. Each PostgreSQL run deduplicates in a scope of its own, so nothing of the
    database's other scopes is a duplicate. Reports CPU and wall µs per line item of the stages
    that touch the ledger and of the whole run, per backend, and their ratios postgresql / sqlite."""
    runs: list[dict[str, Any]] = []
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for index in range(rounds * 2):
        backend = "postgresql" if index % 4 in (1, 2) else "sqlite"
        point = run_e2e(line_items, latency_seconds=latency_seconds, workdir=workdir,
                        scope=f"backends-{tag}-{index}",
                        ledger_url=ledger_url if backend == "postgresql" else None)
        runs.append({"backend": backend, "point": point})

    def per_item(backend: str, stage: str, key: str, scale: float) -> float:
        points = [r["point"] for r in runs if r["backend"] == backend]
        return round(statistics.mean(
            (p["total"] if stage == "total" else p["stages"][stage])[key] / p["line_items"]
            for p in points) * scale, 2)

    stages = (*LEDGER_GROWTH_STAGES, "total")
    cpu = {b: {s: per_item(b, s, "cpu_seconds", 1e6) for s in stages} for b in ("sqlite", "postgresql")}
    wall = {b: {s: per_item(b, s, "wall_seconds", 1e6) for s in stages} for b in ("sqlite", "postgresql")}
    trips = {s: per_item("postgresql", s, "round_trips", 1000) for s in stages}
    trip_us = round_trip_us(ledger_url)
    trips_us = {s: round(trips[s] / 1000 * trip_us, 2) for s in stages}
    return {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "line_items": runs[0]["point"]["line_items"] if runs else line_items,
        "rounds": rounds,
        "order": [r["backend"] for r in runs],
        "cpu_us_per_line_item": cpu,
        "wall_us_per_line_item": wall,
        "cpu_ratio": {s: round(cpu["postgresql"][s] / (cpu["sqlite"][s] or 1e-9), 3) for s in stages},
        "wall_ratio": {s: round(wall["postgresql"][s] / (wall["sqlite"][s] or 1e-9), 3) for s in stages},
        "round_trip_us": trip_us,
        "round_trips_per_1000_line_items": trips,
        "round_trips_us_per_line_item": trips_us,
        # what PostgreSQL costs per line item beyond SQLite's wall time and its own round trips
        "beyond_round_trips_us_per_line_item": {
            s: round(wall["postgresql"][s] - wall["sqlite"][s] - trips_us[s], 2) for s in stages},
        "runs": [{"backend": r["backend"], "total": r["point"]["total"],
                  "stages": {k: r["point"]["stages"][k] for k in LEDGER_GROWTH_STAGES},
                  "balanced": r["point"]["balanced"],
                  "sandbox_matches_ledger": r["point"]["sandbox_matches_ledger"]} for r in runs],
    }


def round_trip_us(ledger_url: str, *, statements: int = 1000, sets: int = 5) -> float:
    """Microseconds of a statement that does nothing (``SELECT 1``) on a ledger connection to
    ``ledger_url``: one round trip to the server and the driver's work for one statement, the
    median of ``sets`` means, measured while nothing else runs."""
    from pipeline.ledger.postgres import open_postgres

    db, _ = open_postgres(ledger_url)
    try:
        means = []
        for _ in range(sets):
            started = time.perf_counter()
            for _ in range(statements):
                db.one("SELECT 1")
            means.append((time.perf_counter() - started) / statements)
    finally:
        db.close()
    return round(statistics.median(means) * 1e6, 2)


# ---- the machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, RAM, CPU model and the versions that matter for the figures."""
    import httpx
    import paramiko
    import polars

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip()
    except OSError:
        ssh = "not found"
    return {
        "cpu_model": cpu_model or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_bytes": memory_bytes,
        "os": platform.platform(),
        "python": platform.python_version(),
        "polars": polars.__version__,
        "httpx": httpx.__version__,
        "paramiko": paramiko.__version__,
        "openssh": ssh,
    }


# ---- the suite: e2e + scaling + side by side -----------------------------------------------------


def run_suite(
    *,
    line_items: int = DEFAULT_LINE_ITEMS,
    scaling: Sequence[int] = (),
    side_by_side: bool = False,
    latency_seconds: float = DEFAULT_LATENCY_SECONDS,
    out: Path | None = None,
    command: str = "",
    profile: bool = False,
    dry_run: bool = False,
    guest_share: float = GUEST_SHARE,
) -> dict[str, Any]:
    """The e2e measurement at ``line_items``, the scaling points, and the side-by-side comparisons.

    A size that is both the main measurement and a scaling point is measured once (unless
    ``profile``: then the main measurement runs under cProfile, written next to the outputs). With
    ``out``, writes ``e2e.json``, ``e2e.md`` (the report's sections for docs/BENCHMARKS.md) and
    ``scaling.png``.
    """
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "command": command,
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    points: list[dict[str, Any]] = []
    for size in sorted(set(scaling)):
        log.info("e2e at %s line items", f"{size:,}")
        points.append(
            run_e2e(size, latency_seconds=latency_seconds, dry_run=dry_run, guest_share=guest_share)
        )
    main_run = next((p for p in points if p["requested_line_items"] == line_items), None)
    if profile:  # a profiled run is slower: never reuse it as a scaling point, nor one for it
        profile_out = (out or Path(".")) / "profile-e2e"
        report["e2e"] = run_e2e(
            line_items, latency_seconds=latency_seconds, profile_out=profile_out, dry_run=dry_run,
            guest_share=guest_share,
        )
        report["profile"] = str(profile_out.with_suffix(".txt"))
    else:
        report["e2e"] = main_run or run_e2e(
            line_items, latency_seconds=latency_seconds, dry_run=dry_run, guest_share=guest_share
        )
    if points:
        report["scaling"] = {"points": points, "growth": growth(points)}
    if side_by_side:
        log.info("side by side: transform, submit, fetch")
        report["side_by_side"] = run_side_by_side()
    report["suite_seconds"] = round(time.perf_counter() - started, 1)
    if out is not None:
        report["outputs"] = str(out.resolve())
        write_outputs(report, out)
    return report


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """Write ``e2e.json``, ``e2e.md`` and (with scaling points) ``scaling.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    if "scaling" in report:
        plot_scaling(report["scaling"]["points"], out / "scaling.png")
    (out / "e2e.md").write_text(render_markdown(report, chart="scaling.png"))


# sizes of the side-by-side comparisons in the whole suite (fit the 10-minute budget on 2 cores)
SIDE_BY_SIDE_SIZES: dict[str, dict[str, Any]] = {
    "transform": {"rows": None, "repeat": 2, "naive_repeat": 1},  # the full Online Retail data
    "submit": {
        "events": 10_000,
        "naive_events": 500,
        "latency_ms": 5.0,
        "limit": 600,
        "limited_latency_ms": 50.0,
        "limited_seconds": 30.0,
        "zero_latency": False,
    },
    "fetch": {"size_mb": 200, "rounds": 2},
}


def run_side_by_side(sizes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Our transform, sender and fetch each against its baseline, at sizes that fit the budget.

    Calls the transform, submit and fetch benchmarks' own functions; each entry holds the
    benchmark's ``report``, ``seconds`` (how long it took), the ``command`` that reproduces it
    alone, and ``comparisons`` (ours, baseline, ratio, target, met).
    """
    sizes = {**SIDE_BY_SIDE_SIZES, **(sizes or {})}
    return {
        "transform": _side_transform(sizes["transform"]),
        "submit": _side_submit(sizes["submit"]),
        "fetch": _side_fetch(sizes["fetch"]),
    }


def _side_transform(options: dict[str, Any]) -> dict[str, Any]:
    from pipeline.benchmarks.transform import run_transform_benchmark

    started = time.perf_counter()
    report = run_transform_benchmark(profile=True, **options)
    variants, ratios, targets = report["variants"], report["ratios"], report["targets"]
    ours = variants["posfeed_transform"]["wall_seconds"]
    rows = f"{report['input']['rows']:,} rows"
    return {
        "report": report,
        "seconds": round(time.perf_counter() - started, 1),
        "command": f"posfeed bench transform --repeat {options.get('repeat', 3)}",
        "comparisons": [
            {
                "name": f"transform vs bare `polars.read_csv` (floor), {rows}",
                "ours_seconds": ours,
                "baseline_seconds": variants["polars_read_csv"]["wall_seconds"],
                "ratio": f"{ratios['transform_over_read']}×",
                "ratio_means": "ours / floor",
                "target": f"≤ {targets['transform_over_read_max']:g}×",
                "met": targets["transform_over_read_met"],
            },
            {
                "name": f"transform vs naive per-row script (csv + pydantic), {rows}",
                "ours_seconds": ours,
                "baseline_seconds": variants["naive_pydantic"]["wall_seconds"],
                "ratio": f"{ratios['naive_over_transform']}×",
                "ratio_means": "naive / ours",
                "target": f"≥ {targets['naive_over_transform_min']:g}×",
                "met": targets["naive_over_transform_met"],
            },
            {
                "name": f"`read_file` alone vs bare `polars.read_csv` (floor), {rows}",
                "ours_seconds": variants["posfeed_read_file"]["wall_seconds"],
                "baseline_seconds": variants["polars_read_csv"]["wall_seconds"],
                "ratio": f"{ratios['read_file_over_read']}×",
                "ratio_means": "reader / floor",
                "target": f"≤ {targets['read_file_over_read_max']:g}×",
                "met": targets["read_file_over_read_met"],
            },
            *_lower_bound_rows(report),
        ],
    }


def _lower_bound_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The transform's targets applied to (d), the least any implementation does (no validation):
    where (d) misses a target, no implementation of the whole transform can meet it."""
    variants, ratios, targets = report["variants"], report["ratios"], report["targets"]
    if "minimal_checkouts" not in variants:
        return []
    minimal = variants["minimal_checkouts"]["wall_seconds"]
    return [
        {
            "name": "lower bound (d): read, type, group into hashed checkouts, no validation, vs floor",
            "ours_seconds": minimal,
            "baseline_seconds": variants["polars_read_csv"]["wall_seconds"],
            "ratio": f"{ratios['minimal_over_read']}×",
            "ratio_means": "bound / floor",
            "target": f"≤ {targets['transform_over_read_max']:g}× (the transform's)",
            "met": ratios["minimal_over_read"] <= targets["transform_over_read_max"],
        },
        {
            "name": "naive per-row script vs lower bound (d)",
            "ours_seconds": minimal,
            "baseline_seconds": variants["naive_pydantic"]["wall_seconds"],
            "ratio": f"{ratios['naive_over_minimal']}×",
            "ratio_means": "naive / bound",
            "target": f"≥ {targets['naive_over_transform_min']:g}× (the transform's)",
            "met": ratios["naive_over_minimal"] >= targets["naive_over_transform_min"],
        },
    ]


def _side_submit(options: dict[str, Any]) -> dict[str, Any]:
    from pipeline.benchmarks.submit import run_submit_benchmark

    started = time.perf_counter()
    report = run_submit_benchmark(**options)
    throughput, limited = report["throughput"], report["limited"]
    ours, naive = throughput["ours"], throughput["naive"]
    command = (
        f"posfeed bench submit --events {options['events']} --naive-events {options['naive_events']} "
        f"--limited-seconds {options['limited_seconds']:g}"
    )
    return {
        "report": report,
        "seconds": round(time.perf_counter() - started, 1),
        "command": command,
        "comparisons": [
            {
                "name": f"sender vs naive sequential loop ({throughput['latency_ms']:g} ms latency)",
                "ours_seconds": ours["seconds"],
                "baseline_seconds": naive["seconds"],
                "ratio": f"{throughput['ratio']:.1f}×",
                "ratio_means": f"ours {ours['events_per_second']:,.0f} / loop "
                f"{naive['events_per_second']:,.0f} events/s",
                "target": f"≥ {throughput['target_ratio']:g}×",
                "met": throughput["met"],
            },
            {
                "name": f"rate limit kept busy ({limited['limit_per_minute']} requests/min, "
                f"{limited['latency_ms']:g} ms latency)",
                "ours_seconds": limited["ours"]["seconds"],
                "baseline_seconds": None,
                "ratio": f"{limited['share']:.1%}, {limited['responses_429']} × 429",
                "ratio_means": "achieved share of the limit",
                "target": f"≥ {limited['target_share']:.0%}, no 429",
                "met": limited["met"],
            },
        ],
    }


def _side_fetch(options: dict[str, Any]) -> dict[str, Any]:
    from pipeline.benchmarks.fetch import run_fetch_benchmark

    started = time.perf_counter()
    result = run_fetch_benchmark(**options)
    report = result.to_dict()
    return {
        "report": report,
        "result": asdict(result),  # the benchmark's own record, for its docs section
        "seconds": round(time.perf_counter() - started, 1),
        "command": f"posfeed bench fetch --size-mb {options['size_mb']:g} --rounds {options['rounds']}",
        "comparisons": [
            {
                "name": f"fetch vs OpenSSH `sftp`, one {report['size_mib']:g} MiB file",
                "ours_seconds": report["ours_seconds"],
                "baseline_seconds": report["sftp_seconds"],
                "ratio": f"{report['ratio']:.2f}",
                "ratio_means": f"our {report['ours_mib_s']:g} / sftp's {report['sftp_mib_s']:g} MiB/s",
                "target": f"≥ {report['target_ratio']:g}",
                "met": report["meets_target"],
            }
        ],
    }


# ---- the internal process entry points ----------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    if argv[:1] == ["sandbox"]:
        _serve_sandbox(float(argv[1]))
        return 0
    if argv[:1] == ["measure"]:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        config = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(_measure(config), default=str))
        return 0
    print("internal: use `posfeed bench e2e`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
