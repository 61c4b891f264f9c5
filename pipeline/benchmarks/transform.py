"""Transform benchmark: our whole transform against its floor and a naive baseline, in one run.

The input is UCI Online Retail (541,909 invoice lines; falls back to a synthetic frame of the
same shape when the data set is absent), written once as CSV. Three variants then process that
CSV, each in its own fresh Python process so that peak memory (``ru_maxrss``) is its own:

* ``polars_read_csv``: bare ``polars.read_csv(path, infer_schema=False)`` of the file, the floor
  nothing can beat (with type inference the real file does not even load: invoice "C536379"
  comes after the inference window);
* ``posfeed_transform``: :func:`~pipeline.core.parse.read_file` +
  :func:`~pipeline.core.transform.transform` with the Online Retail feed (validation, exact
  money, UTC timestamps, checkouts and items, content hashes, dedup, the balanced summary);
* ``naive_pydantic``: what a typical integration script does: the ``csv`` module, one pydantic
  model per row (validation, ``Decimal`` money, timestamps), grouping rows into transactions;
* ``posfeed_read_file``: :func:`~pipeline.core.parse.read_file` alone, the reader's share of
  ``posfeed_transform``, against the same floor (target: within 2×).

Each variant runs ``repeat`` times in its process; the best wall time is reported (the first run
also pays one-off costs such as polars' thread pool start). Targets: the transform within 2.5× of
the floor, and at least 20× faster than the naive baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from pipeline.benchmarks.docs import replace_generated_block
from pipeline.config import Feed
from pipeline.logs import counted
from pipeline.samplegen import online_retail_like

__all__ = [
    "DEFAULT_INPUT",
    "FULL_ROWS",
    "TARGET_NAIVE_OVER_TRANSFORM",
    "TARGET_TRANSFORM_OVER_READ",
    "VARIANTS",
    "machine_info",
    "markdown_section",
    "online_retail_feed",
    "prepare_csv",
    "run_transform_benchmark",
    "run_variant",
    "update_docs",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INPUT = (
    REPO_ROOT.parent / "shared" / "datasets" / "online_retail_I" / "online_retail_I_2010-2011.parquet"
)
FULL_ROWS = 541_909
TARGET_TRANSFORM_OVER_READ = 2.5  # the transform may take at most this many times the floor
TARGET_NAIVE_OVER_TRANSFORM = 20.0  # the naive baseline must take at least this many times ours
TARGET_READ_FILE_OVER_READ = 2.0  # our reader alone may take at most this many times the floor
VARIANTS = (
    "polars_read_csv", "posfeed_transform", "naive_pydantic", "minimal_checkouts", "posfeed_read_file"
)
# the variants that alternate over the rounds (the naive baseline is too slow to repeat)
_ALTERNATING = ("polars_read_csv", "posfeed_read_file", "minimal_checkouts", "posfeed_transform")
DOCS_START = "<!-- transform-benchmark:start -->"
DOCS_END = "<!-- transform-benchmark:end -->"

# the feed of tests/fixtures/online_retail/online_retail.toml (a test keeps the two equal)
ONLINE_RETAIL_FEED: dict[str, Any] = {
    "name": "online_retail",
    "timezone": "Europe/London",
    "format": {
        "kind": "csv",
        "delimiter": ",",
        "encoding": "utf-8",
        "timestamp_format": "%Y-%m-%d %H:%M:%S",
        "columns": {
            "transaction_id": "InvoiceNo",
            "product_id": "StockCode",
            "product_name": "Description",
            "quantity": "Quantity",
            "timestamp": "InvoiceDate",
            "unit_price": "UnitPrice",
            "customer_id": "CustomerID",
            "store_id": "Country",
        },
        "defaults": {"currency": "GBP"},
    },
    "validation": {"currencies": ["GBP"], "treat_negative_quantity_as_return": True},
}


def online_retail_feed() -> Feed:
    """The feed that maps Online Retail's columns to the canonical layout."""
    return Feed.model_validate(ONLINE_RETAIL_FEED)


@dataclass(frozen=True)
class PreparedInput:
    """The CSV every variant reads, and where it came from."""

    csv_path: Path
    source: str  # the parquet path, or "synthetic"
    rows: int
    csv_bytes: int


def prepare_csv(out_dir: Path, *, input_path: Path | None = None, rows: int | None = None,
                synthetic: bool = False) -> PreparedInput:
    """Write the benchmark input as CSV once: the data set (its first ``rows``) or synthetic data."""
    path = input_path if input_path is not None else DEFAULT_INPUT
    if path.exists() and not synthetic:
        frame = pl.read_parquet(path)
        if rows is not None:
            frame = frame.head(rows)
        source = str(path)
    elif input_path is not None and not synthetic:
        raise FileNotFoundError(f"benchmark input {input_path} does not exist")
    else:
        frame = online_retail_like(rows if rows is not None else FULL_ROWS)
        source = "synthetic"
    csv_path = out_dir / "online_retail.csv"
    frame.write_csv(csv_path)
    return PreparedInput(csv_path, source, frame.height, csv_path.stat().st_size)


# ---- the three variants (each runs inside its own process) ------------------------------------


Runner = Callable[[Path], dict[str, Any]]


def _polars_read_csv() -> Runner:
    def run(csv_path: Path) -> dict[str, Any]:
        # every column as text: with type inference, read_csv stops at the first "C536379" invoice
        # number past the inference window, and typing values is validation's job anyway
        frame = pl.read_csv(csv_path, infer_schema=False)
        return {"rows": frame.height}

    return run


def _posfeed_transform() -> Runner:
    from pipeline.core.parse import read_file
    from pipeline.core.transform import transform

    feed = online_retail_feed()

    def run(csv_path: Path) -> dict[str, Any]:
        result = transform(read_file(csv_path, feed), feed, now=datetime.now(UTC))
        summary = result.summary
        return {
            "rows": summary["rows_in"],
            "rows_rejected": summary["rows_rejected"],
            "transactions": summary["transactions_in"],
            "checkouts": result.checkouts.height,
            "amount_in": summary["amount_in"],
        }

    return run


def _posfeed_read_file() -> Runner:
    from pipeline.core.parse import read_file

    feed = online_retail_feed()

    def run(csv_path: Path) -> dict[str, Any]:
        return {"rows": read_file(csv_path, feed).height}

    return run


def _naive_pydantic() -> Runner:
    """A typical hand-written importer: csv module, a pydantic model per row, dicts of Decimals."""
    from pydantic import BaseModel, Field, ValidationError, field_validator

    class InvoiceLine(BaseModel):
        invoice_no: str = Field(min_length=1)
        stock_code: str = Field(min_length=1)
        description: str | None = None
        quantity: int
        invoice_date: datetime
        unit_price: Decimal = Field(ge=0, decimal_places=4)
        customer_id: str | None = None
        country: str = Field(min_length=1)
        currency: str = "GBP"

        @field_validator("description", "customer_id", mode="before")
        @classmethod
        def _empty_is_none(cls, value: str | None) -> str | None:
            return value.strip() or None if isinstance(value, str) else value

        @field_validator("quantity")
        @classmethod
        def _not_zero(cls, value: int) -> int:
            if value == 0:
                raise ValueError("quantity is zero")
            return value

    london = ZoneInfo("Europe/London")

    def run(csv_path: Path) -> dict[str, Any]:
        checkouts: dict[str, dict[str, Any]] = {}
        rejects: list[tuple[int, str]] = []
        amount_in = Decimal("0")
        rows = 0
        with csv_path.open(newline="", encoding="utf-8") as handle:
            for line_no, raw in enumerate(csv.DictReader(handle), start=2):
                rows += 1
                try:
                    line = InvoiceLine.model_validate(
                        {
                            "invoice_no": raw["InvoiceNo"],
                            "stock_code": raw["StockCode"],
                            "description": raw["Description"],
                            "quantity": raw["Quantity"],
                            "invoice_date": raw["InvoiceDate"],
                            "unit_price": raw["UnitPrice"],
                            "customer_id": raw["CustomerID"],
                            "country": raw["Country"],
                        }
                    )
                except ValidationError as exc:
                    rejects.append((line_no, str(exc.errors()[0]["loc"])))
                    continue
                amount = Decimal(line.quantity) * line.unit_price
                amount_in += amount
                checkout = checkouts.get(line.invoice_no)
                if checkout is None:
                    moment = line.invoice_date.replace(tzinfo=london).astimezone(UTC)
                    checkout = checkouts[line.invoice_no] = {
                        "transaction_id": line.invoice_no,
                        "store_id": line.country,
                        "customer_id": line.customer_id,
                        "is_guest": line.customer_id is None,
                        "timestamp_utc": moment.isoformat(),
                        "currency": line.currency,
                        "total": Decimal("0"),
                        "items": [],
                    }
                checkout["total"] += amount
                checkout["items"].append(
                    {"product_id": line.stock_code, "product_name": line.description,
                     "quantity": line.quantity, "unit_price": line.unit_price, "line_total": amount}
                )
        for checkout in checkouts.values():
            returned = all(item["quantity"] < 0 for item in checkout["items"])
            checkout["transaction_type"] = "return" if returned else "sale"
        return {
            "rows": rows,
            "rows_rejected": len(rejects),
            "transactions": len(checkouts),
            "checkouts": len(checkouts),
            "amount_in": str(amount_in),
        }

    return run


def _minimal_checkouts() -> Runner:
    """The least any implementation of the contract does: no validation, no rejects, no summary.

    Read the CSV, type quantity, price and timestamp (Europe/London → UTC), group the lines into
    checkouts with nested items and a total, and give each checkout a sha256 of its canonical
    content (items in sorted order, as the export has no line numbers). This is what dedup across
    runs needs at the very least, so it bounds from below what (b) can cost.
    """
    import hashlib

    money = pl.Decimal(18, 4)

    def run(csv_path: Path) -> dict[str, Any]:
        lines = pl.read_csv(csv_path, infer_schema=False).with_columns(
            pl.col("Quantity").str.to_decimal(scale=3).alias("quantity"),
            pl.col("UnitPrice").str.to_decimal(scale=4).cast(money).alias("unit_price"),
            pl.col("InvoiceDate")
            .str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us", strict=False)
            .dt.replace_time_zone("Europe/London", ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
            .alias("timestamp_utc"),
        )
        gross = pl.col("quantity") * pl.col("unit_price")
        lines = lines.with_columns(gross.cast(money).alias("line_total"))
        amounts = ("quantity", "unit_price", "line_total")
        item_text = pl.concat_str(
            [pl.col("StockCode"), *(pl.col(c).cast(pl.String) for c in amounts)],
            separator="\x1f",
        )
        checkouts = lines.group_by("InvoiceNo", maintain_order=True).agg(
            pl.col("Country").first().alias("store_id"),
            pl.col("CustomerID").first().alias("customer_id"),
            pl.col("timestamp_utc").min(),
            pl.col("line_total").sum().alias("total"),
            pl.struct("StockCode", "Description", "quantity", "unit_price", "line_total").alias("items"),
            item_text.sort().str.join("\x1e").alias("_items_text"),
        )
        text = pl.concat_str(
            [pl.col(c).cast(pl.String).fill_null("") for c in
             ("InvoiceNo", "store_id", "customer_id", "timestamp_utc", "total", "_items_text")],
            separator="\x1f",
        )
        data = checkouts.select(text.cast(pl.Binary)).to_series().to_list()
        hashes = pl.Series("content_hash", [hashlib.sha256(b).hexdigest() for b in data])
        checkouts = checkouts.drop("_items_text").with_columns(hashes)
        return {"rows": lines.height, "checkouts": checkouts.height}

    return run


_SETUPS: dict[str, Callable[[], Runner]] = {
    "polars_read_csv": _polars_read_csv,
    "posfeed_transform": _posfeed_transform,
    "naive_pydantic": _naive_pydantic,
    "minimal_checkouts": _minimal_checkouts,
    "posfeed_read_file": _posfeed_read_file,
}


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a
    child would report its (bigger) parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return _peak_rss_bytes()


def _transform_stages(csv_path: Path) -> dict[str, float]:
    """Wall seconds of each transform stage, run one after the other (for profiling)."""
    from pipeline.core.dedup import dedup
    from pipeline.core.normalize import normalize, normalize_columns
    from pipeline.core.parse import read_file
    from pipeline.core.transform import transform
    from pipeline.core.validate import validate

    feed = online_retail_feed()
    now = datetime.now(UTC)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    lines = read_file(csv_path, feed)
    stages["read_file"] = time.perf_counter() - started
    started = time.perf_counter()
    checked = validate(lines, feed, now=now)
    stages["validate"] = time.perf_counter() - started
    started = time.perf_counter()
    # as transform does it: only the columns normalize reads are filtered
    valid = checked.select(normalize_columns(checked)).filter(checked.get_column("reject_code").is_null())
    checkouts, _items = normalize(valid, feed)
    stages["normalize"] = time.perf_counter() - started
    started = time.perf_counter()
    dedup(checkouts, None)
    stages["dedup"] = time.perf_counter() - started
    started = time.perf_counter()
    transform(lines, feed, now=now)
    stages["transform_total_after_read"] = time.perf_counter() - started
    return {name: round(seconds, 4) for name, seconds in stages.items()}


def run_variant(name: str, csv_path: Path, *, repeat: int = 1, profile: bool = False) -> dict[str, Any]:
    """Run one variant ``repeat`` times in this process: best and all wall times, peak memory."""
    runner = _SETUPS[name]()  # imports and model classes are built before the clock starts
    rss_before = _current_rss_bytes()
    times = []
    cpu_times = []  # CPU seconds of the process (all threads): steadier than wall on a busy machine
    outcome: dict[str, Any] = {}
    for _ in range(max(1, repeat)):
        started, cpu_started = time.perf_counter(), time.process_time()
        outcome = runner(csv_path)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    best = min(times)
    result = {
        "variant": name,
        **outcome,
        "wall_seconds": round(best, 4),
        "wall_seconds_all": [round(t, 4) for t in times],
        "cpu_seconds": round(min(cpu_times), 4),
        "cpu_seconds_all": [round(t, 4) for t in cpu_times],
        "rows_per_second": round(outcome["rows"] / best) if best > 0 else None,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": _peak_rss_bytes(),
    }
    if profile and name == "posfeed_transform":
        result["stages"] = _transform_stages(csv_path)
    return result


def _run_in_subprocess(name: str, csv_path: Path, *, repeat: int, profile: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "pipeline.benchmarks.transform", "--variant", name,
               "--csv", str(csv_path), "--repeat", str(repeat)]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark variant {name} failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _best_of(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of several processes' results, with every wall time and the highest peak."""
    best = dict(min(results, key=lambda r: r["wall_seconds"]))
    best["wall_seconds_all"] = [t for r in results for t in r["wall_seconds_all"]]
    best["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in results)
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in results)
    best["cpu_seconds_all"] = [t for r in results for t in r["cpu_seconds_all"]]
    best["processes"] = len(results)
    for result in results:
        if "stages" in result:
            best["stages"] = result["stages"]
    return best


def machine_info() -> dict[str, Any]:
    """The machine and versions a figure was measured with."""
    import pydantic

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "polars": pl.__version__,
        "pydantic": pydantic.VERSION,
        "polars_threads": pl.thread_pool_size(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def run_transform_benchmark(
    *,
    input_path: Path | None = None,
    rows: int | None = None,
    synthetic: bool = False,
    repeat: int = 3,
    naive_repeat: int = 1,
    profile: bool = True,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Write the input CSV once, run the three variants (fresh processes) and compare them.

    The floor (a) and ours (b) alternate over ``repeat`` rounds, one process per variant and round
    (two runs each, the first warming up), so a burst of load on a shared machine hits both alike;
    each keeps its best run. The naive baseline (c) runs ``naive_repeat`` times in one process.
    """
    machine = machine_info()  # before the run: the load average says how busy the machine was
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="posfeed-bench-", dir=work_dir) as tmp:
        prepared = prepare_csv(Path(tmp), input_path=input_path, rows=rows, synthetic=synthetic)
        for round_no in range(max(1, repeat)):
            for name in _ALTERNATING:
                runs[name].append(_run_in_subprocess(name, prepared.csv_path, repeat=2,
                                                     profile=profile and round_no == 0))
        runs["naive_pydantic"].append(
            _run_in_subprocess("naive_pydantic", prepared.csv_path, repeat=naive_repeat, profile=False)
        )
    variants = {name: _best_of(results) for name, results in runs.items()}
    read, ours, naive, minimal, reader = (variants[name]["wall_seconds"] for name in VARIANTS)
    transform_over_read = ours / read if read else None
    read_file_over_read = reader / read if read else None
    naive_over_transform = naive / ours if ours else None
    return {
        "benchmark": "transform",
        "input": {"source": prepared.source, "rows": prepared.rows, "csv_bytes": prepared.csv_bytes},
        "machine": machine,
        "repeat": repeat,
        "naive_repeat": naive_repeat,
        "variants": variants,
        "ratios": {
            "transform_over_read": round(transform_over_read, 2) if transform_over_read else None,
            "naive_over_transform": round(naive_over_transform, 1) if naive_over_transform else None,
            "minimal_over_read": round(minimal / read, 2) if read else None,
            "naive_over_minimal": round(naive / minimal, 1) if minimal else None,
            "read_file_over_read": round(read_file_over_read, 2) if read_file_over_read else None,
        },
        "targets": {
            "transform_over_read_max": TARGET_TRANSFORM_OVER_READ,
            "naive_over_transform_min": TARGET_NAIVE_OVER_TRANSFORM,
            "transform_over_read_met": bool(transform_over_read
                                            and transform_over_read <= TARGET_TRANSFORM_OVER_READ),
            "naive_over_transform_met": bool(naive_over_transform
                                             and naive_over_transform >= TARGET_NAIVE_OVER_TRANSFORM),
            "read_file_over_read_max": TARGET_READ_FILE_OVER_READ,
            "read_file_over_read_met": bool(read_file_over_read
                                            and read_file_over_read <= TARGET_READ_FILE_OVER_READ),
        },
    }


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:,.0f} MiB"


def markdown_section(report: dict[str, Any], *, command: str) -> str:
    """The generated part of docs/BENCHMARKS.md's Transform section."""
    machine, data, ratios, targets = report["machine"], report["input"], report["ratios"], report["targets"]
    labels = {
        "polars_read_csv": "(a) bare `polars.read_csv(infer_schema=False)` (floor)",
        "posfeed_transform": "(b) posfeed `read_file` + `transform`",
        "naive_pydantic": "(c) naive: `csv` + one pydantic model per row",
        "minimal_checkouts": "(d) minimal: read, type, group into hashed checkouts; no validation",
        "posfeed_read_file": "(e) posfeed `read_file` alone (the reader's share of (b))",
    }
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `{command}`.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cpus']} CPUs, {_mib(machine['memory_bytes'])} RAM, "
        f"{machine['platform']}",
        f"- Versions: Python {machine['python']}, polars {machine['polars']} "
        f"({machine['polars_threads']} threads), pydantic {machine['pydantic']}",
        f"- Load average when the run started: {machine.get('load_average_1m')} "
        "(other work shared the two CPUs; compare the ratios, not the absolute times)",
        f"- Input: {data['rows']:,} rows, {data['csv_bytes'] / 2**20:,.1f} MiB of CSV "
        f"({'UCI Online Retail' if data['source'] != 'synthetic' else 'synthetic, Online Retail shape'})",
        f"- (a), (e), (d) and (b) alternate over {report['repeat']} rounds, a fresh process per variant and "
        "round, two runs per process; the best run counts. (c) runs "
        f"{counted(report['naive_repeat'], 'time')} in its own process. Peak RSS is the process's high-water "
        "mark (`VmHWM`), so it includes the interpreter and imports (see \"RSS before\").",
        "",
        "| variant | wall time | CPU time | rows/s | peak RSS | RSS before | rows | rejected |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        v = report["variants"][name]
        rejected = v.get("rows_rejected", "–")
        lines.append(
            f"| {labels[name]} | {v['wall_seconds']:.3f} s | {v['cpu_seconds']:.3f} s | "
            f"{v['rows_per_second']:,} | "
            f"{_mib(v['peak_rss_bytes'])} | {_mib(v['rss_before_bytes'])} | {v['rows']:,} | {rejected} |"
        )
    met = {True: "met", False: "**missed**"}
    lines += [
        "",
        f"- (b) / (a) = **{ratios['transform_over_read']}×** "
        f"(target ≤ {targets['transform_over_read_max']}×: {met[targets['transform_over_read_met']]})",
        f"- (c) / (b) = **{ratios['naive_over_transform']}×** "
        f"(target ≥ {targets['naive_over_transform_min']}×: {met[targets['naive_over_transform_met']]})",
        f"- (e) / (a) = **{ratios['read_file_over_read']}×**: our reader against the bare read "
        f"(target ≤ {targets['read_file_over_read_max']:g}×: {met[targets['read_file_over_read_met']]})",
    ]
    lines.append(
        f"- (d) / (a) = **{ratios['minimal_over_read']}×** and "
        f"(c) / (d) = **{ratios['naive_over_minimal']}×**: "
        "the bounds that (b), which also validates, explains rejects and balances, cannot pass"
    )
    cpu = [report["variants"][name].get("cpu_seconds") for name in VARIANTS]
    if all(cpu):
        lines.append(
            f"- by CPU time (all threads of the process): (b) / (a) = {cpu[1] / cpu[0]:.2f}×, "
            f"(c) / (b) = {cpu[2] / cpu[1]:.1f}×"
        )
    stages = report["variants"]["posfeed_transform"].get("stages")
    if stages:
        lines += ["", "Where (b) spends its time (one more run after the timed ones, stage by stage):", "",
                  "| stage | wall time |", "|---|---:|"]
        names = {"transform_total_after_read": "all of `transform` (validate, normalize, dedup, summary)"}
        order = ["read_file", "validate", "normalize", "dedup", "transform_total_after_read"]
        ordered = sorted(stages.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        lines += [f"| {names.get(name, f'`{name}`')} | {seconds:.3f} s |" for name, seconds in ordered]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    """Replace the generated block of the Transform section in ``path`` (markers kept)."""
    replace_generated_block(path, section, start=DOCS_START, end=DOCS_END, heading="Transform")


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: run one variant on a CSV and print its measurements as JSON."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.benchmarks.transform")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    result = run_variant(args.variant, args.csv, repeat=args.repeat, profile=args.profile)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
