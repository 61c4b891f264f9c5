"""CRM.COM: a sale that may have landed (a crash before its answer, a lost answer) is looked up by its
reference before it is created again, and adopts only the purchase that matches it (total, day,
customer, business unit): another sale's purchase with the same reference is never taken for it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import Fault
from pipeline.sinks.base import Outcome
from pipeline.sinks.crmcom_purchases import CrmcomRejectCode
from tests.sinks.test_crmcom_hostile_returns import other_systems_purchase, purchases
from tests.sinks.test_crmcom_mapping import checkout
from tests.sinks.test_crmcom_sink import adapter_of, platform_of, sink_of, submit


@pytest.mark.parametrize("lookup", ["show", "list"])
def test_a_sale_in_doubt_is_created_when_its_reference_names_only_another_sales_purchase(
    crm: SandboxServer, lookup: str
) -> None:
    """T1 was marked sending when the run died, before its request went out; another sale's purchase
    (another amount and day) carries T1's receipt number. The resend's lookup finds that purchase,
    which is not T1's: T1 is created, and the other purchase is left alone."""
    platform_of(crm).config.unique_reference_numbers = False
    other = submit(sink_of(crm), [other_systems_purchase()])["T1"].event_ids[0]
    result = submit(sink_of(crm, lookup=lookup), [checkout("T1", may_have_landed=True)])["T1"]
    assert result.outcome is Outcome.ACCEPTED and result.event_ids and result.event_ids != (other,)
    ours = result.event_ids[0]
    stored = purchases(crm)
    assert set(stored) == {other, ours}
    assert Decimal(stored[ours]["total"]) == Decimal("12.50")
    assert {p["life_cycle_state"] for p in stored.values()} == {"POSTED"}


@pytest.mark.parametrize("lookup", ["show", "list"])
def test_a_lost_answer_adopts_the_purchase_that_matches_the_sale(
    crm: SandboxServer, monkeypatch: pytest.MonkeyPatch, lookup: str
) -> None:
    """Another sale's purchase carries T1's reference first; T1's create lands and its answer is
    lost. The lookup adopts T1's own purchase (`show` sees only the other: the customer's purchases
    are listed), never the other; nothing is created twice."""
    platform_of(crm).config.unique_reference_numbers = False
    other = submit(sink_of(crm), [other_systems_purchase()])["T1"].event_ids[0]
    faults = iter([Fault.LOST_RESPONSE])
    monkeypatch.setattr(crm.state, "draw_fault", lambda: next(faults, None))
    sink = sink_of(crm, lookup=lookup)
    result = submit(sink, [checkout("T1")])["T1"]
    stored = purchases(crm)
    assert len(stored) == 2
    ours = next(pid for pid in stored if pid != other)
    assert (result.outcome, result.error_code) == (Outcome.ALREADY_ACCEPTED, "found_by_lookup")
    assert result.event_ids == (ours,)
    assert adapter_of(sink).lookups >= 1


def test_two_purchases_matching_a_sale_in_doubt_adopt_neither_and_fail_naming_both(
    crm: SandboxServer,
) -> None:
    """T1 is on CRM.COM twice (same reference, customer, amount, day: another system created it
    twice, or a platform stored a repeat): the resend of T1 in doubt, seeing both (`list`), cannot
    tell which is its own, so it adopts neither, creates nothing and fails for good
    (`ambiguous_purchase`) naming both. (`show` answers one purchase of a reference: one that
    matches is adopted.)"""
    platform_of(crm).config.unique_reference_numbers = False
    first = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    second = submit(sink_of(crm), [checkout("T1")])["T1"].event_ids[0]
    result = submit(sink_of(crm, lookup="list"), [checkout("T1", may_have_landed=True)])["T1"]
    assert (result.outcome, result.error_code) == (Outcome.REJECTED, CrmcomRejectCode.AMBIGUOUS_PURCHASE)
    assert first in str(result.error_message) and second in str(result.error_message)
    assert set(purchases(crm)) == {first, second}
