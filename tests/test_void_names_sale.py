"""A void and the sale it names (``original_transaction_id``), in every order, end to end:
`posfeed run` and `posfeed rerun` processes against the real sandbox of each target, on both
ledgers. A void is never sent; the sale it names is never sent either once the void is known
(code ``post_voided``, state ``void``: settled, as POSLog's post-voided transactions), whether the
void comes in the same file, a later file of the run, an earlier run, or after the platform refused
the sale; a sale already on the platform is reported to act on (``void_of_sent_sale``); a sale in
doubt is settled first (it may have landed) and is then one of the two. Every summary.csv
balances per currency."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.ledger import Ledger
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import REPO, delivered_ids, feed_toml
from tests.sandbox_fixtures import TARGET_KITS
from tests.test_crmcom_returns_e2e import HEADER, WINE, YOG, line

EARLY = [line("S-9", "M9", "sale", 1, *WINE, 1, "11.49", hour="08")]  # its answer is lost: in doubt
MORNING_A = [
    line("S-1", "M1", "sale", 1, *WINE, 1, "11.49"),
    line("S-3", "M3", "sale", 1, *YOG, 2, "5.40"),
    line("V-3", "M3", "void", 1, *YOG, 2, "5.40", original="S-3"),  # the same file
    line("S-6", "M6", "sale", 1, *WINE, 1, "11.49"),
    line("S-8", "unknown-0008", "sale", 1, *YOG, 1, "2.70"),  # the platform refuses it
]
MORNING_B = [
    line("V-6", "M6", "void", 1, *WINE, 1, "11.49", original="S-6", hour="10"),  # a later file, same run
    line("V-7", "M7", "void", 1, *YOG, 1, "2.70", original="S-7", hour="10"),  # before its sale
    line("V-9", "M9", "void", 1, *WINE, 1, "11.49", original="S-9", hour="10"),  # of a sale in doubt
]
AFTERNOON = [
    line("V-1", "M1", "void", 1, *WINE, 1, "11.49", original="S-1", hour="15"),  # S-1 is on the platform
    line("S-7", "M7", "sale", 1, *YOG, 1, "2.70", hour="15"),  # after its void
    line("V-8", "unknown-0008", "void", 1, *YOG, 1, "2.70", original="S-8", hour="15"),  # refused before
    line("R-3", "M3", "return", 1, *YOG, -2, "-5.40", original="S-3", hour="16"),  # of a voided sale
]


def test_a_sale_a_void_names_is_never_sent_unless_already_on_the_platform(
    target_kind: str, tmp_path: Path, ledger_location: Path | str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    kit = TARGET_KITS[target_kind]
    with SandboxServer() as sandbox:
        feed = kit.feed(sandbox, bulk_size=1, max_attempts=1)
        feed = feed.model_copy(update={
            "timezone": "Europe/Berlin",
            "source": feed.source.model_copy(
                update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"}),
            # a transaction left failed is resent only by a rerun
            "resume": feed.resume.model_copy(update={"max_attempts": 1}),
        })
        feed_file = tmp_path / "voids.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **kit.env(sandbox), **ledger_env(ledger_location)}
        run = ("run", "--feed", str(feed_file), "--business-date", "2026-11-20")

        write(drop / "a_early.csv", EARLY)
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("lost_response",)
        early = posfeed(tmp_path, env, *run)  # S-9 landed, its answer lost
        sandbox.config.fault_rate = 0.0
        assert early["failed_retryable"] == 1

        write(drop / "b_morning_a.csv", MORNING_A)
        write(drop / "b_morning_b.csv", MORNING_B)
        morning = posfeed(tmp_path, env, *run)
        after_morning = sorted(delivered_ids(sandbox))

        write(drop / "c_afternoon.csv", AFTERNOON)
        dry = posfeed(tmp_path, env, *run, "--dry-run")
        afternoon = posfeed(tmp_path, env, *run)
        # S-9 is settled (it landed: "already used" on Antavo, found by a lookup on CRM.COM)
        rerun = posfeed(tmp_path, env, "rerun", "--feed", str(feed_file), "--failed")
        delivered = sorted(delivered_ids(sandbox))

    # nothing a void names is sent once the void is known; S-9 landed before its void came in
    assert after_morning == ["S-1", "S-9"] and delivered == ["S-1", "S-9"]
    with Ledger(ledger_location) as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions("voids", "2026-11-20")}
    settled = {tid: (t.state.value, t.last_error_code) for tid, t in rows.items()}
    assert settled == {
        "S-1": ("accepted", None), "V-1": ("void", "void_of_sent_sale"),
        "S-3": ("void", "post_voided"), "V-3": ("void", None),
        "S-6": ("void", "post_voided"), "V-6": ("void", None),
        "S-7": ("void", "post_voided"), "V-7": ("void", None),
        "S-8": ("void", "post_voided"), "V-8": ("void", None),
        "S-9": ("accepted", rows["S-9"].last_error_code), "V-9": ("void", "void_of_sent_sale"),
        "R-3": ("not_sent", "original_not_sent"),  # nothing of S-3 reached the platform to refund
    }
    for sale, void in (("S-3", "V-3"), ("S-6", "V-6"), ("S-7", "V-7"), ("S-8", "V-8")):
        assert void in str(rows[sale].last_error_message)
    assert "S-9" in str(rows["V-9"].last_error_message)

    # each run says what it did: the morning voided S-3 and S-6 (and waits on S-9), the afternoon
    # voided S-7 and S-8 and found S-1 on the platform, the rerun found S-9 there
    assert (morning["voids"], morning["post_voided"], morning["voids_of_sent_sales"]) == (6, 2, 0)
    assert (afternoon["voids"], afternoon["post_voided"], afternoon["voids_of_sent_sales"]) == (4, 2, 1)
    assert (dry["voids"], dry["post_voided"], dry["voids_of_sent_sales"]) == (4, 2, 1)
    assert (rerun["voids_of_sent_sales"], rerun["accepted"]) == (1, 1)
    assert (afternoon["failed_permanent"], afternoon["accepted"], afternoon["not_sent"]) == (0, 0, 1)
    for summary in (early, morning, afternoon, rerun, dry):
        assert summary["balanced"] is True
        balances_per_currency(Path(summary["reports_path"]))
    detail = read_csv(Path(afternoon["reports_path"]) / "detail.csv")
    assert {r["transaction_id"]: (r["state"], r["error_code"]) for r in detail if r["transaction_id"] in
            ("S-7", "S-8", "V-1")} == {"S-7": ("void", "post_voided"), "S-8": ("void", "post_voided"),
                                       "V-1": ("void", "void_of_sent_sale")}


def write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def balances_per_currency(report: Path) -> None:
    summary = read_csv(report / "summary.csv")
    assert summary and all(r["balanced"] == "true" for r in summary)
    for currency in {r["currency"] for r in summary}:
        mine = [r for r in summary if r["currency"] == currency]
        assert sum(Decimal(r["amount_in"]) for r in mine) == sum(Decimal(r["amount_accounted"]) for r in mine)
        assert sum(int(r["transactions_in"]) for r in mine) == sum(
            int(r["transactions_accounted"]) for r in mine)


def posfeed(tmp: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args, "--json"],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )
    assert done.returncode in (0, 65, 75), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result
