"""A return reaches the platform after its sale, even when the run hands them over in different
batches and the return comes first in the file."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from pipeline import runner
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
