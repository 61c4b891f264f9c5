"""CRM.COM returns end to end: `posfeed run` processes (real subprocesses) against the real sandbox.

One day with every return case: whole returns cancel exactly their purchases, partial returns go out
as ad hoc returns, returns that do not fit are reported with their code and never sent (a repeated
whole return included), and the reports balance with accepted money equal to what the platform holds.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import REPO, feed_toml
from tests.sandbox_fixtures import crmcom_env, crmcom_feed

HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)


def line(
    tid: str,
    customer: str,
    kind: str,
    n: int,
    product: str,
    price: str,
    qty: int,
    total: str,
    *,
    points: str = "",
    original: str = "",
    hour: str = "09",
) -> str:
    amount = Decimal(price) * qty
    return (
        f"{tid},BER01,K1,2026-11-20 {hour}:{n:02d}:00,2026-11-20,{customer},{kind},{n},{product},P{product},"
        f"cat,{qty},{price},,{amount},EUR,{total},{points},{original}"
    )


WINE, YOG = ("1005", "11.49"), ("100102", "2.70")

MORNING = [  # the sales
    line("S-1", "M1", "sale", 1, *WINE, 1, "19.59"),
    line("S-1", "M1", "sale", 2, *YOG, 3, "19.59"),
    line("S-2", "M2", "sale", 1, *YOG, 2, "5.40"),
    line("S-3", "M3", "sale", 1, *WINE, 1, "11.49"),
    line("S-4", "", "sale", 1, *YOG, 1, "2.70"),  # a guest's sale
    line("S-5", "M5", "sale", 1, *WINE, 1, "11.49"),
    line("S-6", "M6", "sale", 1, *WINE, 1, "11.49", points="100"),  # 100 points burned at the till
    line("S-7", "M7", "sale", 1, *WINE, 1, "11.49"),
    line("S-8", "M8", "sale", 1, *YOG, 1, "2.70"),
]
AFTERNOON = [  # the returns
    line("R-1", "M1", "return", 1, *WINE, -1, "-19.59", original="S-1", hour="15"),  # whole: cancels S-1
    line("R-1", "M1", "return", 2, *YOG, -3, "-19.59", original="S-1", hour="15"),
    line("R-2", "M2", "return", 1, *YOG, -1, "-2.70", original="S-2", hour="15"),  # partial: ad hoc
    line("R-3", "M9", "return", 1, *WINE, -1, "-11.49", original="S-3", hour="15"),  # another customer
    line("R-4", "M4", "return", 1, *YOG, -1, "-2.70", original="S-4", hour="15"),  # a member, a guest's sale
    line("R-4G", "", "return", 1, *YOG, -1, "-2.70", original="S-4", hour="15"),  # a guest, a guest's sale
    # the total of S-5, but product Y where S-5 sold product X
    line("R-5", "M5", "return", 1, "100102", "11.49", -1, "-11.49", original="S-5", hour="15"),
    line("R-6", "M6", "return", 1, *WINE, -1, "-11.49", original="S-6", hour="15"),  # whole: cancels S-6
    line("R-7", "M7", "return", 1, *WINE, -1, "-11.49", original="S-7", hour="15"),  # S-7 cancelled already
    line("R-8", "M8", "return", 1, *YOG, -2, "-5.40", original="S-8", hour="15"),  # more than bought
]
EVENING = [  # later returns of the same sales
    line("R-2B", "M2", "return", 1, *YOG, -1, "-2.70", original="S-2", hour="18"),  # the rest of S-2: ad hoc
    line("R-2C", "M2", "return", 1, *YOG, -1, "-2.70", original="S-2", hour="18"),  # nothing left of S-2
    line(
        "R-6B", "M6", "return", 1, *WINE, -1, "-11.49", original="S-6", hour="18"
    ),  # S-6 came back whole before
]


def posfeed(tmp: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "--state-dir",
            str(tmp / "state"),
            "--reports-dir",
            str(tmp / "reports"),
            *args,
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def listing(server: SandboxServer, platform: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.url}/_sandbox/transactions", params={"platform": platform}, timeout=10)
    records: list[dict[str, Any]] = answer.json()["transactions"]
    return records


def test_a_day_with_every_return_case(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    with SandboxServer() as sandbox:
        platform: CrmcomPlatform = sandbox.state.platforms[PLATFORM]
        platform.config.unique_reference_numbers = False  # a repeat would be stored twice
        feed = crmcom_feed(sandbox, "crmday", spend_per_point="0.01", bulk_size=5)
        feed = feed.model_copy(
            update={
                "timezone": "Europe/Berlin",
                "source": feed.source.model_copy(
                    update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"}
                ),
            }
        )
        feed_file = tmp_path / "crmday.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **crmcom_env(sandbox)}
        run = ("run", "--feed", str(feed_file), "--business-date", "2026-11-20")

        (drop / "morning.csv").write_text("\n".join([HEADER, *MORNING]) + "\n", encoding="utf-8")
        first = posfeed(tmp_path, env, *run)
        assert (first["accepted"], first["not_sent"], first["balanced"]) == (7, 1, True)
        # S-7's purchase is cancelled on the platform by someone else before its return comes
        s7 = next(r for r in listing(sandbox, "crmcom") if r["transaction_id"] == "S-7")
        platform.cancel({"customer_event_identifier": {"id": s7["events"][0]["id"]}})

        (drop / "afternoon.csv").write_text("\n".join([HEADER, *AFTERNOON]) + "\n", encoding="utf-8")
        second = posfeed(tmp_path, env, *run)
        (drop / "evening.csv").write_text("\n".join([HEADER, *EVENING]) + "\n", encoding="utf-8")
        third = posfeed(tmp_path, env, *run)
        assert second["balanced"] is True and third["balanced"] is True
        # CRM.COM's answers carry no points: none reported, not "0" (as if members earned nothing)
        assert [run["points_awarded"] for run in (first, second, third)] == [None] * 3
        with (Path(first["reports_path"]) / "summary.csv").open(encoding="utf-8", newline="") as handle:
            assert {row["points_awarded"] for row in csv.DictReader(handle)} == {""}
        assert (second["failed_retryable"], third["failed_retryable"]) == (0, 0), (second, third)

        with Ledger(tmp_path / "state" / "ledger.sqlite") as ledger:
            rows = ledger.day_transactions("crmday", "2026-11-20")
        settled = {t.transaction_id: (t.state.value, t.last_error_code) for t in rows}
        assert settled == {
            **{f"S-{n}": ("accepted", None) for n in (1, 2, 3, 5, 6, 7, 8)},
            "S-4": ("not_sent", "crmcom_guest"),
            "R-1": ("accepted", None),
            "R-2": ("accepted", None),
            "R-2B": ("accepted", None),
            "R-2C": ("not_sent", "already_returned"),
            "R-3": ("not_sent", "return_other_customer"),
            "R-4": ("not_sent", "original_is_guest"),
            "R-4G": ("not_sent", "crmcom_guest"),
            "R-5": ("not_sent", "return_mismatch"),
            "R-6": ("accepted", None),
            "R-6B": ("not_sent", "already_returned"),
            "R-7": ("not_sent", "already_cancelled"),
            "R-8": ("not_sent", "return_mismatch"),
        }

        purchases = listing(sandbox, "crmcom")
        ad_hoc = listing(sandbox, "crmcom_ad_hoc_returns")
        stats = httpx.get(f"{sandbox.url}/_sandbox/stats", timeout=10).json()
        duplicates, arrivals = list(sandbox.state.duplicate_transaction_ids), dict(platform.arrivals)
    # exactly the purchases that came back whole are cancelled (S-7 by someone else), each stored once
    assert Counter(p["transaction_id"] for p in purchases) == Counter(f"S-{n}" for n in (1, 2, 3, 5, 6, 7, 8))
    assert {p["transaction_id"] for p in purchases if p["status"] == "cancelled"} == {"S-1", "S-6", "S-7"}
    # the only repeat the platform saw: R-7's cancel of S-7, which someone else had cancelled
    assert stats["duplicate_transaction_attempts"] == 1 and duplicates == ["S-7"]
    assert set(arrivals.values()) == {1}
    # the partial returns as ad hoc returns of their lines; the points burned as S-6's spend
    assert sorted((r["transaction_id"], r["total"], r["items"][0]["quantity"]) for r in ad_hoc) == [
        ("R-2", "2.70", "1.000"),
        ("R-2B", "2.70", "1.000"),
    ]
    assert next(p for p in purchases if p["transaction_id"] == "S-6")["spend_amount"] == "1.00"
    # accepted money equals what the platform holds, but for S-7: its purchase was cancelled without
    # posfeed, and its return is reported `already_cancelled` for review instead of counted
    accepted = sum((t.amount for t in rows if t.state is TxnState.ACCEPTED), Decimal(0))
    held = sum((Decimal(p["total"]) for p in purchases if p["status"] == "accepted"), Decimal(0))
    held -= sum((Decimal(r["total"]) for r in ad_hoc), Decimal(0))
    review = sum((-t.amount for t in rows if t.last_error_code == "already_cancelled"), Decimal(0))
    assert review == Decimal("11.49")
    assert accepted == held + review
    # the reports say the same: each run's accepted money adds up to the ledger's
    assert sum(Decimal(run["amount_accepted"]) for run in (first, second, third)) == accepted
    detail = (tmp_path / "reports" / "crmday" / second["run_id"] / "detail.csv").read_text(encoding="utf-8")
    for code in ("return_other_customer", "original_is_guest", "return_mismatch", "already_cancelled"):
        assert code in detail
