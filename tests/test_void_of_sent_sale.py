"""A void naming a sale the platform already holds, end to end: `posfeed run` processes (real
subprocesses) against the real CRM.COM sandbox. A void is never sent (Antavo neither refunds nor
cancels for one), so the sale's purchase stays on CRM.COM with its points: the void is reported as
`void_of_sent_sale`, to act on, in detail.csv, summary.csv, summary.json, the console and
`posfeed runs`, while a sale and its void in the same file are both void and neither is sent (the
sale coded `post_voided`, tests/test_void_names_sale.py has every order). The reports balance per
currency."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from pipeline.ledger import Ledger
from pipeline.sandbox.crmcom import PLATFORM
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import REPO, feed_toml
from tests.sandbox_fixtures import crmcom_env, crmcom_feed
from tests.test_crmcom_returns_e2e import HEADER, WINE, YOG, line, listing, posfeed

MORNING = [
    line("S-1", "M1", "sale", 1, *WINE, 1, "19.59"),
    line("S-1", "M1", "sale", 2, *YOG, 3, "19.59"),
    line("S-2", "M2", "sale", 1, *YOG, 2, "5.40"),
]
AFTERNOON = [
    # voided at the till, naming S-1: sent to CRM.COM this morning
    line("V-1", "M1", "void", 1, *WINE, 1, "19.59", original="S-1", hour="15"),
    line("V-1", "M1", "void", 2, *YOG, 3, "19.59", original="S-1", hour="15"),
    # a sale and its void in one file: the sale is never sent (post_voided)
    line("S-3", "M3", "sale", 1, *WINE, 1, "11.49", hour="16"),
    line("V-3", "M3", "void", 1, *WINE, 1, "11.49", original="S-3", hour="16"),
    line("V-4", "M4", "void", 1, *YOG, 1, "2.70", hour="16"),  # names nothing
]


def test_a_void_of_a_sale_already_on_crmcom_is_reported_to_act_on(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    with SandboxServer() as sandbox:
        feed = crmcom_feed(sandbox, "crmvoid", bulk_size=1)
        feed = feed.model_copy(update={
            "timezone": "Europe/Berlin",
            "source": feed.source.model_copy(
                update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"}),
        })
        feed_file = tmp_path / "crmvoid.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **crmcom_env(sandbox)}
        run = ("run", "--feed", str(feed_file), "--business-date", "2026-11-20")
        (drop / "morning.csv").write_text("\n".join([HEADER, *MORNING]) + "\n", encoding="utf-8")
        first = posfeed(tmp_path, env, *run)
        assert (first["accepted"], first["balanced"]) == (2, True)
        (drop / "afternoon.csv").write_text("\n".join([HEADER, *AFTERNOON]) + "\n", encoding="utf-8")
        console = text(tmp_path, env, *run)  # the afternoon run, as an operator sees it
        runs_table = text(tmp_path, env, "runs")
        runs = posfeed(tmp_path, env, "runs")
        purchases = {p["transaction_id"]: p["status"] for p in listing(sandbox, "crmcom")}
        s1 = sandbox.state.get_transaction(PLATFORM, "S-1")
    assert isinstance(runs, list) and runs[1]["run_id"] == first["run_id"]
    second = posfeed(tmp_path, env, "report", runs[0]["run_id"])

    # nothing is cancelled: a void is never sent (as on Antavo); S-1 stays on CRM.COM
    assert purchases == {"S-1": "accepted", "S-2": "accepted"}
    assert s1 is not None and s1["life_cycle_state"] == "POSTED"
    # ... and says so, naming the sale and its purchase
    with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
        rows = {t.transaction_id: t for t in ledger.day_transactions("crmvoid", "2026-11-20")}
    settled = {tid: (t.state.value, t.last_error_code) for tid, t in rows.items()}
    assert settled == {
        "S-1": ("accepted", None), "S-2": ("accepted", None), "S-3": ("void", "post_voided"),
        "V-1": ("void", "void_of_sent_sale"), "V-3": ("void", None), "V-4": ("void", None),
    }
    message = str(rows["V-1"].last_error_message)
    assert "S-1" in message and rows["S-1"].event_ids[0] in message

    assert second["voids"] == 4 and second["voids_of_sent_sales"] == 1 and second["balanced"] is True
    assert second["currencies"]["EUR"]["amount_void_of_sent_sale"] == "19.59"
    report = Path(second["reports_path"])
    with (report / "summary.csv").open(encoding="utf-8", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert sum(int(r["void_of_sent_sale_count"]) for r in summary) == 1
    assert sum(Decimal(r["void_of_sent_sale_amount"]) for r in summary) == Decimal("19.59")
    assert all(r["balanced"] == "true" for r in summary)
    for currency in {r["currency"] for r in summary}:
        mine = [r for r in summary if r["currency"] == currency]
        assert sum(Decimal(r["amount_in"]) for r in mine) == sum(Decimal(r["amount_accounted"]) for r in mine)
    with (report / "detail.csv").open(encoding="utf-8", newline="") as handle:
        detail = {r["transaction_id"]: r for r in csv.DictReader(handle)}
    assert (detail["V-1"]["state"], detail["V-1"]["error_code"]) == ("void", "void_of_sent_sale")
    assert json.loads((report / "summary.json").read_text(encoding="utf-8"))["voids_of_sent_sales"] == 1

    assert [r["voids_of_sent_sales"] for r in runs] == [1, 0]
    header, newest = runs_table.splitlines()[:2]
    assert header.split()[-2:] == ["voids_of_sent_sales", "balanced"] and newest.split()[-2:] == ["1", "yes"]
    assert "4 voids (1 of a sale already on the platform: act on it" in console


def text(tmp: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args], env=env, capture_output=True, text=True, cwd=REPO, timeout=300,
        check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
