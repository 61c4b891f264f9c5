"""Hostile edges of the sandbox over real HTTP: a busy state file, profile field types, ambiguous
queries, requests no parser reads under CRM.COM's paths, and odd bodies and methods."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from pipeline.sandbox.crmcom import PREFIX
from pipeline.sandbox.server import SandboxServer

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
