"""report.html, the reconciliation page, as finance opens it: in a real headless Chromium, offline.

The demo's reports are rendered by `posfeed demo` in a real process; each page is loaded from disk
with every network request recorded (and refused); what the browser shows is compared with
summary.json and with summary.csv summed here, independently of the page's own code.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from pipeline.ledger import TxnRecord, TxnState
from pipeline.report_page import format_amount, render_page
from pipeline.reports import Report, build_report, write_report

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
    # at a desktop's width (1280 px) every table fits: none scrolls in its box, no column cut off
    overflowing = page.evaluate("""() => [...document.querySelectorAll(".scroll")]
        .filter((box) => box.scrollWidth > box.clientWidth)
        .map((box) => box.querySelector("caption").textContent)""")
    assert page.viewport_size == {"width": 1280, "height": 720}
    assert overflowing == [], (page_path, overflowing)
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


@contextmanager
def _page_of(report: Report, folder: Path, viewport: dict[str, int] | None = None) -> Iterator[Page]:
    """``report`` written into ``folder`` and its page open in a headless Chromium (at ``viewport``)."""
    assert CHROMIUM, "chromium not found: install Debian's chromium package (scripts/test does)"
    write_report(report, folder)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
            page.goto((folder / "report.html").as_uri())
            yield page
        finally:
            browser.close()


def _txn(number: int, state: TxnState, code: str | None, amount: str, currency: str = "EUR") -> TxnRecord:
    return TxnRecord(
        id=number, scope="words", feed="words", transaction_id=f"T{number}", content_hash="h",
        state=state, primary_id=None, attempts=1, last_error_code=code, last_error_message=code,
        event_ids=(), points=None, file_id=1, source_file="day.csv", source_lines=(number + 1,), rows=1,
        store_id="BER01", business_date="2026-11-20", transaction_type="sale", currency=currency,
        amount=Decimal(amount), reject_code=None, first_run_id="r1", last_run_id="r1")


# a count of 1 followed by a plural, or of 2 by a singular, of the page's nouns
_ONE_WITH_PLURAL = re.compile(r"\b1 (voids|returns|conflicts|transactions|rows|files|problems|"
                              r"expected files|unreadable files|open problems)\b")
_TWO_WITH_SINGULAR = re.compile(r"\b2 (void|return|conflict|transaction|row|file|problem|"
                                r"expected file|unreadable file|open problem)\b(?!s)")


def test_every_count_on_the_page_agrees_with_its_noun_in_chromium(tmp_path: Path) -> None:
    """Counts of 1 and of 2 side by side: "1 return ...", "2 returns ...", never "1 returns" nor
    "file(s)", in the verdict's list, the items' titles and the money tables' captions."""
    failed, retryable = TxnState.FAILED_PERMANENT, TxnState.FAILED_RETRYABLE
    transactions = [
        _txn(1, TxnState.VOID, "void_of_sent_sale", "10.00"),
        _txn(2, failed, "partly_refunded", "-4.00"),
        _txn(3, failed, "original_refused", "-1.00"), _txn(4, failed, "original_refused", "-2.00"),
        _txn(5, failed, "ambiguous_purchase", "19.59"),
        _txn(6, TxnState.CONFLICT, "", "3.00"),
        _txn(7, retryable, "original_not_found", "-5.00"), _txn(8, retryable, "original_not_found", "-6.00"),
        _txn(9, TxnState.ACCEPTED, None, "7.00", "GBP"),
    ]
    extra = {"missing_files": [{"store_id": "LON01", "business_date": "2026-11-20", "file": f"f{n}.csv",
                                "status": "missing", "due_at": "2026-11-21T06:00:00+00:00"} for n in (1, 2)],
             "problems": [{"problem_id": 1, "kind": "backlog", "summary": "waiting", "action": "wait",
                           "status": "open"}]}
    report = build_report(
        report_id="r1", feed="words", transactions=transactions, rejects=[], extra=extra,
        file_totals=[("day.csv", "BER01", "2026-11-20", 8, 8, Decimal("20.59"), "EUR"),
                     ("day.csv", "BER01", "2026-11-20", 1, 1, Decimal("7.00"), "GBP")],
        files_not_read=[("garbage.csv", "unreadable", "not UTF-8")])
    with _page_of(report, tmp_path / "r1") as page:
        text = page.locator("body").inner_text()
        verdict = [li.inner_text() for li in page.locator('section[aria-label="Verdict"] li').all()]
        titles = {str(section.get_attribute("data-action")): section.locator("h3").inner_text()
                  for section in page.locator("section[data-action]").all()}
        captions = [c.inner_text() for c in page.locator("caption").all()]
    assert titles == {
        "void_of_sent_sale": "1 void of a sale already on the platform",
        "partly_refunded": "1 return the platform refunded in part",
        "ambiguous_purchase": "1 transaction with several matching purchases on CRM.COM, nothing "
                              "cancelled or created",
        "original_refused": "2 returns whose sale the platform refused",
        "conflict": "1 conflict (held for review)",
        "original_not_found": "2 returns waiting for a sale not arrived yet",
    }
    assert [line.split(":")[0] for line in verdict] == [
        "1 conflict (held for review)", "1 void of a sale already on the platform",
        "1 transaction with several matching purchases on CRM.COM, nothing cancelled or created",
        "2 returns whose sale the platform refused", "1 return the platform refunded in part",
        "2 returns waiting for a sale not arrived yet",
        "2 expected files missing", "1 unreadable file", "1 open problem"]
    assert "EUR: 8 transactions, 8 rows came in" in captions
    assert "GBP: 1 transaction, 1 row came in" in captions
    assert "(s)" not in text
    assert not _ONE_WITH_PLURAL.search(text), _ONE_WITH_PLURAL.search(text)
    assert not _TWO_WITH_SINGULAR.search(text), _TWO_WITH_SINGULAR.search(text)


PHONE = {"width": 375, "height": 740}


def test_the_chart_fills_a_phones_width_and_its_text_is_readable(tmp_path: Path) -> None:
    """At 375 px the chart is as wide as the content, its labels are no smaller than the page's
    small text, a state's label and amount do not overlap, and every bar, "came in"'s too, is
    drawn to the same scale."""
    report = build_report(
        report_id="r1", feed="chart", rejects=[],
        transactions=[_txn(1, TxnState.ACCEPTED, None, "1234567.89"),
                      _txn(2, TxnState.FAILED_RETRYABLE, "error_500", "-1000000.00")],
        file_totals=[("day.csv", "BER01", "2026-11-20", 2, 2, Decimal("234567.89"), "EUR")])
    with _page_of(report, tmp_path / "r1", PHONE) as page:
        measured = page.evaluate("""() => {
            const chart = document.querySelector("svg.chart");
            const heading = document.querySelector("h2");
            const small = document.querySelector("span.small");  // a line of it, as tall as its font
            const px = (element) => parseFloat(getComputedStyle(element).fontSize);
            const texts = [...chart.querySelectorAll("text")];
            return {
                chart: chart.getBoundingClientRect().width,
                content: heading.getBoundingClientRect().width,
                small: px(small), smallHeight: small.getBoundingClientRect().height,
                sizes: texts.map(px),
                heights: texts.map((t) => t.getBoundingClientRect().height),
                rows: [...chart.querySelectorAll("g[data-state]")].map((row) => {
                    const [label, amount] = [...row.querySelectorAll("text")].map(
                        (t) => t.getBoundingClientRect());
                    const bar = row.querySelector("rect").getBoundingClientRect().width;
                    return [row.dataset.state, label.right, amount.left, amount.right, bar];
                }),
                width: document.documentElement.scrollWidth,
            };
        }""")
    assert measured["width"] <= PHONE["width"]
    assert abs(measured["chart"] - measured["content"]) <= 1, measured
    assert min(measured["sizes"]) >= measured["small"], measured
    # drawn as large as the page's small text: the chart is not scaled down to fit
    assert min(measured["heights"]) >= 0.95 * measured["smallHeight"], measured
    assert len(measured["rows"]) == 11  # came in and each state
    bars = {}
    for state, label_right, amount_left, amount_right, bar in measured["rows"]:
        assert label_right < amount_left, state
        assert amount_right <= measured["chart"] + 16, state
        bars[state] = bar
    # one scale for every bar, the largest amount's: here a state's, larger than what came in
    assert bars["accepted"] == pytest.approx(measured["chart"], abs=1)
    assert bars["came_in"] == pytest.approx(measured["chart"] * 234567.89 / 1234567.89, abs=1)
    assert bars["failed_retryable"] == pytest.approx(measured["chart"] * 1000000 / 1234567.89, abs=1)


def test_every_tables_caption_reads_whole_at_a_phones_width(tmp_path: Path) -> None:
    """A table wider than a phone scrolls in its own box; its caption wraps within the box, not
    cut off at the screen's edge with the table ("By store" has ten columns)."""
    report = build_report(
        report_id="r1", feed="captions", rejects=[], transactions=[_txn(1, TxnState.ACCEPTED, None, "7.00")],
        file_totals=[("day.csv", "BER01", "2026-11-20", 1, 1, Decimal("7.00"), "EUR")])
    with _page_of(report, tmp_path / "r1", PHONE) as page:
        captions = page.evaluate("""() => [...document.querySelectorAll("caption")].map((caption) => {
            const words = document.createRange();
            words.selectNodeContents(caption);
            const box = caption.closest(".scroll").getBoundingClientRect();
            return [caption.textContent, box.right,
                    Math.max(...[...words.getClientRects()].map((line) => line.right))];
        })""")
        wide = page.evaluate("""() => [...document.querySelectorAll(".scroll")].filter(
            (box) => box.scrollWidth > box.clientWidth).length""")
    assert wide >= 1  # the store table at least: the case this is about
    assert len(captions) >= 3
    for text, box_right, text_right in captions:
        assert text_right <= box_right + 0.5, (text, box_right, text_right)


def test_a_phone_shows_no_label_without_a_value(tmp_path: Path) -> None:
    """At 375 px an item's transactions stack, each value under its name; a value a transaction
    has none of (a conflict's code and message) is left out, not shown as an empty "why:"."""
    report = build_report(
        report_id="r1", feed="labels", rejects=[],
        transactions=[_txn(1, TxnState.CONFLICT, None, "3.00"),
                      _txn(2, TxnState.FAILED_PERMANENT, "UNKNOWN_CUSTOMER", "4.00")],
        file_totals=[("day.csv", "BER01", "2026-11-20", 2, 2, Decimal("7.00"), "EUR")])
    with _page_of(report, tmp_path / "r1", PHONE) as page:
        shown = {str(row.get_attribute("data-transaction")): [
            (str(cell.get_attribute("data-label")), cell.inner_text().strip())
            for cell in row.locator("td[data-label]").all() if cell.is_visible()]
            for row in page.locator("tr[data-transaction]").all()}
    assert [label for label, _ in shown["T1"]] == ["store", "business date", "file:lines", "amount"]
    assert [label for label, _ in shown["T2"]] == ["store", "business date", "file:lines", "amount", "why"]
    assert all(value for cells in shown.values() for _, value in cells), shown
