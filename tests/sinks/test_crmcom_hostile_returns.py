"""CRM.COM cancels and returns against a hostile platform and a careless till: the right purchase is
cancelled once, or the return is held with a clear reason; nothing is sent twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pipeline.sandbox.crmcom import PLATFORM, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import Fault
from pipeline.sinks.base import Outcome
from pipeline.sinks.crmcom_purchases import CrmcomRejectCode
from pipeline.sinks.crmcom_returns import ReturnCode
from tests.sinks.test_crmcom_mapping import MOMENT, checkout
from tests.sinks.test_crmcom_sink import adapter_of, platform_of, sink_of, submit


class Cancels:
    """Every cancel the platform receives, by the identifier it names."""

    def __init__(self, platform: CrmcomPlatform) -> None:
        self.real = platform.cancel
        self.named: list[dict[str, Any]] = []
        platform.cancel = self  # type: ignore[method-assign]

    def __call__(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.named.append(dict(body.get("customer_event_identifier") or {}))
        return self.real(body)


def original(event_ids: list[str], state: str = "accepted", customer: str = "C1") -> dict[str, Any]:
    """The sale T1 as the ledger records it (what the submit stage attaches to its return)."""
    return {"transaction_id": "T1", "state": state, "event_ids": event_ids, "customer_id": customer,
            "currency": "EUR", "items": [{"product_id": "P1", "quantity": "1", "line_total": "12.50"}],
            "store_id": "S1", "timestamp_utc": MOMENT.isoformat()}


def whole_return(recorded: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**checkout("R1", kind="return", original="T1"), "original": recorded, **extra}


def purchases(server: SandboxServer) -> dict[str, dict[str, Any]]:
    """Every stored purchase by its id (a repeated reference is stored as a second purchase)."""
    stored = server.state.transactions.get(PLATFORM, {})
    return {record["events"][0]["id"]: record for record in stored.values()}


@pytest.mark.parametrize("earlier_cancel_landed", [True, False])
def test_a_cancel_in_doubt_asks_about_its_recorded_purchase_not_the_first_with_its_reference(
    crm: SandboxServer, earlier_cancel_landed: bool
) -> None:
    """Two purchases carry T1's reference (a platform without the uniqueness check); the ledger
    recorded the second. A lookup by reference shows the first, whose state says nothing of the
    purchase to cancel: the cancel in doubt asks about the recorded purchase by its id, so an
    earlier cancel that landed settles the return accepted (it was `already_cancelled`, never
    counted, before) and one that did not is sent to that purchase, once; the first stays."""
    platform_of(crm).config.unique_reference_numbers = False
    first = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    second = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    assert first != second
    if earlier_cancel_landed:  # R1's earlier request cancelled the recorded purchase
        platform_of(crm).cancel({"customer_event_identifier": {"id": second}})
    cancels = Cancels(platform_of(crm))
    sink = sink_of(crm)
    result = submit(sink, [whole_return(original([second]), may_have_landed=True)])["R1"]
    if earlier_cancel_landed:
        assert (result.outcome, result.error_code) == (Outcome.ALREADY_ACCEPTED, "found_by_lookup")
        assert cancels.named == []
    else:
        assert result.outcome is Outcome.ACCEPTED
        assert cancels.named == [{"id": second}]
    assert result.event_ids == (second,)
    assert adapter_of(sink).lookups == 1
    assert {pid: p["life_cycle_state"] for pid, p in purchases(crm).items()} == {
        first: "POSTED", second: "CANCELLED"}


def test_with_list_lookups_two_purchases_of_a_reference_hold_only_an_unnamed_cancel(
    crm: SandboxServer,
) -> None:
    """`list` sees both purchases carrying the reference, alike: a sale recorded without an id
    cannot be named, so its return fails for good (`ambiguous_purchase`) and nothing is cancelled;
    a cancel in doubt whose purchase is recorded asks about that purchase by id (`show` by id is
    documented from R5) and cancels it, once, leaving the other."""
    platform_of(crm).config.unique_reference_numbers = False
    first = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    second = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    unnamed = submit(sink_of(crm, lookup="list"), [whole_return(original([]))])["R1"]
    assert (unnamed.outcome, unnamed.error_code) == (Outcome.REJECTED, CrmcomRejectCode.AMBIGUOUS_PURCHASE)
    assert "2 purchases match the sale" in str(unnamed.error_message)
    assert cancels.named == []
    named = submit(sink_of(crm, lookup="list"), [whole_return(original([second]), may_have_landed=True)])
    assert named["R1"].outcome is Outcome.ACCEPTED and cancels.named == [{"id": second}]
    assert {pid: p["life_cycle_state"] for pid, p in purchases(crm).items()} == {
        first: "POSTED", second: "CANCELLED"}


@pytest.mark.parametrize("named", [True, False])
def test_a_cancel_answered_with_an_unproven_2xx_is_settled_by_lookup_once(
    crm: SandboxServer, monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    """The cancel lands and is answered 200 with an empty body: no verdict, so the purchase is
    looked up (found cancelled: accepted) instead of being cancelled again."""
    sale = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    # the cancel's answer is empty (when no id is recorded, a lookup naming the purchase comes first)
    faults = iter([Fault.EMPTY_ANSWER] if named else [None, Fault.EMPTY_ANSWER])
    monkeypatch.setattr(crm.state, "draw_fault", lambda: next(faults, None))
    sink = sink_of(crm)
    result = submit(sink, [whole_return(original([sale] if named else []))])["R1"]
    assert result.outcome is Outcome.ALREADY_ACCEPTED and result.error_code == "found_by_lookup"
    assert result.event_ids == (sale,)
    assert cancels.named == [{"id": sale}]  # cancelled once, never again
    assert purchases(crm)[sale]["life_cycle_state"] == "CANCELLED"
    assert adapter_of(sink).lookups == (1 if named else 2)
    assert adapter_of(sink).learned_event_ids() == ({} if named else {"T1": (sale,)})
def test_a_return_of_a_sale_refused_for_good_is_held_not_left_waiting(crm: SandboxServer) -> None:
    """The platform refused T1 for good: its return can never be sent until an operator resends
    the sale. It is failed for good (`original_refused`), saying so, instead of waiting run after
    run as `crmcom_original_not_delivered`; nothing is sent."""
    cancels = Cancels(platform_of(crm))
    later = submit(sink_of(crm), [whole_return(original([], state="failed_permanent"))])["R1"]
    partial = {**checkout("R2", kind="return", original="T1", totals=("2.50",)),
               "original": {**original([], state="failed_permanent"),
                            "items": [{"product_id": "P1", "quantity": "2", "line_total": "5.00"}]}}
    partial["items"][0]["quantity"] = -1
    partial_result = submit(sink_of(crm), [partial])["R2"]
    # in the same submission: the sale is refused (unknown customer), then its return
    same_run = submit(sink_of(crm), [checkout("T2", "unknown-9"),
                                     checkout("R3", "unknown-9", kind="return", original="T2")])
    assert same_run["T2"].outcome is Outcome.REJECTED
    for result in (later, partial_result, same_run["R3"]):
        assert (result.outcome, result.error_code) == (Outcome.REJECTED, ReturnCode.ORIGINAL_REFUSED)
        assert "refused the sale" in str(result.error_message) and "rerun" in str(result.error_message)
    assert later.attempts == partial_result.attempts == 0  # decided before any request
    assert cancels.named == []
    assert purchases(crm) == {}


@pytest.mark.parametrize("lookup_answers", [True, False])
def test_a_whole_return_of_a_sale_in_doubt_in_the_same_submission(
    crm: SandboxServer, lookup_answers: bool
) -> None:
    """T1 landed before a crash (in doubt) and comes again with its whole return: the lookup finds
    the purchase (nothing created twice) and the return cancels exactly it; when no lookup answers,
    T1 is held in doubt and its return waits, nothing cancelled."""
    landed = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    if not lookup_answers:
        crm.config.fault_kinds = ("error_503",)
        crm.config.fault_rate = 1.0
    sink = sink_of(crm, max_attempts=2)
    results = submit(sink, [{**checkout("T1"), "may_have_landed": True},
                            checkout("R1", kind="return", original="T1")])
    if lookup_answers:
        assert (results["T1"].outcome, results["T1"].event_ids) == (Outcome.ALREADY_ACCEPTED, (landed,))
        assert (results["R1"].outcome, results["R1"].event_ids) == (Outcome.ACCEPTED, (landed,))
        assert cancels.named == [{"id": landed}]
        assert adapter_of(sink).lookups == 1
    else:
        held = results["T1"]
        assert (held.outcome, held.error_code) == (Outcome.RETRYABLE, CrmcomRejectCode.IN_DOUBT)
        assert results["R1"].error_code == CrmcomRejectCode.ORIGINAL_NOT_DELIVERED
        assert cancels.named == []
    assert platform_of(crm).arrivals["T1"] == 1
    assert purchases(crm)[landed]["life_cycle_state"] == ("CANCELLED" if lookup_answers else "POSTED")


def test_a_whole_return_at_another_store_cancels_the_customers_purchase(crm: SandboxServer) -> None:
    """A return names its sale by id; the store it is made at is not the sale's business: the same
    customer's whole return elsewhere cancels the sale's purchase, once (another customer's is
    `return_other_customer`, see test_crmcom_returns)."""
    sale = submit(sink_of(crm), [checkout("T1", store_id="S1")])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    back = {**checkout("R1", kind="return", original="T1", store_id="S2"),
            "original": original([sale])}
    result = submit(sink_of(crm), [back])["R1"]
    assert (result.outcome, result.event_ids) == (Outcome.ACCEPTED, (sale,))
    assert cancels.named == [{"id": sale}]


@pytest.mark.parametrize("may_have_landed", [True, False])
def test_a_resent_cancel_answered_already_cancelled_counts_as_its_own(
    crm: SandboxServer, may_have_landed: bool
) -> None:
    """With `in_doubt = "resend"` a cancel that may have landed is sent again; `ALREADY_CANCELLED`
    then is the earlier request's doing: the return is accepted, as a lookup finding the purchase
    cancelled settles it (it was `already_cancelled`, never counted, while the platform held its
    cancel). A cancel never sent before and answered so was someone else's: not sent, for review."""
    sale = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    platform_of(crm).cancel({"customer_event_identifier": {"id": sale}})  # R1's lost request, or not
    back = whole_return(original([sale]), may_have_landed=may_have_landed)
    result = submit(sink_of(crm, in_doubt="resend"), [back])["R1"]
    if may_have_landed:
        assert result.outcome is Outcome.ALREADY_ACCEPTED and result.event_ids == (sale,)
    else:
        assert (result.outcome, result.error_code) == (Outcome.NOT_SENT, CrmcomRejectCode.ALREADY_CANCELLED)


def test_a_cancel_answered_ok_for_another_purchase_proves_nothing(crm: SandboxServer) -> None:
    """The cancel's OK names another purchase than the one asked for: no verdict on ours. It is
    looked up by its id (still POSTED) and cancelled, once; the return records that purchase."""
    sale = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    platform = platform_of(crm)
    real, asked = platform.cancel, []

    def cancel(body: Mapping[str, Any]) -> dict[str, Any]:
        asked.append(dict(body["customer_event_identifier"]))
        if len(asked) == 1:  # a confused platform: OK, naming some other purchase, ours untouched
            return {"id": "ANOTHER-PURCHASE", "life_cycle_state": "CANCELLED"}
        return real(body)

    platform.cancel = cancel  # type: ignore[method-assign]
    sink = sink_of(crm)
    result = submit(sink, [whole_return(original([sale]))])["R1"]
    assert (result.outcome, result.event_ids) == (Outcome.ACCEPTED, (sale,))
    assert asked == [{"id": sale}, {"id": sale}]
    assert purchases(crm)[sale]["life_cycle_state"] == "CANCELLED"
    assert adapter_of(sink).lookups == 1


def other_systems_purchase() -> dict[str, Any]:
    """Another sale carrying T1's receipt number (a till reusing it): another amount and day."""
    from datetime import UTC, datetime

    return checkout("T1", totals=("99.00",), timestamp_utc=datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@pytest.mark.parametrize("lookup", ["show", "list"])
def test_an_unnamed_cancel_picks_the_purchase_that_matches_its_sale(
    crm: SandboxServer, lookup: str
) -> None:
    """Two purchases carry T1's reference: first another sale's (another amount and day), then the
    ledger's T1, recorded without a purchase id. The return cancels the purchase matching the sale
    (amount, day), never the first found; `show` sees only the other one, so the purchases of the
    customer are listed to find it."""
    platform_of(crm).config.unique_reference_numbers = False
    other = submit(sink_of(crm), [other_systems_purchase()])["T1"].event_ids[0]
    ours = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    sink = sink_of(crm, lookup=lookup)
    result = submit(sink, [whole_return(original([]))])["R1"]
    assert result.outcome is Outcome.ACCEPTED and result.event_ids == (ours,)
    assert cancels.named == [{"id": ours}]
    assert adapter_of(sink).learned_event_ids() == {"T1": (ours,)}
    assert {pid: p["life_cycle_state"] for pid, p in purchases(crm).items()} == {
        other: "POSTED", ours: "CANCELLED"}


@pytest.mark.parametrize("in_doubt", [False, True])
def test_two_purchases_matching_the_sale_cancel_nothing_and_fail_naming_both(
    crm: SandboxServer, in_doubt: bool
) -> None:
    """T1 was created twice by another system (same reference, customer, amount, day), the ledger
    holds it without a purchase id: no purchase can be told to be the sale's, so nothing is
    cancelled and the return fails for good (`ambiguous_purchase`) naming both purchases (also
    when its earlier cancel may have landed); a purchase matching nothing is refused the same way."""
    platform_of(crm).config.unique_reference_numbers = False
    first = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    second = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    result = submit(sink_of(crm, lookup="list"),
                    [whole_return(original([]), may_have_landed=in_doubt)])["R1"]
    assert (result.outcome, result.error_code) == (Outcome.REJECTED, CrmcomRejectCode.AMBIGUOUS_PURCHASE)
    assert first in str(result.error_message) and second in str(result.error_message)
    assert cancels.named == []
    assert {p["life_cycle_state"] for p in purchases(crm).values()} == {"POSTED"}


def test_a_lone_purchase_of_another_sale_is_not_cancelled(crm: SandboxServer) -> None:
    """The only purchase carrying T1's reference is another sale's (another amount and day): it is
    not the sale's, so nothing is cancelled and the return fails for good naming it."""
    other = submit(sink_of(crm), [other_systems_purchase()])["T1"].event_ids[0]
    cancels = Cancels(platform_of(crm))
    result = submit(sink_of(crm), [whole_return(original([]))])["R1"]
    assert (result.outcome, result.error_code) == (Outcome.REJECTED, CrmcomRejectCode.AMBIGUOUS_PURCHASE)
    assert other in str(result.error_message) and "total" in str(result.error_message)
    assert cancels.named == []
