"""A sale an earlier run left in doubt (``sending``: its request went out, the answer was lost or
the process was killed) and a void of it in the next run's files, end to end against the real
sandbox of each target, with real files, on both ledgers. The run looks the sale up without
sending it once the void is known: not on the platform, it is never sent (``post_voided``); on the
platform, it is settled accepted once and the void is coded to act on (``void_of_sent_sale``)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.errors import EXIT_OK
from pipeline.ledger import Ledger
from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import credentials, delivered_ids, stats
from tests.test_crmcom_returns_e2e import WINE, line
from tests.test_void_after_stopped_run import (
    DAY,
    MORNING,
    NOON,
    ended_before_sending,
    local_feed,
    settings_for,
)
from tests.test_void_names_sale import balances_per_currency, read_csv, write


def left_in_doubt(location: Path | str, transaction_id: str, customer: str | None = None) -> None:
    """As a run killed while its request was out leaves a sale: in doubt, one attempt, an hour ago,
    its checkout with the customer id in clear (``customer``: as before the end of the run that
    accepted it masked it; a checkout that may be sent again keeps it)."""
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    with Ledger(location) as ledger, ledger._db.transaction() as db:
        db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ? "
                   "WHERE transaction_id = ?", (hour_ago, transaction_id))
        if customer is not None:
            db.execute(f"UPDATE transactions SET checkout = {db.json_set_text('checkout', 'customer_id')} "
                       "WHERE transaction_id = ?", (customer, transaction_id))


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_void_of_a_sale_in_doubt_that_had_not_landed_keeps_it_off_the_platform(
    tmp_path: Path, ledger_location: Path | str, kind: str
) -> None:
    """Before, the sale was resent as the run started, before the void was read: a voided sale
    landed on the platform (points for a cancelled sale) and the void was ``void_of_sent_sale``."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed(kind, sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        ended_before_sending(feed, settings, sandbox, kind, "stopped")
        assert delivered_ids(sandbox) == []
        left_in_doubt(ledger_location, "S-1")  # its request went out and never reached the platform

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
    assert s["balanced"] is True and s["waiting"] == 0 and s["in_doubt"] == 0
    assert second.reports_path is not None
    balances_per_currency(second.reports_path)


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_void_of_a_sale_in_doubt_that_had_landed_is_coded_to_act_on(
    tmp_path: Path, ledger_location: Path | str, kind: str
) -> None:
    """The sale's request landed and its answer was lost: found on the platform, it is settled
    accepted (never sent twice) and its void is ``void_of_sent_sale``."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed(kind, sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        with credentials(sandbox, kind):
            first = run_feed(feed, settings, business_dates=[DAY])
        assert first.exit_code == EXIT_OK and sorted(delivered_ids(sandbox)) == ["S-1", "S-2"]
        left_in_doubt(ledger_location, "S-1", "M1")  # it landed, its answer was lost

        write(drop / "b_noon.csv", NOON)
        with credentials(sandbox, kind):
            second = run_feed(feed, settings, business_dates=[DAY])
        delivered = sorted(delivered_ids(sandbox))

    assert delivered == ["S-1", "S-2"]  # each once
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    settled = {tid: (t.state.value, t.last_error_code) for tid, t in rows.items()}
    assert settled == {"S-1": ("accepted", rows["S-1"].last_error_code), "S-2": ("accepted", None),
                       "V-1": ("void", "void_of_sent_sale")}
    assert "S-1" in str(rows["V-1"].last_error_message)
    s = second.summary
    assert second.exit_code == EXIT_OK, s
    assert (s["carried_over"], s["post_voided"], s["voids_of_sent_sales"]) == (1, 0, 1)
    assert s["balanced"] is True and s["in_doubt"] == 0
    assert second.reports_path is not None
    balances_per_currency(second.reports_path)


def test_a_run_that_ends_before_it_post_voids_the_sale_it_looked_up_leaves_it_to_the_next(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """The run's end comes between the lookup's answer (recorded: refused, ``voided_in_doubt``)
    and the post-void of the sale: the next run post-voids it before anything else, sends nothing.
    The ended run's cause says so, not that a rerun with --include-permanent sends it again."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        left_in_doubt(ledger_location, "S-1")
        write(drop / "b_noon.csv", NOON)

        def ended(_ledger: Ledger, _scope: str, _run_id: str, row_ids: list[int]) -> None:
            if row_ids:  # after a submission
                raise RuntimeError("the run ended here")

        monkeypatch.setattr(runner, "settle_voided_sales", ended)
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox), pytest.raises(RuntimeError):
            run_feed(feed, settings, business_dates=[DAY])
        with Ledger(ledger_location) as ledger:
            left = {t.transaction_id: (t.state.value, t.last_error_code)
                    for t in ledger.day_transactions(feed.name, DAY.isoformat())}
        assert left["S-1"] == ("failed_permanent", "voided_in_doubt")
        told = " ".join(r.getMessage() for r in caplog.records if "cause:" in r.getMessage())
        assert "the next run or `posfeed rerun --feed antavo-test --failed` post-voids" in told, told
        assert "--include-permanent` sends them again" not in told, told
        monkeypatch.undo()

        with credentials(sandbox):
            third = run_feed(feed, settings, business_dates=[DAY])
        delivered = sorted(delivered_ids(sandbox))

    assert delivered == ["S-2"]
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    assert {tid: (t.state.value, t.last_error_code) for tid, t in rows.items()} == {
        "S-1": ("void", "post_voided"), "S-2": ("accepted", None), "V-1": ("void", None)}
    assert "V-1" in str(rows["S-1"].last_error_message)
    assert third.exit_code == EXIT_OK and third.summary["post_voided"] == 1, third.summary
    assert third.summary["balanced"] is True


def test_an_antavo_guests_sale_in_doubt_cannot_be_read_back_and_is_resent(
    tmp_path: Path, ledger_location: Path | str
) -> None:
    """A guest's transactions cannot be read (no customer): the sale in doubt is resent as any in
    doubt, so one that had not landed lands now and its void is ``void_of_sent_sale``, to act on
    (docs/OPERATIONS.md says so)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    guest = [line("S-1", "", "sale", 1, *WINE, 1, "11.49"), MORNING[0]]
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", guest)
        ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        left_in_doubt(ledger_location, "S-1")
        write(drop / "b_noon.csv", [line("V-1", "", "void", 1, *WINE, 1, "11.49", original="S-1", hour="12")])
        with credentials(sandbox):
            second = run_feed(feed, settings, business_dates=[DAY])
        delivered = sorted(delivered_ids(sandbox))

    assert delivered == ["S-1", "S-2"]
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: (t.state.value, t.last_error_code)
                for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    assert rows == {"S-1": ("accepted", None), "S-2": ("accepted", None),
                    "V-1": ("void", "void_of_sent_sale")}
    assert second.exit_code == EXIT_OK and second.summary["voids_of_sent_sales"] == 1, second.summary
    assert second.summary["balanced"] is True


def test_a_sale_just_left_in_doubt_is_read_back_no_sooner_than_the_read_back_wait(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the platform still holds lands within ``readback_wait_seconds``: a sale whose
    request may have gone out a moment ago is read back only once that wait has passed since (as
    a refund's is), so a late landing is found rather than the sale post-voided beside it."""
    from pipeline.sinks.antavo import AntavoAdapter

    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    reads: list[tuple[float, str]] = []
    original_get = AntavoAdapter._get

    async def timed_get(self: AntavoAdapter, url: str, *args: object, **kwargs: object) -> object:
        reads.append((time.time(), url))
        return await original_get(self, url, *args, **kwargs)  # type: ignore[arg-type]

    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        feed = feed.model_copy(update={"target": feed.target.model_copy(update={"readback_wait_seconds": 2})})
        write(drop / "a_morning.csv", MORNING)
        ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        marked = time.time()  # its request went out just now
        with Ledger(ledger_location) as ledger, ledger._db.transaction() as db:
            db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ? "
                       "WHERE transaction_id = 'S-1'",
                       (datetime.fromtimestamp(marked, UTC).isoformat(timespec="microseconds"),))
        write(drop / "b_noon.csv", NOON)
        monkeypatch.setattr(AntavoAdapter, "_get", timed_get)
        with credentials(sandbox, "antavo"):
            second = run_feed(feed, settings, business_dates=[DAY])
        assert delivered_ids(sandbox) == ["S-2"]
    read_sale = [at for at, url in reads if "id=S-1" in url]
    assert read_sale and min(read_sale) >= marked + 2, (read_sale, marked)
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    assert (rows["S-1"].state.value, rows["S-1"].last_error_code) == ("void", "post_voided")
    assert second.exit_code == EXIT_OK and second.summary["balanced"] is True


@pytest.mark.parametrize("include_permanent", [False, True])
def test_a_rerun_post_voids_the_sale_a_run_looked_up_and_ended_before_post_voiding(
    tmp_path: Path, ledger_location: Path | str, monkeypatch: pytest.MonkeyPatch, include_permanent: bool
) -> None:
    """As the next plain run does, a rerun post-voids first the sale left refused
    (``voided_in_doubt``) by a run that ended before its post-void, and sends nothing of it: before,
    it stayed failed_permanent with a plain void (``--failed``, and ``--include-permanent`` too:
    selected, it was looked up again and left refused, never post-voided)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed("antavo", sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        ended_before_sending(feed, settings, sandbox, "antavo", "stopped")
        left_in_doubt(ledger_location, "S-1")
        write(drop / "b_noon.csv", NOON)

        def ended(_ledger: Ledger, _scope: str, _run_id: str, row_ids: list[int]) -> None:
            if row_ids:  # after a submission
                raise RuntimeError("the run ended here")

        monkeypatch.setattr(runner, "settle_voided_sales", ended)
        with credentials(sandbox), pytest.raises(RuntimeError):
            run_feed(feed, settings, business_dates=[DAY])
        monkeypatch.undo()

        with credentials(sandbox):
            rerun = rerun_feed(feed, settings,
                               RerunSelection(failed=True, include_permanent=include_permanent))
        delivered = sorted(delivered_ids(sandbox))

    assert "S-1" not in delivered
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    assert (rows["S-1"].state.value, rows["S-1"].last_error_code) == ("void", "post_voided")
    assert (rows["V-1"].state.value, rows["V-1"].last_error_code) == ("void", None)
    assert "V-1" in str(rows["S-1"].last_error_message)
    assert rerun.summary["post_voided"] == 1 and rerun.summary["balanced"] is True, rerun.summary


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_dry_run_shows_a_sale_in_doubt_a_void_names_as_looked_up_not_sent(
    tmp_path: Path, ledger_location: Path | str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dry run reads nothing from the platform: the sale in doubt a void names, which a real run
    looks up and never sends when the platform does not hold it, shows as that lookup finding
    nothing would leave it (``post_voided``), not as ``queued`` ("would be sent") as before; the
    real run after it, with the ledger untouched, looks it up as ever."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed(kind, sandbox, drop)
        write(drop / "a_morning.csv", MORNING)
        ended_before_sending(feed, settings, sandbox, kind, "stopped")
        left_in_doubt(ledger_location, "S-1")
        write(drop / "b_noon.csv", NOON)
        asked = stats(sandbox)["requests"]
        caplog.set_level(logging.INFO, logger="pipeline.runner")
        with credentials(sandbox, kind):
            dry = run_feed(feed, settings, business_dates=[DAY], dry_run=True)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dry run:")]
        assert stats(sandbox)["requests"] == asked  # nothing asked of the platform, nothing sent
        with credentials(sandbox, kind):
            real = run_feed(feed, settings, business_dates=[DAY])
        delivered = sorted(delivered_ids(sandbox))

    d = dry.summary
    assert dry.exit_code == EXIT_OK, d
    assert (d["post_voided"], d["queued"], d["failed_permanent"]) == (1, 1, 0), d  # S-2 would be sent
    assert d["balanced"] is True
    assert dry.reports_path is not None
    detail = {r["transaction_id"]: r for r in read_csv(dry.reports_path / "detail.csv")}
    assert "S-1" not in detail or detail["S-1"]["state"] != "queued"
    assert any("1 sale a void names would be looked up on the platform, not sent" in m for m in said), said
    assert not any("2 transactions would be sent" in m for m in said), said  # before: S-1 among them
    assert delivered == ["S-2"]
    assert (real.summary["post_voided"], real.summary["accepted"]) == (1, 1), real.summary


def test_the_exit_cause_counts_every_sale_left_to_post_void_whatever_the_ranking_of_causes() -> None:
    """The run's three most frequent failure causes are others (and each voided sale's message
    names its own void, so each is a cause of one): before, the cause counted the voided sales only
    among those three, so it said none was left to post-void and told to resend all four refused
    for good with --include-permanent, which never sends such a sale."""
    others = [{"state": "failed_retryable", "code": f"http_50{n}", "message": "server error", "count": 5}
              for n in (0, 2, 3)]
    summary = {"feed": "f", "failed_retryable": 15, "failed_permanent": 4, "voided_in_doubt": 4,
               "balanced": True, "causes": others}
    cause = runner.exit_cause(summary, 75)
    assert "post-voids the 4 sales voided at the till and not found on the platform" in cause, cause
    assert "--include-permanent" not in cause, cause
    one_refused = runner.exit_cause({**summary, "failed_permanent": 5}, 75)
    assert "why the 1 refused for good" in one_refused and "sends it again" in one_refused, one_refused
    two_refused = runner.exit_cause({**summary, "failed_permanent": 6}, 75)
    assert "why each of the 2 refused for good" in two_refused and "sends them again" in two_refused
