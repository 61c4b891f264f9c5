"""An SFTP server that cannot be reached at the start of a run holds back none of the work earlier
runs left for the platform: the run sends it (exactly once), reads no file, names the source in
its summary and exits 75; the next run with the server back reads the files as usual. On both
ledger backends, against a real OpenSSH sshd and the real sandbox."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from pipeline.config import Feed, Settings
from pipeline.errors import EXIT_TEMPFAIL, SourceUnavailableError
from pipeline.ledger import Ledger
from pipeline.runner import exit_cause, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import free_port, posfeed
from tests.runner_helpers import BUSINESS_DATE, credentials, delivered_ids, settings_in, stats
from tests.sftp_fixtures import SftpServer
from tests.sources.test_sftp_run import FILES, sftp_feed, upload
from tests.test_report_page import CHROMIUM, CHROMIUM_ARGS

# the file fields of a run's summary, as a run that found no file has them
NO_FILE_FIELDS: dict[str, object] = {
    "files_new": [], "files_already_processed": 0, "already_processed_files": [], "files_fetched": 0,
    "bytes_fetched": 0, "superseded_files": [], "unreadable_files": [], "fetch_failures": [],
    "skipped_files": [], "source_errors": [], "files_left_in_place": [], "missing_files": [],
    "files_in_quarantine": [], "skipped_by_kind": {}, "line_items_by_kind": {},
}


def _unreachable(feed: Feed) -> Feed:
    """``feed`` pointed at a loopback port nothing listens on (the server is down)."""
    source = feed.source.model_copy(update={"port": free_port(), "connect_timeout": 2.0})
    return feed.model_copy(update={"source": source})


def _stopped_before_sending(sandbox: SandboxServer, feed: Feed, settings: Settings) -> None:
    """Run 1: reads the files and stops before the first request (a SIGTERM): all stays queued."""
    stop = threading.Event()

    def on_stage(stage: str, when: str) -> None:
        if stage == "submit" and when == "start":
            stop.set()

    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE], stop=stop, on_stage=on_stage)
    assert first.exit_code == EXIT_TEMPFAIL and first.summary["stopped"] is True
    assert first.summary["accepted"] == 0 and first.summary["queued"] > 0


def _platform_down(sandbox: SandboxServer, feed: Feed, settings: Settings) -> None:
    """Run 1: the platform answers 503 to every event: all left failed-retryable."""
    sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    sandbox.config.fault_rate = 0.0
    assert first.exit_code == EXIT_TEMPFAIL and first.summary["accepted"] == 0
    assert first.summary["failed_retryable"] > 0


@pytest.mark.parametrize("left_by", [_stopped_before_sending, _platform_down],
                         ids=["stopped", "platform_down"])
def test_an_unreachable_source_still_sends_what_earlier_runs_left(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
    ledger_location: Path | str,
    left_by: Callable[[SandboxServer, Feed, Settings], None],
) -> None:
    upload(sftp_dir, FILES[:2])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    if not isinstance(ledger_location, Path):
        settings = replace(settings, ledger_url=ledger_location)
    left_by(sandbox, feed, settings)
    assert delivered_ids(sandbox) == []
    with Ledger(settings.ledger_location) as ledger:
        waiting = ledger.backlog(feed.scope, max_attempts=feed.resume.max_attempts,
                                 max_age_hours=feed.resume.max_age_hours).waiting
    assert waiting > 0
    upload(sftp_dir, FILES[2:])  # a new file while the server is down: the run after reads it

    down = _unreachable(feed)
    with credentials(sandbox):
        second = run_feed(down, settings, business_dates=[BUSINESS_DATE])
    s = second.summary
    assert second.exit_code == EXIT_TEMPFAIL, s
    assert f"127.0.0.1:{down.source.port}" in s["source_unreachable"]
    assert f"127.0.0.1:{down.source.port}" in exit_cause(s, second.exit_code)
    assert s["status"] == "finished"
    for key, empty in NO_FILE_FIELDS.items():  # as a run that found no file: no key left out
        assert s[key] == empty, (key, s[key])
    assert s["carried_over"] == waiting and s["waiting"] == 0 and s["in_doubt"] == 0
    assert s["accepted"] == waiting and s["balanced"] is True
    for currency, amounts in s["currencies"].items():  # each currency balances on its own
        assert Decimal(amounts["amount_in"]) == (Decimal(amounts["amount_valid"])
                                                 + Decimal(amounts["amount_rejected"])), currency
        assert Decimal(amounts["amount_accepted"]) == Decimal(amounts["amount_valid"]), currency
    sent = delivered_ids(sandbox)
    assert len(sent) == waiting and len(set(sent)) == len(sent)
    assert (second.reports_path is not None and (second.reports_path / "summary.json").exists())
    with Ledger(settings.ledger_location) as ledger:
        (record,) = [r for r in ledger.runs() if r.id == second.run_id]
        assert record.exit_code == EXIT_TEMPFAIL
        problems = {p.kind for p in ledger.problems(feed=feed.name)}
    assert "run_failed" in problems  # the source stays a problem until a run reaches it

    with credentials(sandbox):
        third = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    t = third.summary
    assert set(t) - set(s) == set(), "keys of a normal run the unreachable run's summary left out"
    assert t["source_unreachable"] is None and t["files_new"] == [FILES[2]], t
    assert t["carried_over"] == 0 and t["accepted"] > 0
    again = delivered_ids(sandbox)
    assert len(again) == waiting + t["accepted"] and len(set(again)) == len(again)  # nothing twice


def test_a_dry_run_with_the_source_unreachable_sends_nothing_and_names_it(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
) -> None:
    upload(sftp_dir, FILES[:1])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    _stopped_before_sending(sandbox, feed, settings)
    requests = stats(sandbox)["requests"]
    down = _unreachable(feed)
    with credentials(sandbox):
        dry = run_feed(down, settings, business_dates=[BUSINESS_DATE], dry_run=True)
    assert dry.exit_code == EXIT_TEMPFAIL
    assert f"127.0.0.1:{down.source.port}" in dry.summary["source_unreachable"]
    assert dry.summary["carried_over"] > 0 and dry.summary["accepted"] == 0
    assert stats(sandbox)["requests"] == requests and delivered_ids(sandbox) == []


def test_an_unreachable_source_with_nothing_carried_over_records_no_run(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
) -> None:
    """Nothing waits for the platform: the run refuses to start as before (75, no run recorded)."""
    upload(sftp_dir, FILES[:1])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    with credentials(sandbox):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        assert first.summary["waiting"] == 0
        requests = stats(sandbox)["requests"]
        with pytest.raises(SourceUnavailableError, match="cannot reach"):
            run_feed(_unreachable(feed), settings, business_dates=[BUSINESS_DATE])
    assert stats(sandbox)["requests"] == requests  # not even the credentials' call
    with Ledger(settings.ledger_location) as ledger:
        assert [r.id for r in ledger.runs()] == [first.run_id]


def test_an_unreachable_platform_too_records_no_run(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
) -> None:
    """The source and the platform both down: as before, 75 naming the source, nothing recorded."""
    upload(sftp_dir, FILES[:1])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    _stopped_before_sending(sandbox, feed, settings)
    down = _unreachable(feed)
    down = down.model_copy(update={"target": down.target.model_copy(
        update={"base_url": f"http://127.0.0.1:{free_port()}"})})
    with credentials(sandbox), pytest.raises(SourceUnavailableError, match="cannot reach"):
        run_feed(down, settings, business_dates=[BUSINESS_DATE])
    with Ledger(settings.ledger_location) as ledger:
        assert len(ledger.runs()) == 1


def _verdict_and_html(page_path: Path) -> tuple[list[str], str]:
    """The verdict's items and the whole text of ``page_path`` as headless Chromium shows them."""
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_path.as_uri())
            items = [li.inner_text() for li in page.locator('section[aria-label="Verdict"] li').all()]
            return items, page.content()
        finally:
            browser.close()


def test_the_page_and_the_commands_of_a_run_that_could_not_reach_its_source_name_it(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """report.html's verdict names the server not reached (its user, never its password), as
    written by the run and again by `posfeed report RUN_ID`; `posfeed runs` shows the run."""
    upload(sftp_dir, FILES[:1])
    feed = sftp_feed(sftp_server, sftp_dir, sandbox)
    settings = settings_in(tmp_path)
    _stopped_before_sending(sandbox, feed, settings)
    password = "h15-Secret-Pw-7731"
    monkeypatch.setenv("H15_SFTP_PASSWORD", password)
    down = _unreachable(feed)
    down = down.model_copy(update={"source": down.source.model_copy(
        update={"password_env": "H15_SFTP_PASSWORD"})})
    with credentials(sandbox):
        second = run_feed(down, settings, business_dates=[BUSINESS_DATE])
    assert second.exit_code == EXIT_TEMPFAIL and second.reports_path is not None
    server = f"sftp://{down.source.username}@127.0.0.1:{down.source.port}"

    items, html = _verdict_and_html(second.reports_path / "report.html")
    named = [item for item in items if server in item]
    assert len(named) == 1 and "no file" in named[0] and "next run" in named[0], items
    assert password not in html

    again = posfeed(tmp_path, "report", second.run_id, "--json", env=dict(os.environ))
    assert again.returncode == 0, again.stderr
    regenerated = json.loads(again.stdout)
    assert server in regenerated["source_unreachable"]
    assert regenerated["files_fetched"] == 0 and regenerated["files_new"] == []
    items, html = _verdict_and_html(Path(regenerated["reports_path"]) / "report.html")
    assert [item for item in items if server in item] == named and password not in html
    text = posfeed(tmp_path, "report", second.run_id, env=dict(os.environ))
    assert text.returncode == 0 and server in text.stdout and password not in text.stdout, text.stdout

    runs = posfeed(tmp_path, "runs", "--json", env=dict(os.environ))
    assert runs.returncode == 0, runs.stderr
    (row,) = [r for r in json.loads(runs.stdout) if r["run_id"] == second.run_id]
    assert row["status"] == "finished" and row["exit"] == EXIT_TEMPFAIL
    assert row["accepted"] == second.summary["accepted"] == row["carried_over"] > 0
