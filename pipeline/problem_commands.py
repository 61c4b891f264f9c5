"""The problem commands behind the CLI: `problems` (list, acknowledge) and `release` (quarantine).

Each function takes parsed options, calls the ledger and the sources, prints (text, or JSON with
``as_json``) and returns the exit code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from pipeline.alerts import alert_for, alerts_enabled, deliver_pending
from pipeline.config import Feed, Settings, load_feed
from pipeline.errors import EXIT_OK, ConfigError
from pipeline.ledger import Ledger
from pipeline.logs import counted, say, told
from pipeline.problems import Change, Plan, sorted_problems
from pipeline.scope_locks import lock_kind
from pipeline.sources import open_source

__all__ = ["problems_command", "release_command"]

_COLUMNS = ("problem_id", "kind", "level", "feed", "store_id", "business_date", "opened_at", "stage",
            "summary")


def _feed_or_none(settings: Settings, name: str) -> Feed | None:
    try:
        return load_feed(name, settings.feeds_dir)
    except ConfigError:
        return None


def problems_command(settings: Settings, *, feed: str | None, include_resolved: bool, resolve: int | None,
                     as_json: bool) -> int:
    """`posfeed problems`: the open problems (``include_resolved``: all), newest last; with
    ``resolve`` acknowledge one problem (closed now, its "resolved" alert sent)."""
    if feed is not None:
        load_feed(feed, settings.feeds_dir)  # an unknown feed is an error, not "no problems"
    if not settings.ledger_exists():
        if resolve is not None:  # nothing to acknowledge: never "no open problems", exit 0
            raise click.BadParameter(f"no open problem #{resolve}: no ledger at {settings.ledger_name}",
                                     param_hint="--resolve")
        rows: list[dict[str, Any]] = []
    else:
        with Ledger(settings.ledger_location) as ledger:
            if resolve is not None:
                _resolve(settings, ledger, resolve)
            problems = sorted_problems(ledger.problems(feed=feed, open_only=not include_resolved))
            undelivered = _undelivered_alerts(settings, ledger, {p.scope for p in problems})
        rows = [{**p.to_dict(), "alert_undelivered": undelivered.get(p.id)} for p in problems]
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    if not rows:
        click.echo("no open problems" if not include_resolved else "no problems recorded")
        return EXIT_OK
    # with --all, resolved problems are listed too: a status column tells them from the open ones
    columns = (_COLUMNS[0], "status", *_COLUMNS[1:]) if include_resolved else _COLUMNS
    table = [[c.upper() for c in columns]]
    table += [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())
    todo: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] == "open":
            todo.setdefault(r["action"], []).append(f"#{r['problem_id']}")
    for action, ids in todo.items():
        click.echo(f"{', '.join(ids)}: what to do: {action}")
    for r in rows:
        waiting = r["alert_undelivered"]
        if waiting:
            then = (told(f"{waiting['undeliverable']}; `posfeed problems --resolve {r['problem_id']}` closes "
                         "the problem and drops its alerts") if waiting["undeliverable"]
                    else f"a run of feed {r['feed']} tries again from {waiting['next_attempt_at']}")
            error = waiting["last_error"] or "not tried yet"
            click.echo(f"#{r['problem_id']}: {waiting['event']} alert not delivered after "
                       f"{counted(waiting['attempts'], 'attempt')}: {error}; {then}")
    return EXIT_OK


def _undeliverable(settings: Settings, feed: Feed | None, name: str) -> str | None:
    """Why no run posts the alerts of feed ``name`` (None when a run of it does): each feed posts
    only its own alerts, to its own webhook."""
    if feed is None:
        return f"feed {name} is not in the feeds folder ({settings.feeds_dir}), so no run posts it"
    if not alerts_enabled(feed.alerts):
        return (f"feed {name} has no webhook now ([alerts] webhook_url or webhook_url_env), so no run "
                "posts it")
    return None


def _undelivered_alerts(settings: Settings, ledger: Ledger, scopes: set[str]) -> dict[int, dict[str, Any]]:
    """Problem id -> its oldest alert still in the outbox: event, attempts, last error (which names
    the webhook by scheme, host and port only), next attempt, and why no run posts it
    (``undeliverable``: its feed is gone or has no webhook; else None)."""
    found: dict[int, dict[str, Any]] = {}
    why: dict[str, str | None] = {}
    for scope in sorted(scopes):
        for item in ledger.pending_alerts(scope):
            problem_id = item["payload"].get("problem_id")
            if isinstance(problem_id, int) and problem_id not in found:
                name = str(item["payload"].get("feed"))
                if name not in why:
                    why[name] = _undeliverable(settings, _feed_or_none(settings, name), name)
                found[problem_id] = {"event": item["payload"].get("event"), "attempts": item["attempts"],
                                     "last_error": item["last_error"],
                                     "next_attempt_at": item["next_attempt_at"], "undeliverable": why[name]}
    return found


@contextmanager
def _scope_lock(settings: Settings, scope: str, *, feed: str) -> Iterator[None]:
    """Hold the scope's run lock (in the state folder, or in a PostgreSQL ledger) for the block."""
    lock = lock_kind(settings.ledger_url, settings.state_dir)(scope, feed=feed)
    try:
        yield
    finally:
        lock.release()


def _resolve(settings: Settings, ledger: Ledger, problem_id: int) -> None:
    found = ledger.problems(problem_id=problem_id)
    if not found:
        raise click.BadParameter(f"no open problem #{problem_id}", param_hint="--resolve")
    problem = found[0]
    feed = _feed_or_none(settings, problem.feed)
    with _scope_lock(settings, problem.scope, feed=f"posfeed problems --resolve {problem_id}"):
        alert = alert_for(feed, None) if feed is not None else (lambda p, e: None)
        ledger.apply_problems(Plan((Change("resolved", problem, None),)), run_id=None, alert=alert)
        why = _undeliverable(settings, feed, problem.feed)
        if why is not None:  # acknowledged: what no run would ever post leaves the outbox
            for event in ledger.drop_alerts(problem_id):
                say(f"{event} alert of problem #{problem_id} dropped: {why}", event="alert_dropped",
                    problem_id=problem_id, alert_event=event, feed=problem.feed)
        elif feed is not None:
            deliver_pending(ledger, feed)
    say(f"problem #{problem_id} ({problem.kind}) resolved", event="problem_resolved", level=logging.INFO,
        problem_id=problem_id, kind=problem.kind, feed=problem.feed)


def release_command(settings: Settings, name: str, *, feed_name: str | None, as_json: bool) -> int:
    """`posfeed release FILE`: take a file out of quarantine; the next run reads it again (a moved
    file is moved back into the source folder first)."""
    if feed_name is not None:
        load_feed(feed_name, settings.feeds_dir)  # an unknown feed is an error naming it (78)
    if not settings.ledger_exists():  # nothing was ever set aside here
        raise click.BadParameter(f"no file named {name!r} is in quarantine: no ledger at "
                                 f"{settings.ledger_name}", param_hint="FILE")
    with Ledger(settings.ledger_location) as ledger:
        records = ledger.quarantined_files(feed=feed_name, name=name)
        if not records:
            raise click.BadParameter(f"no file named {name!r} is in quarantine"
                                     + (f" for feed {feed_name}" if feed_name else ""), param_hint="FILE")
        feeds = {r.feed for r in records}
        if len(feeds) > 1:
            raise click.UsageError(
                f"{name} is in quarantine for feeds {', '.join(sorted(feeds))}: give --feed")
        feed = load_feed(records[0].feed, settings.feeds_dir)
        released = []
        with _scope_lock(settings, feed.scope, feed=f"posfeed release {name}"):
            moved = [r for r in records if r.quarantined_to]
            if moved:
                source = open_source(feed)
                try:
                    for record in moved[-1:]:  # the newest moved copy goes back under the name
                        assert record.quarantined_to is not None
                        source.release(record.quarantined_to, name)
                finally:
                    source.close()
            for record in records:
                ledger.release_file(record.id)
                released.append({"file": name, "feed": record.feed, "file_id": record.id,
                                 "moved_back_from": record.quarantined_to})
    if as_json:
        click.echo(json.dumps(released, indent=2, sort_keys=True))
    else:
        for item in released:
            back = f" (moved back from {item['moved_back_from']})" if item["moved_back_from"] else ""
            click.echo(f"released {item['file']} of feed {item['feed']}{back}: the next run reads it again")
    return EXIT_OK
