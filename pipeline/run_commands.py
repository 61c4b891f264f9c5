"""The run-related commands behind the CLI: `run`, `rerun`, `runs`, `report`, `demo`.

Each function takes parsed options, calls the library (:mod:`pipeline.runner`,
:mod:`pipeline.stages.report`, :mod:`pipeline.demo`), prints the result (text, or JSON with
``as_json``) and returns the exit code.
"""

from __future__ import annotations

import json
import logging
import shlex
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import click

from pipeline.config import Feed, Settings, check_alongside, load_feed, load_feeds
from pipeline.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_TEMPFAIL,
    ConfigError,
    PosfeedError,
    worst_exit_code,
)
from pipeline.ledger import Ledger
from pipeline.logs import counted, say, shown, told
from pipeline.progress import make_progress
from pipeline.reports import left_for_next_run, returns_waiting, unaccounted_words, write_report
from pipeline.runner import RerunSelection, RunSummary, exit_cause, rerun_feed, run_feed
from pipeline.scope_locks import runs_alive
from pipeline.stages.report import day_report, report_folder, run_report

__all__ = [
    "balance_words",
    "demo_command",
    "missing_command",
    "report_command",
    "rerun_command",
    "run_command",
    "runs_command",
]

log = logging.getLogger(__name__)

_MEANING = {
    EXIT_OK: "all final and balanced",
    EXIT_DATA: "data errors: see rejects and conflicts",
    EXIT_TEMPFAIL: "try again later: the next run sends what is left",
    EXIT_INTERNAL: "internal error",
    EXIT_CONFIG: "configuration error: the platform refused our credentials",
}


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or the first Ctrl-C: the run stops between batches, consistent.
    A second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _feeds(settings: Settings, names: Sequence[str], all_feeds: bool) -> tuple[list[Feed], list[ConfigError]]:
    if all_feeds and names:
        raise click.UsageError("--all and --feed cannot be combined: give --feed NAME (repeatable) or --all")
    if not all_feeds and not names:
        raise click.UsageError("give --feed NAME (repeatable) or --all")
    if names:
        feeds = [load_feed(name, settings.feeds_dir) for name in names]
        for feed in feeds:
            check_alongside(feed, settings.feeds_dir)
        return feeds, []
    results = load_feeds(settings.feeds_dir)
    if not results:
        raise ConfigError(f"no feed files in {settings.feeds_dir}")
    return ([r.feed for r in results if r.feed is not None and r.feed.enabled],
            [r.error for r in results if r.error is not None])


def currency_lines(summary: dict[str, Any]) -> list[str]:
    """One line per currency: in = valid + rejected, and accepted (amounts of two currencies are
    never added together). No line for records that carry no money (enrollments, claims)."""
    lines = []
    for currency, a in (summary.get("currencies") or {}).items():
        if not currency and not any(Decimal(str(v or 0)) for v in a.values()):
            continue
        label = f"{currency or '(none)'}:"
        lines.append(f"  {label:<10} in {a['amount_in']} = valid {a['amount_valid']} + rejected "
                     f"{a['amount_rejected']}; accepted {a.get('amount_accepted', '0')}")
    return lines


def _points(awarded: str | None) -> str:
    """``points 120``, or that the platform reported none (CRM.COM's answers carry no points)."""
    return f"points {awarded}" if awarded is not None else "no points reported"


def format_summary(summary: RunSummary) -> str:
    """A few human lines about one run."""
    s = summary.summary
    dry = bool(s.get("dry_run"))
    kind = "dry run" if dry else s.get("kind", "run")
    meaning = _MEANING.get(summary.exit_code, "")
    if summary.exit_code == EXIT_OK and s.get("needs_rerun"):
        older = counted(s["needs_rerun"], "older transaction")
        needs = "needs" if s["needs_rerun"] == 1 else "need"
        meaning = f"this run's work is final and balanced; {older} {needs} a rerun"
    if summary.exit_code == EXIT_OK and s.get("waiting_for_sale"):
        meaning = "all else final and balanced; returns wait for their sale (see waiting)"
    lines = [
        f"{summary.feed} {kind} {summary.run_id}: exit {summary.exit_code} ({meaning})",
        f"  in:        {counted(s['rows_in'], 'row')}, {counted(s['transactions_in'], 'transaction')}",
        *currency_lines(s),
        f"  accepted:  {s['accepted']} ({_points(s.get('points_awarded'))})",
        f"  rejected:  {counted(s['transactions_rejected'], 'transaction')} "
        f"({counted(s['rows_rejected'], 'row')})",
        f"  skipped:   {counted(s['duplicates'], 'duplicate')}, {counted(s.get('voids', 0), 'void')}"
        + (f" ({s['voids_of_sent_sales']} of a sale already on the platform: act on it, see "
           "void_of_sent_sale in detail.csv)" if s.get("voids_of_sent_sales") else "")
        + (f" ({s['post_voided']} of them sales a void names: never sent, post_voided in detail.csv)"
           if s.get("post_voided") else "")
        + f", {s.get('not_sent', 0)} not sendable",
        f"  held:      {counted(s['conflicts'], 'conflict')}",
        f"  failed:    {s['failed_retryable']} retryable"
        + (f" ({s['waiting_for_sale']} of them returns waiting for their sale)"
           if s.get("waiting_for_sale") else "")
        + f", {s['failed_permanent']} permanent"
        + (f" ({s['partly_refunded']} of them refunded in part on the platform: see "
           "partly_refunded_amount)" if s.get("partly_refunded") else "")
        + f", {s['in_doubt']} in doubt" + (f", {s['queued']} queued" if s.get("queued") and not dry else ""),
        *([f"  would send: {s.get('queued', 0)} (everything else decided as a real run would)"]
          if dry else []),
        f"  balanced:  {balance_words(s)}",
    ]
    if "waiting" in s:
        oldest = (f", oldest first recorded {s['waiting_oldest_at']} "
                  f"({_age(s.get('waiting_oldest_age_seconds'))} ago)" if s.get("waiting") else "")
        lines.append(f"  backlog:   carried over {s.get('carried_over', 0)} from earlier runs; "
                     f"{s['waiting']} waiting for the next run{oldest}")
    if s.get("needs_rerun"):
        lines.append(f"  needs rerun: {s['needs_rerun']} past the [resume] caps or refused as requests "
                     + told(f"(`posfeed rerun --feed {summary.feed} --failed`)"))
    if s.get("superseded_files"):
        lines.append(f"  superseded files: {', '.join(s['superseded_files'])}")
    for item in s.get("unreadable_files") or []:
        lines.append(f"  unreadable: {item['file']}: {item['reason']}")
    if s.get("source_unreachable"):
        lines.append(f"  source:    not reached, no file read (the next run reads them): "
                     f"{s['source_unreachable']}")
    for item in s.get("fetch_failures") or []:
        lines.append(f"  not fetched: {item['file']}: {item['reason']}")
    for item in s.get("skipped_files") or []:
        lines.append(f"  not taken: {item['file']}: {item['reason']}")
    for name in s.get("files_in_quarantine") or []:
        lines.append(f"  in quarantine (not read again): {name}")
    if s.get("waiting_for_sale"):
        lines.append(f"  waiting:   {_sale_wait_line(s)}")
    if "problems" in s:
        lines.append(f"  problems:  {_open_problems_line(s['problems'])}")
    if summary.reports_path:
        lines.append(f"  reports:   {summary.reports_path}")
    return "\n".join(lines)


def balance_words(s: dict[str, Any]) -> str:
    """``yes``; ``not yet: 2 transactions queued, not sent yet: the next run sends them`` for a
    run that left work for the next one (every row is counted all the same); ``NO: ...`` with
    what is missing when what came in is not all counted (a bug)."""
    if s.get("balanced"):
        return "yes"
    if s.get("unaccounted"):
        return (f"NO: {unaccounted_words(s['unaccounted'])} (a bug: please report it with the log "
                "and summary.csv)")
    left = left_for_next_run(s.get("in_doubt") or 0, 0 if s.get("dry_run") else s.get("queued") or 0)
    return f"not yet: {'; '.join(left)}" if left else "NO"


def _sale_wait_line(s: dict[str, Any]) -> str:
    """``N returns wait for their sale until <time>`` (``1 return waits for its sale ...``): the
    first recorded of them gives up then (``resume.sale_wait_hours``); each goes by itself once
    its sale's export is delivered."""
    until = datetime.fromisoformat(s["waiting_for_sale_until"]).astimezone(UTC)
    first = " for the first recorded" if s["waiting_for_sale"] > 1 else ""
    each = "it is" if s["waiting_for_sale"] == 1 else "each is"
    return (f"{returns_waiting(s['waiting_for_sale'])} until {until:%Y-%m-%d %H:%M} UTC{first} "
            f"(resume.sale_wait_hours; then failed for good, exit 65); {each} sent by the run after "
            "its sale's export arrives")


def _age(seconds: Any) -> str:
    """``42s``, ``17m``, ``5.2h``, ``3.1d``."""
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def cause_of(summary: RunSummary) -> str:
    """Why a run did not exit 0, in one line (what stderr says without ``-v``)."""
    return exit_cause(summary.summary, summary.exit_code) or _MEANING.get(summary.exit_code, "")


def _open_problems_line(problems: list[dict[str, Any]]) -> str:
    if not problems:
        return "none open"
    shown = "; ".join(
        f"#{p['problem_id']} {p['kind']} {p.get('subject') or p.get('store_id') or ''}".rstrip()
        for p in problems[:5]
    )
    return f"{len(problems)} open: {shown}" + (told(f"; {len(problems) - 5} more: `posfeed problems`")
                                               if len(problems) > 5 else "")


def _emit(summaries: list[RunSummary], errors: list[dict[str, Any]], as_json: bool) -> None:
    for summary in summaries:  # the cause of every non-zero exit, whatever the verbosity
        if summary.exit_code != EXIT_OK:
            say(f"posfeed: {summary.feed} {summary.run_id}: exit {summary.exit_code}: {cause_of(summary)}",
                event="exit", feed=summary.feed, run_id=summary.run_id, exit_code=summary.exit_code)
    for error in errors:
        say(f"posfeed: {error['feed']}: exit {error['exit_code']}: {error['error']}",
            event="exit", feed=error["feed"], exit_code=error["exit_code"])
    if as_json:
        docs = [s.to_dict() for s in summaries]
        if len(docs) == 1 and not errors:
            _print_json(docs[0])
        else:
            _print_json({"runs": docs, "errors": errors})
        return
    for summary in summaries:
        click.echo(format_summary(summary))


def run_command(
    settings: Settings,
    feed_names: Sequence[str],
    *,
    all_feeds: bool,
    dry_run: bool,
    business_dates: list[date],
    as_json: bool,
) -> int:
    """`posfeed run`: run each selected feed, print the summaries, return the worst exit code."""
    feeds, config_errors = _feeds(settings, feed_names, all_feeds)
    for feed in feeds:  # before any feed runs: a day to come has no files yet, only typos
        for day in business_dates:
            _check_future(feed, day)
    summaries: list[RunSummary] = []
    errors: list[dict[str, Any]] = [
        {"feed": e.source, "exit_code": e.exit_code, "error": str(e)} for e in config_errors
    ]
    single = len(feeds) == 1 and not config_errors
    with stop_on_signals() as stop, make_progress(json_output=as_json) as progress:
        for feed in feeds:
            if stop.is_set():
                break
            try:
                summaries.append(run_feed(feed, settings, dry_run=dry_run,
                                          business_dates=business_dates or None, stop=stop,
                                          progress=progress))
            except PosfeedError as exc:  # one feed's trouble does not stop the others
                if single:
                    raise
                errors.append({"feed": feed.name, "exit_code": exc.exit_code, "error": shown(exc)})
    _emit(summaries, errors, as_json)
    return worst_exit_code([s.exit_code for s in summaries] + [e["exit_code"] for e in errors])


def rerun_command(
    settings: Settings,
    run_id: str | None,
    *,
    feed_name: str | None,
    failed: bool,
    file: str | None,
    store_id: str | None,
    business_date: date | None,
    include_permanent: bool,
    dry_run: bool,
    as_json: bool,
) -> int:
    """`posfeed rerun`: resend a selection of failed transactions as a run of its own."""
    selection = RerunSelection(run_id, failed, file, store_id, business_date, include_permanent)
    if selection.is_empty():
        raise click.UsageError("give RUN_ID, --failed, --file, --store or --business-date")
    if feed_name is None and run_id is None:
        raise click.UsageError("give --feed NAME (or a RUN_ID, whose feed is used)")
    run_feed_name: str | None = None
    if run_id is not None:
        if not settings.ledger_exists():
            raise click.BadParameter(f"no ledger at {settings.ledger_name}", param_hint="RUN_ID")
        with Ledger(settings.ledger_location) as ledger:
            run = ledger.run(run_id)
        if run is None:
            raise click.BadParameter(f"no run {run_id!r} in {settings.ledger_name}", param_hint="RUN_ID")
        run_feed_name = run.feed
    feed = load_feed(feed_name or str(run_feed_name), settings.feeds_dir)
    if run_feed_name is not None and run_feed_name != feed.name:
        raise click.UsageError(f"RUN_ID {run_id} is a run of feed {run_feed_name!r}, not of --feed "
                               f"{feed.name!r}: give one of them, or the feed of the run")
    _check_selection(settings, feed, selection)
    with stop_on_signals() as stop, make_progress(json_output=as_json) as progress:
        summary = rerun_feed(feed, settings, selection, dry_run=dry_run, stop=stop, progress=progress)
    if not as_json and summary.exit_code == EXIT_OK and _resent_nothing(summary):
        which = "failed" if selection.include_permanent else "failed_retryable"
        click.echo(f"nothing to rerun: {_selection_text(feed, selection)}: it holds no {which} "
                   "transaction to resend")
        return summary.exit_code
    _emit([summary], [], as_json)
    return summary.exit_code


def _resent_nothing(summary: RunSummary) -> bool:
    """True when a rerun found nothing to resend or settle: its summary would be all zeros."""
    return not summary.summary.get("transactions_in") and not summary.summary.get("carried_over")


def _selection_text(feed: Feed, selection: RerunSelection) -> str:
    """A rerun's selection as given: ``run RUN_ID`` or ``feed NAME``, then its options."""
    given = selection.to_dict()
    parts = [f"run {selection.run_id}" if selection.run_id else f"feed {feed.name}"]
    parts += [f"{option} {given[key]}" for option, key in (
        ("--file", "file"), ("--store", "store_id"), ("--business-date", "business_date")) if given[key]]
    parts += [flag for flag, on in (("--failed", selection.failed),
                                    ("--include-permanent", selection.include_permanent)) if on]
    return ", ".join(parts)


def latest_today(feed: Feed) -> date:
    """Today's date in whichever of the feed's timezones (its own, its stores') is furthest ahead."""
    now = datetime.now(UTC)
    zones = {feed.timezone, *feed.store_timezones.values()}
    return max(now.astimezone(ZoneInfo(zone)).date() for zone in zones)


def _check_future(feed: Feed, business_date: date | None) -> None:
    """A business date that has not begun in any of the feed's timezones is a usage error."""
    if business_date is not None and business_date > latest_today(feed):
        raise click.BadParameter(f"{business_date.isoformat()} is in the future (today is "
                                 f"{latest_today(feed).isoformat()} at the latest, in feed "
                                 f"{feed.name}'s timezones)", param_hint="--business-date")


def _check_selection(settings: Settings, feed: Feed, selection: RerunSelection) -> None:
    """Refuse, as a usage error naming the options, a rerun whose file, store or business date the
    ledger holds no transaction of (in any state) for the feed, or whose selectors hold none
    together (``--file`` of one store with ``--store`` of another): such a rerun would resend
    nothing and look like success. A selection that holds transactions, none failed, is fine."""
    _check_future(feed, selection.business_date)
    named = {"--file": {"file": selection.file}, "--store": {"store_id": selection.store_id},
             "--business-date": {"business_date": selection.business_date.isoformat()
                                 if selection.business_date else None}}
    named = {option: criteria for option, criteria in named.items() if next(iter(criteria.values()))}
    if not named:
        return
    # as the rerun selects: a run's transactions whatever feed recorded them, else the feed's
    scope_of = {"feed": None if selection.run_id else feed.name}
    holds: dict[str, bool] = {}
    together = quarantined = False
    if settings.ledger_exists():
        with Ledger(settings.ledger_location) as ledger:
            holds = {option: ledger.selection_holds(feed.scope, **scope_of, **criteria)
                     for option, criteria in named.items()}
            quarantined = bool(selection.file and ledger.quarantined_files(
                feed.scope, feed=feed.name, name=selection.file))
            if all(holds.values()):
                combined = {k: v for criteria in named.values() for k, v in criteria.items()}
                together = ledger.selection_holds(feed.scope, run_id=selection.run_id, **scope_of, **combined)
    for option, criteria in named.items():
        if not holds.get(option):
            value = next(iter(criteria.values()))
            hint = ""
            if option == "--file" and quarantined:
                hint = told(f": it was unreadable and is in quarantine; `posfeed release {value} --feed "
                            f"{feed.name}` lets the next run read it")
            elif option == "--file" and "/" in str(value):
                hint = " (give the file's name as the source lists it, not a path)"
            raise click.BadParameter(f"the ledger holds no transaction of feed {feed.name} with "
                                     f"{option} {value}{hint}", param_hint=option)
    if not together:
        options = (["RUN_ID"] if selection.run_id else []) + list(named)
        given = " ".join(([selection.run_id] if selection.run_id else [])
                         + [f"{o} {next(iter(named[o].values()))}" for o in named])
        raise click.UsageError(f"{', '.join(options[:-1])} and {options[-1]} select no transaction "
                               f"together ({given}): each holds transactions of feed {feed.name}, "
                               "but none of them all")


_RUN_COLUMNS = ("run_id", "feed", "kind", "status", "exit", "rows_in", "accepted", "rejected", "duplicates",
                "conflicts", "failed_retryable", "failed_permanent", "in_doubt", "queued",
                "voids_of_sent_sales", "balanced")


# what a run the ledger records as running shows, by whether it still holds its scope's lock
_LIVE_STATUS = {True: "running", False: "crashed", None: "unknown"}


def runs_command(settings: Settings, *, feed: str | None, limit: int | None, as_json: bool) -> int:
    """`posfeed runs`: run history, newest first."""
    records = []
    if settings.ledger_exists():
        with Ledger(settings.ledger_location) as ledger:
            records = ledger.runs(feed=feed, limit=limit)
    if feed and not records:
        load_feed(feed, settings.feeds_dir)  # a feed that does not exist is an error, not "no runs"
    alive = runs_alive(settings.ledger_url, settings.state_dir, [r for r in records if r.status == "running"])
    rows = []
    for run in records:
        counts = run.counts or {}
        rows.append({
            "run_id": run.id, "feed": run.feed, "scope": run.scope,
            "kind": run.kind + (" (dry)" if run.dry_run else ""),
            "status": _LIVE_STATUS[alive[run.id]] if run.id in alive else run.status,
            "recorded_status": run.status,
            "exit": run.exit_code, "started_at": run.started_at, "finished_at": run.finished_at,
            "rows_in": counts.get("rows_in"), "accepted": counts.get("accepted"),
            "rejected": counts.get("transactions_rejected"), "duplicates": counts.get("duplicates"),
            "conflicts": counts.get("conflicts"), "failed_retryable": counts.get("failed_retryable"),
            "failed_permanent": counts.get("failed_permanent"), "in_doubt": counts.get("in_doubt"),
            "queued": counts.get("queued"),
            # voids naming a sale already on the platform (void_of_sent_sale): to act on
            "voids_of_sent_sales": counts.get("voids_of_sent_sales"),
            "balanced": counts.get("balanced"), "selection": run.selection,
            "carried_over": counts.get("carried_over"), "waiting": counts.get("waiting"),
            "waiting_oldest_at": counts.get("waiting_oldest_at"), "needs_rerun": counts.get("needs_rerun"),
        })
    if as_json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        click.echo("no runs yet")
        return EXIT_OK
    cells = [{**r, "balanced": _balance_cell(r, run.counts or {})}
             for r, run in zip(rows, records, strict=True)]
    table = [list(_RUN_COLUMNS)] + [["" if r[c] is None else str(r[c]) for c in _RUN_COLUMNS] for r in cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(_RUN_COLUMNS))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _balance_cell(row: dict[str, Any], counts: dict[str, Any]) -> str | None:
    """The ``balanced`` cell of `posfeed runs`: ``yes``; ``not yet`` when the run left work for the
    next one (queued, in doubt) and counted every row; ``NO`` when what came in is not all counted."""
    if row["balanced"] is None:
        return None
    if row["balanced"]:
        return "yes"
    pending = (counts.get("in_doubt") or 0) + (0 if counts.get("dry_run") else counts.get("queued") or 0)
    return "not yet" if pending and not counts.get("unaccounted") and "unaccounted" in counts else "NO"


def report_command(
    settings: Settings,
    run_id: str | None,
    *,
    feed: str | None,
    business_date: date | None,
    out: Path | None,
    as_json: bool,
) -> int:
    """`posfeed report`: regenerate the reports of a run, or of a feed's business day."""
    if run_id and (feed or business_date):
        given = " and ".join(o for o, v in (("--feed", feed), ("--business-date", business_date)) if v)
        raise click.UsageError(f"RUN_ID cannot be combined with {given}: give RUN_ID (a run's report) "
                               "or --feed NAME --business-date YYYY-MM-DD (a business day's)")
    if not run_id and not (feed and business_date):
        raise click.UsageError("give RUN_ID, or --feed NAME --business-date YYYY-MM-DD")
    loaded: Feed | None = None
    if not run_id:  # a day to come is a usage error whatever the ledger: checked before it
        assert feed is not None and business_date is not None
        loaded = load_feed(feed, settings.feeds_dir)
        _check_future(loaded, business_date)
    if not settings.ledger_exists():
        if run_id:  # as `rerun RUN_ID`: the run is unknown here
            raise click.BadParameter(f"no ledger at {settings.ledger_name}", param_hint="RUN_ID")
        raise ConfigError(f"no ledger at {settings.ledger_name}")
    with Ledger(settings.ledger_location) as ledger:
        if run_id:
            run = ledger.run(run_id)
            if run is None:
                raise click.BadParameter(f"no run {run_id!r} in {settings.ledger_name}", param_hint="RUN_ID")
            stored = run.counts or {}
            fresh = run_report(ledger, run_id)
            extra = {k: v for k, v in stored.items() if k not in fresh.summary}
            report = run_report(ledger, run_id, extra=extra)
            folder = out or report_folder(settings.reports_dir, run.feed, run_id)
        else:
            assert loaded is not None and business_date is not None
            feed_name = loaded.name
            report = day_report(ledger, feed_name, business_date.isoformat(), pattern=loaded.source.pattern)
            folder = out or report_folder(settings.reports_dir, feed_name, f"day-{business_date.isoformat()}")
        write_report(report, folder)  # its rows are read from the ledger as they are written
    if as_json:
        _print_json({**report.summary, "reports_path": str(folder)})
    else:
        s = report.summary
        click.echo(f"{s['feed']} {s['run_id']}: {counted(s['rows_in'], 'row')}, "
                   f"{counted(s['transactions_in'], 'transaction')}, {s['accepted']} accepted, "
                   f"balanced {balance_words(s)}")
        if s.get("source_unreachable"):
            click.echo(f"source not reached, no file read: {s['source_unreachable']}")
        click.echo(f"reports: {folder}")
    return EXIT_OK


def demo_command(*, keep: Path | None, as_json: bool) -> int:
    """`posfeed demo`: the sample feeds against a local sandbox."""
    from pipeline.demo import run_demo

    with make_progress(json_output=as_json) as progress:
        result = run_demo(keep=keep, progress=progress)
    if as_json:
        _print_json(result.to_dict())
    else:
        for summary in result.runs:
            click.echo(format_summary(summary))
            click.echo("")
        stats = result.sandbox_stats
        click.echo(f"sandbox platform: {stats.get('requests')} requests, {stats.get('events_accepted')} "
                   f"events accepted, {stats.get('duplicate_transaction_attempts')} duplicate attempts")
        click.echo(f"state (ledger): {result.state_dir}")
        click.echo(f"reports:        {result.reports_dir}")
        # both folders, so that `report RUN_ID` after it writes into the demo's folder too
        click.echo(f"try: posfeed --state-dir {shlex.quote(str(result.state_dir))} "
                   f"--reports-dir {shlex.quote(str(result.reports_dir))} runs")
    return EXIT_OK if result.ok else EXIT_INTERNAL


_MISSING_COLUMNS = ("feed", "business_date", "store_id", "hour", "status", "due_at", "pattern", "file")


def missing_command(settings: Settings, *, feed: str | None, business_dates: Sequence[date],
                    as_json: bool) -> int:
    """`posfeed runs --missing`: expected files that are missing or came late, from the ledger.

    Feeds without `[expected]` are skipped; dates default to each feed's run dates (today in its
    timezone and `source.lookback_days` before it). Files still within their deadline are not shown.
    """
    from datetime import UTC, datetime

    from pipeline.expected import SeenFile, note_other_feeds, report_missing
    from pipeline.runner import business_dates_for

    if feed:
        feeds = [load_feed(feed, settings.feeds_dir)]
    else:
        feeds = [r.feed for r in load_feeds(settings.feeds_dir) if r.feed is not None and r.feed.enabled]
    feeds = [f for f in feeds if f.expected.cadence != "none"]
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    ledger = Ledger(settings.ledger_location) if settings.ledger_exists() else None
    try:
        for item in feeds:
            records = ledger.files(scope=item.scope) if ledger is not None else []
            seen = [SeenFile(r.name, datetime.fromtimestamp(r.mtime, UTC)) for r in records
                    if r.feed == item.name]
            days = list(business_dates) or business_dates_for(item, now=now)
            found = report_missing(item, days, seen, now)
            note_other_feeds(found, [(r.feed, r.name) for r in records if r.feed != item.name])
            rows.extend(found)
    finally:
        if ledger is not None:
            ledger.close()
    if as_json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        # never the word "missing" here: cron/crontab.example mails what `grep -w missing` finds
        click.echo("every expected file due so far arrived on time" if feeds
                   else "no feed declares [expected] files")
        return EXIT_OK
    table = [[c.upper() for c in _MISSING_COLUMNS]]
    table += [["" if r[c] is None else str(r[c]) for c in _MISSING_COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_MISSING_COLUMNS))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK
