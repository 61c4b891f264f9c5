"""Expected files: what a feed should have received for a business day, and what is missing or late.

A feed declares its expectations in `[expected]`: the stores, the cadence (one daily file per
store, or one file per hour from opening to closing time) and the file name pattern. Everything
here is pure: the clock and the files seen so far are arguments.

Deadlines are in each store's timezone:

* daily: the file is due at ``closing_hour`` on the business date;
* hourly: the file for hour ``h`` (covering h:00 to h+1:00) is due at h+1:00;

and it counts as *late* when it arrives more than ``late_after_minutes`` after it was due, and as
*missing* when that moment has passed and it has not arrived.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pipeline.config import Feed
from pipeline.errors import ConfigError

__all__ = [
    "ExpectedFile",
    "FileStatus",
    "MissingReport",
    "SeenFile",
    "expected_files",
    "file_statuses",
    "missing_files",
    "note_other_feeds",
    "render_pattern",
    "report_missing",
]

Status = Literal["arrived", "late", "missing", "pending"]


@dataclass(frozen=True)
class ExpectedFile:
    """One file a feed should receive: its pattern, and when it is due and late (UTC)."""

    feed: str
    business_date: date
    store_id: str | None
    hour: int | None
    pattern: str
    due_at: datetime
    late_at: datetime

    def matches(self, name: str) -> bool:
        """Whether a file name (basename) satisfies this expectation."""
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class SeenFile:
    """A file the feed has received: its name and when it was first seen (None: unknown)."""

    name: str
    seen_at: datetime | None = None


@dataclass(frozen=True)
class FileStatus:
    """An expected file and what became of it."""

    expected: ExpectedFile
    status: Status
    file: str | None = None
    seen_at: datetime | None = None

    @property
    def minutes_late(self) -> int | None:
        """How many minutes after its due time a late file arrived (or, if missing, until now)."""
        if self.status == "late" and self.seen_at is not None:
            return int((self.seen_at - self.expected.due_at).total_seconds() // 60)
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row (the `missing_files` entries of summary.json and `runs --missing`)."""
        exp = self.expected
        return {
            "feed": exp.feed,
            "business_date": exp.business_date.isoformat(),
            "store_id": exp.store_id,
            "hour": exp.hour,
            "pattern": exp.pattern,
            "status": self.status,
            "due_at": exp.due_at.isoformat(),
            "late_at": exp.late_at.isoformat(),
            "file": self.file,
            "seen_at": self.seen_at.isoformat() if self.seen_at else None,
            "minutes_late": self.minutes_late,
        }


def render_pattern(pattern: str, *, business_date: date, store_id: str | None, hour: int | None) -> str:
    """Fill ``{business_date:%Y%m%d}``, ``{store_id}`` and ``{hour:02d}`` in a file name pattern.

    A placeholder with no value (no stores declared, daily cadence) becomes ``*``.
    """
    values: dict[str, Any] = {"business_date": business_date, "date": business_date}
    values["store_id"] = store_id if store_id is not None else _Star()
    values["store"] = values["store_id"]
    values["hour"] = hour if hour is not None else _Star()
    try:
        return pattern.format(**values)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConfigError(f"cannot fill the pattern {pattern!r}: {exc}", key="expected.pattern") from exc


class _Star:
    """Formats as ``*`` whatever the format spec (an unknown value in a glob)."""

    def __format__(self, spec: str) -> str:
        return "*"


def _local(business_date: date, hour: int, zone: str) -> datetime:
    """The UTC instant of ``hour``:00 on ``business_date`` in ``zone`` (24 = next midnight)."""
    day = business_date + timedelta(days=hour // 24)
    return datetime.combine(day, time(hour % 24), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def expected_files(feed: Feed, business_date: date) -> list[ExpectedFile]:
    """Every file ``feed`` should receive for ``business_date`` (empty when cadence is "none")."""
    cfg = feed.expected
    if cfg.cadence == "none":
        return []
    pattern = cfg.pattern or feed.source.pattern
    late = timedelta(minutes=cfg.late_after_minutes)
    stores: Sequence[str | None] = cfg.stores or (None,)
    out: list[ExpectedFile] = []
    for store in stores:
        zone = feed.timezone_of(store) if store is not None else feed.timezone
        hours: Iterable[int | None]
        hours = range(cfg.opening_hour, cfg.closing_hour) if cfg.cadence == "hourly" else (None,)
        for hour in hours:
            due = _local(business_date, cfg.closing_hour if hour is None else hour + 1, zone)
            out.append(ExpectedFile(
                feed=feed.name, business_date=business_date, store_id=store, hour=hour,
                pattern=render_pattern(pattern, business_date=business_date, store_id=store, hour=hour),
                due_at=due, late_at=due + late,
            ))
    return out


def file_statuses(
    expected: Sequence[ExpectedFile], seen: Iterable[SeenFile], now: datetime
) -> list[FileStatus]:
    """What became of each expected file: arrived, late, missing, or pending (not due yet).

    A file matches the first expectation whose pattern it fits; its earliest sighting counts.
    """
    seen_sorted = sorted(seen, key=lambda f: (f.seen_at is None, f.seen_at or now, f.name))
    statuses = []
    for exp in expected:
        match = next((f for f in seen_sorted if exp.matches(f.name)), None)
        if match is None:
            statuses.append(FileStatus(exp, "missing" if now > exp.late_at else "pending"))
        elif match.seen_at is not None and match.seen_at > exp.late_at:
            statuses.append(FileStatus(exp, "late", match.name, match.seen_at))
        else:
            statuses.append(FileStatus(exp, "arrived", match.name, match.seen_at))
    return statuses


@dataclass(frozen=True)
class MissingReport:
    """The expected files that are overdue (missing) or arrived after their deadline (late)."""

    missing: tuple[FileStatus, ...]
    late: tuple[FileStatus, ...]

    def to_list(self) -> list[dict[str, Any]]:
        """Missing then late files as JSON-ready rows."""
        return [s.to_dict() for s in (*self.missing, *self.late)]


def missing_files(
    expected: Sequence[ExpectedFile], seen: Iterable[SeenFile], now: datetime
) -> MissingReport:
    """The missing and the late files among ``expected``, given the files ``seen`` by ``now``."""
    statuses = file_statuses(expected, seen, now)
    return MissingReport(
        missing=tuple(s for s in statuses if s.status == "missing"),
        late=tuple(s for s in statuses if s.status == "late"),
    )


def report_missing(
    feed: Feed, business_dates: Iterable[date], seen: Sequence[SeenFile], now: datetime
) -> list[dict[str, Any]]:
    """The missing and late files of ``feed`` over ``business_dates``, as JSON-ready rows."""
    rows: list[dict[str, Any]] = []
    for day in business_dates:
        rows.extend(missing_files(expected_files(feed, day), seen, now).to_list())
    return rows


def note_other_feeds(rows: Sequence[dict[str, Any]], other_files: Iterable[tuple[str, str]]) -> None:
    """Mark missing rows that a file of another feed of the same scope would have matched
    (``delivered_via_feed``): it does not count for this feed, but it is not hidden either.

    ``other_files`` are (feed, file name) pairs.
    """
    others = list(other_files)
    for row in rows:
        if row.get("status") != "missing":
            continue
        via = next((feed for feed, name in others if fnmatch.fnmatchcase(name, str(row["pattern"]))), None)
        if via is not None:
            row["delivered_via_feed"] = via
