"""Resume by default and credentials first, in real `python -m pipeline` processes against the
real sandbox: whatever stopped the first run (SIGTERM mid-submission, a platform that was down or
failing, a secret the platform refused), a plain `posfeed run` afterwards delivers every checkout
exactly once and exits 0, with no `rerun`."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import (
    clean_day,
    env_for,
    free_port,
    ledger_counts,
    ledger_files,
    ops_feed,
    posfeed,
    posfeed_args,
    run_json,
    write_feed,
)
from tests.runner_helpers import delivered_ids, stats

RUN = ("run", "--business-date", "2026-11-20", "--json")


def _assert_delivered_once(sandbox: SandboxServer, ids: list[str], tmp: Path) -> None:
    delivered = delivered_ids(sandbox)
    assert sorted(delivered) == sorted(ids), "each checkout on the platform exactly once"
    counts = ledger_counts(tmp)
    assert counts == {"accepted": len(ids)}, counts
    with Ledger(tmp / "state" / "ledger.sqlite") as ledger:
        assert {r.kind for r in ledger.runs()} == {"run"}, "no rerun was needed"


def _wait_for(sandbox: SandboxServer, accepted: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while stats(sandbox)["events_accepted"] < accepted:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.005)


def test_sigterm_mid_submission_then_a_plain_run_delivers_everything_once(tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop")
    with SandboxServer(latency_ms=20) as sandbox:
        feed = write_feed(
            ops_feed(sandbox, tmp_path / "drop", max_concurrency=2, bulk_size=5), tmp_path / "shop.toml"
        )
        env = env_for(sandbox)
        # the requests that arrive from the 20th accepted event on are slow (held by the sandbox
        # itself), so the signal lands mid-submission whatever the machine's speed
        sandbox.config.hold_after, sandbox.config.hold_ms = ("events_accepted", 20), 1500
        victim = subprocess.Popen(
            posfeed_args(tmp_path, *RUN, "--feed", str(feed)),
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        _wait_for(sandbox, 20, victim)
        time.sleep(0.2)
        victim.send_signal(signal.SIGTERM)
        out, err = victim.communicate(timeout=120)
        sandbox.config.hold_after = None
        assert victim.returncode == 75, err[-3000:]
        stopped = run_json(subprocess.CompletedProcess([], 75, out, err))
        assert stopped["status"] == "stopped" and stopped["waiting"] > 0
        assert "stopped before the end" in err  # the cause, without -v
        left = ledger_counts(tmp_path)
        assert left.get("accepted", 0) < len(ids), left

        plain = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        resumed = run_json(plain)
        assert resumed["carried_over"] == len(ids) - left.get("accepted", 0)
        assert resumed["waiting"] == 0 and resumed["needs_rerun"] == 0 and resumed["balanced"] is True
        assert resumed["files_new"] == []  # the file was recorded once, by the stopped run
        _assert_delivered_once(sandbox, ids, tmp_path)


def test_a_platform_that_was_down_then_a_plain_run_delivers_everything_once(tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop")
    port = free_port()
    with SandboxServer() as template:
        feed_model = ops_feed(template, tmp_path / "drop")
        env = env_for(template)
    feed_model = feed_model.model_copy(
        update={"target": feed_model.target.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})}
    )
    feed = write_feed(feed_model, tmp_path / "shop.toml")

    down = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
    assert down.returncode == 75, down.stderr[-3000:]
    assert "cannot be reached" in down.stderr and "connection failed" in down.stderr  # why, without -v
    assert ledger_files(tmp_path) == 0  # credentials first: no file was touched

    with SandboxServer(port=port) as sandbox:
        plain = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env_for(sandbox))
        assert plain.returncode == 0, plain.stderr[-3000:]
        assert run_json(plain)["accepted"] == len(ids)
        _assert_delivered_once(sandbox, ids, tmp_path)


def test_a_platform_failing_mid_run_then_a_plain_run_delivers_everything_once(tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop")
    with SandboxServer() as sandbox:
        feed = write_feed(ops_feed(sandbox, tmp_path / "drop", bulk_size=10), tmp_path / "shop.toml")
        env = env_for(sandbox)
        # every request after the credential check fails; some are processed with the answer lost
        sandbox.config.fault_rate = 1.0
        sandbox.config.fault_kinds = ("error_503", "lost_response", "drop")
        failing = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
        assert failing.returncode == 75, failing.stderr[-3000:]
        first = run_json(failing)
        assert first["failed_retryable"] > 0 and first["waiting"] == first["failed_retryable"]
        assert first["waiting_oldest_at"] and first["waiting_oldest_age_seconds"] is not None
        # the backlog object tells the same figures as the flat keys (one backlog, read once)
        backlog = first["backlog"]
        assert backlog["waiting"] == first["waiting"]
        assert backlog["oldest_waiting_since"] == first["waiting_oldest_at"]
        assert backlog["oldest_waiting_minutes"] == first["waiting_oldest_age_seconds"] // 60
        assert "failed retryable" in failing.stderr  # the cause, without -v

        sandbox.config.fault_rate = 0.0
        plain = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        second = run_json(plain)
        assert second["carried_over"] == first["failed_retryable"] and second["waiting"] == 0
        _assert_delivered_once(sandbox, ids, tmp_path)
        assert stats(sandbox)["lost_responses"] == 0 or any(
            t.last_error_code for t in _accepted(tmp_path)
        )  # lost answers settled by "already used"


def _accepted(tmp: Path) -> list[object]:
    with Ledger(tmp / "state" / "ledger.sqlite") as ledger:
        return [t for t in ledger.run_transactions(ledger.runs()[0].id) if t.state is TxnState.ACCEPTED]


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        ("ANTAVO_API_SECRET", "The signatures do not match"),
        ("ANTAVO_API_KEY", "Invalid Escher key"),
    ],
)
def test_a_refused_secret_exits_78_before_any_file_then_a_plain_run_delivers(
    tmp_path: Path, variable: str, reason: str
) -> None:
    ids = clean_day(tmp_path / "drop")
    with SandboxServer() as sandbox:
        feed = write_feed(ops_feed(sandbox, tmp_path / "drop"), tmp_path / "shop.toml")
        refused = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env_for(sandbox, **{variable: "wrong"}))
        assert refused.returncode == 78, refused.stderr[-3000:]
        assert reason in refused.stderr and variable in refused.stderr  # what to fix, without -v
        assert ledger_files(tmp_path) == 0 and ledger_counts(tmp_path) == {}
        assert stats(sandbox)["events_accepted"] == 0

        plain = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env_for(sandbox))
        assert plain.returncode == 0, plain.stderr[-3000:]
        _assert_delivered_once(sandbox, ids, tmp_path)


def test_a_refused_crmcom_password_exits_78_before_any_file(tmp_path: Path) -> None:
    clean_day(tmp_path / "drop")
    with SandboxServer() as sandbox:
        feed = write_feed(ops_feed(sandbox, tmp_path / "drop", target_kind="crmcom"), tmp_path / "shop.toml")
        refused = posfeed(
            tmp_path, *RUN, "--feed", str(feed), env=env_for(sandbox, "crmcom", CRMCOM_PASSWORD="wrong")
        )
        assert refused.returncode == 78, refused.stderr[-3000:]
        assert "refused our credentials" in refused.stderr
        assert ledger_files(tmp_path) == 0


def test_credentials_refused_mid_run_stop_it_with_78_and_the_next_run_sends_the_rest(tmp_path: Path) -> None:
    ids = clean_day(tmp_path / "drop")
    with SandboxServer(latency_ms=20) as sandbox:
        feed = write_feed(
            ops_feed(sandbox, tmp_path / "drop", max_concurrency=1, bulk_size=5), tmp_path / "shop.toml"
        )
        env = env_for(sandbox)
        victim = subprocess.Popen(
            posfeed_args(tmp_path, *RUN, "--feed", str(feed)),
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        _wait_for(sandbox, 20, victim)
        secret = sandbox.config.api_secret
        sandbox.config.api_secret = "rotated-on-the-platform"  # our secret is refused from now on
        out, err = victim.communicate(timeout=120)
        assert victim.returncode == 78, err[-3000:]
        assert "refused our credentials" in err
        halted = run_json(subprocess.CompletedProcess([], 78, out, err))
        assert halted["waiting"] > 0 and halted["accepted"] < len(ids)
        # the rest is left queued for the next run, not failed
        assert halted["queued"] == len(ids) - halted["accepted"] and halted["failed_retryable"] == 0
        assert ledger_counts(tmp_path).get("failed_permanent", 0) == 0

        sandbox.config.api_secret = secret  # the secret is fixed
        plain = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        assert run_json(plain)["carried_over"] == len(ids) - halted["accepted"]
        _assert_delivered_once(sandbox, ids, tmp_path)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_then_a_plain_run_delivers_everything_once(tmp_path: Path, presses: int) -> None:
    """OPERATIONS.md's exit codes: a first Ctrl-C stops the run between batches (exit 75, status
    `stopped`); a second interrupts at once (exit 130). Either way the next plain run sends the
    rest, each checkout once."""
    ids = clean_day(tmp_path / "drop")
    with SandboxServer(latency_ms=20) as sandbox:
        feed = write_feed(
            ops_feed(sandbox, tmp_path / "drop", max_concurrency=2, bulk_size=5), tmp_path / "shop.toml"
        )
        env = env_for(sandbox)
        sandbox.config.hold_after, sandbox.config.hold_ms = ("events_accepted", 20), 1500
        victim = subprocess.Popen(
            posfeed_args(tmp_path, *RUN, "--feed", str(feed)),
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        _wait_for(sandbox, 20, victim)
        time.sleep(0.2)
        for _ in range(presses):
            victim.send_signal(signal.SIGINT)
            time.sleep(0.2)
        out, err = victim.communicate(timeout=120)
        sandbox.config.hold_after = None
        if presses == 1:
            assert victim.returncode == 75, err[-3000:]
            assert run_json(subprocess.CompletedProcess([], 75, out, err))["status"] == "stopped"
            assert "stopped before the end" in err
        else:
            assert victim.returncode == 130, err[-3000:]
        assert ledger_counts(tmp_path).get("accepted", 0) < len(ids)

        plain = posfeed(tmp_path, *RUN, "--feed", str(feed), env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        _assert_delivered_once(sandbox, ids, tmp_path)
