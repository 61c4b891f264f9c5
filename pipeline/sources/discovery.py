"""Which files of a folder listing a feed takes, shared by every source (local folder, SFTP).

Pure decisions: pattern expansion with business-date templating, the look-back window, temp-name
and hostile-name filtering, and readiness (stable size and mtime across two listings, or a
done-marker file). :func:`find_ready` glues them to a source's listing function; a listing is
consumed as a stream, and only the names that match the pattern are kept, so a folder of many
thousands of files costs little memory.
"""

from __future__ import annotations

import fnmatch
import logging
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from pipeline.config import SourceConfig
from pipeline.errors import ConfigError
from pipeline.sources.base import RemoteFile

log = logging.getLogger(__name__)

__all__ = [
    "MAX_NAME_BYTES",
    "Scan",
    "discover_ready",
    "expand_patterns",
    "find_ready",
    "irregular_kind",
    "is_temporary",
    "lookback_dates",
    "marker_names",
    "of_business_date",
    "printable_name",
    "ready_by_marker",
    "ready_by_stability",
    "scan",
    "unsafe_name_reason",
]

MAX_NAME_BYTES = 255  # NAME_MAX on the file systems staging may live on


def lookback_dates(today: date, lookback_days: int) -> list[date]:
    """The business dates a run looks at: ``today`` and the ``lookback_days`` before it, oldest first."""
    return [today - timedelta(days=back) for back in range(lookback_days, -1, -1)]


def expand_patterns(pattern: str, business_dates: Sequence[date]) -> tuple[str, ...]:
    """The glob patterns for these business dates (``{business_date:%Y%m%d}`` templating).

    A pattern without a placeholder expands to itself once. Raises ConfigError for a pattern
    with an unknown placeholder or bad braces.
    """
    if "{" not in pattern and "}" not in pattern:
        return (pattern,)
    expanded: list[str] = []
    for day in business_dates:
        try:
            one = pattern.format(business_date=day)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"bad pattern {pattern!r}: {exc}; the only placeholder is {{business_date:FORMAT}}",
                key="source.pattern",
            ) from exc
        if one not in expanded:
            expanded.append(one)
    return tuple(expanded)


def of_business_date(name: str, pattern: str, day: date) -> bool | None:
    """Whether ``name`` is one of the pattern's files for business date ``day`` (as discovery
    takes it); None when the pattern does not name the date."""
    if "{business_date" not in pattern:
        return None
    return any(fnmatch.fnmatchcase(name, one) for one in expand_patterns(pattern, [day]))


def is_temporary(name: str, suffixes: Iterable[str]) -> bool:
    """Whether the name is an upload still in progress by convention (``.part``, ``.tmp`` ...)."""
    lowered = name.lower()
    return any(lowered.endswith(suffix.lower()) for suffix in suffixes)


def unsafe_name_reason(name: str) -> str | None:
    """Why a remote name cannot be used as a local file name, or None when it is safe.

    Remote names are never trusted: no empty name, ``.``/``..``, names that are not UTF-8
    (listed with ``surrogateescape``), path separators, control characters, or names longer than
    a local file system allows.
    """
    if not name or name in {".", ".."}:
        return "empty or a directory reference"
    if any("\udc80" <= ch <= "\udcff" for ch in name):
        return "not valid UTF-8"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name.startswith(".."):
        return "starts with '..'"
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in name):
        return "contains control characters"
    if ":" in name[:2]:
        return "looks like a drive letter"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def printable_name(name: str) -> str:
    """``name`` as text that can be written anywhere: bytes that are not UTF-8 (listed with
    ``surrogateescape``) become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def marker_names(name: str, suffixes: Iterable[str]) -> tuple[str, ...]:
    """The done-marker names that announce ``name``: ``name.done`` and ``stem.done`` per suffix."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    names: list[str] = []
    for suffix in suffixes:
        for base in (name, stem):
            if base + suffix not in names:
                names.append(base + suffix)
    return tuple(names)


@dataclass
class Scan:
    """One pass over a listing: the matching files, the markers seen and what was skipped."""

    candidates: dict[str, RemoteFile] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def scan(entries: Iterable[RemoteFile], config: SourceConfig, patterns: Sequence[str]) -> Scan:
    """Keep the regular files of a listing that match a pattern and are safe to fetch.

    ``entries`` should hold regular files only (the source skips links and directories).
    Marker files are collected whatever the pattern; temp names are ignored silently, hostile
    names are reported in ``skipped``.
    """
    result = Scan()
    markers = tuple(s.lower() for s in config.marker_suffixes)
    for entry in entries:
        name = entry.name
        lowered = name.lower()
        if lowered.endswith(markers):
            result.markers.add(name)
            continue
        if is_temporary(name, config.ignore_suffixes):
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue
        reason = unsafe_name_reason(name)
        if reason is not None:
            result.skipped.append((name, reason))
            continue
        result.candidates[name] = entry
    return result


def ready_by_marker(
    candidates: dict[str, RemoteFile], markers: set[str], suffixes: Iterable[str]
) -> list[RemoteFile]:
    """The candidates announced by a done-marker file."""
    suffixes = tuple(suffixes)
    return [f for name, f in candidates.items() if any(m in markers for m in marker_names(name, suffixes))]


def ready_by_stability(
    first: dict[str, RemoteFile], second: dict[str, RemoteFile]
) -> list[RemoteFile]:
    """The files whose size and mtime did not change between two listings."""
    return [
        later
        for name, later in second.items()
        if (earlier := first.get(name)) is not None
        and (earlier.size, earlier.mtime) == (later.size, later.mtime)
    ]


def find_ready(
    list_entries: Callable[[], Iterable[RemoteFile]],
    config: SourceConfig,
    business_dates: Sequence[date],
    *,
    sleep: Callable[[float], None],
    on_skip: Callable[[str, str], None] | None = None,
    on_not_ready: Callable[[RemoteFile], None] | None = None,
) -> Iterator[RemoteFile]:
    """Yield the files of a folder that match the feed and are ready, oldest first.

    ``list_entries`` streams the regular files of the folder; it is called twice in
    ``stable`` readiness mode (``stable_seconds`` apart, only when there is a candidate).
    """
    patterns = expand_patterns(config.pattern, business_dates)
    first = scan(list_entries(), config, patterns)
    for name, reason in first.skipped:
        if on_skip is not None:
            on_skip(name, reason)
    if config.readiness == "marker":
        ready = ready_by_marker(first.candidates, first.markers, config.marker_suffixes)
    elif config.readiness == "stable" and config.stable_seconds > 0 and first.candidates:
        sleep(config.stable_seconds)
        second = scan(list_entries(), config, patterns)
        ready = ready_by_stability(first.candidates, second.candidates)
    else:
        ready = list(first.candidates.values())
    if on_not_ready is not None:
        taken = {f.name for f in ready}
        for name, entry in first.candidates.items():
            if name not in taken:
                on_not_ready(entry)
    yield from sorted(ready, key=lambda f: (f.mtime, f.name))


def discover_ready(
    list_entries: Callable[[], Iterable[RemoteFile]],
    config: SourceConfig,
    business_dates: Sequence[date],
    *,
    sleep: Callable[[float], None],
    where: str,
    skipped: list[tuple[str, str]] | None = None,
    irregular: dict[str, str] | None = None,
) -> Iterator[RemoteFile]:
    """:func:`find_ready` for a source, logging skipped and not-yet-ready files under ``where``.

    With ``skipped``, every file the source saw and did not take is appended to it as (name,
    reason): unsafe names, files not ready yet (still being written, or no done-marker), and the
    entries of ``irregular`` (name -> what it is: a symbolic link, a FIFO ...) that match the
    pattern, once the listing has been consumed.
    """
    if config.readiness == "marker":
        waiting_for = "no done-marker yet"
    else:
        waiting_for = "still being written (its size or time changed between two listings)"

    def on_skip(name: str, why: str) -> None:
        shown = printable_name(name)
        log.warning("skipping %r in %s: unsafe name (%s)", shown, where, why)
        if skipped is not None:
            skipped.append((shown, f"unsafe name: {why}"))

    def on_not_ready(f: RemoteFile) -> None:
        log.info("not taking %s yet: %s", f.name, waiting_for)
        if skipped is not None:
            skipped.append((f.name, f"not taken yet: {waiting_for}"))

    yield from find_ready(
        list_entries, config, business_dates, sleep=sleep, on_skip=on_skip, on_not_ready=on_not_ready
    )
    if irregular:
        patterns = expand_patterns(config.pattern, business_dates)
        for name, kind in sorted(irregular.items()):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                shown = printable_name(name)
                log.warning("skipping %r in %s: %s, not a regular file", shown, where, kind)
                if skipped is not None:
                    skipped.append((shown, f"{kind}, not a regular file"))


def irregular_kind(mode: int) -> str:
    """What a directory entry that is not a regular file is, from its ``st_mode``."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"
