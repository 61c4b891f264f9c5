"""Money per currency, a dry run that decides as a real run does, and run reports that reproduce.

Real `posfeed` subprocesses, the sandbox platform, real ledger files; the sample day mixes GBP
(LON01), EUR (BER01) and USD (NYC01) stores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Feed
from pipeline.currencies import money_text
from pipeline.reports import STATE_COLUMNS
from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import Outcome, decide_before_sending
from tests.ledger_backends import ledger_env
from tests.runner_helpers import BUSINESS_DATE, copy_samples, credentials, feed_toml, sample_feed, settings_in
from tests.sandbox_fixtures import TARGET_KITS, make_checkout

# three stores, three currencies: returns (matched and not), voids, guests and rejected rows
FILES = ("pos_LON01_20261120_13.csv", "pos_BER01_20261120_13.csv", "pos_BER01_20261120_18.csv",
         "pos_NYC01_20261120_13.csv", "pos_NYC01_20261120_18.csv")
AMOUNT_KEYS = ("amount_in", "amount_valid", "amount_rejected")


def _posfeed(tmp: Path, state: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run `posfeed` in a subprocess; its stdout (exit 0 or 65: the sample has rejected rows)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / state), "--reports-dir",
         str(tmp / state / "reports"), *args],
        env=env or dict(os.environ), capture_output=True, text=True, cwd=tmp, timeout=300, check=False,
    )
    assert proc.returncode in (0, 65), proc.stderr[-3000:]
    return proc.stdout


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    copy_samples(tmp_path / "drop", FILES)
    return tmp_path / "drop"


@pytest.fixture
def live(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    with credentials(sandbox):
        yield sandbox


def test_a_day_in_three_currencies_is_totalled_per_currency(
    sandbox: SandboxServer, drop: Path, tmp_path: Path
) -> None:
    feed_file = tmp_path / "shops.toml"
    feed_file.write_text(feed_toml(sample_feed("acme_hourly", sandbox, folder=drop)), encoding="utf-8")
    env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
    files = [str(drop / name) for name in FILES]

    checked = json.loads(_posfeed(tmp_path, "check", ["check", *files, "--json"]))
    assert set(checked["currencies"]) == {"GBP", "EUR", "USD"}
    assert [checked[k] for k in AMOUNT_KEYS] == [None] * 3  # a sum of currencies means nothing
    check_text = _posfeed(tmp_path, "check", ["check", *files])
    assert not re.search(r"^amounts: ", check_text, re.M)
    for currency, amounts in checked["currencies"].items():
        assert (f"amounts {currency}: in {amounts['amount_in']} = valid {amounts['amount_valid']} "
                f"+ rejected {amounts['amount_rejected']}") in check_text

    args = ["run", "--feed", str(feed_file), "--business-date", BUSINESS_DATE.isoformat()]
    # the console: one line per currency, never an amount added up across them
    dry_text = _posfeed(tmp_path, "state", [*args, "--dry-run"], env)
    assert "amount " not in dry_text and re.search(r"^  would send: [1-9]\d* ", dry_text, re.M)
    for currency in ("GBP", "EUR", "USD"):
        assert len(re.findall(rf"^  {currency}: +in -?\d+\.\d\d = valid ", dry_text, re.M)) == 1
    run = json.loads(_posfeed(tmp_path, "state", [*args, "--json"], env))
    assert run["balanced"] is True and run["accepted"] > 0
    currencies = run["currencies"]
    assert set(currencies) == {"GBP", "EUR", "USD"}
    assert [run[k] for k in (*AMOUNT_KEYS, "amount_accepted")] == [None] * 4
    for currency, amounts in currencies.items():  # the run counts the money the check counted
        assert {k: amounts[k] for k in AMOUNT_KEYS} == checked["currencies"][currency]
        amount_in, valid, rejected = (Decimal(amounts[k]) for k in AMOUNT_KEYS)
        assert amount_in == valid + rejected
        assert re.fullmatch(r"-?\d+\.\d\d", amounts["amount_accepted"])  # the currency's minor units

    rows = _csv(Path(run["reports_path"]) / "summary.csv")
    header = list(rows[0])
    assert header[header.index("business_date") + 1] == "currency"
    for currency, amounts in currencies.items():  # balanced per currency, row by row and in total
        mine = [r for r in rows if r["currency"] == currency]
        assert mine and all(r["balanced"] == "true" for r in mine)
        amount_in = sum((Decimal(r["amount_in"]) for r in mine), Decimal(0))
        assert money_text(amount_in, currency) == amounts["amount_in"]
        in_states = sum((Decimal(r[f"{name}_amount"]) for r in mine for name, _ in STATE_COLUMNS), Decimal(0))
        assert in_states == amount_in
        accepted = sum((Decimal(r["accepted_amount"]) for r in mine), Decimal(0))
        assert money_text(accepted, currency) == amounts["amount_accepted"]
    store_currency = {"LON01": "GBP", "BER01": "EUR", "NYC01": "USD"}
    assert all(store_currency[r["store_id"]] == r["currency"] for r in rows)  # a row never mixes two



def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("rows_in", "transactions_in", "transactions_valid", "transactions_rejected", "duplicates",
            "conflicts", "voids", "not_sent", "currencies")
    counts = {k: summary[k] for k in keys}
    counts["currencies"] = {c: {k: a[k] for k in AMOUNT_KEYS} for c, a in summary["currencies"].items()}
    return counts


def _feed(sandbox: SandboxServer, drop: Path, target_kind: str) -> Feed:
    return sample_feed("acme_hourly", sandbox, folder=drop, target_kind=target_kind, max_attempts=1)


def test_a_dry_run_decides_as_the_real_run_does(
    sandbox: SandboxServer, target_kind: str, drop: Path, tmp_path: Path
) -> None:
    """Same day, separate state folders: only accepted / failed against would-send differ."""
    with credentials(sandbox, target_kind):
        feed = _feed(sandbox, drop, target_kind)
        dry = run_feed(feed, settings_in(tmp_path / "dry"), business_dates=[BUSINESS_DATE], dry_run=True)
        real = run_feed(feed, settings_in(tmp_path / "real"), business_dates=[BUSINESS_DATE])
    d, r = dry.summary, real.summary
    assert d["not_sent"] > 0  # unmatched returns (and CRM.COM's guests) are decided without sending
    assert _counts(d) == _counts(r)
    sent = r["accepted"] + r["failed_permanent"] + r["failed_retryable"]
    # returns whose sale has not arrived wait in both (decided without the platform's answer)
    assert d["failed_retryable"] > 0 and d["failed_permanent"] == 0
    assert d["queued"] + d["failed_retryable"] == sent and d["accepted"] == 0 and r["queued"] == 0
    assert d["balanced"] is True and r["balanced"] is True

    def outcomes(summary: dict[str, Any]) -> dict[str, tuple[str, str]]:
        assert summary["reports_path"]
        return {row["transaction_id"]: (row["state"], row["error_code"])
                for row in _csv(Path(summary["reports_path"]) / "detail.csv")
                if row["state"] in ("not_sent", "void", "rejected")
                or row["error_code"] == "original_not_found"}

    assert outcomes(dry.to_dict()) == outcomes(real.to_dict())  # the same ones, with the same codes


def test_report_of_a_run_is_reproduced_after_a_rerun_of_it(
    live: SandboxServer, drop: Path, tmp_path: Path, ledger_location: Path | str
) -> None:
    """On both ledgers: `posfeed report <run>` of a run whose rows a later run settled otherwise
    gives the bytes it gave before, and the run wrote when it ended (its kept outcomes)."""
    settings = replace(settings_in(tmp_path), ledger_url=None if isinstance(ledger_location, Path)
                       else ledger_location)
    feed = _feed(live, drop, "antavo")
    live.config.fault_rate, live.config.fault_kinds = 1.0, ("error_503",)
    failed = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
    assert failed.summary["failed_retryable"] > 0 and failed.summary["accepted"] == 0
    live.config.fault_rate = 0.0
    env = {**os.environ, **ledger_env(ledger_location)}

    def report(out: str) -> Path:
        _posfeed(tmp_path, "state", ["report", failed.run_id, "--out", str(tmp_path / out)], env)
        return tmp_path / out

    before = report("before")
    rerun = rerun_feed(feed, settings, RerunSelection(run_id=failed.run_id))
    assert rerun.reports_path is not None
    with (rerun.reports_path / "detail.csv").open(encoding="utf-8", newline="") as handle:
        still = [(r["state"], r["error_code"]) for r in csv.DictReader(handle)
                 if r["state"] == "failed_retryable"]
    # returns of sales the day never had wait for them (original_not_found); everything else went out
    assert still and set(still) == {("failed_retryable", "original_not_found")}
    resent = rerun.summary["accepted"] + rerun.summary["failed_permanent"] + len(still)
    assert resent == failed.summary["failed_retryable"] and rerun.summary["accepted"] > 0
    after = report("after")
    names = ("summary.csv", "detail.csv", "rejects.csv", "summary.json", "report.html")
    for name in names:
        assert (after / name).read_bytes() == (before / name).read_bytes(), name
    assert failed.reports_path is not None  # and the same files as the run wrote when it ended
    for name in names[:3]:
        assert (after / name).read_bytes() == (failed.reports_path / name).read_bytes(), name
    assert json.loads((after / "summary.json").read_text(encoding="utf-8"))["accepted"] == 0

    # the business day shows where every transaction is now
    day = json.loads(_posfeed(tmp_path, "state", ["--feeds-dir", str(tmp_path), "report", "--feed",
                                                  str(_feed_file(tmp_path, feed)), "--business-date",
                                                  BUSINESS_DATE.isoformat(), "--json"], env))
    assert day["failed_retryable"] == len(still) and day["accepted"] == rerun.summary["accepted"]


def _feed_file(tmp: Path, feed: Feed) -> Path:
    path = tmp / f"{feed.name}.toml"
    path.write_text(feed_toml(feed), encoding="utf-8")
    return path


def test_decisions_before_sending_need_neither_platform_nor_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What each target settles without sending; what waits for the platform is left to it."""
    for name in ("ANTAVO_API_KEY", "ANTAVO_API_SECRET", "CRMCOM_USERNAME", "CRMCOM_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    unreachable = "http://127.0.0.1:9"
    sale = make_checkout("S1")  # 2 x 6.25
    queued_sale = make_checkout("S9")  # recorded, not delivered yet
    not_delivered = {**make_checkout("R4", kind="return", original_transaction_id="S9"),
                     "original_event_ids": [], "original_total": Decimal("12.50"),
                     "original": {"transaction_id": "S9", "state": "queued", "event_ids": [],
                                  "customer_id": queued_sale["customer_id"], "is_guest": False,
                                  "currency": queued_sale["currency"],
                                  "items": [{k: i[k] for k in ("product_id", "quantity", "line_total")}
                                            for i in queued_sale["items"]]}}
    rows = [sale, make_checkout("G1", customer_id=None),
            make_checkout("R1", kind="return", original_transaction_id="S1", quantity="1"),
            make_checkout("R2", kind="return"),
            make_checkout("R3", kind="return", original_transaction_id="S1"),
            not_delivered]
    crmcom = Feed.model_validate({"name": "c", "target": {"kind": "crmcom", "base_url": unreachable}})
    decided = {r.transaction_id: (r.outcome, r.error_code) for r in decide_before_sending(crmcom, rows)}
    # R1 (one of S1's two) goes out as an ad hoc return; R3 (both of S1's two) would give back more
    # than is left after R1; R4 waits for its sale: neither R1 nor R4 is decided without the platform
    assert decided == {"G1": (Outcome.NOT_SENT, "crmcom_guest"),
                       "R2": (Outcome.NOT_SENT, "unmatched_return"),
                       "R3": (Outcome.NOT_SENT, "already_returned")}
    antavo = Feed.model_validate({"name": "a", "target": {"kind": "antavo", "base_url": unreachable,
                                                          "send_guests": False}})
    decided = {r.transaction_id: (r.outcome, r.error_code) for r in decide_before_sending(antavo, rows)}
    assert decided == {"G1": (Outcome.NOT_SENT, "guest_not_sent"),
                       "R2": (Outcome.NOT_SENT, "unmatched_return")}
