"""Webhook alerts: POST a JSON summary when a run ends badly.

:func:`alert_reasons` decides (pure) from the run's summary (the `posfeed run --json` keys) or the
error that stopped it; :func:`send_alert` delivers with a timeout; :func:`notify` ties them to a
feed's `[alerts]` settings. Delivering an alert never raises: a webhook that is down is logged and
the run's own outcome stands.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import httpx

from pipeline.config import AlertsConfig, Feed
from pipeline.errors import LockHeldError, PosfeedError
from pipeline.logs import redact, register_secret

__all__ = [
    "alert_payload",
    "alert_reasons",
    "notify",
    "send_alert",
    "webhook_url",
]

logger = logging.getLogger(__name__)


def _int(summary: Mapping[str, Any], key: str) -> int:
    value = summary.get(key) or 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _reject_share(summary: Mapping[str, Any]) -> Decimal:
    rows_in = _int(summary, "rows_in")
    if rows_in <= 0:
        return Decimal(0)
    try:
        return Decimal(_int(summary, "rows_rejected")) / Decimal(rows_in)
    except InvalidOperation:
        return Decimal(0)


def alert_reasons(
    config: AlertsConfig,
    summary: Mapping[str, Any] | None,
    *,
    error: BaseException | None = None,
    missing_files: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """Why this run deserves an alert (empty: it does not). Pure.

    ``failed``: the run raised (a held lock is not a failure: another run is doing the work), left
    transactions the platform refused for good, or did not balance. ``retryable``: retryable
    failures or in-doubt transactions are left. ``rejects_over_threshold``: more than
    ``reject_share_threshold`` of the rows were rejected. ``missing_files``: expected files overdue.
    """
    reasons: list[str] = []
    if isinstance(error, LockHeldError):
        return reasons
    failed = error is not None
    if summary is not None:
        failed = failed or _int(summary, "failed_permanent") > 0 or summary.get("balanced") is False
    if failed and config.on_failure:
        reasons.append("failed")
    if (summary is not None and config.on_retryable
            and _int(summary, "failed_retryable") + _int(summary, "in_doubt") > 0):
        reasons.append("retryable")
    if summary is not None and _reject_share(summary) > Decimal(str(config.reject_share_threshold)):
        reasons.append("rejects_over_threshold")
    if config.on_missing_files and any(m.get("status") == "missing" for m in missing_files):
        reasons.append("missing_files")
    return reasons


def alert_payload(
    feed: Feed,
    reasons: Sequence[str],
    summary: Mapping[str, Any] | None,
    *,
    error: BaseException | None = None,
    missing_files: Sequence[Mapping[str, Any]] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The JSON document sent to the webhook (no secrets: the error text is masked)."""
    exit_code = None
    if error is not None:
        exit_code = error.exit_code if isinstance(error, PosfeedError) else 70
    elif summary is not None:
        exit_code = summary.get("exit_code")
    return {
        "feed": feed.name,
        "scope": feed.scope,
        "run_id": summary.get("run_id") if summary else None,
        "reasons": list(reasons),
        "exit_code": exit_code,
        "error": redact(f"{type(error).__name__}: {error}") if error is not None else None,
        "host": socket.gethostname(),
        "sent_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "summary": dict(summary) if summary is not None else None,
        "missing_files": [dict(m) for m in missing_files if m.get("status") == "missing"],
    }


def webhook_url(config: AlertsConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The webhook URL (from ``webhook_url_env`` first), registered as a secret; None if unset."""
    env = os.environ if environ is None else environ
    if config.webhook_url_env:
        value = env.get(config.webhook_url_env)
        if value:
            register_secret(value)
            return value
        logger.warning("alerts: environment variable %s is not set; no alert sent",
                       config.webhook_url_env)
        return None
    if config.webhook_url:
        register_secret(config.webhook_url)
        return config.webhook_url
    return None


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def send_alert(url: str, payload: Mapping[str, Any], *, timeout: float = 10.0,
               transport: httpx.BaseTransport | None = None) -> bool:
    """POST ``payload`` as JSON; True on a 2xx answer. Never raises: failures are logged."""
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.post(url, json=payload,
                                   headers={"User-Agent": "posfeed-alerts"})
    except httpx.HTTPError as exc:
        logger.error("alerts: webhook %s unreachable: %s", _where(url), type(exc).__name__)
        return False
    except Exception as exc:  # an alert must never take the run down with it
        logger.error("alerts: sending to %s failed: %s", _where(url), type(exc).__name__)
        return False
    if response.is_success:
        logger.info("alerts: sent to %s (%s)", _where(url), ", ".join(payload.get("reasons", [])))
        return True
    logger.error("alerts: webhook %s answered HTTP %d", _where(url), response.status_code)
    return False


def notify(
    feed: Feed,
    summary: Mapping[str, Any] | None,
    *,
    error: BaseException | None = None,
    missing_files: Sequence[Mapping[str, Any]] | None = None,
    dry_run: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> list[str]:
    """Alert the feed's webhook if the run deserves it; returns the reasons (empty: none sent).

    Dry runs never alert. ``missing_files`` defaults to ``summary["missing_files"]``. Never raises.
    """
    if dry_run:
        return []
    try:
        return _notify(feed, summary, error=error, missing_files=missing_files, transport=transport)
    except Exception:  # an alert must never take the run down with it
        logger.exception("alerts: feed %s: could not build or send the alert", feed.name)
        return []


def _notify(
    feed: Feed,
    summary: Mapping[str, Any] | None,
    *,
    error: BaseException | None,
    missing_files: Sequence[Mapping[str, Any]] | None,
    transport: httpx.BaseTransport | None,
) -> list[str]:
    config = feed.alerts
    if not (config.webhook_url or config.webhook_url_env):
        return []
    if missing_files is None:
        missing_files = list(summary.get("missing_files") or []) if summary else []
    reasons = alert_reasons(config, summary, error=error, missing_files=missing_files)
    if not reasons:
        return []
    url = webhook_url(config)
    if url is None:
        return reasons
    payload = alert_payload(feed, reasons, summary, error=error, missing_files=missing_files)
    send_alert(url, payload, timeout=config.timeout_seconds, transport=transport)
    return reasons
