"""Returns checked against their sale, pure: every fit and every code, earlier returns counted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from pipeline.config import CrmcomTarget
from pipeline.logs import mask_customer_id
from pipeline.sinks.base import EventResult, Outcome
from pipeline.sinks.crmcom_purchases import (
    CrmcomRejectCode,
    PlannedAdHocReturn,
    PlannedCancel,
    PlannedCreate,
    Planner,
)
from pipeline.sinks.crmcom_returns import EarlierReturn, Fit, Line, ReturnCode, check_return, recorded_sale


def item(product: str, quantity: str, amount: str) -> dict[str, Any]:
    return {"product_id": product, "quantity": Decimal(quantity), "line_total": Decimal(amount)}


def sale(customer: str | None = "C2", *items: dict[str, Any], state: str = "accepted") -> dict[str, Any]:
    """A sale as the ledger holds it: X 1 x 10.00 and Y 3 x 2.70 unless given."""
    return {
        "transaction_id": "S1",
        "state": state,
        "customer_id": customer,
        "is_guest": customer is None,
        "currency": "EUR",
        "event_ids": ["EV-1"],
        "items": list(items) or [item("X", "1", "10.00"), item("Y", "3", "8.10")],
    }


def returned(
    *items: dict[str, Any], customer: str | None = "C2", tid: str = "R1", **extra: Any
) -> dict[str, Any]:
    return {
        "transaction_id": tid,
        "store_id": "S1",
        "customer_id": customer,
        "is_guest": customer is None,
        "transaction_type": "return",
        "return_status": "matched",
        "original_transaction_id": "S1",
        "currency": "EUR",
        "items": [{**i, "quantity": -i["quantity"], "line_total": -i["line_total"]} for i in items],
        "timestamp_utc": datetime(2026, 11, 20, 15, tzinfo=UTC),
        **extra,
    }


def verdict(row: dict[str, Any], original: dict[str, Any], earlier: list[EarlierReturn] | None = None) -> Any:
    return check_return(row, recorded_sale(original), earlier or [])


WHOLE = (item("X", "1", "10.00"), item("Y", "3", "8.10"))


def test_a_whole_return_by_the_same_customer_fits_whole() -> None:
    assert verdict(returned(*WHOLE), sale()).fit is Fit.WHOLE
    # the ledger masks a settled sale's customer: compared masked
    assert verdict(returned(*WHOLE), sale(mask_customer_id("C2"))).fit is Fit.WHOLE


@pytest.mark.parametrize(
    ("row", "code"),
    [
        # a return of product Y for -10.00 naming a sale of product X for 10.00
        (returned(item("Z", "1", "10.00")), ReturnCode.MISMATCH),
        (returned(item("X", "2", "20.00")), ReturnCode.MISMATCH),  # more than bought
        (returned(item("Y", "1", "5.00")), ReturnCode.MISMATCH),  # not the sale's price
        (returned(item("X", "1", "10.00"), currency="USD"), ReturnCode.MISMATCH),
        (returned(*WHOLE, customer="C9"), ReturnCode.OTHER_CUSTOMER),  # C9 returns C2's sale
        (returned(*WHOLE, customer=None), ReturnCode.OTHER_CUSTOMER),  # a guest returns C2's sale
        (returned(), ReturnCode.MISMATCH),  # no lines
    ],
)
def test_a_return_that_does_not_fit_gets_a_code(row: dict[str, Any], code: ReturnCode) -> None:
    checked = verdict(row, sale())
    assert (checked.fit, checked.code) == (None, code)
    assert checked.message


def test_a_guest_sale_cannot_be_returned_by_a_member_and_guests_are_guests() -> None:
    assert verdict(returned(*WHOLE), sale(None)).code is ReturnCode.ORIGINAL_IS_GUEST
    both = verdict(returned(*WHOLE, customer=None), sale(None))
    assert (both.fit, both.code) == (None, None)


def test_earlier_returns_count() -> None:
    first = EarlierReturn("R0", (Line("Y", Decimal(1), Decimal("2.70")),), whole=False)
    # part of what is left fits, as a partial return
    assert verdict(returned(item("Y", "2", "5.40")), sale(), [first]).fit is Fit.PARTIAL
    # the rest of the sale after a partial return is partial too (the purchase is no longer whole)
    assert (
        verdict(returned(item("X", "1", "10.00"), item("Y", "2", "5.40")), sale(), [first]).fit is Fit.PARTIAL
    )
    # more pieces than are left: they came back before
    assert verdict(returned(item("Y", "3", "8.10")), sale(), [first]).code is ReturnCode.ALREADY_RETURNED
    # after a whole return nothing is left: a repeated whole return is caught
    whole = EarlierReturn(
        "R0", (Line("X", Decimal(1), Decimal("10.00")), Line("Y", Decimal(3), Decimal("8.10"))), whole=True
    )
    assert verdict(returned(*WHOLE), sale(), [whole]).code is ReturnCode.ALREADY_RETURNED


def test_the_last_pieces_take_what_is_left() -> None:
    thirds = sale("C2", item("Y", "3", "10.00"))
    first = EarlierReturn("R0", (Line("Y", Decimal(2), Decimal("6.67")),), whole=False)
    assert verdict(returned(item("Y", "1", "3.33")), thirds, [first]).fit is Fit.PARTIAL
    assert verdict(returned(item("Y", "1", "3.34")), thirds, [first]).code is ReturnCode.MISMATCH


def plan_all(rows: list[dict[str, Any]], **target: Any) -> dict[str, Any]:
    planner = Planner(
        CrmcomTarget(**target), None, {r["transaction_id"]: r for r in rows if r.get("kind") == "sale"}
    )
    return {row["transaction_id"]: planner.plan(row) for row in rows}


def test_the_planner_sends_whole_returns_as_cancels_and_partial_ones_as_ad_hoc_returns() -> None:
    rows = [
        returned(*WHOLE, tid="R1", original=sale()),
        returned(*WHOLE, tid="R2", original=sale()),  # the same whole return again, same submission
        {
            **returned(item("Y", "1", "2.70"), tid="R3"),
            "original_transaction_id": "S2",
            "original": {**sale(), "transaction_id": "S2"},
        },
        {
            **returned(*WHOLE, tid="R4"),
            "original_transaction_id": "S3",
            "original": {**sale(state="not_sent"), "transaction_id": "S3"},
        },
        {
            **returned(*WHOLE, tid="R5"),
            "original_transaction_id": "S4",
            "original": {**sale(state="failed_retryable"), "transaction_id": "S4"},
        },
    ]
    plans = plan_all(rows)
    assert plans["R1"] == PlannedCancel("R1", "S1", "EV-1", "C2")
    assert isinstance(plans["R2"], EventResult) and plans["R2"].error_code == ReturnCode.ALREADY_RETURNED
    ad_hoc = plans["R3"]
    assert isinstance(ad_hoc, PlannedAdHocReturn)
    assert [
        (p["product_identifier"], p["quantity"], p["total_amount"]) for p in ad_hoc.body["products_set"]
    ] == [({"code": "Y"}, Decimal("1"), Decimal("2.70"))]
    assert ad_hoc.body["reference_number"] == "R3"
    assert isinstance(plans["R4"], EventResult) and plans["R4"].error_code == ReturnCode.ORIGINAL_NOT_SENT
    waiting = plans["R5"]
    assert isinstance(waiting, EventResult)
    assert (waiting.outcome, waiting.error_code) == (
        Outcome.RETRYABLE,
        CrmcomRejectCode.ORIGINAL_NOT_DELIVERED,
    )
    # releases without ad hoc returns keep partial returns unsent
    old = plan_all(rows[2:3], api_release=16)["R3"]
    assert isinstance(old, EventResult) and old.error_code == CrmcomRejectCode.PARTIAL_RETURN
    assert isinstance(
        plan_all(rows[2:3], api_release=16, partial_returns="ad_hoc_return")["R3"], PlannedAdHocReturn
    )


def test_points_burned_at_the_till_go_with_the_purchase() -> None:
    row = {
        **returned(*WHOLE, tid="T1"),
        "transaction_type": "sale",
        "original_transaction_id": None,
        "return_status": None,
        "points_burned": Decimal("150"),
        "items": [item("X", "1", "10.00")],
    }
    modern = Planner(CrmcomTarget(spend_per_point="0.01")).plan(row)
    assert isinstance(modern, PlannedCreate) and not modern.spend_call
    assert modern.body["requested_spend_amount"] == Decimal("1.50")
    old = Planner(CrmcomTarget(api_release=16, spend_per_point="0.01")).plan(row)
    assert isinstance(old, PlannedCreate) and old.spend_call and old.body["spend_amount"] == Decimal("1.50")
    off = Planner(CrmcomTarget(spend="off")).plan(row)
    assert isinstance(off, PlannedCreate) and "requested_spend_amount" not in off.body
