"""A sale an earlier run left ``failed_retryable`` after its request went out (the platform answered
503 / 429 / another retryable 5xx until the retries ran out) and a void of it in the next run's
files, end to end against the real sandbox of each target, on both ledgers. The sale waits for the
files as a sale in doubt does; the void names it, so it is looked up without being sent: not on
the platform, it is never sent (``post_voided``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import EXIT_OK
from pipeline.ledger import Ledger
from pipeline.runner import run_feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import credentials, delivered_ids
from tests.test_void_after_stopped_run import DAY, MORNING, NOON, local_feed, settings_for
from tests.test_void_names_sale import balances_per_currency, write


def answered(sandbox: SandboxServer, answer: str | None) -> None:
    """Every request of the platform answered ``answer`` (a fault's kind, or "429": over the rate
    limit, Retry-After a moment), or (None) as usual again."""
    config = sandbox.config
    config.fault_rate, config.fault_kinds = (0.0, config.fault_kinds) if answer in (None, "429") else (
        1.0, (answer,))
    config.requests_per_minute, config.retry_after_seconds = (0, 0.01) if answer == "429" else (None, None)


# CRM.COM's token call is rate limited too: a 429 there carries no sale (attempts 0, never sent)
@pytest.mark.parametrize(("kind", "answer"), [
    ("antavo", "error_503"), ("antavo", "error_500"), ("antavo", "429"),
    ("crmcom", "error_503"), ("crmcom", "error_500")])
def test_a_void_of_a_sale_that_failed_after_its_request_keeps_it_off_the_platform(
    tmp_path: Path, ledger_location: Path | str, kind: str, answer: str
) -> None:
    """Before, the failed sale was resent as the next run started, before its files were read: it
    landed, and the void in those files could only be ``void_of_sent_sale``."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    with SandboxServer() as sandbox:
        feed = local_feed(kind, sandbox, drop)
        if kind == "antavo":  # nothing is held on the platform: its read-back need not wait
            target = feed.target.model_copy(update={"readback_wait_seconds": 0})
            feed = feed.model_copy(update={"target": target})
        write(drop / "a_morning.csv", MORNING)

        def at(stage: str, event: str) -> None:
            if (stage, event) == ("submit", "start"):  # the credential check went through
                answered(sandbox, answer)  # every request of the sending, retries and all

        with credentials(sandbox, kind):
            first = run_feed(feed, settings, business_dates=[DAY], on_stage=at)
        answered(sandbox, None)
        assert delivered_ids(sandbox) == []
        with Ledger(ledger_location) as ledger:
            left = {t.transaction_id: (t.state.value, t.attempts > 0)
                    for t in ledger.day_transactions(feed.name, DAY.isoformat())}
        assert left == {"S-1": ("failed_retryable", True), "S-2": ("failed_retryable", True)}, first.summary

        write(drop / "b_noon.csv", NOON)
        with credentials(sandbox, kind):
            second = run_feed(feed, settings, business_dates=[DAY])
        delivered = sorted(delivered_ids(sandbox))

    assert delivered == ["S-2"]  # S-1 never reached the platform
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions(feed.name, DAY.isoformat())}
    settled = {tid: (t.state.value, t.last_error_code) for tid, t in rows.items()}
    assert settled == {"S-1": ("void", "post_voided"), "S-2": ("accepted", None), "V-1": ("void", None)}
    message = str(rows["S-1"].last_error_message)
    # its requests went out (the last run's log shows the answers): it was looked up, not "never sent"
    assert "V-1" in message and "not found on the platform" in message and "never sent" not in message
    s = second.summary
    assert second.exit_code == EXIT_OK, s
    assert (s["carried_over"], s["accepted"], s["post_voided"], s["voids_of_sent_sales"]) == (2, 1, 1, 0)
    assert s["balanced"] is True and s["waiting"] == 0 and s["in_doubt"] == 0
    assert second.reports_path is not None
    balances_per_currency(second.reports_path)
