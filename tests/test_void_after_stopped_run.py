"""A sale an earlier run left unsent (stopped, or the platform refused our credentials) and a void
of it in the next file, end to end against the real sandbox of each target, with real files, on
both ledgers: the next run reads its files before it sends what it carries over, so the void is
known first and the sale is never sent (``post_voided``); what carries over is sent all the same
when the source cannot be listed (a dropped SFTP connection), and a run stopped while it reads
leaves it queued for the next run, which sends it once."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from pipeline.config import Feed, Settings
from pipeline.errors import EXIT_CONFIG, EXIT_OK, EXIT_TEMPFAIL, SourceUnavailableError
from pipeline.ledger import Ledger
from pipeline.runner import RunSummary, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import credentials, delivered_ids, settings_in
from tests.sandbox_fixtures import TARGET_KITS
from tests.sftp_fixtures import SftpServer
from tests.test_crmcom_returns_e2e import WINE, YOG, line
from tests.test_void_names_sale import balances_per_currency, write

DAY = date(2026, 11, 20)
MORNING = [  # with credentials refused, the first request (S-2's) goes out, S-1's never does
    line("S-2", "M2", "sale", 1, *YOG, 2, "5.40"),
    line("S-1", "M1", "sale", 1, *WINE, 1, "11.49"),
]
NOON = [line("V-1", "M1", "void", 1, *WINE, 1, "11.49", original="S-1", hour="12")]  # of S-1


def settings_for(tmp: Path, location: Path | str) -> Settings:
    settings = settings_in(tmp)
    return settings if isinstance(location, Path) else replace(settings, ledger_url=location)


def local_feed(kind: str, sandbox: SandboxServer, drop: Path) -> Feed:
    feed = TARGET_KITS[kind].feed(sandbox, bulk_size=1, max_concurrency=1)  # one request at a time
    return feed.model_copy(update={
        "timezone": "Europe/Berlin",
        "source": feed.source.model_copy(
            update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"}),
    })


def ended_before_sending(feed: Feed, settings: Settings, sandbox: SandboxServer, kind: str,
                         ending: str) -> RunSummary:
    """A run that reads the morning's file and sends none of it: stopped (SIGTERM's event) or its
    credentials refused (rotated on the platform) as sending starts."""
    stop = threading.Event()
    secret = sandbox.config.api_secret

    def at(stage: str, event: str) -> None:
        if (stage, event) == ("submit", "start"):
            if ending == "stopped":
                stop.set()
            else:
                sandbox.config.api_secret = "rotated-on-the-platform"

    with credentials(sandbox, kind):
        first = run_feed(feed, settings, business_dates=[DAY], stop=stop, on_stage=at)
    sandbox.config.api_secret = secret
    return first


@pytest.mark.parametrize(("kind", "ending"), [("antavo", "stopped"), ("crmcom", "stopped"),
                                              ("antavo", "refused")])
def test_a_void_read_after_a_stopped_run_keeps_its_sale_off_the_platform(
    tmp_path: Path, ledger_location: Path | str, kind: str, ending: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed(kind, sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        first = ended_before_sending(feed, settings, sandbox, kind, ending)
        assert delivered_ids(sandbox) == []
        assert first.summary["queued"] == 2
        assert first.exit_code == (EXIT_TEMPFAIL if ending == "stopped" else EXIT_CONFIG)

        write(drop / "b_noon.csv", NOON)
        with credentials(sandbox, kind):
            second = run_feed(feed, settings, business_dates=[DAY])
        delivered = sorted(delivered_ids(sandbox))

    assert delivered == ["S-2"]  # S-1 never reached the platform
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    settled = {tid: (t.state.value, t.last_error_code) for tid, t in rows.items()}
    assert settled == {"S-1": ("void", "post_voided"), "S-2": ("accepted", None), "V-1": ("void", None)}
    assert "V-1" in str(rows["S-1"].last_error_message)
    s = second.summary
    assert second.exit_code == EXIT_OK, s
    assert (s["carried_over"], s["accepted"], s["post_voided"], s["voids_of_sent_sales"]) == (2, 1, 1, 0)
    assert s["balanced"] is True and s["waiting"] == 0
    assert second.reports_path is not None
    balances_per_currency(second.reports_path)


def test_credentials_refused_as_sending_starts_say_how_many_wait_for_the_next_run(
    tmp_path: Path, ledger_location: Path | str, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch the refusal cut short counts in what is left for the next run, not only the
    batches after it (the log said "0 transactions left" while both of its sales were)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)  # its rotated secret refuses the requests
        write(drop / "a_morning.csv", MORNING)
        with caplog.at_level("ERROR", logger="pipeline.stages.submit"):
            first = ended_before_sending(feed, settings_for(tmp_path, ledger_location), sandbox, "antavo",
                                         "refused")
        assert delivered_ids(sandbox) == []
    assert first.summary["queued"] + first.summary["failed_retryable"] == 2
    refusals = [r.getMessage() for r in caplog.records
                if r.name == "pipeline.stages.submit" and "refused our credentials" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].endswith("; 2 transactions left for the next run"), refusals


def test_carried_over_sales_are_sent_when_the_source_cannot_be_listed(
    tmp_path: Path, ledger_location: Path | str, sftp_server: SftpServer, sftp_dir: Path
) -> None:
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, sftp_dir)
        sftp = sftp_server.feed(sftp_dir).source.model_copy(
            update={"pattern": "*.csv", "readiness": "none", "after_success": "keep"})
        feed = feed.model_copy(update={"source": sftp})
        write(sftp_dir / "a_morning.csv", MORNING)
        first = ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        assert first.summary["queued"] == 2 and delivered_ids(sandbox) == []

        write(sftp_dir / "b_noon.csv", NOON)
        killed: list[int] = []

        def drop_the_connection(stage: str, event: str) -> None:
            if (stage, event) == ("discover", "start"):  # logged in, then the server goes away
                killed.append(sftp_server.kill_sessions())

        with credentials(sandbox), pytest.raises(SourceUnavailableError) as failed:
            run_feed(feed, settings, business_dates=[DAY], on_stage=drop_the_connection)
        delivered = sorted(delivered_ids(sandbox))

    assert killed and killed[0] > 0 and failed.value.exit_code == EXIT_TEMPFAIL
    assert delivered == ["S-1", "S-2"]  # nothing waits behind a source that cannot be listed
    with Ledger(ledger_location) as ledger:
        runs = ledger.runs()
        rows = {t.transaction_id: t.state.value for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    assert rows == {"S-1": "accepted", "S-2": "accepted"}  # the void's file was never read
    assert runs[0].status == "failed" and runs[0].exit_code == EXIT_TEMPFAIL


def test_a_run_stopped_while_it_reads_leaves_the_carried_over_work_to_the_next(
    tmp_path: Path, ledger_location: Path | str
) -> None:
    """Stopped once the void's file is read and before anything is sent: the void has post-voided
    its sale, the other sale stays queued, and the next run sends it, once."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        write(drop / "b_noon.csv", NOON)
        second = ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        assert delivered_ids(sandbox) == []
        with credentials(sandbox):
            third = run_feed(feed, settings, business_dates=[DAY])
        delivered = delivered_ids(sandbox)

    assert (second.exit_code, second.summary["status"], second.summary["files_new"]) == (
        EXIT_TEMPFAIL, "stopped", ["b_noon.csv"])
    s = second.summary
    assert (s["carried_over"], s["post_voided"], s["queued"]) == (2, 1, 1)
    assert delivered == ["S-2"]  # once
    assert third.exit_code == EXIT_OK and (third.summary["carried_over"], third.summary["accepted"]) == (1, 1)
    assert third.summary["files_new"] == [] and third.summary["balanced"] is True
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: (t.state.value, t.last_error_code)
                for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    assert rows == {"S-1": ("void", "post_voided"), "S-2": ("accepted", None), "V-1": ("void", None)}
