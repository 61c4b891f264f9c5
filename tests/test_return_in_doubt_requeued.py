"""A return left in doubt (``sending``) whose sale the ledger does not hold accepted, read back at
the start of a run, found not to have landed (held ``original_not_found``) and queued again after
the run's files, against the sandbox of each target, on both ledgers, when things go wrong: the
files bring the return again, the run is killed, stopped or refused its credentials around the
requeue, or the files' sale is refused or voided. The return goes out at most once, after its
sale, or ends as a return of such a sale does; the reports balance and count it once."""

from __future__ import annotations

import csv
import json
import os
import signal
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
from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import delivered_ids, stats
from tests.test_refunds_hostile import DAY, SALE, line, ret, write
from tests.test_return_before_sale import RETURN, WHOLE_RETURN, Posfeed, detail, state


def left_in_doubt(posfeed: Posfeed, returned: list[str] | None = None) -> None:
    """R-1 read in a first run, held waiting for its sale S-1, then left as a run killed in its
    look for the sale leaves it: in doubt, one attempt, an hour ago."""
    lines = returned if returned is not None else RETURN if posfeed.kind == "antavo" else WHOLE_RETURN
    write(posfeed.drop, "pos_LON01_20261120_10.csv", lines)
    posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    with Ledger(posfeed.ledger_location) as ledger, ledger._db.transaction() as db:
        db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ? "
                   "WHERE transaction_id = ?", (hour_ago, "R-1"))


def sent_once_after_its_sale(posfeed: Posfeed) -> None:
    """S-1 and R-1 accepted; the platform holds the sale once and the return's effect once."""
    rows = posfeed.rows()
    assert state(rows, "S-1")[0] == "accepted", rows["S-1"]
    assert state(rows, "R-1")[0] == "accepted", rows["R-1"]
    assert delivered_ids(posfeed.sandbox) == ["S-1"]
    held = posfeed.held()["S-1"]
    if posfeed.kind == "antavo":  # the sale's checkout, then the return's refund, each once
        assert [e["action"] for e in held["events"]] == ["checkout", "refund_item"], held["events"]
        assert Decimal(held["refunded"]) == Decimal("1.20") and len(held["refunds"]) == 1
        assert stats(posfeed.sandbox)["events_rejected"] == 0
    else:
        assert held["status"] == "cancelled"


def detail_rows(done: dict[str, Any]) -> list[dict[str, str]]:
    with (Path(done["reports_path"]) / "detail.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_return_in_doubt_that_the_files_bring_again_with_its_sale_goes_out_once(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """The store's next export holds the sale and the return again (unchanged): the file's copy
    of R-1 queues its primary, held waiting by the read-back, into the run (a duplicate of a
    failed transaction). Before, the requeue of the read-back then met a queued row: the run
    failed (exit 70, ``illegal transition queued -> queued``) before sending anything, the sale
    too. Now the return goes after its sale in
    that run, once; the reports count it once (and its copy as a duplicate); a dry run before it
    (which failed the same way) says so."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    returned = RETURN if kind == "antavo" else WHOLE_RETURN
    left_in_doubt(posfeed, returned)
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [*SALE, *returned])
    dry = posfeed.run("acme_hourly", "--dry-run")  # says the same, changes nothing
    assert sorted((r["transaction_id"], r["state"]) for r in detail_rows(dry)) == [
        ("R-1", "duplicate"), ("R-1", "queued"), ("S-1", "queued")]
    assert dry["exit_code"] == 0 and delivered_ids(sandbox) == [], dry
    assert (posfeed.rows()["R-1"].state, posfeed.rows()["R-1"].attempts) == (TxnState.SENDING, 1)
    done = posfeed.run()
    sent_once_after_its_sale(posfeed)
    rows = posfeed.rows()
    assert rows["R-1"].last_run_id == done["run_id"] and rows["R-1"].attempts == 2
    assert done["exit_code"] == 0 and done["carried_over"] == 1, done
    assert done["waiting_for_sale"] == 0 and done["backlog"]["waiting"] == 0, done
    assert [r["transaction_id"] for r in detail_rows(done)].count("R-1") == 2  # primary + duplicate
    assert sorted(r["state"] for r in detail_rows(done) if r["transaction_id"] == "R-1") == [
        "accepted", "duplicate"]


# `posfeed ARGS` that SIGKILLs its own process once the run has queued again a return its read-back
# held waiting (before any request of the run's files goes out)
_KILLED_AFTER_REQUEUE = """
import os, signal, sys
import pipeline.runner as runner
from pipeline.cli import cli
queued_again = runner._queued_again
def killed_after(ctx, row_ids):
    again = queued_again(ctx, row_ids)
    if again:
        os.kill(os.getpid(), signal.SIGKILL)
    return again
runner._queued_again = killed_after
cli(sys.argv[1:])
"""


def _posfeed_process(posfeed: Posfeed, *script: str) -> subprocess.Popen[str]:
    """`posfeed run` of the feed in a process of its own (``script``: ``-c CODE`` to run instead)."""
    command = [*script] if script else ["-m", "pipeline"]
    return subprocess.Popen(
        [sys.executable, *command, "--state-dir", str(posfeed.tmp / "state"), "--reports-dir",
         str(posfeed.tmp / "reports"), "run", "--feed", str(posfeed.feed), "--business-date", DAY],
        env={**os.environ, **posfeed.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs(posfeed: Posfeed) -> list[dict[str, Any]]:
    base = ["--state-dir", str(posfeed.tmp / "state"), "--reports-dir", str(posfeed.tmp / "reports")]
    result = CliRunner().invoke(cli, [*base, "runs", "--json"], env=posfeed.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    listing: list[dict[str, Any]] = json.loads(result.stdout)
    return listing


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
@pytest.mark.parametrize("killed", ["requeued", "in_flight"])
def test_a_run_killed_after_it_queued_a_return_in_doubt_again_leaves_it_for_the_next_run_once(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str, killed: str
) -> None:
    """The run that reads the sale is SIGKILLed once it has queued the return again, before any
    request of its files (``requeued``), or with the return's request in flight after its sale
    was accepted (``in_flight``: held by the platform, which processes it after the kill). The
    next run sends the sale (when the killed one had not), reads the return back when it may have
    landed, and sends it after its sale: the platform holds each once, and the return's
    ``attempts`` count the requests that carried it or may have (a killed run cannot tell)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    left_in_doubt(posfeed)
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    if killed == "requeued":
        victim = _posfeed_process(posfeed, "-c", _KILLED_AFTER_REQUEUE)
        _, err = victim.communicate(timeout=120)
        assert victim.returncode == -signal.SIGKILL, err[-3000:]
        rows = posfeed.rows()
        assert (rows["R-1"].state, rows["R-1"].attempts) == (TxnState.QUEUED, 1)
        assert (rows["S-1"].state, rows["S-1"].attempts) == (TxnState.QUEUED, 0)
        assert delivered_ids(sandbox) == []
    else:
        # from the sale's acceptance on, the platform holds every request: the return's (its
        # read-back first: it may have landed before)
        sandbox.config.hold_after = ("events_accepted", stats(sandbox).get("events_accepted", 0) + 1)
        sandbox.config.hold_ms = 120_000
        victim = _posfeed_process(posfeed)
        deadline = time.monotonic() + 120
        while not ((rows := posfeed.rows()).get("S-1") is not None
                   and rows["S-1"].state is TxnState.ACCEPTED and rows["R-1"].state is TxnState.SENDING):
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the return never went out"
            time.sleep(0.02)
        time.sleep(0.3)  # its request reaches the platform
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=60)
        sandbox.config.hold_after = None  # the held request is processed, its sender dead
        assert posfeed.rows()["R-1"].attempts == 2

    done = posfeed.run()
    sent_once_after_its_sale(posfeed)
    rows = posfeed.rows()
    # the killed look and the send; in flight, the killed run's request too (it may have carried
    # it), and the send only when its read-back came before the held request landed
    assert rows["R-1"].attempts in ({2} if killed == "requeued" else {2, 3}), rows["R-1"]
    assert done["carried_over"] == 2 if killed == "requeued" else 1, done
    assert done["exit_code"] == 0 and done["in_doubt"] == 0 and done["backlog"]["waiting"] == 0, done
    assert [r["transaction_id"] for r in detail_rows(done)].count("R-1") == 1
    posfeed.run()  # and never again
    sent_once_after_its_sale(posfeed)
    statuses = [r["status"] for r in _runs(posfeed)]
    assert sorted(statuses) == ["crashed", "finished", "finished", "finished"], statuses


@pytest.mark.parametrize(("kind", "ending"), [("antavo", "stopped"), ("crmcom", "stopped"),
                                              ("antavo", "refused")])
@pytest.mark.parametrize("when", ["read", "requeued"])
def test_a_run_stopped_or_refused_around_the_requeue_leaves_the_return_for_the_next_run(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    kind: str, ending: str, when: str
) -> None:
    """SIGTERM (``stopped``) or credentials rotated on the platform (``refused``) once the run's
    files are read (``read``) or once the return is queued again (``requeued``): nothing of the
    return goes out, it is left waiting or queued, and the next run sends the sale, then the
    return, once; no request that did not carry it counts in its ``attempts``."""
    import pipeline.runner as runner

    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    left_in_doubt(posfeed)
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    secret = sandbox.config.api_secret

    def end() -> None:
        if ending == "stopped":
            os.kill(os.getpid(), signal.SIGTERM)  # the run's own handler: it stops between batches
        else:
            sandbox.config.api_secret = "rotated-on-the-platform"

    def after(name: str) -> Any:
        original = getattr(runner, name)

        def call(*args: Any) -> Any:
            result = original(*args)
            end()
            return result
        return call

    monkeypatch.setattr(runner, "_read_files" if when == "read" else "_queued_again",
                        after("_read_files" if when == "read" else "_queued_again"))
    base = ["--state-dir", str(tmp_path / "state"), "--reports-dir", str(tmp_path / "reports")]
    result = CliRunner().invoke(cli, [*base, "run", "--feed", str(posfeed.feed), "--business-date", DAY,
                                      "--json"], env=posfeed.env, catch_exceptions=False)
    monkeypatch.undo()
    sandbox.config.api_secret = secret
    ended = json.loads(result.stdout)
    assert result.exit_code == (78 if ending == "refused" else 75), result.output
    assert delivered_ids(sandbox) == []
    rows = posfeed.rows()
    if when == "read" and ending == "stopped":  # never queued again: still waiting for its sale
        assert state(rows, "R-1") == ("failed_retryable", "original_not_found")
    else:
        assert rows["R-1"].state is TxnState.QUEUED, rows["R-1"]
    # nothing of the return went out; the sale's request that the platform refused did
    assert rows["R-1"].attempts == 1 and rows["S-1"].attempts == (1 if ending == "refused" else 0)
    assert [r["transaction_id"] for r in detail_rows(ended)].count("R-1") == 1

    done = posfeed.run()
    sent_once_after_its_sale(posfeed)
    assert posfeed.rows()["R-1"].attempts == 2  # the killed look, the send
    assert done["exit_code"] == 0 and done["carried_over"] == 2, done
    assert done["backlog"]["waiting"] == 0 and done["waiting_for_sale"] == 0, done


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
@pytest.mark.parametrize("fate", ["refused", "voided"])
@pytest.mark.parametrize("doubt", [True, False])
def test_a_return_queued_again_whose_sale_the_files_bring_refused_or_voided_ends_as_such_a_return_does(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str, fate: str, doubt: bool
) -> None:
    """The run's files bring the sale, but the platform refuses it for good (its customer is
    unknown: ``refused``) or a void in the same files keeps it off the platform (``voided``). The
    return queued again after its read-back (``doubt``; without it: a return that simply waited)
    is not sent as if its sale had landed: ``original_refused`` (failed for good) or
    ``original_not_sent`` (never sent), nothing of it on the platform, and the run balances."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    customer = "unknown-7" if fate == "refused" else "M1"
    sandbox.config.unknown_customer_prefix = None  # every customer known while the return waits
    returned = ([ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1", customer=customer)] if kind == "antavo"
                else [ret("R-1", 1, "MILK", "2", "1.20", "5.40", "S-1", customer=customer),
                      ret("R-1", 2, "BREAD", "1", "3.00", "5.40", "S-1", customer=customer)])
    if doubt:
        left_in_doubt(posfeed, returned)
    else:
        write(posfeed.drop, "pos_LON01_20261120_10.csv", returned)
        posfeed.run()
        assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    sandbox.config.unknown_customer_prefix = "unknown-"
    sale = [line("S-1", 1, "MILK", "2", "1.20", "5.40", customer=customer),
            line("S-1", 2, "BREAD", "1", "3.00", "5.40", customer=customer)]
    void = [line("V-1", 1, "MILK", "2", "1.20", "5.40", kind="void", original="S-1", at="10:05:00"),
            line("V-1", 2, "BREAD", "1", "3.00", "5.40", kind="void", original="S-1", at="10:05:00")]
    write(posfeed.drop, "pos_LON01_20261120_12.csv", sale if fate == "refused" else [*sale, *void])
    done = posfeed.run()
    rows = posfeed.rows()
    if fate == "refused":
        assert rows["S-1"].state is TxnState.FAILED_PERMANENT, rows["S-1"]
        assert state(rows, "R-1") == ("failed_permanent", "original_refused"), rows["R-1"]
        assert done["exit_code"] == 65, done
    else:
        assert state(rows, "S-1") == ("void", "post_voided")
        assert state(rows, "R-1") == ("not_sent", "original_not_sent"), rows["R-1"]
        assert done["exit_code"] == 0, done
    assert rows["R-1"].attempts == (1 if doubt else 0)  # the killed look only: nothing sent since
    assert delivered_ids(sandbox) == [] and posfeed.held() == {}
    if kind == "antavo":
        assert stats(sandbox)["events_rejected"] == (1 if fate == "refused" else 0)  # the sale only
    assert done["backlog"]["waiting"] == 0 and done["waiting_for_sale"] == 0, done
    assert [r["transaction_id"] for r in detail_rows(done)].count("R-1") == 1
    assert detail(done)["R-1"]["state"] == rows["R-1"].state.value


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_the_reports_of_the_run_that_sends_a_return_queued_again_count_it_once_and_balance(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """The run that reads the sale and sends the return queued again after its read-back:
    ``detail.csv`` lists the return once (``settle``, accepted, its attempts), ``summary.csv`` has
    it in the row of its earlier file (``ledger``) and the sale in its file's, each balanced, and
    per currency they add up to ``summary.json``'s; `posfeed runs` shows it carried over, nothing
    waiting, where the run before it showed it waiting."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    left_in_doubt(posfeed)
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    done = posfeed.run()
    sent_once_after_its_sale(posfeed)
    back = Decimal("-1.20") if kind == "antavo" else Decimal("-5.40")

    (returned,) = [r for r in detail_rows(done) if r["transaction_id"] == "R-1"]
    assert (returned["state"], returned["origin"], returned["attempts"]) == ("accepted", "settle", "2")
    assert Decimal(returned["amount"]) == back and returned["source_file"] == "pos_LON01_20261120_10.csv"

    with (Path(done["reports_path"]) / "summary.csv").open(encoding="utf-8", newline="") as handle:
        counted = [r for r in csv.DictReader(handle) if int(r["transactions_in"])]
    by_origin = {(r["source_file"], r["origin"]): r for r in counted}
    assert set(by_origin) == {("pos_LON01_20261120_10.csv", "ledger"), ("pos_LON01_20261120_12.csv", "file")}
    assert Decimal(by_origin["pos_LON01_20261120_10.csv", "ledger"]["accepted_amount"]) == back
    assert Decimal(by_origin["pos_LON01_20261120_12.csv", "file"]["accepted_amount"]) == Decimal("5.40")
    assert all(r["balanced"] == "true" and r["currency"] == "GBP" for r in counted)
    summary = json.loads((Path(done["reports_path"]) / "summary.json").read_text(encoding="utf-8"))
    gbp = summary["currencies"]["GBP"]
    assert Decimal(gbp["amount_in"]) == Decimal(gbp["amount_accepted"]) == Decimal("5.40") + back
    assert sum(Decimal(r["accepted_amount"]) for r in counted) == Decimal(gbp["amount_accepted"])
    assert (summary["accepted"], summary["carried_over"], summary["waiting"]) == (2, 1, 0), summary
    assert summary["balanced"] is True

    last, first = _runs(posfeed)  # newest first
    assert last["run_id"] == done["run_id"]
    assert (last["carried_over"], last["waiting"], last["accepted"]) == (1, 0, 2), last
    assert (first["carried_over"], first["waiting"], first["failed_retryable"]) == (0, 1, 1), first
