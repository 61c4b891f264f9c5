"""A return whose lines sent in a single request are all refused while a read-back found others
landed (``AntavoAdapter._refused_after_read_back``), through ``posfeed run`` against the sandbox,
on a SQLite ledger and a PostgreSQL one. A run is killed while the return (milk and eggs) is in
flight: the milk lands, the eggs are refused, the answer never comes. With ``bulk_size = 1`` the
next run reads the milk back and sends the eggs alone, in a single request, refused again. The
money refunded (the milk) is kept in the ledger and counted by the reports, never missing."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import Fault
from tests.ledger_backends import ledger_env
from tests.runner_helpers import feed_toml, sample_feed
from tests.sandbox_fixtures import TARGET_KITS
from tests.test_refunds_hostile import DAY, line, ret, state, write
from tests.test_refunds_hostile import Posfeed as HostilePosfeed

# one milk (1.20), a bread (3.00) and eggs (2.50): 6.70; the return gives back the milk and the eggs
SALE = [line("S-1", 1, "MILK", "1", "1.20", "6.70"), line("S-1", 2, "BREAD", "1", "3.00", "6.70"),
        line("S-1", 3, "EGGS", "1", "2.50", "6.70")]
RETURN = [ret("R-1", 1, "MILK", "1", "1.20", "3.70", "S-1"),
          ret("R-1", 2, "EGGS", "1", "2.50", "3.70", "S-1")]


class Posfeed(HostilePosfeed):
    """`posfeed` in process: the acme hourly feed on Antavo, one event per request when it can,
    read back as soon as a run starts."""

    def __init__(self, tmp: Path, sandbox: SandboxServer, ledger_location: Path | str, *, max_attempts: int):
        self.tmp, self.sandbox, self.ledger_location = tmp, sandbox, ledger_location
        self.drop = tmp / "drop"
        self.drop.mkdir(parents=True, exist_ok=True)
        feed = sample_feed("acme_hourly", sandbox, folder=self.drop, max_attempts=max_attempts,
                           readback_wait_seconds=0, bulk_size=1)
        self.feed = tmp / "acme_hourly.toml"
        self.feed.write_text(feed_toml(feed.model_copy(update={"expected": None})), encoding="utf-8")
        self.feeds = {"acme_hourly": self.feed}
        self.env = {**TARGET_KITS[self.kind].env(sandbox), **ledger_env(ledger_location)}


def _killed_with_the_milk_landed(posfeed: Posfeed, sandbox: SandboxServer) -> None:
    """S-1 delivered; then a run sends R-1 (milk and eggs, one bulk request): the platform refunds
    the milk, refuses the eggs, and its answer never ends: the run is killed waiting for it."""
    write(posfeed.drop, "pos_LON01_20261120_10.csv", SALE)
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_12.csv", RETURN)
    sandbox.config.refuse_refund_items = ("EGGS",)
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("trickle",), 1.0
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(posfeed.tmp / "state"), "--reports-dir",
         str(posfeed.tmp / "reports"), "run", "--feed", str(posfeed.feed), "--business-date", DAY],
        env={**os.environ, **posfeed.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not posfeed.held()["S-1"]["refunds"]:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the refund never landed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    sandbox.config.fault_rate = 0.0
    assert [r["product_id"] for r in posfeed.held()["S-1"]["refunds"]] == ["MILK"]


def _assert_the_milk_counts(posfeed: Posfeed, done: dict[str, Any]) -> None:
    """R-1 failed for good, taken in part: the ledger, summary.csv and summary.json count the milk
    (1.20 of 3.70) as refunded, as the platform holds it."""
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_permanent", "partly_refunded")
    held = posfeed.held()["S-1"]
    assert Decimal(held["refunded"]) == Decimal("1.20")
    assert rows["R-1"].refunded == Decimal("1.20")
    assert sorted(rows["R-1"].event_ids) == sorted(r["event_id"] for r in held["refunds"])
    message = str(rows["R-1"].last_error_message)
    assert "the platform refunded 1.20 of 3.70 (MILK x1 (1.20), found on the platform by a read-back)" \
        in message, message
    assert "refund event" not in message
    with (Path(done["reports_path"]) / "summary.csv").open(encoding="utf-8", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if int(r["partly_refunded_count"] or 0)]
    assert (row["failed_permanent_count"], row["failed_permanent_amount"]) == ("1", "-3.70")
    assert (row["partly_refunded_count"], row["partly_refunded_amount"]) == ("1", "-1.20")
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == "-1.20"


def test_eggs_refused_alone_after_the_milk_was_read_back_keep_the_milk_refunded(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """The eggs, refused in a request of their own (``bulk_size = 1``), are answered as one event,
    not as a bulk result: the return is refunded in part, the milk the read-back found counted."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=1)
    _killed_with_the_milk_landed(posfeed, sandbox)
    done = posfeed.run()  # reads the milk back, sends the eggs alone: refused
    _assert_the_milk_counts(posfeed, done)
    assert "and refused EGGS x1 (2.50): 112204" in str(posfeed.rows()["R-1"].last_error_message)


def test_a_later_read_back_that_no_longer_lists_the_milk_keeps_the_milk_refunded(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read-back finds the milk and the eggs go alone; that request fails (503, nothing
    processed) and, by the time of the second read-back, the read API lags behind (a replica further
    behind): the milk is not listed, so the milk and the eggs go again, in one bulk request, and
    both are refused (the milk as already refunded: 112205). The platform holds the milk, which the
    first read-back matched to the return's line: before, the return kept no amount ("the platform
    holds 1 refund event of it"), counted in partly_refunded_count with nothing in the amount."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=2)
    _killed_with_the_milk_landed(posfeed, sandbox)
    calls = [0]

    def lag_behind_after_the_first_send() -> Fault | None:  # two reads, then the send of the eggs
        calls[0] += 1
        if calls[0] == 3:
            sandbox.config.read_lag_seconds = 3600.0
            return Fault.ERROR_503
        return None

    monkeypatch.setattr(sandbox.state, "draw_fault", lag_behind_after_the_first_send)
    done = posfeed.run()
    assert calls[0] == 6  # read-back, eggs (503), read-back, milk and eggs
    assert [r["product_id"] for r in posfeed.held()["S-1"]["refunds"]] == ["MILK"]  # refunded once
    _assert_the_milk_counts(posfeed, done)
    message = str(posfeed.rows()["R-1"].last_error_message)
    assert "and refused MILK x1 (1.20), EGGS x1 (2.50): 112205" in message, message
