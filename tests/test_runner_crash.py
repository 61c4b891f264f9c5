"""Crash safety with a real process: `python -m pipeline run` is SIGKILLed during submission, then
run again; the platform ends up with every valid transaction exactly once and the reports balance.

Against both ledger backends (``ledger_location``): with PostgreSQL the other worker is another
host's (a state folder of its own on the same ledger): refused the scope while the first runs,
it settles what the killed one left, and `posfeed runs` shows the same history from either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from pipeline.stages.report import day_report
from tests.ledger_backends import ledger_env
from tests.runner_helpers import REPO, copy_samples, delivered_ids, feed_toml, sample_feed, stats
from tests.sandbox_fixtures import TARGET_KITS

# 08 holds the sale of a return in 12 (without it, the return waits for it: original_not_found)
FILES = tuple(f"pos_LON01_20261120_{hour}.csv" for hour in ("08", "10", "11", "12"))


def _posfeed(args: list[str], tmp: Path, env: dict[str, str], state: str = "state") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / state), "--reports-dir",
         str(tmp / "reports"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 30, 70])
def test_sigkill_during_submission_then_run_again(
    target_kind: str, kill_after: int, tmp_path: Path, ledger_location: Path | str
) -> None:
    drop = tmp_path / "drop"
    copy_samples(drop, FILES)
    with SandboxServer(latency_ms=25) as sandbox:
        feed = sample_feed("acme_hourly", sandbox, folder=drop, target_kind=target_kind, max_concurrency=2)
        # small requests, so the later kill points still find work left (with 50-event bulks and
        # ~115-170 sendable transactions, a late kill point would find the last request in flight)
        feed = feed.model_copy(update={"target": feed.target.model_copy(
            update={"max_concurrency": 2, "bulk_size": 10})})
        feed_file = tmp_path / "crashfeed.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **TARGET_KITS[target_kind].env(sandbox), **ledger_env(ledger_location)}
        args = ["run", "--feed", str(feed_file), "--business-date", "2026-11-20", "--json"]

        # from the kill_after-th accepted event on, the sandbox holds every request that arrives,
        # so the kill lands mid-submission whatever the machine's speed; held requests are still
        # processed after the kill (they land while their sender is dead: the next run must find
        # out through "already used")
        # (held until the kill, however long the contender below takes to start on a loaded machine)
        sandbox.config.hold_after, sandbox.config.hold_ms = ("events_accepted", kill_after), 120_000
        victim = _posfeed(args, tmp_path, env)
        deadline = time.monotonic() + 120
        while stats(sandbox)["events_accepted"] < kill_after:
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.005)
        # meanwhile another worker (with PostgreSQL: another host's state folder) is refused the scope
        other = "state" if isinstance(ledger_location, Path) else "host2"
        contender = _posfeed(args, tmp_path, env, other)
        _, contender_err = contender.communicate(timeout=120)
        assert contender.returncode == 75, contender_err[-3000:]
        assert f"is being run by pid {victim.pid} on" in contender_err
        assert victim.poll() is None
        time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.communicate(timeout=60)
        assert victim.returncode == -signal.SIGKILL
        sandbox.config.hold_after = None

        with Ledger(ledger_location) as ledger:
            left = ledger.state_counts("acme")
            in_doubt_ids = {
                t.transaction_id for t in ledger.transactions_by_row_id(list(range(1, 5000)))
                if t.state is TxnState.SENDING
            }
        assert left.get("queued", 0) + left.get("sending", 0) > 0, f"killed too late: {left}"

        survivor = _posfeed(args, tmp_path, env, other)
        out, err = survivor.communicate(timeout=300)
        assert survivor.returncode in (0, 65), err[-3000:]
        final = json.loads(out)
        assert final["balanced"] is True and final["in_doubt"] == 0 and final["failed_retryable"] == 0

        time.sleep(max(0.0, killed_at + 2.5 - time.monotonic()))  # held requests have landed
        after = stats(sandbox)
        ids = delivered_ids(sandbox)
        with Ledger(ledger_location) as ledger:
            counts = ledger.state_counts("acme")
            runs = ledger.runs()
            rows = ledger.transactions_by_row_id(list(range(1, 5000)))
            day = day_report(ledger, "crashfeed", "2026-11-20")
        assert counts.get("queued", 0) == counts.get("sending", 0) == counts.get("failed_retryable", 0) == 0
        assert {r.status for r in runs} == {"crashed", "finished"}
        accepted = {t.transaction_id for t in rows if t.state is TxnState.ACCEPTED}
        # each accepted sale exactly once (Antavo nests refunds in it; CRM.COM cancels its purchase)
        accepted_sales = {t.transaction_id for t in rows
                          if t.state is TxnState.ACCEPTED and t.transaction_type != "return"}
        assert sorted(ids) == sorted(accepted_sales)
        assert len(ids) == len(set(ids))
        # the platform was only asked again for what was in doubt when the process died
        assert after["duplicate_transaction_attempts"] <= len(in_doubt_ids)
        assert day.summary["balanced"] is True
        assert day.summary["rows_in"] == sum(
            len((drop / f).read_text(encoding="utf-8").splitlines()) - 1 for f in FILES
        )
        for amounts in day.summary["currencies"].values():  # GBP, and the rejected row's "GPB"
            assert Decimal(amounts["amount_in"]) == Decimal(amounts["amount_valid"]) + Decimal(
                amounts["amount_rejected"])
        occurrences = (TxnState.REJECTED, TxnState.DUPLICATE, TxnState.CONFLICT)
        primaries = [t for t in rows if t.state not in occurrences]
        final_states = {TxnState.ACCEPTED, TxnState.NOT_SENT, TxnState.VOID, TxnState.FAILED_PERMANENT}
        assert {t.state for t in primaries} <= final_states
        # only returns of sales outside these files are refused (the platform never saw the sale)
        refused = [t for t in primaries if t.state is TxnState.FAILED_PERMANENT]
        assert all(t.transaction_type == "return" and t.last_error_code == "112201" for t in refused)
        assert len(accepted) >= final["accepted"]
        crashed = next(r for r in runs if r.status == "crashed")
        assert crashed.counts is not None and crashed.counts["balanced"] is False  # left work in doubt
        assert crashed.counts["unaccounted"] == {}  # all counted all the same: in doubt or queued
        assert sorted(crashed.counts["files_new"]) == sorted(FILES)  # what it fetched, from the ledger
        assert (tmp_path / "reports" / "crashfeed" / crashed.id / "summary.csv").exists()
        # the same history from either worker's state folder
        listings = [_posfeed(["runs", "--json"], tmp_path, env, state) for state in ("state", other)]
        histories = [json.loads(listing.communicate(timeout=120)[0]) for listing in listings]
        assert histories[0] == histories[1] and {r["run_id"] for r in histories[0]} == {r.id for r in runs}
        settled = [r for r in ledger_rows(ledger_location, final["run_id"]) if r.origin == "settle"]
        assert settled, "the second run settled nothing"
        # what is never sent again keeps only masked customer ids, whichever run settled it
        assert feed.logging.hash_customer_ids
        with Ledger(ledger_location) as ledger:
            stored = ledger.transactions_by_row_id([t.id for t in rows], with_checkout=True)
        customers = [json.loads(t.checkout).get("customer_id") for t in stored if t.checkout
                     and t.state in (TxnState.ACCEPTED, TxnState.NOT_SENT, TxnState.CONFLICT)]
        assert any(customers) and all(c is None or c.startswith("cust:") for c in customers)


def ledger_rows(location: Path | str, run_id: str) -> list[Any]:
    with Ledger(location) as ledger:
        return list(ledger.run_transactions(run_id))


def test_feed_toml_round_trips(tmp_path: Path) -> None:
    from pipeline.config import load_feed

    with SandboxServer() as sandbox:
        feed = sample_feed("acme_hourly", sandbox, folder=tmp_path)
    path = tmp_path / "x.toml"
    path.write_text(feed_toml(feed), encoding="utf-8")
    loaded = load_feed(path)
    assert loaded.model_dump(exclude={"name"}) == feed.model_dump(exclude={"name"})
    assert REPO.exists()
