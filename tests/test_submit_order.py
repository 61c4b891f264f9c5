"""A return reaches the platform after its sale, even when the run hands them over in different
batches and the return comes first in the file."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline import runner
from pipeline.ledger import Ledger
from pipeline.sandbox.server import SandboxServer
from pipeline.stages import submit
from tests.runner_helpers import credentials, sample_feed, settings_in

HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)
ROWS = [  # the return is listed before the sale it refunds
    "RET-1,LON01,R1,2026-11-20 12:00:00,2026-11-20,M1,return,1,P1,Tea,drinks,-1,2.50,,-2.50,GBP,-2.50,,"
    "SALE-1",
    "SALE-1,LON01,R1,2026-11-20 10:00:00,2026-11-20,M1,sale,1,P1,Tea,drinks,2,2.50,,5.00,GBP,5.00,,",
    "SALE-2,LON01,R1,2026-11-20 10:05:00,2026-11-20,M2,sale,1,P2,Cake,bakery,1,3.00,,3.00,GBP,3.00,,",
]


def test_returns_are_sent_after_every_sale_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *ROWS]) + "\n", encoding="utf-8")
    monkeypatch.setattr(submit, "BATCH_SIZE", 1)  # one transaction per batch handed to the sink
    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=drop)
        summary = runner.run_feed(feed, settings_in(tmp_path), business_dates=[date(2026, 11, 20)])
    result = summary.to_dict()
    assert result["accepted"] == 3, result
    assert result["failed_permanent"] == 0
    assert result["balanced"] is True


def test_each_answer_is_in_the_ledger_before_the_next_request_goes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    sales = [
        f"S-{n},LON01,R1,2026-11-20 10:{n:02d}:00,2026-11-20,M{n},sale,1,P1,Tea,drinks,1,2.50,,2.50,"
        "GBP,2.50,," for n in range(12)
    ]
    (drop / "pos_LON01_20261120_10.csv").write_text("\n".join([HEADER, *sales]) + "\n", encoding="utf-8")
    in_doubt_at_each_request: list[int] = []
    original = Ledger.start_sending

    def start_sending(self: Ledger, scope: str, transaction_ids: Sequence[str], run_id: str,
                      **answers: Any) -> None:
        original(self, scope, transaction_ids, run_id, **answers)
        in_doubt_at_each_request.append(self.state_counts(scope).get("sending", 0))

    monkeypatch.setattr(Ledger, "start_sending", start_sending)
    with SandboxServer() as sandbox, credentials(sandbox):
        feed = sample_feed("acme_hourly", sandbox, folder=drop, max_concurrency=1, bulk_size=2)
        summary = runner.run_feed(feed, settings_in(tmp_path), business_dates=[date(2026, 11, 20)])
    assert summary.to_dict()["accepted"] == 12
    # one request at a time: when the next one is marked in doubt, the answer to the last is
    # committed with it, so only the new request's two checkouts are in doubt
    assert in_doubt_at_each_request == [2] * 6
