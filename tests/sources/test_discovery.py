"""Pure discovery rules shared by the local and SFTP sources."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import SourceConfig
from pipeline.errors import ConfigError
from pipeline.sources.base import RemoteFile
from pipeline.sources.discovery import (
    expand_patterns,
    find_ready,
    lookback_dates,
    marker_names,
    ready_by_stability,
    scan,
    unsafe_name_reason,
)


def f(name: str, size: int = 10, mtime: float = 100.0) -> RemoteFile:
    return RemoteFile(name, size, mtime)


def test_lookback_window_is_oldest_first() -> None:
    assert lookback_dates(date(2026, 11, 20), 2) == [
        date(2026, 11, 18),
        date(2026, 11, 19),
        date(2026, 11, 20),
    ]
    assert lookback_dates(date(2026, 11, 20), 0) == [date(2026, 11, 20)]


def test_patterns_expand_per_business_date() -> None:
    days = [date(2026, 11, 19), date(2026, 11, 20)]
    assert expand_patterns("pos_*_{business_date:%Y%m%d}.csv", days) == (
        "pos_*_20261119.csv",
        "pos_*_20261120.csv",
    )
    assert expand_patterns("{business_date:%Y-%m}/*.csv", days) == ("2026-11/*.csv",)
    assert expand_patterns("*.csv", days) == ("*.csv",)
    with pytest.raises(ConfigError, match="only placeholder"):
        expand_patterns("{store}_{business_date:%Y}.csv", days)


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        ("pos_1.csv", False),
        ("a..b.csv", False),
        ("ümlaut café.csv", False),
        ("", True),
        (".", True),
        ("..", True),
        ("../x.csv", True),
        ("..\\x.csv", True),
        ("a/b.csv", True),
        ("/etc/passwd", True),
        ("C:evil.csv", True),
        ("line\nbreak.csv", True),
        ("nul\x00.csv", True),
        ("esc\x1b[31m.csv", True),
        ("rtl\u202egnp.csv", True),
        ("x" * 256, True),
    ],
)
def test_unsafe_names(name: str, unsafe: bool) -> None:
    assert (unsafe_name_reason(name) is not None) is unsafe


@given(st.text(min_size=1, max_size=80))
def test_a_name_called_safe_stays_inside_the_staging_folder(name: str) -> None:
    if unsafe_name_reason(name) is not None:
        return
    staging = Path("/srv/staging")
    target = staging / name
    assert target.parent == staging and target.name == name
    assert os.path.normpath(target) == str(target)


def test_scan_keeps_matches_collects_markers_and_reports_hostile_names() -> None:
    config = SourceConfig(pattern="*.csv")
    result = scan(
        [f("a.csv"), f("a.csv.done"), f("b.csv.part"), f("notes.txt"), f("bad\n.csv"), f("c.CSV")],
        config,
        ("*.csv",),
    )
    assert list(result.candidates) == ["a.csv"]  # globbing is case-sensitive
    assert result.markers == {"a.csv.done"}
    assert [name for name, _ in result.skipped] == ["bad\n.csv"]


def test_marker_names_cover_full_name_and_stem() -> None:
    assert marker_names("pos_1.csv", (".done", ".ok")) == (
        "pos_1.csv.done",
        "pos_1.done",
        "pos_1.csv.ok",
        "pos_1.ok",
    )
    assert marker_names(".hidden", (".done",)) == (".hidden.done",)


def test_stability_needs_the_same_size_and_mtime_in_both_listings() -> None:
    first = {"a": f("a", 10, 1), "b": f("b", 10, 1), "c": f("c", 10, 1)}
    second = {"a": f("a", 10, 1), "b": f("b", 20, 1), "c": f("c", 10, 2), "d": f("d")}
    assert [x.name for x in ready_by_stability(first, second)] == ["a"]


def test_find_ready_lists_twice_only_when_something_matches() -> None:
    listings = [[f("x.csv", 1, 5), f("y.csv", 1, 3)], [f("x.csv", 2, 6), f("y.csv", 1, 3)]]
    calls: list[int] = []
    slept: list[float] = []

    def lister() -> list[RemoteFile]:
        calls.append(1)
        return listings[len(calls) - 1]

    config = SourceConfig(readiness="stable", stable_seconds=1.5)
    not_ready: list[str] = []
    ready = list(
        find_ready(lister, config, [], sleep=slept.append, on_not_ready=lambda r: not_ready.append(r.name))
    )
    assert [r.name for r in ready] == ["y.csv"] and not_ready == ["x.csv"]
    assert (len(calls), slept) == (2, [1.5])
    calls.clear()
    assert list(find_ready(lambda: [], config, [], sleep=slept.append)) == []
    assert slept == [1.5]


def test_find_ready_orders_oldest_first() -> None:
    files = [f("b.csv", mtime=2), f("a.csv", mtime=2), f("c.csv", mtime=1)]
    ready = find_ready(lambda: files, SourceConfig(readiness="none"), [], sleep=lambda _: None)
    assert [r.name for r in ready] == ["c.csv", "a.csv", "b.csv"]
