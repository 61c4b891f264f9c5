"""cron/crontab.example's morning line as cron runs it: `posfeed runs --missing | grep -w missing ||
true` prints nothing (cron mails nothing) when every expected file arrived, and the missing ones
when some never did."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import clean_day, env_for, ops_feed, posfeed, write_feed
from tests.runner_helpers import REPO


def _morning_line() -> str:
    """The command of the crontab line that lists missing files (after its five time fields and user)."""
    text = (REPO / "cron" / "crontab.example").read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if "runs --missing" in line and not line.startswith("#")]
    return re.split(r"\s+", line, maxsplit=6)[6]


@pytest.mark.parametrize("stores", [("LON01",), ("LON01", "BER01")])
def test_the_crontab_morning_check_mails_only_files_that_never_arrived(
    tmp_path: Path, stores: tuple[str, ...]
) -> None:
    today = datetime.now(UTC).date()
    drop = tmp_path / "drop"
    for day in (today - timedelta(days=1), today):
        clean_day(drop, 3, day=day, name=f"pos_LON01_{day:%Y%m%d}_10.csv")
        arrived = datetime(day.year, day.month, day.day, 10, tzinfo=UTC).timestamp()  # on time
        os.utime(drop / f"pos_LON01_{day:%Y%m%d}_10.csv", (arrived, arrived))
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    with SandboxServer() as sandbox:
        feed = ops_feed(sandbox, drop)
        expected = feed.expected.model_copy(update={
            "cadence": "daily", "stores": stores, "closing_hour": 24, "late_after_minutes": 0,
            "pattern": "pos_{store_id}_{business_date:%Y%m%d}_10.csv"})
        source = feed.source.model_copy(update={"lookback_days": 1})
        feed = feed.model_copy(update={"name": "shop", "expected": expected, "source": source,
                                       "timezone": "UTC", "store_timezones": {}})
        write_feed(feed, feeds / "shop.toml")
        env = env_for(sandbox, POSFEED_FEEDS_DIR=str(feeds))
        ran = posfeed(tmp_path, "run", "--feed", "shop", env=env)
        assert ran.returncode in (0, 65), ran.stderr[-3000:]
    shim = tmp_path / "bin" / "posfeed"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m pipeline "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env.update(PATH=f"{shim.parent}:{env['PATH']}", POSFEED_STATE_DIR=str(tmp_path / "state"))
    mailed = subprocess.run(["sh", "-c", _morning_line()], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=True)
    assert mailed.stderr == ""
    if stores == ("LON01",):
        assert mailed.stdout == ""
    else:
        yesterday = f"{today - timedelta(days=1):%Y-%m-%d}"
        listed = [line.split()[:3] for line in mailed.stdout.splitlines()]
        assert listed == [["shop", yesterday, "BER01"]], mailed.stdout
