"""Hostile requests against a real `posfeed sandbox --port 0 --state FILE` process.

Hundreds of requests built by hand and by hypothesis (huge numbers, NaN, deep nesting, wrong
types, huge and truncated bodies, bad signatures, wrong content types, odd Unicode) go to the
Antavo and CRM.COM endpoints. Every answer must be a 4xx or 200 in the platform's own shape,
never a 5xx or a dropped connection; afterwards the sandbox must still accept a normal checkout
and purchase, list its transactions, and, killed with SIGKILL and started again on the same
state file, list exactly the same transactions and refuse them as duplicates.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.sandbox.antavo import KNOWN_ACTIONS
from pipeline.sandbox.crmcom import PREFIX
from pipeline.sinks.escher import EscherSigner, antavo_config

MAX_BODY = 1024 * 1024
ANTAVO_QUERY = "?api_key=sandbox-key"
ANTAVO_PATHS = ("/events", "/events/bulk")
CRM_PATHS = tuple(f"{PREFIX}/{method}" for method in (
    "authentication/token", "authentication/web_api_key/token", "customer_events/purchases/create",
    "customer_events/purchases/create_multiple", "customer_events/purchases/cancel",
    "customer_events/purchases/create_spend", "customer_events/purchases/list", "purchases/ad_hoc_return"))
CRM_LOGIN = {"username": "posfeed", "password": "sandbox-password", "organisation": "sandbox"}


class Raw(str):
    """JSON text put into a document as it is (a number no encoder would write)."""


def to_json(value: Any) -> str:
    """``value`` as JSON text, :class:`Raw` parts verbatim."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


@dataclass
class Sandbox:
    """A `posfeed sandbox` process and what was sent to it."""

    state_file: Path
    process: subprocess.Popen[str] | None = None
    url: str = ""
    sent: int = 0
    answers: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "sandbox", "--port", "0", "--state", str(self.state_file),
             "--max-body-bytes", str(MAX_BODY)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        first = self.process.stderr.readline()
        # keep reading what it logs, so a full pipe never stalls it
        threading.Thread(target=self.process.stderr.read, daemon=True).start()
        found = re.search(r"posfeed sandbox on (http://127\.0\.0\.1:(\d+)) ", first)
        assert found, f"no address in {first!r}"
        assert int(found.group(2)) != 0  # the port really bound, not the 0 that was asked for
        self.url = found.group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/_sandbox/stats", timeout=5).raise_for_status()
                return
            except httpx.TransportError:
                assert self.process.poll() is None and time.monotonic() < deadline, "sandbox did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "sandbox.state")
    box.start()
    try:
        yield box
    finally:
        if box.process is not None and box.process.poll() is None:
            box.process.terminate()
            box.process.communicate(timeout=30)


# ---- sending and judging --------------------------------------------------------------------------


def check_shape(path: str, status: int, body: bytes) -> None:
    """A 200 or 4xx answer in the shape of the platform ``path`` belongs to."""
    assert status < 500, f"{path} answered {status}: {body[:300]!r}"
    if path.startswith("/_sandbox/") and status == 200:
        return  # an inspection answer, not a platform's
    document = json.loads(body)
    if path.startswith(PREFIX):
        assert set(document) == {"status", "data"}, document
        assert isinstance(document["status"]["code"], str)
        assert status == 200 or document["status"]["code"] != "OK"
    elif status != 200:
        error = document["error"]
        assert isinstance(error["type"], str) and isinstance(error["code"], int)
        assert isinstance(error["message"], str)


def send(box: Sandbox, client: httpx.Client, path: str, body: bytes | str,
         content_type: str | None = "application/json", headers: dict[str, str] | None = None,
         query: str | None = None) -> httpx.Response:
    """POST one hostile request and judge its answer."""
    if query is None:
        query = ANTAVO_QUERY if not path.startswith(PREFIX) else ""
    sent_headers = dict(headers or {})
    if content_type is not None:
        sent_headers["Content-Type"] = content_type
    payload = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    response = client.post(box.url + path + query, content=payload, headers=sent_headers)
    box.sent += 1
    box.answers[response.status_code] = box.answers.get(response.status_code, 0) + 1
    check_shape(path, response.status_code, response.content)
    return response


def send_raw(box: Sandbox, request: bytes, *, half_close: bool = False) -> bytes:
    """Write raw bytes to the server; what it answers before closing (may be nothing)."""
    with socket.create_connection(box.address, timeout=30) as conn:
        try:
            conn.sendall(request)
            if half_close:
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and not half_close:
                    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                    if length and len(rest) >= int(length.group(1)):
                        break
        except OSError:
            pass
    box.sent += 1
    return b"".join(chunks)


def judge_raw(path: str, answer: bytes, allowed: set[int]) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status in allowed, answer[:300]
    check_shape(path, status, body)


def token(box: Sandbox, client: httpx.Client) -> str:
    answer = client.post(f"{box.url}{PREFIX}/authentication/token", json=CRM_LOGIN).json()
    value: str = answer["data"]["token"]
    return value


def purchase(reference: str, customer: str = "C-1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reference_number": reference,
        "performed_on": "2026-11-20T10:00:00",
        "accounts_receivable_identifier": {"number": customer},
        "performed_by_unit_identifier": {"name": "S1"},
        "products_set": [{"product_identifier": {"code": "P1"}, "quantity": 1, "net_amount": "10.00",
                          "vat_amount": "2.50", "total_amount": "12.50"}],
    }
    body.update(changes)
    return body


def checkout(tid: str, customer: Any = "cust-1", **data: Any) -> dict[str, Any]:
    return {"customer": customer, "action": "checkout",
            "data": {"transaction_id": tid, "total": "12.50", "currency": "EUR", **data}}


# ---- the hand-written cases -----------------------------------------------------------------------

HUGE = ["1e5000", "-1e5000", "1E+400", "0e99999", "9" * 5000, "1e-400",
        "123456789012345678901234567890123456789012"]
ODD_STRINGS = [
    '"\\ud800"', '"\\udfff"', '"a\\u0000b"', '"\\ud83d\\ude00"', '"\\u202etxt.exe"', '"\\ufeff"',
    '"' + "x" * 10_000 + '"', '"\\ud800\\ud800"',
]


def hand_written_antavo(box: Sandbox, client: httpx.Client) -> None:
    for number in [*HUGE, "NaN", "Infinity", "-Infinity"]:
        for path, body in [
            ("/events", to_json(checkout(f"H-{number[:8]}", total=Raw(number)))),
            ("/events", to_json(checkout(f"HS-{number[:8]}", total=number))),
            ("/events/bulk", to_json({"events": [checkout(f"HB-{number[:8]}", total=Raw(number))]})),
            ("/events", to_json(checkout(f"HE-{number[:8]}", effective_timestamp=Raw(number)))),
        ]:
            assert send(box, client, path, body).status_code == 400
    # the sequence: after a refused 1e5000 the same customer still checks out
    assert send(box, client, "/events", to_json(checkout("AFTER-HUGE"))).status_code == 200
    assert client.get(box.url + "/_sandbox/transactions").status_code == 200
    for seconds in ["253402400000", "-1e11", "-62135600000", '"soon"', "true"]:
        assert send(box, client, "/events",
                    to_json(checkout(f"TS-{seconds}", effective_timestamp=Raw(seconds)))).status_code == 400
    for depth in (33, 1000, 100_000):
        assert send(box, client, "/events", "[" * depth + "]" * depth).status_code == 400
        nested = to_json(checkout(f"D-{depth}", items=Raw("[" * depth + "]" * depth)))
        assert send(box, client, "/events", nested).status_code == 400
        form = "data" + "[a]" * depth + "=1"
        assert send(box, client, "/events", form, "application/x-www-form-urlencoded").status_code == 400
    wrong_types: list[dict[str, Any]] = [
        {"customer": "c", "action": ["checkout"], "data": {}},
        {"customer": "c", "action": {"a": 1}, "data": {}},
        checkout("W-1", customer={"id": "c"}),
        checkout("W-2", customer=["c"]),
        checkout("W-3", customer=True),
        {"customer": "c", "action": "checkout", "data": {"transaction_id": ["W-4"], "total": "1"}},
        {"customer": "c", "action": "checkout", "data": {"transaction_id": {"a": 1}, "total": "1"}},
        checkout("W-5", total=True),
        checkout("W-6", total=[1]),
        checkout("W-7", total={"amount": 1}),
        checkout("W-8", items="not a list"),
        {"customer": "c", "action": "checkout", "data": ["W-9"]},
        {"customer": "c", "action": "refund", "data": {"transaction_id": "AFTER-HUGE", "amount": "NaN"}},
        {"customer": "cust-1", "action": "partial_refund",
         "data": {"transaction_id": "AFTER-HUGE", "amount": "1e5000"}},
        {"customer": "cust-1", "action": "refund_item",
         "data": {"transaction_id": "AFTER-HUGE", "product_id": "P", "subtotal": [1]}},
    ]
    for event in wrong_types:
        assert 400 <= send(box, client, "/events", to_json(event)).status_code < 500
    for body in ['{"events": "x"}', '{"events": {"a": 1}}', "[]", '"events"', "null",
                 '{"events": [1, "a", null]}']:
        send(box, client, "/events/bulk", body)
    for text in ODD_STRINGS:
        for where in ("customer", "transaction_id"):
            event = checkout(f"U-{len(text)}-{where}")
            if where == "customer":
                event["customer"] = Raw(text)
            else:
                event["data"]["transaction_id"] = Raw(text)
            send(box, client, "/events", to_json(event))
    for body in [b"\xef\xbb\xbf{}", b"\xff\xfe{}", b"{\"customer\": \"\xc0\xaf\"}", b"\xed\xa0\x80", b"",
                 b'{"customer": "c", "action": "checkout"', b"{" * 10 + b"}", b"\x00" * 100,
                 b"customer=c&action=checkout&data[transaction_id]=F1&data[total]=1e5000"]:
        send(box, client, "/events", body)
    for form in ["customer=c&action=checkout&data[transaction_id]=F%00&data[total]=1",
                 "customer=c&action=checkout&data=1&data[total]=2", "data[items][\u00b2]=1",
                 "data[items][" + "9" * 5000 + "]=1", "customer=%ff%fe&action=checkout"]:
        send(box, client, "/events", form, "application/x-www-form-urlencoded")
    for content_type in [None, "text/plain", "multipart/form-data; boundary=x", "application/xml",
                         "application/jsonx", "\u00e9"]:
        body = to_json(checkout("CT-1"))
        if content_type == "\u00e9":
            raw = (f"POST /events{ANTAVO_QUERY} HTTP/1.1\r\nHost: x\r\nContent-Type: \xe9\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode("latin-1")
            judge_raw("/events", send_raw(box, raw), {415})
            continue
        assert send(box, client, "/events", body, content_type).status_code == 415
    # JSON is UTF-8 whatever the charset says
    latin = to_json(checkout("CT-2")).replace("cust-1", "cust-\u00e9").encode("latin-1")
    assert send(box, client, "/events", latin, "application/json; charset=latin-1").status_code == 400
    # bad signatures: unsigned without a key, a wrong key, garbage and tampered Authorization
    body = to_json(checkout("SIG-1"))
    signer = EscherSigner(antavo_config("demo"), "sandbox-key", "wrong-secret")
    json_type = {"Content-Type": "application/json"}
    signed = signer.sign("POST", box.url + "/events", body.encode(), json_type).headers
    for headers, query in [
        ({}, ""), ({}, "?api_key=nope"), ({}, "?api_key=sandbox-key&api_key=x"),
        ({"Authorization": "garbage"}, ""), ({"Authorization": "ANTAVO-HMAC-SHA256 " + "x" * 5000}, ""),
        ({"Authorization": "ANTAVO-HMAC-SHA256 Credential=a/b/c, SignedHeaders=, Signature=zz"}, ""),
        (dict(signed), ""), ({**signed, "X-Antavo-Date": "not a date"}, ""),
        ({**signed, "Date": "Thu, 01 Jan 1970 00:00:00 GMT"}, ""),
    ]:
        response = send(box, client, "/events", body, headers=headers, query=query)
        assert response.status_code == 401, response.text
    good = EscherSigner(antavo_config("demo"), "sandbox-key", "sandbox-secret")
    signed = good.sign("POST", box.url + "/events", body.encode(), json_type).headers
    assert send(box, client, "/events", body + " ", headers=dict(signed), query="").status_code == 401


def hand_written_crmcom(box: Sandbox, client: httpx.Client) -> None:
    live = token(box, client)
    create, bulk, cancel = (f"{PREFIX}/customer_events/purchases/{method}"
                            for method in ("create", "create_multiple", "cancel"))
    for number in [*HUGE, "NaN", "Infinity"]:
        product = {"product_identifier": {"code": "P1"}, "quantity": Raw(number), "net_amount": Raw(number),
                   "vat_amount": "0", "total_amount": Raw(number)}
        body = to_json({"token": live, **purchase(f"CH-{number[:6]}", products_set=[product])})
        assert send(box, client, create, body).status_code == 400
        product = {**product, "quantity": number, "net_amount": number, "total_amount": number}
        body = to_json({"token": live, **purchase(f"CS-{number[:6]}", products_set=[product])})
        answer = send(box, client, create, body)
        assert answer.json()["status"]["code"] == "INVALID_PARAMETERS"
    for depth in (33, 100_000):
        assert send(box, client, create, "[" * depth + "]" * depth).status_code == 400
        body = to_json({"token": live, **purchase("CD-1", products_set=Raw("[" * depth + "]" * depth))})
        assert send(box, client, create, body).status_code == 400
    wrong: list[dict[str, Any]] = [
        purchase({"a": 1}), purchase(["x"]), purchase(True), purchase("CW-1", products_set="abc"),
        purchase("CW-2", products_set=[1, 2]), purchase("CW-3", products_set={"a": 1}),
        purchase("CW-4", external_system_reference_number=["x"]),
        purchase("CW-5", external_system_reference_number={"a": 1}),
        purchase("CW-6", performed_on=["2026"]), purchase("CW-7", accounts_receivable_identifier="C"),
        purchase("CW-8", accounts_receivable_identifier={"number": {"deep": 1}}),
        purchase("CW-9", performed_by_unit_identifier={"name": ["S1"]}),
    ]
    for body in wrong:
        answer = send(box, client, create, to_json({"token": live, **body}))
        assert answer.json()["status"]["code"] == "INVALID_PARAMETERS", answer.text
    for body in [{"token": live, "purchase_customer_events_set": "x"},
                 {"token": live, "purchase_customer_events_set": [1, None, []]},
                 {"token": live, "purchase_customer_events_set": [{"request_unique_identifier": ["k"]}]},
                 {"token": live, "purchase_customer_events_set": [
                     {"request_unique_identifier": "k1", **purchase("CB-1", products_set=[7])}]}]:
        send(box, client, bulk, to_json(body))
    for identifier in [{"id": ["x"]}, {"number": {"a": 1}}, "PCE1", [], {"id": None}]:
        send(box, client, cancel, to_json({"token": live, "customer_event_identifier": identifier}))
    listing = f"{PREFIX}/customer_events/purchases/list"
    for odd in ["abc", {"a": 1}, [1], True, "1e400", -3, 10**30, 1.5, Raw("1e29")]:
        for name in ("number_of_results", "submitted_after_date", "submitted_before_date"):
            body = to_json({"token": live, "accounts_receivable_identifier": {"number": "C-1"}, name: odd})
            assert send(box, client, listing, body).status_code == 200
    for spend in ["abc", {"a": 1}, "0", "-5", "1e400", True]:
        body = to_json({"token": live, **purchase(f"CSP-{spend}"), "spend_amount": spend})
        answer = send(box, client, f"{PREFIX}/customer_events/purchases/create_spend", body)
        assert answer.json()["status"]["code"] == "INVALID_PARAMETERS", answer.text
    for text in ODD_STRINGS:
        send(box, client, create, to_json({"token": live, **purchase(Raw(text))}))
        send(box, client, f"{PREFIX}/authentication/token", to_json({**CRM_LOGIN, "username": Raw(text)}))
    for token_value in [None, 1, [], {"a": 1}, "x" * 10_000, Raw('"\\ud800"')]:
        body = to_json({"token": token_value, **purchase("CT-1")})
        assert send(box, client, create, body).json()["status"]["code"] != "OK"
    for body in [b"", b"[]", b"null", b"\xef\xbb\xbf{}", b'{"token": ', b"\xff", b'"x"', b"NaN"]:
        send(box, client, create, body)
    for content_type in [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]:
        response = send(box, client, create, to_json({"token": live, **purchase("CC-1")}), content_type)
        assert response.status_code == 415
    for authorization in ["Basic !!!", "Basic " + "A" * 5000, "Bearer x", "Basic Og==", "Basic " + "w6k6"]:
        send(box, client, f"{PREFIX}/authentication/web_api_key/token", b"", None,
             headers={"Authorization": authorization})


def huge_and_truncated(box: Sandbox) -> None:
    """Bodies that pass the limit (declared or streamed) and bodies that never arrive in full."""
    for path in ("/events" + ANTAVO_QUERY, f"{PREFIX}/customer_events/purchases/create",
                 "/_sandbox/stats", "/no/such/path"):
        plain = path.split("?")[0]
        # 300 MiB declared, nothing sent: refused at once, without waiting for the body
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {300 * 1024 * 1024}\r\n\r\n").encode()
        judge_raw(plain, send_raw(box, head + b'{"a":'), {413})
        # more than the limit in chunks, with no length declared
        chunk = b"[" + b"1," * 8000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(80))
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
               "Transfer-Encoding: chunked\r\n\r\n"
        answer = send_raw(box, head.encode() + chunked + b"0\r\n\r\n")
        if plain in ("/events", f"{PREFIX}/customer_events/purchases/create"):
            judge_raw(plain, answer, {413})
        # a body cut short: the client says 500 bytes, sends 20 and stops writing
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 500\r\n\r\n").encode()
        answer = send_raw(box, head + b'{"customer": "c", "a', half_close=True)
        if answer:
            judge_raw(plain, answer, {400, 404, 405})


# ---- hypothesis ---------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=-(10**60), max_value=10**60).map(lambda n: Raw(str(n))),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: Raw(str(d).replace("E+", "e"))),
    st.floats().map(lambda f: Raw(json.dumps(f))),  # NaN, Infinity and -Infinity included
    st.sampled_from(HUGE).map(Raw),
    st.text(alphabet="0123456789eE+-.", min_size=1, max_size=12),  # numbers as strings, most broken
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20),
                    st.sampled_from(ODD_STRINGS).map(Raw))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=12)
IDS = st.one_of(st.text(min_size=1, max_size=12), st.integers(), VALUES)
EVENTS = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(sorted(KNOWN_ACTIONS)), VALUES)},
    optional={
        "customer": IDS, "guest": VALUES, "account": VALUES,
        "data": st.one_of(VALUES, st.fixed_dictionaries({}, optional={
            "transaction_id": IDS, "total": NUMBERS, "amount": NUMBERS, "subtotal": NUMBERS,
            "product_id": IDS, "items": VALUES, "effective_timestamp": NUMBERS, "currency": VALUES,
        })),
    })
PRODUCTS = st.fixed_dictionaries({}, optional={
    "product_identifier": VALUES, "quantity": NUMBERS, "net_amount": NUMBERS,
    "vat_amount": NUMBERS, "total_amount": NUMBERS})
PURCHASES = st.fixed_dictionaries({}, optional={
    "reference_number": IDS, "external_system_reference_number": IDS,
    "performed_on": st.one_of(st.just("2026-11-20T10:00:00"), VALUES),
    "accounts_receivable_identifier": st.one_of(st.builds(lambda c: {"number": c}, IDS), VALUES),
    "performed_by_unit_identifier": st.one_of(st.just({"name": "S1"}), VALUES),
    "products_set": st.one_of(st.lists(PRODUCTS, max_size=3), VALUES),
})
CONTENT_TYPES = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain",
                                 "application/json; charset=utf-16", "", "*/*"])


def run_hypothesis(box: Sandbox, client: httpx.Client, live_token: str, examples: int) -> None:
    fuzz = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

    @fuzz
    @given(event=EVENTS, bulk=st.booleans())
    def antavo_events(event: dict[str, Any], bulk: bool) -> None:
        body = to_json({"events": [event, event]}) if bulk else to_json(event)
        send(box, client, "/events/bulk" if bulk else "/events", body)

    @fuzz
    @given(body=PURCHASES, with_token=st.booleans(),
           route=st.sampled_from(["create", "create_multiple", "cancel", "create_spend", "list",
                                  "ad_hoc_return"]),
           extra=VALUES)
    def crmcom_purchases(body: dict[str, Any], with_token: bool, route: str, extra: Any) -> None:
        document: dict[str, Any] = {"token": live_token} if with_token else {}
        if route == "create_multiple":
            document["purchase_customer_events_set"] = [{"request_unique_identifier": "k", **body}]
        elif route == "cancel":
            document["customer_event_identifier"] = body.get("accounts_receivable_identifier")
        elif route == "list":
            document.update({"accounts_receivable_identifier": body.get("accounts_receivable_identifier"),
                             "submitted_after_date": body.get("performed_on"),
                             "submitted_before_date": extra, "number_of_results": extra})
        else:
            document.update(body)
            if route == "create_spend":
                document["spend_amount"] = extra
        path = "purchases/ad_hoc_return" if route == "ad_hoc_return" else f"customer_events/purchases/{route}"
        send(box, client, f"{PREFIX}/{path}", to_json(document))

    @fuzz
    @given(identifier=st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
        ["id", "number", "external_system_reference_number", "other", ""]), st.text(max_size=20))),
        with_token=st.booleans())
    def crmcom_show(identifier: str, with_token: bool) -> None:
        params = {"customer_event_identifier": identifier, **({"token": live_token} if with_token else {})}
        response = client.get(f"{box.url}{PREFIX}/customer_events/purchases/show", params=params)
        box.sent += 1
        check_shape(f"{PREFIX}/customer_events/purchases/show", response.status_code, response.content)
        assert set(response.json()) == {"status", "data"}

    @fuzz
    @given(body=st.one_of(st.binary(max_size=200), VALUES.map(to_json).map(str.encode)),
           path=st.sampled_from([*ANTAVO_PATHS, *CRM_PATHS]), content_type=CONTENT_TYPES)
    def raw_bodies(body: bytes, path: str, content_type: str) -> None:
        send(box, client, path, body, content_type or None)

    @fuzz
    @given(fields=st.lists(st.tuples(st.text(alphabet="ab[]0129_", max_size=30), st.text(max_size=10)),
                           max_size=6))
    def antavo_forms(fields: list[tuple[str, str]]) -> None:
        body = "&".join(f"{httpx.QueryParams({'k': k})}"[2:] + "=" + f"{httpx.QueryParams({'v': v})}"[2:]
                        for k, v in fields)
        send(box, client, "/events", body, "application/x-www-form-urlencoded")

    printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
    body = to_json(checkout("SIG-FUZZ"))
    signer = EscherSigner(antavo_config("demo"), "sandbox-key", "sandbox-secret")

    @fuzz
    @given(authorization=st.one_of(printable, printable.map(lambda t: "ANTAVO-HMAC-SHA256 " + t),
                                   printable.map(lambda t: "ANTAVO-HMAC-SHA256 Credential=" + t)),
           date=st.one_of(st.none(), printable, st.sampled_from(["20261120T000000Z", "99999999T999999Z"])),
           keep_signature=st.booleans())
    def antavo_signatures(authorization: str, date: str | None, keep_signature: bool) -> None:
        headers = dict(signer.sign("POST", box.url + "/events", body.encode(),
                                   {"Content-Type": "application/json"}).headers)
        if not keep_signature:
            headers["Authorization"] = authorization.strip()  # HTTP trims a header's edges
        if date is not None:
            headers["Date"] = date.strip()
        answer = send(box, client, "/events", body, headers=headers, query="")
        assert answer.status_code in (200, 400, 401)  # 400: the first, untampered one is a duplicate

    for test in (antavo_events, crmcom_purchases, crmcom_show, raw_bodies, antavo_forms, antavo_signatures):
        test()


# ---- the test ------------------------------------------------------------------------------------------


def test_hostile_requests_never_break_the_sandbox(sandbox: Sandbox) -> None:
    with httpx.Client(timeout=30, trust_env=False) as client:
        hand_written_antavo(sandbox, client)
        hand_written_crmcom(sandbox, client)
        huge_and_truncated(sandbox)
        run_hypothesis(sandbox, client, token(sandbox, client), examples=60)
        assert sandbox.sent >= 200, sandbox.sent

        # still the platform it stands for: a normal checkout and purchase, the listing, stats
        body = to_json(checkout("NORMAL-1"))
        signer = EscherSigner(antavo_config("demo"), "sandbox-key", "sandbox-secret")
        signed = signer.sign("POST", sandbox.url + "/events", body.encode(),
                             {"Content-Type": "application/json"}).headers
        accepted = client.post(sandbox.url + "/events", content=body, headers=signed)
        assert accepted.status_code == 200 and accepted.json()["events"][0]["points"] == 12
        live = token(sandbox, client)
        created = client.post(f"{sandbox.url}{PREFIX}/customer_events/purchases/create",
                              json={"token": live, **purchase("NORMAL-P1")}).json()
        assert created["status"]["code"] == "OK"
        spent = client.post(f"{sandbox.url}{PREFIX}/customer_events/purchases/create_spend",
                            json={"token": live, **purchase("NORMAL-S1"), "spend_amount": "5.00"}).json()
        assert spent["status"]["code"] == "OK"
        returned = client.post(f"{sandbox.url}{PREFIX}/purchases/ad_hoc_return",
                               json={"token": live, **purchase("NORMAL-R1")}).json()
        assert returned["status"]["code"] == "OK"
        listing = client.get(sandbox.url + "/_sandbox/transactions")
        assert listing.status_code == 200
        before = listing.json()
        ids = {(t["platform"], t["transaction_id"]) for t in before["transactions"]}
        assert {("antavo", "NORMAL-1"), ("antavo", "AFTER-HUGE"), ("crmcom", "NORMAL-P1"),
                ("crmcom", "NORMAL-S1"), ("crmcom_ad_hoc_returns", "NORMAL-R1")} <= ids
        assert client.get(sandbox.url + "/_sandbox/stats").status_code == 200

    sandbox.kill()  # no shutdown, no flush: what was accepted must already be in the file
    sandbox.start()
    with httpx.Client(timeout=30, trust_env=False) as client:
        assert client.get(sandbox.url + "/_sandbox/transactions").json() == before
        again = client.post(sandbox.url + "/events" + ANTAVO_QUERY, content=to_json(checkout("NORMAL-1")),
                            headers={"Content-Type": "application/json"})
        assert again.status_code == 400 and again.json()["error"]["code"] == 5003
        duplicate = client.post(f"{sandbox.url}{PREFIX}/customer_events/purchases/create",
                                json={"token": token(sandbox, client), **purchase("NORMAL-P1")}).json()
        assert duplicate["status"]["code"] == "DUPLICATE_REFERENCE_NUMBER"
        live = token(sandbox, client)
        again_returned = client.post(f"{sandbox.url}{PREFIX}/purchases/ad_hoc_return",
                                     json={"token": live, **purchase("NORMAL-R1")}).json()
        assert again_returned["status"]["code"] == "DUPLICATE_REFERENCE_NUMBER"
        shown = client.get(f"{sandbox.url}{PREFIX}/customer_events/purchases/show",
                           params={"token": live,
                                   "customer_event_identifier": f"number={created['data']['number']}"})
        assert shown.json()["data"]["reference_number"] == "NORMAL-P1"
