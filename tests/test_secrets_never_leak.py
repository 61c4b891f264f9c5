"""A full run with debug logging leaks no secret and, with masking on, no customer id.

The run is a real `posfeed -vv run` process: files fetched over SFTP with a password from a real
sshd, sent with a signed key/secret to the sandbox platform. Then every byte it left is searched:
stderr, stdout, every report file and every file of the state dir (the SQLite ledger included).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.sandbox.server import SandboxServer
from tests.sftp_fixtures import SftpServer, SftpUser

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "acme"
FILES = [
    "pos_LON01_20261120_09.csv",  # a bad number: rejected lines with their customer id
    "pos_LON01_20261120_10.csv",
    "pos_LON01_20261120_11.csv",  # exact duplicates
    "pos_BER01_20261120_10.csv",  # a missing product id
]
API_KEY = "leak-check-key-58cd31"
API_SECRET = "leak-check-secret-7f2e9a1b44"


@pytest.fixture
def sandbox_with_secrets() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, api_secret=API_SECRET) as server:
        yield server


def customer_ids(folder: Path, names: list[str] = FILES) -> set[str]:
    ids: set[str] = set()
    for name in names:
        with (folder / name).open(encoding="utf-8", newline="") as handle:
            ids |= {row["customer_id"] for row in csv.DictReader(handle) if row["customer_id"]}
    return ids


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_feed(path: Path, sections: dict[str, dict[str, Any]], **top: Any) -> None:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_posfeed(tmp: Path, feed: str, env: dict[str, str], *args: str,
                log_format: str = "json") -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "pipeline", "-vv", "--log-format", log_format,
        "--state-dir", str(tmp / "state"), "--feeds-dir", str(tmp / "feeds"),
        "--reports-dir", str(tmp / "reports"),
        "run", "--feed", feed, "--business-date", "2026-11-20", "--json", *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def everything_written(tmp: Path, result: subprocess.CompletedProcess[str]) -> dict[str, bytes]:
    blobs = {"stderr": result.stderr.encode(), "stdout": result.stdout.encode()}
    for folder in (tmp / "state", tmp / "reports"):
        for path in folder.rglob("*"):
            if path.is_file():
                blobs[str(path.relative_to(tmp))] = path.read_bytes()
    return blobs


@pytest.mark.slow
def test_debug_run_leaks_no_secret_and_no_customer_id(
    tmp_path: Path, sftp_server: SftpServer, sftp_password_user: SftpUser,
    sandbox_with_secrets: SandboxServer,
) -> None:
    home = sftp_password_user.home
    for name in FILES:
        shutil.copy(SAMPLE / name, home / name)
        (home / name).chmod(0o644)
    (tmp_path / "feeds").mkdir()
    known_hosts = sftp_server.write_known_hosts(tmp_path / "known_hosts")
    source = {
        "kind": "sftp", "host": sftp_server.host, "port": sftp_server.port,
        "username": sftp_password_user.name, "password_env": "LEAK_SFTP_PASSWORD",
        "known_hosts_file": str(known_hosts), "path": str(home),
        "pattern": "pos_*_{business_date:%Y%m%d}_??.csv", "readiness": "none",
    }
    target = {
        "kind": "antavo", "base_url": sandbox_with_secrets.url, "region": sandbox_with_secrets.config.region,
        "api_key_env": "LEAK_ANTAVO_KEY", "api_secret_env": "LEAK_ANTAVO_SECRET",
        "requests_per_minute": 60000, "backoff_base_seconds": 0.02, "backoff_max_seconds": 0.2,
    }
    sections = {"source": source, "target": target, "validation": {"currencies": ["GBP", "EUR"]},
                "logging": {"hash_customer_ids": True}}
    write_feed(tmp_path / "feeds" / "leakcheck.toml", sections, timezone="Europe/London")
    password = sftp_password_user.password or ""
    env = {**os.environ, "LEAK_SFTP_PASSWORD": password, "LEAK_ANTAVO_KEY": API_KEY,
           "LEAK_ANTAVO_SECRET": API_SECRET}

    result = run_posfeed(tmp_path, "leakcheck", env)

    assert result.returncode == 65, result.stderr[-3000:]  # rows were rejected; all else final
    summary = json.loads(result.stdout)
    assert summary["accepted"] > 100 and summary["in_doubt"] == 0 and summary["balanced"] is True
    # the run really authenticated with both secrets and logged at debug level
    log_lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(line["level"] == "debug" for line in log_lines)
    assert any(line.get("event") == "file" for line in log_lines)
    assert any(line.get("event") == "batch" for line in log_lines)

    ids = customer_ids(SAMPLE)
    assert len(ids) > 50
    blobs = everything_written(tmp_path, result)
    assert any(name.endswith("ledger.sqlite") for name in blobs)
    assert any(name.endswith("rejects.csv") for name in blobs)
    for secret in (API_SECRET, API_KEY, password):
        leaks = [name for name, blob in blobs.items() if secret.encode() in blob]
        assert leaks == [], f"secret found in {leaks}"
    for name, blob in blobs.items():
        found = sorted(i for i in ids if i.encode() in blob)
        assert found == [], f"raw customer ids {found[:5]} in {name}"
    # the masked form is there instead: one customer can still be followed
    rejects = next(blob for name, blob in blobs.items() if name.endswith("rejects.csv"))
    assert b"cust:" in rejects

    # the ledger holds no half-sent transaction
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    try:
        states = dict(db.execute("SELECT state, COUNT(*) FROM transactions GROUP BY state").fetchall())
    finally:
        db.close()
    assert "sending" not in states and "queued" not in states
    assert states["accepted"] == summary["accepted"]


@pytest.mark.slow
def test_without_masking_the_ledger_keeps_real_customer_ids(
    tmp_path: Path, sandbox_env: SandboxServer
) -> None:
    """The control: the same search finds customer ids when hashing is switched off."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE / FILES[0], folder / FILES[0])
    (tmp_path / "feeds").mkdir()
    target = {"kind": "antavo", "base_url": sandbox_env.url, "region": sandbox_env.config.region,
              "requests_per_minute": 60000}
    sections = {"source": {"kind": "local", "path": str(folder), "readiness": "none",
                           "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
                "target": target, "validation": {"currencies": ["GBP"]},
                "logging": {"hash_customer_ids": False}}
    write_feed(tmp_path / "feeds" / "plain.toml", sections, timezone="Europe/London")
    result = run_posfeed(tmp_path, "plain", dict(os.environ))
    assert result.returncode == 65, result.stderr[-3000:]
    blobs = everything_written(tmp_path, result)
    ledger = next(blob for name, blob in blobs.items() if name.endswith("ledger.sqlite"))
    with (folder / FILES[0]).open(encoding="utf-8", newline="") as handle:
        ids = {row["customer_id"] for row in csv.DictReader(handle) if row["customer_id"]}
    assert any(i.encode() in ledger for i in ids)


class EchoingPlatform:
    """A platform double whose refusals quote the customer id (as some real APIs' messages do);
    the sandbox never does, so this one case needs a stand-in."""

    async def submit(self, checkouts: Any, on_sending: Any, on_result: Any, *, stop: Any = None) -> None:
        from pipeline.sinks.base import EventResult, Outcome

        await on_sending([c["transaction_id"] for c in checkouts])
        for checkout in checkouts:
            on_result(EventResult(checkout["transaction_id"], Outcome.REJECTED, error_code="404",
                                  error_message=f"Customer {checkout['customer_id']} not found"))

    async def aclose(self) -> None:
        return None


def _run_against(platform: Any, tmp_path: Path) -> tuple[Any, set[str], list[str]]:
    """One sample hour run against ``platform``: the run's summary, the customer ids of its file
    and the error messages the ledger keeps."""
    from datetime import date

    from pipeline.config import Feed, Settings
    from pipeline.runner import run_feed

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE / FILES[1], folder / FILES[1])
    feed = Feed.model_validate({
        "name": "echo", "timezone": "Europe/London", "validation": {"currencies": ["GBP"]},
        "source": {"kind": "local", "path": str(folder), "readiness": "none",
                   "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
    })
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    summary = run_feed(feed, settings, business_dates=[date(2026, 11, 20)], make_sink=lambda feed: platform)
    with (folder / FILES[1]).open(encoding="utf-8", newline="") as handle:
        ids = {row["customer_id"] for row in csv.DictReader(handle) if row["customer_id"]}
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    try:
        messages = [m for (m,) in db.execute("SELECT last_error_message FROM transactions") if m]
    finally:
        db.close()
    return summary, ids, messages


def test_platform_messages_quoting_a_customer_id_are_masked(tmp_path: Path) -> None:
    summary, ids, messages = _run_against(EchoingPlatform(), tmp_path)
    assert summary.to_dict()["failed_permanent"] > 0
    detail = (summary.reports_path / "detail.csv").read_text(encoding="utf-8")
    assert "Customer cust:" in detail
    assert not [i for i in ids if i.encode() in detail.encode()]
    # failed-permanent checkouts keep the real id (a rerun may send them), messages do not
    assert any("cust:" in m for m in messages)  # guests have no id to quote
    assert not [i for i in ids for m in messages if i in m]


ECHOED_KEY = "echoed-api-key-4b1d9c"
ECHOED_PASSWORD = "echoed-pass-77aa01"


class EchoingWholeRequestPlatform:
    """A platform double that refuses a whole request with a message echoing what it was sent:
    our API key, a password, a token, and every customer of the request (the same message then
    stands for each transaction of it, as a whole-request failure does)."""

    async def submit(self, checkouts: Any, on_sending: Any, on_result: Any, *, stop: Any = None) -> None:
        from pipeline.config import resolve_secret
        from pipeline.sinks.base import EventResult, Outcome

        key = resolve_secret(env="ECHO_API_KEY")  # as a real sink reads (and registers) its key
        await on_sending([c["transaction_id"] for c in checkouts])
        customers = ",".join(str(c["customer_id"]) for c in checkouts if c.get("customer_id"))
        message = (f"invalid request: api_key {key} with password={ECHOED_PASSWORD} and "
                   f"Authorization: Bearer tok.abc.def for customers [{customers}]")
        for checkout in checkouts:
            on_result(EventResult(checkout["transaction_id"], Outcome.REJECTED, error_code="400",
                                  error_message=message))

    async def aclose(self) -> None:
        return None


def test_secrets_and_other_customers_echoed_in_a_platform_message_are_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_API_KEY", ECHOED_KEY)
    summary, ids, messages = _run_against(EchoingWholeRequestPlatform(), tmp_path)
    assert summary.to_dict()["failed_permanent"] > 0
    written = [*messages, *(p.read_text(encoding="utf-8") for p in (tmp_path / "reports").rglob("*")
                            if p.is_file() and p.suffix in (".csv", ".json", ".html", ".md"))]
    assert messages and all("invalid request: api_key ***" in m for m in messages)
    for text in written:
        assert ECHOED_KEY not in text
        assert ECHOED_PASSWORD not in text
        assert "tok.abc.def" not in text
        assert not [i for i in ids if i in text]


def _sample_hour_feed(tmp: Path, sandbox: SandboxServer, name: str, *, guests: bool = True,
                      **target: Any) -> dict[str, str]:
    """A feed file for one sample hour (``guests``: with its guest checkouts) against ``sandbox``
    (key and secret from the environment, customer ids hashed); returns the environment holding
    its secrets."""
    folder = tmp / "in"
    folder.mkdir(exist_ok=True)
    lines = (SAMPLE / FILES[1]).read_text(encoding="utf-8").splitlines(keepends=True)
    column = lines[0].split(",").index("customer_id")
    kept = [line for line in lines[1:] if guests or line.split(",")[column]]
    (folder / FILES[1]).write_text(lines[0] + "".join(kept), encoding="utf-8")
    (tmp / "feeds").mkdir(exist_ok=True)
    platform: dict[str, Any] = {"kind": "antavo", "region": sandbox.config.region,
                                "api_key_env": "LEAK_ANTAVO_KEY", "api_secret_env": "LEAK_ANTAVO_SECRET"}
    if target.get("kind") == "crmcom":
        platform = {"password_env": "LEAK_CRMCOM_PASSWORD"}
    settings = {**platform, "base_url": sandbox.url, "requests_per_minute": 60000,
                "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02, **target}
    sections = {"source": {"kind": "local", "path": str(folder), "readiness": "none",
                           "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
                "target": settings, "validation": {"currencies": ["GBP"]},
                "logging": {"hash_customer_ids": True}}
    write_feed(tmp / "feeds" / f"{name}.toml", sections, timezone="Europe/London")
    crmcom = sandbox.state.platforms["crmcom"].config
    return {**os.environ, "LEAK_ANTAVO_KEY": API_KEY, "LEAK_ANTAVO_SECRET": API_SECRET,
            "CRMCOM_USERNAME": crmcom.username, "LEAK_CRMCOM_PASSWORD": crmcom.password,
            "CRMCOM_ORGANISATION": crmcom.organisation}


def posfeed_problems(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`posfeed problems` on the state folder of :func:`run_posfeed`."""
    command = [sys.executable, "-m", "pipeline", "--state-dir", str(tmp / "state"),
               "--feeds-dir", str(tmp / "feeds"), "--reports-dir", str(tmp / "reports"), "problems", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def ledger_values(path: Path, *, skip: tuple[str, ...] = ()) -> bytes:
    """Every value of every table of an SQLite ledger, one per line, but the ``table.column``
    pairs of ``skip`` (a pending transaction's checkout keeps the real customer id it is sent with)."""
    db = sqlite3.connect(path)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        lines = []
        for table in tables:
            columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})")
                       if f"{table}.{c[1]}" not in skip]
            for row in db.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                lines += [str(v) for v in row if v is not None]
    finally:
        db.close()
    return "\n".join(lines).encode()


def assert_nothing_leaks(blobs: dict[str, bytes], ids: set[str], secrets: tuple[str, ...]) -> None:
    """No secret and no raw customer id in any of ``blobs``."""
    for secret in secrets:
        leaks = [name for name, blob in blobs.items() if secret.encode() in blob]
        assert leaks == [], f"secret {secret!r} found in {leaks}"
    for name, blob in blobs.items():
        found = sorted(i for i in ids if i.encode() in blob)
        assert found == [], f"raw customer ids {found[:5]} in {name}"


@pytest.mark.parametrize("target", [{"auth": "signed"}, {"auth": "api_key"}, {"kind": "crmcom"}],
                         ids=["antavo-signed", "antavo-api_key", "crmcom"])
def test_a_platform_echoing_every_refused_request_leaks_nothing(
        tmp_path: Path, sandbox_with_secrets: SandboxServer, target: dict[str, str]) -> None:
    sandbox = sandbox_with_secrets
    sandbox.config.echo_requests = True
    env = _sample_hour_feed(tmp_path, sandbox, "echo", **target)
    sandbox.config.fault_kinds = ("error_500",)
    sandbox.config.fault_rate = 1.0
    result = run_posfeed(tmp_path, "echo", env)
    assert result.returncode == 75, result.stderr[-3000:]
    shown = posfeed_problems(tmp_path, env)
    as_json = posfeed_problems(tmp_path, env, "--json")
    blobs = everything_written(tmp_path, result)
    ledger = tmp_path / "state" / "ledger.sqlite"
    del blobs[str(ledger.relative_to(tmp_path))]
    blobs.update({"problems": shown.stdout.encode(), "problems --json": as_json.stdout.encode(),
                  "ledger": ledger_values(ledger, skip=("transactions.checkout",))})
    assert_nothing_leaks(blobs, customer_ids(tmp_path / "in", FILES[1:2]),
                         (API_KEY, API_SECRET, env["LEAK_CRMCOM_PASSWORD"]))


def test_credentials_refused_mid_run_by_an_echoing_platform_leak_nothing(
        tmp_path: Path, sandbox_with_secrets: SandboxServer) -> None:
    """The platform refuses our secret from the first batch on (rotated there while the batch was
    held) and its 401 quotes the whole request: the refusal reaches summary.json, the run's
    summary line, the exit's cause and the credentials problem it opens with the customers masked."""
    import time

    from tests.runner_helpers import stats

    sandbox = sandbox_with_secrets
    sandbox.config.echo_requests = True
    env = _sample_hour_feed(tmp_path, sandbox, "echo", guests=False, bulk_size=5, max_concurrency=1)
    # request 1 is the credential check; the first batch is held until the secret is rotated
    sandbox.config.hold_after, sandbox.config.hold_ms = ("requests", 2), 120_000
    command = [sys.executable, "-m", "pipeline", "-v", "--state-dir", str(tmp_path / "state"),
               "--feeds-dir", str(tmp_path / "feeds"), "--reports-dir", str(tmp_path / "reports"),
               "run", "--feed", "echo", "--business-date", "2026-11-20", "--json"]
    run = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while stats(sandbox)["requests"] < 2:
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never sent its first batch"
        time.sleep(0.01)
    sandbox.config.api_secret = "rotated-on-the-platform"
    sandbox.config.hold_after = None
    out, err = run.communicate(timeout=120)
    result = subprocess.CompletedProcess(command, run.returncode, out, err)
    assert result.returncode == 78, err[-3000:]
    assert json.loads(out)["credentials_refused"].startswith("101021: ")
    shown = posfeed_problems(tmp_path, env)
    as_json = posfeed_problems(tmp_path, env, "--json")
    (problem,) = [p for p in json.loads(as_json.stdout) if p["kind"] == "credentials_refused"]
    assert problem["summary"].startswith("credentials refused: 101021: The signatures do not match")
    assert "cust:" in problem["summary"]  # the request's customers, masked
    blobs = everything_written(tmp_path, result)
    ledger = tmp_path / "state" / "ledger.sqlite"
    del blobs[str(ledger.relative_to(tmp_path))]
    blobs.update({"problems": shown.stdout.encode(), "problems --json": as_json.stdout.encode(),
                  "ledger": ledger_values(ledger, skip=("transactions.checkout",))})
    assert_nothing_leaks(blobs, customer_ids(tmp_path / "in", FILES[1:2]), (API_KEY, API_SECRET))


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("kind", ["antavo", "crmcom"])
def test_a_refusal_echoing_our_key_never_shows_it_in_the_exit_message(
        tmp_path: Path, sandbox_with_secrets: SandboxServer, log_format: str, kind: str) -> None:
    """The platform knows another key (password) and its refusal quotes the request, our key in
    its query (our password in its body): the error that ends the run (printed as text or as a
    JSON line), the problem and the ledger show it masked."""
    sandbox = sandbox_with_secrets
    sandbox.config.echo_requests = True
    sandbox.config.api_key = "the-platform-expects-another-key"
    env = _sample_hour_feed(tmp_path, sandbox, "echo", **({"auth": "api_key"} if kind == "antavo"
                                                          else {"kind": "crmcom"}))
    sandbox.state.platforms["crmcom"].config.password = "the-platform-expects-another-password"
    result = run_posfeed(tmp_path, "echo", env, log_format=log_format)
    assert result.returncode == 78, result.stderr[-3000:]
    assert "refused our credentials" in result.stderr and "(request: " in result.stderr
    shown = posfeed_problems(tmp_path, env, "--json")
    assert "credentials_refused" in shown.stdout
    blobs = everything_written(tmp_path, result)
    blobs["problems --json"] = shown.stdout.encode()
    assert_nothing_leaks(blobs, set(), (API_KEY, API_SECRET, env["LEAK_CRMCOM_PASSWORD"]))


def test_a_whole_request_refusal_echoing_members_keeps_each_members_details_out(
        tmp_path: Path, sandbox_with_secrets: SandboxServer) -> None:
    """Enrollments sent in one bulk request refused as a whole (500) by a platform that quotes the
    request: each member's failure message would carry every member's e-mail, name and phone;
    none of them reaches the ledger's messages, the reports or the logs."""
    from tests.runner_helpers import feed_toml, sample_feed

    sandbox = sandbox_with_secrets
    sandbox.config.echo_requests = True
    sandbox.config.fault_kinds, sandbox.config.fault_rate = ("error_500",), 1.0
    drop = tmp_path / "in"
    drop.mkdir()
    shutil.copy(SAMPLE / "members_LON01_20261120.csv", drop)
    (tmp_path / "feeds").mkdir()
    feed = sample_feed("acme_enrollments", sandbox, folder=drop, max_attempts=1,
                       api_key_env="LEAK_ANTAVO_KEY", api_secret_env="LEAK_ANTAVO_SECRET")
    (tmp_path / "feeds" / "members.toml").write_text(feed_toml(feed), encoding="utf-8")
    env = {**os.environ, "LEAK_ANTAVO_KEY": API_KEY, "LEAK_ANTAVO_SECRET": API_SECRET}
    result = run_posfeed(tmp_path, "members", env)
    assert result.returncode == 65, result.stderr[-3000:]  # rejected rows; the rest failed retryable
    ledger = tmp_path / "state" / "ledger.sqlite"
    messages = [m for (m,) in sqlite3.connect(ledger).execute("SELECT last_error_message FROM transactions")
                if m]
    assert messages and all("Injected server error" in m for m in messages)
    blobs = everything_written(tmp_path, result)
    del blobs[str(ledger.relative_to(tmp_path))]
    blobs["ledger"] = ledger_values(ledger, skip=("transactions.checkout",))
    personal = ("sam.jones", "ada.price", "noah.hill", "Jones", "Price", "Grant", "7946", "900123",
                "900456", "1990-04-12")
    assert_nothing_leaks(blobs, set(), (API_KEY, API_SECRET, *personal))


class CrashingEchoPlatform:
    """A sink that fails with an unexpected error quoting the platform's answer: our key and every
    customer of the request (a bug's KeyError or a client library's error text does as much)."""

    async def submit(self, checkouts: Any, on_sending: Any, on_result: Any, *, stop: Any = None) -> None:
        customers = ",".join(str(c["customer_id"]) for c in checkouts if c.get("customer_id"))
        raise RuntimeError(f"unexpected answer to api_key={ECHOED_KEY}: unknown members [{customers}]")

    async def aclose(self) -> None:
        return None


def test_an_error_quoting_the_request_that_stops_a_run_is_masked_everywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The run stops with that error (exit 70): summary.json, the run's row, the run_failed problem
    (and its log line), the exit's message: none shows the key or a raw customer id."""
    from datetime import date

    from pipeline.cli import _fatal
    from pipeline.config import Feed, Settings
    from pipeline.logs import register_secret, shown
    from pipeline.problem_commands import problems_command
    from pipeline.runner import run_feed

    register_secret(ECHOED_KEY)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE / FILES[1], folder / FILES[1])
    feed = Feed.model_validate({
        "name": "echo", "timezone": "Europe/London", "validation": {"currencies": ["GBP"]},
        "source": {"kind": "local", "path": str(folder), "readiness": "none",
                   "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
    })
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError) as caught:
        run_feed(feed, settings, business_dates=[date(2026, 11, 20)],
                 make_sink=lambda feed: CrashingEchoPlatform())
    _fatal(f"posfeed: internal error: {shown(caught.value)}", 70, caught.value)  # as main() does
    problems_command(settings, feed=None, include_resolved=False, resolve=None, as_json=True)
    out = capsys.readouterr()
    (run_failed,) = [p for p in json.loads(out.out) if p["kind"] == "run_failed"]
    assert "unexpected answer to api_key=***: unknown members [cust:" in run_failed["summary"]
    blobs = {"stderr": out.err.encode(), "problems --json": out.out.encode(),
             "log": "\n".join(r.getMessage() for r in caplog.records).encode(),
             "ledger": ledger_values(tmp_path / "state" / "ledger.sqlite", skip=("transactions.checkout",))}
    blobs |= {str(p): p.read_bytes() for p in (tmp_path / "reports").rglob("*") if p.is_file()}
    assert any(name.endswith("summary.json") for name in blobs)
    assert_nothing_leaks(blobs, customer_ids(folder, FILES[1:2]), (ECHOED_KEY,))


class UnavailableEchoPlatform(CrashingEchoPlatform):
    """As :class:`CrashingEchoPlatform`, with posfeed's own error for a platform gone (exit 75)."""

    async def submit(self, checkouts: Any, on_sending: Any, on_result: Any, *, stop: Any = None) -> None:
        from pipeline.errors import PlatformUnavailableError

        customers = ",".join(str(c["customer_id"]) for c in checkouts if c.get("customer_id"))
        raise PlatformUnavailableError(f"the platform went away answering: unknown members [{customers}]")


@pytest.mark.parametrize("platform", [CrashingEchoPlatform, UnavailableEchoPlatform])
def test_a_scheduled_or_multi_feed_run_stopped_by_such_an_error_shows_it_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, platform: type) -> None:
    """`posfeed schedule`'s line for a failed or crashed run (and its traceback) and `posfeed run`
    of every feed (its errors in --json and its exit line) tell the error masked."""
    import threading
    from datetime import date

    from pipeline.config import load_feed
    from pipeline.run_commands import run_command
    from pipeline.scheduling import run_feed_job

    folder = tmp_path / "in"
    (tmp_path / "feeds").mkdir()
    for name in ("one", "two"):  # a folder each: two scopes reading one folder are refused
        (folder / name).mkdir(parents=True)
        shutil.copy(SAMPLE / FILES[1], folder / name / FILES[1])
        source = {"kind": "local", "path": str(folder / name), "readiness": "none", "after_success": "keep",
                  "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"}
        sections = {"source": source, "target": {"check_credentials": False},
                    "validation": {"currencies": ["GBP"]}}
        write_feed(tmp_path / "feeds" / f"{name}.toml", sections, timezone="Europe/London", dedup_scope=name)
    monkeypatch.setenv("ANTAVO_API_KEY", "key-of-the-crashing-platform")
    monkeypatch.setenv("ANTAVO_API_SECRET", "secret-of-the-crashing-platform")
    monkeypatch.setattr("pipeline.runner._default_sink_factory", lambda feed: platform())
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path / "feeds",
                        reports_dir=tmp_path / "reports")
    with caplog.at_level(logging.INFO):
        run_feed_job(load_feed("one", settings.feeds_dir), settings, threading.Event(),
                     business_dates=[date(2026, 11, 20)])
    blobs = {"log": "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}" for r in caplog.records).encode()}
    assert b"unknown members [cust:" in blobs["log"]
    if platform is UnavailableEchoPlatform:
        run_command(settings, [], all_feeds=True, dry_run=False, business_dates=[date(2026, 11, 20)],
                    as_json=True)
        out = capsys.readouterr()
        assert "unknown members [cust:" in out.out
        blobs |= {"stdout": out.out.encode(), "stderr": out.err.encode()}
    assert_nothing_leaks(blobs, customer_ids(folder / "one", FILES[1:2]), ())


def test_messages_kept_in_clear_before_hashing_was_on_are_masked_by_the_next_run(tmp_path: Path) -> None:
    """A ledger whose error messages quote customer ids in clear (written while hashing was off, or
    by a version that did not mask them): the first run with hashing on masks them in every
    message the ledger keeps (each transaction's last one, each run's at its end)."""
    from datetime import date

    from pipeline.config import Feed
    from pipeline.runner import run_feed

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE / FILES[1], folder / FILES[1])
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")

    def feed(hashing: bool) -> Feed:
        return Feed.model_validate({
            "name": "echo", "timezone": "Europe/London", "validation": {"currencies": ["GBP"]},
            "source": {"kind": "local", "path": str(folder), "readiness": "none",
                       "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
            "logging": {"hash_customer_ids": hashing},
        })

    def messages() -> list[str]:
        db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
        try:
            return [m for (m,) in db.execute(
                "SELECT last_error_message FROM transactions UNION ALL "
                "SELECT error_message_at_end FROM run_transactions") if m]
        finally:
            db.close()

    ids = customer_ids(folder, FILES[1:2])
    day = [date(2026, 11, 20)]
    run_feed(feed(False), settings, business_dates=day, make_sink=lambda f: EchoingPlatform())
    assert [m for m in messages() if any(i in m for i in ids)]  # the old rows, in clear

    run_feed(feed(True), settings, business_dates=day, make_sink=lambda f: EchoingPlatform())

    from pipeline.logs import mask_customer_id

    kept = messages()
    assert not [m for m in kept if any(i in m for i in ids)]
    assert any(f"Customer {mask_customer_id(i)} not found" in m for m in kept for i in ids)


PASSPHRASE = "pä$$'phrase\\7c1e"  # spelled differently as str and bytes repr: both are searched


def _spelled(secret: str) -> set[bytes]:
    """``secret`` as a log line could hold it: as written, and as a str or bytes repr shows it."""
    return {secret.encode(), repr(secret)[1:-1].encode(), repr(secret.encode())[2:-1].encode()}


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", ["-vv", "-vvv"])
def test_sftp_logins_at_debug_levels_leak_no_password_passphrase_or_key(
    tmp_path: Path, sftp_server: SftpServer, sftp_password_user: SftpUser,
    sandbox_with_secrets: SandboxServer, verbosity: str,
) -> None:
    """Two feeds fetch over SFTP, one with a password, one with a key locked by a passphrase, with
    paramiko's own lines in the log (-vv: its info lines; -vvv: its debug lines, banner and all):
    neither secret nor any line of the private key reaches stderr, stdout, reports or state."""
    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", str(key)], check=True)
    authorized = sftp_server.workdir / "authorized_keys"
    original = authorized.read_text()
    authorized.write_text(original + key.with_suffix(".pub").read_text())
    key_lines = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    home = sftp_password_user.home / f"logins{verbosity}"  # its own folder: the home is shared
    home.mkdir(exist_ok=True)
    home.chmod(0o755)
    shutil.copy(SAMPLE / FILES[1], home / FILES[1])
    (home / FILES[1]).chmod(0o644)
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    keyed.chmod(0o777)
    shutil.copy(SAMPLE / FILES[1], keyed / FILES[1])
    (keyed / FILES[1]).chmod(0o644)
    (tmp_path / "feeds").mkdir()
    known_hosts = sftp_server.write_known_hosts(tmp_path / "known_hosts")
    sandbox = sandbox_with_secrets
    target = {"kind": "antavo", "base_url": sandbox.url, "region": sandbox.config.region,
              "api_key_env": "LEAK_ANTAVO_KEY", "api_secret_env": "LEAK_ANTAVO_SECRET",
              "requests_per_minute": 60000}
    common = {"kind": "sftp", "host": sftp_server.host, "port": sftp_server.port,
              "known_hosts_file": str(known_hosts), "readiness": "none",
              "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"}
    sources = {
        "by_password": {**common, "username": sftp_password_user.name, "password_env": "LEAK_SFTP_PASSWORD",
                        "path": str(home)},
        "by_key": {**common, "username": sftp_server.user, "private_key_file": str(key),
                   "private_key_passphrase_env": "LEAK_SFTP_PASSPHRASE", "path": str(keyed)},
    }
    for name, source in sources.items():
        write_feed(tmp_path / "feeds" / f"{name}.toml", {"source": source, "target": target,
                                                          "validation": {"currencies": ["GBP"]}},
                   timezone="Europe/London")
    password = sftp_password_user.password or ""
    env = {**os.environ, "LEAK_SFTP_PASSWORD": password, "LEAK_SFTP_PASSPHRASE": PASSPHRASE,
           "LEAK_ANTAVO_KEY": API_KEY, "LEAK_ANTAVO_SECRET": API_SECRET}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", verbosity, "--log-format", "text",
             "--state-dir", str(tmp_path / "state"), "--feeds-dir", str(tmp_path / "feeds"),
             "--reports-dir", str(tmp_path / "reports"), "run", "--feed", "by_password", "--feed", "by_key",
             "--business-date", "2026-11-20", "--json"],
            env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        authorized.write_text(original)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "paramiko" in result.stderr  # its lines are there to be searched
    runs = json.loads(result.stdout)["runs"]
    assert len(runs) == 2 and all(run["bytes_fetched"] > 0 for run in runs)  # both logins fetched
    blobs = everything_written(tmp_path, result)
    for secret in (password, PASSPHRASE, *key_lines):
        for spelling in _spelled(secret):
            leaks = [name for name, blob in blobs.items() if spelling in blob]
            assert leaks == [], f"{spelling[:12]!r}... found in {leaks}"


def test_rejected_lines_kept_in_clear_before_hashing_was_on_are_masked_by_the_next_run(
        tmp_path: Path) -> None:
    """Rejected lines the ledger kept with their customer id in clear (written while hashing was
    off, or by a version that did not mask them): the first run with hashing on masks the id in
    each kept line and in its reason, as a run with hashing on writes them."""
    from datetime import date

    from pipeline.config import Feed
    from pipeline.logs import mask_customer_id
    from pipeline.runner import run_feed

    folder = tmp_path / "in"
    folder.mkdir()
    # a bad number ("2.4O"): a rejected line, here with a customer
    text = (SAMPLE / FILES[0]).read_text(encoding="utf-8")
    bad = "sale,1,100802,Reusable bag,services,2,2.4O"
    (folder / FILES[0]).write_text(text.replace(f"2026-11-20,,{bad}", f"2026-11-20,M999001,{bad}"),
                                   encoding="utf-8")
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")

    def feed(hashing: bool) -> Feed:
        return Feed.model_validate({
            "name": "rejects", "timezone": "Europe/London", "validation": {"currencies": ["GBP"]},
            "source": {"kind": "local", "path": str(folder), "readiness": "none",
                       "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
            "logging": {"hash_customer_ids": hashing},
        })

    def kept() -> list[tuple[str, str]]:
        db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
        try:
            return [(original, reason or "") for original, reason in db.execute(
                "SELECT original, reason FROM rejects")]
        finally:
            db.close()

    ids = customer_ids(folder, FILES[:1])
    day = [date(2026, 11, 20)]
    run_feed(feed(False), settings, business_dates=day, make_sink=lambda f: EchoingPlatform())
    before = kept()
    assert [o for o, _ in before if any(i in o for i in ids)]  # the old rows, in clear

    run_feed(feed(True), settings, business_dates=day, make_sink=lambda f: EchoingPlatform())

    after = kept()
    assert len(after) == len(before)
    assert not [row for row in after if any(i in text for i in ids for text in row)]
    masked = {json.loads(o)["customer_id"] for o, _ in after} - {""}
    assert masked and masked <= {mask_customer_id(i) for i in ids}


class NotSentEchoPlatform:
    """Refuses each checkout for good quoting its customer id (not sent: never sent again, so the
    stored checkout keeps no id a resend needs)."""

    async def submit(self, checkouts: Any, on_sending: Any, on_result: Any, *, stop: Any = None) -> None:
        from pipeline.sinks.base import EventResult, Outcome

        await on_sending([c["transaction_id"] for c in checkouts])
        for checkout in checkouts:
            on_result(EventResult(checkout["transaction_id"], Outcome.NOT_SENT, error_code="404",
                                  error_message=f"Customer {checkout['customer_id']} not found"))

    async def aclose(self) -> None:
        return None


def test_a_run_with_hashing_on_leaves_no_clear_id_anywhere_in_the_ledger(
        tmp_path: Path, ledger_location: Path | str) -> None:
    """Runs with hashing off keep customer ids in clear: a stopped run in its summary and its
    run_failed problem, a refusing platform in the messages, and older versions in an alert's
    payload and last error, a file's error (quoted content) and the messages of a checkout they
    masked (SQL and the ledger's own calls, as those versions wrote them). The next run with
    hashing on leaves none: not in any byte of the ledger (SQLite: the file and its WAL;
    PostgreSQL: every text column of every table), not in its reports."""
    from datetime import date

    from pipeline.config import Feed
    from pipeline.ledger import Ledger
    from pipeline.logs import mask_customer_id
    from pipeline.runner import run_feed
    from tests.ledger_backends import stored_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE / FILES[1], folder / FILES[1])
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports",
                        ledger_url=None if isinstance(ledger_location, Path) else ledger_location)

    def feed(hashing: bool) -> Feed:
        return Feed.model_validate({
            "name": "echo", "timezone": "Europe/London", "validation": {"currencies": ["GBP"]},
            "source": {"kind": "local", "path": str(folder), "readiness": "none", "after_success": "keep",
                       "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
            "logging": {"hash_customer_ids": hashing},
        })

    ids = customer_ids(folder, FILES[1:2])
    first, second, *_ = sorted(ids)
    day = [date(2026, 11, 20)]
    with pytest.raises(RuntimeError):  # stopped: its summary and a run_failed problem quote them
        run_feed(feed(False), settings, business_dates=day, make_sink=lambda f: CrashingEchoPlatform())
    run_feed(feed(False), settings, business_dates=day, make_sink=lambda f: NotSentEchoPlatform())
    with Ledger(settings.ledger_location) as ledger:  # as older versions wrote them
        db = ledger._db
        (problem_id, run_id) = db.query("SELECT id, opened_run_id FROM problems WHERE kind = 'run_failed'")[0]
        db.execute("INSERT INTO alert_outbox (problem_id, feed, scope, event, payload, created_at, "
                   "next_attempt_at, last_error) VALUES (?, 'echo', 'echo', 'opened', ?, ?, ?, ?)",
                   (problem_id, json.dumps({"text": f"unknown members [{first},{second}]"}, sort_keys=True),
                    "2026-11-20T10:00:00+00:00", "2999-01-01T00:00:00+00:00", f"webhook refused {first}"))
        broken = ledger.register_file(run_id, scope="echo", feed="echo", name="pos_LON01.xml", size=1,
                                      mtime=1.0, sha256="e" * 64)
        ledger.mark_file_unreadable(broken.id, f"not XML: <!-- member {second} -->")
        customer = db.json_text("checkout", "customer_id")
        (row_id, clear) = db.query(f"SELECT id, {customer} FROM transactions WHERE last_error_message LIKE ? "
                                   "ORDER BY id", (f"%{first}%",))[0]
        db.execute(f"UPDATE transactions SET checkout = {db.json_set_text('checkout', 'customer_id')} "
                   "WHERE id = ?", (mask_customer_id(clear), row_id))
    kept = stored_bytes(ledger_location)
    assert [i for i in ids if i.encode() in kept]

    summary = run_feed(feed(True), settings, business_dates=day, make_sink=lambda f: NotSentEchoPlatform())

    kept = stored_bytes(ledger_location)
    assert sorted(i for i in ids if i.encode() in kept) == []
    assert f"Customer {mask_customer_id(first)} not found".encode() in kept
    assert summary.reports_path is not None
    reports = {str(p): p.read_bytes() for p in summary.reports_path.rglob("*") if p.is_file()}
    assert reports
    assert_nothing_leaks(reports, ids, ())
