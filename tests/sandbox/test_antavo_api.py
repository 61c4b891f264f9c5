"""The emulated Antavo Events API over HTTP: authentication, validation, bad input, limits, state."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.store import RecordStore
from pipeline.sinks.escher import EscherSigner, antavo_config

# one client for the module: building one per request (SSL context) costs more than the request
HTTP = httpx.Client(trust_env=False)

CHECKOUT = {"customer": "cust-1", "action": "checkout",
            "data": {"transaction_id": "T-1", "total": 12.5, "currency": "EUR"}}


def _signer(sandbox: SandboxServer, *, key: str | None = None, secret: str | None = None,
            region: str | None = None, clock: Callable[[], datetime] | None = None) -> EscherSigner:
    return EscherSigner(
        antavo_config(region or sandbox.config.region),
        key or sandbox.config.api_key,
        secret or sandbox.config.api_secret,
        clock=clock or (lambda: datetime.now(UTC)),
    )


def post(sandbox: SandboxServer, path: str, document: Any = None, *, body: bytes | None = None,
         content_type: str = "application/json", signer: EscherSigner | None = None,
         tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]] | None = None,
         query: str = "") -> httpx.Response:
    """Sign and send one request (optionally tampered after signing)."""
    payload = body if body is not None else json.dumps(document).encode()
    url = sandbox.url + path + (f"?{query}" if query else "")
    headers = {"Content-Type": content_type}
    if signer is not False:  # type: ignore[comparison-overlap]
        headers = (signer or _signer(sandbox)).sign("POST", url, payload, headers).headers
    if tamper is not None:
        headers, payload = tamper(headers, payload)
    return HTTP.post(url, content=payload, headers=headers)


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_signed_checkout_is_accepted_and_listed(sandbox: SandboxServer) -> None:
    response = post(sandbox, "/events", CHECKOUT)
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "cust-1"
    assert answer["events"][0]["action"] == "checkout"
    assert answer["events"][0]["points"] == 12
    listing = HTTP.get(sandbox.url + "/_sandbox/transactions").json()
    assert listing["count"] == 1
    assert listing["transactions"][0]["total"] == "12.5"
    stats = HTTP.get(sandbox.url + "/_sandbox/stats").json()
    for key in ("requests", "events_accepted", "duplicate_transaction_attempts", "rate_limited",
                "faults_injected", "auth_failures"):
        assert key in stats
    assert stats["events_accepted"] == 1


def _swap(name: str, value: str) -> Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]:
    return lambda headers, body: ({**headers, name: value}, body)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h, b: (h, b.replace(b"12.5", b"99.5")), "The signatures do not match"),
        (_swap("Host", "api.demo.antavo.com"), "The signatures do not match"),
        (lambda h, b: ({**h, "Date": (datetime.now(UTC) + timedelta(seconds=5)).strftime(
            "%Y%m%dT%H%M%SZ")}, b), "The signatures do not match"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "Authorization"}, b),
         "Could not parse auth header"),
        (lambda h, b: ({**h, "Authorization": h["Authorization"].replace("date;host", "host")}, b),
         "The date header is not signed"),
        (lambda h, b: ({**h, "Authorization": h["Authorization"].replace("date;host", "date")}, b),
         "The host header is not signed"),
    ],
    ids=["body", "host", "date", "unsigned", "date-not-signed", "host-not-signed"],
)
def test_each_tampering_is_refused_with_401(sandbox: SandboxServer, tamper: Any, message: str) -> None:
    response = post(sandbox, "/events", CHECKOUT, tamper=tamper)
    assert response.status_code == 401
    assert _error(response) == {"type": "UnauthorizedException", "code": 101021, "message": message}
    assert sandbox.state.listing() == []
    assert sandbox.state.stats["auth_failures"] == 1


@pytest.mark.parametrize(
    ("signer_options", "message"),
    [
        ({"key": "other-key"}, "Invalid Escher key"),
        ({"secret": "other-secret"}, "The signatures do not match"),
        ({"region": "prod"}, "The credential scope is invalid"),
        ({"clock": lambda: datetime.now(UTC) - timedelta(seconds=400)},
         "The request date is not within the accepted time range"),
        ({"clock": lambda: datetime.now(UTC) + timedelta(seconds=400)},
         "The request date is not within the accepted time range"),
    ],
    ids=["key", "secret", "scope", "skew-past", "skew-future"],
)
def test_wrong_credentials_and_clock_skew_are_refused(sandbox: SandboxServer,
                                                     signer_options: dict[str, Any], message: str) -> None:
    response = post(sandbox, "/events", CHECKOUT, signer=_signer(sandbox, **signer_options))
    assert response.status_code == 401
    assert _error(response)["message"] == message


def test_clock_skew_is_a_setting(sandbox: SandboxServer) -> None:
    sandbox.config.clock_skew_seconds = 900
    late = _signer(sandbox, clock=lambda: datetime.now(UTC) - timedelta(seconds=600))
    assert post(sandbox, "/events", CHECKOUT, signer=late).status_code == 200


def test_content_type_header_may_be_signed_too(sandbox: SandboxServer) -> None:
    url = sandbox.url + "/events"
    body = json.dumps(CHECKOUT).encode()
    headers = _signer(sandbox).sign("POST", url, body, {"Content-Type": "application/json"},
                                    extra_signed=["content-type"]).headers
    assert "content-type;date;host" in headers["Authorization"]
    assert HTTP.post(url, content=body, headers=headers).status_code == 200
    headers["Content-Type"] = "application/json; charset=utf-8"
    assert HTTP.post(url, content=body, headers=headers).status_code == 401


def test_unsigned_api_key_mode_only_when_allowed(sandbox: SandboxServer) -> None:
    key = sandbox.config.api_key
    assert post(sandbox, "/events", CHECKOUT, signer=False, query=f"api_key={key}").status_code == 200  # type: ignore[arg-type]
    assert post(sandbox, "/events", CHECKOUT, signer=False, query="api_key=nope").status_code == 401  # type: ignore[arg-type]
    sandbox.config.allow_api_key = False
    second = {**CHECKOUT, "data": {**CHECKOUT["data"], "transaction_id": "T-2"}}  # type: ignore[dict-item]
    assert post(sandbox, "/events", second, signer=False, query=f"api_key={key}").status_code == 401  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "status", "code", "message"),
    [
        ({"customer": "c", "action": "cehckout", "data": {}}, 400, 203401, "Invalid action: cehckout"),
        ({"customer": "c", "data": {}}, 400, 0, "Property action cannot be empty"),
        ({"customer": "c", "action": "checkout", "data": {"total": 1}}, 400, 0,
         "Property transaction_id cannot be empty"),
        ({"customer": "c", "action": "checkout", "data": {"transaction_id": "X"}}, 400, 0,
         "Property total cannot be empty"),
        ({"action": "checkout", "data": {"transaction_id": "X", "total": 1}}, 400, 0,
         "Property customer cannot be empty"),
        ({"customer": "c", "guest": True, "action": "checkout", "data": {"transaction_id": "X", "total": 1}},
         400, 203409, "A guest event cannot have a customer"),
        ({"customer": "unknown-7", "action": "checkout", "data": {"transaction_id": "X", "total": 1}},
         404, 160212, "Customer not found"),
        ({"customer": "c", "action": "refund", "data": {"transaction_id": "NOPE"}}, 400, 112201,
         "Only accepted transactions can be refunded"),
    ],
    ids=["invalid-action", "no-action", "no-transaction-id", "no-total", "no-customer", "guest-customer",
         "unknown-customer", "refund-unknown"],
)
def test_event_validation(sandbox: SandboxServer, event: dict[str, Any], status: int, code: int,
                          message: str) -> None:
    response = post(sandbox, "/events", event)
    assert response.status_code == status
    assert _error(response)["code"] == code
    assert _error(response)["message"] == message


def test_duplicate_transaction_id_is_5003(sandbox: SandboxServer) -> None:
    assert post(sandbox, "/events", CHECKOUT).status_code == 200
    again = post(sandbox, "/events", CHECKOUT)
    assert again.status_code == 400
    assert _error(again) == {"type": "BadRequestException", "code": 5003,
                             "message": "The transaction ID has already been used"}
    assert sandbox.state.stats["duplicate_transaction_attempts"] == 1


def test_bulk_answers_per_event_in_order_and_refuses_guests(sandbox: SandboxServer) -> None:
    guest = {"guest": True, "action": "checkout", "data": {"transaction_id": "G", "total": 3}}
    events = [CHECKOUT, guest, CHECKOUT, {"customer": "c", "action": "nope", "data": {}}]
    response = post(sandbox, "/events/bulk", {"events": events})
    assert response.status_code == 200
    answer = response.json()
    assert answer["total"] == 4
    assert answer["errors"] == 3
    first, second, third, fourth = answer["results"]
    assert first["events"][0]["action"] == "checkout"
    assert second["error"]["code"] == 203409
    assert third["error"]["code"] == 5003
    assert fourth["error"]["code"] == 203401


def test_guest_alone_on_events_is_accepted(sandbox: SandboxServer) -> None:
    guest = {"guest": "true", "action": "checkout", "data": {"transaction_id": "G", "total": 3}}
    response = post(sandbox, "/events", guest)
    assert response.status_code == 200
    assert "id" not in response.json()


def test_form_encoded_body_is_accepted(sandbox: SandboxServer) -> None:
    body = (b"customer=cust-2&action=checkout&data[transaction_id]=F-1&data[total]=10.10"
            b"&data[items][0][product_id]=P1&data[items][0][quantity]=1&data[items][1][product_id]=P2")
    response = post(sandbox, "/events", body=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.text
    [tx] = sandbox.state.listing("antavo")
    assert tx["total"] == "10.10"
    assert [item["product_id"] for item in tx["items"]] == ["P1", "P2"]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"customer": "c", "action": ', "application/json", 400),
        (b"\xff\xfe not utf-8", "application/json", 400),
        (b"customer=c", "text/plain", 415),
        (b'{"events": "nope"}', "application/json", 400),
        (b'{"customer": "c", "customer": "d", "action": "checkout", "data": {"transaction_id": "D", '
         b'"total": 1}}', "application/json", 400),
        (b'{"customer": "c", "action": "checkout", "data": {"transaction_id": "D", "total": 1, '
         b'"total": 1000}}', "application/json", 400),
    ],
    ids=["malformed-json", "not-utf8", "wrong-content-type", "bulk-without-list", "duplicate-key",
         "duplicate-nested-key"],
)
def test_bad_input_gets_a_clean_4xx(sandbox: SandboxServer, body: bytes, content_type: str,
                                    status: int) -> None:
    path = "/events/bulk" if b"events" in body else "/events"
    response = post(sandbox, path, body=body, content_type=content_type)
    assert response.status_code == status
    assert "error" in response.json()
    assert sandbox.state.listing("antavo") == []  # nothing of it was taken


def test_oversized_body_is_413(sandbox: SandboxServer) -> None:
    sandbox.config.max_body_bytes = 1000
    response = post(sandbox, "/events", body=b'{"pad": "' + b"x" * 2000 + b'"}')
    assert response.status_code == 413
    assert "larger than 1000 bytes" in _error(response)["message"]


def test_rate_limit_answers_429_with_retry_after(sandbox: SandboxServer) -> None:
    sandbox.config.requests_per_minute = 2
    sandbox.config.retry_after_seconds = 7
    statuses = [post(sandbox, "/events", {**CHECKOUT, "data": {**CHECKOUT["data"],  # type: ignore[dict-item]
                                                                "transaction_id": f"T-{n}"}}).status_code
                for n in range(3)]
    assert statuses == [200, 200, 429]
    refused = post(sandbox, "/events", CHECKOUT)
    assert refused.headers["Retry-After"] == "7"
    assert _error(refused)["code"] == 429
    assert sandbox.state.stats["rate_limited"] == 2


def test_injected_faults_are_seeded_and_counted(sandbox: SandboxServer) -> None:
    sandbox.config.fault_rate = 1.0
    sandbox.config.fault_kinds = ("error_500",)
    assert post(sandbox, "/events", CHECKOUT).status_code == 500
    sandbox.config.fault_kinds = ("drop",)
    with pytest.raises(httpx.RemoteProtocolError):
        post(sandbox, "/events", CHECKOUT)
    assert sandbox.state.listing() == []
    sandbox.config.fault_kinds = ("lost_response",)
    with pytest.raises(httpx.RemoteProtocolError):
        post(sandbox, "/events", CHECKOUT)
    assert [tx["transaction_id"] for tx in sandbox.state.listing()] == ["T-1"]
    assert sandbox.state.lost_transaction_ids == {"T-1"}
    stats = HTTP.get(sandbox.url + "/_sandbox/stats").json()
    assert stats["faults_injected"] == 3
    assert stats["faults_by_kind"] == {"error_500": 1, "drop": 1, "lost_response": 1}


def test_reset_forgets_transactions_and_counters(sandbox: SandboxServer) -> None:
    post(sandbox, "/events", CHECKOUT)
    assert HTTP.post(sandbox.url + "/_sandbox/reset").json() == {"reset": True}
    assert HTTP.get(sandbox.url + "/_sandbox/transactions").json()["count"] == 0
    assert post(sandbox, "/events", CHECKOUT).status_code == 200


def test_config_endpoint_never_shows_the_secret(sandbox: SandboxServer) -> None:
    config = HTTP.get(sandbox.url + "/_sandbox/config").json()
    assert config["api_secret"] == "***"
    assert sandbox.config.api_secret not in json.dumps(config)


def test_state_file_keeps_accepted_transactions_across_restarts(tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox.json"
    with SandboxServer(state_file=state_file) as first:
        assert post(first, "/events", CHECKOUT).status_code == 200
    assert [key for _, key, _ in RecordStore(state_file).rows()] == ["T-1"]
    with SandboxServer(state_file=state_file) as second:
        again = post(second, "/events", CHECKOUT)
        assert again.status_code == 400
        assert _error(again)["code"] == 5003
        assert second.state.listing()[0]["total"] == "12.5"


OUT_OF_RANGE_DATES = ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
                      "Fri, 31 Dec 9999 23:59:59 -0100"]


@pytest.mark.parametrize("date", OUT_OF_RANGE_DATES)
def test_a_date_beyond_what_utc_can_hold_is_an_invalid_date(sandbox: SandboxServer, date: str) -> None:
    response = post(sandbox, "/events", CHECKOUT, tamper=_swap("Date", date))
    assert response.status_code == 401
    assert _error(response) == {"type": "UnauthorizedException", "code": 101021,
                                "message": "Invalid date in date header"}
    url = sandbox.url + "/customers/cust-1/transactions"
    headers = {**_signer(sandbox).sign("GET", url, b"").headers, "Date": date}
    read = HTTP.get(url, headers=headers)
    assert read.status_code == 401
    assert _error(read)["message"] == "Invalid date in date header"
    assert sandbox.state.listing() == []


def _checkout(tid: str, **data: Any) -> dict[str, Any]:
    return {"customer": "cust-1", "action": "checkout",
            "data": {"transaction_id": tid, "total": "12.50", "currency": "EUR", **data}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"items": [{"product_id": "P1", "quantity": "two"}]}, "Property items[0].quantity must be a number"),
        ({"items": [{"product_id": "P1", "quantity": 1}, 1]}, "Property items[1] must be an object"),
        ({"items": ["P1"]}, "Property items[0] must be an object"),
        ({"items": [{"product_id": "P1", "subtotal": {}}]}, "Property items[0].subtotal must be a number"),
        ({"items": [{"product_id": "P1", "price": "NaN"}]}, "Property items[0].price must be a number"),
        ({"items": [{"product_id": ["P1"], "quantity": 1}]}, "Property items[0].product_id must be a string"),
        ({"points_burned": "NaN"}, "Property points_burned must be a number"),
        ({"points_burned": "1e400"}, "Property points_burned is out of range"),
        ({"points_burned": {}}, "Property points_burned must be a number"),
        ({"points_burned": True}, "Property points_burned must be a number"),
        ({"total_quantity": "NaN"}, "Property total_quantity must be a number"),
        ({"total_quantity": "1e400"}, "Property total_quantity is out of range"),
        ({"total_quantity": {}}, "Property total_quantity must be a number"),
        ({"total_quantity": True}, "Property total_quantity must be a number"),
    ],
)
def test_checkout_fields_of_the_wrong_type_are_refused(sandbox: SandboxServer, data: dict[str, Any],
                                                      message: str) -> None:
    response = post(sandbox, "/events", _checkout("T-BAD", **data))
    assert response.status_code == 400
    assert _error(response) == {"type": "BadRequestException", "code": 0, "message": message}
    assert sandbox.state.listing() == []


def test_a_checkout_with_well_typed_items_is_refunded_item_by_item(sandbox: SandboxServer) -> None:
    items = [{"product_id": "P1", "quantity": "2", "subtotal": "12.50", "price": 6.25, "discount": None}]
    accepted = post(sandbox, "/events", _checkout("T-OK", items=items, points_burned=0, total_quantity=2))
    assert accepted.status_code == 200, accepted.text
    refund = {"customer": "cust-1", "action": "refund_item",
              "data": {"transaction_id": "T-OK", "product_id": "P1", "quantity": 1, "subtotal": "6.25"}}
    assert post(sandbox, "/events", refund).status_code == 200
    [stored] = sandbox.state.listing("antavo")
    assert stored["refunded"] == "6.25"


def test_refunded_money_adds_up_exactly(sandbox: SandboxServer) -> None:
    assert post(sandbox, "/events", _checkout("T-EXACT", total="100")).status_code == 200
    amounts = ["19.99999999999999999999", "1e-30", "1e-30", "1e-30"]
    for amount in amounts:
        refund = {"customer": "cust-1", "action": "partial_refund",
                  "data": {"transaction_id": "T-EXACT", "amount": amount}}
        response = post(sandbox, "/events", body=json.dumps(refund).replace(f'"{amount}"', amount).encode())
        assert response.status_code == 200, response.text
    [stored] = sandbox.state.listing("antavo")
    assert Decimal(stored["refunded"]) == Decimal("19.999999999999999999990000000003")
    rest = {"customer": "cust-1", "action": "partial_refund",
            "data": {"transaction_id": "T-EXACT", "amount": "80.000000000000000000009999999997"}}
    assert post(sandbox, "/events", rest).status_code == 200
    [stored] = sandbox.state.listing("antavo")
    assert stored["status"] == "refunded" and Decimal(stored["refunded"]) == 100


def test_a_held_request_waits_until_the_hold_is_released(sandbox: SandboxServer) -> None:
    # from the first accepted event on, requests are held until the test lets them go (a crash
    # test's kill must find them in flight however slow the machine is, then they land)
    assert post(sandbox, "/events", CHECKOUT).status_code == 200
    sandbox.config.hold_after, sandbox.config.hold_ms = ("events_accepted", 1), 600_000
    answers: list[int] = []
    second = {**CHECKOUT, "data": {**CHECKOUT["data"], "transaction_id": "T-2"}}
    sender = threading.Thread(target=lambda: answers.append(post(sandbox, "/events", second).status_code))
    sender.start()
    sender.join(timeout=1.0)
    assert sender.is_alive() and answers == []  # held
    sandbox.config.hold_after = None
    sender.join(timeout=60)  # released: it lands now, not after hold_ms
    assert not sender.is_alive() and answers == [200]


def test_a_held_request_whose_sender_hung_up_is_stored_when_released(sandbox: SandboxServer) -> None:
    # a platform that received a whole request processes it though the client is gone: a run
    # killed while its request is held leaves it to land a moment later (what a crash test's
    # next run must find, not send again)
    sandbox.config.hold_after, sandbox.config.hold_ms = ("requests", 0), 600_000
    url = sandbox.url + "/events"
    payload = json.dumps(CHECKOUT).encode()
    headers = _signer(sandbox).sign("POST", url, payload, {"Content-Type": "application/json"}).headers
    with pytest.raises(httpx.ReadTimeout):  # the sender gives up and hangs up
        httpx.post(url, content=payload, headers=headers, timeout=httpx.Timeout(10, read=0.5))
    assert sandbox.state.listing("antavo") == []  # held
    sandbox.config.hold_after = None
    deadline = time.monotonic() + 30
    while not sandbox.state.listing("antavo") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [t["transaction_id"] for t in sandbox.state.listing("antavo")] == ["T-1"]
