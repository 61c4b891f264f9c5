"""`posfeed run` on a local folder the till is still writing into: the file is fetched while its
last line is half written (the till flushed a buffer mid-line and paused longer than
``source.stable_seconds``), then completed before the next run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx

from pipeline.config import ExpectedFilesConfig
from pipeline.errors import EXIT_DATA
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import SAMPLE_ACME, sample_feed
from tests.sources.test_sftp_run import FILES, posfeed_run, write_feed_file

LAST = ("LON01-R3-20261120-0099,LON01,R3,2026-11-20 10:58:30,2026-11-20,M574439,sale,1,100403,Flat white,"
        "coffee,1,3.10,,3.10,GBP,3.10,150,\n")


def burned(sandbox: SandboxServer, transaction_id: str) -> list[object]:
    """points_burned of every copy of ``transaction_id`` the platform holds."""
    listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
    return [t.get("points_burned") for t in listing if t.get("transaction_id") == transaction_id]


def test_a_half_written_last_line_is_rejected_then_sent_whole_once_the_till_completes_it(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    name = FILES[0]
    whole = (SAMPLE_ACME / name).read_text(encoding="utf-8") + LAST
    (folder / name).write_text(whole[: whole.index(",150,") + len(",15")], encoding="utf-8")
    feed = sample_feed("acme_hourly", sandbox, folder=folder,
                       source={"readiness": "stable", "stable_seconds": 0.0, "after_success": "keep"})
    feed = feed.model_copy(update={"expected": ExpectedFilesConfig()})  # no missing-file noise
    feed_file = write_feed_file(feed, tmp_path / "till.toml")

    first = posfeed_run(feed_file, tmp_path, sandbox)
    assert first.returncode == EXIT_DATA, first.stderr[-3000:]  # the cut line is a reject
    summary = json.loads(first.stdout)
    assert summary["balanced"] is True and summary["accepted"] > 0
    with (Path(summary["reports_path"]) / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        (reject,) = [r for r in csv.DictReader(handle) if r["transaction_id"].endswith("-0099")]
    assert (reject["reject_code"], reject["source_file"], reject["source_line"]) == (
        "R019_WRONG_FIELD_COUNT", name, "75")
    assert "no line break at the end of the file" in reject["reject_reason"]
    assert burned(sandbox, "LON01-R3-20261120-0099") == []  # never sent with 15 points

    (folder / name).write_text(whole, encoding="utf-8")  # the till finishes its line
    second = posfeed_run(feed_file, tmp_path, sandbox)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["superseded_files"] and again["accepted"] == 1 and again["balanced"] is True
    assert burned(sandbox, "LON01-R3-20261120-0099") == [150]
