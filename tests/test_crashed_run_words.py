"""What an operator reads after a run that ended early: a crash (an unexpected error mid-run), a
stop, refused credentials, the source going away, a ledger write failing. Rows left queued or in
doubt are counted (the next run's work), not a report that does not balance; the words say how
many, what they are and what the next run does with them, and the next run does it. End to end
against the real sandbox, with real files, on both ledgers (the ledger write: PostgreSQL's session
ended)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline import runner
from pipeline.config import Feed
from pipeline.errors import EXIT_OK, SourceUnavailableError
from pipeline.ledger import Ledger
from pipeline.run_commands import format_summary, runs_command
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import make_sink
from pipeline.sinks.base import Sink
from tests.runner_helpers import credentials, delivered_ids
from tests.sftp_fixtures import SftpServer
from tests.test_void_after_stopped_run import (
    DAY,
    MORNING,
    NOON,
    ended_before_sending,
    local_feed,
    settings_for,
)
from tests.test_void_names_sale import read_csv, write


class _Crashing:
    """The feed's real sink, but the submit after ``after`` of them raises (a bug mid-run)."""

    def __init__(self, feed: Feed, after: int) -> None:
        self._sink: Sink = make_sink(feed)
        self._left = after

    async def submit(self, checkouts: Sequence[Any], on_sending: Any, on_result: Any, *,
                     stop: Any = None) -> None:
        if self._left == 0:
            raise RuntimeError("the sink failed")
        self._left -= 1
        await self._sink.submit(checkouts, on_sending, on_result, stop=stop)

    async def aclose(self) -> None:
        await self._sink.aclose()


def _causes(caplog: pytest.LogCaptureFixture) -> str:
    return " ".join(r.getMessage() for r in caplog.records if "cause:" in r.getMessage())


def test_a_run_whose_sink_crashes_says_what_it_left_not_that_its_report_does_not_balance(
    tmp_path: Path, ledger_location: Path | str, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox), pytest.raises(RuntimeError, match="the sink failed"):
            run_feed(feed, settings, business_dates=[DAY], make_sink=lambda f: _Crashing(f, 0))
    told = _causes(caplog)
    assert "does not balance" not in told, told
    assert "exit 70" in told and "ended by an error: RuntimeError: the sink failed" in told, told
    assert "2 transactions queued, not sent yet: the next run sends them" in told, told
    # every row is counted in a state column (queued included): what is left shows as the reason
    (report,) = (tmp_path / "reports").rglob("summary.csv")
    (row,) = read_csv(report)
    assert (row["rows_in"], row["rows_accounted"], row["queued_count"]) == ("2", "2", "2"), row
    assert row["amount_in"] == row["amount_accounted"], row
    assert row["balanced"] == "false"  # not final yet
    assert row["reason"] == "2 transactions queued, not sent yet: the next run sends them", row
    page = (report.parent / "report.html").read_text(encoding="utf-8")
    assert "every row that came in is counted, but some transactions wait for the next run" in page
    assert "not fully accounted for" not in page


class _InDoubt(_Crashing):
    """The first request goes out (its transaction marked in doubt), then the process fails before
    any answer is recorded."""

    async def submit(self, checkouts: Sequence[Any], on_sending: Any, on_result: Any, *,
                     stop: Any = None) -> None:
        result = on_sending([checkouts[0]["transaction_id"]])
        if result is not None:
            await result
        raise RuntimeError("the sink failed")


@pytest.mark.parametrize("ending", ["stopped", "refused"])
def test_a_run_ended_early_says_what_it_left_and_what_the_next_run_does(
    tmp_path: Path, ledger_location: Path | str, ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop (SIGTERM's event) or credentials refused as sending starts: every row is counted
    (queued), the report is "not yet" balanced, and the next run sends them."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        first = ended_before_sending(feed, settings, sandbox, "antavo", ending)
        told = _causes(caplog)
        left = "2 transactions queued, not sent yet: the next run sends them"
        assert "does not balance" not in told and told.endswith(left), told
        if ending == "refused":
            assert "sending stopped: once they are fixed, the next run sends what is left" in told, told
        else:
            assert "stopped before the end (signal)" in told, told
        assert f"  balanced:  not yet: {left}\n" in format_summary(first)
        assert first.summary["unaccounted"] == {}
        with credentials(sandbox):
            second = run_feed(feed, settings, business_dates=[DAY])
        assert sorted(delivered_ids(sandbox)) == ["S-1", "S-2"]
    assert second.exit_code == EXIT_OK and second.summary["balanced"] is True, second.summary
    assert "  balanced:  yes\n" in format_summary(second)


def test_a_run_that_crashes_with_a_request_out_says_what_is_in_doubt(
    tmp_path: Path, ledger_location: Path | str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """The request of S-2 went out, then the process failed: 1 in doubt, 1 queued, all counted;
    `posfeed runs` shows the run "not yet" balanced with what it left, and the next run settles
    the one in doubt and sends the other, each once."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox), pytest.raises(RuntimeError, match="the sink failed"):
            run_feed(feed, settings, business_dates=[DAY], make_sink=lambda f: _InDoubt(f, 0))
        told = _causes(caplog)
        assert "does not balance" not in told, told
        assert told.endswith("1 transaction in doubt (sent, no answer recorded): the next run asks the "
                             "platform before sending anything; 1 transaction queued, not sent yet: the "
                             "next run sends it"), told
        (report,) = (tmp_path / "reports").rglob("summary.csv")
        (row,) = read_csv(report)
        assert (row["in_doubt_count"], row["queued_count"], row["rows_accounted"]) == ("1", "1", "2"), row
        assert row["reason"].startswith("1 transaction in doubt"), row

        capsys.readouterr()
        runs_command(settings, feed=None, limit=None, as_json=False)
        header, crashed = capsys.readouterr().out.splitlines()
        starts = [header.index(f" {name}") + 1 if i else 0 for i, name in enumerate(header.split())]
        cells = {name: crashed[a:b].strip() for name, a, b in
                 zip(header.split(), starts, [*starts[1:], None], strict=True)}
        assert (cells["status"], cells["exit"], cells["in_doubt"], cells["queued"], cells["balanced"]) == (
            "failed", "70", "1", "1", "not yet"), crashed

        with credentials(sandbox):
            second = run_feed(feed, settings, business_dates=[DAY])
        assert sorted(delivered_ids(sandbox)) == ["S-1", "S-2"]
    assert second.exit_code == EXIT_OK and second.summary["balanced"] is True, second.summary
    assert second.summary["carried_over"] == 2


def test_the_run_that_closes_a_crashed_one_says_what_it_left_and_takes_it_over(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose end is never recorded (its report failed as it was written, as a killed process
    leaves it) is closed as crashed by the next run, which says what it left and sends it."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the report failed")

    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        monkeypatch.setattr(runner, "run_report", failing)
        with pytest.raises(RuntimeError, match="the report failed"):
            ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        monkeypatch.undo()
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox):
            second = run_feed(feed, settings, business_dates=[DAY])
        assert sorted(delivered_ids(sandbox)) == ["S-1", "S-2"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("crashed run ")]
    assert len(said) == 1 and said[0].endswith(
        " left 2 transactions queued, not sent yet: this run sends them"), said
    assert second.exit_code == EXIT_OK and second.summary["carried_over"] == 2, second.summary
    capsys.readouterr()
    runs_command(settings, feed=None, limit=None, as_json=True)
    crashed = [r for r in json.loads(capsys.readouterr().out) if r["status"] == "crashed"]
    assert [(r["queued"], r["balanced"]) for r in crashed] == [(2, False)]


@pytest.mark.parametrize("at", ["discover", "submit"])
def test_a_run_whose_source_goes_away_mid_run_says_what_it_left(
    tmp_path: Path, ledger_location: Path | str, sftp_server: SftpServer, sftp_dir: Path, at: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    """The SFTP connection drops as the files are listed (the run fails, exit 75, nothing read) or
    as sending starts (with a stop: the void's sale post-voided, the other sale left queued): the
    run's rows are all counted; the words say what is left, and the next run sends it."""
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, sftp_dir)
        sftp = sftp_server.feed(sftp_dir).source.model_copy(
            update={"pattern": "*.csv", "readiness": "none", "after_success": "keep"})
        feed = feed.model_copy(update={"source": sftp})
        write(sftp_dir / "a_morning.csv", MORNING)
        write(sftp_dir / "b_noon.csv", NOON)
        stop = threading.Event()

        def drop_the_connection(stage: str, event: str) -> None:
            if (stage, event) == (at, "start"):
                sftp_server.kill_sessions()
                if at == "submit":
                    stop.set()

        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox):
            if at == "discover":
                with pytest.raises(SourceUnavailableError):
                    run_feed(feed, settings, business_dates=[DAY], on_stage=drop_the_connection)
            else:
                run_feed(feed, settings, business_dates=[DAY], on_stage=drop_the_connection, stop=stop)
            told = _causes(caplog)
            second = run_feed(feed, settings, business_dates=[DAY])
        assert delivered_ids(sandbox) == ["S-2"]
    assert "does not balance" not in told and "exit 75" in told, told
    if at == "submit":
        assert told.endswith("1 transaction queued, not sent yet: the next run sends it"), told
    else:
        assert "ended by an error: SourceUnavailableError: listing sftp://" in told, told
    with Ledger(ledger_location) as ledger:
        first = ledger.runs()[-1]
    assert first.counts is not None and first.counts["unaccounted"] == {}
    assert second.exit_code == EXIT_OK and second.summary["balanced"] is True, second.summary


def test_a_run_whose_ledger_session_ends_mid_send_is_told_by_the_next_run(
    tmp_path: Path, postgres_db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ledger write fails (the PostgreSQL session ended right after the first request was
    marked in doubt): the run cannot record its end (exit 75); the next run closes it as crashed,
    says what it left, settles the one in doubt and sends the other, each once."""
    from pipeline.ledger.errors import LedgerUnavailableError
    from tests.test_pg_hostile import _end_session

    settings = settings_for(tmp_path, postgres_db)
    marked: list[str] = []
    original = Ledger.start_sending

    def mark_then_lose_the_session(self: Ledger, scope: str, ids: Sequence[str], run_id: str,
                                   **answers: Any) -> None:
        original(self, scope, ids, run_id, **answers)
        if not marked:
            marked.extend(ids)
            row = self._db.one("SELECT pg_backend_pid()")
            assert row is not None
            _end_session(postgres_db, row[0])

    drop = tmp_path / "drop"
    drop.mkdir()
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        monkeypatch.setattr(Ledger, "start_sending", mark_then_lose_the_session)
        with credentials(sandbox), pytest.raises(LedgerUnavailableError) as caught:
            run_feed(feed, settings, business_dates=[DAY])
        monkeypatch.undo()
        assert caught.value.exit_code == 75 and len(marked) == 1
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox):
            second = run_feed(feed, settings, business_dates=[DAY])
        assert sorted(delivered_ids(sandbox)) == ["S-1", "S-2"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("crashed run ")]
    assert len(said) == 1 and said[0].endswith(
        " left 1 transaction in doubt (sent, no answer recorded): this run asks the platform before "
        "sending anything; 1 transaction queued, not sent yet: this run sends it"), said
    assert second.exit_code == EXIT_OK and second.summary["balanced"] is True, second.summary
    with Ledger(postgres_db) as ledger:
        crashed = next(r for r in ledger.runs() if r.status == "crashed")
    assert crashed.counts is not None and crashed.counts["unaccounted"] == {}
