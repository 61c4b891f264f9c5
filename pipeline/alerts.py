"""Webhook alerts: one per problem event (opened, escalated, resolved), delivered from the ledger.

A run records its problem changes and the alerts they owe in one ledger transaction
(:meth:`pipeline.ledger.Ledger.apply_problems` with :func:`alert_for`); then
:func:`deliver_pending` posts what is due, retrying with backoff within a small time budget.
What could not be delivered stays in the ledger's outbox and is tried again by later runs of the
scope (its next attempt backs off up to an hour). Delivering an alert never raises: a webhook that
is down is logged and the run's own outcome stands.

The payload (docs/OPERATIONS.md) is :func:`pipeline.problems.alert_document`: problem id, kind,
level, feed, scope, store, business date, opened/escalated/resolved times, counts, what to do,
and a ready-made ``text`` for Slack or Teams incoming webhooks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from pipeline.config import AlertsConfig, Feed
from pipeline.ledger import Ledger
from pipeline.logs import log_event, redact, register_secret, told
from pipeline.problems import Problem, alert_document

__all__ = [
    "alert_for",
    "alerts_enabled",
    "deliver_pending",
    "register_url_secrets",
    "send_alert",
    "webhook_url",
]

logger = logging.getLogger(__name__)

# backoff between attempts inside one run, and before the next run's attempt
_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
_NEXT_RUN_BACKOFF_MAX = timedelta(hours=1)
_SECRET_PATH_CHARS = 12  # a webhook path this long is masked in logs on its own


def alerts_enabled(config: AlertsConfig) -> bool:
    """Whether the feed has a webhook at all."""
    return bool(config.webhook_url or config.webhook_url_env)


def _switched_on(config: AlertsConfig, problem: Problem) -> bool:
    level = problem.level
    if level == "failure":
        return config.on_failure
    if level == "retryable":
        return config.on_retryable
    if level == "missing_files":
        return config.on_missing_files
    if level == "conflicts":
        return config.on_conflicts
    return True  # rejects: the threshold is the switch


def alert_for(feed: Feed, run_id: str | None, *, now: datetime | None = None
              ) -> Callable[[Problem, str], dict[str, Any] | None]:
    """The payload maker :meth:`Ledger.apply_problems` calls: None when the feed sends no alert
    for this problem (no webhook, or its `on_*` switch is off)."""

    def make(problem: Problem, event: str) -> dict[str, Any] | None:
        if not alerts_enabled(feed.alerts) or not _switched_on(feed.alerts, problem):
            return None
        problem = _without_content(problem)
        doc = alert_document(problem, event, run_id=run_id, host=socket.gethostname(),
                             created_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"))
        for key in ("summary", "action", "text"):  # no secret leaves in an alert
            doc[key] = redact(str(doc[key]))
        return doc

    return make


# the kinds whose summary may quote an error's text, and the alert's words before it
_QUOTING_HEADS: Mapping[str, str] = {
    "platform_unreachable": "the {subject} platform could not be reached",
    "credentials_refused": "credentials refused",
    "run_failed": "the run stopped with an error",
}
# errors whose text posfeed writes alone, from the configuration (a setting, a variable, a file)
_OWN_WORDS = frozenset({"SecretError"})
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")


def _without_content(problem: Problem) -> Problem:
    """The problem as an alert tells it, with no text a file or a platform wrote: an unreadable
    file by its name and kind of fault; an error (a run that failed, a platform that could not be
    reached or refused our credentials) by its class name, unless it is a missing secret. The full
    text, which may quote a customer id or an e-mail address, stays in `posfeed problems`."""
    if problem.kind == "unreadable_file":
        reason = problem.counts.get("reason") or "unreadable"
        return replace(problem, summary=told(f"{problem.subject} cannot be read ({reason}); set aside in "
                                             f"quarantine (`posfeed problems` shows the full reason)"))
    head = _QUOTING_HEADS.get(problem.kind)
    if head is None:
        return problem
    if problem.kind != "run_failed" and int(problem.counts.get("transactions_failed") or 0) > 0:
        return problem  # told by error codes only (posfeed's, or the feed's credential codes)
    error = str(problem.counts.get("error") or "")
    if error in _OWN_WORDS:
        return problem
    name = error if _CLASS_NAME.fullmatch(error) else "error"
    return replace(problem, summary=told(f"{head.format(subject=problem.subject)} ({name}); "
                                         f"`posfeed problems` shows the full message"))


def webhook_url(config: AlertsConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The webhook URL (from ``webhook_url_env`` first), registered as a secret; None if unset."""
    env = os.environ if environ is None else environ
    if config.webhook_url_env:
        value = env.get(config.webhook_url_env)
        if value:
            register_url_secrets(value)
            return value
        logger.warning("alerts: environment variable %s is not set; no alert sent",
                       config.webhook_url_env)
        return None
    if config.webhook_url:
        register_url_secrets(config.webhook_url)
        return config.webhook_url
    return None


def register_url_secrets(url: str) -> None:
    """Mask a webhook URL in every spelling a log line may show it: as written, as the HTTP client
    normalizes it (lower-case host, no default port), and its password, path and query values on
    their own (a Slack or Teams URL carries its token in the path)."""
    register_secret(url)
    # not a URL the client takes: sending fails and says so, by host only
    with contextlib.suppress(Exception):
        register_secret(str(httpx.URL(url)))
    parts = urlsplit(url)
    # a short path ("/hook") is no secret, and masking it would blank it in every other URL logged
    path = parts.path if len(parts.path) >= _SECRET_PATH_CHARS else None
    for value in (parts.password, path, parts.query):
        if value:
            register_secret(value)
            register_secret(unquote(value))
    for _, value in parse_qsl(parts.query):
        register_secret(value)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def send_alert(url: str, payload: Mapping[str, Any], *, timeout: float = 10.0,
               transport: httpx.BaseTransport | None = None) -> str | None:
    """POST ``payload`` as JSON once; None on a 2xx answer, else why it failed. Never raises.

    The whole exchange takes at most ``timeout`` seconds: a webhook that trickles its answer a
    byte at a time (which no read timeout catches) is hung up on and counted as failed. Redirects
    are not followed (the URL's token never goes elsewhere): a 3xx is a failure.
    """
    outcome: list[str | None] = []
    client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def post() -> None:
        with client:
            outcome.append(_post(client, url, payload))

    worker = threading.Thread(target=post, name="posfeed-alert", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        # hang up: the worker's next read fails, so no connection is left open to the webhook
        with contextlib.suppress(Exception):
            client.close()
        return f"webhook {_where(url)} gave no complete answer within {timeout:g} s"
    return outcome[0]


def _post(client: httpx.Client, url: str, payload: Mapping[str, Any]) -> str | None:
    try:
        response = client.post(url, json=payload, headers={"User-Agent": "posfeed-alerts"})
    except httpx.HTTPError as exc:
        return f"webhook {_where(url)} unreachable: {type(exc).__name__}"
    except Exception as exc:  # an alert must never take the run down with it
        return f"sending to {_where(url)} failed: {type(exc).__name__}"
    if response.is_success:
        return None
    return f"webhook {_where(url)} answered HTTP {response.status_code}"


def deliver_pending(
    ledger: Ledger,
    feed: Feed,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Post the feed's due alerts in order; returns how many were delivered. Never raises.

    Only the alerts the feed made: the other feeds of its scope post theirs to their own webhooks.

    Each alert gets up to ``alerts.delivery_attempts`` attempts with backoff, all within
    ``alerts.delivery_budget_seconds``; when the webhook stays down the rest wait for a later run.
    Each is claimed in the ledger just before it is posted (:meth:`Ledger.claim_alert`): only
    while the scope's lock is held, and for the rest of the budget, so a run that lost its lock
    posts no more, and the run that holds it now does not post the one being posted again.
    """
    try:
        return _deliver(ledger, feed, transport=transport, sleep=sleep, clock=clock)
    except Exception:  # an alert must never take the run down with it
        logger.exception("alerts: feed %s: could not deliver alerts", feed.name)
        return 0


def _deliver(ledger: Ledger, feed: Feed, *, transport: httpx.BaseTransport | None,
             sleep: Callable[[float], None], clock: Callable[[], float]) -> int:
    config = feed.alerts
    if not alerts_enabled(config):
        return 0
    due = [item for item in ledger.pending_alerts(feed.scope,
                                                  due_by=datetime.now(UTC).isoformat(timespec="microseconds"))
           if item["payload"].get("feed") == feed.name]  # another feed's alerts go to its own webhook
    if not due:
        return 0
    url = webhook_url(config)
    if url is None:
        return 0
    deadline = clock() + config.delivery_budget_seconds
    delivered = 0
    for item in due:
        payload, error, ok = item["payload"], None, False
        # claimed for as long as this run may still post it: no other run posts it meanwhile
        lease = datetime.now(UTC) + timedelta(seconds=max(0.0, deadline - clock()) + config.timeout_seconds)
        until = lease.isoformat(timespec="microseconds")
        if not ledger.claim_alert(item["id"], item["next_attempt_at"], until):
            log_event(logger, "alert", f"alerts: feed {feed.name}: the scope's lock is lost or another run "
                      "posts its alerts; the rest are left to the run that holds it", level=logging.WARNING,
                      feed=feed.name, problem_id=payload.get("problem_id"), alert_event=payload.get("event"))
            break
        for attempt in range(config.delivery_attempts):
            remaining = deadline - clock()
            if remaining <= 0:
                break
            error = send_alert(url, payload, timeout=min(config.timeout_seconds, remaining),
                               transport=transport)
            if error is None:
                ok = True
                break
            if attempt + 1 < config.delivery_attempts:
                pause = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                sleep(min(pause, max(0.0, deadline - clock())))
        if ok:
            ledger.alert_delivered(item["id"])
            delivered += 1
            log_event(logger, "alert", f"alert sent: {payload.get('text')}", feed=payload.get("feed"),
                      problem_id=payload.get("problem_id"), alert_event=payload.get("event"),
                      kind=payload.get("kind"))
            continue
        tries = int(item["attempts"]) + 1
        wait = min(timedelta(minutes=2 ** min(tries, 6)), _NEXT_RUN_BACKOFF_MAX)
        ledger.alert_failed(item["id"], error or "no time left in this run",
                            (datetime.now(UTC) + wait).isoformat(timespec="microseconds"))
        log_event(logger, "alert", f"alerts: {error or 'no time left'}; problem #{payload.get('problem_id')} "
                  f"{payload.get('event')} alert is tried again by a later run (after {wait})",
                  level=logging.ERROR, feed=payload.get("feed"), problem_id=payload.get("problem_id"),
                  alert_event=payload.get("event"))
        break  # the webhook is down: the others wait too, in order
    return delivered
