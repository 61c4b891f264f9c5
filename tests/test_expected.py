"""Expected files per business day: deadlines in store timezones, missing and late detection."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import ExpectedFilesConfig, Feed, load_feed
from pipeline.errors import ConfigError
from pipeline.expected import SeenFile, expected_files, file_statuses, missing_files, render_pattern

FEEDS = Path(__file__).resolve().parents[1] / "feeds"
DAY = date(2026, 11, 20)


def hourly_feed(**expected: object) -> Feed:
    return Feed.model_validate({
        "name": "shop_hourly",
        "timezone": "Europe/London",
        "store_timezones": {"NYC01": "America/New_York"},
        "expected": {
            "stores": ["LON01", "NYC01"], "cadence": "hourly", "opening_hour": 9, "closing_hour": 12,
            "pattern": "pos_{store_id}_{business_date:%Y%m%d}_{hour:02d}.csv", **expected,
        },
    })


def test_render_pattern_fills_placeholders_and_stars_unknowns() -> None:
    assert render_pattern("pos_{store_id}_{business_date:%Y%m%d}_{hour:02d}.csv",
                          business_date=DAY, store_id="LON01", hour=9) == "pos_LON01_20261120_09.csv"
    assert render_pattern("pos_{store_id}_{business_date:%Y%m%d}.csv",
                          business_date=DAY, store_id=None, hour=None) == "pos_*_20261120.csv"


def test_render_pattern_unknown_placeholder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"expected\.pattern"):
        render_pattern("pos_{till}.csv", business_date=DAY, store_id=None, hour=None)


def test_hourly_expectations_follow_each_store_timezone() -> None:
    expected = expected_files(hourly_feed(), DAY)
    assert [(e.store_id, e.hour) for e in expected] == [
        ("LON01", 9), ("LON01", 10), ("LON01", 11), ("NYC01", 9), ("NYC01", 10), ("NYC01", 11)
    ]
    lon9, nyc9 = expected[0], expected[3]
    assert lon9.pattern == "pos_LON01_20261120_09.csv"
    # the 09 file covers 09:00-10:00 local: due at 10:00 (London = UTC in November, New York = UTC-5)
    assert lon9.due_at == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert nyc9.due_at == datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    assert lon9.late_at - lon9.due_at == timedelta(minutes=60)


def test_daily_expectation_due_at_closing_hour_across_dst() -> None:
    feed = Feed.model_validate({
        "name": "d", "timezone": "Europe/London",
        "expected": {"cadence": "daily", "closing_hour": 24, "late_after_minutes": 30,
                     "pattern": "daily_{business_date:%Y%m%d}.csv"},
    })
    # 2026-10-24 is the last BST day: midnight local is 23:00 UTC
    (exp,) = expected_files(feed, date(2026, 10, 24))
    assert exp.store_id is None
    assert exp.due_at == datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    (exp,) = expected_files(feed, date(2026, 10, 25))
    assert exp.due_at == datetime(2026, 10, 26, 0, 0, tzinfo=UTC)
    assert exp.late_at == datetime(2026, 10, 26, 0, 30, tzinfo=UTC)


def test_no_cadence_expects_nothing() -> None:
    assert expected_files(Feed(name="plain"), DAY) == []


def test_missing_late_arrived_and_pending() -> None:
    expected = expected_files(hourly_feed(), DAY)
    seen = [
        SeenFile("pos_LON01_20261120_09.csv", datetime(2026, 11, 20, 10, 5, tzinfo=UTC)),   # on time
        SeenFile("pos_LON01_20261120_10.csv", datetime(2026, 11, 20, 13, 0, tzinfo=UTC)),   # 2h late
        SeenFile("pos_NYC01_20261120_09.csv", None),                                        # unknown time
        SeenFile("unrelated.csv", datetime(2026, 11, 20, 9, 0, tzinfo=UTC)),
    ]
    now = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)  # NYC 11:30: its 10 file is overdue, 11 not yet
    statuses = {(s.expected.store_id, s.expected.hour): s.status for s in file_statuses(expected, seen, now)}
    assert statuses == {
        ("LON01", 9): "arrived", ("LON01", 10): "late", ("LON01", 11): "missing",
        ("NYC01", 9): "arrived", ("NYC01", 10): "pending", ("NYC01", 11): "pending",
    }
    report = missing_files(expected, seen, now)
    assert [(s.expected.store_id, s.expected.hour) for s in report.missing] == [("LON01", 11)]
    assert [s.file for s in report.late] == ["pos_LON01_20261120_10.csv"]
    assert report.late[0].minutes_late == 120
    rows = report.to_list()
    assert [r["status"] for r in rows] == ["missing", "late"]
    assert rows[0] == {
        "feed": "shop_hourly", "business_date": "2026-11-20", "store_id": "LON01", "hour": 11,
        "pattern": "pos_LON01_20261120_11.csv", "status": "missing",
        "due_at": "2026-11-20T12:00:00+00:00", "late_at": "2026-11-20T13:00:00+00:00",
        "file": None, "seen_at": None, "minutes_late": None,
    }


def test_nothing_is_missing_before_the_deadline_passes() -> None:
    expected = expected_files(hourly_feed(), DAY)
    last_deadline = max(e.late_at for e in expected)
    assert missing_files(expected, [], last_deadline).missing != ()
    early = datetime(2026, 11, 20, 10, 59, tzinfo=UTC)
    assert missing_files(expected, [], early).missing == ()


def test_earliest_sighting_counts() -> None:
    expected = expected_files(hourly_feed(), DAY)[:1]
    seen = [SeenFile("pos_LON01_20261120_09.csv", datetime(2026, 11, 20, 18, 0, tzinfo=UTC)),
            SeenFile("pos_LON01_20261120_09.csv", datetime(2026, 11, 20, 10, 30, tzinfo=UTC))]
    (status,) = file_statuses(expected, seen, datetime(2026, 11, 21, tzinfo=UTC))
    assert status.status == "arrived"
    assert status.seen_at == datetime(2026, 11, 20, 10, 30, tzinfo=UTC)


def test_config_rejects_patterns_that_cannot_tell_files_apart() -> None:
    with pytest.raises(ValueError, match="store_id"):
        Feed.model_validate({"name": "x", "expected": {"stores": ["A"], "cadence": "daily",
                                                       "pattern": "x_{business_date:%Y%m%d}.csv"}})
    with pytest.raises(ValueError, match="hour"):
        Feed.model_validate({"name": "x", "expected": {"cadence": "hourly", "pattern": "x.csv"}})
    with pytest.raises(ValueError, match="closing_hour"):
        ExpectedFilesConfig(cadence="hourly", opening_hour=20, closing_hour=8)


def test_sample_acme_hourly_feed_reports_the_hour_that_never_arrives() -> None:
    feed = load_feed(FEEDS / "acme_hourly.toml")
    folder = feed.resolve_path(feed.source.path)
    # judge by name only (a checkout's mtime says when the sample was generated, not when it arrived)
    seen = [SeenFile(p.name) for p in folder.iterdir()]
    report = missing_files(expected_files(feed, DAY), seen, datetime(2026, 11, 22, tzinfo=UTC))
    assert [(s.expected.store_id, s.expected.hour) for s in report.missing] == [("BER01", 14)]
    assert report.late == ()


def test_sample_daily_feeds_have_every_file() -> None:
    for name in ("acme_daily", "bistro", "bistro_web"):
        feed = load_feed(FEEDS / f"{name}.toml")
        folder = feed.resolve_path(feed.source.path)
        seen = [SeenFile(p.name) for p in folder.iterdir()]
        report = missing_files(expected_files(feed, DAY), seen, datetime(2026, 11, 22, tzinfo=UTC))
        assert report.missing == () and report.late == (), name
