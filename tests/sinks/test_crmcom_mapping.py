"""CRM.COM mapping and answer parsing, pure: checkouts to request bodies, envelopes to outcomes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import CrmcomTarget
from pipeline.sinks.base import ORIGINAL_NOT_FOUND, EventResult, Outcome
from pipeline.sinks.crmcom import endpoint_url
from pipeline.sinks.crmcom_purchases import (
    CrmcomRejectCode,
    Envelope,
    OriginalPurchase,
    PlannedCancel,
    PlannedCreate,
    SaleFacts,
    business_unit_field,
    classify_status,
    dumps,
    format_performed_on,
    plan_checkout,
    results_of_bulk,
    split_vat,
)

MOMENT = datetime(2026, 11, 20, 9, 30, 15, tzinfo=UTC)


def checkout(
    transaction_id: str = "T1",
    customer_id: str | None = "C1",
    *,
    kind: str = "sale",
    original: str | None = None,
    totals: tuple[str, ...] = ("12.50",),
    store_id: str = "S1",
    **extra: Any,
) -> dict[str, Any]:
    """A checkout row as the submit stage hands it to a sink."""
    sign = Decimal(-1) if kind == "return" else Decimal(1)
    items = [
        {
            "line_no": n + 1,
            "product_id": f"P{n + 1}",
            "quantity": Decimal("1.000") * sign,
            "line_total": Decimal(total) * sign,
        }
        for n, total in enumerate(totals)
    ]
    return {
        "transaction_id": transaction_id,
        "store_id": store_id,
        "customer_id": customer_id,
        "is_guest": customer_id is None,
        "transaction_type": kind,
        "return_status": ("matched" if original else "unmatched") if kind == "return" else None,
        "original_transaction_id": original,
        "timestamp_utc": MOMENT,
        "currency": "EUR",
        "total": sum((i["line_total"] for i in items), Decimal(0)),
        "items": items,
        **extra,
    }


def test_a_sale_becomes_a_purchase_with_reference_customer_unit_and_products() -> None:
    planned = plan_checkout(checkout(totals=("12.50", "2.00")), CrmcomTarget())
    assert isinstance(planned, PlannedCreate)
    assert planned.body == {
        "accounts_receivable_identifier": {"number": "C1"},
        "performed_by_business_unit_identifier": {"code": "S1"},
        "performed_on": "2026-11-20T09:30:15Z",
        "reference_number": "T1",
        "external_system_reference_number": "T1",
        "products_set": [
            {
                "product_identifier": {"code": "P1"},
                "quantity": Decimal("1.000"),
                "net_amount": Decimal("12.50"),
                "vat_amount": Decimal("0.00"),
                "total_amount": Decimal("12.50"),
            },
            {
                "product_identifier": {"code": "P2"},
                "quantity": Decimal("1.000"),
                "net_amount": Decimal("2.00"),
                "vat_amount": Decimal("0.00"),
                "total_amount": Decimal("2.00"),
            },
        ],
    }


def test_settings_choose_customer_identifier_unit_and_optional_fields() -> None:
    target = CrmcomTarget(
        customer_field="access_token_identifier",
        customer_key="authentication_code",
        business_unit_key="id",
        business_units={"S1": "BU-1"},
        product_key="alternative_code",
        external_system="POS",
        process_immediately=True,
    )
    body = plan_checkout(checkout(), target)
    assert isinstance(body, PlannedCreate)
    assert body.body["access_token_identifier"] == {"authentication_code": "C1"}
    assert body.body["performed_by_business_unit_identifier"] == {"id": "BU-1"}
    assert body.body["products_set"][0]["product_identifier"] == {"alternative_code": "P1"}
    assert body.body["external_system"] == "POS" and body.body["process_immediately"] is True
    unmapped = plan_checkout(checkout(store_id="S9"), target)
    assert isinstance(unmapped, EventResult) and unmapped.error_code == CrmcomRejectCode.UNKNOWN_STORE
    fixed = plan_checkout(checkout(store_id="S9"), target.model_copy(update={"business_unit": "HQ"}))
    assert isinstance(fixed, PlannedCreate)
    assert fixed.body["performed_by_business_unit_identifier"] == {"id": "HQ"}


@pytest.mark.parametrize(
    ("release", "field"),
    [
        (12, "performed_by_unit_identifier"),
        (16, "performed_by_unit_identifier"),
        (17, "performed_by_tap_identifier"),
        (18, "performed_by_business_unit_identifier"),
        (19, "performed_by_business_unit_identifier"),
    ],
)
def test_the_business_unit_field_follows_the_api_release(release: int, field: str) -> None:
    assert business_unit_field(CrmcomTarget(api_release=release)) == field
    assert business_unit_field(CrmcomTarget(api_release=release, business_unit_field="shop")) == "shop"


def test_performed_on_formats() -> None:
    assert format_performed_on(MOMENT, "iso8601") == "2026-11-20T09:30:15Z"
    assert format_performed_on(MOMENT, "epoch") == int(MOMENT.timestamp())
    assert format_performed_on(MOMENT, "%Y-%m-%d %H:%M:%S") == "2026-11-20 09:30:15"


def test_vat_split_inclusive_and_exclusive() -> None:
    inclusive = CrmcomTarget(vat_rate=Decimal("0.20"))
    assert split_vat(Decimal("12.0000"), inclusive) == (Decimal("10.00"), Decimal("2.00"), Decimal("12.00"))
    assert split_vat(Decimal("10.00"), inclusive) == (Decimal("8.33"), Decimal("1.67"), Decimal("10.00"))
    exclusive = CrmcomTarget(vat_rate=Decimal("0.20"), prices_include_vat=False)
    assert split_vat(Decimal("10.005"), exclusive) == (Decimal("10.01"), Decimal("2.00"), Decimal("12.01"))
    assert split_vat(Decimal("3.3333"), CrmcomTarget()) == (Decimal("3.33"), Decimal("0.00"), Decimal("3.33"))


@given(
    amount=st.decimals(min_value=Decimal("-100000"), max_value=Decimal("100000"), places=4),
    rate=st.sampled_from([Decimal("0"), Decimal("0.05"), Decimal("0.2"), Decimal("0.21"), Decimal("0.175")]),
    inclusive=st.booleans(),
)
def test_net_plus_vat_is_total_exactly(amount: Decimal, rate: Decimal, inclusive: bool) -> None:
    net, vat, total = split_vat(amount, CrmcomTarget(vat_rate=rate, prices_include_vat=inclusive))
    assert net + vat == total
    assert total.as_tuple().exponent == -2


def test_decimals_are_sent_as_exact_number_literals() -> None:
    text = dumps({"a": Decimal("12.50"), "b": [Decimal("-0.001")], "c": "x\u0000D1\u0000"}).decode()
    assert text == '{"a":12.50,"b":[-0.001],"c":"x\\u0000D1\\u0000"}'
    assert json.loads(text, parse_float=Decimal)["a"] == Decimal("12.50")


def sale_of(
    customer: str | None = "C1", totals: tuple[str, ...] = ("12.50",), **fields: Any
) -> OriginalPurchase:
    """A recorded sale as the ledger lookup gives it (lines P1, P2, ... of one piece each)."""
    items = tuple(
        {"product_id": f"P{n + 1}", "quantity": "1.000", "line_total": total}
        for n, total in enumerate(totals)
    )
    return OriginalPurchase(
        fields.pop("event_ids", ("EV-1",)),
        sum((Decimal(t) for t in totals), Decimal(0)),
        customer_id=customer,
        is_guest=customer is None,
        currency="EUR",
        items=items,
        **fields,
    )


def test_guests_voids_and_unsupported_returns_are_not_sent() -> None:
    target = CrmcomTarget(api_release=16)  # no ad hoc returns: partial returns are not sent
    known = {"T1": sale_of(totals=("12.50", "5.00"))}

    def code_of(row: dict[str, Any]) -> str | None:
        planned = plan_checkout(row, target, known.get)
        assert isinstance(planned, EventResult)
        return planned.error_code

    assert code_of(checkout(customer_id=None)) == CrmcomRejectCode.GUEST
    assert code_of(checkout(kind="void")) == CrmcomRejectCode.VOID
    assert code_of(checkout("R1", kind="return")) == CrmcomRejectCode.UNMATCHED_RETURN
    assert code_of(checkout("R1", kind="return", original="T404")) == ORIGINAL_NOT_FOUND  # waits for it
    assert code_of(checkout("R1", kind="return", original="T1", totals=("12.50",))) == (
        CrmcomRejectCode.PARTIAL_RETURN
    )
    # a guest's return of a member's sale is not the member's: for review
    assert code_of(checkout("R1", None, kind="return", original="T1")) == "return_other_customer"
    for row in (checkout(customer_id=None), checkout(kind="void")):
        planned = plan_checkout(row, target)
        assert isinstance(planned, EventResult) and planned.outcome is Outcome.NOT_SENT


def test_a_whole_return_cancels_the_original_purchase() -> None:
    target = CrmcomTarget()
    known = {"T1": sale_of(), "T2": sale_of(event_ids=(), state="failed_retryable")}
    assert plan_checkout(checkout("R1", kind="return", original="T1"), target, known.get) == PlannedCancel(
        "R1", "T1", "EV-1", "C1"
    )
    # the original exists but has no purchase yet: retryable, a rerun can cancel it later
    waiting = plan_checkout(checkout("R2", kind="return", original="T2"), target, known.get)
    assert isinstance(waiting, EventResult)
    assert (waiting.outcome, waiting.error_code) == (
        Outcome.RETRYABLE,
        CrmcomRejectCode.ORIGINAL_NOT_DELIVERED,
    )
    # the row may carry the original as the ledger holds it (the submit stage attaches it)
    recorded = {
        "transaction_id": "T9",
        "state": "accepted",
        "event_ids": ["EV-9"],
        "customer_id": "C1",
        "currency": "EUR",
        "items": [{"product_id": "P1", "quantity": "1.000", "line_total": "12.50"}],
    }
    carried = {**checkout("R3", kind="return", original="T9"), "original": recorded}
    assert plan_checkout(carried, target) == PlannedCancel("R3", "T9", "EV-9", "C1")
    # the original is created in the same submission: its id is known only after it is accepted
    # (should CRM.COM name none, the purchase showing the sale's total, day, customer, unit is cancelled)
    sale = checkout("T5")
    assert plan_checkout(checkout("R5", kind="return", original="T5"), target, None, {"T5": sale}) == (
        PlannedCancel("R5", "T5", None, "C1",
                      sale=SaleFacts(Decimal("12.50"), "2026-11-20T09:30:15Z", "C1", "S1"))
    )


def test_status_codes_map_to_outcomes() -> None:
    target = CrmcomTarget()
    assert classify_status("OK", target) is Outcome.ACCEPTED
    assert classify_status("DUPLICATE_REFERENCE_NUMBER", target) is Outcome.ALREADY_ACCEPTED
    strict = CrmcomTarget(on_duplicate="rejected")
    assert classify_status("DUPLICATE_REFERENCE_NUMBER", strict) is Outcome.REJECTED
    # the purchase was cancelled already: not this return's doing, never counted as sent money
    assert classify_status("ALREADY_CANCELLED", target, cancel=True) is Outcome.NOT_SENT
    assert classify_status("INTERNAL_ERROR", target) is Outcome.RETRYABLE
    assert classify_status("CUSTOMER_NOT_FOUND", target) is Outcome.REJECTED
    custom = CrmcomTarget(duplicate_codes=("E42",))
    assert classify_status("E42", custom) is Outcome.ALREADY_ACCEPTED


def test_envelopes_are_read_exactly_and_malformed_answers_say_so() -> None:
    envelope = Envelope.read(b'{"status":{"code":"OK","message":""},"data":{"id":"X","total_amount":1.10}}')
    assert envelope.ok and envelope.data["total_amount"] == Decimal("1.10")
    assert Envelope.read(b"<html>", 502).code == "MALFORMED_RESPONSE"
    error = Envelope.read(b'{"status":{"code":"E1","message":"bad","description":"thing"}}')
    assert (error.ok, error.code, error.message) == (False, "E1", "bad thing")


def test_bulk_answers_map_back_to_each_transaction() -> None:
    envelope = Envelope.parse(
        {
            "status": {"code": "OK"},
            "data": {
                "processed_customer_events_set": [
                    {"request_unique_identifier": "T2", "id": "EV-2", "number": "2"}
                ],
                "unprocessed_customer_events_set": [
                    {
                        "request_unique_identifier": "T1",
                        "error_code": "DUPLICATE_REFERENCE_NUMBER",
                        "error_description": "used",
                    },
                    {
                        "request_unique_identifier": "T3",
                        "error_code": "CUSTOMER_NOT_FOUND",
                        "error_description": "no such account",
                    },
                ],
            },
        }
    )
    results = {
        r.transaction_id: r for r in results_of_bulk(["T1", "T2", "T3", "T4"], envelope, CrmcomTarget())
    }
    assert results["T1"].outcome is Outcome.ALREADY_ACCEPTED
    assert (results["T2"].outcome, results["T2"].event_ids) == (Outcome.ACCEPTED, ("EV-2",))
    assert (results["T3"].outcome, results["T3"].error_code) == (Outcome.REJECTED, "CUSTOMER_NOT_FOUND")
    assert (results["T4"].outcome, results["T4"].error_code) == (Outcome.RETRYABLE, "MISSING_FROM_RESPONSE")


def test_bulk_entries_that_name_nothing_sent_prove_nothing() -> None:
    envelope = Envelope.parse(
        {"status": {"code": "OK"}, "data": {"processed_customer_events_set": [{"id": "A"}, {"id": "B"}]}}
    )
    results = results_of_bulk(["T1", "T2"], envelope, CrmcomTarget())
    assert [(r.transaction_id, r.outcome, r.error_code) for r in results] == [
        ("T1", Outcome.RETRYABLE, "MISSING_FROM_RESPONSE"),
        ("T2", Outcome.RETRYABLE, "MISSING_FROM_RESPONSE"),
    ]
    failed = results_of_bulk(["T1"], Envelope("INTERNAL_ERROR", "down", None), CrmcomTarget())
    assert failed[0].outcome is Outcome.RETRYABLE


@pytest.mark.parametrize("processed", [
    "T1", ["T1", 7, None, True, [], ["T1"]], [{"request_unique_identifier": None}],
    [{"request_unique_identifier": {"x": 1}}], [{"request_unique_identifier": "OTHER", "id": "X"}],
    [{"request_unique_identifier": True}], {"T1": {"id": "A"}}, None, 12,
])
def test_odd_bulk_entries_never_crash_and_never_prove_a_purchase(processed: object) -> None:
    envelope = Envelope.parse({"status": {"code": "OK"}, "data": {
        "processed_customer_events_set": processed,
        "unprocessed_customer_events_set": [None, "T2", {"error_code": "X"},
                                            {"request_unique_identifier": 5}]}})

    results = results_of_bulk(["T1", "T2"], envelope, CrmcomTarget())

    assert [(r.transaction_id, r.outcome, r.error_code) for r in results] == [
        ("T1", Outcome.RETRYABLE, "MISSING_FROM_RESPONSE"),
        ("T2", Outcome.RETRYABLE, "MISSING_FROM_RESPONSE"),
    ]


def test_bulk_entries_that_disagree_leave_the_purchase_in_doubt() -> None:
    envelope = Envelope.parse({"status": {"code": "OK"}, "data": {
        "processed_customer_events_set": [{"request_unique_identifier": "T1", "id": "A"},
                                          {"request_unique_identifier": "T2", "id": "B"},
                                          {"request_unique_identifier": "T2", "id": "B"}],
        "unprocessed_customer_events_set": [{"request_unique_identifier": "T1", "error_code": "INVALID"}]}})

    results = {r.transaction_id: r for r in results_of_bulk(["T1", "T2"], envelope, CrmcomTarget())}

    assert (results["T1"].outcome, results["T1"].error_code) == (Outcome.RETRYABLE, "CONFLICTING_ANSWER")
    # the same answer twice is still one answer
    assert (results["T2"].outcome, results["T2"].event_ids) == (Outcome.ACCEPTED, ("B",))


def test_endpoint_urls() -> None:
    target = CrmcomTarget(base_url="https://crm.example.com/")
    assert endpoint_url(target, "customer_events/purchases/create") == (
        "https://crm.example.com/crmapi/rest/v2/customer_events/purchases/create"
    )
    bare = target.model_copy(update={"path_prefix": ""})
    assert endpoint_url(bare, "/authentication/token") == "https://crm.example.com/authentication/token"


def test_a_purchase_of_another_customer_is_told_without_quoting_either_customer():
    """Why a purchase is not the sale's goes to the ledger, detail.csv and the finance page: a
    customer id of another account (not one of the run's, so never masked) must not be quoted,
    nor the sale's own; the total and day, which are not personal, are."""
    from pipeline.sinks.crmcom_lookup import Ambiguous, pick_purchase
    from pipeline.sinks.crmcom_purchases import SaleFacts

    sale = SaleFacts(total=Decimal("9.00"), performed_on="2026-11-20T10:00:00Z", customer="CUST-OURS-1")
    theirs = {"id": "P-2", "total_amount": "9.00", "performed_on": "2026-11-20T11:00:00Z",
              "contact": {"id": "CUST-THEIRS-7", "code": "THEIRS-CODE"}}
    dearer = {"id": "P-3", "total_amount": "12.00", "performed_on": "2026-11-20T11:00:00Z"}
    picked = pick_purchase([theirs, dearer], sale, customer_field="contact")
    assert isinstance(picked, Ambiguous)
    reason = picked.reason
    assert "P-2" in reason and "P-3" in reason and "12.00" in reason and "another customer" in reason
    for customer in ("CUST-THEIRS-7", "THEIRS-CODE", "CUST-OURS-1"):
        assert customer not in reason
