"""Problems with a life cycle, quarantine and backlog health: real `posfeed` processes, a real
sandbox, a real webhook receiver on loopback, real SQLite ledgers."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.problems import Observation, Problem, reconcile
from tests.test_alerts import Receiver

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "acme"
DAY = "2026-11-20"
GARBAGE = "pos_ZZZ01_20261120_daily.csv"


# ---- the life cycle, pure -------------------------------------------------------------------------


def _obs(key: str, stage: int = 0, **counts: Any) -> Observation:
    return Observation(kind="missing_file", key=key, feed="f", scope="s", summary="s", action="a",
                       stage=stage, counts=counts)


def _problem(key: str, stage: int = 0, pid: int = 1, **counts: Any) -> Problem:
    return Problem(id=pid, kind="missing_file", key=key, feed="f", scope="s", status="open", stage=stage,
                   summary="s", action="a", store_id=None, business_date=None, subject=None,
                   counts=counts, opened_at="t", escalated_at=None, resolved_at=None,
                   opened_run_id=None, last_run_id=None)


def test_reconcile_opens_escalates_refreshes_and_resolves_only_what_was_checked() -> None:
    open_now = [_problem("a"), _problem("b", pid=2), _problem("c", pid=3), _problem("d", pid=4, n=1)]
    plan = reconcile(open_now, [_obs("a"), _obs("b", stage=1), _obs("new"), _obs("d", n=2)],
                     covers=lambda p: p.key != "unchecked")
    events = {(c.event, (c.problem.key if c.problem else c.observation.key if c.observation else ""))
              for c in plan.changes}
    assert events == {("escalated", "b"), ("opened", "new"), ("refreshed", "d"), ("resolved", "c")}
    assert [c.event for c in plan.events()] == ["escalated", "opened", "resolved"]
    # what the run did not check stays open
    assert reconcile([_problem("unchecked")], [], covers=lambda p: p.key != "unchecked").changes == ()
    # seen again at the same stage with the same counts: nothing at all
    assert reconcile([_problem("a")], [_obs("a")], covers=lambda p: True).changes == ()


# ---- real processes -------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused: the platform is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    """A feeds folder with one feed `watch` and its drop folder, and the posfeed command line."""

    def __init__(self, tmp: Path, sandbox: Any, hook: str, *, schedule: str | None = None,
                 after_success: str = "keep", source_extra: str = "", expected_extra: str = "") -> None:
        self.tmp, self.sandbox, self.hook = tmp, sandbox, hook
        self.folder = tmp / "in"
        self.folder.mkdir()
        self.feeds = tmp / "feeds"
        self.feeds.mkdir()
        self.schedule = schedule
        self.after_success = after_success
        self.source_extra, self.expected_extra = source_extra, expected_extra
        self.write_feed(sandbox.url)

    def write_feed(self, base_url: str, *, check_credentials: bool = True) -> None:
        """The feed file; ``check_credentials=False`` lets a run record its files and leave them
        waiting when the platform cannot be reached (else the run stops before any file)."""
        check = "" if check_credentials else "check_credentials = false\n"
        schedule = f'schedule = "{self.schedule}"\n' if self.schedule else ""
        aside = self.feeds / "watch.toml.tmp"  # replaced in one step: a daemon never reads half a file
        aside.write_text(
            f'timezone = "Europe/London"\n{schedule}'
            f'[source]\nkind = "local"\npath = "{self.folder}"\nreadiness = "none"\n'
            f'pattern = "pos_*_{{business_date:%Y%m%d}}_*.csv"\nafter_success = "{self.after_success}"\n'
            f"{self.source_extra}"
            f'[target]\nkind = "antavo"\nbase_url = "{base_url}"\nregion = "{self.sandbox.config.region}"\n'
            "requests_per_minute = 60000\nbackoff_base_seconds = 0.01\nbackoff_max_seconds = 0.05\n"
            f"timeout_seconds = 5\nmax_attempts = 2\n{check}"
            '[validation]\ncurrencies = ["GBP", "EUR", "USD"]\n'
            f'[alerts]\nwebhook_url = "{self.hook}"\nreject_share_threshold = 1.0\n'
            'delivery_budget_seconds = 5\n'
            '[expected]\nstores = ["LON01", "BER01"]\ncadence = "daily"\n'
            'pattern = "pos_{store_id}_{business_date:%Y%m%d}_daily.csv"\n'
            f"{self.expected_extra}",
            encoding="utf-8",
        )
        aside.replace(self.feeds / "watch.toml")

    def drop(self, sample: str, name: str | None = None) -> Path:
        """Deliver a sample file the way an export lands: written aside, then renamed in place."""
        target = self.folder / (name or sample)
        shutil.copy2(SAMPLE / sample, target.with_name(target.name + ".tmp"))
        return target.with_name(target.name + ".tmp").replace(target)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipeline", "--log-format", "json", "-v",
                "--state-dir", str(self.tmp / "state"), "--feeds-dir", str(self.feeds),
                "--reports-dir", str(self.tmp / "reports"), *args]

    def posfeed(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=300, check=False)

    def run(self, *extra: str) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        done = self.posfeed("run", "--feed", "watch", "--business-date", DAY, "--json", *extra)
        logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
        return done.returncode, summary, logs

    def open_problems(self) -> list[dict[str, Any]]:
        done = self.posfeed("problems", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows


def kinds(rows: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    return {(r["kind"], r.get("store_id") or r.get("subject")) for r in rows}


def alert_counts(received: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(kind, event) -> how many alerts."""
    return Counter((a["kind"], a["event"]) for a in received)


def assert_one_opened_and_one_resolved_each(received: list[dict[str, Any]]) -> None:
    by_problem: dict[int, Counter[str]] = {}
    for alert in received:
        by_problem.setdefault(alert["problem_id"], Counter())[alert["event"]] += 1
    for problem_id, events in by_problem.items():
        assert events["opened"] == 1 and events["resolved"] == 1, (problem_id, events, received)
        assert events["escalated"] <= 1


def test_a_feed_run_again_and_again_alerts_once_per_problem(tmp_path: Path, sandbox_env: Any) -> None:
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url)
        s.drop("pos_LON01_20261120_daily.csv")
        (s.folder / GARBAGE).write_bytes(b"\x00\x01binary\x00not a csv\n" * 20)
        # written an hour ago: a file modified within 2 s of its fetch is fetched once more to
        # compare (the racily-clean rule), which is not what step 2 looks at
        an_hour_ago = time.time() - 3600
        os.utime(s.folder / GARBAGE, (an_hour_ago, an_hour_ago))

        # 1: a broken file and a store that never delivers
        code, summary, logs = s.run()
        assert code == 65, logs[-5:]
        assert [u["file"] for u in summary["unreadable_files"]] == [GARBAGE]
        assert kinds(s.open_problems()) == {("unreadable_file", GARBAGE), ("missing_file", "BER01")}
        assert alert_counts(hook.received) == {("unreadable_file", "opened"): 1,
                                               ("missing_file", "opened"): 1}
        garbage_mtime = (s.folder / GARBAGE).stat().st_mtime  # a "keep" source: left where it is

        # 2: nothing new: exit 0, the quarantined file is not read again, no alert
        code, summary, logs = s.run()
        assert code == 0, logs[-5:]
        assert summary["unreadable_files"] == [] and summary["files_in_quarantine"] == [GARBAGE]
        assert not [line for line in logs if GARBAGE in line.get("msg", "") and "fetched" in line["msg"]]
        assert len(hook.received) == 2
        run_line = next(line for line in logs if line.get("event") == "run")
        assert "2 open problems" in run_line["msg"] and len(run_line["open_problems"]) == 2
        assert (s.folder / GARBAGE).stat().st_mtime == garbage_mtime
        page = (Path(summary["reports_path"]) / "report.html").read_text(encoding="utf-8")
        assert "Open problems" in page and GARBAGE in page and "2 open problems: see the table" in page

        # 3: the store delivers (a file without defects): its problem is resolved, once
        s.drop("pos_BER01_20261120_12.csv", "pos_BER01_20261120_daily.csv")
        code, summary, logs = s.run()
        assert code == 0, logs[-5:]
        assert kinds(s.open_problems()) == {("unreadable_file", GARBAGE)}
        assert alert_counts(hook.received)[("missing_file", "resolved")] == 1

        # 4: the platform is down while new work arrives
        s.write_feed(f"http://127.0.0.1:{closed_port()}")
        s.drop("pos_NYC01_20261120_10.csv")  # the sale of a return in 13 (else the return waits for it)
        s.drop("pos_NYC01_20261120_13.csv")
        code, summary, logs = s.run()
        assert code == 75, logs[-5:]
        assert ("platform_unreachable", "antavo") in kinds(s.open_problems())
        opened = [a for a in hook.received if a["kind"] == "platform_unreachable"]
        assert [a["event"] for a in opened] == ["opened"] and opened[0]["level"] == "failure"

        assert summary == {}  # stopped before any file: nothing recorded, the file waits in the folder

        # 5: still down: no new alert
        before = len(hook.received)
        code, summary, logs = s.run()
        assert code == 75 and len(hook.received) == before
        assert ("platform_unreachable", "antavo") in kinds(s.open_problems())

        # 6: the platform is back: what waited is sent, the problem resolves once
        s.write_feed(sandbox_env.url)
        s.run()
        s.posfeed("rerun", "--feed", "watch", "--failed")
        code, summary, logs = s.run()
        assert code == 0, logs[-5:]
        assert kinds(s.open_problems()) == {("unreadable_file", GARBAGE)}
        assert summary["backlog"]["waiting"] == 0

        # 7: a new file under the broken file's name brings it back: read, and resolved
        s.drop("pos_LON01_20261120_13.csv", GARBAGE)
        code, summary, logs = s.run()
        assert code == 0, logs[-5:]
        assert s.open_problems() == []
        code, summary, logs = s.run()
        assert code == 0 and summary["problems"] == []

        assert_one_opened_and_one_resolved_each(hook.received)
        assert alert_counts(hook.received) == {
            ("unreadable_file", "opened"): 1, ("unreadable_file", "resolved"): 1,
            ("missing_file", "opened"): 1, ("missing_file", "resolved"): 1,
            ("platform_unreachable", "opened"): 1, ("platform_unreachable", "resolved"): 1,
        }
        # the payload: one stable shape, with a ready-made text
        alert = hook.received[0]
        for key in ("version", "event", "problem_id", "kind", "level", "feed", "scope", "store_id",
                    "business_date", "opened_at", "escalated_at", "resolved_at", "counts", "action", "text"):
            assert key in alert
        assert alert["text"].startswith("[OPEN] ") and " problem #" in alert["text"]
        assert "hooktoken123" not in json.dumps(hook.received)
        # every run's JSON and the day report carry the problems
        day = s.posfeed("report", "--feed", "watch", "--business-date", DAY, "--json")
        assert {p["kind"] for p in json.loads(day.stdout)["problems"]} == {"missing_file"}


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


def finished_runs(tmp: Path) -> int:
    path = tmp / "state" / "ledger.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=30)
    try:
        return int(db.execute("SELECT COUNT(*) FROM runs WHERE status != 'running'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.waits_on_clock
def test_the_scheduler_daemon_alerts_once_per_problem(tmp_path: Path, sandbox_env: Any) -> None:
    from zoneinfo import ZoneInfo

    from pipeline.config import Settings, load_feed
    from tests.test_scheduling import simulate_downtime

    # the daemon runs today and yesterday (London): yesterday's files are overdue, today's not yet due
    yesterday = (datetime.now(ZoneInfo("Europe/London")) - timedelta(days=1)).strftime("%Y%m%d")

    def named(sample: str) -> str:
        return sample.replace("20261120", yesterday)

    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url, schedule="* * * * *", source_extra="lookback_days = 1\n",
                  expected_extra="closing_hour = 24\nlate_after_minutes = 0\n")
        # the platform is down from the start; runs record their files and leave them waiting
        s.write_feed(f"http://127.0.0.1:{closed_port()}", check_credentials=False)
        # (14: no return whose sale is in another file: such a return would wait for it)
        s.drop("pos_LON01_20261120_14.csv", named("pos_LON01_20261120_daily.csv"))
        garbage = named(GARBAGE)
        (s.folder / garbage).write_bytes(b"\x00\x01binary\x00not a csv\n" * 20)
        settings = Settings(state_dir=tmp_path / "state", feeds_dir=s.feeds, reports_dir=tmp_path / "reports")
        # the daemon was down when a run was due: it catches up at once
        missed = datetime.now(UTC) - timedelta(minutes=1)
        simulate_downtime(settings, load_feed(s.feeds / "watch.toml"), missed)
        daemon = subprocess.Popen(s.command("schedule", "--feed", "watch"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            # run 1 (the catch-up, at once): a broken file, a missing store, the platform down
            assert wait_for(lambda: finished_runs(tmp_path) >= 1, 60)
            assert wait_for(lambda: len(hook.received) >= 3, 15), hook.received
            assert kinds(s.open_problems()) == {("unreadable_file", garbage), ("missing_file", "BER01"),
                                                ("platform_unreachable", "antavo")}
            # before the next minute's run: the store delivers, the platform is back, the broken
            # file is replaced; the daemon reads the feed file again before each run
            s.drop("pos_BER01_20261120_12.csv", named("pos_BER01_20261120_daily.csv"))
            s.write_feed(sandbox_env.url)
            s.drop("pos_NYC01_20261120_12.csv", garbage)
            # the next minute's run sees them fixed (or, if it had started already, the one after)
            assert wait_for(lambda: s.open_problems() == [], 135), s.open_problems()
            # then a quiet run
            quiet_after = finished_runs(tmp_path)
            assert wait_for(lambda: finished_runs(tmp_path) > quiet_after, 75)
        finally:
            daemon.terminate()
            _, err = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, err[-2000:]
        run_lines = [json.loads(line) for line in err.splitlines()
                     if line.startswith("{") and json.loads(line).get("event") == "run"]
        assert run_lines[-1]["exit_code"] == 0 and "no open problems" in run_lines[-1]["msg"]  # quiet
        assert_one_opened_and_one_resolved_each(hook.received)
        assert alert_counts(hook.received) == {
            ("unreadable_file", "opened"): 1, ("unreadable_file", "resolved"): 1,
            ("missing_file", "opened"): 1, ("missing_file", "resolved"): 1,
            ("platform_unreachable", "opened"): 1, ("platform_unreachable", "resolved"): 1,
        }


# ---- quarantine: moved files, release ------------------------------------------------------------


def test_an_archiving_feed_moves_a_broken_file_into_quarantine_and_release_brings_it_back(
    tmp_path: Path, sandbox_env: Any
) -> None:
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url, after_success="archive")
        (s.folder / GARBAGE).write_bytes(b"\x00binary\x00" * 50)
        code, summary, _ = s.run()
        assert code == 65
        moved = s.folder / "quarantine" / GARBAGE
        assert moved.exists() and not (s.folder / GARBAGE).exists()
        (problem,) = [p for p in s.open_problems() if p["kind"] == "unreadable_file"]
        # the told command carries the global options the command line gave (--state-dir, ...)
        assert "quarantine" in problem["summary"]
        assert re.search(r"`posfeed (\S+ )*release ", problem["action"])
        code, summary, _ = s.run()
        assert code == 0 and summary["unreadable_files"] == []
        # release: moved back, read again by the next run (still broken: set aside again, no new alert)
        done = s.posfeed("release", GARBAGE, "--feed", "watch", "--json")
        assert done.returncode == 0, done.stderr
        assert (s.folder / GARBAGE).exists() and not moved.exists()
        code, summary, _ = s.run()
        assert code == 65 and [u["file"] for u in summary["unreadable_files"]] == [GARBAGE]
        assert moved.exists()
        assert [a["event"] for a in hook.received if a["kind"] == "unreadable_file"] == ["opened"]
        # an unknown file cannot be released
        assert s.posfeed("release", "nope.csv").returncode == 2


def test_only_a_file_the_careful_reader_gives_up_on_is_quarantined(
    sandbox: Any, tmp_path: Path
) -> None:
    """A file with a ragged row and an unbalanced quote is read record by record (its bad lines
    rejected, R019/R020): never quarantined. A binary file cannot be read: its summary.csv row says
    why, it is set aside once and the next run reads it no more."""
    import csv

    from pipeline.ledger import Ledger
    from pipeline.runner import run_feed
    from tests.runner_helpers import BUSINESS_DATE, SAMPLE_ACME, credentials, sample_feed, settings_in

    ragged, binary = "pos_LON01_20261120_10.csv", "pos_LON01_20261120_12.csv"
    drop = tmp_path / "drop"
    drop.mkdir()
    lines = (SAMPLE_ACME / ragged).read_text(encoding="utf-8").splitlines()
    lines[3] += ",x,y"  # one field too many
    lines.append('"unterminated,quote')
    (drop / ragged).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (drop / binary).write_bytes(b"\x00\x01binary\x00not a csv\n" * 40)
    settings = settings_in(tmp_path)
    feed = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1,
                       source={"after_success": "archive"})
    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        second = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert first.exit_code == 65
    assert [u["file"] for u in first.summary["unreadable_files"]] == [binary]
    assert {"R019_WRONG_FIELD_COUNT", "R020_UNBALANCED_QUOTE"} <= set(first.summary["rejects_by_code"])
    assert (drop / "quarantine" / binary).exists() and not (drop / "quarantine" / ragged).exists()
    assert first.reports_path is not None
    with (first.reports_path / "summary.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (unreadable,) = [r for r in rows if r["source_file"] == binary]
    assert unreadable["origin"] == "unreadable" and unreadable["reason"]
    assert {r["origin"] for r in rows if r["source_file"] == ragged} == {"file"}
    with Ledger(settings.ledger_path) as ledger:
        assert [r.name for r in ledger.quarantined_files(feed.scope)] == [binary]
        kinds_open = {(p.kind, p.subject) for p in ledger.problems(scope=feed.scope)}
    assert ("unreadable_file", binary) in kinds_open and ("unreadable_file", ragged) not in kinds_open
    assert second.summary["unreadable_files"] == [] and second.summary["files_in_quarantine"] == []


# ---- backlog, credentials, escalation: in-process runs on a real ledger ------------------------


def _age_waiting_work(tmp: Path, hours: float) -> None:
    """Make what waits look ``hours`` old (the ledger's own timestamps; no clock is faked)."""
    db = sqlite3.connect(tmp / "state" / "ledger.sqlite")
    then = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="microseconds")
    db.execute("UPDATE transactions SET created_at = ? "
               "WHERE state IN ('queued', 'sending', 'failed_retryable')", (then,))
    db.commit()
    db.close()


def test_a_backlog_opens_escalates_and_resolves_once(tmp_path: Path, sandbox_env: Any) -> None:
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url)
        s.drop("pos_LON01_20261120_daily.csv")
        s.drop("pos_BER01_20261120_12.csv", "pos_BER01_20261120_daily.csv")
        s.write_feed(f"http://127.0.0.1:{closed_port()}", check_credentials=False)  # recorded, then waits
        code, summary, _ = s.run()
        assert code in (65, 75) and summary["backlog"]["waiting"] > 0
        assert "backlog" not in {p["kind"] for p in s.open_problems()}  # not old enough yet
        _age_waiting_work(tmp_path, 2)  # older than backlog_max_age_minutes (60)
        code, summary, logs = s.run()
        assert summary["backlog"]["oldest_waiting_minutes"] >= 119
        run_line = next(line for line in logs if line.get("event") == "run")
        assert re.search(r"waiting \d+ \(oldest \d+ min\)", run_line["msg"])
        (backlog,) = [p for p in s.open_problems() if p["kind"] == "backlog"]
        assert backlog["stage"] == 0 and backlog["level"] == "retryable"
        _age_waiting_work(tmp_path, 5)  # past the second age (240 min): escalated, once
        s.run()
        s.run()
        s.write_feed(sandbox_env.url)
        done = s.posfeed("rerun", "--feed", "watch", "--failed", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["backlog"] == {
            "carried": json.loads(done.stdout)["backlog"]["carried"], "waiting": 0,
            "oldest_waiting_since": None, "oldest_waiting_minutes": None}
        assert "backlog" not in {p["kind"] for p in s.open_problems()}
        events = [a["event"] for a in hook.received if a["kind"] == "backlog"]
        assert events == ["opened", "escalated", "resolved"]


def test_refused_credentials_are_a_problem_until_a_run_gets_through(
    tmp_path: Path, sandbox_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url)
        s.drop("pos_NYC01_20261120_13.csv")
        monkeypatch.setenv("ANTAVO_API_SECRET", "not-the-secret")
        sandbox_env.config.allow_api_key = False
        code, _, _ = s.run()
        assert code in (75, 78)
        assert "credentials_refused" in {p["kind"] for p in s.open_problems()}
        monkeypatch.setenv("ANTAVO_API_SECRET", sandbox_env.config.api_secret)
        s.drop("pos_NYC01_20261120_14.csv")
        s.run()
        s.posfeed("rerun", "--feed", "watch", "--failed")
        assert "credentials_refused" not in {p["kind"] for p in s.open_problems()}
        events = [a["event"] for a in hook.received if a["kind"] == "credentials_refused"]
        assert events == ["opened", "resolved"]
        assert {a["level"] for a in hook.received if a["kind"] == "credentials_refused"} == {"failure"}


def test_a_feed_file_broken_under_the_daemon_is_one_problem_until_it_is_mended(
    tmp_path: Path, sandbox_env: Any
) -> None:
    """The daemon reads a feed's file again before each run; a file edited into something invalid
    stops the feed's runs (78 for `--once-catchup`), opens one run_failed problem with one alert
    however many runs it stops, and the first run after the mend resolves it."""
    from pipeline.config import Settings, load_feed
    from pipeline.scheduling import FeedScheduler, ScheduledFeed

    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url, schedule="0 3 * * *")
        path = s.feeds / "watch.toml"
        settings = Settings(state_dir=tmp_path / "state", feeds_dir=s.feeds, reports_dir=tmp_path / "reports")
        daemon = FeedScheduler([ScheduledFeed(load_feed(path), path)], settings)
        good = path.read_text(encoding="utf-8")
        path.write_text(good.replace("requests_per_minute = 60000", 'requests_per_minute = "lots"'),
                        encoding="utf-8")
        assert daemon.execute("watch") == 78 and daemon.execute("watch") == 78
        assert daemon.exit_codes["watch"] == 78
        (failed,) = [p for p in s.open_problems() if p["kind"] == "run_failed"]
        assert "requests_per_minute" in failed["summary"] and "posfeed feeds" in failed["action"]
        path.write_text(good, encoding="utf-8")
        assert daemon.execute("watch") in (0, 65)  # runs again (today's files are not there yet)
        assert "run_failed" not in {p["kind"] for p in s.open_problems()}
    events = [a["event"] for a in hook.received if a["kind"] == "run_failed"]
    assert events == ["opened", "resolved"]


# ---- smaller: expected files per feed, the scheduler's selection, fatal errors, the lock --------


def test_a_file_of_another_feed_of_the_scope_does_not_satisfy_an_expected_file(
    tmp_path: Path, sandbox_env: Any
) -> None:
    from datetime import date

    from pipeline.config import Feed, Settings
    from pipeline.runner import run_feed

    other, mine = tmp_path / "other", tmp_path / "mine"
    other.mkdir()
    mine.mkdir()
    shutil.copy2(SAMPLE / "pos_BER01_20261120_12.csv", other / "pos_BER01_20261120_daily.csv")

    def feed(name: str, folder: Path) -> Feed:
        return Feed.model_validate({
            "name": name, "dedup_scope": "acme", "timezone": "Europe/London",
            "validation": {"currencies": ["EUR", "GBP"]},
            "source": {"kind": "local", "path": str(folder), "readiness": "none",
                       "pattern": "pos_*_{business_date:%Y%m%d}_*.csv"},
            "target": {"kind": "antavo", "base_url": sandbox_env.url, "region": sandbox_env.config.region,
                       "requests_per_minute": 60000},
            "expected": {"stores": ["BER01"], "cadence": "daily",
                         "pattern": "pos_{store_id}_{business_date:%Y%m%d}_daily.csv"},
        })

    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    run_feed(feed("other_feed", other), settings, business_dates=[date(2026, 11, 20)])
    summary = run_feed(feed("my_feed", mine), settings, business_dates=[date(2026, 11, 20)]).to_dict()
    (row,) = summary["missing_files"]
    assert row["status"] == "missing" and row["delivered_via_feed"] == "other_feed"
    (problem,) = summary["problems"]
    assert problem["kind"] == "missing_file" and "came through feed other_feed" in problem["summary"]


def test_schedule_for_one_feed_leaves_the_other_feeds_jobs_alone(tmp_path: Path) -> None:
    from pipeline.config import Feed, Settings
    from pipeline.scheduling import FeedScheduler, job_id_for
    from tests.test_scheduling import Calls

    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    a = Feed(name="a", schedule="0 3 * * *")
    b = Feed(name="b", schedule="0 4 * * *")
    everything = FeedScheduler([a, b], settings, job=Calls())
    everything.start(paused=True)
    missed = datetime.now(UTC) - timedelta(hours=1)
    everything.scheduler.modify_job(job_id_for("b"), next_run_time=missed)  # b has a run to catch up
    everything.shutdown()
    calls = Calls()
    only_a = FeedScheduler([a], settings, job=calls, only_selected=True)
    due = only_a.start(paused=True)
    assert due == [] and set(only_a.next_run_times()) == {"a"}
    only_a.shutdown()
    db = sqlite3.connect(tmp_path / "state" / "scheduler.sqlite")
    stored = dict(db.execute("SELECT id, next_run_time FROM apscheduler_jobs").fetchall())
    db.close()
    assert set(stored) == {"feed:a", "feed:b"}
    assert abs(stored["feed:b"] - missed.timestamp()) < 1  # b's catch-up state kept
    assert calls.runs == []


def test_fatal_errors_are_json_lines_with_json_logs(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "pipeline", "--state-dir", str(tmp_path / "s"),
            "--feeds-dir", str(tmp_path)]
    done = subprocess.run([*base, "--log-format", "json", "run", "--feed", "nosuch"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 78
    lines = [json.loads(line) for line in done.stderr.strip().splitlines()]
    assert lines[-1]["event"] == "fatal" and lines[-1]["exit_code"] == 78 and "nosuch" in lines[-1]["msg"]
    done = subprocess.run([*base, "--log-format", "json", "runs", "--limit", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and json.loads(done.stderr.strip().splitlines()[-1])["event"] == "fatal"
    done = subprocess.run([*base, "run", "--feed", "nosuch"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.stderr.startswith("posfeed: error:")  # text logs: plain text


def test_the_lock_message_names_the_scope(tmp_path: Path) -> None:
    from pipeline.errors import LockHeldError
    from pipeline.locks import RunLock

    held = RunLock.acquire(tmp_path, "acme", feed="acme_hourly")
    try:
        with pytest.raises(LockHeldError, match=r"^scope 'acme' is being run by .*acme_hourly"):
            RunLock.acquire(tmp_path, "acme", feed="acme_daily")
    finally:
        held.release()


def test_an_sftp_source_moves_a_broken_file_into_quarantine_and_back(
    sftp_server: Any, sftp_dir: Path, tmp_path: Path
) -> None:
    from pipeline.sources.sftp import SftpSource

    (sftp_dir / "a.csv").write_bytes(b"\x00broken\x00")
    (sftp_dir / "a.csv.done").write_bytes(b"")
    feed = sftp_server.feed(sftp_dir, readiness="marker", quarantine_path="held")
    with SftpSource(feed) as source:
        (found,) = source.discover([])
        where = source.quarantine(found)
        assert not (sftp_dir / "a.csv").exists() and not (sftp_dir / "a.csv.done").exists()
        assert (sftp_dir / "held" / "a.csv").read_bytes() == b"\x00broken\x00"
        assert (sftp_dir / "held" / "a.csv.done").exists()
        assert list(source.discover([])) == []  # the quarantine folder is not listed
        source.release(where, "a.csv")
        (back,) = source.discover([])  # with its done-marker: ready again
        assert back.name == "a.csv"
    assert (sftp_dir / "a.csv").read_bytes() == b"\x00broken\x00"


def test_the_run_line_tells_the_missing_hours_of_an_hourly_feed_apart() -> None:
    from pipeline.runner import _problem_words

    def missing(problem_id: int, hour: int | None) -> dict[str, Any]:
        return {"problem_id": problem_id, "kind": "missing_file", "store_id": "LON01",
                "business_date": "2026-11-20", "counts": {"hour": hour}}

    words = _problem_words([missing(1, 9), missing(2, 13), missing(3, None)])
    assert words == ("3 open problems: #1 missing_file LON01 2026-11-20 09:00, "
                     "#2 missing_file LON01 2026-11-20 13:00, #3 missing_file LON01 2026-11-20")


def test_a_feed_moved_to_another_dedup_scope_keeps_its_open_problems(tmp_path: Path) -> None:
    """A problem's key names its feed, not the scope: after the feed's `dedup_scope` changes, the
    run finds the problem opened under the old scope and refreshes it (it once tried to open it
    again, hit the ledger's one-open-problem-per-key rule and left the problems stale every run)."""
    from pipeline.config import Feed
    from pipeline.health import RunFacts, backlog_of
    from pipeline.ledger import Ledger
    from pipeline.runner import _update_problems

    now = datetime.now(UTC)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        events = []
        for scope in ("old_scope", "new_scope"):
            feed = Feed(name="watch", dedup_scope=scope)
            facts = RunFacts(run_id=None, kind="run", summary={}, error=RuntimeError("gone"),
                             business_dates=[], missing_files=[], failed_codes={}, sent=0,
                             backlog=backlog_of(ledger, feed, None, now))
            events.append(_update_problems(ledger, feed, facts, now))
        assert events[0] is not None and len(events[0]["opened"]) == 1
        assert events[1] == {"opened": [], "escalated": [], "resolved": []}
        assert [p.kind for p in ledger.problems(feed="watch")] == ["run_failed"]


# ---- problem texts: the clear words of a setting's error, a real secret masked ---------------------


def test_a_missing_secret_is_told_in_clear_words_everywhere(
    tmp_path: Path, sandbox_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Problem texts and their log lines once read "target.api_secret: *** variable ... is not set":
    a setting's name followed by a colon was taken for a secret and the next word masked. A secret
    that is not set is told as missing, not as refused: nothing was asked of the platform."""
    clear = "target.api_secret: environment variable ANTAVO_API_SECRET is not set"
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url)
        s.drop("pos_NYC01_20261120_13.csv")
        monkeypatch.delenv("ANTAVO_API_SECRET")
        code, _, logs = s.run()
        assert code == 78
        (problem,) = [p for p in s.open_problems() if p["kind"] == "credentials_refused"]
        assert problem["summary"] == f"credentials missing: {clear}"
        (line,) = [entry for entry in logs if entry.get("event") == "problem"]
        assert line["msg"].endswith(f"problem #{problem['problem_id']} opened: credentials_refused: "
                                    f"credentials missing: {clear}")
        (alert,) = [a for a in hook.received if a["kind"] == "credentials_refused"]
        assert alert["summary"] == f"credentials missing: {clear}"
        table = s.posfeed("problems")
        assert table.returncode == 0 and clear in table.stdout


def test_a_real_secret_in_a_problem_stays_masked_in_logs_problems_and_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SFTP password set in the environment is masked wherever a problem's text goes, while the
    setting's name and the password-less sftp:// address around it read in clear (locally: the
    alert tells the kind of error only)."""
    import io

    from pipeline.config import Feed
    from pipeline.errors import SourceAuthError
    from pipeline.ledger import Ledger
    from pipeline.logs import register_feed_secrets, setup_logging
    from pipeline.runner import observe_refusal
    from tests.runner_helpers import settings_in

    password = "pw-Zq81-real-sftp"
    monkeypatch.setenv("T_MASK_SFTP_PASSWORD", password)
    address = "sftp://ops@sftp.example.com:22/out"
    with Receiver() as hook:
        feed = Feed.model_validate({
            "name": "watch", "source": {"kind": "sftp", "host": "sftp.example.com", "username": "ops",
                                        "path": "/out", "password_env": "T_MASK_SFTP_PASSWORD"},
            "alerts": {"webhook_url": hook.url},
        })
        register_feed_secrets([feed])  # as every posfeed command does for the feeds it loads
        stream = io.StringIO()
        setup_logging("json", 1, stream=stream)
        observe_refusal(settings_in(tmp_path), feed, SourceAuthError(
            f"{address} refused our credentials (password): login ops password: {password} rejected",
            source="watch", key="source.password_env"))
        with Ledger(settings_in(tmp_path).ledger_location) as ledger:
            (problem,) = ledger.problems(feed="watch")
        expected = (f"credentials refused: watch: source.password_env: {address} refused our "
                    "credentials (password): login ops password: *** rejected")
        assert problem.summary == expected
        (alert,) = hook.received  # an SFTP server's words stay local: the alert names the error
        assert alert["summary"] == ("credentials refused (SourceAuthError); `posfeed problems` shows "
                                    "the full message")
        assert password not in json.dumps(hook.received)
        logged = stream.getvalue()
        assert password not in logged and json.dumps(expected)[1:-1] in logged


def test_problems_all_shows_which_are_resolved(tmp_path: Path) -> None:
    """`posfeed problems --all` lists resolved problems with a STATUS column; without --all, none."""
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.ledger import Ledger
    from pipeline.problems import Change, Plan

    (tmp_path / "state").mkdir()
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
        opened = ledger.apply_problems(
            Plan((Change("opened", None, _obs("a")), Change("opened", None, _obs("b")))),
            run_id=None, alert=lambda p, e: None)
        ledger.apply_problems(Plan((Change("resolved", opened[0], None),)), run_id=None,
                              alert=lambda p, e: None)
    base = ["--state-dir", str(tmp_path / "state"), "--feeds-dir", str(tmp_path), "problems"]
    every = CliRunner().invoke(cli, [*base, "--all"])
    assert every.exit_code == 0, every.output
    header, *lines = every.output.splitlines()
    assert header.split()[:2] == ["PROBLEM_ID", "STATUS"]
    status = {line.split()[0]: line.split()[1] for line in lines if line[:1].isdigit()}
    assert status == {str(opened[0].id): "resolved", str(opened[1].id): "open"}
    open_only = CliRunner().invoke(cli, base)
    assert "STATUS" not in open_only.output
    assert open_only.output.splitlines()[1].split()[0] == str(opened[1].id)


def test_with_json_logs_every_stderr_line_is_json(tmp_path: Path) -> None:
    """--log-format json: a run's exit cause, a check's cause and `problems --resolve` are JSON lines
    (event=exit, event=problem_resolved), never plain text mixed into what a shipper reads."""
    from pipeline.ledger import Ledger
    from pipeline.problems import Change, Plan

    folder, feeds, state = tmp_path / "in", tmp_path / "feeds", tmp_path / "state"
    folder.mkdir()
    feeds.mkdir()
    state.mkdir()
    shutil.copy2(SAMPLE / "pos_LON01_20261120_daily.csv", folder)  # carries rejected rows
    (feeds / "watch.toml").write_text(
        f'[source]\nkind = "local"\npath = "{folder}"\nreadiness = "none"\n'
        'pattern = "pos_*_{business_date:%Y%m%d}_daily.csv"\nafter_success = "keep"\n'
        '[target]\nkind = "antavo"\nbase_url = "http://127.0.0.1:9"\nregion = "demo"\n'
        'api_key_env = "WATCH_KEY"\napi_secret_env = "WATCH_SECRET"\n', encoding="utf-8")
    with Ledger(state / "ledger.sqlite") as ledger:
        (opened,) = ledger.apply_problems(Plan((Change("opened", None, _obs("a")),)), run_id=None,
                                          alert=lambda p, e: None)
    base = [sys.executable, "-m", "pipeline", "--log-format", "json", "--state-dir", str(state),
            "--feeds-dir", str(feeds), "--reports-dir", str(tmp_path / "reports")]
    env = {**os.environ, "WATCH_KEY": "k", "WATCH_SECRET": "s"}

    def lines(*args: str) -> tuple[int, list[dict[str, Any]]]:
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=300, check=False,
                              env=env)
        plain = [line for line in done.stderr.splitlines() if not line.startswith("{")]
        assert not plain, f"plain text among the JSON log lines of {args}: {plain}"
        return done.returncode, [json.loads(line) for line in done.stderr.splitlines()]

    code, logs = lines("problems", "--resolve", str(opened.id))
    assert code == 0
    (resolved,) = [line for line in logs if line.get("event") == "problem_resolved"]
    assert resolved["problem_id"] == opened.id and resolved["kind"] == "missing_file"

    code, logs = lines("run", "--feed", "watch", "--business-date", DAY, "--dry-run")
    assert code == 65
    (exit_line,) = [line for line in logs if line.get("event") == "exit"]
    assert exit_line["exit_code"] == 65 and exit_line["feed"] == "watch" and "rejected" in exit_line["msg"]

    code, logs = lines("check", str(folder / "pos_LON01_20261120_daily.csv"))
    assert code == 65
    (exit_line,) = [line for line in logs if line.get("event") == "exit"]
    assert exit_line["exit_code"] == 65 and "rejected" in exit_line["msg"]


def test_an_unreadable_file_alert_names_the_file_never_its_content(tmp_path: Path, sandbox_env: Any) -> None:
    """A file without its header line: the reader's reason says its first line may be a data row
    and never quotes it (a customer id, an e-mail), locally or in the alert that leaves for a chat
    channel, which names the file and the kind of fault only."""
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url)
        s.drop("pos_LON01_20261120_daily.csv")
        name = "pos_ZZZ02_20261120_daily.csv"
        (s.folder / name).write_text(
            "ZZZ02-R1-0001,ZZZ02,R1,2026-11-20 10:00:00,CUST-884213,jane.doe@example.com,sale,100104,"
            "Cheddar,dairy,3.80,GBP\n", encoding="utf-8")
        code, summary, logs = s.run()
        assert code == 65 and [u["file"] for u in summary["unreadable_files"]] == [name], logs[-5:]
        (local,) = [p for p in s.open_problems() if p["kind"] == "unreadable_file"]
        # the operator's own view says why, without the row's values (it is stored in the ledger)
        assert "required columns missing" in local["summary"] and "data row" in local["summary"]
        assert "CUST-884213" not in json.dumps(summary) and "CUST-884213" not in "".join(map(str, logs))
        (alert,) = [a for a in hook.received if a["kind"] == "unreadable_file"]
        sent = json.dumps(alert)
        assert name in sent and "required columns missing" in alert["summary"]
        assert "CUST-884213" not in sent and "jane.doe" not in sent and "Cheddar" not in sent


class Quoting:
    """A platform on loopback that refuses every request with a message quoting a customer id, an
    e-mail address and a phone number (as a platform's error message may)."""

    MESSAGE = "member CUST-884213 (jane.doe@example.com, +44 7700 900123) is locked; key refused"

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        message = self.MESSAGE

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.dumps({"error": {"type": "UnauthorizedException", "code": 101021,
                                             "message": message}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PERSONAL = ("CUST-884213", "jane.doe", "7700 900123")


def test_a_platform_message_quoting_a_customer_never_leaves_in_an_alert(
    tmp_path: Path, sandbox_env: Any
) -> None:
    """A platform refused our credentials with a message that quotes a customer id, an e-mail and a
    phone number: the local problem keeps the whole message, the alert says what kind of fault it
    is and where to read the rest."""
    platform = Quoting()
    try:
        with Receiver() as hook:
            s = Setup(tmp_path, sandbox_env, hook.url)
            s.write_feed(platform.url)
            s.drop("pos_NYC01_20261120_13.csv")
            code, _, _ = s.run()
            assert code == 78
            (local,) = [p for p in s.open_problems() if p["kind"] == "credentials_refused"]
            assert "CUST-884213" in local["summary"]  # the operator's own view says what was answered
            (alert,) = [a for a in hook.received if a["kind"] == "credentials_refused"]
            sent = json.dumps(alert)
            assert not [p for p in PERSONAL if p in sent], sent
            told = alert["summary"]
            assert told.startswith("credentials refused") and re.search(r"`posfeed (\S+ )*problems`", told)
            assert "CredentialsRefusedError" in told
    finally:
        platform.close()


@pytest.mark.parametrize("kind", ["run_failed", "platform_unreachable"])
def test_an_error_quoting_a_file_or_a_platform_never_leaves_in_an_alert(tmp_path: Path, kind: str) -> None:
    """Whatever an error quotes (a file's line, a platform's answer) stays in `posfeed problems`."""
    from pipeline.config import Feed
    from pipeline.errors import PlatformUnavailableError, PosfeedError
    from pipeline.ledger import Ledger
    from pipeline.runner import observe_refusal
    from tests.runner_helpers import settings_in

    error: PosfeedError = PosfeedError(f"line 3: cannot read {Quoting.MESSAGE}")
    if kind == "platform_unreachable":
        error = PlatformUnavailableError(f"https://x.example cannot be reached: {Quoting.MESSAGE}")
    with Receiver() as hook:
        feed = Feed.model_validate({"name": "watch", "alerts": {"webhook_url": hook.url}})
        observe_refusal(settings_in(tmp_path), feed, error)
        with Ledger(settings_in(tmp_path).ledger_location) as ledger:
            (problem,) = ledger.problems(feed="watch")
        assert problem.kind == kind and "CUST-884213" in problem.summary
        (alert,) = hook.received
        sent = json.dumps(alert)
        assert not [p for p in PERSONAL if p in sent], sent
        assert type(error).__name__ in alert["summary"]
        assert re.search(r"`posfeed (\S+ )*problems`", alert["summary"])


@pytest.mark.parametrize("fault", ["error_503", "error_500"])
def test_a_platform_answering_server_errors_opens_platform_unreachable(
    tmp_path: Path, sandbox_env: Any, fault: str
) -> None:
    """Antavo's 5xx answers carry their own code in the body ("503"), not the ``http_503`` a bodiless
    answer gets: an outage answered that way left the work waiting and opened no problem, so no
    alert told anyone until the backlog grew old."""
    with Receiver() as hook:
        s = Setup(tmp_path, sandbox_env, hook.url)
        s.drop("pos_NYC01_20261120_13.csv")
        sandbox_env.config.fault_rate, sandbox_env.config.fault_kinds = 1.0, (fault,)
        code, summary, _ = s.run()
        assert code == 75 and summary["failed_retryable"] > 0
        assert ("platform_unreachable", "antavo") in kinds(s.open_problems())
        opened = [a for a in hook.received if a["kind"] == "platform_unreachable"]
        assert [a["event"] for a in opened] == ["opened"]


@pytest.mark.parametrize("n", [1, 2])
def test_a_problems_counts_agree_with_their_nouns(tmp_path: Path, n: int) -> None:
    """Problem summaries (so alert texts) and the run line say "1 transaction", "2 transactions",
    never "1 transaction(s)"."""
    from pipeline.config import Feed
    from pipeline.health import Backlog, RunFacts, observe
    from pipeline.ledger import Ledger
    from pipeline.runner import _problem_words

    plural = "" if n == 1 else "s"
    now = datetime.now(UTC)
    feed = Feed(name="watch", dedup_scope="watch")
    backlog = Backlog(carried=0, waiting=n, oldest_since=(now - timedelta(days=1)).isoformat(),
                      oldest_minutes=1440, oldest_seconds=86400.0, waiting_for_sales=n)
    facts = RunFacts(run_id=None, kind="run", summary={"credentials_refused": ""}, error=None,
                     business_dates=[], missing_files=[], failed_codes={"http_503": n, "timeout": n},
                     sent=0, backlog=backlog)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        summaries = {o.kind: o.summary for o in observe(feed, ledger, facts, now)}
    assert summaries["platform_unreachable"] == (
        f"the antavo platform could not be reached: {n} transaction{plural} http_503, "
        f"{n} transaction{plural} timeout")
    assert summaries["backlog"] == (
        f"{n} transaction{plural} of scope watch still {'waits' if n == 1 else 'wait'} to be delivered "
        f"({n} return{plural} waiting for a sale that has not arrived); the oldest for 1440 min")
    assert "(s)" not in " ".join(summaries.values())
    problems = [{"problem_id": i + 1, "kind": "backlog"} for i in range(n)]
    assert _problem_words(problems).startswith(f"{n} open problem{plural}: #1 backlog")
