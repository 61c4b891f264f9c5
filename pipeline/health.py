"""A feed's health after a run: the backlog, and what is wrong now (the observations problems are
made of, see :mod:`pipeline.problems`).

:func:`observe` reads the ledger and the run's summary; it decides nothing about alerts. Each
observation names what to do. :func:`covers` says which open problems the run checked (only those
can be resolved by not being seen again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.config import Feed
from pipeline.errors import (
    ConfigError,
    LockHeldError,
    PlatformUnavailableError,
    SecretError,
    SourceAuthError,
    SourceUnavailableError,
)
from pipeline.ledger import Ledger
from pipeline.logs import counted, in_number, redact, shown, told
from pipeline.problems import Observation, Problem

__all__ = ["NOT_ASKED", "Backlog", "RunFacts", "answered", "backlog_of", "content_free", "covers", "observe",
           "relevant"]

# failures that mean the platform could not be reached (no answer, or a server error: `http_503`
# when the answer has no body, Antavo's own code `503` when its error body gives one)
_UNREACHABLE = re.compile(r"^(connection_error|timeout|http_5\d\d|5\d\d)$")


# last error codes of transactions a run settled or held without an answer of the platform: a
# submission stopped before it went out, and the holds decided from the ledger (a return waiting
# for its sale, or for its sale to be accepted; a profile update waiting for its sign-up; a return
# whose sale the platform refused for good). They prove nothing about the platform being reachable.
NOT_ASKED = frozenset({"stopped", "original_not_found", "original_not_accepted", "signup_pending",
                       "original_refused", "crmcom_original_not_delivered"})


def answered(accepted: int, failed_permanent: Mapping[str, int], failed_retryable: Mapping[str, int]) -> int:
    """How many of a run's transactions the platform really answered: the accepted ones and the
    failed ones (by last error code) but those the run held without asking it (:data:`NOT_ASKED`)."""
    failed = (*failed_permanent.items(), *failed_retryable.items())
    return accepted + sum(n for code, n in failed if code not in NOT_ASKED)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def content_free(reason: str) -> str:
    """The kind of fault in an unreadable file's reason, without what the reader quoted from the
    file: the text before its first ``:`` or ``;``, quoted values blanked. Alerts carry this (a
    header line that is really a data row would otherwise send customer ids to a chat channel)."""
    head = re.split(r"[:;]", reason, maxsplit=1)[0]
    return " ".join(_QUOTED.sub("'…'", head).split()) or "unreadable"


@dataclass(frozen=True)
class Backlog:
    """Work carried from earlier runs and what still waits, with the age of the oldest."""

    carried: int
    waiting: int
    oldest_since: str | None
    oldest_minutes: int | None
    oldest_seconds: float | None = None
    needs_rerun: int = 0  # failed-retryable that only `posfeed rerun` sends (past the caps, or deferred)
    waiting_for_sales: int = 0  # of ``waiting``: returns whose sale has not arrived (original_not_found)

    def to_dict(self) -> dict[str, Any]:
        """The `backlog` object of a run's summary."""
        return {"carried": self.carried, "waiting": self.waiting,
                "oldest_waiting_since": self.oldest_since, "oldest_waiting_minutes": self.oldest_minutes}


def backlog_of(ledger: Ledger, feed: Feed, run_id: str | None, now: datetime) -> Backlog:
    """The backlog of ``feed``'s scope as ``run_id`` leaves it: what the next plain run sends
    (within the feed's ``[resume]`` caps; see :meth:`Ledger.backlog`), the age of its oldest, and
    what only a rerun sends."""
    caps = feed.resume
    backlog = ledger.backlog(feed.scope, max_attempts=caps.max_attempts,
                             max_age_hours=caps.max_age_hours, now=now)
    oldest = backlog.waiting_since
    seconds = None
    if oldest is not None:
        seconds = max(0.0, (now - datetime.fromisoformat(oldest)).total_seconds())
    minutes = int(seconds // 60) if seconds is not None else None
    carried = ledger.carried(run_id) if run_id is not None else 0
    return Backlog(carried, backlog.waiting, oldest, minutes, seconds, backlog.needs_rerun,
                   backlog.waiting_for_sales)


@dataclass(frozen=True)
class RunFacts:
    """What a run did, as the health checks need it."""

    run_id: str | None  # None: a run refused before it started
    kind: str  # run | rerun
    summary: Mapping[str, Any]
    error: BaseException | None
    business_dates: Sequence[str]
    missing_files: Sequence[Mapping[str, Any]]
    failed_codes: Mapping[str, int]  # last error code -> transactions left failed_retryable
    sent: int  # transactions the platform answered (accepted or failed) in this run: see answered()
    backlog: Backlog


_REFUSAL_WORDS = ("credential", "auth", "401", "403", "refused", "signature", "secret")


def _credential_error(error: BaseException | None) -> bool:
    """A configuration error about credentials: a missing secret, a refused login or key."""
    if error is None or not isinstance(error, ConfigError):
        return False
    name, text = type(error).__name__.lower(), str(error).lower()
    return isinstance(error, SecretError | SourceAuthError) or any(
        word in name or word in text for word in _REFUSAL_WORDS)


def _platform_error(error: BaseException | None) -> bool:
    return isinstance(error, PlatformUnavailableError)


def _error_named(error: BaseException | None, *, quoted: bool) -> dict[str, str]:
    """``{"error": <class name>}`` when a summary quotes ``error``'s text (an alert tells the class
    name instead, see :func:`pipeline.alerts.alert_for`)."""
    return {"error": type(error).__name__} if quoted and error is not None else {}


def observe(feed: Feed, ledger: Ledger, facts: RunFacts, now: datetime) -> list[Observation]:
    """Everything wrong with ``feed`` after a run (pure apart from reading the ledger)."""
    out: list[Observation] = []
    cfg = feed.alerts
    for record in ledger.quarantined_files(feed.scope, feed=feed.name):
        moved = f" (moved to {record.quarantined_to})" if record.quarantined_to else ""
        out.append(Observation(
            kind="unreadable_file", key=f"unreadable_file|{feed.name}|{record.id}", subject=record.name,
            summary=f"{record.name} cannot be read: {record.error}; set aside in quarantine{moved}",
            action=(f"fix the export and deliver it again under the same name, or run `posfeed release "
                    f"{record.name} --feed {feed.name}` once it can be read"),
            counts={"file_id": record.id, "sha256": record.sha256[:12],
                    "reason": content_free(record.error or "")},
            feed=feed.name, scope=feed.scope,
        ))
    escalate = timedelta(minutes=feed.expected.escalate_after_minutes)
    for row in facts.missing_files:
        if row.get("status") != "missing":
            continue
        store, day, hour = row.get("store_id"), row.get("business_date"), row.get("hour")
        late_at = datetime.fromisoformat(str(row["late_at"]))
        stage = 1 if now > late_at + escalate else 0
        via = row.get("delivered_via_feed")
        note = f"; a matching file came through feed {via} (it does not count for this feed)" if via else ""
        when = f" hour {hour:02d}" if isinstance(hour, int) else ""
        out.append(Observation(
            kind="missing_file", key=f"missing_file|{feed.name}|{day}|{store}|{hour}", store_id=store,
            business_date=day, subject=str(row["pattern"]), stage=stage,
            summary=(f"expected file {row['pattern']}{when} has not arrived (due {row['due_at']}"
                     f"{', past its second deadline' if stage else ''}){note}"),
            action=(f"ask store {store or '(any)'} to export it; check the drop folder of feed "
                    f"{feed.name}"),
            counts={"due_at": row["due_at"], "late_at": row["late_at"], "hour": hour},
            feed=feed.name, scope=feed.scope,
        ))
    unreachable = {c: n for c, n in facts.failed_codes.items() if _UNREACHABLE.match(c)}
    if unreachable or _platform_error(facts.error):
        out.append(Observation(
            kind="platform_unreachable", key=f"platform_unreachable|{feed.name}",
            subject=feed.target.kind,
            summary=(f"the {feed.target.kind} platform could not be reached: "
                     + (", ".join(f"{counted(n, 'transaction')} {c}" for c, n in sorted(unreachable.items()))
                        or shown(facts.error))),
            action=("check the platform's status and the network; the waiting work is sent again by "
                    f"later runs (`posfeed rerun --feed {feed.name} --failed` sends it now)"),
            counts={"transactions_failed": sum(unreachable.values()), "codes": unreachable,
                    **_error_named(facts.error, quoted=not unreachable)},
            feed=feed.name, scope=feed.scope,
        ))
    refused = {c: n for c, n in facts.failed_codes.items() if c in cfg.credential_error_codes}
    # refused mid-run: sending stopped and the rest stays queued, so no transaction failed with a
    # credentials code; the platform's answer (masked when the run kept it) is in the summary
    halted = str(facts.summary.get("credentials_refused") or "")
    if refused or halted or _credential_error(facts.error):
        codes = (", ".join(f"{counted(n, 'transaction')} {c}" for c, n in sorted(refused.items()))
                or (redact(halted) if halted else shown(facts.error)))
        out.append(Observation(
            kind="credentials_refused", key=f"credentials_refused|{feed.name}",
            summary=(("credentials missing: " if isinstance(facts.error, SecretError) and not refused
                      and not halted else "credentials refused: ") + codes),
            action="check the feed's secrets (environment variables or files) and the account",
            counts={"transactions_failed": sum(refused.values()), "raised": facts.error is not None,
                    **({"error": "CredentialsRefused"} if halted and not refused
                       else _error_named(facts.error, quoted=not refused))},
            feed=feed.name, scope=feed.scope,
        ))
    elif (facts.error is not None and not isinstance(facts.error, LockHeldError)
          and not _platform_error(facts.error)):
        if isinstance(facts.error, SourceUnavailableError):
            action = "read the error; the next run tries again"
        elif isinstance(facts.error, ConfigError):
            action = ("fix the configuration the error names (`posfeed feeds` checks every feed file); "
                      "the next run reads it again")
        else:
            action = "read the error and fix its cause; `posfeed runs` shows the failed run"
        out.append(Observation(
            kind="run_failed", key=f"run_failed|{feed.name}", subject=type(facts.error).__name__,
            summary=f"the run stopped with an error: {shown(facts.error)}",
            action=action,
            counts={"exit_code": getattr(facts.error, "exit_code", 70),
                    **_error_named(facts.error, quoted=True)},
            feed=feed.name, scope=feed.scope,
        ))
    backlog = facts.backlog
    limit = cfg.backlog_max_age_minutes
    age = backlog.oldest_seconds
    if backlog.waiting and age is not None and age > limit * 60:
        second = cfg.backlog_escalate_minutes
        stage = 1 if second > limit and age > second * 60 else 0
        returns = backlog.waiting_for_sales
        out.append(Observation(
            kind="backlog", key=f"backlog|{feed.scope}", stage=stage,
            summary=(f"{counted(backlog.waiting, 'transaction')} of scope {feed.scope} still "
                     f"{in_number(backlog.waiting, 'waits', 'wait')} to be delivered"
                     + (f" ({counted(returns, 'return')} waiting for a sale that has not arrived)"
                        if returns else "")
                     + f"; the oldest for {backlog.oldest_minutes} min"),
            action="see why they wait (`posfeed runs`, the run's detail.csv); once the cause is fixed "
                   f"`posfeed rerun --feed {feed.name} --failed` sends them"
                   + ("; a return waiting for its sale goes by itself once the sale's export is delivered "
                      "(ask the store for it)" if returns else ""),
            counts=backlog.to_dict(),
            feed=feed.name, scope=feed.scope,
        ))
    rows_in = int(facts.summary.get("rows_in") or 0)
    rejected = int(facts.summary.get("rows_rejected") or 0)
    if rows_in > 0:
        share = Decimal(rejected) / Decimal(rows_in)
        if share > Decimal(str(cfg.reject_share_threshold)):
            out.append(Observation(
                kind="reject_share", key=f"reject_share|{feed.name}",
                summary=(f"{rejected} of {rows_in} rows rejected ({share:.1%}, above "
                         f"{Decimal(str(cfg.reject_share_threshold)):.1%})"),
                action="read the run's rejects.csv and ask the stores to fix and resend those lines",
                counts={"rows_in": rows_in, "rows_rejected": rejected, "share": f"{share:.4f}",
                        "run_id": facts.run_id},
            feed=feed.name, scope=feed.scope,
            ))
    key = f"conflicts|{feed.name}"
    held = ledger.conflicts_since(feed.name, ledger.last_resolved_at(key))
    if held:
        out.append(Observation(
            kind="conflicts", key=key,
            summary=(f"{counted(held, 'transaction')} arrived again with different content and "
                     f"{in_number(held, 'is', 'are')} held for review"),
            action=("review the conflicts in the reports' detail.csv; then `posfeed problems --resolve ID` "
                    "(later conflicts open a new problem)"),
            counts={"conflicts": held},
            feed=feed.name, scope=feed.scope,
        ))
    return [replace(o, action=told(o.action)) for o in out]  # its commands as the user runs them


def covers(feed: Feed, facts: RunFacts) -> Callable[[Problem], bool]:
    """Which open problems of ``feed`` this run checked (and may resolve by not seeing them)."""
    dates = set(facts.business_dates)
    rows_in = int(facts.summary.get("rows_in") or 0)

    def checked(problem: Problem) -> bool:
        kind = problem.kind
        if kind == "missing_file":
            return facts.kind == "run" and facts.error is None and problem.business_date in dates
        if kind == "platform_unreachable":
            return facts.sent > 0
        if kind == "credentials_refused":
            return facts.error is None and (facts.sent > 0 or bool(problem.counts.get("raised")))
        if kind == "run_failed":
            return facts.error is None
        if kind == "reject_share":
            return rows_in > 0
        return kind in ("unreadable_file", "backlog", "conflicts")

    return checked


def relevant(problem: Problem, feed: Feed) -> bool:
    """Whether an open problem is this feed's to check (a backlog belongs to the whole scope)."""
    if problem.kind == "backlog":
        return problem.scope == feed.scope
    return problem.feed == feed.name
