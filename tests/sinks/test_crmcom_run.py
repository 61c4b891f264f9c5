"""CRM.COM in whole runs: a return in a later run cancels the purchase the ledger recorded."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from pipeline.config import Feed, Settings
from pipeline.ledger import Ledger
from pipeline.runner import RerunSelection, rerun_feed, run_feed
from pipeline.sandbox.crmcom import PLATFORM, CrmcomError, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer

HEADER = (
    "transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,line_no,"
    "product_id,product_name,product_category,quantity,unit_price,discount,line_total,currency,"
    "transaction_total,points_burned,original_transaction_id"
)
SALES = [
    "S-1,BER01,K1,2026-11-20 08:10:53,2026-11-20,M1,sale,1,1005,Wine,wine,1,11.49,,11.49,EUR,19.59,,",
    "S-1,BER01,K1,2026-11-20 08:10:53,2026-11-20,M1,sale,2,100102,Yog,dairy,3,2.70,,8.10,EUR,19.59,,",
    "S-2,BER01,K1,2026-11-20 08:20:00,2026-11-20,M2,sale,1,100102,Yog,dairy,2,2.70,,5.40,EUR,5.40,,",
    "S-3,BER01,K1,2026-11-20 08:30:00,2026-11-20,,sale,1,100102,Yog,dairy,1,2.70,,2.70,EUR,2.70,,",
]
RETURNS = [
    "R-1,BER01,K1,2026-11-20 15:00:00,2026-11-20,M1,return,1,1005,Wine,wine,-1,11.49,,-11.49,EUR,-19.59,,S-1",
    "R-1,BER01,K1,2026-11-20 15:00:00,2026-11-20,M1,return,2,100102,Yog,dairy,-3,2.70,,-8.10,EUR,-19.59,,S-1",
    "R-2,BER01,K1,2026-11-20 15:10:00,2026-11-20,M2,return,1,100102,Yog,dairy,-1,2.70,,-2.70,EUR,-2.70,,S-2",
]


def crmcom_run_feed(server: SandboxServer, folder: Path, **target: Any) -> Feed:
    return Feed.model_validate(
        {
            "name": "crm_run",
            "timezone": "Europe/Berlin",
            "source": {"kind": "local", "path": str(folder), "pattern": "*.csv", "readiness": "none"},
            "target": {
                "kind": "crmcom",
                "base_url": server.url,
                "backoff_base_seconds": 0.01,
                "backoff_max_seconds": 0.05,
                **target,
            },
        }
    )


@pytest.mark.parametrize("bulk_size", [1, 50])
def test_a_later_return_cancels_the_recorded_purchase(
    crm: SandboxServer, tmp_path: Path, bulk_size: int
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    feed = crmcom_run_feed(crm, exports, bulk_size=bulk_size)
    (exports / "pos_morning.csv").write_text("\n".join([HEADER, *SALES]) + "\n", encoding="utf-8")
    first = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    assert (first["accepted"], first["not_sent"], first["balanced"]) == (2, 1, True)

    (exports / "pos_afternoon.csv").write_text("\n".join([HEADER, *RETURNS]) + "\n", encoding="utf-8")
    second = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    # R-1 returns all of S-1: its purchase is cancelled; R-2 returns part of S-2: an ad hoc return
    assert (second["accepted"], second["not_sent"], second["balanced"]) == (2, 0, True)
    listing = httpx.get(f"{crm.url}/_sandbox/transactions", params={"platform": "crmcom"}).json()
    states = {t["transaction_id"]: t["status"] for t in listing["transactions"]}
    assert states == {"S-1": "cancelled", "S-2": "accepted"}
    returned = httpx.get(f"{crm.url}/_sandbox/transactions", params={"platform": "crmcom_ad_hoc_returns"})
    assert [(t["transaction_id"], t["total"]) for t in returned.json()["transactions"]] == [("R-2", "2.70")]
    assert crm.state.stats["duplicate_transaction_attempts"] == 0


def test_a_debug_run_leaks_no_credential_and_no_token(
    crm: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform: CrmcomPlatform = crm.state.platforms[PLATFORM]
    platform.config.password = "leak-check-password-5a1f"
    platform.config.organisation = "leak-check-org-c0ffee"
    monkeypatch.setenv("CRMCOM_PASSWORD", platform.config.password)
    monkeypatch.setenv("CRMCOM_ORGANISATION", platform.config.organisation)
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "pos.csv").write_text("\n".join([HEADER, *SALES, *RETURNS]) + "\n", encoding="utf-8")
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    caplog.set_level("DEBUG")
    summary = run_feed(crmcom_run_feed(crm, exports), settings, business_dates=[date(2026, 11, 20)]).to_dict()
    assert summary["balanced"] is True and summary["accepted"] == 4
    secrets = [platform.config.password, platform.config.organisation, *platform.tokens]
    assert len(secrets) >= 3
    written = {"log": caplog.text.encode()}
    for folder in (tmp_path / "state", tmp_path / "reports"):
        written.update({str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    leaks = [
        (name, secret) for name, blob in written.items() for secret in secrets if secret.encode() in blob
    ]
    assert leaks == []


@pytest.mark.parametrize("same_run", [False, True])
def test_a_sale_answered_without_an_id_is_cancelled_by_its_return_exactly_once(
    crm: SandboxServer, tmp_path: Path, same_run: bool
) -> None:
    """CRM.COM answered OK to S-1's `create` but named no purchase id: the sale is accepted (it
    landed), and its whole return (in a later run, or in the same submission) looks the purchase up
    by its reference and cancels that purchase, once."""
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    feed = crmcom_run_feed(crm, exports, bulk_size=1)
    crm.state.config.fault_kinds = ("answer_without_id",)
    crm.state.config.fault_rate = 1.0  # every create answers OK without data.id
    sales = [SALES[0], SALES[1]]
    (exports / "pos_morning.csv").write_text("\n".join([HEADER, *sales]) + "\n", encoding="utf-8")
    if same_run:
        (exports / "pos_afternoon.csv").write_text("\n".join([HEADER, *RETURNS[:2]]) + "\n", encoding="utf-8")
    first = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    if not same_run:
        assert (first["accepted"], first["balanced"]) == (1, True)
        crm.state.config.fault_rate = 0.0
        (exports / "pos_afternoon.csv").write_text("\n".join([HEADER, *RETURNS[:2]]) + "\n", encoding="utf-8")
        second = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    else:
        second = first
    assert second["balanced"] is True
    listing = httpx.get(f"{crm.url}/_sandbox/transactions", params={"platform": "crmcom"}).json()
    assert {t["transaction_id"]: t["status"] for t in listing["transactions"]} == {"S-1": "cancelled"}
    with Ledger(settings.ledger_location) as ledger:
        states = {t: str(r.state) for t, r in ledger.originals(feed.scope, ["S-1", "R-1"]).items()}
    assert states == {"S-1": "accepted", "R-1": "accepted"}
    assert crm.state.stats["duplicate_transaction_attempts"] == 0  # one cancel, no second purchase
    assert crm.state.stats["events_accepted"] == 2  # the purchase and its cancel
    assert crm.state.stats["lookups"] == 1  # the id the create's answer left out, read once


@pytest.mark.parametrize("same_run", [True, False])
def test_a_return_of_a_refused_sale_is_held_until_a_rerun_sends_both(
    crm: SandboxServer, tmp_path: Path, same_run: bool
) -> None:
    """CRM.COM refused S-9 for good (its customer was unknown): its whole return R-9 is failed for
    good, `original_refused`, never sent (it waited as retryable before, every run exiting 75). Once
    the customer exists, a rerun including what was refused for good sends the sale, then cancels
    its purchase with R-9, once."""
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    feed = crmcom_run_feed(crm, exports, bulk_size=1)
    sale = ("S-9,BER01,K1,2026-11-20 08:10:53,2026-11-20,unknown-9,sale,1,1005,Wine,wine,1,11.49,,11.49,"
            "EUR,11.49,,")
    back = ("R-9,BER01,K1,2026-11-20 15:00:00,2026-11-20,unknown-9,return,1,1005,Wine,wine,-1,11.49,,-11.49,"
            "EUR,-11.49,,S-9")
    first = [HEADER, sale, *([back] if same_run else [])]
    (exports / "pos_1.csv").write_text("\n".join(first) + "\n", encoding="utf-8")
    runs = [run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()]
    if not same_run:
        (exports / "pos_2.csv").write_text("\n".join([HEADER, back]) + "\n", encoding="utf-8")
        runs.append(run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict())
    runs.append(run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict())  # nothing new
    assert [r["balanced"] for r in runs] == [True] * len(runs)
    assert runs[-1]["exit_code"] == 0 and runs[-1]["failed_retryable"] == 0
    with Ledger(settings.ledger_location) as ledger:
        held = ledger.originals(feed.scope, ["S-9", "R-9"])
        assert {t: (str(r.state), r.last_error_code) for t, r in held.items()} == {
            "S-9": ("failed_permanent", "CUSTOMER_NOT_FOUND"),
            "R-9": ("failed_permanent", "original_refused"),
        }
    assert crm.state.transactions.get(PLATFORM, {}) == {}

    crm.state.config.unknown_customer_prefix = None  # the customer exists now
    again = rerun_feed(feed, settings, RerunSelection(failed=True, include_permanent=True)).to_dict()
    assert again["balanced"] is True and again["accepted"] == 2
    purchase = crm.state.get_transaction(PLATFORM, "S-9")
    assert purchase is not None and purchase["life_cycle_state"] == "CANCELLED"
    assert crm.state.stats["duplicate_transaction_attempts"] == 0


@pytest.mark.parametrize("first_cancel_landed", [True, False])
def test_a_second_return_of_a_sale_whose_first_return_is_in_doubt(
    crm: SandboxServer, tmp_path: Path, first_cancel_landed: bool
) -> None:
    """A careless till returns S-1 twice: R-1's cancel is answered with an error (it landed, or
    not), and R-1b, the same return under a new id, comes in the next run. The purchase is cancelled
    once, R-1 (carried over and looked up first) is the return that counts, R-1b is
    `already_returned`; the reports balance."""
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    feed = crmcom_run_feed(crm, exports, bulk_size=1, max_attempts=1)
    platform: CrmcomPlatform = crm.state.platforms[PLATFORM]
    real_cancel, calls = platform.cancel, []

    def failing_cancel(body: Any) -> Any:
        calls.append(body["customer_event_identifier"])
        if first_cancel_landed:
            real_cancel(body)
        raise CrmcomError("INTERNAL_ERROR", "answered with an error")

    (exports / "pos_1.csv").write_text("\n".join([HEADER, *SALES[:2]]) + "\n", encoding="utf-8")
    runs = [run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()]
    platform.cancel = failing_cancel  # type: ignore[method-assign]
    (exports / "pos_2.csv").write_text("\n".join([HEADER, *RETURNS[:2]]) + "\n", encoding="utf-8")
    runs.append(run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict())
    assert runs[-1]["failed_retryable"] == 1
    del platform.cancel  # the platform answers again
    again = [line.replace("R-1,", "R-1b,") for line in RETURNS[:2]]
    (exports / "pos_3.csv").write_text("\n".join([HEADER, *again]) + "\n", encoding="utf-8")
    runs.append(run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict())
    assert [r["balanced"] for r in runs] == [True, True, True]
    with Ledger(settings.ledger_location) as ledger:
        found = ledger.originals(feed.scope, ["S-1", "R-1", "R-1b"])
    assert {t: (str(r.state), r.last_error_code) for t, r in found.items()} == {
        "S-1": ("accepted", None),
        "R-1": ("accepted", "found_by_lookup" if first_cancel_landed else None),
        "R-1b": ("not_sent", "already_returned"),
    }
    purchase = crm.state.get_transaction(PLATFORM, "S-1")
    assert purchase is not None and purchase["life_cycle_state"] == "CANCELLED"
    assert crm.state.stats["duplicate_transaction_attempts"] == 0  # no cancel of a cancelled purchase
    assert len(calls) == 1


def test_a_void_naming_a_sale_cancels_nothing(crm: SandboxServer, tmp_path: Path) -> None:
    """A void is a transaction voided at the till: never sent, whatever it names. A sale a void
    names in the same file is never sent either (`post_voided`: no purchase to cancel); a return
    naming the void is `original_not_a_sale`. Every row counts once and the reports balance."""
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    feed = crmcom_run_feed(crm, exports, bulk_size=1)
    rows = [
        *SALES[:2],
        "S-9,BER01,K1,2026-11-20 08:40:00,2026-11-20,unknown-9,sale,1,1005,Wine,wine,1,11.49,,11.49,EUR,"
        "11.49,,",
        "V-1,BER01,K1,2026-11-20 09:00:00,2026-11-20,M1,void,1,1005,Wine,wine,1,11.49,,11.49,EUR,11.49,,S-1",
        "V-9,BER01,K1,2026-11-20 09:10:00,2026-11-20,unknown-9,void,1,1005,Wine,wine,1,11.49,,11.49,EUR,"
        "11.49,,S-9",
        "R-V,BER01,K1,2026-11-20 15:00:00,2026-11-20,M1,return,1,1005,Wine,wine,-1,11.49,,-11.49,EUR,-11.49,,"
        "V-1",
    ]
    (exports / "pos.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    summary = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    assert summary["balanced"] is True and summary["voids"] == 4  # V-1, V-9 and the sales they void
    with Ledger(settings.ledger_location) as ledger:
        found = ledger.originals(feed.scope, ["S-1", "S-9", "V-1", "V-9", "R-V"])
    assert {t: (str(r.state), r.last_error_code) for t, r in found.items()} == {
        "S-1": ("void", "post_voided"),
        "S-9": ("void", "post_voided"),
        "V-1": ("void", None),
        "V-9": ("void", None),
        "R-V": ("not_sent", "original_not_a_sale"),
    }
    stored = crm.state.transactions.get(PLATFORM, {})
    assert [(r["reference_number"], r["life_cycle_state"]) for r in stored.values()] == []


@pytest.mark.parametrize("bulk_size", [1, 50])
def test_a_run_sending_performed_on_as_epoch_seconds_is_accepted_at_the_pos_time(
    crm: SandboxServer, tmp_path: Path, bulk_size: int
) -> None:
    """``target.performed_on_format = "epoch"`` sends integer seconds, as the spec's purchase takes
    them; before, the sandbox refused every purchase so sent ("performed_on must be a date and time")."""
    exports = tmp_path / "exports"
    exports.mkdir()
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    feed = crmcom_run_feed(crm, exports, bulk_size=bulk_size, performed_on_format="epoch")
    (exports / "pos_morning.csv").write_text("\n".join([HEADER, *SALES]) + "\n", encoding="utf-8")
    first = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    assert (first["accepted"], first["failed_permanent"], first["balanced"]) == (2, 0, True)
    platform: CrmcomPlatform = crm.state.platforms[PLATFORM]
    stored = {r["reference_number"]: r["performed_on"] for r in crm.state.transactions[PLATFORM].values()}
    berlin = ZoneInfo("Europe/Berlin")  # the feed's timezone: the tills' wall clock
    assert stored == {"S-1": int(datetime(2026, 11, 20, 8, 10, 53, tzinfo=berlin).timestamp()),
                      "S-2": int(datetime(2026, 11, 20, 8, 20, tzinfo=berlin).timestamp())}
    assert platform.arrivals["S-1"] == 1
    (exports / "pos_afternoon.csv").write_text("\n".join([HEADER, *RETURNS]) + "\n", encoding="utf-8")
    second = run_feed(feed, settings, business_dates=[date(2026, 11, 20)]).to_dict()
    assert (second["accepted"], second["failed_permanent"], second["balanced"]) == (2, 0, True)
    returned = httpx.get(f"{crm.url}/_sandbox/transactions", params={"platform": "crmcom_ad_hoc_returns"})
    assert [t["transaction_id"] for t in returned.json()["transactions"]] == ["R-2"]
