"""The sandbox state file: every record written when it changes, exact numbers, any kind of record."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from pipeline.sandbox.limits import BodyRefused, parse_json
from pipeline.sandbox.server import SandboxServer
from pipeline.sandbox.state import SandboxConfig, SandboxState
from pipeline.sandbox.store import RecordStore, StateFileError, decode, encode


def _state(path: Path) -> SandboxState:
    return SandboxState(SandboxConfig(state_file=path))


def test_numbers_come_back_exactly_as_stored() -> None:
    record = {"total": Decimal("12.50"), "zero": Decimal(0), "big": Decimal("1E+5"), "neg": Decimal("-0.001"),
              "points": 12, "flag": True, "none": None, "text": "é \U0001f600 \"q\"", "list": [Decimal("3")]}
    back = decode(encode(record))
    assert back == record
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in record.items()}
    assert str(back["total"]) == "12.50" and str(back["list"][0]) == "3"


@pytest.mark.parametrize("record", [{"total": Decimal("NaN")}, {"total": Decimal("Infinity")},
                                    {"text": "a\x00b"}, {"ids": {1, 2}}])
def test_a_record_that_cannot_be_stored_changes_nothing(tmp_path: Path, record: dict[str, object]) -> None:
    state = _state(tmp_path / "s.db")
    with pytest.raises((ValueError, TypeError)):
        state.put_transaction("antavo", "T-1", record)
    assert state.get_transaction("antavo", "T-1") is None
    state.close()
    assert _state(tmp_path / "s.db").listing() == []


def test_every_change_is_in_the_file_before_put_returns(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    state = _state(path)
    state.put_transaction("antavo", "T-1", {"total": Decimal("12.50"), "refunded": Decimal(0)})
    state.put_transaction("crmcom", "P-1", {"total": Decimal("3.00")})
    state.put_transaction("antavo", "T-1", {"total": Decimal("12.50"), "refunded": Decimal("2.50")})
    state.put_record("antavo.refund_lookup", "T-1", {"seen": 2})
    # a second reader while the first is still open (no close, no save): what a crash would leave
    again = _state(path)
    assert again.listing() == state.listing()
    assert again.get_transaction("antavo", "T-1") == {"total": Decimal("12.50"), "refunded": Decimal("2.50")}
    assert again.get_record("antavo.refund_lookup", "T-1") == {"seen": 2}
    assert again.records("antavo.refund_lookup") == {"T-1": {"seen": 2}}
    again.delete_record("antavo.refund_lookup", "T-1")
    assert _state(path).get_record("antavo.refund_lookup", "T-1") is None


def test_reset_empties_the_file_too(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    state = _state(path)
    state.put_transaction("antavo", "T-1", {"total": Decimal(1)})
    state.reset()
    assert _state(path).listing() == []


def test_a_json_state_file_of_earlier_versions_is_imported(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps({"transactions": {"antavo": {"T-1": {
        "transaction_id": "T-1", "total": "12.5", "refunded": "0", "items": [{"price": "6.25"}]}}}}))
    state = _state(path)
    assert state.get_transaction("antavo", "T-1")["total"] == Decimal("12.5")
    assert state.listing()[0]["items"] == [{"price": "6.25"}]
    assert (tmp_path / "sandbox.json.old").exists()
    state.close()
    assert _state(path).get_transaction("antavo", "T-1") is not None  # now an SQLite file


def test_a_file_that_is_no_state_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(StateFileError, match=r"notes\.txt"):
        _state(path)
    assert path.read_text() == "hello"


def test_transactions_kind_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        _state(tmp_path / "s.db").put_record("antavo.transaction", "T-1", {})


def test_the_cost_of_a_change_does_not_depend_on_what_is_stored(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s.db")
    for n in range(2000):
        store.put("antavo.transaction", f"T-{n}", {"total": Decimal(n)})
    with sqlite3.connect(tmp_path / "s.db") as other:  # empty the write-ahead log
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert (tmp_path / "s.db-wal").stat().st_size == 0
    store.put("antavo.transaction", "T-new", {"total": Decimal(1)})
    # one row changes a page or two (table, key index) in the log, not a copy of every record
    assert 0 < (tmp_path / "s.db-wal").stat().st_size <= 32 + 4 * (4096 + 24)
    assert store.count() == 2001


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 33 + b"]" * 33, "nests deeper"),
    (b'{"a": "' + b"[" * 100 + b'"}', None),  # brackets inside a string are text
    (b'{"total": 1e5000}', "out of range"),
    (b'{"total": 0e99999}', "out of range"),
    (b'{"total": NaN}', "NaN"),
    (b'{"total": -Infinity}', "Infinity"),
    (b'{"n": ' + b"9" * 41 + b"}", "too long"),
    (b'{"s": "\\ud800"}', "Unicode"),
    (b'{"s": "\\u0000"}', "NUL"),
    (b'{"s": "\\ud83d\\ude00"}', None),
    (b"\xff", "UTF-8"),
    (b'"' + b'\\"' * 50_000, "Malformed"),
])
def test_json_limits(body: bytes, message: str | None) -> None:
    if message is None:
        parse_json(body)
        return
    with pytest.raises(BodyRefused, match=message) as refused:
        parse_json(body)
    assert refused.value.status == 400


def test_a_change_the_file_cannot_take_is_answered_503_and_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    checkout = {"customer": "c", "action": "checkout", "data": {"transaction_id": "T-1", "total": "1"}}
    with SandboxServer(state_file=path) as sandbox:
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("BEGIN EXCLUSIVE")  # another writer holds the file past the busy timeout
            refused = httpx.post(sandbox.url + "/events?api_key=sandbox-key", json=checkout, timeout=60)
            other.execute("ROLLBACK")
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "ServerException"
        assert sandbox.state.get_transaction("antavo", "T-1") is None
        accepted = httpx.post(sandbox.url + "/events?api_key=sandbox-key", json=checkout, timeout=60)
        assert accepted.status_code == 200
    assert [key for _, key, _ in RecordStore(path).rows()] == ["T-1"]
