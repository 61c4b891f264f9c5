"""report.html, the reconciliation page, as finance opens it: in a real headless Chromium, offline.

The demo's reports are rendered by `posfeed demo` in a real process; each page is loaded from disk
with every network request recorded (and refused); what the browser shows is compared with
summary.json and with summary.csv summed here, independently of the page's own code.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from pipeline.report_page import format_amount, render_page
from pipeline.reports import build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--keep", str(keep)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode in (0, 65), done.stderr[-2000:]
    return keep / "reports"


def _summary_csv(folder: Path) -> list[dict[str, str]]:
    with (folder / "summary.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_report_folder_has_its_page(demo_reports: Path) -> None:
    folders = [p.parent for p in demo_reports.rglob("summary.csv")]
    assert folders
    assert all((folder / "report.html").is_file() for folder in folders)


def _amount(text: str) -> Decimal:
    return Decimal(text.split("\n")[0].replace(",", ""))


def _check_page(browser: Browser, page_path: Path, screenshot: Path) -> None:
    folder = page_path.parent
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    requests: list[str] = []
    page = browser.new_page()
    page.on("request", lambda request: requests.append(request.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else route.abort())
    page.goto(page_path.as_uri())

    assert requests == [page_path.as_uri()], f"{page_path}: requests besides itself: {requests}"
    verdict = page.locator("#verdict").inner_text()
    assert verdict == ("✓ Balanced" if summary["balanced"] else "✗ Not balanced")

    came_in: dict[str, Decimal] = defaultdict(Decimal)
    accepted: dict[str, Decimal] = defaultdict(Decimal)
    by_store: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in _summary_csv(folder):
        currency = row.get("currency") or "(none)"
        came_in[currency] += Decimal(row["amount_in"])
        accepted[currency] += Decimal(row["accepted_amount"])
        by_store[(row["store_id"] or "(none)", currency)] += Decimal(row["amount_in"])
    per_currency = summary.get("currencies")
    for currency in came_in:
        shown_in = page.locator(f'td[data-currency="{currency}"][data-figure="amount_in"]').inner_text()
        shown_accepted = page.locator(f'td[data-currency="{currency}"][data-figure="accepted"]').inner_text()
        assert shown_in == format_amount(came_in[currency], "" if currency == "(none)" else currency)
        assert _amount(shown_accepted) == accepted[currency]
        if per_currency:  # the JSON's own per-currency figures ("" for rows without a currency)
            own = per_currency["" if currency == "(none)" else currency]
            assert _amount(shown_in) == Decimal(own["amount_in"])
            assert _amount(shown_accepted) == Decimal(own["amount_accepted"])
        elif len(came_in) == 1:
            assert _amount(shown_in) == Decimal(summary["amount_in"])
            assert _amount(shown_accepted) == Decimal(summary["amount_accepted"])
    for (store, currency), amount in by_store.items():
        row_locator = page.locator(f'tr[data-store="{store}"][data-currency="{currency}"]')
        assert row_locator.count() == 1, (page_path, store, currency)
        assert _amount(row_locator.locator('td[data-figure="amount_in"]').inner_text()) == amount
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()


def test_the_page_in_chromium_shows_the_reports_figures_and_loads_nothing(
    demo_reports: Path, tmp_path: Path
) -> None:
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    pages = sorted(demo_reports.rglob("report.html"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for page_path in pages:
                _check_page(browser, page_path, tmp_path / f"{page_path.parent.parent.name}.png")
        finally:
            browser.close()


def test_user_data_is_escaped_and_the_page_has_no_script() -> None:
    hostile = "<script>alert(1)</script>"
    report = build_report(
        report_id="r1", feed=hostile, transactions=[], file_totals=[],
        rejects=[{"original": {"transaction_id": hostile}, "code": "R001_MISSING_FIELD",
                  "reason": f"product {hostile} is empty", "field": "product_id",
                  "source_file": f"{hostile}.csv", "source_line": 2}],
    )

    html = render_page(report)

    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


@pytest.mark.parametrize(("value", "currency", "shown"), [
    ("1234.5", "GBP", "1,234.50"), ("1234", "JPY", "1,234"), ("1.5", "KWD", "1.500"),
    ("-6.91", "EUR", "-6.91"), ("0.1234", "GBP", "0.1234"), ("1000000", "", "1,000,000.00"),
])
def test_amounts_have_the_currencys_minor_units_and_thousands_separators(
    value: str, currency: str, shown: str
) -> None:
    assert format_amount(Decimal(value), currency) == shown


def test_a_file_in_two_currencies_shows_two_totals_never_their_sum(tmp_path: Path) -> None:
    """One file with GBP and EUR rows: every amount on the page is one currency's, in Chromium."""
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    report = build_report(
        report_id="r1", feed="mixed", transactions=[], rejects=[], pending_is_final=True,
        file_totals=[("mixed.csv", "LON01", "2026-11-20", 0, 0, Decimal("12.34"), "GBP"),
                     ("mixed.csv", "LON01", "2026-11-20", 0, 0, Decimal("56.78"), "EUR")],
    )
    write_report(report, tmp_path / "mixed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "mixed" / "report.html").as_uri())
            text = page.locator("body").inner_text()
            assert "69.12" not in text  # 12.34 GBP + 56.78 EUR means nothing
            file_row = page.locator('tr[data-file="mixed.csv"]')
            assert file_row.count() == 1
            shown = {cell.get_attribute("data-currency"): cell.inner_text()
                     for cell in file_row.locator("[data-currency]").all()}
        finally:
            browser.close()
    assert shown == {"EUR": "56.78 EUR", "GBP": "12.34 GBP"}
