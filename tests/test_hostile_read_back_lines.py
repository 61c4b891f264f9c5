"""The lines a read-back matched to a return (``AntavoAdapter``), against a hostile platform, a
killed run and a day of many returns, through ``posfeed run`` against the sandbox, on a SQLite
ledger and a PostgreSQL one. As in tests/test_refused_after_read_back.py, a run is killed while
R-1 (milk and eggs) is in flight: the milk lands, the eggs are refused, the answer never comes;
the next run reads the milk back and sends the eggs alone (``bulk_size = 1``), refused again. The
money refunded is the milk's as the ledger holds its line (1.20 of 3.70), counted once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import pipeline.sinks
import pipeline.stages.submit
from pipeline.sandbox.antavo import PLATFORM
from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import Fault
from pipeline.sinks.antavo import AntavoAdapter
from tests.test_refunds_hostile import DAY, line, ret, state, write
from tests.test_refused_after_read_back import (
    Posfeed,
    _assert_the_milk_counts,
    _killed_with_the_milk_landed,
)


def _killed_once_landed(posfeed: Posfeed, sandbox: SandboxServer, refunds: dict[str, int]) -> None:
    """A run that sends what the drop holds, the eggs refused and every answer trickling, killed
    (SIGKILL) once each sale of ``refunds`` holds that many refund events."""
    sandbox.config.refuse_refund_items = ("EGGS",)
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("trickle",), 1.0
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(posfeed.tmp / "state"), "--reports-dir",
         str(posfeed.tmp / "reports"), "run", "--feed", str(posfeed.feed), "--business-date", DAY],
        env={**os.environ, **posfeed.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while any(len(posfeed.held()[sale]["refunds"]) < count for sale, count in refunds.items()):
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            threading.Event().wait(0.05)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=60)
    sandbox.config.fault_rate = 0.0


def _rewrite_the_milk_event(sandbox: SandboxServer, **change: Any) -> None:
    """The platform lists S-1's milk refund event otherwise from now on (``id``, or ``data``
    fields), as a hostile platform or a read model rebuilt under new ids would."""
    with sandbox.state.lock:
        record = sandbox.state.transactions[PLATFORM]["S-1"]
        events = []
        for event in record["events"]:
            if event.get("action") == "refund_item" and (event.get("data") or {}).get("product_id") == "MILK":
                data = {**event["data"], **{k: v for k, v in change.items() if k != "id"}}
                event = {**event, "id": change.get("id", event["id"]), "data": data}
            events.append(event)
        sandbox.state.put_transaction(PLATFORM, "S-1", {**record, "events": events})


def _eggs_fail_once_then(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, then: Any) -> list[int]:
    """The first send of the eggs (after two reads) fails whole (503, nothing processed) and
    ``then()`` changes what the next read-back sees; the request calls are counted."""
    calls = [0]

    def fail_the_eggs_once() -> Fault | None:
        calls[0] += 1
        if calls[0] == 3:
            then()
            return Fault.ERROR_503
        return None

    monkeypatch.setattr(sandbox.state, "draw_fault", fail_the_eggs_once)
    return calls


def test_a_milk_event_listed_again_under_another_id_is_counted_once(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read-back matches the milk's event; before the second (after the eggs' 503) the
    platform lists that event under a new id. Both ids match the return's one milk line: the line
    counts once (1.20, not 2.40), never more than the return's 3.70."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=2)
    _killed_with_the_milk_landed(posfeed, sandbox)
    calls = _eggs_fail_once_then(sandbox, monkeypatch,
                                 lambda: _rewrite_the_milk_event(sandbox, id="ffffffffffffffffffffffff"))
    done = posfeed.run()
    assert calls[0] == 6  # read-back, eggs (503), read-back, eggs
    assert [r["product_id"] for r in posfeed.held()["S-1"]["refunds"]] == ["MILK"]
    rows = posfeed.rows()
    assert state(rows, "R-1") == ("failed_permanent", "partly_refunded")
    assert rows["R-1"].refunded == Decimal("1.20")
    message = str(rows["R-1"].last_error_message)
    assert "the platform refunded 1.20 of 3.70 (MILK x1 (1.20), found on the platform by a read-back)" \
        in message, message
    assert "and refused EGGS x1 (2.50): 112204" in message, message
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == "-1.20"


def test_a_milk_event_listed_later_with_other_money_counts_the_ledgers_line(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read-back matches the milk's event; the second lists it with other money (12.00)
    and product (MILK2), so it matches no line: the milk and the eggs go again in one request and
    are refused (the platform does not refund the milk twice). The money recorded is the ledger's
    milk line (1.20), not what the platform showed, within the return's 3.70."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=2)
    _killed_with_the_milk_landed(posfeed, sandbox)
    calls = _eggs_fail_once_then(sandbox, monkeypatch, lambda: _rewrite_the_milk_event(
        sandbox, subtotal=Decimal("12.00"), product_id="MILK2"))
    done = posfeed.run()
    assert calls[0] == 6  # read-back, eggs (503), read-back, milk and eggs
    held = posfeed.held()["S-1"]
    assert [r["product_id"] for r in held["refunds"]] == ["MILK"]  # refunded once
    assert Decimal(held["refunded"]) == Decimal("1.20")
    _assert_the_milk_counts(posfeed, done)
    message = str(posfeed.rows()["R-1"].last_error_message)
    assert "and refused MILK x1 (1.20), EGGS x1 (2.50)" in message, message


def test_a_run_killed_after_its_read_back_matched_the_milk_leaves_the_same_money_once(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run reads the milk back (matched to the return's line), sends the eggs, and is
    killed (SIGKILL) while their answer trickles, before anything is settled. The third run reads
    back again and reaches the same money once: 1.20 refunded of 3.70, the milk refunded once."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=1)
    _killed_with_the_milk_landed(posfeed, sandbox)
    calls = [0]
    eggs_out = threading.Event()

    def trickle_the_eggs() -> Fault | None:  # two reads, then the eggs: their answer never ends
        calls[0] += 1
        if calls[0] == 3:
            eggs_out.set()
            return Fault.TRICKLE
        return None

    monkeypatch.setattr(sandbox.state, "draw_fault", trickle_the_eggs)
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(posfeed.tmp / "state"), "--reports-dir",
         str(posfeed.tmp / "reports"), "run", "--feed", str(posfeed.feed), "--business-date", DAY],
        env={**os.environ, **posfeed.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert eggs_out.wait(120), "the eggs never went out"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=60)
    assert state(posfeed.rows(), "R-1")[0] == "sending"  # in doubt: nothing settled
    monkeypatch.setattr(sandbox.state, "draw_fault", lambda: None)
    done = posfeed.run()
    assert [r["product_id"] for r in posfeed.held()["S-1"]["refunds"]] == ["MILK"]  # refunded once
    _assert_the_milk_counts(posfeed, done)
    assert "and refused EGGS x1 (2.50): 112204" in str(posfeed.rows()["R-1"].last_error_message)


def test_a_day_of_returns_read_back_is_not_kept_once_each_is_settled(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six sales (milk, bread, eggs) and their returns (milk and eggs each), all killed in flight
    with the milk landed: the next run reads each back, handed to the sink one transaction at a
    time. The lines its read-backs matched and found are kept while a return is being sent and
    dropped once it is settled: after each hand-over the adapter holds none of them. Each return
    counts its milk once."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=1)
    sales = [f"S-{n}" for n in range(1, 7)]
    write(posfeed.drop, "pos_LON01_20261120_10.csv", [
        row for sale in sales for row in (line(sale, 1, "MILK", "1", "1.20", "6.70"),
                                          line(sale, 2, "BREAD", "1", "3.00", "6.70"),
                                          line(sale, 3, "EGGS", "1", "2.50", "6.70"))])
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [
        row for n, sale in enumerate(sales, 1)
        for row in (ret(f"R-{n}", 1, "MILK", "1", "1.20", "3.70", sale),
                    ret(f"R-{n}", 2, "EGGS", "1", "2.50", "3.70", sale))])
    _killed_once_landed(posfeed, sandbox, dict.fromkeys(sales, 1))

    adapters: list[AntavoAdapter] = []
    kept: list[tuple[int, int]] = []  # after each hand-over: (returns found, events matched)
    make = pipeline.sinks.make_antavo_sink

    def watched(feed: Any, **options: Any) -> Any:
        sink = make(feed, **options)
        adapters.append(sink.adapter)
        submit = sink.submit

        async def submit_and_look(*args: Any, **kwargs: Any) -> None:
            await submit(*args, **kwargs)
            kept.append((len(sink.adapter._found), len(sink.adapter._matched)))

        sink.submit = submit_and_look  # type: ignore[method-assign]
        return sink

    monkeypatch.setattr(pipeline.sinks, "make_antavo_sink", watched)
    monkeypatch.setattr(pipeline.stages.submit, "BATCH_SIZE", 1)
    done = posfeed.run()
    assert len(adapters) == 1 and len(kept) == 6, kept
    assert kept == [(0, 0)] * 6
    rows = posfeed.rows()
    for n, sale in enumerate(sales, 1):
        assert [r["product_id"] for r in posfeed.held()[sale]["refunds"]] == ["MILK"]
        assert state(rows, f"R-{n}") == ("failed_permanent", "partly_refunded")
        assert rows[f"R-{n}"].refunded == Decimal("1.20")
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == "-7.20"


# two milks (1.20 each), a bread (3.00) and two eggs (2.50 each): 10.40; each return gives back a
# milk and an eggs (3.70)
TWO_MILKS = [line("S-1", 1, "MILK", "2", "1.20", "10.40"), line("S-1", 2, "BREAD", "1", "3.00", "10.40"),
             line("S-1", 3, "EGGS", "2", "2.50", "10.40")]


def _ret(tid: str) -> list[str]:
    return [ret(tid, 1, "MILK", "1", "1.20", "3.70", "S-1"), ret(tid, 2, "EGGS", "1", "2.50", "3.70", "S-1")]


def _assert_each_return_keeps_its_milk(posfeed: Posfeed, returns: list[str]) -> None:
    """The platform holds one milk refund per return; each return holds its own (one event, no
    other return's) and counts 1.20 of 3.70, the eggs refused."""
    held = posfeed.held()["S-1"]
    assert [r["product_id"] for r in held["refunds"]] == ["MILK"] * len(returns)
    assert Decimal(held["refunded"]) == Decimal("1.20") * len(returns)
    rows = posfeed.rows()
    owned = [event for tid in returns for event in rows[tid].event_ids]
    assert sorted(owned) == sorted(r["event_id"] for r in held["refunds"])  # each event once
    for tid in returns:
        assert state(rows, tid) == ("failed_permanent", "partly_refunded")
        assert len(rows[tid].event_ids) == 1
        assert rows[tid].refunded == Decimal("1.20")
        message = str(rows[tid].last_error_message)
        assert "the platform refunded 1.20 of 3.70 (MILK x1 (1.20), found on the platform by a read-back)" \
            in message, message


def test_two_returns_of_one_sale_read_back_in_one_run_keep_their_own_milk(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """R-1 and R-2 (a milk and an eggs each, the same lines) are in flight when the run is killed,
    both milks landed. The next run reads each back: each matches a milk event of its own (never
    the other's), sends its eggs alone, refused: 1.20 each, 2.40 in all, as the platform holds."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=1)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", TWO_MILKS)
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_12.csv", [*_ret("R-1"), *_ret("R-2")])
    _killed_once_landed(posfeed, sandbox, {"S-1": 2})
    done = posfeed.run()
    _assert_each_return_keeps_its_milk(posfeed, ["R-1", "R-2"])
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == "-2.40"


def test_a_second_return_of_the_sale_in_a_later_run_reads_back_its_own_milk(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """R-1 is settled refunded in part (its milk read back) in one run; R-2, the same lines, comes
    in a later file, is killed in flight with its milk landed, and is read back by the next run:
    it matches the second milk event, not R-1's, and counts its own 1.20 once."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=1)
    write(posfeed.drop, "pos_LON01_20261120_10.csv", TWO_MILKS)
    posfeed.run()
    write(posfeed.drop, "pos_LON01_20261120_11.csv", _ret("R-1"))
    _killed_once_landed(posfeed, sandbox, {"S-1": 1})
    posfeed.run()
    _assert_each_return_keeps_its_milk(posfeed, ["R-1"])
    write(posfeed.drop, "pos_LON01_20261120_12.csv", _ret("R-2"))
    _killed_once_landed(posfeed, sandbox, {"S-1": 2})
    done = posfeed.run()
    _assert_each_return_keeps_its_milk(posfeed, ["R-1", "R-2"])
    assert done["currencies"]["GBP"]["amount_partly_refunded"] == "-1.20"  # R-2's run


def test_the_milk_read_back_then_no_longer_listed_counts_when_the_eggs_land_beside_it(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read-back matches the milk; the eggs' send fails (503) and, by the second
    read-back, the read API lags behind and the platform takes eggs again: the milk and the eggs go
    in one request, the milk is refused (already refunded: 112205), the eggs land. The platform
    holds both lines: the money recorded counts the milk the first read-back matched with the eggs,
    each once (3.70 of 3.70), the milk refunded once."""
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, max_attempts=2)
    _killed_with_the_milk_landed(posfeed, sandbox)

    def lag_and_take_the_eggs() -> None:
        sandbox.config.read_lag_seconds = 3600.0
        sandbox.config.refuse_refund_items = ()

    calls = _eggs_fail_once_then(sandbox, monkeypatch, lag_and_take_the_eggs)
    posfeed.run()
    assert calls[0] == 6  # read-back, eggs (503), read-back, milk and eggs
    held = posfeed.held()["S-1"]
    assert [r["product_id"] for r in held["refunds"]] == ["MILK", "EGGS"]
    assert Decimal(held["refunded"]) == Decimal("3.70")
    rows = posfeed.rows()
    assert sorted(rows["R-1"].event_ids) == sorted(r["event_id"] for r in held["refunds"])
    assert rows["R-1"].refunded == Decimal("3.70"), rows["R-1"].last_error_message
    assert state(rows, "R-1") == ("failed_permanent", "partly_refunded")
    message = str(rows["R-1"].last_error_message)
    assert ("the platform refunded 3.70 of 3.70 (EGGS x1 (2.50); MILK x1 (1.20), found on the platform "
            "by an earlier read-back) and refused MILK x1 (1.20): 112205") in message, message
