"""A return whose sale has not arrived yet, through ``posfeed run`` against the sandbox, on a
SQLite ledger and a PostgreSQL one: the return file comes first, the sale's in a later run. The
return waits for its sale (``original_not_found``, nothing sent), a plain later run sends it once,
after the sale, and every ``summary.csv`` balances per currency; a return whose sale never comes
is failed for good after ``resume.sale_wait_hours``, naming the sale. A dry run says the same.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import PlatformUnavailableError
from pipeline.ledger import Ledger, TxnRecord, TxnState
from pipeline.runner import exit_cause, exit_code_of
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import delivered_ids, feed_toml, sample_feed, stats
from tests.sandbox_fixtures import TARGET_KITS
from tests.test_refunds_hostile import DAY, SALE, line, ret, write
from tests.test_refunds_hostile import Posfeed as HostilePosfeed


class Posfeed(HostilePosfeed):
    """`posfeed` in process: the acme hourly feed (its scope), one ledger, the sandbox's ``kind``."""

    def __init__(self, tmp: Path, sandbox: SandboxServer, ledger_location: Path | str, kind: str,
                 *, wait_hours: float | None = None):
        self.tmp, self.sandbox, self.ledger_location, self.kind = tmp, sandbox, ledger_location, kind
        self.drop = tmp / "drop"
        self.drop.mkdir(parents=True, exist_ok=True)
        feed = sample_feed("acme_hourly", sandbox, folder=self.drop, target_kind=kind, max_attempts=1)
        update: dict[str, Any] = {"expected": None, "name": "acme_hourly"}
        if wait_hours is not None:
            update["resume"] = feed.resume.model_copy(update={"sale_wait_hours": wait_hours})
        self.feed = tmp / "acme_hourly.toml"
        self.feed.write_text(feed_toml(feed.model_copy(update=update)), encoding="utf-8")
        self.feeds = {"acme_hourly": self.feed}
        self.env = {**TARGET_KITS[kind].env(sandbox), **ledger_env(ledger_location)}

    def age(self, tid: str, hours: float) -> None:
        """Make ``tid``'s row first recorded ``hours`` ago (as if it had waited that long)."""
        when = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="microseconds")
        with Ledger(self.ledger_location) as ledger, ledger._db.transaction() as db:
            db.execute("UPDATE transactions SET created_at = ? WHERE transaction_id = ?", (when, tid))


def detail(done: dict[str, Any]) -> dict[str, dict[str, str]]:
    with (Path(done["reports_path"]) / "detail.csv").open(encoding="utf-8", newline="") as handle:
        return {row["transaction_id"]: row for row in csv.DictReader(handle)}


def state(rows: dict[str, TxnRecord], tid: str) -> tuple[str, str | None]:
    return rows[tid].state.value, rows[tid].last_error_code


RETURN = [ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1")]
# CRM.COM: the whole sale comes back (its purchase is cancelled)
WHOLE_RETURN = [ret("R-1", 1, "MILK", "2", "1.20", "5.40", "S-1"),
                ret("R-1", 2, "BREAD", "1", "3.00", "5.40", "S-1")]


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_return_whose_sale_comes_in_a_later_run_waits_and_goes_out_once_after_it(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """Before, on Antavo the refund went out, was refused for good (112201) and stayed so after
    its sale was delivered; on CRM.COM it was not_sent (``unmatched_return``) for good."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN if kind == "antavo" else WHOLE_RETURN)
    dry = posfeed.run("acme_hourly", "--dry-run")
    assert detail(dry)["R-1"]["state"] == "failed_retryable"
    assert detail(dry)["R-1"]["error_code"] == "original_not_found"
    done = posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_retryable", "original_not_found")
    assert "S-1" in str(rows["R-1"].last_error_message)
    assert detail(done)["R-1"]["error_message"] == detail(dry)["R-1"]["error_message"]
    assert done["failed_retryable"] == 1 and done["backlog"]["waiting"] == 1
    if kind == "antavo":
        assert stats(sandbox)["events_rejected"] == 0  # nothing of it went out
    assert "S-1" not in posfeed.held()
    posfeed.run()  # a run with no new file: it still waits
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1")[0] == "accepted"
    assert state(rows, "R-1")[0] == "accepted", rows["R-1"]
    held = posfeed.held()["S-1"]
    if kind == "antavo":
        assert Decimal(held["refunded"]) == Decimal("1.20") and len(held["refunds"]) == 1
        assert stats(sandbox)["events_rejected"] == 0
    else:
        assert held["status"] == "cancelled"
    posfeed.run()  # and never again
    assert state(posfeed.rows(), "R-1")[0] == "accepted"
    if kind == "antavo":
        assert len(posfeed.held()["S-1"]["refunds"]) == 1


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_return_whose_sale_never_comes_is_failed_for_good_after_the_wait(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind, wait_hours=24)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN)
    posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    posfeed.age("R-1", 23)
    done = posfeed.run()  # within the wait, past the other [resume] caps: still waiting
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    # waiting work older than alerts.backlog_max_age_minutes: the scope's backlog problem
    assert done["backlog"]["waiting"] == 1 and done["backlog"]["oldest_waiting_minutes"] >= 23 * 60
    assert [p["kind"] for p in done["problems"]] == ["backlog"], done["problems"]
    assert "1 return waiting for a sale that has not arrived" in done["problems"][0]["summary"]
    posfeed.age("R-1", 25)
    dry = posfeed.run("acme_hourly", "--dry-run")
    assert (detail(dry)["R-1"]["state"], detail(dry)["R-1"]["error_code"]) == (
        "failed_permanent", "original_not_found")
    done = posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_permanent", "original_not_found")
    message = str(rows["R-1"].last_error_message)
    assert "S-1" in message and "24" in message and "--include-permanent" in message
    assert detail(done)["R-1"]["error_message"] == detail(dry)["R-1"]["error_message"]
    assert done["failed_permanent"] == 1 and done["backlog"]["waiting"] == 0
    assert "S-1" not in posfeed.held()
    if kind == "antavo":
        assert stats(sandbox)["events_rejected"] == 0


def test_a_waiting_return_killed_in_flight_once_its_sale_came_is_read_back_not_sent_again(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """A return that waited keeps its code (``original_not_found``) while its request is in
    flight: killed then, it may have landed, so the next run reads it back instead of sending it
    again (a second refund)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, "antavo")
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN)
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    sandbox.config.hold_after = ("events_accepted", 1)  # the sale goes through, the refund is held
    env = {**os.environ, **posfeed.env}
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp_path / "state"), "--reports-dir",
         str(tmp_path / "reports"), "run", "--feed", str(posfeed.feed), "--business-date", DAY],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while posfeed.rows()["R-1"].state is not TxnState.SENDING:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the refund never went out"
        time.sleep(0.02)
    # the held refund lands, and its answer never ends: the run is killed waiting for it
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("trickle",), 1.0
    sandbox.config.hold_after = None
    while not posfeed.held()["S-1"]["refunds"]:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the refund never landed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    sandbox.config.fault_rate = 0.0
    assert state(posfeed.rows(), "R-1") == ("sending", "original_not_found")
    posfeed.run()  # read back: found, not sent again
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("accepted", "read_back")
    held = posfeed.held()["S-1"]
    assert len(held["refunds"]) == 1 and Decimal(held["refunded"]) == Decimal("1.20")


def console(posfeed: Posfeed, *options: str) -> tuple[int, str]:
    """A plain `posfeed run` of the feed as an operator's timer runs it: its exit code and what it
    printed (no ``--json``; ``options``: posfeed's own, ``-v`` to see its info log lines too)."""
    base = [*options, "--state-dir", str(posfeed.tmp / "state"),
            "--reports-dir", str(posfeed.tmp / "reports")]
    result = CliRunner().invoke(cli, [*base, "run", "--feed", str(posfeed.feed), "--business-date", DAY],
                                env=posfeed.env, catch_exceptions=False)
    return result.exit_code, result.output


def summary_rows(done: dict[str, Any]) -> list[dict[str, str]]:
    with (Path(done["reports_path"]) / "summary.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_run_whose_only_unfinished_work_is_a_return_waiting_for_its_sale_exits_0_and_says_until_when(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """Before, every such run exited 75 (try again later) for up to ``resume.sale_wait_hours``: an
    hourly timer showed a failed unit every hour for a normal situation."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN)
    done = posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    scope = posfeed.rows()["R-1"].scope
    with Ledger(posfeed.ledger_location) as ledger:
        recorded = datetime.fromisoformat(ledger.recorded_at(scope, ["R-1"])["R-1"])
    until = recorded + timedelta(hours=72)
    assert done["exit_code"] == 0, done
    assert done["waiting_for_sale"] == 1
    assert datetime.fromisoformat(done["waiting_for_sale_until"]) == until
    assert done["failed_retryable"] == 1 and done["backlog"]["waiting"] == 1  # still counted as such
    reasons = [row["reason"] for row in summary_rows(done) if int(row["failed_retryable_count"])]
    assert reasons == ["1 return waits for its sale (original_not_found in detail.csv)"]
    code, output = console(posfeed)  # the next hour's run, as a timer sees it
    assert code == 0, output
    last = "\n".join(output.splitlines()[-4:])
    assert f"1 return waits for its sale until {until:%Y-%m-%d %H:%M} UTC" in last, output
    assert "exit 75" not in output


@pytest.mark.parametrize("n", [1, 2])
def test_returns_waiting_for_their_sale_are_counted_in_words_that_agree(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, n: int
) -> None:
    """The summary row's reason, the console's ``waiting:`` line and the run's log line say
    "1 return waits for its sale", "2 returns wait for their sale": never "return(s)"."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, "antavo")
    write(posfeed.drop, "pos_LON01_20261120_10.csv",
          [ret(f"R-{i}", 1, "MILK", "1", "1.20", "1.20", "S-1") for i in range(1, n + 1)])
    done = posfeed.run()
    assert done["waiting_for_sale"] == n
    reasons = [row["reason"] for row in summary_rows(done) if int(row["failed_retryable_count"])]
    words = "1 return waits for its sale" if n == 1 else "2 returns wait for their sale"
    assert reasons == [f"{words} (original_not_found in detail.csv)"]
    until = datetime.fromisoformat(done["waiting_for_sale_until"])
    code, output = console(posfeed, "-v")
    assert code == 0, output
    waiting = next(text for text in output.splitlines() if text.startswith("  waiting:"))
    first = "" if n == 1 else " for the first recorded"
    each = "it is" if n == 1 else "each is"
    assert waiting == (f"  waiting:   {words} until {until.astimezone(UTC):%Y-%m-%d %H:%M} UTC{first} "
                       f"(resume.sale_wait_hours; then failed for good, exit 65); {each} sent by the run "
                       "after its sale's export arrives")
    run_line = next(text for text in output.splitlines() if ": finished, exit 0:" in text)
    assert f" ({words} until {done['waiting_for_sale_until']})" in run_line, run_line
    assert "(s)" not in output


def test_other_work_to_try_again_beside_a_waiting_return_still_exits_75_and_the_cause_names_only_it() -> None:
    """What a run leaves to try again besides returns within their wait still exits 75; its cause
    names that work, not the returns (they wait, as the summary says)."""
    waiting_cause = {"state": "failed_retryable", "code": "original_not_found", "count": 1,
                     "message": "not sent: its sale S-1 has not arrived"}
    transient = {"state": "failed_retryable", "code": "http_503", "count": 2, "message": "server error"}
    alone = {"failed_retryable": 1, "waiting_for_sale": 1, "balanced": True, "causes": [waiting_cause]}
    assert exit_code_of(alone) == 0 and exit_cause(alone, 0) == ""
    both = {**alone, "failed_retryable": 3, "causes": [transient, waiting_cause]}
    assert exit_code_of(both) == 75
    assert exit_cause(both, 75) == "2 failed retryable: http_503: server error"
    in_doubt = {**alone, "in_doubt": 1}
    assert exit_code_of(in_doubt) == 75


def test_returns_waiting_for_their_sale_leave_the_causes_of_a_failed_run_to_the_real_ones(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Before, the run's causes (at most 3, the most frequent first) counted the returns waiting
    for their sale: three sales' waiting returns took every slot and the sale the platform refused,
    the one reason the run exits 65, was named nowhere on stderr."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, "crmcom")
    waiting = [ret(f"R-{sale}{n}", 1, "MILK", "1", "1.20", "1.20", f"S-{sale}")
               for sale in (1, 2, 3) for n in "ab"]  # two returns of each of three sales not arrived
    refused = line("S-9", 1, "MILK", "1", "1.20", "1.20", customer=TARGET_KITS["crmcom"].unknown_customer)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [*waiting, refused])
    code, output = console(posfeed)
    assert code == 65, output
    assert state(posfeed.rows(), "S-9")[0] == "failed_permanent"
    assert "6 returns wait for their sale until" in output
    exit_line = next(text for text in output.splitlines() if "exit 65" in text)
    assert "1 refused by the platform: CUSTOMER_NOT_FOUND" in exit_line, output
    assert "S-1" not in exit_line and "original_not_found" not in exit_line


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_check_of_a_waiting_return_that_sends_nothing_is_not_an_attempt(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """Before, on Antavo every run's look for the sale counted one more attempt (3 after 3 runs)
    though nothing of the return went out."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN if kind == "antavo" else WHOLE_RETURN)
    for _ in range(3):
        done = posfeed.run()
        assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
        assert posfeed.rows()["R-1"].attempts == 0
        assert detail(done)["R-1"]["attempts"] == "0"
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    done = posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1")[0] == "accepted" and rows["R-1"].attempts == 1
    assert done["exit_code"] == 0


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_dry_run_holds_an_in_doubt_return_of_an_unknown_sale_waiting_as_the_real_run_does(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """A run killed while it looked for the sale of a waiting return leaves it in doubt
    (``sending``). Before, a dry run showed it queued ("would be sent") on Antavo, where the real
    run reads it back, finds the sale not listed, and holds it waiting."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN if kind == "antavo" else WHOLE_RETURN)
    posfeed.run()
    # as a run killed in its look for the sale leaves it: in doubt, one attempt, an hour ago
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    with Ledger(posfeed.ledger_location) as ledger, ledger._db.transaction() as db:
        db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ? "
                   "WHERE transaction_id = ?", (hour_ago, "R-1"))
    dry = posfeed.run("acme_hourly", "--dry-run")
    assert (detail(dry)["R-1"]["state"], detail(dry)["R-1"]["error_code"]) == (
        "failed_retryable", "original_not_found")
    assert dry["queued"] == 0 and dry["exit_code"] == 0
    done = posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_retryable", "original_not_found")
    assert rows["R-1"].attempts == 1  # the killed run's, none more
    assert detail(done)["R-1"]["error_message"] == detail(dry)["R-1"]["error_message"]
    assert done["exit_code"] == dry["exit_code"] == 0
    assert "S-1" not in posfeed.held()


def _point_at(posfeed: Posfeed, base_url: str, *, check_credentials: bool = True) -> None:
    """Rewrite the feed file: its target at ``base_url`` (a closed port: the platform is down);
    ``check_credentials=False`` lets a run go on to its files while the platform is down."""
    feed = sample_feed("acme_hourly", posfeed.sandbox, folder=posfeed.drop, target_kind=posfeed.kind,
                       max_attempts=1, base_url=base_url, check_credentials=check_credentials)
    posfeed.feed.write_text(feed_toml(feed.model_copy(update={"expected": None, "name": "acme_hourly"})),
                            encoding="utf-8")


def _unreachable(posfeed: Posfeed) -> list[dict[str, Any]]:
    """The feed's platform_unreachable problems, resolved ones too."""
    base = ["--state-dir", str(posfeed.tmp / "state"), "--reports-dir", str(posfeed.tmp / "reports")]
    result = CliRunner().invoke(cli, [*base, "problems", "--all", "--json"], env=posfeed.env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [p for p in json.loads(result.stdout) if p["kind"] == "platform_unreachable"]


def test_a_run_whose_only_answer_is_a_return_waiting_for_its_sale_does_not_resolve_platform_unreachable(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """Before, a return held waiting for its sale counted as a transaction the platform answered:
    the run after an outage closed the platform_unreachable problem (its alert said resolved)
    while CRM.COM was still down and had not been asked at all (its sale is looked up in the
    ledger alone)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, "crmcom")
    down = f"http://127.0.0.1:{_closed_port()}"
    _point_at(posfeed, down)
    base = ["--state-dir", str(tmp_path / "state"), "--reports-dir", str(tmp_path / "reports")]
    run = [*base, "run", "--feed", str(posfeed.feed), "--business-date", DAY]
    result = CliRunner().invoke(cli, run, env=posfeed.env)  # stopped at the start: cannot be reached
    assert isinstance(result.exception, PlatformUnavailableError), result.output
    (problem,) = _unreachable(posfeed)
    assert problem["status"] == "open"

    _point_at(posfeed, down, check_credentials=False)  # still down; the run goes on to its files
    write(posfeed.drop, "pos_LON01_20261120_10.csv", WHOLE_RETURN)
    result = CliRunner().invoke(cli, [*run, "--json"], env=posfeed.env, catch_exceptions=False)
    done = json.loads(result.stdout)
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    assert done["problems_resolved"] == []
    assert [p["status"] for p in _unreachable(posfeed)] == ["open"]

    _point_at(posfeed, sandbox.url)  # the platform is back: the sale comes, both are answered
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    done = posfeed.run()
    assert state(posfeed.rows(), "R-1")[0] == "accepted"
    assert done["problems_resolved"] == [problem["problem_id"]]
    assert [p["status"] for p in _unreachable(posfeed)] == ["resolved"]


def _closed_port() -> int:
    """A loopback port nothing listens on (connection refused: the platform is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
@pytest.mark.parametrize("killed", [False, True])
def test_a_return_carried_over_after_an_outage_goes_out_after_its_sale_read_in_the_same_run(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str, killed: bool
) -> None:
    """A return whose look for its sale failed in an outage (``connection_error``, transient) is
    carried over and goes out after the sale the next run reads from its files, in that run.
    Before, one that had an attempt counted (``killed``: a run killed in its look for the sale left
    it in doubt, and the next run's read-back failed in the outage) was settled first, before the
    files were read: the sale was not there yet, so the return waited one more run
    (``original_not_found``)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN if kind == "antavo" else WHOLE_RETURN)
    if killed:
        posfeed.run()
        # as a run killed in its look for the sale leaves it: in doubt, one attempt, an hour ago
        hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
        with Ledger(posfeed.ledger_location) as ledger, ledger._db.transaction() as db:
            db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ? "
                       "WHERE transaction_id = ?", (hour_ago, "R-1"))
    _point_at(posfeed, f"http://127.0.0.1:{_closed_port()}", check_credentials=False)
    posfeed.run()  # the platform is down, the return's sale has not arrived
    first = posfeed.rows()["R-1"]
    assert first.state is TxnState.FAILED_RETRYABLE, first
    if kind == "antavo":
        assert (first.last_error_code, first.attempts) == ("connection_error", 1 if killed else 0)
    assert "S-1" not in posfeed.held()

    _point_at(posfeed, sandbox.url)  # the platform is back, and the sale comes
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    done = posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1")[0] == "accepted"
    assert state(rows, "R-1")[0] == "accepted", rows["R-1"]
    assert done["carried_over"] == 1 and done["exit_code"] == 0, done
    held = posfeed.held()["S-1"]
    if kind == "antavo":  # the sale's checkout, then the return's refund
        assert [e["action"] for e in held["events"]] == ["checkout", "refund_item"], held["events"]
        assert Decimal(held["refunded"]) == Decimal("1.20") and len(held["refunds"]) == 1
        assert stats(sandbox)["events_rejected"] == 0
    else:
        assert held["status"] == "cancelled"


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
@pytest.mark.parametrize("waited", [True, False])
def test_a_return_in_doubt_is_read_back_first_and_goes_out_after_its_sale_read_in_the_same_run(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str, waited: bool
) -> None:
    """A return left in doubt (``sending``: a run killed in its look for the sale, after it had
    waited, ``waited``, or in its first) is read back before the files are read; the platform
    does not hold it and its sale is not on the platform either. Before, that read-back held it
    waiting (``original_not_found``) though the run's files brought its sale: it went out one run
    later. Now it goes after the sale, in that run, once; a dry run before it says the same and
    changes nothing."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", RETURN if kind == "antavo" else WHOLE_RETURN)
    posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    # as a run killed in its look for the sale leaves it: in doubt, one attempt, an hour ago
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    with Ledger(posfeed.ledger_location) as ledger, ledger._db.transaction() as db:
        db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ?"
                   f"{'' if waited else ', last_error_code = NULL, last_error_message = NULL'} "
                   "WHERE transaction_id = ?", (hour_ago, "R-1"))

    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    dry = posfeed.run("acme_hourly", "--dry-run")
    assert {tid: detail(dry)[tid]["state"] for tid in ("S-1", "R-1")} == {"S-1": "queued", "R-1": "queued"}
    assert dry["waiting_for_sale"] == 0 and dry["exit_code"] == 0, dry
    assert delivered_ids(sandbox) == []  # the dry run sent nothing
    before = posfeed.rows()["R-1"]
    assert (before.state, before.attempts) == (TxnState.SENDING, 1)  # nor changed the ledger

    done = posfeed.run()
    rows = posfeed.rows()
    assert state(rows, "S-1")[0] == "accepted"
    assert state(rows, "R-1")[0] == "accepted", rows["R-1"]
    assert rows["R-1"].last_run_id == done["run_id"]
    assert done["carried_over"] == 1 and done["exit_code"] == 0, done
    assert done["waiting_for_sale"] == 0 and done["backlog"]["waiting"] == 0, done
    assert delivered_ids(sandbox) == ["S-1"]  # the sale, once
    held = posfeed.held()["S-1"]
    if kind == "antavo":  # the sale's checkout, then the return's refund, each once
        assert [e["action"] for e in held["events"]] == ["checkout", "refund_item"], held["events"]
        assert Decimal(held["refunded"]) == Decimal("1.20") and len(held["refunds"]) == 1
        assert stats(sandbox)["events_rejected"] == 0
    else:
        assert held["status"] == "cancelled"
    posfeed.run()  # and never again
    assert state(posfeed.rows(), "R-1")[0] == "accepted"
    if kind == "antavo":
        assert len(posfeed.held()["S-1"]["refunds"]) == 1
