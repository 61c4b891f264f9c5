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

from pipeline.config import load_feed
from pipeline.ledger import TxnState
from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import feed_toml, stats
from tests.test_refunds_hostile import SALE, write
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
