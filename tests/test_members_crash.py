"""Crash safety of enrollments and claims: `python -m pipeline run` is SIGKILLed mid-submission,
then run again; the platform ends with every member created once and every guest checkout
owned by its claimer, and the ledger with every row accepted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import copy_samples, feed_toml, sample_feed, settings_in, stats
from tests.sandbox_fixtures import TARGET_KITS

DAY = "2026-11-20"


def _posfeed(tmp: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )


def _kill_mid_submission(sandbox: SandboxServer, victim: subprocess.Popen[str], counter: str,
                         at_least: int) -> None:
    """SIGKILL ``victim`` once the sandbox has counted ``at_least`` of ``counter``, with the
    requests arriving from then on held by the sandbox itself (they land after the kill)."""
    sandbox.config.hold_after, sandbox.config.hold_ms = (counter, at_least), 120_000  # until the kill
    assert stats(sandbox)[counter] < at_least, "the run went too far before the hold was set"
    deadline = time.monotonic() + 120
    while stats(sandbox)[counter] < at_least:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.005)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    sandbox.config.hold_after = None


def _settle(tmp: Path, env: dict[str, str], feed: str) -> dict[str, object]:
    survivor = _posfeed(tmp, env, "run", "--feed", feed, "--business-date", DAY, "--json")
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-3000:]
    summary: dict[str, object] = json.loads(out)
    assert summary["balanced"] is True and summary["in_doubt"] == 0
    time.sleep(2.5)  # the requests held at the kill have landed
    return summary


def _in_doubt(tmp: Path, scope: str) -> int:
    with Ledger(settings_in(tmp).ledger_path) as ledger:
        counts = ledger.state_counts(scope)
    assert counts.get("queued", 0) + counts.get("sending", 0) > 0, f"killed too late: {counts}"
    return counts.get("sending", 0)


@pytest.mark.slow
def test_sigkill_while_enrolling_then_run_again(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = ["customer_id,email,first_name,last_name,phone,birth_date,store_id,enrolled_at"]
    rows += [f"K{n:05d},member{n}@example.org,First{n},Last{n},,,LON01,2026-11-20T10:00:00Z"
             for n in range(300)]
    (drop / "members_LON01_20261120.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with SandboxServer(latency_ms=25) as sandbox:
        feed = sample_feed("acme_enrollments", sandbox, folder=drop, max_concurrency=2, bulk_size=10)
        path = tmp_path / "members.toml"
        path.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        victim = _posfeed(tmp_path, env, "run", "--feed", str(path), "--business-date", DAY, "--json")
        _kill_mid_submission(sandbox, victim, "events_accepted", 40)
        in_doubt = _in_doubt(tmp_path, "members")
        _settle(tmp_path, env, str(path))

        created = httpx.get(f"{sandbox.url}/_sandbox/customers", timeout=10).json()["customers"]
        after = stats(sandbox)
    assert sorted(c["id"] for c in created) == [f"K{n:05d}" for n in range(300)]
    # only what was in doubt was sent again, and the platform answered it "already opted-in"
    assert after["events_rejected"] <= in_doubt
    with Ledger(settings_in(tmp_path).ledger_path) as ledger:
        counts = ledger.state_counts("members")
        rows_left = ledger.transactions_by_row_id(list(range(1, 400)))
    assert counts == {"accepted": 300}
    assert any(t.last_error_code == "112101" for t in rows_left) or after["events_rejected"] == 0


@pytest.mark.slow
def test_sigkill_while_claiming_then_run_again(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    copy_samples(drop, ["pos_*_daily.csv"])
    with SandboxServer(latency_ms=0) as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        daily = sample_feed("acme_daily", sandbox, folder=drop)
        daily = daily.model_copy(update={"expected": daily.expected.model_copy(update={"cadence": "none"})})
        daily_path = tmp_path / "daily.toml"
        daily_path.write_text(feed_toml(daily), encoding="utf-8")
        first = _posfeed(tmp_path, env, "run", "--feed", str(daily_path), "--business-date", DAY, "--json")
        first.communicate(timeout=300)
        listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
        guests = sorted(t["transaction_id"] for t in listing if t["customer"] is None)[:120]
        assert len(guests) == 120
        claimer = {tid: f"C{n:04d}" for n, tid in enumerate(guests)}
        rows = ["transaction_id,customer_id,claimed_at,store_id"]
        rows += [f"{tid},{customer},2026-11-20T18:00:00Z,{tid[:5]}" for tid, customer in claimer.items()]
        (drop / "claims_ALL_20261120.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

        sandbox.config.latency_ms = 25
        claims = sample_feed("acme_claims", sandbox, folder=drop, max_concurrency=2)
        claims_path = tmp_path / "claims.toml"
        claims_path.write_text(feed_toml(claims), encoding="utf-8")
        baseline = stats(sandbox)["events_accepted"]
        victim = _posfeed(tmp_path, env, "run", "--feed", str(claims_path), "--business-date", DAY, "--json")
        _kill_mid_submission(sandbox, victim, "events_accepted", baseline + 20)
        _in_doubt(tmp_path, "claims")
        _settle(tmp_path, env, str(claims_path))

        listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
    owner = {t["transaction_id"]: t["customer"] for t in listing}
    assert {tid: owner[tid] for tid in guests} == claimer
    with Ledger(settings_in(tmp_path).ledger_path) as ledger:
        counts = ledger.state_counts("claims")
        rows_left = [t for t in ledger.transactions_by_row_id(list(range(1, 3000)))
                     if t.scope == "claims"]
    assert counts == {"accepted": 120}
    assert all(t.state is TxnState.ACCEPTED for t in rows_left)
