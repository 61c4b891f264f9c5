"""Returns exactly once, with real processes: a day of sales and returns in GBP and EUR (whole,
partial, repeated, over-refunding, unmatched returns and returns of unknown sales) sent with the
default settings. The run is SIGKILLed twice while refunds are in flight and run again; or the
sandbox (`posfeed sandbox --fault-rate`) loses answers. Either way the platform's `refunded` of
every sale is exactly what came back, no refund is applied twice, nothing beyond what was bought."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.config import Feed
from pipeline.ledger import Ledger, TxnState
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import feed_toml, sample_feed, settings_in, stats

HEADER = ("transaction_id,store_id,register_id,timestamp,business_date,customer_id,transaction_type,"
          "line_no,product_id,product_name,product_category,quantity,unit_price,discount,line_total,"
          "currency,transaction_total,points_burned,original_transaction_id")
PRODUCTS = [(f"1004{n:02d}", f"Product {n}", "grocery", Decimal(f"{1 + n * 0.37:.2f}")) for n in range(12)]
STORES = (("LON01", "GBP"), ("BER01", "EUR"))
DAY = "2026-11-20"


@dataclass
class Day:
    """The generated files and what the platform must hold after them."""

    files: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sale_lines: dict[str, list[tuple[str, int, Decimal]]] = field(default_factory=dict)
    refunded: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    over: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)
    unknown_sale: set[str] = field(default_factory=set)


def _line(tid: str, store: str, register: str, at: str, customer: str, kind: str, no: int,
          product: tuple[str, str, str, Decimal], qty: int, currency: str, total: Decimal,
          original: str = "") -> str:
    pid, name, category, price = product
    amount = price * qty
    return (f"{tid},{store},{register},{DAY} {at},{DAY},{customer},{kind},{no},{pid},{name},{category},"
            f"{qty},{price},,{amount},{currency},{total},,{original}")


def _return(day: Day, name: str, tid: str, store: str, currency: str, at: str, customer: str,
            lines: list[tuple[tuple[str, str, str, Decimal], int]], original: str) -> Decimal:
    total = sum((p[3] * -q for p, q in lines), Decimal(0))
    for no, (product, qty) in enumerate(lines, 1):
        day.files[name].append(_line(tid, store, "R2", at, customer, "return", no, product, -qty, currency,
                                     total, original))
    return -total


def make_day() -> Day:
    """Per store: 24 member sales, then whole, partial, second partial, over-refunding, unmatched
    and unknown-sale returns in two later files."""
    rng = random.Random(14)
    day = Day()
    for store, currency in STORES:
        sales, first, second = (f"pos_{store}_20261120_{h}.csv" for h in ("10", "14", "16"))
        bought: dict[str, list[tuple[tuple[str, str, str, Decimal], int]]] = {}
        for n in range(24):
            tid = f"{store}-R1-20261120-{n:04d}"
            customer = f"M{store[:3]}{n:03d}"
            chosen = rng.sample(PRODUCTS, 2 + n % 2)
            lines = [(product, rng.randint(1, 3)) for product in chosen]
            total = sum((p[3] * q for p, q in lines), Decimal(0))
            for no, (product, qty) in enumerate(lines, 1):
                day.files[sales].append(_line(tid, store, "R1", f"10:{n:02d}:00", customer, "sale", no,
                                              product, qty, currency, total))
            bought[tid] = lines
            day.sale_lines[tid] = [(p[0], q, p[3] * q) for p, q in lines]
        for n, (tid, lines) in enumerate(bought.items()):
            customer = f"M{store[:3]}{n:03d}"
            rid = f"{store}-R2-20261120-{n:04d}"
            if n < 6:  # whole: every unit of every line
                day.refunded[tid] += _return(day, first, rid, store, currency, f"14:{n:02d}:00", customer,
                                             lines, tid)
            elif n < 18:  # partial: one unit of the first line
                day.refunded[tid] += _return(day, first, rid, store, currency, f"14:{n:02d}:00", customer,
                                             [(lines[0][0], 1)], tid)
            elif n < 20:  # more units than were bought
                _return(day, first, rid, store, currency, f"14:{n:02d}:00", customer,
                        [(lines[0][0], lines[0][1] + 1)], tid)
                day.over.add(rid)
            if 12 <= n < 18:  # a second partial return of the same sale, later in the day
                day.refunded[tid] += _return(day, second, f"{rid}b", store, currency, f"16:{n:02d}:00",
                                             customer, [(lines[1][0], 1)], tid)
            if n < 2:  # a return after the whole sale came back already
                _return(day, second, f"{rid}c", store, currency, f"16:{n:02d}:00", customer,
                        [(lines[0][0], 1)], tid)
                day.over.add(f"{rid}c")
        for n in range(2):
            rid = f"{store}-R3-20261120-{n:04d}"
            _return(day, second, rid, store, currency, f"16:3{n}:00", f"M{store[:3]}90{n}",
                    [(PRODUCTS[n], 1)], "")
            day.unmatched.add(rid)
        rid = f"{store}-R3-20261120-0009"
        _return(day, second, rid, store, currency, "16:40:00", f"M{store[:3]}909", [(PRODUCTS[3], 1)],
                f"{store}-R9-20261119-0001")  # a sale neither the ledger nor the platform holds
        day.unknown_sale.add(rid)
    return day


def write_day(day: Day, drop: Path) -> None:
    drop.mkdir(parents=True, exist_ok=True)
    for name, lines in day.files.items():
        (drop / name).write_text(HEADER + "\n" + "\n".join(lines) + "\n", encoding="utf-8")


def _posfeed(args: list[str], tmp: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"), "--reports-dir",
         str(tmp / "reports"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )


def _listing(url: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{url}/_sandbox/transactions", params={"platform": "antavo"},
                                           timeout=10).json()["transactions"]
    return data


def _refunds(url: str) -> int:
    return sum(len(t.get("refunds") or ()) for t in _listing(url))


def _feed_file(tmp: Path, feed: Feed) -> Path:
    path = tmp / "returnsfeed.toml"
    path.write_text(feed_toml(feed), encoding="utf-8")
    return path


def _feed(sandbox: SandboxServer, drop: Path, **target: Any) -> Feed:
    # default return settings; small requests so kills find refunds in flight
    feed = sample_feed("acme_hourly", sandbox, folder=drop)
    return feed.model_copy(update={"target": feed.target.model_copy(update={
        "max_concurrency": 2, "bulk_size": 3, "readback_wait_seconds": 4, **target})})


def assert_platform_holds_exactly_what_came_back(day: Day, url: str, ledger_path: Path) -> None:
    held = {str(t["transaction_id"]): t for t in _listing(url)}
    for sale, lines in day.sale_lines.items():
        record = held[sale]  # every sale landed, once
        assert Decimal(record["refunded"]) == day.refunded.get(sale, Decimal(0)), (sale, record["refunds"])
        units: dict[str, Decimal] = defaultdict(Decimal)
        for refund in record["refunds"]:
            if refund["action"] == "refund_item":
                units[str(refund["product_id"])] += Decimal(str(refund["quantity"]))
        bought = {pid: Decimal(qty) for pid, qty, _ in lines}
        assert all(units[pid] <= bought.get(pid, Decimal(0)) for pid in units), (sale, record["refunds"])
        whole = sum(1 for r in record["refunds"] if r["action"] == "refund")
        assert whole <= 1 and (whole == 0 or len(record["refunds"]) == 1), record["refunds"]
    with Ledger(ledger_path) as ledger:
        rows = ledger.transactions_by_row_id(list(range(1, 2000)))
    state = {t.transaction_id: t for t in rows if t.state not in (TxnState.DUPLICATE, TxnState.REJECTED)}
    for rid in day.over:
        assert (state[rid].state, state[rid].last_error_code) == (TxnState.NOT_SENT, "over_refund")
    for rid in day.unmatched:
        assert (state[rid].state, state[rid].last_error_code) == (TxnState.NOT_SENT, "unmatched_return")
    for rid in day.unknown_sale:  # waits for its sale, never sent
        assert (state[rid].state, state[rid].last_error_code) == (TxnState.FAILED_RETRYABLE,
                                                                  "original_not_found")
    returns = [t for t in state.values() if t.transaction_type == "return"]
    sent = [t for t in returns if t.transaction_id not in day.over | day.unmatched | day.unknown_sale]
    assert sent and all(t.state is TxnState.ACCEPTED for t in sent), [
        (t.transaction_id, t.state, t.last_error_code) for t in sent if t.state is not TxnState.ACCEPTED]


@pytest.mark.slow
def test_killed_twice_with_refunds_in_flight_then_run_again(tmp_path: Path) -> None:
    day = make_day()
    drop = tmp_path / "drop"
    write_day(day, drop)
    with SandboxServer(latency_ms=40) as sandbox:
        feed_file = _feed_file(tmp_path, _feed(sandbox, drop))
        env = {**os.environ, "ANTAVO_API_KEY": sandbox.config.api_key,
               "ANTAVO_API_SECRET": sandbox.config.api_secret}
        args = ["run", "--feed", str(feed_file), "--business-date", DAY, "--json"]
        ledger_path = settings_in(tmp_path).ledger_path
        in_doubt_returns = []
        floor = 0
        for _kill in range(2):
            victim = _posfeed(args, tmp_path, env)
            deadline = time.monotonic() + 180
            while _refunds(sandbox.url) < floor + 3:
                assert victim.poll() is None, victim.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no refunds went out"
                time.sleep(0.01)
            # from now on every request is held, then processed and its answer lost: the kill
            # lands with refunds that landed while their sender could not know (held, the run
            # cannot give up and end before the kill, whatever the machine's load)
            sandbox.config.fault_kinds = ("lost_response",)
            sandbox.config.fault_rate = 1.0
            arrived = stats(sandbox)["requests"]
            sandbox.config.hold_after = ("requests", 0)
            # a request has reached the sandbox since (held: it lands, its answer is lost); a fixed
            # pause alone let a run slowed by a loaded machine be killed with none on its way
            while stats(sandbox)["requests"] <= arrived:
                assert victim.poll() is None, victim.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no request reached the sandbox"
                time.sleep(0.01)
            time.sleep(0.3)
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=60)
            assert victim.returncode == -signal.SIGKILL
            time.sleep(sandbox.config.hold_ms / 1000 + 0.5)  # the held requests have landed
            sandbox.config.fault_rate, sandbox.config.hold_after = 0.0, None
            with Ledger(ledger_path) as ledger:
                in_doubt_returns.append(sum(
                    1 for t in ledger.transactions_by_row_id(list(range(1, 2000)))
                    if t.state is TxnState.SENDING and t.transaction_type == "return"))
            floor = _refunds(sandbox.url)
        assert all(in_doubt_returns), f"a kill found no refund in flight: {in_doubt_returns}"

        survivor = _posfeed(args, tmp_path, env)
        out, err = survivor.communicate(timeout=300)
        # the returns whose sale never came wait, within resume.sale_wait_hours: nothing else is
        # left, so the run exits 0 and says they wait
        assert survivor.returncode == 0, err[-3000:]
        final = json.loads(out)
        assert final["in_doubt"] == 0 and final["balanced"] is True
        assert final["failed_retryable"] == final["waiting_for_sale"] == len(day.unknown_sale)
        assert_platform_holds_exactly_what_came_back(day, sandbox.url, ledger_path)
        read_back = _read_back(ledger_path)
        assert read_back, "no refund was settled from the platform"


def _read_back(ledger_path: Path) -> list[str]:
    with Ledger(ledger_path) as ledger:
        return [t.transaction_id or "" for t in ledger.transactions_by_row_id(list(range(1, 2000)))
                if t.last_error_code == "read_back"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
def test_lost_answers_from_the_sandbox_never_refund_twice(tmp_path: Path) -> None:
    day = make_day()
    drop = tmp_path / "drop"
    write_day(day, drop)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox", "--port", str(port), "--fault-rate", "0.3",
         "--seed", "14"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/_sandbox/stats", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)

        class _At:
            def __init__(self, base: str):
                self.url = base

        # a slow answer (1.5 s) comes before the timeout; a read-back waits timeout_seconds after
        # its request went out, so nothing the platform still processes can be missed
        feed = _feed(_At(url), drop, readback_wait_seconds=None, max_attempts=4,  # type: ignore[arg-type]
                     timeout_seconds=3)
        feed_file = _feed_file(tmp_path, feed)
        env = {**os.environ, "ANTAVO_API_KEY": "sandbox-key", "ANTAVO_API_SECRET": "sandbox-secret"}
        first = _posfeed(["run", "--feed", str(feed_file), "--business-date", DAY, "--json"], tmp_path, env)
        out, err = first.communicate(timeout=300)
        assert first.returncode in (0, 65, 75), err[-3000:]
        summary = json.loads(out)
        for _ in range(8):  # what stayed retryable is sent by reruns, as ops would
            if summary["failed_retryable"] == len(day.unknown_sale):  # those wait for their sale
                break
            rerun = _posfeed(["rerun", "--feed", str(feed_file), "--failed", "--json"], tmp_path, env)
            out, err = rerun.communicate(timeout=300)
            assert rerun.returncode in (0, 65, 75), err[-3000:]
            summary = json.loads(out)
        stats = httpx.get(url + "/_sandbox/stats", timeout=5).json()
        assert stats["lost_responses"] > 0
        assert_platform_holds_exactly_what_came_back(day, url, settings_in(tmp_path).ledger_path)
        assert _read_back(settings_in(tmp_path).ledger_path), "no lost refund answer was read back"
    finally:
        server.terminate()
        server.communicate(timeout=20)
