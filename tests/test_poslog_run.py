"""The POSLog sample day through `posfeed run` (a real process) against the sandbox: balanced, every
transaction delivered once, and a second run sends nothing; `posfeed check FILE.xml` without a feed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from pipeline.errors import EXIT_DATA, EXIT_OK
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import REPO, delivered_ids, feed_toml, sample_feed, stats
from tests.sandbox_fixtures import TARGET_KITS

SAMPLE = REPO / "sample_data" / "poslog" / "POSLog_0042_20261120.xml"
ARTS = {"a": "http://www.nrf-arts.org/IXRetail/namespace/"}


def _posfeed(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args],
        env=env, capture_output=True, text=True, cwd=tmp, timeout=300, check=False,
    )


def _day_run(tmp: Path, sandbox: SandboxServer, drop: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment and arguments of a `posfeed run` of the sample POSLog feed over ``drop``."""
    feed_file = tmp / "poslog_store.toml"
    feed_file.write_text(feed_toml(sample_feed("poslog_store", sandbox, folder=drop)), encoding="utf-8")
    env = {**os.environ, **TARGET_KITS["antavo"].env(sandbox)}
    return env, ("run", "--feed", str(feed_file), "--business-date", "2026-11-20", "--json")


def _finished_retail() -> dict[str, tuple[str, Decimal]]:
    """Transaction id -> (sale or return, pre-tax total), read with ElementTree, not the reader."""
    found: dict[str, tuple[str, Decimal]] = {}
    for txn in ET.parse(SAMPLE).getroot().findall("a:Transaction", ARTS):
        body = txn.find("a:RetailTransaction", ARTS)
        if body is None or body.get("TransactionStatus") != "Finished":
            continue
        tid = "-".join((txn.findtext("a:RetailStoreID", "", ARTS), txn.findtext("a:WorkstationID", "", ARTS),
                        txn.findtext("a:BusinessDayDate", "", ARTS).replace("-", ""),
                        txn.findtext("a:SequenceNumber", "", ARTS)))
        figures = {t.get("TotalType"): Decimal(t.text or "0") for t in body.findall("a:Total", ARTS)}
        kind = "return" if body.get("TypeCode") == "Return" else "sale"
        found[tid] = (kind, figures["TransactionGrandAmount"] - figures["TransactionTaxAmount"])
    return found


@pytest.mark.slow
def test_poslog_sample_day_runs_balanced_and_exactly_once(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy2(SAMPLE, drop / SAMPLE.name)
    expected = _finished_retail()
    with SandboxServer() as sandbox:
        env, args = _day_run(tmp_path, sandbox, drop)

        first = _posfeed(tmp_path, env, *args)
        assert first.returncode == EXIT_OK, first.stderr[-3000:]
        summary = json.loads(first.stdout)
        assert summary["balanced"] is True
        assert summary["transactions_in"] == len(expected) == 4
        assert summary["accepted"] == len(expected) and summary["transactions_rejected"] == 0
        assert Decimal(summary["amount_in"]) == sum(total for _, total in expected.values())
        assert summary["skipped_by_kind"] == {"control": 2, "suspended": 1, "tender_control": 1, "voided": 1}
        after_first = stats(sandbox)
        assert after_first["duplicate_transaction_attempts"] == 0
        ids = delivered_ids(sandbox)
        assert sorted(ids) == sorted(t for t, (kind, _) in expected.items() if kind == "sale")
        assert len(ids) == len(set(ids))
        # the return refunds its original sale, which the log names (Antavo nests it there)
        listing = httpx.get(f"{sandbox.url}/_sandbox/transactions", timeout=10).json()["transactions"]
        refunded = {str(r["transaction_id"]): r.get("refunds") or [] for r in listing}
        (original,) = [t for t, refunds in refunded.items() if refunds]
        assert original == "0042-03-20261120-1004"
        assert [Decimal(str(r["amount"])) for r in refunded[original]] == [
            -total for kind, total in expected.values() if kind == "return"]

        second = _posfeed(tmp_path, env, *args)
        assert second.returncode == EXIT_OK, second.stderr[-3000:]
        again = json.loads(second.stdout)
        assert again["rows_in"] == 0 and again["balanced"] is True
        # nothing sent twice: the one request is the credential check, which sends no event
        assert stats(sandbox)["requests"] == after_first["requests"] + 1
        assert stats(sandbox)["events_accepted"] == after_first["events_accepted"]


def test_check_an_xml_file_without_a_feed(tmp_path: Path) -> None:
    done = _posfeed(tmp_path, dict(os.environ), "check", str(SAMPLE), "--json")
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["transactions_valid"] == 4 and summary["rows_rejected"] == 0
    assert summary["skipped_by_kind"]["control"] == 2
    text = _posfeed(tmp_path, dict(os.environ), "check", str(SAMPLE)).stdout
    assert "skipped (never sent): control 2, suspended 1, tender_control 1, voided 1" in text
    broken = tmp_path / "broken.xml"
    broken.write_text(SAMPLE.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    done = _posfeed(tmp_path, dict(os.environ), "check", str(broken), "--json")
    assert done.returncode != EXIT_OK
    reason = json.loads(done.stdout)["unreadable_files"][0]["reason"]
    assert "not well-formed XML" in reason and "after transaction" in reason


def test_check_shows_the_money_of_a_transaction_without_items(tmp_path: Path) -> None:
    # a sale of 2.00, then 5.00 taken with only a tender: before, the 5.00 left the balance
    # (amount_in 2.00, skipped no_items 1) with no reason shown
    head = ("<RetailStoreID>0042</RetailStoreID><WorkstationID>03</WorkstationID><SequenceNumber>{}"
            "</SequenceNumber><BusinessDayDate>2026-11-20</BusinessDayDate><EndDateTime>2026-11-20T10:15:00"
            "</EndDateTime><CurrencyCode>USD</CurrencyCode>")
    totals = ('<Total TotalType="TransactionTaxAmount">0.00</Total>'
              '<Total TotalType="TransactionGrandAmount">{}</Total>')
    sale = ("<LineItem><SequenceNumber>1</SequenceNumber><Sale><ItemID>A</ItemID><ActualSalesUnitPrice>2.00"
            "</ActualSalesUnitPrice><ExtendedAmount>2.00</ExtendedAmount><Quantity>1</Quantity></Sale></LineItem>")
    tender = ('<LineItem><SequenceNumber>1</SequenceNumber><Tender TenderType="Cash"><Amount>5.00</Amount>'
              "</Tender></LineItem>")
    path = tmp_path / "till.xml"
    path.write_text(
        f'<?xml version="1.0"?>\n<POSLog xmlns="{ARTS["a"]}">\n'
        f"<Transaction>{head.format(1)}<RetailTransaction>{sale}{totals.format('2.00')}</RetailTransaction>"
        "</Transaction>\n"
        f"<Transaction>{head.format(2)}<RetailTransaction>{tender}{totals.format('5.00')}</RetailTransaction>"
        "</Transaction>\n</POSLog>\n", encoding="utf-8")
    done = _posfeed(tmp_path, dict(os.environ), "check", str(path), "--json", "--out", str(tmp_path / "out"))
    assert done.returncode != EXIT_OK
    summary = json.loads(done.stdout)
    money = (summary["amount_in"], summary["amount_valid"], summary["amount_rejected"])
    assert money == ("7.00", "2.00", "5.00")
    assert summary["rejects_by_code"] == {"R032_NO_ITEMS": 1} and summary["skipped_by_kind"] == {}
    rejects = (tmp_path / "out" / "rejects.csv").read_text(encoding="utf-8")
    assert "R032_NO_ITEMS" in rejects and "TransactionGrandAmount=5.00 TransactionTaxAmount=0.00" in rejects


def test_hostile_and_broken_logs_are_set_aside_and_the_rest_of_the_run_goes_out(tmp_path: Path) -> None:
    """A run with an entity bomb, an external entity, deep nesting and two joined documents next
    to the sample day: each is unreadable with its reason, none crashes the run (exit 70), and the
    sample day is delivered in full."""
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy2(SAMPLE, drop / SAMPLE.name)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT", encoding="utf-8")
    text = SAMPLE.read_text(encoding="utf-8")
    prolog, rest = text.split("\n", 1)
    laughs = '<!ENTITY a0 "ha">' + "".join(f'<!ENTITY a{n} "{f"&a{n - 1};" * 10}">' for n in range(1, 10))
    hostile = {
        "laughs": f"{prolog}\n<!DOCTYPE POSLog [{laughs}]>\n"
                  + rest.replace("<Description>", "<Description>&a9;"),
        "xxe": f'{prolog}\n<!DOCTYPE POSLog [<!ENTITY x SYSTEM "{secret.as_uri()}">]>\n'
               + rest.replace("<Description>", "<Description>&x;"),
        "deep": text.replace("<Description>", "<Description>" + "<x>" * 100_000 + "</x>" * 100_000, 1),
        "joined": text + text,
    }
    for n, content in enumerate(hostile.values()):
        (drop / f"POSLog_{n:04d}_20261120.xml").write_text(content, encoding="utf-8")
    names = {f"POSLog_{n:04d}_20261120.xml": kind for n, kind in enumerate(hostile)}
    with SandboxServer() as sandbox:
        env, args = _day_run(tmp_path, sandbox, drop)
        done = _posfeed(tmp_path, env, *args)
        assert done.returncode == EXIT_DATA, done.stderr[-3000:]  # unreadable files: a data error, no crash
        summary = json.loads(done.stdout)
        reasons = {names[u["file"]]: u["reason"] for u in summary["unreadable_files"]}
        assert set(reasons) == set(hostile)
        assert "DOCTYPE" in reasons["laughs"] and "DOCTYPE" in reasons["xxe"]
        assert "nested more than" in reasons["deep"] and "only one document per file" in reasons["joined"]
        assert summary["accepted"] == len(_finished_retail()) and summary["balanced"] is True
        assert "TOP-SECRET" not in done.stdout + done.stderr
