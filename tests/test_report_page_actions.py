"""report.html tells finance everything to act on, as it opens the page: in a real headless Chromium.

Each case is made the way it happens, by ``posfeed run`` against the real sandbox platforms with
the fault that creates it: a return the platform refunds in part (``partly_refunded``), a return of
a sale the platform refused (``original_refused``), a return waiting for its failed sale
(``original_not_accepted``), a void of a sale already on CRM.COM (``void_of_sent_sale``), a sale in
doubt that two purchases on CRM.COM match (``ambiguous_purchase``). Every
item to act on must be on the page with its count, its money per currency, what to do and its
transactions (id, store, date), with the same figures as summary.csv, summary.json and detail.csv
of the same run; no customer id in clear; no console error; readable at a phone's width, without
JavaScript; the export's hostile text escaped.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

from pipeline.ledger import TxnRecord, TxnState
from pipeline.report_page import page_data
from pipeline.reports import build_report, write_report
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import REPO, feed_toml
from tests.sandbox_fixtures import crmcom_env, crmcom_feed
from tests.sinks.test_crmcom_hostile_returns import purchases
from tests.test_crmcom_returns_e2e import HEADER as CRM_HEADER
from tests.test_crmcom_returns_e2e import WINE, YOG, posfeed
from tests.test_crmcom_returns_e2e import line as crm_line
from tests.test_refunds_hostile import SALE, Posfeed, line, ret, write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 375, "height": 740}
# a store id as an export may carry it: markup and both quotes (CSV-quoted in the file)
HOSTILE_STORE = "LON'\"<script>alert(1)</script>"
HOSTILE_CSV = '"LON\'""<script>alert(1)</script>"'
# customer ids the page must never show in clear (logging.hash_customer_ids is on by default);
CUSTOMERS = ("MEMBER-4471", "unknown-5521")  # the sandbox knows no customer "unknown..."


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _amount(text: str) -> Decimal:
    return Decimal(text.split()[0].replace(",", ""))


def _open(page: Page, path: Path) -> list[str]:
    """Load ``path``; the console errors and page errors it gave."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    return errors


def _item(page: Page, key: str) -> dict[str, Any]:
    """One item to act on as the page shows it: count, money per currency, what to do, rows."""
    section = page.locator(f'section[data-action="{key}"]')
    assert section.count() == 1, f"no item {key!r} to act on on the page"
    assert section.is_visible()
    amounts: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for cell in section.locator("[data-currency][data-figure]").all():
        amounts[str(cell.get_attribute("data-figure"))][str(cell.get_attribute("data-currency"))] = \
            _amount(cell.inner_text())
    rows = {}
    for row in section.locator("tr[data-transaction]").all():
        rows[str(row.get_attribute("data-transaction"))] = {
            str(cell.get_attribute("data-field")): cell.inner_text()
            for cell in row.locator("[data-field]").all()}
    return {"count": int(section.locator('[data-figure="count"]').inner_text()),
            "amounts": dict(amounts), "todo": section.locator('[data-figure="todo"]').inner_text(),
            "rows": rows}


def _check_item(page: Page, folder: Path, key: str, state: str, code: str) -> dict[str, Any]:
    """The item of ``code`` (transactions in ``state``) against detail.csv of the same run."""
    item = _item(page, key)
    mine = [r for r in _csv(folder / "detail.csv") if r["state"] == state and r["error_code"] == code]
    assert item["count"] == len(mine) > 0
    money: dict[str, Decimal] = defaultdict(Decimal)
    for row in mine:
        money[row["currency"]] += Decimal(row["amount"])
    assert item["amounts"]["amount"] == dict(money)
    assert set(item["rows"]) == {r["transaction_id"] for r in mine}
    for row in mine:
        shown = item["rows"][row["transaction_id"]]
        assert (shown["store_id"], shown["business_date"], shown["source_file"]) == \
            (row["store_id"], row["business_date"], row["source_file"])
        assert _amount(shown["amount"]) == Decimal(row["amount"])
    assert item["todo"].strip()
    return item


def _state_totals(page: Page, folder: Path, state: str) -> None:
    """The items of one state add up to summary.csv's count and money of it, per currency."""
    summary = _csv(folder / "summary.csv")
    expected_money: dict[str, Decimal] = defaultdict(Decimal)
    for row in summary:
        if int(row[f"{state}_count"]):
            expected_money[row["currency"]] += Decimal(row[f"{state}_amount"])
    count = 0
    money: dict[str, Decimal] = defaultdict(Decimal)
    for section in page.locator(f'section[data-state="{state}"]').all():
        count += int(section.locator('[data-figure="count"]').inner_text())
        for cell in section.locator('[data-figure="amount"][data-currency]').all():
            money[str(cell.get_attribute("data-currency"))] += _amount(cell.inner_text())
    assert count == sum(int(r[f"{state}_count"]) for r in summary)
    assert dict(money) == dict(expected_money)


def _check_page_at_large(page: Page, html: str, errors: list[str]) -> None:
    """No console error, no script, no customer id in clear."""
    assert errors == []
    assert page.locator("script").count() == 0
    for customer in CUSTOMERS:
        assert customer not in html


def _fits_a_phone(page: Page) -> None:
    """Nothing makes the page wider than the phone (a wide table scrolls in its own box), and
    every item to act on is as narrow as the screen."""
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for section in page.locator("section[data-action]").all():
        box = section.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]


def test_every_item_to_act_on_is_on_the_page_with_the_runs_figures(tmp_path: Path) -> None:
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    with SandboxServer() as sandbox:
        posfeed_ = Posfeed(tmp_path / "antavo", sandbox, tmp_path / "antavo" / "state" / "ledger.sqlite")
        # R-1 refunded in part (the platform refuses the bread); S-2's customer is unknown to the
        # platform, so its sale is refused and R-2 never sent; S-2 and R-2 carry a hostile store id
        sandbox.config.refuse_refund_items = ("BREAD",)
        write(posfeed_.drop, "pos_LON01_20261120_10.csv", [
            *(s.replace(",M1,", f",{CUSTOMERS[0]},") for s in SALE),
            ret("R-1", 1, "MILK", "1", "1.20", "4.20", "S-1", customer=CUSTOMERS[0]),
            ret("R-1", 2, "BREAD", "1", "3.00", "4.20", "S-1", customer=CUSTOMERS[0]),
            line("S-2", 1, "MILK", "2", "1.20", "2.40", customer=CUSTOMERS[1], store=HOSTILE_CSV),
            ret("R-2", 1, "MILK", "1", "1.20", "1.20", "S-2", customer=CUSTOMERS[1], store=HOSTILE_CSV)])
        first = posfeed_.run()
        # every request fails (500): S-3 is not delivered, so its return R-3 waits for it
        sandbox.config.refuse_refund_items = ()
        sandbox.config.fault_kinds, sandbox.config.fault_rate = ("error_500",), 1.0
        write(posfeed_.drop, "pos_LON01_20261120_12.csv", [
            line("S-3", 1, "MILK", "2", "1.20", "2.40", customer=CUSTOMERS[0], at="12:00:00"),
            ret("R-3", 1, "MILK", "1", "1.20", "1.20", "S-3", customer=CUSTOMERS[0], at="12:30:00")])
        second = posfeed_.run()
        sandbox.config.fault_rate = 0.0

        # CRM.COM: S-1 delivered in the morning, voided at the till in the afternoon
        drop = tmp_path / "crm" / "drop"
        drop.mkdir(parents=True)
        feed = crmcom_feed(sandbox, "crmvoid", bulk_size=1)
        feed = feed.model_copy(update={"timezone": "Europe/Berlin", "source": feed.source.model_copy(
            update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"})})
        feed_file = tmp_path / "crm" / "crmvoid.toml"
        feed_file.write_text(feed_toml(feed), encoding="utf-8")
        env = {**os.environ, **crmcom_env(sandbox)}
        run = ("run", "--feed", str(feed_file), "--business-date", "2026-11-20")
        (drop / "morning.csv").write_text("\n".join([
            CRM_HEADER, crm_line("S-1", CUSTOMERS[0], "sale", 1, *WINE, 1, "19.59"),
            crm_line("S-1", CUSTOMERS[0], "sale", 2, *YOG, 3, "19.59")]) + "\n", encoding="utf-8")
        posfeed(tmp_path / "crm", env, *run)
        (drop / "afternoon.csv").write_text("\n".join([
            CRM_HEADER,
            crm_line("V-1", CUSTOMERS[0], "void", 1, *WINE, 1, "19.59", original="S-1", hour="15"),
            crm_line("V-1", CUSTOMERS[0], "void", 2, *YOG, 3, "19.59", original="S-1", hour="15")]) + "\n",
            encoding="utf-8")
        third = posfeed(tmp_path / "crm", env, *run)

    folders = [Path(done["reports_path"]) for done in (first, second, third)]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(java_script_enabled=False, viewport=PHONE)
            pages = []
            for folder in folders:
                page = context.new_page()
                errors = _open(page, folder / "report.html")
                _check_page_at_large(page, (folder / "report.html").read_text(encoding="utf-8"), errors)
                pages.append(page)
            first_page, second_page, third_page = pages

            # the first run: R-1 refunded in part, R-2 whose sale the platform refused
            summary = _csv(folders[0] / "summary.csv")
            partly = _check_item(first_page, folders[0], "partly_refunded", "failed_permanent",
                                 "partly_refunded")
            refunded: dict[str, Decimal] = defaultdict(Decimal)
            for row in summary:
                if int(row["partly_refunded_count"]):
                    refunded[row["currency"]] += Decimal(row["partly_refunded_amount"])
            assert partly["count"] == sum(int(r["partly_refunded_count"]) for r in summary)
            assert partly["amounts"]["refunded"] == dict(refunded) == {"GBP": Decimal("-1.20")}
            assert partly["amounts"]["to_review"] == {"GBP": Decimal("-3.00")}
            refused = _check_item(first_page, folders[0], "original_refused", "failed_permanent",
                                  "original_refused")
            assert refused["rows"]["R-2"]["store_id"] == HOSTILE_STORE  # shown as text, not run
            _state_totals(first_page, folders[0], "failed_permanent")
            json_first = json.loads((folders[0] / "summary.json").read_text(encoding="utf-8"))
            assert json_first["partly_refunded"] == partly["count"]
            assert Decimal(json_first["currencies"]["GBP"]["amount_partly_refunded"]) == Decimal("-1.20")

            # the second run: R-3 waits for its sale S-3, which failed retryably
            waiting = _check_item(second_page, folders[1], "original_not_accepted", "failed_retryable",
                                  "original_not_accepted")
            assert set(waiting["rows"]) == {"R-3"}
            _state_totals(second_page, folders[1], "failed_retryable")

            # the CRM.COM afternoon: V-1 voids S-1, which stays on CRM.COM
            voided = _check_item(third_page, folders[2], "void_of_sent_sale", "void", "void_of_sent_sale")
            summary = _csv(folders[2] / "summary.csv")
            json_third = json.loads((folders[2] / "summary.json").read_text(encoding="utf-8"))
            assert voided["count"] == sum(int(r["void_of_sent_sale_count"]) for r in summary) \
                == json_third["voids_of_sent_sales"]
            assert voided["amounts"]["amount"] == {"EUR": sum(
                (Decimal(r["void_of_sent_sale_amount"]) for r in summary), Decimal(0))}
            assert "S-1" in voided["rows"]["V-1"]["message"]
            verdict = third_page.locator("#verdict").inner_text()
            assert "void" in third_page.locator('section[aria-label="Verdict"]').inner_text()
            assert verdict == "✓ Balanced"  # balanced, and still something to act on
            for number, page in enumerate(pages):
                _fits_a_phone(page)
                page.screenshot(path=str(tmp_path / f"phone-{number}.png"), full_page=True)
        finally:
            browser.close()


def _failed(tid: str, code: str, message: str, amount: str) -> TxnRecord:
    return TxnRecord(
        id=int(tid[-1]), scope="crm", feed="crmday", transaction_id=tid, content_hash="h",
        state=TxnState.FAILED_PERMANENT, primary_id=None, attempts=1, last_error_code=code,
        last_error_message=message, event_ids=(), points=None, file_id=1, source_file="day.csv",
        source_lines=(int(tid[-1]) + 1,), rows=1, store_id="BER01", business_date="2026-11-20",
        transaction_type="sale", currency="EUR", amount=Decimal(amount), reject_code=None,
        first_run_id="r1", last_run_id="r1")


def test_several_matching_purchases_are_an_item_of_their_own_done_by_hand(tmp_path: Path) -> None:
    """A sale failed for good as ambiguous_purchase is not a plain failure to rerun: its item says
    to settle the purchases on CRM.COM by hand; the platform's message, hostile text and all, is
    shown as text in Chromium, no script run."""
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    hostile = "2 purchases match the sale (p-1, p-2 \"<script>alert('x')</script>\")"
    report = build_report(
        report_id="r1", feed="crmday", rejects=[],
        file_totals=[("day.csv", "BER01", "2026-11-20", 2, 2, Decimal("30.00"), "EUR")],
        transactions=[_failed("T1", "ambiguous_purchase", hostile, "19.59"),
                      _failed("T2", "UNKNOWN_CUSTOMER", "no such customer", "10.41")])
    write_report(report, tmp_path / "r1")
    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PHONE)
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            errors = _open(page, tmp_path / "r1" / "report.html")
            ambiguous, plain = _item(page, "ambiguous_purchase"), _item(page, "failed_permanent")
            _check_page_at_large(page, (tmp_path / "r1" / "report.html").read_text(encoding="utf-8"), errors)
            _fits_a_phone(page)
        finally:
            browser.close()
    assert dialogs == []
    assert (ambiguous["count"], ambiguous["amounts"]["amount"]) == (1, {"EUR": Decimal("19.59")})
    assert ambiguous["rows"]["T1"]["message"] == hostile
    assert "by hand" in ambiguous["todo"] and "rerun" not in ambiguous["todo"]
    assert (plain["count"], set(plain["rows"])) == (1, {"T2"}) and "rerun" in plain["todo"]


def test_a_dry_runs_transactions_to_send_are_not_an_item_to_act_on() -> None:
    """In a dry run "queued" means "would be sent": nothing for a person to do about it (a real
    run's queued transactions are: the next run sends them)."""
    queued = replace(_failed("T1", "", "", "19.59"), state=TxnState.QUEUED, last_error_code=None,
                     last_error_message=None)
    totals = [("day.csv", "BER01", "2026-11-20", 1, 1, Decimal("19.59"), "EUR")]
    dry = build_report(report_id="r1", feed="crmday", rejects=[], file_totals=totals,
                       transactions=[queued], pending_is_final=True, extra={"dry_run": True})
    real = build_report(report_id="r2", feed="crmday", rejects=[], file_totals=totals,
                        transactions=[queued])

    assert [item["key"] for item in page_data(dry)["action_items"]] == []
    assert page_data(dry)["actions"] == []
    assert [item["key"] for item in page_data(real)["action_items"]] == ["queued"]


def _crm_run(tmp: Path, env: dict[str, str], feed_file: Path) -> tuple[int, dict[str, Any], str]:
    """One `posfeed run --json` of ``feed_file`` with its state under ``tmp``: exit, summary, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), "run", "--feed", str(feed_file), "--business-date", "2026-11-20", "--json"],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def _crm_feed_file(sandbox: SandboxServer, folder: Path, name: str, **target: Any) -> Path:
    """A CRM.COM feed reading ``folder/drop`` (made here), its file in ``folder``."""
    drop = folder / "drop"
    drop.mkdir(parents=True)
    feed = crmcom_feed(sandbox, name, bulk_size=1, **target)
    feed = feed.model_copy(update={"timezone": "Europe/Berlin", "source": feed.source.model_copy(
        update={"kind": "local", "path": str(drop), "pattern": "*.csv", "readiness": "none"})})
    feed_file = folder / f"{name}.toml"
    feed_file.write_text(feed_toml(feed), encoding="utf-8")
    return feed_file


def test_a_sale_in_doubt_that_matches_two_purchases_is_an_item_made_by_real_runs(tmp_path: Path) -> None:
    """Made the way it happens: another system put sale S-1 on CRM.COM twice (same reference,
    total, day and customer: CRM.COM keeps a repeated reference); posfeed's own run of S-1 gets no
    answer (the connection drops), so S-1 is in doubt; the next run looks it up (`list`), finds
    two purchases it cannot tell apart, adopts neither and fails it for good (`ambiguous_purchase`).
    The page of that run shows the item with its count and money, as detail.csv has them."""
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    sale = [CRM_HEADER, crm_line("S-1", CUSTOMERS[0], "sale", 1, *WINE, 1, "19.59"),
            crm_line("S-1", CUSTOMERS[0], "sale", 2, *YOG, 3, "19.59"),
            crm_line("S-2", CUSTOMERS[0], "sale", 1, *WINE, 1, "11.49")]
    with SandboxServer() as sandbox:
        sandbox.state.platforms["crmcom"].config.unique_reference_numbers = False
        env = {**os.environ, **crmcom_env(sandbox)}
        for other in ("other-1", "other-2"):  # another system's two deliveries of S-1
            feed_file = _crm_feed_file(sandbox, tmp_path / other, "crmother")
            (tmp_path / other / "drop" / "day.csv").write_text("\n".join(sale[:3]) + "\n", encoding="utf-8")
            code, _, err = _crm_run(tmp_path / other, env, feed_file)
            assert code == 0, err[-3000:]
        mine = tmp_path / "mine"
        feed_file = _crm_feed_file(sandbox, mine, "crmamb", lookup="list")
        (mine / "drop" / "day.csv").write_text("\n".join(sale) + "\n", encoding="utf-8")
        sandbox.config.fault_kinds, sandbox.config.fault_rate = ("drop",), 1.0  # no answer at all
        code, first, err = _crm_run(mine, env, feed_file)
        assert code == 75, err[-3000:]
        assert first["failed_retryable"] == 2 and first["accepted"] == 0  # in doubt: held
        sandbox.config.fault_rate = 0.0
        others = set(purchases(sandbox))
        assert len(others) == 2
        code, second, err = _crm_run(mine, env, feed_file)
        assert code == 65, err[-3000:]
        stored = purchases(sandbox)
    # S-2 created once; S-1 neither adopted nor created again
    assert len(stored) == 3 and others < set(stored)
    folder = Path(second["reports_path"])
    detail = [r for r in _csv(folder / "detail.csv") if r["error_code"] == "ambiguous_purchase"]
    assert [(r["transaction_id"], r["state"], r["origin"]) for r in detail] == \
        [("S-1", "failed_permanent", "settle")]
    assert all(purchase in detail[0]["error_message"] for purchase in others)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(java_script_enabled=False, viewport=PHONE).new_page()
            errors = _open(page, folder / "report.html")
            _check_page_at_large(page, (folder / "report.html").read_text(encoding="utf-8"), errors)
            item = _check_item(page, folder, "ambiguous_purchase", "failed_permanent", "ambiguous_purchase")
            _state_totals(page, folder, "failed_permanent")
            title = page.locator('section[data-action="ambiguous_purchase"] h3').inner_text()
            verdict = page.locator('section[aria-label="Verdict"]')
            listed = verdict.locator('a[href="#action-ambiguous_purchase"]').inner_text()
            _fits_a_phone(page)
        finally:
            browser.close()
    assert (item["count"], item["amounts"]["amount"]) == (1, {"EUR": Decimal("19.59")})
    assert set(item["rows"]) == {"S-1"} and all(p in item["rows"]["S-1"]["message"] for p in others)
    assert "by hand" in item["todo"] and "rerun" not in item["todo"]
    assert title == listed == ("1 transaction with several matching purchases on CRM.COM, nothing "
                               "cancelled or created")
