"""`posfeed check` and `posfeed feeds`: the library side of the two commands.

``check`` runs the pure transform on local files (no network, no ledger) and can write what it
produced; ``feeds`` loads and validates every feed file. Each returns an exit code; the CLI only
parses options and prints.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import (
    Feed,
    FeedLoadResult,
    FormatConfig,
    canonical_feed,
    env_needs,
    env_status,
    load_feed,
    load_feeds,
)
from pipeline.core.rejects import catalog_rows
from pipeline.core.transform import TransformResult, transform_files
from pipeline.csvsafe import write_atomic, write_frame_csv
from pipeline.errors import EXIT_CONFIG, EXIT_DATA, EXIT_OK, ConfigError
from pipeline.logs import counted
from pipeline.stages.transform import mask_result_customers

__all__ = [
    "FEED_COLUMNS",
    "CheckOutput",
    "check_exit_code",
    "check_files",
    "codes_text",
    "feed_rows",
    "feeds_exit_code",
    "format_check_summary",
    "format_feeds_table",
    "json_ready",
    "load_feed_rows",
    "missing_env",
    "write_check_outputs",
]

log = logging.getLogger(__name__)

_KIND_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xml": "poslog",
}


def _format_suffix(path: Path) -> str:
    """The suffix that names the file's format: `.jsonl` for `pos.jsonl` and `pos.jsonl.gz`."""
    name = path.name.lower()
    return Path(name.removesuffix(".gz")).suffix


def _guessed_feed(path: Path) -> Feed:
    """The canonical layout with the format guessed from the file's suffix (the one before `.gz`
    for a gzipped file: `pos.jsonl.gz` is JSON Lines; anything unknown is CSV)."""
    kind = _KIND_BY_SUFFIX.get(_format_suffix(path), "csv")
    return canonical_feed().model_copy(update={"format": FormatConfig(kind=kind)})  # type: ignore[arg-type]


def check_files(
    paths: Sequence[Path],
    *,
    feed_name: str | None = None,
    feeds_dir: Path = Path("feeds"),
    now: datetime | None = None,
) -> TransformResult:
    """Transform local files with no network and no ledger (dedup within the files only).

    With the feed's ``logging.hash_customer_ids`` (the default) every customer id in the result
    is hashed as in a run's reports, so no output of the check shows one in clear.
    """
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"no such file: {missing[0]}")
    # without --feed each file is read in the format its own name says, and all are checked together
    per_file = None if feed_name else [_guessed_feed(p) for p in paths]
    feed = load_feed(feed_name, feeds_dir) if feed_name else canonical_feed()
    if feed.records != "transactions":
        raise ConfigError(f'posfeed check reads checkout files; feed {feed.name} holds {feed.records} '
                          "(its rows are checked by posfeed run --dry-run)")
    result = transform_files(list(paths), feed, now=now or datetime.now(UTC), read_with=per_file)
    return mask_result_customers(result, feed) if feed.logging.hash_customer_ids else result


def check_exit_code(result: TransformResult) -> int:
    """0 when clean; 65 when rows were rejected, conflicts found or a file was unreadable."""
    summary = result.summary
    if summary["rows_rejected"] or summary["conflicts"] or result.unreadable:
        return EXIT_DATA
    return EXIT_OK


def json_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with decimals and dates as text (also inside nested items), for JSON output."""

    def text_type(dtype: Any) -> pl.DataType:
        if dtype.is_decimal() or dtype.is_temporal():
            return pl.String()
        if isinstance(dtype, pl.List):
            return pl.List(text_type(dtype.inner))
        if isinstance(dtype, pl.Struct):
            return pl.Struct({f.name: text_type(f.dtype) for f in dtype.fields})
        return dtype

    exprs = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime):
            pattern = "%Y-%m-%dT%H:%M:%S%.f" + ("Z" if dtype.time_zone else "")
            exprs.append(pl.col(name).dt.strftime(pattern))
        else:
            exprs.append(pl.col(name).cast(text_type(dtype)))
    return frame.select(exprs)


@dataclass(frozen=True)
class CheckOutput:
    """The files ``write_check_outputs`` wrote."""

    paths: tuple[Path, ...]


def write_check_outputs(result: TransformResult, out_dir: Path) -> CheckOutput:
    """Write checkouts (JSONL + Parquet), checkout items (Parquet + CSV), rejects.csv, summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, writer: Callable[[Path], None]) -> None:
        path = out_dir / name
        writer(path)
        written.append(path)

    put("checkouts.jsonl", lambda p: write_atomic(p, json_ready(result.checkouts).write_ndjson()))
    put("checkouts.parquet", lambda p: result.checkouts.write_parquet(p))
    put("checkout_items.parquet", lambda p: result.items.write_parquet(p))
    put("checkout_items.csv", lambda p: write_frame_csv(p, result.items))
    put("rejects.csv", lambda p: write_frame_csv(p, result.rejects))
    summary = json.dumps(result.summary, indent=2, sort_keys=True) + "\n"
    put("summary.json", lambda p: write_atomic(p, summary))
    log.info("check: wrote %d files to %s", len(written), out_dir)
    return CheckOutput(tuple(written))


def format_check_summary(result: TransformResult, *, max_rejects: int = 10) -> str:
    """A readable summary of a check (what `posfeed check` prints without --json)."""
    s = result.summary
    lines = [
        f"files: {', '.join(s['files']) or '(none readable)'}",
        *(f"no data rows: {name} (read; nothing in it to send)" for name in s.get("files_without_rows", [])),
        f"rows: {s['rows_in']} in, {s['rows_valid']} valid, {s['rows_rejected']} rejected",
        f"transactions: {s['transactions_in']} in, {s['transactions_valid']} valid "
        f"(new {s['new']}, duplicates {s['duplicates']}, conflicts {s['conflicts']}), "
        f"{s['transactions_rejected']} rejected",
        f"kinds: {counted(s['sales'], 'sale')}, {counted(s['returns'], 'return')} "
        f"({s['returns_unmatched']} unmatched), {counted(s['voids'], 'void')} (never sent), "
        f"{counted(s['guests'], 'guest checkout')}",
    ]
    for currency, amounts in (s.get("currencies") or {}).items():  # one line per currency
        lines.append(f"amounts {currency or '(no currency)'}: in {amounts['amount_in']} = valid "
                     f"{amounts['amount_valid']} + rejected {amounts['amount_rejected']}")
    for key, title in (("skipped_by_kind", "skipped (never sent)"), ("line_items_by_kind", "line items")):
        if s.get(key):
            lines.append(f"{title}: " + ", ".join(f"{kind} {count}" for kind, count in s[key].items()))
    if s["rejects_by_code"]:
        lines.append("rejects by code:")
        lines += [f"  {code:<40} {count}" for code, count in s["rejects_by_code"].items()]
    rejects = result.rejects.filter(pl.col("reject_code") != "R099_SIBLING_REJECTED").head(max_rejects)
    if rejects.height:
        lines.append(f"first rejects (file:line code field: reason), up to {max_rejects}:")
        shown = rejects.select("source_file", "source_line", "reject_code", "reject_field", "reject_reason")
        for file, line, code, field, reason in shown.iter_rows():
            lines.append(f"  {file}:{line} {code} {field}: {reason}")
    for error in result.unreadable:
        lines.append(f"unreadable: {error.file}: {error.reason}")
    return "\n".join(lines)


def codes_text() -> str:
    """The reject code catalog as plain text."""
    return "\n".join(f"{row['code']:<40} {row['description']}" for row in catalog_rows())


# ---- feeds --------------------------------------------------------------------------------------

# Extra columns for `posfeed feeds`: name -> function of a loaded feed. Other parts of the
# application add theirs here (e.g. the next run time from the scheduler) without touching the
# command itself.
FEED_COLUMNS: dict[str, Callable[[Feed], Any]] = {}


def _next_run(feed: Feed) -> str | None:
    """When `posfeed schedule` runs the feed next, in the feed's timezone (None: not scheduled)."""
    from datetime import UTC, datetime

    from pipeline.scheduling import next_run_time

    when = next_run_time(feed, datetime.now(UTC))
    return when.isoformat(timespec="minutes") if when is not None else None


FEED_COLUMNS["next_run"] = _next_run


def _source_text(feed: Feed) -> str:
    src = feed.source
    where = f"{src.host}:{src.path}" if src.kind == "sftp" and src.host else src.path
    return f"{src.kind} {where}/{src.pattern}"


def _target_text(feed: Feed) -> str:
    return f"{feed.target.kind} {feed.target.base_url}"


def feed_rows(results: Sequence[FeedLoadResult], environ: Mapping[str, str] | None = None
              ) -> list[dict[str, Any]]:
    """One JSON-ready row per feed file: its settings summary and the environment variables a run
    of it reads (each ``set``, ``file`` or ``missing``, never a value), or the error that stopped it."""
    environ = os.environ if environ is None else environ
    rows: list[dict[str, Any]] = []
    for result in results:
        if result.feed is None:
            error = result.error
            rows.append(
                {
                    "name": result.path.stem,
                    "file": str(result.path),
                    "ok": False,
                    "error": {
                        "file": error.source if error else str(result.path),
                        "key": error.key if error else None,
                        "problem": error.problem if error else "unknown error",
                    },
                }
            )
            continue
        feed = result.feed
        row: dict[str, Any] = {
            "name": feed.name,
            "file": str(result.path),
            "ok": True,
            "enabled": feed.enabled,
            "scope": feed.scope,
            "timezone": feed.timezone,
            "source": _source_text(feed),
            "format": feed.format.kind,
            "target": _target_text(feed),
            "schedule": feed.schedule,
            "env": [{"key": n.key, "variable": n.variable, "status": env_status(n, environ)}
                    for n in env_needs(feed)],
        }
        for name, column in FEED_COLUMNS.items():
            try:
                row[name] = column(feed)
            except Exception as exc:  # a column must never hide the listing
                log.warning("feeds: column %s failed for %s: %s", name, feed.name, exc)
                row[name] = None
        rows.append(row)
    return rows


def format_feeds_table(rows: Sequence[dict[str, Any]]) -> str:
    """The feeds as an aligned text table (errors listed below it)."""
    columns = ["name", "enabled", "schedule", "source", "target", *FEED_COLUMNS]
    good = [r for r in rows if r["ok"]]
    table = [[str(c).upper() for c in columns]]
    table += [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in good]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table]
    out += _missing_env_lines(good)
    for r in rows:
        if not r["ok"]:
            e = r["error"]
            out.append(f"ERROR {e['file']}: {e['key'] or '(file)'}: {e['problem']}")
    if not rows:
        out.append("(no feed files)")
    return "\n".join(out)


def missing_env(rows: Sequence[dict[str, Any]], *, enabled_only: bool = True
                ) -> dict[tuple[str, str], list[str]]:
    """``(variable, key) -> feed names`` of the variables not set (nor their secret file there)."""
    missing: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r["ok"] and (r["enabled"] or not enabled_only):
            for need in r["env"]:
                if need["status"] == "missing":
                    name = r["name"] if r["enabled"] else f"{r['name']} (disabled)"
                    missing.setdefault((need["variable"], need["key"]), []).append(name)
    return dict(sorted(missing.items()))


def _missing_env_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The variables not set, each with its key and the feeds that read it, as a second table."""
    missing = missing_env(rows, enabled_only=False)
    if not missing:
        return []
    table = [["VARIABLE", "KEY", "FEEDS"]]
    table += [[variable, key, ", ".join(names)] for (variable, key), names in missing.items()]
    widths = [max(len(row[i]) for row in table) for i in range(2)]
    return ["", "Not set in this environment (a run stops with exit 78 without its credentials; without "
            "alerts.webhook_url_env it sends no alert):",
            *(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}" for row in table)]


def load_feed_rows(feeds_dir: Path) -> list[dict[str, Any]]:
    """Load and validate every feed file of ``feeds_dir``."""
    return feed_rows(load_feeds(feeds_dir))


def feeds_exit_code(rows: Sequence[dict[str, Any]]) -> int:
    """78 when any feed file is bad or an enabled feed reads a variable that is not set, else 0."""
    return EXIT_CONFIG if any(not r["ok"] for r in rows) or missing_env(rows) else EXIT_OK
