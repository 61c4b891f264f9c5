"""CRM.COM: a sale whose request was in flight when its run was killed is looked up by the next
run before it is created again (CRM.COM documents no refusal of a repeated reference number).
A request the platform still held when its sender died lands a moment later; a lookup made at
once finds nothing and the sale is created a second time. The lookup waits until
``target.readback_wait_seconds`` have passed since the request may have gone out, so the held
request has landed and is found: one purchase, the sale accepted."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from pipeline.config import load_feed
from pipeline.ledger import TxnState
from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks import crmcom
from pipeline.sinks.delivery import wait_left
from pipeline.stages.submit import may_have_landed
from tests.runner_helpers import feed_toml, stats
from tests.test_refunds_hostile import SALE, line, write
from tests.test_return_before_sale import Posfeed, state
from tests.test_return_in_doubt_requeued import _posfeed_process

HELD_SECONDS = 3  # how long the platform holds the sale's request before it stores it


def _crmcom(tmp_path: Path, sandbox: SandboxServer, ledger_location: Path | str, wait: float) -> Posfeed:
    posfeed = Posfeed(tmp_path, sandbox, ledger_location, "crmcom")
    feed = load_feed("acme_hourly", tmp_path)  # the feed Posfeed wrote, with the wait set
    target = feed.target.model_copy(update={"readback_wait_seconds": wait})
    posfeed.feed.write_text(feed_toml(feed.model_copy(update={"target": target})), encoding="utf-8")
    return posfeed


def _purchases(posfeed: Posfeed) -> Counter[str]:
    """How many purchases the platform stores of each reference number."""
    listing = httpx.get(f"{posfeed.sandbox.url}/_sandbox/transactions", params={"platform": "crmcom"},
                        timeout=10).json()["transactions"]
    return Counter(str(t["reference_number"]) for t in listing)


def _killed_while_the_platform_holds_the_sale(posfeed: Posfeed) -> None:
    """`posfeed run` SIGKILLed while the platform holds the sale's create request; the platform
    stores it ``HELD_SECONDS`` after it arrived, its sender dead."""
    sandbox = posfeed.sandbox
    platform: CrmcomPlatform = sandbox.state.platforms[PLATFORM]
    platform.config.unique_reference_numbers = False  # CRM.COM documents no refusal
    write(posfeed.drop, "pos_LON01_20261120_12.csv", SALE)
    # the credential check's and the submission's token calls pass, the sale's create is held
    sandbox.config.hold_after, sandbox.config.hold_ms = ("requests", 3), HELD_SECONDS * 1000
    victim = _posfeed_process(posfeed)
    deadline = time.monotonic() + 120
    while not ((rows := posfeed.rows()).get("S-1") is not None and rows["S-1"].state is TxnState.SENDING):
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the sale never went out"
        time.sleep(0.02)
    time.sleep(0.3)  # its request reaches the platform, which holds it
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    sandbox.config.hold_after = ("requests", 10**9)  # the held request stays held, no other is
    assert _purchases(posfeed) == Counter(), "the held request was stored before its sender died"


def test_a_sale_in_flight_at_a_kill_is_looked_up_after_the_wait_and_found_not_created_again(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    posfeed = _crmcom(tmp_path, sandbox, ledger_location, wait=HELD_SECONDS + 3)
    _killed_while_the_platform_holds_the_sale(posfeed)
    done = posfeed.run()  # at once: the held request has not landed yet
    assert _purchases(posfeed) == Counter({"S-1": 1})
    assert state(posfeed.rows(), "S-1") == ("accepted", "found_by_lookup")
    assert done["exit_code"] == 0 and done["in_doubt"] == 0, done
    assert stats(sandbox)["lookups"] >= 1


def test_without_the_wait_the_lookup_comes_too_soon_and_the_sandbox_shows_it(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """The same kill with ``readback_wait_seconds = 0``: the lookup finds nothing, the sale is
    created again and the held request lands too (what the wait is for; the sandbox, like the
    platform, keeps both)."""
    posfeed = _crmcom(tmp_path, sandbox, ledger_location, wait=0)
    _killed_while_the_platform_holds_the_sale(posfeed)
    posfeed.run()
    time.sleep(HELD_SECONDS + 0.5)  # the held request lands
    assert _purchases(posfeed) == Counter({"S-1": 2})


MANY = 50  # sales left in doubt by one run


def _many_left_in_doubt(posfeed: Posfeed) -> None:
    """A run whose every request is answered 503 (none proves nothing landed): ``MANY`` sales left
    to be looked up before they are sent again."""
    sandbox = posfeed.sandbox
    sandbox.config.fault_rate, sandbox.config.fault_kinds = 1.0, ("error_503",)
    write(posfeed.drop, "pos_LON01_20261120_10.csv",
          [line(f"S-{n}", 1, "MILK", "1", "1.20", "1.20") for n in range(1, MANY + 1)])
    posfeed.run()
    sandbox.config.fault_rate = 0.0
    rows = posfeed.rows()
    assert sum(may_have_landed(rows[f"S-{n}"]) for n in range(1, MANY + 1)) == MANY
    assert _purchases(posfeed) == Counter()


def test_many_sales_in_doubt_are_looked_up_after_one_wait_not_one_wait_each(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each lookup waits until ``readback_wait_seconds`` after its own sale's last request, not for
    a whole wait of its own: the waits of ``MANY`` sales in doubt overlap (about one wait in all,
    not ``MANY`` one after another)."""
    wait = 6.0
    posfeed = _crmcom(tmp_path, sandbox, ledger_location, wait=wait)
    _many_left_in_doubt(posfeed)
    waits: list[tuple[float | None, float]] = []  # each lookup's time of request, what it had left
    real = crmcom.landed_by_now

    async def noted(since: float | None, seconds: float) -> None:
        waits.append((since, wait_left(since, seconds, time.time())))
        await real(since, seconds)

    monkeypatch.setattr(crmcom, "landed_by_now", noted)
    write(posfeed.drop, "pos_LON01_20261120_11.csv", [line("S-100", 1, "MILK", "1", "1.20", "1.20")])
    done = posfeed.run()
    assert len(waits) == MANY and all(since is not None for since, _ in waits)
    workers = load_feed("acme_hourly", tmp_path).target.max_concurrency
    # one worker's lookups wait in all no longer than one wait; a wait each would be MANY times it
    assert sum(left for _, left in waits) <= workers * wait < MANY * wait
    assert _purchases(posfeed) == Counter({f"S-{n}": 1 for n in [*range(1, MANY + 1), 100]})
    assert done["exit_code"] == 0 and done["in_doubt"] == 0, done


def test_a_run_stopped_during_the_wait_stops_at_once_and_leaves_the_sales_in_doubt(
    sandbox: SandboxServer, ledger_location: Path | str, tmp_path: Path
) -> None:
    """SIGTERM while the lookups wait (a wait of ten minutes): the run stops without waiting it
    out, looks nothing up and sends nothing; the sales stay in doubt, and the next run (no wait
    left) looks them up and sends each once."""
    posfeed = _crmcom(tmp_path, sandbox, ledger_location, wait=600)
    _many_left_in_doubt(posfeed)
    before = stats(sandbox).get("lookups", 0)
    write(posfeed.drop, "pos_LON01_20261120_11.csv", [line("S-100", 1, "MILK", "1", "1.20", "1.20")])
    victim = _posfeed_process(posfeed)
    deadline = time.monotonic() + 120
    while not any(r.state is TxnState.SENDING for r in posfeed.rows().values()):  # marked, now waiting
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no lookup began its wait"
        time.sleep(0.05)
    time.sleep(0.5)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=60)  # a tenth of the wait: it did not wait it out
    assert victim.returncode == 75 and "stopped before the end (signal)" in err, err[-3000:]
    assert stats(sandbox).get("lookups", 0) == before and _purchases(posfeed) == Counter()
    rows = posfeed.rows()
    assert all(may_have_landed(rows[f"S-{n}"]) for n in range(1, MANY + 1))
    posfeed.feed.write_text(posfeed.feed.read_text(encoding="utf-8").replace(
        "readback_wait_seconds = 600", "readback_wait_seconds = 0"), encoding="utf-8")
    posfeed.run()
    assert _purchases(posfeed) == Counter({f"S-{n}": 1 for n in [*range(1, MANY + 1), 100]})
