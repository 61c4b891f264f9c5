"""A wholesale invoice too large for one request, in a day of ordinary sales, through whole runs
(the ledger, the reports, ``rerun``) against the real sandbox, for each platform."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.server import SandboxServer
from tests.ops_helpers import HEADER, clean_day, ops_feed
from tests.runner_helpers import BUSINESS_DATE, credentials, delivered_ids, settings_in

LIMIT = 32 * 1024
INVOICE = "LON01-R9-20261120-0001"


def _invoice(folder: Path, lines: int) -> None:
    """One member's invoice of ``lines`` lines (about 150 bytes of request body each) in a file."""
    rows = [HEADER] + [
        f"{INVOICE},LON01,R9,2026-11-20 11:00:00,2026-11-20,M900001,sale,{n},SKU{n:05d},"
        f"Wholesale item {n},wholesale,2,1.50,,3.00,GBP,{3 * lines:.2f},,"
        for n in range(1, lines + 1)
    ]
    (folder / "pos_LON01_20261120_11.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_an_invoice_too_large_to_send_is_settled_for_review_and_a_rerun_sends_it_once_the_limit_is_raised(
    sandbox: SandboxServer, target_kind: str, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    ids = clean_day(drop, 60)
    _invoice(drop, 400)
    sandbox.config.max_body_bytes = LIMIT
    settings = settings_in(tmp_path)
    feed = ops_feed(sandbox, drop, target_kind=target_kind, bulk_size=50, max_request_bytes=LIMIT)
    sent = [t for n, t in enumerate(ids) if target_kind == "antavo" or n % 10 != 9]  # CRM.COM: no guests
    with credentials(sandbox, target_kind):
        first = run_feed(feed, settings, business_dates=[BUSINESS_DATE])
        assert first.summary["failed_permanent"] == 1 and first.summary["failed_retryable"] == 0
        assert first.summary["needs_rerun"] == 0 and first.exit_code == 65  # refused for good: review
        assert first.summary["balanced"] is True
        assert Counter(delivered_ids(sandbox)) == Counter(sent)
        with (Path(first.to_dict()["reports_path"]) / "detail.csv").open(encoding="utf-8") as handle:
            (invoice,) = [r for r in csv.DictReader(handle) if r["transaction_id"] == INVOICE]
        assert (invoice["state"], invoice["error_code"], invoice["attempts"]) == (
            "failed_permanent", "request_too_large", "0")
        assert f"max_request_bytes ({LIMIT})" in invoice["error_message"]

        again = run_feed(feed, settings, business_dates=[BUSINESS_DATE])  # nothing new, nothing resent
        assert again.summary["carried_over"] == 0 and Counter(delivered_ids(sandbox)) == Counter(sent)

        sandbox.config.max_body_bytes = 4 * 1024 * 1024
        raised = feed.model_copy(update={"target": feed.target.model_copy(
            update={"max_request_bytes": 4 * 1024 * 1024})})
        rerun = rerun_feed(raised, settings, RerunSelection(failed=True, include_permanent=True))
    assert rerun.exit_code == 0 and rerun.summary["accepted"] == 1
    assert Counter(delivered_ids(sandbox)) == Counter([*sent, INVOICE])
