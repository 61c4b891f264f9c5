"""Hostile edges of the sandbox over real HTTP: a busy state file, profile field types, ambiguous
queries, requests no parser reads under CRM.COM's paths, and odd bodies and methods."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest

from pipeline.sandbox.crmcom import PREFIX
from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.store import RecordStore
from tests.sandbox.test_sandbox_hostile import _answer_to

EVENTS = "/events?api_key=sandbox-key"
BULK = "/events/bulk?api_key=sandbox-key"
CHECKOUT = {"customer": "c", "action": "checkout", "data": {"transaction_id": "T-1", "total": "1"}}


# ---- a busy state file ---------------------------------------------------------------------------


def test_a_busy_state_file_answers_try_again_at_once_and_keeps_nothing(tmp_path: Path) -> None:
    # before: SQLite's 5 s busy timeout, spent inside the event loop: every client waited for it
    path = tmp_path / "s.db"
    with SandboxServer(state_file=path) as sandbox, httpx.Client(base_url=sandbox.url, timeout=60) as client:
        store = sandbox.state.store
        assert store is not None and store.busy_timeout_ms() == sandbox.config.state_busy_timeout_ms == 0
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")  # another process is writing the file
            refused = client.post(EVENTS, json=CHECKOUT)
            crm = client.post(f"{PREFIX}/authentication/token", json={})  # needs nothing stored
            assert client.get("/_sandbox/stats").status_code == 200  # reads need no file
            reset = client.post("/_sandbox/reset")
            other.execute("ROLLBACK")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "ServerException"
        assert crm.json()["status"]["code"] != "OK"  # refused for its credentials, not held
        assert reset.status_code == 503 and reset.headers["retry-after"] == "1"
        assert sandbox.state.get_transaction("antavo", "T-1") is None
        assert client.post(EVENTS, json=CHECKOUT).status_code == 200


def _pages_in_the_database_file(path: Path) -> int:
    """The page count of the database file itself, as its header says (the WAL's pages are not
    in it until a checkpoint copies them there)."""
    with path.open("rb") as file:
        return int.from_bytes(file.read(32)[28:32], "big")


def test_the_state_file_is_checkpointed_beside_the_event_loop(tmp_path: Path) -> None:
    # before: every 1000 pages, the change that passed them copied the WAL into the file and
    # synced it to disk in the event loop (a slow disk held every client that long)
    path = tmp_path / "s.db"
    with SandboxServer(state_file=path) as sandbox, httpx.Client(base_url=sandbox.url, timeout=60) as client:
        store = sandbox.state.store
        assert store is not None and store.autocheckpoint_pages() == 0  # never by a change itself
        before = _pages_in_the_database_file(path)
        padding = "x" * 2000
        for number in range(store.checkpoint_every + 1):
            checkout = {**CHECKOUT, "data": {"transaction_id": f"T-{number}", "total": "1", "store": padding}}
            assert client.post(EVENTS, json=checkout).status_code == 200
        while _pages_in_the_database_file(path) <= before:  # copied by the checkpointing thread
            time.sleep(0.01)
    assert len(list(RecordStore(path).rows())) == store.checkpoint_every + 1


def test_a_reset_the_file_refuses_forgets_nothing(tmp_path: Path) -> None:
    # before: the records were forgotten in memory, kept in the file: the two disagreed
    path = tmp_path / "s.db"
    with SandboxServer(state_file=path) as sandbox, httpx.Client(base_url=sandbox.url, timeout=60) as client:
        assert client.post(EVENTS, json=CHECKOUT).status_code == 200
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")
            assert client.post("/_sandbox/reset").status_code == 503
            other.execute("ROLLBACK")
        assert [t["transaction_id"] for t in client.get("/_sandbox/transactions").json()["transactions"]] \
            == ["T-1"]


def test_a_busy_state_file_under_crmcom_answers_crmcom_s_try_again(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SandboxServer(state_file=path) as sandbox, httpx.Client(base_url=sandbox.url, timeout=60) as client:
        platform = sandbox.state.platforms["crmcom"]
        token = client.post(f"{PREFIX}/authentication/token",
                            json={"username": platform.config.username, "password": platform.config.password,
                                  "organisation": platform.config.organisation}).json()["data"]["token"]
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")
            refused = client.post(f"{PREFIX}/customer_events/purchases/create", json={
                "token": token, "accounts_receivable_identifier": {"number": "C1"},
                "performed_by_business_unit_identifier": {"code": "S1"},
                "performed_on": "2026-11-20T09:30:00Z", "reference_number": "R1",
                "external_system_reference_number": "R1",
                "products_set": [{"product_identifier": {"code": "P1"}, "quantity": 1, "net_amount": 1,
                                  "vat_amount": 0, "total_amount": 1}]})
            other.execute("ROLLBACK")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["status"]["code"] == "INTERNAL_ERROR"


# ---- profile fields --------------------------------------------------------------------------------


def _opt_in(customer: str, **data: Any) -> dict[str, Any]:
    return {"customer": customer, "action": "opt_in", "data": data}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("first_name", 12, "Property first_name must be a string"),
    ("email", {"a": "b"}, "Property email must be a string"),
    ("last_name", ["x"], "Property last_name must be a string"),
    ("language", True, "Property language must be a string"),
    ("loyalty_tier", 1.5, "Property loyalty_tier must be a string"),
    ("consent_email", "maybe", "Property consent_email must be true or false"),
    ("consent_sms", 2, "Property consent_sms must be true or false"),
])
def test_a_profile_field_of_the_wrong_type_is_refused(sandbox: SandboxServer, field: str, value: Any,
                                                      message: str) -> None:
    # before: stored as it came (a number, an object, a list as a member's name)
    answer = httpx.post(sandbox.url + EVENTS, json=_opt_in("m1", **{field: value}), timeout=60)
    assert answer.status_code == 400
    assert answer.json() == {"error": {"type": "BadRequestException", "code": 0, "message": message}}
    assert httpx.get(sandbox.url + "/_sandbox/customers", timeout=60).json()["count"] == 0
    # a profile update of a member is checked the same way
    signed_up = httpx.post(sandbox.url + EVENTS, json=_opt_in("m1", first_name="Ann"), timeout=60)
    assert signed_up.status_code == 200
    update = httpx.post(sandbox.url + EVENTS, json={**_opt_in("m1", **{field: value}), "action": "profile"},
                        timeout=60)
    assert update.status_code == 400 and update.json()["error"]["message"] == message
    customer = httpx.get(sandbox.url + "/_sandbox/customers", timeout=60).json()["customers"][0]
    assert customer["first_name"] == "Ann"
    assert field == "first_name" or field not in customer


def test_profile_fields_of_the_right_types_are_kept(sandbox: SandboxServer) -> None:
    answer = httpx.post(sandbox.url + EVENTS, json=_opt_in("m1", first_name="Ann", consent_email=True,
                                                           consent_sms=False, birth_date=None), timeout=60)
    assert answer.status_code == 200
    form = httpx.post(sandbox.url + EVENTS, content=b"customer=m2&action=opt_in&data[consent_sms]=true",
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=60)
    assert form.status_code == 200
    listing = httpx.get(sandbox.url + "/_sandbox/customers", timeout=60).json()["customers"]
    customers = {c["id"]: c for c in listing}
    assert customers["m1"]["consent_email"] is True and customers["m1"]["consent_sms"] is False
    assert customers["m2"]["consent_sms"] is True


def test_the_type_error_code_and_the_flag_fields_are_settings(sandbox: SandboxServer) -> None:
    sandbox.config.profile_type_error_code = 113402
    sandbox.config.profile_flag_fields = ("newsletter",)
    accepted = httpx.post(sandbox.url + EVENTS, json=_opt_in("m1", newsletter=True), timeout=60)
    assert accepted.status_code == 200
    refused = httpx.post(sandbox.url + EVENTS, json=_opt_in("m2", consent_email=True), timeout=60)
    assert refused.json()["error"]["code"] == 113402


def test_a_bulk_refuses_only_the_event_of_the_wrong_type(sandbox: SandboxServer) -> None:
    answer = httpx.post(sandbox.url + BULK, json={"events": [_opt_in("m1", first_name=7),
                                                             _opt_in("m2", first_name="Bo")]}, timeout=60)
    results = answer.json()["results"]
    assert answer.json()["errors"] == 1 and "error" in results[0] and "events" in results[1]


# ---- ambiguous queries -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/_sandbox/transactions?platform=antavo&platform=crmcom",
    "/customers/c/transactions?api_key=sandbox-key&id=T-1&id=T-2",
])
def test_a_parameter_given_twice_is_refused(sandbox: SandboxServer, path: str) -> None:
    # before: the last one won silently
    answer = httpx.get(sandbox.url + path, timeout=60)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "BadRequestException" and error["code"] == 0 and "twice" in error["message"]


def test_a_crmcom_query_parameter_given_twice_is_refused(sandbox: SandboxServer) -> None:
    answer = httpx.get(f"{sandbox.url}{PREFIX}/customer_events/purchases/show?token=a&token=b", timeout=60)
    assert answer.status_code == 400
    document = answer.json()
    assert document["data"] is None and document["status"]["code"] == "INVALID_PARAMETERS"
    assert "twice" in document["status"]["message"]
    both = httpx.request("GET", f"{sandbox.url}{PREFIX}/customer_events/purchases/show?token=a",
                         json={"token": "b"}, timeout=60)
    assert both.status_code == 400 and both.json()["status"]["code"] == "INVALID_PARAMETERS"


# ---- requests no parser reads ----------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    f"POST {PREFIX}/customer_events/purchases/create HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    "Content-Length: 5\r\n\r\n{}".encode(),
    f"POST {PREFIX}/customer_events/purchases/create HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".encode(),
])
def test_a_crmcom_request_no_parser_reads_gets_crmcom_s_400(sandbox: SandboxServer,
                                                           request_bytes: bytes) -> None:
    # before: Antavo's {"error": ...} under CRM.COM's paths
    with socket.create_connection((sandbox.host, sandbox.port), timeout=60) as conn:
        conn.sendall(request_bytes)
        answer = _answer_to(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    document = json.loads(body)
    assert document["data"] is None and document["status"]["code"] == "INVALID_PARAMETERS"
    assert document["status"]["message"]


def test_a_crmcom_request_whose_headers_never_finish_gets_crmcom_s_408() -> None:
    with SandboxServer(header_timeout_seconds=0.3) as sandbox, \
            socket.create_connection((sandbox.host, sandbox.port), timeout=60) as slow:
        slow.sendall(f"POST {PREFIX}/customer_events/purchases/create HTTP/1.1\r\nHost: x\r\nCont".encode())
        answer = _answer_to(slow)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(body)["status"]["code"] == "REQUEST_TIMEOUT"


# ---- values no platform takes --------------------------------------------------------------------


def _crm_token(sandbox: SandboxServer) -> str:
    platform = sandbox.state.platforms["crmcom"]
    answer = httpx.post(f"{sandbox.url}{PREFIX}/authentication/token", timeout=60, json={
        "username": platform.config.username, "password": platform.config.password,
        "organisation": platform.config.organisation})
    token: str = answer.json()["data"]["token"]
    return token


@pytest.mark.parametrize("total", [" 1 ", "1_000", "\u0661\u0662", "1.", "+ 1", "0x10", "1e", "\u00bd"])
def test_an_amount_string_that_is_no_plain_number_is_refused(sandbox: SandboxServer, total: str) -> None:
    # before: Python's Decimal took "1_000" as 1000 and Arabic-Indic digits as 12, and they were stored
    checkout = {"customer": "c", "action": "checkout", "data": {"transaction_id": "T-1", "total": total}}
    answer = httpx.post(sandbox.url + EVENTS, json=checkout, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "Property total must be a number"
    assert sandbox.state.get_transaction("antavo", "T-1") is None


@pytest.mark.parametrize("amount", ["1_0", " 10", "\u0661\u0660"])
def test_a_crmcom_amount_string_that_is_no_plain_number_is_refused(sandbox: SandboxServer,
                                                                   amount: str) -> None:
    token = _crm_token(sandbox)
    answer = httpx.post(f"{sandbox.url}{PREFIX}/customer_events/purchases/create", timeout=60, json={
        "token": token, "accounts_receivable_identifier": {"number": "C1"},
        "performed_by_business_unit_identifier": {"code": "S1"}, "performed_on": "2026-11-20T09:30:00Z",
        "reference_number": "R1", "products_set": [{"product_identifier": {"code": "P1"}, "quantity": 1,
                                                    "net_amount": amount, "vat_amount": 0,
                                                    "total_amount": amount}]})
    assert answer.json()["status"]["code"] == "INVALID_PARAMETERS"
    assert sandbox.state.listing("crmcom") == []


def test_checkout_text_fields_and_refunded_products_must_be_strings(sandbox: SandboxServer) -> None:
    # before: stored as they came ({"currency": {"a": [1]}}, a refund of product [1])
    for field in ("currency", "store"):
        bad = {"customer": "c", "action": "checkout",
               "data": {"transaction_id": "T-0", "total": "1", field: {"a": [1]}}}
        answer = httpx.post(sandbox.url + EVENTS, json=bad, timeout=60)
        assert answer.status_code == 400
        assert answer.json()["error"]["message"] == f"Property {field} must be a string"
    assert httpx.post(sandbox.url + EVENTS, json=CHECKOUT, timeout=60).status_code == 200
    refund = {"customer": "c", "action": "refund_item",
              "data": {"transaction_id": "T-1", "product_id": [1], "subtotal": "1"}}
    answer = httpx.post(sandbox.url + EVENTS, json=refund, timeout=60)
    assert answer.status_code == 400 and "product_id" in answer.json()["error"]["message"]
    assert sandbox.state.get_transaction("antavo", "T-1")["refunds"] == []


@pytest.mark.parametrize(("body", "message"), [
    (b"customer=c%ff&action=checkout&data[transaction_id]=F-1&data[total]=1", "not UTF-8"),
    (b"customer=c&customer=d&action=checkout&data[transaction_id]=F-1&data[total]=1", "twice"),
    (b"customer=c&action=checkout&data[transaction_id]=F-1&data[total]=1&data[total]=1000", "twice"),
])
def test_a_form_field_that_is_no_text_or_given_twice_is_refused(sandbox: SandboxServer, body: bytes,
                                                                 message: str) -> None:
    # before: "c\ufffd" stored as the customer; the last of two fields won silently
    answer = httpx.post(sandbox.url + EVENTS, content=body, timeout=60,
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 400 and message in answer.json()["error"]["message"]
    assert sandbox.state.get_transaction("antavo", "F-1") is None


def test_a_crmcom_product_identifier_must_name_one_key(sandbox: SandboxServer) -> None:
    token = _crm_token(sandbox)
    answer = httpx.post(f"{sandbox.url}{PREFIX}/customer_events/purchases/create", timeout=60, json={
        "token": token, "accounts_receivable_identifier": {"number": "C1"},
        "performed_by_business_unit_identifier": {"code": "S1"}, "performed_on": "2026-11-20T09:30:00Z",
        "reference_number": "R1", "products_set": [{"product_identifier": {"code": [{"x": 1}], "y": 2},
                                                    "quantity": 1, "net_amount": 1, "vat_amount": 0,
                                                    "total_amount": 1}]})
    assert answer.json()["status"]["code"] == "INVALID_PARAMETERS"
    assert sandbox.state.listing("crmcom") == []


@pytest.mark.parametrize("path", [EVENTS, f"{PREFIX}/authentication/token"])
def test_a_request_with_a_length_and_chunks_is_refused_and_its_connection_closed(sandbox: SandboxServer,
                                                                                  path: str) -> None:
    # before: processed by its chunks with the connection kept open (what a proxy in front reads
    # by the length would take as the next request: request smuggling)
    body = json.dumps(CHECKOUT).encode()
    with socket.create_connection((sandbox.host, sandbox.port), timeout=60) as conn:
        conn.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                     % (path.encode(), len(body), body))
        answer = _answer_to(conn)
        assert conn.recv(1) == b""  # closed by the sandbox
    head, _, data = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"connection: close" in head.lower()
    document = json.loads(data)
    assert (document["status"]["code"] == "INVALID_PARAMETERS" if path.startswith(PREFIX)
            else document["error"] == {"type": "BadRequestException", "code": 0, "message": ANY})
    assert sandbox.state.listing() == [] and sandbox.state.stats["requests"] == 0
