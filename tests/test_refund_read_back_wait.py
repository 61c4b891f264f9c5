"""Antavo: a refund a run left failed-retryable after its request went out (its answer lost) may
have landed; the next run reads it back no sooner than ``target.readback_wait_seconds`` after the
return's last change in the ledger, as it does for one in flight when a run died. The platform's
read model lists a refund event only ``read_lag_seconds`` after it landed: a read-back made at once
finds nothing and sends the refund a second time."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import Fault
from tests.test_refunds_hostile import SALE, Posfeed, ret, state, write

READ_LAG_SECONDS = 4  # how long a landed refund event stays unlisted by the read API


def test_a_refund_left_failed_retryable_after_a_lost_answer_is_read_back_after_the_wait(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, readback_wait_seconds=READ_LAG_SECONDS + 2)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", SALE)
    posfeed.run()
    sandbox.config.read_lag_seconds = READ_LAG_SECONDS
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [ret("R-1", 1, "MILK", "1", "1.20", "1.20", "S-1")])
    lost = [1]

    def lose_the_refunds_answer() -> Fault | None:
        if lost[0]:
            lost[0] = 0
            sandbox.state.note_lost([])
            return Fault.LOST_RESPONSE
        return None

    monkeypatch.setattr(sandbox.state, "draw_fault", lose_the_refunds_answer)
    posfeed.run()  # the refund lands, its answer is lost: failed-retryable (max_attempts = 1)
    assert state(posfeed.rows(), "R-1")[0] == "failed_retryable"
    assert len(posfeed.held()["S-1"]["refunds"]) == 1
    posfeed.run()  # at once: the refund event is not listed yet
    assert state(posfeed.rows(), "R-1") == ("accepted", "read_back")
    assert len(posfeed.held()["S-1"]["refunds"]) == 1  # refunded once
