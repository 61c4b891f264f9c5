"""A PostgreSQL ledger end to end, with real processes: `python -m pipeline run` of a sample feed
against the sandbox with ``POSFEED_LEDGER_URL`` (or ``--ledger-url``) on the throwaway cluster.

Shown to fail: with the runner opening ``settings.ledger_path`` instead of the URL, the run leaves
a ledger.sqlite and the database stays empty; with ``masked_url`` returning the URL as it is, the
password shows in the error of an unreachable ledger; with the runner taking file locks in each
state folder instead of ``lock_kind(url)``, the two workers (and the two `run --all` hosts) both
process the files and fail or the platform sees repeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import copy_samples, delivered_ids, feed_toml, sample_feed, stats
from tests.sandbox_fixtures import TARGET_KITS

# 08 holds the sale of a return in 12 (without it, the return waits for it: original_not_found)
FILES = tuple(f"pos_LON01_20261120_{hour}.csv" for hour in ("08", "10", "11", "12"))
PASSWORD = "pw-Never-Shown-7f3a"  # the test cluster trusts loopback logins: libpq never sends it
RUN_ARGS = ["run", "--business-date", "2026-11-20", "--json"]


def _with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def _posfeed(tmp: Path, state: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "-v", "--state-dir", str(tmp / state), "--reports-dir",
         str(tmp / "reports"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )


def _done(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _sending(run: subprocess.Popen[str], sandbox: SandboxServer) -> subprocess.Popen[str]:
    """``run`` once the platform has accepted a few of its checkouts (it is mid-submission)."""
    deadline = time.monotonic() + 120
    while stats(sandbox)["events_accepted"] < 3:
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before submitting"
        time.sleep(0.05)
    return run

def _feed_file(tmp: Path, sandbox: SandboxServer, **target: Any) -> Path:
    drop = tmp / "drop"
    copy_samples(drop, FILES)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, **target)
    path = tmp / "pgfeed.toml"
    path.write_text(feed_toml(feed), encoding="utf-8")
    return path


def _env(sandbox: SandboxServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "POSFEED_LEDGER_URL"}
    return {**env, **TARGET_KITS["antavo"].env(sandbox), **extra}


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def _accepted_sales(url: str) -> list[str]:
    with Ledger(url) as ledger:
        rows = ledger.transactions_by_row_id(list(range(1, 5000)))
    return sorted(str(t.transaction_id) for t in rows
                  if t.state is TxnState.ACCEPTED and t.transaction_type != "return")


def test_a_run_records_everything_in_postgresql_and_runs_shows_it(postgres_db: str, tmp_path: Path) -> None:
    url = _with_password(postgres_db)
    with SandboxServer() as sandbox:
        feed_file = _feed_file(tmp_path, sandbox)
        env = _env(sandbox, POSFEED_LEDGER_URL=url)
        code, out, err = _done(_posfeed(tmp_path, "state", env, *RUN_ARGS, "--feed", str(feed_file)))
        assert code in (0, 65), err[-3000:]  # 65: the sample files hold rejected lines
        summary = json.loads(out)
        assert summary["balanced"] is True and summary["accepted"] > 0
        assert "ledger: postgresql://postgres:***@127.0.0.1:" in err  # where the run went, masked
        ids = delivered_ids(sandbox)

        # the ledger is the database: nothing in the state folder, everything in PostgreSQL
        assert not (tmp_path / "state" / "ledger.sqlite").exists()
        assert ids and len(ids) == len(set(ids)) and sorted(ids) == _accepted_sales(postgres_db)
        with psycopg.connect(postgres_db) as conn:
            row = conn.execute("SELECT status, counts FROM runs WHERE id = %s",
                               (summary["run_id"],)).fetchone()
        assert row is not None and row[0] == "finished" and json.loads(row[1])["balanced"] is True

        # the history from another host's state folder, the URL given as the option this time
        listing = _posfeed(tmp_path, "other-host", _env(sandbox), "--ledger-url", url, "runs", "--json")
        code, runs_out, runs_err = _done(listing)
        assert code == 0, runs_err
        (run,) = json.loads(runs_out)
        assert (run["run_id"], run["status"], run["balanced"]) == (summary["run_id"], "finished", True)

        # and the run's report, rebuilt there from the shared ledger
        report = _posfeed(tmp_path, "other-host", _env(sandbox), "--ledger-url", url, "report",
                          summary["run_id"], "--json", "--out", str(tmp_path / "rebuilt"))
        code, report_out, report_err = _done(report)
        assert code == 0, report_err
        rebuilt = json.loads(report_out)
        assert rebuilt["balanced"] is True and rebuilt["accepted"] == summary["accepted"]

        # a second run finds the files in the ledger (sha256) and sends nothing again
        before = stats(sandbox)
        code, again_out, err = _done(_posfeed(tmp_path, "state", env, *RUN_ARGS, "--feed", str(feed_file)))
        assert code in (0, 65), err[-3000:]
        after = stats(sandbox)
        assert json.loads(again_out)["accepted"] == 0 and json.loads(again_out)["files_new"] == []
        # one request at most: the credential check every run makes before any file
        assert after["requests"] - before["requests"] <= 1
        assert after["events_accepted"] == before["events_accepted"]

    everything = out + err + runs_out + runs_err + report_out + report_err + _files_text(
        tmp_path / "reports") + _files_text(tmp_path / "rebuilt") + _files_text(tmp_path / "state")
    assert PASSWORD not in everything


def test_an_unreachable_ledger_is_named_without_its_password(postgres_cluster: Any, tmp_path: Path) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{postgres_cluster.port}/no_such_db"
    env = {**os.environ, "POSFEED_LEDGER_URL": url}
    code, out, err = _done(_posfeed(tmp_path, "state", env, "runs"))
    assert code == 75  # the server's answer is in the message; a later try may find the database
    assert "no_such_db" in err and "postgres:***@127.0.0.1" in err
    assert PASSWORD not in out + err


def test_two_workers_on_one_ledger_send_each_checkout_once(postgres_db: str, tmp_path: Path) -> None:
    """Two hosts (separate state folders) run the same feed at once on one PostgreSQL ledger: one
    holds the scope's lock (the other is told so, exit 75) or the files are already recorded; after
    both run again, every checkout reached the platform exactly once."""
    with SandboxServer(latency_ms=5) as sandbox:
        feed_file = _feed_file(tmp_path, sandbox)
        env = _env(sandbox, POSFEED_LEDGER_URL=postgres_db)
        args = (*RUN_ARGS, "--feed", str(feed_file))
        first = [_posfeed(tmp_path, f"host{i}", env, *args) for i in (1, 2)]
        results = [_done(p) for p in first]
        assert all(code in (0, 65, 75) for code, _, _ in results), [r[2][-2000:] for r in results]
        assert any(code in (0, 65) for code, _, _ in results)
        held = [err for code, _, err in results if code == 75]
        assert all("is being run by" in err for err in held)  # the holder, by pid or by session
        for host in ("host1", "host2"):  # whatever the first round left is settled, nothing is repeated
            code, _, err = _done(_posfeed(tmp_path, host, env, *args))
            assert code in (0, 65), err[-3000:]
        ids = delivered_ids(sandbox)
        after: dict[str, Any] = stats(sandbox)
    assert ids and len(ids) == len(set(ids))
    assert sorted(ids) == _accepted_sales(postgres_db)
    assert after["duplicate_transaction_attempts"] == 0
    with Ledger(postgres_db) as ledger:
        counts = ledger.state_counts("acme")
        assert counts.get("queued", 0) == counts.get("sending", 0) == counts.get("failed_retryable", 0) == 0
        assert {r.status for r in ledger.runs()} == {"finished"}


def test_a_dry_run_leaves_the_postgresql_ledger_untouched(postgres_db: str, tmp_path: Path) -> None:
    with SandboxServer() as sandbox:
        feed_file = _feed_file(tmp_path, sandbox)
        env = _env(sandbox, POSFEED_LEDGER_URL=postgres_db)
        args = (*RUN_ARGS, "--feed", str(feed_file))
        code, out, err = _done(_posfeed(tmp_path, "state", env, *args, "--dry-run"))
        assert code in (0, 65), err[-3000:]
        dry = json.loads(out)
        assert dry["dry_run"] is True and dry["balanced"] is True and dry["transactions_in"] > 0
        assert stats(sandbox)["requests"] == 0
        with psycopg.connect(postgres_db) as conn:
            counts = [conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                      for table in ("runs", "files", "transactions", "rejects")]
        assert counts == [(0,), (0,), (0,), (0,)]
        code, out, err = _done(_posfeed(tmp_path, "state", env, *args))  # the real run finds it all new
        assert code in (0, 65), err[-3000:]
        real = json.loads(out)
        assert real["transactions_in"] == dry["transactions_in"] and real["accepted"] > 0


def test_a_ledger_url_of_another_kind_is_a_configuration_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "POSFEED_LEDGER_URL"}
    url = f"mysql://posfeed:{PASSWORD}@db.internal/posfeed"
    code, out, err = _done(_posfeed(tmp_path, "state", env, "--ledger-url", url, "runs"))
    assert code == 78 and "scheme 'mysql' is not supported" in err
    assert PASSWORD not in out + err and not (tmp_path / "state" / "ledger.sqlite").exists()


def test_two_hosts_run_all_at_once_and_each_scope_runs_on_one(postgres_db: str, tmp_path: Path) -> None:
    """`posfeed run --all` on two hosts at once, two feeds of two scopes on one PostgreSQL ledger:
    a scope held by the other host is listed with exit 75 and the host carries on with the other
    feed; after both run again, every checkout reached the platform exactly once."""
    drop = tmp_path / "drop"
    copy_samples(drop, [f"pos_{store}_20261120_{hour}.csv" for store in ("LON01", "BER01")
                        for hour in ("08", "10", "11", "12")])  # 08: the sale of a return in LON01 12
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir()
    with SandboxServer(latency_ms=5) as sandbox:
        for name, store in (("london", "LON01"), ("berlin", "BER01")):
            feed = sample_feed("acme_hourly", sandbox, folder=drop, pattern=f"pos_{store}_*.csv")
            feed = feed.model_copy(update={"dedup_scope": name})
            (feeds_dir / f"{name}.toml").write_text(feed_toml(feed), encoding="utf-8")
        env = _env(sandbox, POSFEED_LEDGER_URL=postgres_db)
        args = ("--feeds-dir", str(feeds_dir), "run", "--all", "--business-date", "2026-11-20", "--json")
        hosts = [_posfeed(tmp_path, host, env, *args) for host in ("host1", "host2")]
        for code, out, err in (_done(p) for p in hosts):
            assert code in (0, 65, 75), err[-3000:]
            document = json.loads(out)
            assert {r["feed"] for r in document["runs"]} | {e["feed"] for e in document["errors"]} == {
                "london", "berlin"}
            assert all(e["exit_code"] == 75 and "is being run by" in e["error"] for e in document["errors"])
        for host in ("host1", "host2"):
            code, _, err = _done(_posfeed(tmp_path, host, env, *args))
            assert code in (0, 65), err[-3000:]
        ids = delivered_ids(sandbox)
        after: dict[str, Any] = stats(sandbox)
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] == 0
    with Ledger(postgres_db) as ledger:
        rows = ledger.transactions_by_row_id(list(range(1, 5000)))
        assert {ledger.state_counts(s).get("queued", 0) for s in ("london", "berlin")} == {0}
    accepted = sorted(str(t.transaction_id) for t in rows
                      if t.state is TxnState.ACCEPTED and t.transaction_type != "return")
    assert sorted(ids) == accepted and {t.scope for t in rows} == {"london", "berlin"}


def test_a_run_that_loses_its_lock_stops_sending_and_the_next_run_sends_the_rest_once(
        postgres_db: str, tmp_path: Path) -> None:
    """The scope lock's PostgreSQL session is ended mid-submission (as a restarted server or a cut
    connection would end it; another host could take the scope then): the run notices within
    seconds, sends nothing more and exits 75 naming the lost lock; the next run sends the rest,
    each checkout once."""
    with SandboxServer(latency_ms=100) as sandbox:  # one checkout per request, one at a time
        feed_file = _feed_file(tmp_path, sandbox, max_concurrency=1, bulk_size=1)
        env = _env(sandbox, POSFEED_LEDGER_URL=postgres_db)
        args = (*RUN_ARGS, "--feed", str(feed_file))
        run = _sending(_posfeed(tmp_path, "host1", env, *args), sandbox)
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            (ended,) = conn.execute("SELECT count(pg_terminate_backend(backend_pid)) FROM scope_lock_holders "
                                    "WHERE scope = 'acme'").fetchone() or (0,)
        assert ended == 1
        code, _, err = _done(run)
        assert code == 75, err[-3000:]
        assert "the run lock of scope 'acme' was lost" in err
        with Ledger(postgres_db) as ledger:
            left = ledger.state_counts("acme")
            assert left.get("queued", 0) + left.get("failed_retryable", 0) > 0  # it stopped early
            assert [r.status for r in ledger.runs()] == ["lock_lost"]  # no other run had closed it

        sandbox.config.latency_ms = 0
        code, _, err = _done(_posfeed(tmp_path, "host2", env, *args))  # another host carries on
        assert code in (0, 65), err[-3000:]
        ids = delivered_ids(sandbox)
        after: dict[str, Any] = stats(sandbox)
    # the one request in flight at the loss: its answer is the next holder's to learn, so it asks
    # the platform again ("already used", settled accepted), never a second delivery
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] <= 1
    assert sorted(ids) == _accepted_sales(postgres_db)
    with Ledger(postgres_db) as ledger:
        counts = ledger.state_counts("acme")
        assert counts.get("queued", 0) == counts.get("sending", 0) == counts.get("failed_retryable", 0) == 0



def test_a_run_whose_server_ends_every_session_mid_submission_exits_75_and_nothing_is_sent_twice(
        postgres_db: str, tmp_path: Path) -> None:
    """As a server restart would: every session of the run (its ledger connection, whose
    transactions are pipelined, and its lock) is ended while checkouts are being sent. The run
    exits 75 naming the ledger's server, its committed work stays; the next run settles what was
    in doubt and sends the rest, each checkout once."""
    with SandboxServer(latency_ms=100) as sandbox:
        feed_file = _feed_file(tmp_path, sandbox, max_concurrency=2, bulk_size=1)
        env = _env(sandbox, POSFEED_LEDGER_URL=postgres_db)
        args = (*RUN_ARGS, "--feed", str(feed_file))
        run = _sending(_posfeed(tmp_path, "host1", env, *args), sandbox)
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            (ended,) = conn.execute(
                "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone() or (0,)
        assert ended >= 1
        code, _, err = _done(run)
        assert code == 75, err[-3000:]
        assert "PostgreSQL" in err and PASSWORD not in err
        with Ledger(postgres_db) as ledger:  # what was in flight when the sessions ended
            in_doubt = ledger.state_counts("acme").get("sending", 0)
        assert in_doubt <= 2  # two requests in flight at most, one checkout each

        sandbox.config.latency_ms = 0
        code, _, err = _done(_posfeed(tmp_path, "host2", env, *args))
        assert code in (0, 65), err[-3000:]
        ids = delivered_ids(sandbox)
        after: dict[str, Any] = stats(sandbox)
    # each checkout reached the platform once; only what was in doubt was asked again
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] <= in_doubt
    assert sorted(ids) == _accepted_sales(postgres_db)
    with Ledger(postgres_db) as ledger:
        counts = ledger.state_counts("acme")
        assert counts.get("queued", 0) == counts.get("sending", 0) == counts.get("failed_retryable", 0) == 0

def test_two_schedulers_on_one_ledger_run_a_missed_feed_once(postgres_db: str, tmp_path: Path) -> None:
    """`posfeed schedule --once-catchup` on two hosts (state folders, job stores of their own), both
    down when the feed was due: the first runs it; the second, started while the first sends,
    logs the scope as held by the other host (`skipped_locked`) and runs nothing. Then a run from
    the second host finds the files recorded: every checkout reached the platform once."""
    from datetime import UTC, datetime, timedelta

    from pipeline.config import Settings, load_feed
    from tests.test_scheduling import simulate_downtime, slow_feed_dir

    with SandboxServer(latency_ms=50) as sandbox:
        feeds = slow_feed_dir(tmp_path, sandbox)
        for host in ("host1", "host2"):
            settings = Settings(state_dir=tmp_path / host, feeds_dir=feeds, reports_dir=tmp_path / "reports")
            simulate_downtime(settings, load_feed(feeds / "trickle.toml"),
                              datetime.now(UTC) - timedelta(minutes=1))
        env = _env(sandbox, POSFEED_LEDGER_URL=postgres_db)
        schedule = ("--log-format", "json", "--feeds-dir", str(feeds), "schedule", "--once-catchup")
        first = _posfeed(tmp_path, "host1", env, *schedule)
        deadline = time.monotonic() + 120
        while stats(sandbox)["events_accepted"] < 2:
            assert first.poll() is None and time.monotonic() < deadline, "host1 ended before sending"
            time.sleep(0.02)
        code2, _, err2 = _done(_posfeed(tmp_path, "host2", env, *schedule))
        code1, _, err1 = _done(first)

        def run_lines(err: str) -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
            return [line for line in lines if line.get("event") == "run"]

        (ran,) = run_lines(err1)
        # 65: two refunds of these files name sales the platform never accepted
        assert code1 in (0, 65) and ran["status"] == "finished" and ran["accepted"] > 0, err1[-3000:]
        (skipped,) = run_lines(err2)
        assert code2 == 75 and skipped["status"] == "skipped_locked", err2[-3000:]
        assert "is being run by" in skipped["msg"] and "(feed trickle)" in skipped["msg"]

        code, out, err = _done(_posfeed(tmp_path, "host2", env, "--feeds-dir", str(feeds), "run", "--feed",
                                        "trickle", "--json"))
        assert code in (0, 65) and json.loads(out)["files_new"] == [], err[-3000:]
        ids = delivered_ids(sandbox)
        after: dict[str, Any] = stats(sandbox)
    assert ids and len(ids) == len(set(ids)) and after["duplicate_transaction_attempts"] == 0
    assert sorted(ids) == _accepted_sales(postgres_db)
    with Ledger(postgres_db) as ledger:
        assert [r.status for r in ledger.runs()] == ["finished", "finished"]
