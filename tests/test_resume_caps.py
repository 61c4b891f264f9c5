"""The caps of resume by default (`[resume]`): past them, or when the platform refused the request
as such, a failed transaction waits for an explicit `posfeed rerun` and every run reports it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import Feed
from pipeline.ledger import Ledger
from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import clean_day, ops_feed
from tests.runner_helpers import BUSINESS_DATE, credentials, delivered_ids, settings_in


@pytest.fixture
def live(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    with credentials(sandbox):
        yield sandbox


def _feed(sandbox: SandboxServer, folder: Path, **resume: object) -> Feed:
    feed = ops_feed(sandbox, folder, bulk_size=10)
    return feed.model_copy(update={"resume": feed.resume.model_copy(update=resume)})


def test_past_the_attempts_cap_only_a_rerun_sends_it(live: SandboxServer, tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop", 30)
    settings = settings_in(tmp_path)
    feed = _feed(live, tmp_path / "drop", max_attempts=2)  # the target tries twice per run
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert first.exit_code == 75 and first.summary["failed_retryable"] == len(ids)
    assert first.summary["waiting"] == 0 and first.summary["needs_rerun"] == len(ids)

    live.config.fault_rate = 0.0
    plain = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert plain.summary["carried_over"] == 0 and plain.summary["needs_rerun"] == len(ids)
    assert delivered_ids(live) == []

    rerun = rerun_feed(feed, settings, RerunSelection(failed=True))
    assert rerun.exit_code == 0 and rerun.summary["accepted"] == len(ids)
    assert rerun.summary["needs_rerun"] == 0 and sorted(delivered_ids(live)) == sorted(ids)
    # what the rerun sent came from earlier runs: carried over, as the backlog object says too
    assert rerun.summary["carried_over"] == rerun.summary["backlog"]["carried"] == len(ids)


def test_within_the_caps_a_plain_run_resends_it(live: SandboxServer, tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop", 30)
    settings = settings_in(tmp_path)
    feed = _feed(live, tmp_path / "drop", max_attempts=3)
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert first.summary["waiting"] == len(ids) and first.summary["needs_rerun"] == 0
    live.config.fault_rate = 0.0
    plain = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert plain.exit_code == 0 and plain.summary["carried_over"] == len(ids)
    assert sorted(delivered_ids(live)) == sorted(ids)


def test_past_the_age_cap_a_plain_run_leaves_it(live: SandboxServer, tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop", 12)
    settings = settings_in(tmp_path)
    feed = _feed(live, tmp_path / "drop")
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    with Ledger(settings.ledger_path) as ledger:
        later = datetime.now(UTC) + timedelta(hours=feed.resume.max_age_hours + 1)
        assert ledger.backlog("acme", max_attempts=25, max_age_hours=72).waiting == len(ids)
        old = ledger.backlog("acme", max_attempts=25, max_age_hours=72, now=later)
        assert (old.waiting, old.needs_rerun) == (0, len(ids))
        run_id = ledger.start_run(feed="shop", scope="acme")
        assert ledger.carry_over("acme", run_id, max_attempts=25, max_age_hours=72, now=later) == []
        ledger.finish_run(run_id, status="finished", exit_code=0, counts={})


def test_a_request_the_platform_refuses_as_such_waits_for_a_rerun(
    live: SandboxServer, tmp_path: Path
) -> None:
    ids = clean_day(tmp_path / "drop", 12)
    settings = settings_in(tmp_path)
    feed = _feed(live, tmp_path / "drop")
    # a wrong URL: every request is answered 404 (Not Found, code 0), deferred
    wrong = feed.model_copy(update={"target": feed.target.model_copy(
        update={"base_url": live.url + "/v0", "check_credentials": False})})
    first = run_feed(wrong, settings, business_dates=[BUSINESS_DATE])
    members = first.summary["failed_retryable"]
    assert members == len(ids) and first.summary["needs_rerun"] == members
    plain = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert plain.summary["carried_over"] == 0 and plain.summary["needs_rerun"] == members
    rerun = rerun_feed(feed, settings, RerunSelection(failed=True))
    assert rerun.summary["needs_rerun"] == 0 and sorted(delivered_ids(live)) == sorted(ids)


def test_the_scheduler_resumes_too(live: SandboxServer, tmp_path: Path) -> None:
    from pipeline.runner import business_dates_for
    from pipeline.scheduling import run_feed_job

    ids = clean_day(tmp_path / "drop", 30, day=business_dates_for(_feed(live, tmp_path))[0])
    settings = settings_in(tmp_path)
    feed = _feed(live, tmp_path / "drop")
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    assert run_feed_job(feed, settings, threading.Event()) == 75
    live.config.fault_rate = 0.0
    assert run_feed_job(feed, settings, threading.Event()) == 0
    assert sorted(delivered_ids(live)) == sorted(ids)
    with Ledger(settings.ledger_path) as ledger:
        assert [r.kind for r in ledger.runs()] == ["run", "run"]
