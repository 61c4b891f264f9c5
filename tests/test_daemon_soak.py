"""A daemon runs for weeks: what one scheduled run takes, the next gets back.

Many scheduled runs in one process (the daemon's own job path, against the real sandbox); what a
run holds is counted after a few runs and again after many more: it must not grow.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import logs
from pipeline.config import Feed, Settings
from pipeline.scheduling import FeedScheduler, ScheduledFeed
from tests.sandbox_fixtures import crmcom_feed

HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
          "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
          "currency,transaction_total,points_burned,original_transaction_id\n")
ZONE = ZoneInfo("Europe/London")


def drop_file(folder: Path, n: int) -> None:
    """The n-th small export of today: two sales of its own."""
    today = datetime.now(ZONE).date()
    day = today.strftime("%Y%m%d")
    rows = "".join(
        f"LON01-R1-{day}-{n:04d}{k},LON01,R1,{today} 00:00:0{k},{today},M10000{k},sale,1,100703,"
        "Nuts,snacks,1,3.95,,3.95,GBP,3.95,,\n"
        for k in range(2)
    )
    (folder / f"pos_LON01_{day}_{n:04d}.csv").write_text(HEADER + rows, encoding="utf-8")


def scheduled_feed(folder: Path, target: Feed) -> Feed:
    """``target``'s platform, fed from ``folder``, on a daily schedule."""
    data = target.model_dump()
    data.update({
        "name": "soak", "timezone": "Europe/London", "schedule": "0 3 * * *",
        "source": {"kind": "local", "path": str(folder), "pattern": "pos_*.csv", "readiness": "none"},
        "validation": {"currencies": ["GBP"]},
    })
    return Feed.model_validate(data)


class Daemon:
    """A started (paused) scheduler whose job runs on demand, in its worker thread as fired."""

    def __init__(self, feed: Feed, settings: Settings, folder: Path) -> None:
        self.feed, self.folder, self.runs = feed, folder, 0
        self.scheduler = FeedScheduler([ScheduledFeed(feed)], settings)
        self.scheduler.start(paused=True)

    def run(self, times: int) -> None:
        pool = self.scheduler.scheduler._lookup_executor("default")._pool
        for _ in range(times):
            drop_file(self.folder, self.runs)
            self.runs += 1
            assert pool.submit(self.scheduler.execute, self.feed.name).result() == 0

    def close(self) -> None:
        self.scheduler.shutdown()


def test_crmcom_tokens_of_finished_runs_are_not_kept_as_secrets(tmp_path: Path, sandbox_env: Any) -> None:
    """Each run's CRM.COM tokens were added to the log redaction for good: after weeks of hourly
    runs every log line was matched against thousands of dead tokens."""
    folder = tmp_path / "in"
    folder.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    daemon = Daemon(scheduled_feed(folder, crmcom_feed(sandbox_env)), settings, folder)
    try:
        daemon.run(5)
        after_few = len(logs._secrets)
        daemon.run(10)
        assert len(logs._secrets) == after_few
    finally:
        daemon.close()
    assert sandbox_env.state.platforms["crmcom"].tokens  # tokens were issued and used
