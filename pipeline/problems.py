"""Problems: what is wrong with a feed, each with an identity and a life cycle.

A run *observes* what is wrong now (:class:`Observation`: a missing expected file, an unreadable
file in quarantine, an unreachable platform, a backlog older than its threshold ...). The ledger
keeps the *problems* (:class:`Problem`): one row per identity (``key``) while it is open.
:func:`reconcile` compares the two (pure) and says what changed:

* **opened**: observed, and no open problem has its key;
* **escalated**: observed at a higher stage than the open problem (a backlog crossed its second
  age, a missing file passed its second deadline);
* **resolved**: open, within what this run checked, and no longer observed.

Only these three events send an alert; an open problem observed again only has its counts
refreshed. What a run did not check (a platform it did not talk to, a business date outside its
window) keeps its state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "KINDS",
    "LEVELS",
    "Change",
    "Observation",
    "Plan",
    "Problem",
    "alert_document",
    "alert_text",
    "reconcile",
]

Event = Literal["opened", "escalated", "resolved"]

# kind -> the alert switch (`alerts.on_*`) that decides whether it is sent
KINDS: Mapping[str, str] = {
    "unreadable_file": "failure",
    "platform_unreachable": "failure",
    "credentials_refused": "failure",
    "run_failed": "failure",
    "backlog": "retryable",
    "missing_file": "missing_files",
    "reject_share": "rejects",
    "conflicts": "conflicts",
}
LEVELS = ("failure", "retryable", "missing_files", "rejects", "conflicts")

ALERT_VERSION = 1


@dataclass(frozen=True)
class Observation:
    """Something wrong that a run saw, with the identity that makes it one problem."""

    kind: str
    key: str  # identity: the same key is the same problem while it stays open
    feed: str
    scope: str
    summary: str  # one line for people: what is wrong
    action: str  # what to do about it
    stage: int = 0  # 0 when it opens; each higher stage is an escalation
    store_id: str | None = None
    business_date: str | None = None
    subject: str | None = None  # a file name, a pattern, a target
    counts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> str:
        """The alert switch this kind belongs to (``failure``, ``retryable`` ...)."""
        return KINDS.get(self.kind, "failure")


@dataclass(frozen=True)
class Problem:
    """A problem as the ledger keeps it."""

    id: int
    kind: str
    key: str
    feed: str
    scope: str
    status: str  # open | resolved
    stage: int
    summary: str
    action: str
    store_id: str | None
    business_date: str | None
    subject: str | None
    counts: Mapping[str, Any]
    opened_at: str
    escalated_at: str | None
    resolved_at: str | None
    opened_run_id: str | None
    last_run_id: str | None

    @property
    def level(self) -> str:
        """The alert switch this kind belongs to."""
        return KINDS.get(self.kind, "failure")

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of a problem (`posfeed problems --json`, reports, alert payloads)."""
        return {
            "problem_id": self.id,
            "kind": self.kind,
            "level": self.level,
            "status": self.status,
            "stage": self.stage,
            "feed": self.feed,
            "scope": self.scope,
            "store_id": self.store_id,
            "business_date": self.business_date,
            "subject": self.subject,
            "summary": self.summary,
            "action": self.action,
            "counts": dict(self.counts),
            "opened_at": self.opened_at,
            "escalated_at": self.escalated_at,
            "resolved_at": self.resolved_at,
            "opened_run_id": self.opened_run_id,
            "last_run_id": self.last_run_id,
        }


@dataclass(frozen=True)
class Change:
    """One life-cycle event: ``observation`` for opened/escalated/refreshed, ``problem`` for the
    open problem it concerns (None when it opens)."""

    event: Event | Literal["refreshed"]
    problem: Problem | None
    observation: Observation | None


@dataclass(frozen=True)
class Plan:
    """What a run changes in the problems it checked."""

    changes: tuple[Change, ...]

    def events(self) -> list[Change]:
        """The changes that send an alert (opened, escalated, resolved)."""
        return [c for c in self.changes if c.event != "refreshed"]


def reconcile(
    open_problems: Iterable[Problem],
    observed: Iterable[Observation],
    covers: Callable[[Problem], bool],
) -> Plan:
    """Compare the open problems with what a run observed (pure).

    ``covers(problem)`` tells whether this run checked what ``problem`` is about: only those can
    be resolved by not being observed.
    """
    by_key = {p.key: p for p in open_problems}
    changes: list[Change] = []
    seen: set[str] = set()
    for obs in observed:
        if obs.key in seen:
            continue
        seen.add(obs.key)
        current = by_key.get(obs.key)
        if current is None:
            changes.append(Change("opened", None, obs))
        elif obs.stage > current.stage:
            changes.append(Change("escalated", current, obs))
        elif dict(obs.counts) != dict(current.counts) or obs.summary != current.summary:
            changes.append(Change("refreshed", current, obs))
    for key, problem in by_key.items():
        if key not in seen and covers(problem):
            changes.append(Change("resolved", problem, None))
    return Plan(tuple(changes))


def alert_text(problem: Problem, event: str) -> str:
    """The one-paragraph message of an alert (Slack's and Teams' ``text``)."""
    mark = {"opened": "[OPEN]", "escalated": "[ESCALATED]", "resolved": "[RESOLVED]"}.get(event, event)
    where = f"feed {problem.feed}"
    if problem.store_id:
        where += f", store {problem.store_id}"
    if problem.business_date:
        where += f", business date {problem.business_date}"
    text = f"{mark} posfeed problem #{problem.id} ({problem.kind}, {where}): {problem.summary}"
    if event != "resolved":
        text += f" What to do: {problem.action}"
    return text


def alert_document(problem: Problem, event: str, *, run_id: str | None, host: str, created_at: str
                   ) -> dict[str, Any]:
    """The alert payload (documented in docs/OPERATIONS.md; stable: fields are only ever added)."""
    doc = problem.to_dict()
    doc.update({
        "version": ALERT_VERSION,
        "event": event,
        "run_id": run_id,
        "host": host,
        "created_at": created_at,
        "text": alert_text(problem, event),
    })
    return doc


def sorted_problems(problems: Sequence[Problem]) -> list[Problem]:
    """Failures first, then by feed and opening time."""
    return sorted(problems, key=lambda p: (LEVELS.index(p.level) if p.level in LEVELS else 0,
                                           p.feed, p.opened_at, p.id))
