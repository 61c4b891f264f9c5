"""Webhook alerts: the payload, the switches, and delivery (with retries, from the ledger's outbox)
to a real local HTTP receiver."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.alerts import alert_for, deliver_pending, send_alert
from pipeline.config import Feed, Settings
from pipeline.ledger import Ledger
from pipeline.logs import REDACTED, register_secret, setup_logging
from pipeline.problem_commands import problems_command
from pipeline.problems import Observation, reconcile

WAIT = 20.0  # generous bound for a thread to react; never a performance threshold


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 that keeps what it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.location: str | None = None
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.received.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/posfeed?token=hooktoken123"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def feed_with(url: str | None = None, **alerts: Any) -> Feed:
    return Feed.model_validate({"name": "acme_daily", "dedup_scope": "acme",
                                "alerts": {"webhook_url": url, **alerts}})


# ---- payloads and switches ------------------------------------------------------------------------


def observation(kind: str = "platform_unreachable", summary: str = "down") -> Observation:
    return Observation(kind=kind, key=f"{kind}|acme_daily", feed="acme_daily", scope="acme",
                       summary=summary, action="check the platform", counts={"transactions_failed": 3})


def open_one(ledger: Ledger, feed: Feed, obs: Observation | None = None) -> None:
    plan = reconcile(ledger.problems(), [obs or observation()], lambda p: True)
    ledger.apply_problems(plan, run_id="r1", alert=alert_for(feed, "r1"))


def resolve_all(ledger: Ledger, feed: Feed) -> None:
    ledger.apply_problems(reconcile(ledger.problems(), [], lambda p: True), run_id="r2",
                          alert=alert_for(feed, "r2"))


def test_the_payload_has_one_stable_shape_and_masks_secrets(tmp_path: Path) -> None:
    register_secret("s3cr3t-api-value")
    feed = feed_with("http://127.0.0.1:9/hook")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        open_one(ledger, feed, observation(summary="token s3cr3t-api-value refused"))
        (pending,) = ledger.pending_alerts("acme")
    payload = pending["payload"]
    assert payload["event"] == "opened" and payload["kind"] == "platform_unreachable"
    assert payload["level"] == "failure"  # an unreachable platform is a failure, not "retryable"
    assert payload["feed"] == "acme_daily" and payload["scope"] == "acme" and payload["run_id"] == "r1"
    assert payload["counts"] == {"transactions_failed": 3} and payload["action"] == "check the platform"
    assert payload["text"].startswith("[OPEN] ")  # (other tests may register "posfeed" as a secret)
    assert " problem #1 (platform_unreachable, feed acme_daily): " in payload["text"]
    assert "What to do: check the platform" in payload["text"]
    assert payload["version"] == 1 and payload["resolved_at"] is None
    assert "s3cr3t-api-value" not in json.dumps(payload) and REDACTED in payload["summary"]


@pytest.mark.parametrize(("switch", "kind"), [
    ("on_failure", "platform_unreachable"), ("on_retryable", "backlog"),
    ("on_missing_files", "missing_file"), ("on_conflicts", "conflicts"),
])
def test_switches_turn_a_level_off(tmp_path: Path, switch: str, kind: str) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        open_one(ledger, feed_with("http://127.0.0.1:9/hook", **{switch: False}), observation(kind))
        assert ledger.pending_alerts("acme") == []
        assert len(ledger.problems()) == 1  # still a problem: `posfeed problems` shows it


def test_no_alert_without_a_webhook(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        open_one(ledger, feed_with(None))
        assert ledger.pending_alerts("acme") == []


# ---- delivery to a real receiver -------------------------------------------------------------------


def test_opened_and_resolved_are_delivered_once_each(tmp_path: Path, receiver: Receiver) -> None:
    feed = feed_with(receiver.url)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        open_one(ledger, feed)
        assert deliver_pending(ledger, feed) == 1
        open_one(ledger, feed)  # observed again: no new alert
        assert deliver_pending(ledger, feed) == 0
        resolve_all(ledger, feed)
        assert deliver_pending(ledger, feed) == 1
        assert deliver_pending(ledger, feed) == 0
    assert [b["event"] for b in receiver.received] == ["opened", "resolved"]
    assert receiver.received[1]["text"].startswith("[RESOLVED]")
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_the_url_comes_from_the_environment(tmp_path: Path, receiver: Receiver,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSFEED_TEST_HOOK", receiver.url)
    feed = Feed.model_validate({"name": "acme_daily", "dedup_scope": "acme",
                                "alerts": {"webhook_url_env": "POSFEED_TEST_HOOK"}})
    with Ledger(tmp_path / "l.sqlite") as ledger:
        open_one(ledger, feed)
        assert deliver_pending(ledger, feed) == 1


def test_a_webhook_that_is_down_gets_the_alert_later(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    with Receiver(status=500) as failing:
        feed = feed_with(failing.url, delivery_attempts=3)
        with Ledger(tmp_path / "l.sqlite") as ledger, caplog.at_level(logging.INFO, logger="pipeline.alerts"):
            open_one(ledger, feed)
            assert deliver_pending(ledger, feed, sleep=sleeps.append) == 0  # never raises
            assert len(failing.received) == 3 and sleeps == [0.5, 1.0]  # retried with backoff
            (pending,) = ledger.pending_alerts("acme")
            assert pending["attempts"] == 1
            assert ledger.pending_alerts("acme", due_by="2000-01-01") == []  # backs off across runs
            # a later run, once the backoff has passed and the webhook answers
            ledger._db.execute("UPDATE alert_outbox SET next_attempt_at = '2000-01-01'")
            failing.status = 200
            assert deliver_pending(ledger, feed, sleep=sleeps.append) == 1
            assert ledger.pending_alerts("acme") == []
    assert "HTTP 500" in caplog.text
    assert "hooktoken123" not in caplog.text  # only scheme, host and port are named


def test_send_alert_says_why_and_never_raises() -> None:
    with Receiver() as gone:
        url = gone.url
    error = send_alert(url, {"event": "opened"}, timeout=2)
    assert error is not None and "unreachable" in error and "hooktoken123" not in error


# ---- webhooks that misbehave ----------------------------------------------------------------------


class Trickler:
    """A webhook on 127.0.0.1 that answers one byte at a time, never finishing its headers (as a
    stuck proxy may): each byte comes well within any read timeout, so only a deadline on the
    whole exchange ends it. ``serving`` stays set while it still trickles to a client."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook?token=hooktoken123"
        self.stop = threading.Event()
        self.serving = threading.Event()
        self.dropped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        self.serving.set()
        with conn:
            conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 100_000
            try:
                for byte in answer:
                    if self.stop.wait(0.05):
                        break
                    conn.sendall(bytes([byte]))
            except OSError:
                self.dropped.set()  # the client hung up

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_a_trickling_webhook_never_holds_the_run_past_its_budget(tmp_path: Path) -> None:
    with Trickler() as hook:
        # one attempt, a read timeout the trickle never trips: the deadline alone ends it
        error = send_alert(hook.url, {"event": "opened"}, timeout=0.5)
        assert error is not None and "no complete answer" in error and "hooktoken123" not in error
        assert hook.serving.is_set() and not hook.stop.is_set()  # it was still trickling
        assert hook.dropped.wait(WAIT)  # and the abandoned connection is closed, not left open
        feed = feed_with(hook.url, delivery_attempts=2, delivery_budget_seconds=1, timeout_seconds=5)
        with Ledger(tmp_path / "l.sqlite") as ledger:
            open_one(ledger, feed)
            assert deliver_pending(ledger, feed, sleep=lambda s: None) == 0
            (pending,) = ledger.pending_alerts("acme")  # kept for a later run
            assert pending["attempts"] == 1
        assert not hook.stop.is_set()  # the run went on while the webhook still trickled


def test_a_redirecting_webhook_is_not_followed_and_the_alert_waits(tmp_path: Path) -> None:
    with Receiver() as elsewhere, Receiver(status=302) as hook:
        hook.location = elsewhere.url
        feed = feed_with(hook.url, delivery_attempts=1)
        with Ledger(tmp_path / "l.sqlite") as ledger:
            open_one(ledger, feed)
            assert deliver_pending(ledger, feed) == 0
            assert len(ledger.pending_alerts("acme")) == 1
        assert len(hook.received) == 1 and elsewhere.received == []  # the token never goes elsewhere


def test_the_webhook_url_never_reaches_the_logs_however_the_client_spells_it(
        tmp_path: Path) -> None:
    """httpx logs each request's URL (at -vv) in its normalized spelling: lower-case host, no
    default port. Every spelling of the URL's secret parts is masked."""
    stream = io.StringIO()
    setup_logging("text", 3, stream=stream, rich_on_tty=False)
    with Receiver() as hook:
        port = hook.server.server_address[1]
        url = f"http://alerts:pw-Hook-9911@LOCALHOST:{port}/services/T0001/B0002/slackPathToken77"
        feed = feed_with(url, delivery_attempts=1)
        with Ledger(tmp_path / "l.sqlite") as ledger:
            open_one(ledger, feed)
            assert deliver_pending(ledger, feed) == 1
    text = stream.getvalue()
    assert "HTTP Request: POST" in text  # the client did log the request
    assert "slackPathToken77" not in text and "pw-Hook-9911" not in text


def test_each_feed_of_a_scope_delivers_only_its_own_alerts_to_its_own_webhook(tmp_path: Path) -> None:
    """Two feeds of one dedup scope, each with its own webhook: a run of one never posts the
    other's alerts (they wait for a run of their own feed)."""
    with Receiver() as hook_a, Receiver() as hook_b:
        a = feed_with(hook_a.url)
        b = Feed.model_validate({"name": "acme_hourly", "dedup_scope": "acme",
                                 "alerts": {"webhook_url": hook_b.url}})
        with Ledger(tmp_path / "l.sqlite") as ledger:
            obs_b = Observation(kind="platform_unreachable", key="platform_unreachable|acme_hourly",
                                feed="acme_hourly", scope="acme", summary="down", action="wait")
            plan = reconcile(ledger.problems(), [obs_b], lambda p: True)
            ledger.apply_problems(plan, run_id="r1", alert=alert_for(b, "r1"))
            assert deliver_pending(ledger, a) == 0  # not feed a's to send
            assert hook_a.received == []
            assert deliver_pending(ledger, b) == 1
        assert [p["feed"] for p in hook_b.received] == ["acme_hourly"]


def test_an_alert_the_webhook_refused_shows_in_posfeed_problems(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path / "feeds",
                        reports_dir=tmp_path / "reports")
    settings.state_dir.mkdir()
    with Receiver(status=500) as failing:
        feed = feed_with(failing.url, delivery_attempts=1)
        with Ledger(settings.ledger_location) as ledger:
            open_one(ledger, feed)
            assert deliver_pending(ledger, feed) == 0
    assert problems_command(settings, feed=None, include_resolved=False, resolve=None, as_json=True) == 0
    (row,) = json.loads(capsys.readouterr().out)
    waiting = row["alert_undelivered"]
    assert waiting["event"] == "opened" and waiting["attempts"] == 1
    assert "HTTP 500" in waiting["last_error"] and "hooktoken123" not in json.dumps(row)
    assert problems_command(settings, feed=None, include_resolved=False, resolve=None, as_json=False) == 0
    text = capsys.readouterr().out
    assert "#1: opened alert not delivered after 1 attempt" in text and "HTTP 500" in text


@pytest.mark.parametrize("now", ["removed", "without_webhook"])
def test_an_alert_no_run_can_deliver_is_told_and_dropped_when_its_problem_is_acknowledged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], now: str) -> None:
    """A feed removed from the feeds folder (or whose webhook was taken out) has alerts in the
    outbox no run will post: `posfeed problems` says so instead of promising a later run, and
    acknowledging the problem takes them out of the outbox with a log line."""
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path / "feeds",
                        reports_dir=tmp_path / "reports")
    settings.state_dir.mkdir()
    settings.feeds_dir.mkdir()
    if now == "without_webhook":
        (settings.feeds_dir / "acme_daily.toml").write_text('dedup_scope = "acme"\n', encoding="utf-8")
    with Receiver(status=500) as failing, Ledger(settings.ledger_location) as ledger:
        open_one(ledger, feed_with(failing.url, delivery_attempts=1))
        assert deliver_pending(ledger, feed_with(failing.url, delivery_attempts=1)) == 0
    assert problems_command(settings, feed=None, include_resolved=False, resolve=None, as_json=True) == 0
    (row,) = json.loads(capsys.readouterr().out)
    why = ("feed acme_daily is not in the feeds folder" if now == "removed"
           else "feed acme_daily has no webhook now")
    assert why in row["alert_undelivered"]["undeliverable"]
    assert problems_command(settings, feed=None, include_resolved=False, resolve=None, as_json=False) == 0
    text = capsys.readouterr().out
    assert "#1: opened alert not delivered after 1 attempt: webhook" in text
    assert why in text and "a run of feed acme_daily tries again" not in text
    assert "`posfeed problems --resolve 1`" in text

    assert problems_command(settings, feed=None, include_resolved=False, resolve=1, as_json=False) == 0
    said = capsys.readouterr().err
    with Ledger(settings.ledger_location) as ledger:
        assert ledger.pending_alerts("acme") == []
        assert [p.status for p in ledger.problems(open_only=False)] == ["resolved"]
    assert f"opened alert of problem #1 dropped: {why}" in said
