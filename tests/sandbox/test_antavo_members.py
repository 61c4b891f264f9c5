"""The sandbox's Antavo members: opt_in creates a customer, a repeat answers 112101, profile
updates it, checkout_claim moves a guest transaction to its member; all kept in the state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.sandbox.server import SandboxServer
from tests.sandbox.test_antavo_api import HTTP, _error, post

GUEST = {"guest": True, "action": "checkout",
         "data": {"transaction_id": "G-1", "total": 10, "currency": "EUR"}}


def opt_in(customer: str, **data: Any) -> dict[str, Any]:
    return {"customer": customer, "action": "opt_in", "data": data}


def claim(customer: str, tid: str) -> dict[str, Any]:
    return {"customer": customer, "action": "checkout_claim", "data": {"transaction_id": tid}}


def customers(sandbox: SandboxServer) -> dict[str, Any]:
    return {c["id"]: c for c in HTTP.get(sandbox.url + "/_sandbox/customers").json()["customers"]}


def test_opt_in_profile_and_claims(tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox.sqlite"
    with SandboxServer(state_file=state_file) as sandbox:
        assert post(sandbox, "/events", opt_in("M1", email="a@example.org")).status_code == 200
        again = post(sandbox, "/events", opt_in("M1", email="a@example.org"))
        assert again.status_code == 400 and _error(again)["code"] == 112101
        assert post(sandbox, "/events", {"customer": "M1", "action": "profile",
                                         "data": {"email": "b@example.org"}}).status_code == 200
        missing = post(sandbox, "/events", {"customer": "M2", "action": "profile", "data": {}})
        assert missing.status_code == 404
        assert post(sandbox, "/events", GUEST).status_code == 200
        assert post(sandbox, "/events", claim("M1", "G-1")).status_code == 200
        assert post(sandbox, "/events", claim("M1", "G-1")).status_code == 200  # the owner again: no change
        other = post(sandbox, "/events", claim("M2", "G-1"))
        assert other.status_code == 400 and _error(other)["code"] == 103902
        unknown = post(sandbox, "/events", claim("M1", "G-404"))
        assert unknown.status_code == 400 and _error(unknown)["code"] == 112201
    with SandboxServer(state_file=state_file) as restarted:
        assert customers(restarted)["M1"]["email"] == "b@example.org"
        [guest] = HTTP.get(restarted.url + "/_sandbox/transactions").json()["transactions"]
        assert guest["customer"] == "M1" and guest["claimed"] is True
        repeat = post(restarted, "/events", opt_in("M1"))
        assert _error(repeat)["code"] == 112101


def test_a_customer_opt_in_created_is_known_afterwards(tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox.sqlite"
    checkout = {"customer": "unknown-77", "action": "checkout",
                "data": {"transaction_id": "U-1", "total": 5, "currency": "EUR"}}
    with SandboxServer(state_file=state_file) as sandbox:
        before = post(sandbox, "/events", checkout)
        assert before.status_code == 404 and _error(before)["code"] == 160212
        assert post(sandbox, "/events", opt_in("unknown-77", email="u@example.org")).status_code == 200
        assert post(sandbox, "/events", checkout).status_code == 200
        profile = {"customer": "unknown-77", "action": "profile", "data": {"first_name": "U"}}
        assert post(sandbox, "/events", profile).status_code == 200
        assert customers(sandbox)["unknown-77"]["first_name"] == "U"
    with SandboxServer(state_file=state_file) as restarted:
        url = restarted.url + "/customers/unknown-77/transactions?api_key=" + restarted.config.api_key
        read = HTTP.get(url)
        assert read.status_code == 200
        assert [t["id"] for t in read.json()["transactions"]] == ["U-1"]
        other = post(restarted, "/events", {**checkout, "customer": "unknown-78"})
        assert other.status_code == 404 and _error(other)["code"] == 160212


def test_event_data_never_overwrites_the_customer_s_own_fields(sandbox: SandboxServer) -> None:
    own = {"id": "someone-else", "status": "inactive", "created_at": "1970-01-01T00:00:00+00:00",
           "updated_at": "1970-01-01T00:00:00+00:00"}
    assert post(sandbox, "/events", opt_in("M7", email="m7@example.org", **own)).status_code == 200
    created = customers(sandbox)["M7"]
    assert created["id"] == "M7" and created["status"] == "active"
    assert created["created_at"] != own["created_at"] and created["updated_at"] != own["updated_at"]
    profile = {"customer": "M7", "action": "profile", "data": {**own, "first_name": "Em"}}
    assert post(sandbox, "/events", profile).status_code == 200
    listed = customers(sandbox)
    assert set(listed) == {"M7"}
    assert {k: listed["M7"][k] for k in ("id", "status", "created_at", "first_name", "email")} == {
        "id": "M7", "status": "active", "created_at": created["created_at"], "first_name": "Em",
        "email": "m7@example.org"}
