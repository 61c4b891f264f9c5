"""CRM.COM: a purchase id found by a lookup is kept in the ledger, so a later run needs no lookup.

A sale whose `create` was answered OK without `data.id` is accepted with no id; its whole return
looks the purchase up by reference. The id found is written to the sale's ledger row (SQLite and
PostgreSQL), so a later run cancelling against that sale names the purchase by the recorded id.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Feed, Settings
from pipeline.ledger import Ledger
from pipeline.runner import run_feed
from pipeline.sandbox.crmcom import PLATFORM, CrmcomError, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from pipeline.sinks.crmcom import make_crmcom_sink
from pipeline.sinks.delivery import PlatformSink
from tests.ledger_backends import ledger_location  # noqa: F401  (fixture)
from tests.sinks.test_crmcom_run import HEADER, RETURNS, SALES, crmcom_run_feed

DAY = [date(2026, 11, 20)]


class CancelWatch:
    """Records every cancel's identifier; refuses them (retryable, nothing done) while ``down``."""

    def __init__(self, platform: CrmcomPlatform) -> None:
        self.real = platform.cancel
        self.named: list[Mapping[str, Any]] = []
        self.down = False
        platform.cancel = self  # type: ignore[method-assign]

    def __call__(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.named.append(dict(body.get("customer_event_identifier") or {}))
        if self.down:
            raise CrmcomError("SERVICE_UNAVAILABLE", "down for maintenance")
        return self.real(body)


def settings_for(tmp_path: Path, location: Path | str) -> Settings:
    return Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports",
                    ledger_url=location if isinstance(location, str) else None)


def recorded(settings: Settings, feed: Feed, *tids: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    with Ledger(settings.ledger_location) as ledger:
        found = ledger.originals(feed.scope, list(tids))
    return {t: (str(r.state), tuple(r.event_ids)) for t, r in found.items()}


@pytest.mark.parametrize("in_doubt", ["lookup", "resend"])
def test_a_purchase_id_found_by_lookup_is_written_back_and_spares_later_lookups(
    crm: SandboxServer, tmp_path: Path, ledger_location: Path | str, in_doubt: str  # noqa: F811
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = settings_for(tmp_path, ledger_location)
    feed = crmcom_run_feed(crm, exports, bulk_size=1, in_doubt=in_doubt, max_attempts=2)
    platform: CrmcomPlatform = crm.state.platforms[PLATFORM]
    cancels = CancelWatch(platform)
    sinks: list[PlatformSink] = []

    def make_sink(f: Feed) -> PlatformSink:
        sinks.append(make_crmcom_sink(f))
        return sinks[-1]

    # run 1: S-1 lands, answered OK without its purchase id
    crm.state.config.fault_kinds = ("answer_without_id",)
    crm.state.config.fault_rate = 1.0
    (exports / "pos_1.csv").write_text("\n".join([HEADER, *SALES[:2]]) + "\n", encoding="utf-8")
    run_feed(feed, settings, business_dates=DAY, make_sink=make_sink)
    crm.state.config.fault_rate = 0.0
    assert recorded(settings, feed, "S-1") == {"S-1": ("accepted", ())}
    purchase = crm.state.get_transaction(PLATFORM, "S-1")
    assert purchase is not None
    purchase_id = purchase["events"][0]["id"]

    # run 2: R-1 returns all of S-1: the lookup finds the purchase, whose cancel is refused (retryable)
    cancels.down = True
    (exports / "pos_2.csv").write_text("\n".join([HEADER, *RETURNS[:2]]) + "\n", encoding="utf-8")
    second = run_feed(feed, settings, business_dates=DAY, make_sink=make_sink).to_dict()
    assert second["balanced"] is True
    assert sinks[-1].adapter.lookups == 1  # type: ignore[attr-defined]
    assert cancels.named and all(named == {"id": purchase_id} for named in cancels.named)
    assert recorded(settings, feed, "S-1", "R-1") == {
        "S-1": ("accepted", (purchase_id,)),  # written back: the sale's purchase is known now
        "R-1": ("failed_retryable", ()),
    }

    # run 3: R-1 again; the id is the ledger's. A lookup only asks whether the earlier cancel landed
    cancels.down = False
    cancels.named.clear()
    third = run_feed(feed, settings, business_dates=DAY, make_sink=make_sink).to_dict()
    assert third["balanced"] is True
    assert sinks[-1].adapter.lookups == (1 if in_doubt == "lookup" else 0)  # type: ignore[attr-defined]
    assert cancels.named == [{"id": purchase_id}]  # exactly that purchase, once
    assert recorded(settings, feed, "S-1", "R-1") == {
        "S-1": ("accepted", (purchase_id,)),
        "R-1": ("accepted", (purchase_id,)),
    }
    assert crm.state.get_transaction(PLATFORM, "S-1")["life_cycle_state"] == "CANCELLED"  # type: ignore[index]
    assert crm.state.stats["duplicate_transaction_attempts"] == 0
