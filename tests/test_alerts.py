"""Webhook alerts: the decision, and delivery to a real local HTTP receiver."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.alerts import alert_payload, alert_reasons, notify, send_alert
from pipeline.config import AlertsConfig, Feed
from pipeline.errors import LockHeldError, PlatformUnavailableError
from pipeline.logs import REDACTED, register_secret

CLEAN = {
    "run_id": "20261120T023000Z-abcd", "rows_in": 100, "rows_rejected": 2, "accepted": 40,
    "failed_retryable": 0, "failed_permanent": 0, "in_doubt": 0, "balanced": True, "exit_code": 0,
}


def summary(**changes: Any) -> dict[str, Any]:
    return {**CLEAN, **changes}


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 that keeps what it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.received.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                self.send_response(receiver.status)
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


# ---- decision -------------------------------------------------------------------------------------


def test_a_clean_run_raises_no_alert() -> None:
    assert alert_reasons(AlertsConfig(), summary()) == []


@pytest.mark.parametrize(
    ("changes", "reasons"),
    [
        ({"failed_permanent": 1}, ["failed"]),
        ({"balanced": False}, ["failed"]),
        ({"failed_retryable": 3}, ["retryable"]),
        ({"in_doubt": 1}, ["retryable"]),
        ({"rows_rejected": 6}, ["rejects_over_threshold"]),
        ({"rows_rejected": 5}, []),  # exactly 5% is not more than the 5% threshold
        ({"rows_in": 0, "rows_rejected": 0}, []),
        ({"failed_permanent": 1, "failed_retryable": 1, "rows_rejected": 50},
         ["failed", "retryable", "rejects_over_threshold"]),
    ],
)
def test_reasons_from_the_summary(changes: dict[str, Any], reasons: list[str]) -> None:
    assert alert_reasons(AlertsConfig(), summary(**changes)) == reasons


def test_a_raised_error_is_a_failure_but_a_held_lock_is_not() -> None:
    assert alert_reasons(AlertsConfig(), None, error=PlatformUnavailableError("down")) == ["failed"]
    assert alert_reasons(AlertsConfig(), None, error=LockHeldError("acme", "pid 1")) == []


def test_switches_turn_reasons_off() -> None:
    config = AlertsConfig(on_failure=False, on_retryable=False, reject_share_threshold=1,
                          on_missing_files=False)
    bad = summary(failed_permanent=1, failed_retryable=1, rows_rejected=100)
    assert alert_reasons(config, bad, missing_files=[{"status": "missing"}]) == []


def test_missing_files_alert_but_late_ones_do_not() -> None:
    assert alert_reasons(AlertsConfig(), summary(), missing_files=[{"status": "late"}]) == []
    assert alert_reasons(AlertsConfig(), summary(), missing_files=[{"status": "missing"}]) == [
        "missing_files"
    ]


def test_payload_masks_secrets_in_the_error() -> None:
    register_secret("s3cr3t-api-value")
    error = PlatformUnavailableError("POST failed with Authorization: Bearer s3cr3t-api-value")
    payload = alert_payload(feed_with(), ["failed"], None, error=error)
    assert "s3cr3t-api-value" not in json.dumps(payload)
    assert payload["exit_code"] == 75
    assert payload["feed"] == "acme_daily" and payload["scope"] == "acme"
    assert REDACTED in payload["error"]


# ---- delivery to a real receiver -------------------------------------------------------------------


def test_notify_posts_the_summary(receiver: Receiver) -> None:
    missing = [{"status": "missing", "store_id": "BER01", "hour": 14}, {"status": "late"}]
    reasons = notify(feed_with(receiver.url), summary(failed_retryable=2), missing_files=missing)
    assert reasons == ["retryable", "missing_files"]
    (body,) = receiver.received
    assert body["reasons"] == ["retryable", "missing_files"]
    assert body["run_id"] == CLEAN["run_id"]
    assert body["summary"]["failed_retryable"] == 2
    assert body["missing_files"] == [{"status": "missing", "store_id": "BER01", "hour": 14}]
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_notify_reads_the_url_from_the_environment(receiver: Receiver,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSFEED_TEST_HOOK", receiver.url)
    feed = Feed.model_validate({"name": "f", "alerts": {"webhook_url_env": "POSFEED_TEST_HOOK"}})
    assert notify(feed, None, error=PlatformUnavailableError("down")) == ["failed"]
    assert receiver.received[0]["error"] == "PlatformUnavailableError: down"
    assert receiver.received[0]["summary"] is None


def test_no_alert_for_clean_runs_dry_runs_or_without_a_url(receiver: Receiver) -> None:
    assert notify(feed_with(receiver.url), summary()) == []
    assert notify(feed_with(receiver.url), summary(failed_permanent=1), dry_run=True) == []
    assert notify(feed_with(None), summary(failed_permanent=1)) == []
    assert receiver.received == []


def test_a_failing_webhook_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(status=500) as failing:
        with caplog.at_level(logging.INFO, logger="pipeline.alerts"):
            assert send_alert(failing.url, {"reasons": ["failed"]}) is False
        assert len(failing.received) == 1
    assert "HTTP 500" in caplog.text
    # the receiver is gone now: connection refused
    with caplog.at_level(logging.INFO, logger="pipeline.alerts"):
        assert send_alert(failing.url, {"reasons": ["failed"]}, timeout=2) is False
        assert notify(feed_with(failing.url), summary(failed_permanent=1)) == ["failed"]
    assert "unreachable" in caplog.text
    # the webhook's token never reaches the log (only scheme, host and port are named)
    assert "hooktoken123" not in caplog.text


# ---- from a real run ---------------------------------------------------------------------------------


def test_a_run_alerts_with_its_summary_and_missing_files(tmp_path: Any, sandbox_env: Any,
                                                         receiver: Receiver) -> None:
    import shutil
    from datetime import date
    from pathlib import Path

    from pipeline.config import Settings
    from pipeline.runner import run_feed

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "acme"
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("pos_LON01_20261120_09.csv", "pos_LON01_20261120_11.csv"):  # 10 never arrived
        shutil.copy(sample / name, folder / name)
    feed = Feed.model_validate({
        "name": "alerting", "timezone": "Europe/London", "validation": {"currencies": ["GBP"]},
        "source": {"kind": "local", "path": str(folder), "readiness": "none",
                   "pattern": "pos_*_{business_date:%Y%m%d}_??.csv"},
        "target": {"kind": "antavo", "base_url": sandbox_env.url, "region": sandbox_env.config.region,
                   "requests_per_minute": 60000},
        "alerts": {"webhook_url": receiver.url, "reject_share_threshold": 0.001},
        "expected": {"stores": ["LON01"], "cadence": "hourly", "opening_hour": 9, "closing_hour": 12,
                     "pattern": "pos_{store_id}_{business_date:%Y%m%d}_{hour:02d}.csv"},
    })
    settings = Settings(state_dir=tmp_path / "state", feeds_dir=tmp_path, reports_dir=tmp_path / "reports")
    summary = run_feed(feed, settings, business_dates=[date(2026, 11, 20)])
    (body,) = receiver.received
    assert body["run_id"] == summary.run_id and body["feed"] == "alerting"
    assert body["reasons"] == ["rejects_over_threshold", "missing_files"]
    assert body["summary"]["rows_rejected"] == summary.to_dict()["rows_rejected"] > 0
    assert [(m["store_id"], m["hour"]) for m in body["missing_files"]] == [("LON01", 10)]
    # a dry run of the same feed never alerts
    run_feed(feed, settings, business_dates=[date(2026, 11, 20)], dry_run=True)
    assert len(receiver.received) == 1
