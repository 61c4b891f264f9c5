"""Enrollments and guest claims end to end: real `python -m pipeline` processes, the real sandbox,
a real SQLite ledger. Bad emails, repeats and changed details; claims of accepted, not yet
accepted and unknown guest checkouts; reruns that send nothing; no personal data left behind."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from pipeline.config import ClaimsConfig, EnrollmentsConfig, Feed
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import SAMPLE_ACME, copy_samples, feed_toml, sample_feed, settings_in, stats
from tests.sandbox_fixtures import TARGET_KITS

# what the sample enrollments hold that must never be seen outside the platform
PERSONAL = ("sam.jones", "ada.price", "mia.ward", "noah.hill", "example.org", "example.net", "Jones",
            "Price", "Grant", "Ward", "Hill", "Stone", "79460101", "900123", "900456", "1990-04-12",
            "N900001", "N900002", "N900003", "N900005")


DAY = ("--business-date", "2026-11-20")


def posfeed(tmp: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the CLI once; (exit code, its --json document, its stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args, "--json"],
        env=env, capture_output=True, text=True, cwd=tmp, timeout=300,
    )
    try:
        document = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(done.stdout[-2000:] + done.stderr[-3000:]) from None
    return done.returncode, document, done.stderr


def write_feed(tmp: Path, name: str, feed: Feed, **update: Any) -> str:
    path = tmp / f"{name}.toml"
    path.write_text(feed_toml(feed.model_copy(update=update)), encoding="utf-8")
    return str(path)


def customers(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    listing = httpx.get(f"{sandbox.url}/_sandbox/customers", timeout=10).json()["customers"]
    return {c["id"]: c for c in listing}


def owners(sandbox: SandboxServer) -> dict[str, Any]:
    listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
    return {t["transaction_id"]: t["customer"] for t in listing}


def test_enrollments_and_claims_end_to_end(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    copy_samples(drop, ["pos_LON01_20261120_10.csv", "members_*", "claims_*"])
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        hourly = write_feed(tmp_path, "hourly", sample_feed("acme_hourly", sandbox, folder=drop),
                            expected=sample_feed("acme_hourly", sandbox).expected.model_copy(
                                update={"cadence": "none"}))
        failing = sample_feed("acme_hourly", sandbox, folder=drop, max_attempts=1)
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop))
        claims = write_feed(tmp_path, "claims", sample_feed("acme_claims", sandbox, folder=drop))
        day = ("--business-date", "2026-11-20")

        # hour 10's checkouts are accepted; hour 11's reach the ledger but fail (503)
        code, first, _ = posfeed(tmp_path, env, "run", "--feed", hourly, *day)
        assert code == 0 and first["accepted"] > 0
        shutil.copy2(SAMPLE_ACME / "pos_LON01_20261120_11.csv", drop)
        sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
        flaky = write_feed(tmp_path, "hourly", failing, expected=failing.expected.model_copy(
            update={"cadence": "none"}))
        code, second, _ = posfeed(tmp_path, env, "run", "--feed", flaky, *day)
        assert code == 75 and second["failed_retryable"] > 0
        sandbox.config.fault_rate = 0.0

        code, enrolled, err = posfeed(tmp_path, env, "run", "--feed", members, *day)
        logs = [err]
        assert code == 65  # a bad email, a member without contact, a changed enrollment held
        assert enrolled["balanced"] is True
        assert enrolled["rows_in"] == 8
        assert enrolled["accepted"] == 3
        assert enrolled["transactions_rejected"] == 2
        assert enrolled["duplicates"] == 1
        assert enrolled["conflicts"] == 2  # N900002's two versions, held for review
        assert set(customers(sandbox)) == {"N900001", "N900003", "N900005"}

        # a dry run settles what the real run settles without the platform: the unmatched claim
        before = stats(sandbox)["requests"]
        code, dry, err = posfeed(tmp_path, env, "run", "--dry-run", "--feed", claims, *day)
        logs.append(err)
        assert stats(sandbox)["requests"] == before
        assert (dry["not_sent"], dry["queued"], dry["accepted"]) == (1, 4, 0)
        assert dry["balanced"] is True and dry["amount_in"] == "0.00"  # claims carry no money

        code, claimed, err = posfeed(tmp_path, env, "run", "--feed", claims, *day)
        logs.append(err)
        assert code == 65  # a claim without transaction_id is rejected
        assert claimed["rows_in"] == 7
        # every row is counted once; the waiting claim is not final, so the run does not balance yet
        assert sum(claimed[k] for k in ("accepted", "not_sent", "duplicates", "transactions_rejected",
                                        "queued", "conflicts", "in_doubt")) == 7
        assert claimed["balanced"] is False
        assert claimed["accepted"] == 3  # hour 10's guests
        assert claimed["not_sent"] == 1  # LON01-R9-...-9999: no such checkout (unmatched_claim)
        assert claimed["duplicates"] == 1 and claimed["transactions_rejected"] == 1
        assert claimed["queued"] == 1  # LON01-R1-...-0044 waits for its checkout (hour 11)
        held = owners(sandbox)
        assert held["LON01-R1-20261120-0035"] == "N900001"
        assert held["LON01-R2-20261120-0027"] == "N900002"
        assert held["LON01-R3-20261120-0026"] == "N900003"
        assert "LON01-R1-20261120-0044" not in held

        # hour 11 is resent; the claim that waited goes with the next plain run
        code, resent, err = posfeed(tmp_path, env, "rerun", "--feed", flaky, "--failed")
        logs.append(err)
        assert code == 0 and resent["failed_retryable"] == 0
        code, settled, err = posfeed(tmp_path, env, "run", "--feed", claims, *day)
        logs.append(err)
        assert code == 0 and settled["accepted"] == 1 and settled["balanced"] is True
        assert owners(sandbox)["LON01-R1-20261120-0044"] == "N900005"

        # changed details as profile updates (another feed, same files): repeats of members the
        # platform has answer 112101 and settle as already accepted; N900002 once, then updated
        updates = write_feed(tmp_path, "member_updates",
                             sample_feed("acme_enrollments", sandbox, folder=drop),
                             enrollments=EnrollmentsConfig(changes="profile"))
        code, profiled, err = posfeed(tmp_path, env, "run", "--feed", updates, *day)
        logs.append(err)
        assert code == 65 and profiled["accepted"] == 5 and profiled["conflicts"] == 0
        assert profiled["balanced"] is True
        members_now = customers(sandbox)
        assert set(members_now) == {"N900001", "N900002", "N900003", "N900005"}
        assert members_now["N900002"]["email"] == "ada.price@example.net"

        # reruns send nothing again: each run's one request is the credential check (no event)
        for feed in (hourly, members, claims, updates):
            before = stats(sandbox)
            code, again, err = posfeed(tmp_path, env, "run", "--feed", feed, *day)
            logs.append(err)
            assert again["rows_in"] == 0 and again["accepted"] == 0, feed
            after = stats(sandbox)
            assert after["requests"] == before["requests"] + 1, feed
            assert after["events_accepted"] == before["events_accepted"], feed

    # no email, phone, name or customer id in logs, reports or the ledger now that all is final
    leaks = [(word, "log") for text in logs for word in PERSONAL if word in text]
    for path in (tmp_path / "reports").rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            leaks += [(word, str(path)) for word in PERSONAL if word in text]
    ledger = settings_in(tmp_path).ledger_path
    with sqlite3.connect(ledger) as db:
        dump = "\n".join(db.iterdump())
    leaks += [(word, "ledger") for word in PERSONAL if word in dump]
    assert not leaks


def test_enrollment_feed_with_a_crmcom_target_refuses_to_load(tmp_path: Path) -> None:
    path = tmp_path / "members.toml"
    path.write_text('records = "enrollments"\n[target]\nkind = "crmcom"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pipeline", "--state-dir", str(tmp_path / "s"), "run",
                           "--feed", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode != 0
    assert 'records = "enrollments" needs an Antavo target' in done.stderr


def test_check_refuses_enrollment_files_with_a_clear_error(tmp_path: Path) -> None:
    feeds = str(SAMPLE_ACME.parent.parent / "feeds")
    members = str(SAMPLE_ACME / "members_LON01_20261120.csv")
    done = subprocess.run([sys.executable, "-m", "pipeline", "--feeds-dir", feeds, "check", members,
                           "--feed", "acme_enrollments"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert done.returncode != 0
    assert "holds enrollments" in done.stderr


def test_claims_of_checkouts_that_came_another_way_are_sent_when_the_feed_says_so(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    copy_samples(drop, ["pos_LON01_20261120_10.csv", "claims_*"])
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        base = sample_feed("acme_hourly", sandbox, folder=drop)
        hourly = write_feed(tmp_path, "hourly", base,
                            expected=base.expected.model_copy(update={"cadence": "none"}))
        claims = write_feed(tmp_path, "claims", sample_feed("acme_claims", sandbox, folder=drop),
                            claims=ClaimsConfig(checkout_scope="another_system", unknown_checkouts="send"))
        day = ("--business-date", "2026-11-20")
        assert posfeed(tmp_path, env, "run", "--feed", hourly, *day)[0] == 0
        code, claimed, _ = posfeed(tmp_path, env, "run", "--feed", claims, *day)
        held = owners(sandbox)
    assert code == 65 and claimed["balanced"] is True
    # the ledger of "another_system" knows none of them: every claim goes to the platform, which
    # has hour 10's guests (sent by the hourly feed) and refuses the rest
    assert claimed["accepted"] == 3 and claimed["not_sent"] == 0
    assert claimed["failed_permanent"] == 2  # hour 11's receipt (not sent yet) and a receipt no till printed
    assert held["LON01-R1-20261120-0035"] == "N900001" and held["LON01-R3-20261120-0026"] == "N900003"


def test_platform_messages_naming_member_details_are_masked(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "members_LON01_20261120.csv").write_text(
        "customer_id,email,first_name,last_name,enrolled_at\n"
        "Q1,lee.moss@exa..mple.org,Lee,Moss,2026-11-20T10:00:00Z\n", encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop))
        code, summary, err = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
    assert code == 65 and summary["failed_permanent"] == 1  # the platform refused the address
    with sqlite3.connect(settings_in(tmp_path).ledger_path) as db:
        message = db.execute("SELECT last_error_message FROM transactions").fetchone()[0]
    # (the refused enrollment keeps its details for `posfeed rerun --include-permanent`)
    assert message == "Invalid email address: ***"
    reports = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "reports").rglob("*")
                      if p.is_file())
    for text in (reports, err):
        assert "lee.moss" not in text and "exa..mple" not in text


def test_a_claims_file_without_a_required_column_is_unreadable(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "claims_LON01_20261120.csv").write_text("transaction_id,customer_id\nT1,M1\n")
    (drop / "claims_BER01_20261120.csv").write_text("transaction_id,customer_id,claimed_at\n")  # empty day
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        claims = write_feed(tmp_path, "claims", sample_feed("acme_claims", sandbox, folder=drop))
        code, summary, _ = posfeed(tmp_path, env, "run", "--feed", claims, "--business-date", "2026-11-20")
    assert code == 65 and summary["rows_in"] == 0 and summary["balanced"] is True
    assert summary["unreadable_files"] == [
        {"file": "claims_LON01_20261120.csv", "reason": "required columns missing: claimed_at"}]


def test_records_the_reader_cannot_read_are_rejected_not_sent(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "members_LON01_20261120.csv").write_bytes(
        b"customer_id,email,first_name,last_name,enrolled_at\r\n"
        b"Q1,lee.moss@example.org,Lee,Moss,2026-11-20T10:00:00Z\r\n"
        b"Q2,kit.\x00rowe@example.org,Kit,Rowe,2026-11-20T10:01:00Z\r\n"  # a NUL: refused with its whole bulk
        b"Q3,bo.lamb@example.org,Bo,Lamb,2026-11-20T10:02:00Z,jo.finch@example.org\r\n"  # one field too many
        b"Q4,al.ray@example.org,Al,Ray,2026-11-20T10:03:00Z\r\n"
        b'Q5,"ed.cole@example.org,Ed,Cole,2026-11-20T10:04:00Z\r\n')  # a quote never closed
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop))
        code, summary, err = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        created = set(customers(sandbox))
    assert code == 65 and summary["balanced"] is True
    assert created == {"Q1", "Q4"}
    assert summary["accepted"] == 2 and summary["transactions_rejected"] == 3
    with sqlite3.connect(settings_in(tmp_path).ledger_path) as db:
        rejects = db.execute("SELECT source_line, code, reason, original FROM rejects ORDER BY source_line"
                             ).fetchall()
        dump = "\n".join(db.iterdump())
    assert [(line, code) for line, code, _, _ in rejects] == [
        (3, "R022_NUL_IN_ROW"), (4, "R019_WRONG_FIELD_COUNT"), (6, "R020_UNBALANCED_QUOTE")]
    reports = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "reports").rglob("*")
                      if p.is_file())
    # the reader's excerpt of the line would show the member's details: not for enrollments
    for text in (dump, reports, err):
        for word in ("kit.", "rowe", "bo.lamb", "jo.finch", "ed.cole", "Cole", "Lamb"):
            assert word not in text, word


POS_HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
              "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
              "currency,transaction_total,points_burned,original_transaction_id\n")


def test_claims_of_a_return_or_of_a_members_checkout_are_not_sent(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "pos_LON01_20261120_10.csv").write_text(
        POS_HEADER
        + "G1,LON01,R1,2026-11-20 10:01:07,2026-11-20,,sale,1,P1,Bread,bakery,1,10.00,,10.00,GBP,10.00,,\n"
        "G2,LON01,R1,2026-11-20 10:05:07,2026-11-20,,return,1,P1,Bread,bakery,-1,2.00,,-2.00,GBP,-2.00,,G1\n"
        "S1,LON01,R1,2026-11-20 10:06:07,2026-11-20,M1,sale,1,P1,Bread,bakery,1,5.00,,5.00,GBP,5.00,,\n"
        "G3,LON01,R1,2026-11-20 10:07:07,2026-11-20,,sale,1,P1,Bread,bakery,1,4.00,,4.00,GBP,4.00,,\n",
        encoding="utf-8")
    (drop / "members_LON01_20261120.csv").write_text(
        "customer_id,email,enrolled_at\nM1,m1@example.org,2026-11-20T09:00:00Z\n"
        "M2,m2@example.org,2026-11-20T09:00:00Z\n", encoding="utf-8")
    (drop / "claims_LON01_20261120.csv").write_text(
        "transaction_id,customer_id,claimed_at,store_id\n"
        "G2,M2,2026-11-20T11:00:00Z,LON01\n"  # the refund receipt, not the sale's
        "S1,M2,2026-11-20T11:01:00Z,LON01\n"  # a member's checkout: nothing to claim
        "G3,M2,2026-11-20T11:02:00Z,LON01\n", encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        base = sample_feed("acme_hourly", sandbox, folder=drop)
        hourly = write_feed(tmp_path, "hourly", base,
                            expected=base.expected.model_copy(update={"cadence": "none"}))
        members = write_feed(tmp_path, "members", sample_feed("acme_enrollments", sandbox, folder=drop))
        claims = write_feed(tmp_path, "claims", sample_feed("acme_claims", sandbox, folder=drop))
        assert posfeed(tmp_path, env, "run", "--feed", hourly, *DAY)[0] == 0
        assert posfeed(tmp_path, env, "run", "--feed", members, *DAY)[0] == 0
        before = stats(sandbox)["events_rejected"]
        code, claimed, _ = posfeed(tmp_path, env, "run", "--feed", claims, *DAY)
        refused = stats(sandbox)["events_rejected"] - before
        held = owners(sandbox)
    assert code == 0 and claimed["balanced"] is True
    assert (claimed["accepted"], claimed["not_sent"], claimed["failed_permanent"]) == (1, 2, 0)
    assert refused == 0 and held["G3"] == "M2" and held["S1"] == "M1"
    with sqlite3.connect(settings_in(tmp_path).ledger_path) as db:
        codes = dict(db.execute("SELECT transaction_id, last_error_code FROM transactions "
                                "WHERE scope = 'claims' AND state = 'not_sent'").fetchall())
    assert codes == {"claim:G2": "claim_of_return", "claim:S1": "claim_checkout_not_guest"}


def test_a_member_enrolled_and_changed_in_one_run_is_updated_after_the_opt_in(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    first = [f"P{i},p{i}@example.org,2026-11-20T10:00:00Z" for i in range(1, 7)]
    changed = [f"P{i},p{i}@example.net,2026-11-20T11:00:00Z" for i in range(1, 7)]
    again = "P1,p1@example.com,2026-11-20T12:00:00Z"
    (drop / "members_LON01_20261120.csv").write_text(
        "customer_id,email,enrolled_at\n" + "\n".join([*first, *changed, again]) + "\n", encoding="utf-8")
    with SandboxServer() as sandbox:
        env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
        # more members than a bulk holds: the updates go in other requests than the opt_ins
        members = write_feed(tmp_path, "members",
                             sample_feed("acme_enrollments", sandbox, folder=drop, bulk_size=2),
                             enrollments=EnrollmentsConfig(changes="profile"))
        code, summary, _ = posfeed(tmp_path, env, "run", "--feed", members, *DAY)
        emails = {cid: c["email"] for cid, c in customers(sandbox).items()}
    assert code == 0 and summary["accepted"] == 13 and summary["failed_permanent"] == 0
    assert emails == {"P1": "p1@example.com", **{f"P{i}": f"p{i}@example.net" for i in range(2, 7)}}
