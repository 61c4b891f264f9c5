"""A return left in doubt (``sending``) whose sale the ledger does not hold accepted, read back at
the start of a run, found not to have landed (held ``original_not_found``) and queued again after
the run's files, against the sandbox of each target, on both ledgers, when things go wrong: the
files bring the return again, the run is killed, stopped or refused its credentials around the
requeue, or the files' sale is refused or voided. The return goes out at most once, after its
sale, or ends as a return of such a sale does; the reports balance and count it once."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.ledger import Ledger
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import delivered_ids, stats
from tests.test_refunds_hostile import SALE, write
from tests.test_return_before_sale import RETURN, WHOLE_RETURN, Posfeed, state


def left_in_doubt(posfeed: Posfeed, returned: list[str] | None = None) -> None:
    """R-1 read in a first run, held waiting for its sale S-1, then left as a run killed in its
    look for the sale leaves it: in doubt, one attempt, an hour ago."""
    lines = returned if returned is not None else RETURN if posfeed.kind == "antavo" else WHOLE_RETURN
    write(posfeed.drop, "pos_LON01_20261120_10.csv", lines)
    posfeed.run()
    assert state(posfeed.rows(), "R-1") == ("failed_retryable", "original_not_found")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    with Ledger(posfeed.ledger_location) as ledger, ledger._db.transaction() as db:
        db.execute("UPDATE transactions SET state = 'sending', attempts = 1, updated_at = ? "
                   "WHERE transaction_id = ?", (hour_ago, "R-1"))


def sent_once_after_its_sale(posfeed: Posfeed) -> None:
    """S-1 and R-1 accepted; the platform holds the sale once and the return's effect once."""
    rows = posfeed.rows()
    assert state(rows, "S-1")[0] == "accepted", rows["S-1"]
    assert state(rows, "R-1")[0] == "accepted", rows["R-1"]
    assert delivered_ids(posfeed.sandbox) == ["S-1"]
    held = posfeed.held()["S-1"]
    if posfeed.kind == "antavo":  # the sale's checkout, then the return's refund, each once
        assert [e["action"] for e in held["events"]] == ["checkout", "refund_item"], held["events"]
        assert Decimal(held["refunded"]) == Decimal("1.20") and len(held["refunds"]) == 1
        assert stats(posfeed.sandbox)["events_rejected"] == 0
    else:
        assert held["status"] == "cancelled"


def detail_rows(done: dict[str, Any]) -> list[dict[str, str]]:
    with (Path(done["reports_path"]) / "detail.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_return_in_doubt_that_the_files_bring_again_with_its_sale_goes_out_once(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, kind: str
) -> None:
    """The store's next export holds the sale and the return again (unchanged): the file's copy
    of R-1 queues its primary, held waiting by the read-back, into the run (a duplicate of a
    failed transaction). Before, the requeue of the read-back then met a queued row: the run
    failed (exit 70, ``illegal transition queued -> queued``) before sending anything, the sale
    too. Now the return goes after its sale in
    that run, once; the reports count it once (and its copy as a duplicate)."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, kind)
    returned = RETURN if kind == "antavo" else WHOLE_RETURN
    left_in_doubt(posfeed, returned)
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [*SALE, *returned])
    done = posfeed.run()
    sent_once_after_its_sale(posfeed)
    rows = posfeed.rows()
    assert rows["R-1"].last_run_id == done["run_id"] and rows["R-1"].attempts == 2
    assert done["exit_code"] == 0 and done["carried_over"] == 1, done
    assert done["waiting_for_sale"] == 0 and done["backlog"]["waiting"] == 0, done
    assert [r["transaction_id"] for r in detail_rows(done)].count("R-1") == 2  # primary + duplicate
    assert sorted(r["state"] for r in detail_rows(done) if r["transaction_id"] == "R-1") == [
        "accepted", "duplicate"]
