"""CRM.COM exactly once through crashes and lost answers: `posfeed run` is SIGKILLed several times
mid-submission while the sandbox loses answers of bulk calls, and the sandbox stores a repeated
reference number as a second purchase (CRM.COM documents no refusal). The next runs look up what was
in doubt instead of resending it: no purchase is stored twice, and only what was in flight is asked
about again, proven by the sandbox's counters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import REPO, feed_toml, stats
from tests.sandbox_fixtures import crmcom_env, crmcom_feed
from tests.test_crmcom_returns_e2e import HEADER

SALES = 240
RETURNED = range(0, SALES, 20)  # whole returns of these sales, in the same file


def day_file(path: Path) -> None:
    rows = [HEADER]
    for n in range(SALES):
        rows.append(
            f"S-{n:03d},BER01,K1,2026-11-20 09:{n % 60:02d}:00,2026-11-20,M{n % 37},sale,1,1005,Wine,"
            f"wine,1,11.49,,11.49,EUR,11.49,,"
        )
    for n in RETURNED:
        rows.append(
            f"R-{n:03d},BER01,K1,2026-11-20 17:{n % 60:02d}:00,2026-11-20,M{n % 37},return,1,1005,Wine,"
            f"wine,-1,11.49,,-11.49,EUR,-11.49,,S-{n:03d}"
        )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def start(tmp: Path, env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "--state-dir",
            str(tmp / "state"),
            "--reports-dir",
            str(tmp / "reports"),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def in_doubt(ledger_path: Path) -> set[str]:
    with Ledger(ledger_path) as ledger:
        rows = ledger.transactions_by_row_id(list(range(1, 1000)))
    return {str(t.transaction_id) for t in rows if t.state is TxnState.SENDING}


@pytest.mark.slow
def test_sigkills_and_lost_bulk_answers_store_no_purchase_twice(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    day_file(drop / "day.csv")
    with SandboxServer(latency_ms=15) as sandbox:
        platform: CrmcomPlatform = sandbox.state.platforms[PLATFORM]
        platform.config.unique_reference_numbers = False
        sandbox.config.fault_kinds = ("lost_response",)
        sandbox.config.fault_rate = 0.1
        sandbox.config.seed = 5
        feed = crmcom_feed(sandbox, "crmcrash", bulk_size=10, max_concurrency=2, max_attempts=10)
        feed = feed.model_copy(
            update={
                "timezone": "Europe/Berlin",
                "source": feed.source.model_copy(
                    update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"}
                ),
            }
        )
        feed_file = tmp_path / "crmcrash.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **crmcom_env(sandbox)}
        args = ["run", "--feed", str(feed_file), "--business-date", "2026-11-20", "--json"]
        ledger_path = tmp_path / "state" / "ledger.sqlite"

        doubted: list[set[str]] = []
        for kill_at in (30, 100, 170):
            victim = start(tmp_path, env, args)
            deadline = time.monotonic() + 120
            while stats(sandbox)["events_accepted"] < kill_at:
                assert victim.poll() is None, victim.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.002)
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=60)
            assert victim.returncode == -signal.SIGKILL
            time.sleep(0.2)  # what was in flight has landed (or not) before anyone looks
            doubted.append(in_doubt(ledger_path))
        assert sum(len(d) for d in doubted) > 0, "no kill found a request in flight"

        survivor = start(tmp_path, env, args)
        out, err = survivor.communicate(timeout=300)
        assert survivor.returncode == 0, err[-3000:]
        final: dict[str, Any] = json.loads(out)
        assert final["balanced"] is True and final["in_doubt"] == final["failed_retryable"] == 0

        counters = stats(sandbox)
        arrivals = dict(platform.arrivals)
        lost = sum(sandbox.state.lost_answers.values()) + counters.get("lost_lookup_answers", 0)
        listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", params={"platform": "crmcom"}, timeout=10)
        purchases = listing.json()["transactions"]
    # every purchase stored once, none arrived twice: nothing that had landed was sent again
    assert Counter(p["reference_number"] for p in purchases) == Counter(f"S-{n:03d}" for n in range(SALES))
    assert set(arrivals.values()) == {1}
    assert counters["duplicate_transaction_attempts"] == 0
    assert counters["lost_responses"] > 0
    assert {p["reference_number"] for p in purchases if p["status"] == "cancelled"} == {
        f"S-{n:03d}" for n in RETURNED
    }
    # asked about again: only what was in doubt at a kill or whose answer was lost
    assert 0 < counters["lookups"] <= sum(len(d) for d in doubted) + lost
    with Ledger(ledger_path) as ledger:
        counts = ledger.state_counts("crmcrash")
    assert counts == {"accepted": SALES + len(RETURNED)}
