"""Report stage: build a run's (or a business day's) report from the ledger and write it."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.ledger import Ledger
from pipeline.reports import Report, build_report, write_report
from pipeline.sources.discovery import of_business_date

__all__ = [
    "day_of_file", "day_problems", "day_report", "files_in_ledger", "files_not_read",
    "files_of_day_without_rows", "report_folder", "run_report", "undated_files_of_day", "write_run_report",
]

log = logging.getLogger(__name__)


def report_folder(reports_dir: Path, feed: str, report_id: str) -> Path:
    """``REPORTS_DIR/<feed>/<report_id>/``."""
    return reports_dir / feed / report_id


def run_report(ledger: Ledger, run_id: str, *, extra: dict[str, Any] | None = None) -> Report:
    """The report of one run: the transactions it handled, as the run left them (state, attempts,
    error, event ids: the run's own outcome, whatever later runs did), so it is reproduced. Every
    file it saw has a row: a new file read with no data rows too, and those it did not read. A
    run killed before it recorded its summary has the files it fetched from the ledger
    (:func:`files_in_ledger`), kept with its report when that is first written.

    Its detail and reject rows are read from ``ledger`` page by page when it is written: write it
    while the ledger is open."""
    run = ledger.run(run_id)
    if run is None:
        raise KeyError(run_id)
    file_ids = ledger.run_file_ids(run_id)
    names = {i: ledger.file(i).name for i in file_ids}
    totals = [(names[f], store, day, rows, count, amount, currency)
              for f, store, day, currency, rows, count, amount in ledger.currency_totals(file_ids)]
    details: dict[str, Any] = {
        "kind": run.kind,
        "dry_run": run.dry_run,
        "scope": run.scope,
        "started_at": run.started_at,
        "selection": run.selection,
    }
    details.update(extra or {})
    if run.kind == "run" and run.counts is None:  # its report is first written: at its end or crash
        details.update({k: v for k, v in files_in_ledger(ledger, run_id).items() if k not in details})
    not_read = files_not_read(details)
    seen = {name for name, *_ in totals} | {name for name, _, _ in not_read}
    new_files = [str(name) for name in details.get("files_new") or [] if str(name) not in seen]
    return build_report(
        report_id=run_id,
        feed=run.feed,
        transactions=lambda: ledger.iter_run_transactions(run_id, at_end=True),
        file_totals=totals,
        rejects=lambda: ledger.iter_rejects(run_id=run_id),
        pending_is_final=run.dry_run,
        extra=details,
        files_not_read=not_read,
        files_without_rows=ledger.files_without_rows(run.scope, new_files),
    )


def files_in_ledger(ledger: Ledger, run_id: str) -> dict[str, Any]:
    """What the ledger knows of the files a run fetched, as its summary says it (``files_new``,
    ``unreadable_files``, and ``interrupted_files`` when some were fetched and never read): the
    summary of a run killed before it recorded its own."""
    records = ledger.files(run_id=run_id)
    seen: dict[str, Any] = {
        "files_new": [r.name for r in records],
        "unreadable_files": [{"file": r.name, "reason": r.error or ""}
                             for r in records if r.status in ("unreadable", "quarantined")],
    }
    interrupted = [{"file": r.name, "reason": _INTERRUPTED} for r in records if r.status == "fetched"]
    return {**seen, "interrupted_files": interrupted} if interrupted else seen


# run summary key -> the origin its files get in summary.csv
_NOT_READ = (
    ("unreadable_files", "unreadable"),
    ("fetch_failures", "fetch_failed"),
    ("skipped_files", "skipped"),
    ("already_processed_files", "already_processed"),
    ("files_in_quarantine", "quarantined"),
    ("interrupted_files", "interrupted"),
)
_INTERRUPTED = "fetched; the run ended before reading it (the next run reads it)"
# files_in_quarantine are names: each has this reason
_IN_QUARANTINE = ("unreadable in an earlier run and set aside: not read again until a new file takes "
                  "its name or posfeed release frees it")


def files_not_read(details: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source_file, origin, reason) of every file the run saw and did not read, from its summary."""
    return [
        (str(item.get("file", "")), origin, str(item.get("reason", ""))) if isinstance(item, dict)
        else (item, origin, _IN_QUARANTINE)
        for key, origin in _NOT_READ
        for item in details.get(key) or []
        if isinstance(item, dict | str)
    ]


def day_report(ledger: Ledger, feed: str, business_date: str, *, pattern: str | None = None) -> Report:
    """The report of one business day of a feed: every row of its files for that date, in its
    current state (later reruns included); the rows of no business date (none readable) of the
    files that belong to the day (:func:`undated_files_of_day`); and a row for each file of the
    day with no rows (:func:`files_of_day_without_rows`; ``pattern`` is the feed's
    ``source.pattern``). Written while ``ledger`` is open, as :func:`run_report`."""
    without_rows, not_read = files_of_day_without_rows(ledger, feed, business_date, pattern)
    undated = undated_files_of_day(ledger, feed, business_date, pattern)
    file_ids = ledger.day_file_ids(feed, business_date) | undated
    names = {i: ledger.file(i).name for i in file_ids}
    totals = [(names[f], store, day, rows, count, amount, currency)
              for f, store, day, currency, rows, count, amount in ledger.currency_totals(file_ids)
              if day == business_date or (not day and f in undated)]
    return build_report(
        report_id=f"day-{business_date}",
        feed=feed,
        transactions=lambda: ledger.iter_day_transactions(feed, business_date, undated_files=undated),
        file_totals=totals,
        rejects=lambda: ledger.iter_rejects(feed=feed, business_date=business_date, undated_files=undated),
        extra={"kind": "business_day", "business_date": business_date,
               "problems": day_problems(ledger, feed, business_date)},
        files_not_read=not_read,
        files_without_rows=without_rows,
    )


def undated_files_of_day(ledger: Ledger, feed: str, business_date: str, pattern: str | None) -> set[int]:
    """The feed's files with rows of no business date (rejected: no date readable) whose rows
    count in ``business_date``: each such file belongs to exactly one day (:func:`day_of_file`)."""
    return {file_id for file_id in sorted(ledger.undated_file_ids(feed))
            if day_of_file(ledger, file_id, pattern) == business_date}


def day_of_file(ledger: Ledger, file_id: int, pattern: str | None) -> str | None:
    """The one business day a file's rows of no date count in: the day its name gives under
    ``pattern`` (among the dates of its rows and those its first run was fetching), else the
    first date of its other rows, else the first date its first run was fetching; None when
    nothing tells (a run killed before it recorded its dates, on a file with no dated row)."""
    record = ledger.file(file_id)
    dated = ledger.file_business_dates(file_id)
    run = ledger.run(record.first_run_id)
    fetched_for = sorted(str(d) for d in ((run.counts or {}).get("business_dates") or [])) if run else []
    if pattern:
        named = [d for d in sorted({*dated, *fetched_for})
                 if of_business_date(record.name, pattern, date.fromisoformat(d))]
        if named:
            return named[0]
    first = dated or fetched_for
    return first[0] if first else None


def files_of_day_without_rows(
    ledger: Ledger, feed: str, business_date: str, pattern: str | None
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The feed's files with no row, so no business date of their own, that belong to
    ``business_date``: by their name when ``pattern`` names the date (the day discovery took them
    for), else when the run that first fetched them was fetching that day. Returns the names of
    those read with no data rows, and (name, ``unreadable``, reason) of the unreadable ones."""
    day = date.fromisoformat(business_date)
    without_rows: list[str] = []
    not_read: list[tuple[str, str, str]] = []
    for record in ledger.files_without_day(feed):
        placed = of_business_date(record.name, pattern, day) if pattern else None
        if placed is None:
            run = ledger.run(record.first_run_id)
            placed = run is not None and business_date in ((run.counts or {}).get("business_dates") or [])
        if not placed:
            continue
        if record.status in ("unreadable", "quarantined"):
            not_read.append((record.name, "unreadable", record.error or ""))
        else:
            without_rows.append(record.name)
    return without_rows, not_read


def day_problems(ledger: Ledger, feed: str, business_date: str) -> list[dict[str, Any]]:
    """The problems a business day's report shows: every open problem of the feed, and the
    resolved ones of that business date (each as :meth:`pipeline.problems.Problem.to_dict`)."""
    return [p.to_dict() for p in ledger.problems(feed=feed, open_only=False)
            if p.status == "open" or p.business_date == business_date]


def write_run_report(report: Report, reports_dir: Path, feed: str, report_id: str) -> Path:
    """Write ``report`` under ``REPORTS_DIR/<feed>/<report_id>/``; returns the folder."""
    folder = write_report(report, report_folder(reports_dir, feed, report_id))
    log.info("reports written to %s", folder)
    return folder
