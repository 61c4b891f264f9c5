"""The emulated CRM.COM over real HTTP: tokens, envelope, purchases, bulk, cancel, inspection."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from pipeline.sandbox.crmcom import PLATFORM, PREFIX, CrmcomPlatform
from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import SandboxConfig, SandboxState


class Clock:
    """A settable UTC clock for the sandbox."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def crm(clock: Clock) -> Iterator[SandboxServer]:
    with SandboxServer(SandboxState(SandboxConfig(), clock=clock)) as server:
        yield server


def platform_of(server: SandboxServer) -> CrmcomPlatform:
    platform: CrmcomPlatform = server.state.platforms[PLATFORM]
    return platform


def call(server: SandboxServer, method: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{PREFIX}/{method}", json=body or {}, **kw)


def token_of(server: SandboxServer) -> str:
    cfg = platform_of(server).config
    answer = call(
        server,
        "authentication/token",
        {"username": cfg.username, "password": cfg.password, "organisation": cfg.organisation},
    ).json()
    assert answer["status"]["code"] == "OK"
    token: str = answer["data"]["token"]
    return token


def purchase(reference: str, customer: str = "C1", **extra: Any) -> dict[str, Any]:
    return {
        "accounts_receivable_identifier": {"number": customer},
        "performed_by_business_unit_identifier": {"code": "S1"},
        "performed_on": "2026-11-20T09:30:00Z",
        "reference_number": reference,
        "external_system_reference_number": reference,
        "products_set": [
            {
                "product_identifier": {"code": "P1"},
                "quantity": 2,
                "net_amount": 10.00,
                "vat_amount": 2.50,
                "total_amount": 12.50,
            }
        ],
        **extra,
    }


def test_token_by_credentials_and_by_web_api_key(crm: SandboxServer) -> None:
    assert token_of(crm).startswith("crm.")
    refused = call(
        crm, "authentication/token", {"username": "x", "password": "y", "organisation": "z"}
    ).json()
    assert refused["status"]["code"] == "AUTHENTICATION_FAILED"
    key = platform_of(crm).config.web_api_key
    basic = base64.b64encode(f"{key}:".encode()).decode()
    by_key = call(crm, "authentication/web_api_key/token", headers={"Authorization": f"Basic {basic}"}).json()
    assert by_key["status"] == {"code": "OK", "message": "", "description": ""}
    wrong = base64.b64encode(b"nope:").decode()
    assert (
        call(crm, "authentication/web_api_key/token", headers={"Authorization": f"Basic {wrong}"}).json()[
            "status"
        ]["code"]
        == "AUTHENTICATION_FAILED"
    )
    assert crm.state.stats["auth_failures"] == 2


def test_tokens_expire_after_their_lifetime(crm: SandboxServer, clock: Clock) -> None:
    platform_of(crm).config.token_ttl_seconds = 60
    token = token_of(crm)
    assert (
        call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")}).json()["status"][
            "code"
        ]
        == "OK"
    )
    clock.now += timedelta(seconds=61)
    expired = call(crm, "customer_events/purchases/create", {"token": token, **purchase("T2")}).json()
    assert expired["status"]["code"] == "TOKEN_EXPIRED"
    invalid = call(crm, "customer_events/purchases/create", {"token": "made-up", **purchase("T2")}).json()
    assert invalid["status"]["code"] == "INVALID_TOKEN"


def test_purchase_create_duplicate_and_unknown_customer(crm: SandboxServer) -> None:
    token = token_of(crm)
    created = call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")}).json()
    assert created["status"]["code"] == "OK"
    data = created["data"]
    assert data["life_cycle_state"] == "POSTED" and data["reference_number"] == "T1"
    assert Decimal(str(data["total_amount"])) == Decimal("12.50")
    again = call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")}).json()
    assert again["status"]["code"] == "DUPLICATE_REFERENCE_NUMBER"
    assert again["data"]["id"] == data["id"]
    unknown = call(
        crm, "customer_events/purchases/create", {"token": token, **purchase("T2", "unknown-9")}
    ).json()
    assert unknown["status"]["code"] == "CUSTOMER_NOT_FOUND"
    stats = httpx.get(f"{crm.url}/_sandbox/stats").json()
    assert stats["events_accepted"] == 1
    assert stats["duplicate_transaction_attempts"] == 1
    assert stats["transactions"] == {"crmcom": 1}
    listing = httpx.get(f"{crm.url}/_sandbox/transactions", params={"platform": "crmcom"}).json()
    assert listing["count"] == 1
    assert listing["transactions"][0]["platform"] == "crmcom"
    assert listing["transactions"][0]["transaction_id"] == "T1"
    assert Decimal(listing["transactions"][0]["total"]) == Decimal("12.50")


def test_amounts_must_add_up(crm: SandboxServer) -> None:
    body = purchase("T1")
    body["products_set"][0]["vat_amount"] = 2.49
    answer = call(crm, "customer_events/purchases/create", {"token": token_of(crm), **body}).json()
    assert answer["status"]["code"] == "INVALID_PARAMETERS"


def test_create_multiple_answers_processed_and_unprocessed_sets(crm: SandboxServer) -> None:
    token = token_of(crm)
    call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")})
    events = [
        {"request_unique_identifier": "T1", **purchase("T1")},
        {"request_unique_identifier": "T2", **purchase("T2")},
        {"request_unique_identifier": "T3", **purchase("T3", "unknown-1")},
    ]
    answer = call(
        crm,
        "customer_events/purchases/create_multiple",
        {"token": token, "purchase_customer_events_set": events},
    ).json()
    assert answer["status"]["code"] == "OK"
    processed = answer["data"]["processed_customer_events_set"]
    unprocessed = {
        e["request_unique_identifier"]: e for e in answer["data"]["unprocessed_customer_events_set"]
    }
    assert [p["request_unique_identifier"] for p in processed] == ["T2"]
    assert unprocessed["T1"]["error_code"] == "DUPLICATE_REFERENCE_NUMBER"
    assert unprocessed["T3"]["error_code"] == "CUSTOMER_NOT_FOUND"
    too_many = [{"request_unique_identifier": f"X{i}", **purchase(f"X{i}")} for i in range(1001)]
    refused = call(
        crm,
        "customer_events/purchases/create_multiple",
        {"token": token, "purchase_customer_events_set": too_many},
    ).json()
    assert refused["status"]["code"] == "INVALID_PARAMETERS"


def test_cancel_only_posted_purchases(crm: SandboxServer) -> None:
    token = token_of(crm)
    created = call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")}).json()["data"]
    by_id = {"token": token, "customer_event_identifier": {"id": created["id"]}}
    cancelled = call(crm, "customer_events/purchases/cancel", by_id).json()
    assert cancelled["status"]["code"] == "OK"
    assert cancelled["data"]["life_cycle_state"] == "CANCELLED"
    assert (
        call(crm, "customer_events/purchases/cancel", by_id).json()["status"]["code"] == "ALREADY_CANCELLED"
    )
    missing = {"token": token, "customer_event_identifier": {"number": "nope"}}
    assert call(crm, "customer_events/purchases/cancel", missing).json()["status"]["code"] == "NOT_FOUND"
    listing = httpx.get(f"{crm.url}/_sandbox/transactions").json()["transactions"]
    assert [(t["transaction_id"], t["status"]) for t in listing] == [("T1", "cancelled")]


def test_cancelling_a_second_purchase_of_a_reference_leaves_the_first_alone(crm: SandboxServer) -> None:
    """Without the uniqueness check a reference is stored twice; each purchase is its own: cancelling
    the second changes only the second (it overwrote the first before)."""
    platform_of(crm).config.unique_reference_numbers = False
    token = token_of(crm)
    first, second = (
        call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")}).json()["data"]
        for _ in range(2)
    )
    by_id = {"token": token, "customer_event_identifier": {"id": second["id"]}}
    assert call(crm, "customer_events/purchases/cancel", by_id).json()["status"]["code"] == "OK"
    shown = {
        created["id"]: httpx.get(f"{crm.url}{PREFIX}/customer_events/purchases/show", params={
            "token": token, "customer_event_identifier": f"id={created['id']}"}).json()
        for created in (first, second)
    }
    assert {pid: (answer["data"] or {}).get("life_cycle_state", answer["status"]["code"])
            for pid, answer in shown.items()} == {first["id"]: "POSTED", second["id"]: "CANCELLED"}


def test_rate_limit_and_faults_come_from_the_shared_state(crm: SandboxServer) -> None:
    token = token_of(crm)
    crm.config.requests_per_minute = 1
    assert (
        call(crm, "customer_events/purchases/create", {"token": token, **purchase("T0")}).status_code == 200
    )
    limited = call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")})
    assert limited.status_code == 429
    assert limited.json()["status"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
    crm.config.requests_per_minute = None
    crm.config.fault_rate = 1.0
    crm.config.fault_kinds = ("error_503",)
    failed = call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")})
    assert failed.status_code == 503
    stats = httpx.get(f"{crm.url}/_sandbox/stats").json()
    assert stats["rate_limited"] == 1 and stats["faults_injected"] == 1
    assert stats["transactions"] == {"crmcom": 1}


def test_configure_sets_credentials_before_the_server_starts() -> None:
    from pipeline.sandbox.crmcom import CrmcomConfig, configure

    state = SandboxState(SandboxConfig())
    configure(state, CrmcomConfig(username="u", password="p", organisation="o", token_ttl_seconds=5))
    with SandboxServer(state) as server:
        assert platform_of(server).config.token_ttl_seconds == 5
        answer = call(server, "authentication/token", {"username": "u", "password": "p", "organisation": "o"})
        assert answer.json()["status"]["code"] == "OK"


def test_posfeed_sandbox_serves_crmcom_with_the_given_credentials(tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [
        "--port",
        str(port),
        "--crmcom-username",
        "ops",
        "--crmcom-password",
        "pw-1",
        "--crmcom-organisation",
        "acme",
        "--token-ttl",
        "0",
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}{PREFIX}"
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.post(
                    f"{url}/authentication/token",
                    json={"username": "ops", "password": "pw-1", "organisation": "acme"},
                )
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "sandbox did not start"
                time.sleep(0.1)
        token = answer.json()["data"]["token"]
        created = httpx.post(
            f"{url}/customer_events/purchases/create", json={"token": token, **purchase("T1")}
        )
        assert created.json()["status"]["code"] == "TOKEN_EXPIRED"  # --token-ttl 0: born expired
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_purchases_survive_a_restart_tokens_do_not(tmp_path: Any) -> None:
    state_file = tmp_path / "sandbox.json"
    with SandboxServer(state_file=state_file) as first:
        token = token_of(first)
        created = call(first, "customer_events/purchases/create", {"token": token, **purchase("T1")}).json()
    with SandboxServer(state_file=state_file) as second:
        stale = call(second, "customer_events/purchases/create", {"token": token, **purchase("T2")}).json()
        assert stale["status"]["code"] == "INVALID_TOKEN"
        fresh = token_of(second)
        again = call(second, "customer_events/purchases/create", {"token": fresh, **purchase("T1")}).json()
        assert again["status"]["code"] == "DUPLICATE_REFERENCE_NUMBER"
        other = call(second, "customer_events/purchases/create", {"token": fresh, **purchase("T2")}).json()
        assert other["data"]["number"] != created["data"]["number"]
        by_id = {"token": fresh, "customer_event_identifier": {"id": created["data"]["id"]}}
        assert call(second, "customer_events/purchases/cancel", by_id).json()["status"]["code"] == "OK"


def show_external(server: SandboxServer, token: str, external: str) -> dict[str, Any]:
    identifier = f"external_system_reference_number={external}"
    answer: dict[str, Any] = httpx.get(
        f"{server.url}{PREFIX}/customer_events/purchases/show",
        params={"token": token, "customer_event_identifier": identifier},
    ).json()
    return answer


def test_an_external_reference_number_is_used_once_across_restarts(tmp_path: Any) -> None:
    state_file = tmp_path / "sandbox.sqlite"
    with SandboxServer(state_file=state_file) as first:
        token = token_of(first)
        created = call(first, "customer_events/purchases/create",
                       {"token": token, **purchase("R1", external_system_reference_number="E1")}).json()
        assert created["status"]["code"] == "OK"
        again = call(first, "customer_events/purchases/create",
                     {"token": token, **purchase("R2", external_system_reference_number="E1")}).json()
        assert again["status"]["code"] == "DUPLICATE_REFERENCE_NUMBER"
        assert again["data"] == {"id": created["data"]["id"], "number": created["data"]["number"]}
        entry = {"request_unique_identifier": "1", **purchase("R3", external_system_reference_number="E1")}
        bulk = call(first, "customer_events/purchases/create_multiple",
                    {"token": token, "purchase_customer_events_set": [entry]}).json()
        [refused] = bulk["data"]["unprocessed_customer_events_set"]
        assert refused["error_code"] == "DUPLICATE_REFERENCE_NUMBER"
        assert first.state.stats["duplicate_transaction_attempts"] == 2
    with SandboxServer(state_file=state_file) as second:
        token = token_of(second)
        after = call(second, "customer_events/purchases/create",
                     {"token": token, **purchase("R4", external_system_reference_number="E1")}).json()
        assert after["status"]["code"] == "DUPLICATE_REFERENCE_NUMBER"
        assert after["data"]["id"] == created["data"]["id"]
        other = call(second, "customer_events/purchases/create",
                     {"token": token, **purchase("R5", external_system_reference_number="E5")}).json()
        assert other["status"]["code"] == "OK"
        assert show_external(second, token, "E1")["data"]["reference_number"] == "R1"
        assert show_external(second, token, "E5")["data"]["reference_number"] == "R5"
        assert [t["transaction_id"] for t in second.state.listing("crmcom")] == ["R1", "R5"]


def test_a_reset_frees_external_reference_numbers(crm: SandboxServer) -> None:
    token = token_of(crm)
    body = {"token": token, **purchase("R1", external_system_reference_number="E1")}
    assert call(crm, "customer_events/purchases/create", body).json()["status"]["code"] == "OK"
    assert httpx.post(f"{crm.url}/_sandbox/reset").status_code == 200
    token = token_of(crm)
    again = {"token": token, **purchase("R2", external_system_reference_number="E1")}
    assert call(crm, "customer_events/purchases/create", again).json()["status"]["code"] == "OK"
    assert show_external(crm, token, "E1")["data"]["reference_number"] == "R2"


def test_amounts_add_up_exactly(crm: SandboxServer) -> None:
    token = token_of(crm)
    product = {"product_identifier": {"code": "P1"}, "quantity": 1, "net_amount": "999999999",
               "vat_amount": "0.000000000000000000000000000001",
               "total_amount": "999999999.000000000000000000000000000001"}
    body = {"token": token, **purchase("X1", products_set=[product, product])}
    created = call(crm, "customer_events/purchases/create", body).json()
    assert created["status"]["code"] == "OK", created
    [stored] = crm.state.listing("crmcom")
    assert stored["total"] == "1999999998.000000000000000000000000000002"
    assert stored["vat"] == "0.000000000000000000000000000002"


def test_performed_on_may_be_integer_epoch_seconds_and_nothing_else_but_text(crm: SandboxServer) -> None:
    """The spec's purchase takes ``performed_on`` as an integer epoch (posfeed's
    ``performed_on_format = "epoch"``); before, the sandbox refused it as not a date and time.
    Negative, fractional, boolean and out-of-range values stay refused."""
    token = token_of(crm)
    moment = int(datetime(2026, 11, 20, 9, 30, tzinfo=UTC).timestamp())
    created = call(crm, "customer_events/purchases/create",
                   {"token": token, **purchase("E1", performed_on=moment)}).json()
    assert created["status"]["code"] == "OK", created
    assert created["data"]["performed_on"] == moment
    batch = [{"request_unique_identifier": "k1", **purchase("E2", performed_on=moment + 60)}]
    many = call(crm, "customer_events/purchases/create_multiple",
                {"token": token, "purchase_customer_events_set": batch}).json()
    assert many["status"]["code"] == "OK" and many["data"]["unprocessed_customer_events_set"] == [], many
    shown = httpx.get(f"{crm.url}{PREFIX}/customer_events/purchases/show", params={
        "token": token, "customer_event_identifier": "external_system_reference_number=E2"})
    assert shown.json()["data"]["performed_on"] == moment + 60
    for n, garbage in enumerate([-1, 9.5, True, False, 10**60, 253402300800, "", None]):
        body = purchase(f"G{n}", performed_on=garbage)
        answer = call(crm, "customer_events/purchases/create", {"token": token, **body}).json()
        assert answer["status"]["code"] == "INVALID_PARAMETERS", (garbage, answer)
    assert platform_of(crm).state.stats["events_accepted"] == 2


def test_a_held_create_whose_sender_hung_up_is_stored_when_released(crm: SandboxServer) -> None:
    """As Antavo's sandbox: a whole request received is processed though its sender is gone."""
    token = token_of(crm)
    crm.config.hold_after, crm.config.hold_ms = ("requests", 0), 600_000
    with pytest.raises(httpx.ReadTimeout):  # the sender gives up and hangs up
        call(crm, "customer_events/purchases/create", {"token": token, **purchase("T1")},
             timeout=httpx.Timeout(10, read=0.5))
    assert crm.state.listing(PLATFORM) == []  # held
    crm.config.hold_after = None
    deadline = time.monotonic() + 30
    while not crm.state.listing(PLATFORM) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [t["reference_number"] for t in crm.state.listing(PLATFORM)] == ["T1"]
