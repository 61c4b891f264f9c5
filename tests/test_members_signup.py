"""Claims and profile updates of a member whose sign-up has not reached the platform: they wait
for it (the platform would refuse them for good, 160212), are sent once it is accepted, and are
held for a rerun when it was refused. Real `python -m pipeline` processes, the real sandbox, SQLite."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from pipeline.config import ClaimsConfig, EnrollmentsConfig, ResumeConfig
from pipeline.ledger import Ledger
from pipeline.logs import mask_customer_id
from pipeline.sandbox.server import SandboxServer
from tests.ledger_backends import ledger_env
from tests.runner_helpers import sample_feed, settings_in, stats
from tests.sandbox_fixtures import TARGET_KITS
from tests.test_members_e2e import DAY, POS_HEADER, customers, owners, posfeed, write_feed

# the sandbox knows a customer id starting with "unknown-" only once an opt_in created it
GUEST_SALES = (
    "G1,LON01,R1,2026-11-20 10:01:07,2026-11-20,,sale,1,P1,Bread,bakery,1,10.00,,10.00,GBP,10.00,,\n"
    "G2,LON01,R1,2026-11-20 10:05:07,2026-11-20,,sale,1,P1,Bread,bakery,1,4.00,,4.00,GBP,4.00,,\n"
)


def states(tmp: Path, scope: str) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(settings_in(tmp).ledger_path) as db:
        rows = db.execute("SELECT transaction_id, state, last_error_code FROM transactions WHERE scope = ? "
                          "AND state NOT IN ('duplicate', 'conflict', 'rejected')", (scope,)).fetchall()
    return {tid: (state, code) for tid, state, code in rows}


def test_a_claim_waits_for_its_members_sign_up_and_a_refused_ones_goes_with_a_rerun(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "pos_LON01_20261120_10.csv").write_text(POS_HEADER + GUEST_SALES, encoding="utf-8")
    (drop / "members_LON01_20261120.csv").write_text(  # an address the platform refuses
        "customer_id,email,enrolled_at\nunknown-M2,m2@exa..mple.org,2026-11-20T09:00:00Z\n", encoding="utf-8")
    (drop / "claims_LON01_20261120.csv").write_text(
        "transaction_id,customer_id,claimed_at,store_id\n"
        "G1,unknown-M1,2026-11-20T11:00:00Z,LON01\n"
        "G2,unknown-M2,2026-11-20T11:01:00Z,LON01\n", encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        base = sample_feed("acme_hourly", sandbox, folder=drop)
        hourly = write_feed(tmp_path, "hourly", base,
                            expected=base.expected.model_copy(update={"cadence": "none"}))
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop,
                                                              max_attempts=1))
        claims = write_feed(tmp_path, "claims", sample_feed("acme_claims", sandbox, folder=drop),
                            claims=ClaimsConfig(checkout_scope="acme", enrollment_scope="members"))
        assert posfeed(tmp_path, env, "run", "--feed", hourly, *DAY)[0] == 0
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["failed_permanent"] == 1
        # M1's sign-up arrives while the platform is failing: failed retryable
        (drop / "members_BER01_20261120.csv").write_text(
            "customer_id,email,enrolled_at\nunknown-M1,m1@example.org,2026-11-20T09:00:00Z\n",
            encoding="utf-8")
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["failed_retryable"] == 1
        sandbox.config.fault_rate = 0.0

        refused_before = stats(sandbox)["events_rejected"]
        code, claimed, _ = posfeed(tmp_path, env, "run", "--feed", claims, *DAY)
        assert stats(sandbox)["events_rejected"] == refused_before  # nothing the platform refuses
        assert code == 65 and claimed["queued"] == 1 and claimed["failed_permanent"] == 1
        assert states(tmp_path, "claims") == {
            "claim:G1": ("queued", None), "claim:G2": ("failed_permanent", "member_not_enrolled")}

        # the sign-up goes with the next plain run; then the claim that waited
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["accepted"] == 1
        code, settled, _ = posfeed(tmp_path, env, "run", "--feed", claims, *DAY)
        assert settled["accepted"] == 1 and settled["balanced"] is True
        assert owners(sandbox)["G1"] == "unknown-M1"

        # a rerun before M2's sign-up is mended sends nothing the platform would refuse
        code, early, _ = posfeed(tmp_path, env, "rerun", "--feed", claims, "--failed", "--include-permanent")
        assert early["accepted"] == 0 and early["failed_permanent"] == 1
        assert stats(sandbox)["events_rejected"] == refused_before and owners(sandbox)["G2"] is None
        assert states(tmp_path, "claims")["claim:G2"] == ("failed_permanent", "member_not_enrolled")
        # the corrected sign-up is accepted; the claim it held back goes with a rerun, once
        (drop / "members_NYC01_20261120.csv").write_text(
            "customer_id,email,enrolled_at\nunknown-M2,m2@example.org,2026-11-20T09:00:00Z\n",
            encoding="utf-8")
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["accepted"] == 1
        code, resent, _ = posfeed(tmp_path, env, "rerun", "--feed", claims, "--failed", "--include-permanent")
        assert code == 0 and resent["accepted"] == 1 and resent["balanced"] is True
        assert owners(sandbox)["G2"] == "unknown-M2"
        assert stats(sandbox)["events_rejected"] == refused_before
        assert states(tmp_path, "claims")["claim:G2"] == ("accepted", None)


@pytest.mark.parametrize("n", [1, 2])
def test_claims_that_wait_are_counted_in_words_that_agree(tmp_path: Path, n: int) -> None:
    """The run's log says "1 claim row", "1 row in", "1 claim waits for its checkout", "2 claims
    wait for their checkout", then "1 claim or profile update waits for its member's sign-up", "2
    claims or profile updates wait for ...": never "claim(s)", "update(s)", "1 rows"."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "pos_LON01_20261120_10.csv").write_text(POS_HEADER + "".join(GUEST_SALES.splitlines(True)[:n]),
                                                     encoding="utf-8")
    signups = "".join(f"unknown-M{i},m{i}@example.org,2026-11-20T09:00:00Z\n" for i in range(1, n + 1))
    (drop / "members_LON01_20261120.csv").write_text("customer_id,email,enrolled_at\n" + signups,
                                                     encoding="utf-8")
    claimed = "".join(f"G{i},unknown-M{i},2026-11-20T11:0{i}:00Z,LON01\n" for i in range(1, n + 1))
    (drop / "claims_LON01_20261120.csv").write_text(
        "transaction_id,customer_id,claimed_at,store_id\n" + claimed, encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        base = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
        hourly = write_feed(tmp_path, "hourly", base,
                            expected=base.expected.model_copy(update={"cadence": "none"}))
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop,
                                                              max_attempts=1))
        claims = write_feed(tmp_path, "claims", sample_feed("acme_claims", sandbox, folder=drop),
                            claims=ClaimsConfig(checkout_scope="acme", enrollment_scope="members"))
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
        assert posfeed(tmp_path, env, "run", "--feed", hourly, *DAY)[1]["failed_retryable"] == n
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["failed_retryable"] == n
        sandbox.config.fault_rate = 0.0
        code, waited, log = posfeed(tmp_path, env, "-v", "run", "--feed", claims, *DAY)
        assert code == 75 and waited["queued"] == n, log
        assert f"claims_LON01_20261120.csv: {n} claim row{'s' if n > 1 else ''}, {n} queued" in log, log
        assert (f"finished, exit 75: {n} row{'s' if n > 1 else ''} in, 0 accepted, 0 rejected, 0 duplicates, "
                "0 conflicts,") in log, log
        checkout = "1 claim waits for its checkout" if n == 1 else "2 claims wait for their checkout"
        assert f"claims: {checkout} to be accepted" in log, log
        assert posfeed(tmp_path, env, "run", "--feed", hourly, *DAY)[1]["accepted"] == n
        code, waited, log = posfeed(tmp_path, env, "-v", "run", "--feed", claims, *DAY)
        assert code == 75 and waited["queued"] == n, log
        signup = ("1 claim or profile update waits for its member's sign-up" if n == 1
                  else "2 claims or profile updates wait for their members' sign-ups")
        assert f"{signup} in scope 'members'" in log, log
        assert "(s)" not in log


def test_a_profile_update_waits_for_a_sign_up_left_for_a_rerun(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "members_LON01_20261120.csv").write_text(
        "customer_id,email,enrolled_at\nunknown-P1,p1@example.org,2026-11-20T09:00:00Z\n", encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        # one attempt per run and per transaction: a failed sign-up is left for `posfeed rerun`
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop,
                                                              max_attempts=1),
                             enrollments=EnrollmentsConfig(changes="profile"),
                             resume=ResumeConfig(max_attempts=1))
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["failed_retryable"] == 1
        sandbox.config.fault_rate = 0.0
        (drop / "members_BER01_20261120.csv").write_text(
            "customer_id,email,enrolled_at\nunknown-P1,p1@example.net,2026-11-20T12:00:00Z\n",
            encoding="utf-8")
        refused_before = stats(sandbox)["events_rejected"]
        code, changed, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        assert stats(sandbox)["events_rejected"] == refused_before
        assert changed["failed_permanent"] == 0 and changed["queued"] == 1  # the update waits

        code, resent, _ = posfeed(tmp_path, env, "rerun", "--feed", members, "--failed")
        assert code == 0 and resent["failed_retryable"] == 0
        code, settled, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        assert code == 0 and settled["balanced"] is True
        assert customers(sandbox)["unknown-P1"]["email"] == "p1@example.net"
        assert {state for state, _ in states(tmp_path, "members").values()} == {"accepted"}


def test_an_update_in_the_run_its_opt_in_is_refused_is_held_not_sent(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "members_LON01_20261120.csv").write_text(
        "customer_id,email,enrolled_at\n"
        "unknown-Q1,q1@exa..mple.org,2026-11-20T09:00:00Z\n"  # refused by the platform
        "unknown-Q1,q1@example.org,2026-11-20T10:00:00Z\n", encoding="utf-8")  # a profile update
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop),
                             enrollments=EnrollmentsConfig(changes="profile"))
        refused_before = stats(sandbox)["events_rejected"]
        code, first, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        refused = stats(sandbox)["events_rejected"] - refused_before
        # the opt_in is refused; the update is held back, never refused 160212
        assert refused == 1 and first["failed_permanent"] == 1 and first["failed_retryable"] == 1
        code, second, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        assert stats(sandbox)["events_rejected"] - refused_before == 1
        assert second["failed_permanent"] == 1 and code == 65  # held for a rerun, never sent
    codes = {code for _, code in states(tmp_path, "members").values()}
    assert "member_not_enrolled" in codes and "160212" not in codes


def test_a_corrected_sign_up_after_a_refused_one_is_sent_once(tmp_path: Path, ledger_location: Path | str
                                                             ) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    header = "customer_id,email,enrolled_at\n"
    refused = "unknown-R1,r1@exa..mple.org,2026-11-20T09:00:00Z\n"  # the platform refuses the address
    corrected = "unknown-R1,r1@example.org,2026-11-20T09:00:00Z\n"
    (drop / "members_LON01_20261120.csv").write_text(header + refused, encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox), **ledger_env(ledger_location)}
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop))
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[1]["failed_permanent"] == 1
        # the data engineer fixes the address and sends the member again: a corrected sign-up
        (drop / "members_LON02_20261120.csv").write_text(header + corrected, encoding="utf-8")
        code, fixed, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        assert code == 0 and fixed["accepted"] == 1 and fixed["conflicts"] == 0
        assert customers(sandbox)["unknown-R1"]["email"] == "r1@example.org"
        # both versions again, with another member: repeats, nothing sent twice
        another = "unknown-R2,r2@example.org,2026-11-20T09:00:00Z\n"
        (drop / "members_LON03_20261120.csv").write_text(header + refused + corrected + another,
                                                         encoding="utf-8")
        before = stats(sandbox)["events_accepted"]
        code, again, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        assert again["duplicates"] == 2 and again["accepted"] == 1 and again["conflicts"] == 0
        assert stats(sandbox)["events_accepted"] == before + 1
    first, second = mask_customer_id("unknown-R1"), mask_customer_id("unknown-R2")
    with Ledger(ledger_location) as ledger:
        signups = ledger.signups("members", [first, second, mask_customer_id("unknown-R3")])
    assert {key: [(r.transaction_id, r.state.value) for r in rows] for key, rows in signups.items()} == {
        first: [(first, "failed_permanent"), (f"{first}+1", "accepted")], second: [(second, "accepted")]}
