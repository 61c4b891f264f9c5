"""`posfeed rerun` and `posfeed report` given names the ledger does not hold, dates to come, or
selectors that contradict each other: a usage error (exit 2) naming them, nothing recorded or sent.

Against both ledger backends (``ledger_location``: SQLite, PostgreSQL), through the CLI."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.errors import EXIT_OK, EXIT_TEMPFAIL
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import copy_samples, credentials, delivered_ids, feed_toml, sample_feed, stats

FILES = ("pos_LON01_20261120_10.csv", "pos_LON01_20261120_11.csv", "pos_BER01_20261120_11.csv")
TOMORROW = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()  # past every timezone's today


@pytest.fixture
def failed_run(sandbox: SandboxServer, tmp_path: Path, ledger_location: Path | str) -> Iterator[
        tuple[SandboxServer, list[str], dict]]:
    """Feeds `shop` and `other` (scopes of their own) and one run of `shop` whose sends all failed."""
    folder = tmp_path / "drop"
    copy_samples(folder, FILES)
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir()
    with credentials(sandbox):
        shop = sample_feed("acme_hourly", sandbox, folder=folder, max_attempts=1)
        (feeds_dir / "shop.toml").write_text(feed_toml(shop), encoding="utf-8")
        (feeds_dir / "other.toml").write_text(feed_toml(sample_feed("bistro", sandbox, folder=folder)),
                                              encoding="utf-8")
        base = ["--state-dir", str(tmp_path / "state"), "--reports-dir", str(tmp_path / "reports"),
                "--feeds-dir", str(feeds_dir)]
        if not isinstance(ledger_location, Path):
            base += ["--ledger-url", ledger_location]
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
        first = CliRunner().invoke(cli, [*base, "run", "--feed", "shop", "--business-date", "2026-11-20",
                                         "--json"])
        assert first.exit_code == EXIT_TEMPFAIL, first.output
        sandbox.config.fault_rate = 0.0
        yield sandbox, base, json.loads(first.stdout)


def _invoke(base: list[str], *args: str) -> Result:
    return CliRunner().invoke(cli, [*base, *args])


def _run_ids(base: list[str]) -> list[str]:
    listing = _invoke(base, "runs", "--json")
    return [r["run_id"] for r in json.loads(listing.stdout)]


@pytest.mark.parametrize(("args", "named"), [
    (("--feed", "shop", "--file", "pos_LON01_20261120_99.csv"), "--file"),
    (("--feed", "shop", "--file", "drop/pos_LON01_20261120_10.csv"), "--file"),  # a path, not a name
    (("--feed", "shop", "--store", "ZZZ01"), "--store"),
    (("--feed", "shop", "--business-date", "2026-11-19"), "--business-date"),
    (("--feed", "shop", "--business-date", TOMORROW), "--business-date"),
    (("--feed", "other", "--store", "LON01"), "--store"),  # a store of another feed
    (("--feed", "shop", "--file", "pos_LON01_20261120_10.csv", "--store", "BER01"), "--store"),
    (("--feed", "shop", "--file", "pos_BER01_20261120_11.csv", "--business-date", "2026-11-19"),
     "--business-date"),
])
def test_a_rerun_of_what_the_ledger_does_not_hold_is_a_usage_error(
    failed_run: tuple[SandboxServer, list[str], dict], args: tuple[str, ...], named: str
) -> None:
    sandbox, base, _ = failed_run
    runs_before = _run_ids(base)
    for dry in ((), ("--dry-run",)):
        result = _invoke(base, "rerun", *args, *dry, "--json")
        assert result.exit_code == 2, result.output
        assert named in result.stderr and "Usage:" in result.stderr
        assert result.stdout == ""
    assert _run_ids(base) == runs_before  # nothing recorded
    assert stats(sandbox)["events_accepted"] == 0


def test_a_run_id_of_another_feed_than_feed_is_a_usage_error(
    failed_run: tuple[SandboxServer, list[str], dict]
) -> None:
    sandbox, base, first = failed_run
    runs_before = _run_ids(base)
    result = _invoke(base, "rerun", first["run_id"], "--feed", "other", "--json")
    assert result.exit_code == 2, result.output
    assert "RUN_ID" in result.stderr and "--feed" in result.stderr and "shop" in result.stderr
    assert _run_ids(base) == runs_before
    assert stats(sandbox)["events_accepted"] == 0

    # what each selector and their combination name is resent once; the day balances
    by_file = _invoke(base, "rerun", "--feed", "shop", "--file", FILES[0], "--store", "LON01", "--json")
    assert by_file.exit_code == EXIT_OK, by_file.output
    rest = _invoke(base, "rerun", first["run_id"], "--feed", "shop", "--json")
    assert rest.exit_code == EXIT_OK, rest.output
    resent = json.loads(by_file.stdout)["accepted"] + json.loads(rest.stdout)["accepted"]
    assert resent == first["failed_retryable"]
    again = _invoke(base, "rerun", first["run_id"], "--json")  # known, nothing left to send: exit 0
    assert again.exit_code == EXIT_OK and json.loads(again.stdout)["transactions_in"] == 0
    ids = delivered_ids(sandbox)
    assert len(ids) == len(set(ids)) == first["failed_retryable"]
    day = _invoke(base, "report", "--feed", "shop", "--business-date", "2026-11-20", "--json")
    summary = json.loads(day.stdout)
    assert summary["balanced"] is True and summary["accepted"] == first["failed_retryable"]
    assert summary["transactions_in"] == first["transactions_in"]


def test_report_of_a_run_and_a_day_at_once_or_of_a_day_to_come_is_a_usage_error(
    failed_run: tuple[SandboxServer, list[str], dict]
) -> None:
    _, base, first = failed_run
    both = _invoke(base, "report", first["run_id"], "--business-date", "2026-11-20")
    assert both.exit_code == 2 and "RUN_ID" in both.stderr and "--business-date" in both.stderr
    both = _invoke(base, "report", first["run_id"], "--feed", "shop")
    assert both.exit_code == 2 and "RUN_ID" in both.stderr and "--feed" in both.stderr
    future = _invoke(base, "report", "--feed", "shop", "--business-date", TOMORROW)
    assert future.exit_code == 2 and "--business-date" in future.stderr and "future" in future.stderr


def test_a_rerun_of_a_quarantined_file_says_how_to_release_it(
    failed_run: tuple[SandboxServer, list[str], dict], tmp_path: Path
) -> None:
    """A file set aside unreadable has no transactions to rerun: the usage error names the command
    that takes it out of quarantine."""
    _, base, _ = failed_run
    bad = "pos_LON01_20261120_12.csv"
    (tmp_path / "drop" / bad).write_bytes(b"\x00\x01garbage\xff\xfe")
    run = _invoke(base, "run", "--feed", "shop", "--business-date", "2026-11-20", "--json")
    assert [f["file"] for f in json.loads(run.stdout)["unreadable_files"]] == [bad], run.output
    result = _invoke(base, "rerun", "--feed", "shop", "--file", bad)
    assert result.exit_code == 2, result.output
    hint = re.search(r"`(posfeed [^`]+)`", " ".join(result.stderr.split()))
    assert hint and hint[1].endswith(f" release {bad} --feed shop"), result.stderr
    released = CliRunner().invoke(cli, shlex.split(hint[1])[1:])  # as printed: the same state folder
    assert released.exit_code == 0 and bad in released.stdout, released.output


def test_a_rerun_whose_selection_holds_nothing_to_resend_says_so_plainly(
    failed_run: tuple[SandboxServer, list[str], dict]
) -> None:
    """Before, a rerun of a valid selection that held nothing failed printed a whole summary of
    zeros ('0 rows, 0 transactions', '0 accepted', ...); it says, in one line, that there is
    nothing to rerun and which selection, and exits 0."""
    sandbox, base, first = failed_run
    resent = _invoke(base, "rerun", "--feed", "shop", "--failed")
    assert resent.exit_code == EXIT_OK, resent.output
    assert "accepted:" in resent.stdout  # a rerun that resent something prints its summary
    accepted = stats(sandbox)["events_accepted"]
    for args, named in [(("--feed", "shop", "--failed"), "feed shop, --failed"),
                        (("--feed", "shop", "--store", "LON01", "--include-permanent"),
                         "feed shop, --store LON01, --include-permanent"),
                        ((first["run_id"],), f"run {first['run_id']}")]:
        again = _invoke(base, "rerun", *args)
        assert again.exit_code == EXIT_OK, again.output
        assert again.stdout.startswith(f"nothing to rerun: {named}:"), again.stdout
        assert len(again.stdout.strip().splitlines()) == 1, again.stdout
        assert "accepted:" not in again.stdout and "0 rows" not in again.stdout
    assert stats(sandbox)["events_accepted"] == accepted  # nothing sent twice
