"""Credentials first: one cheap call proves that the target accepts our credentials before a run
touches any file.

* **Antavo**: a signed ``POST /events/bulk`` whose body is the empty document ``{}``. The platform
  authenticates a request before it reads the body, so 401/403 means our credentials were refused
  (its message tells a bad key, "Invalid Escher key", from a bad secret, "The signatures do not
  match") and any other answer (400 for the empty body) proves them. The body holds no event:
  nothing is recorded. With ``auth = "api_key"`` the key goes in the query instead.
* **CRM.COM**: the token call (``authentication/token`` or ``authentication/web_api_key/token``),
  which every later call needs anyway.

A missing secret raises :class:`~pipeline.errors.SecretError` before any request. A refusal raises
:class:`~pipeline.errors.CredentialsRefusedError` (exit 78) with the platform's reason and what to
check; a 404 means ``target.base_url`` is wrong (:class:`~pipeline.errors.ConfigError`, 78). No
answer, 429 or 5xx are retried with the target's backoff up to ``max_attempts`` times, then raise
:class:`~pipeline.errors.PlatformUnavailableError` (exit 75) saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from pipeline.config import AntavoTarget, CrmcomTarget, Feed
from pipeline.errors import ConfigError, CredentialsRefusedError, PlatformUnavailableError
from pipeline.logs import counted
from pipeline.sinks.delivery import DeliveryPolicy
from pipeline.sinks.http import HttpClient, HttpError, HttpTimeout

__all__ = ["ProbeAnswer", "probe_credentials", "resolve_credentials"]

log = logging.getLogger(__name__)

PROBE_PATH = "/events/bulk"
PROBE_BODY = b"{}"

# Escher's messages (the reference server's wording) and what they mean for the feed's settings
_ANTAVO_HINTS = (
    ("invalid escher key", "the API key is unknown to the platform: check {key}"),
    ("signatures do not match", "the API secret does not match the key: check {secret}"),
    ("not within the accepted time range", "this machine's clock is off: synchronize it (NTP)"),
    ("credential scope is invalid", "target.region does not match the platform's region"),
    ("invalid api key", "the API key is unknown to the platform: check {key}"),
    ("signature is required", "the platform only accepts signed requests: set target.auth = \"signed\""),
)


@dataclass(frozen=True)
class ProbeAnswer:
    """One attempt's answer: an HTTP status (None: no answer) and a short reason."""

    status: int | None
    reason: str
    retry_after: float | None = None


def resolve_credentials(feed: Feed) -> None:
    """Read the target's secrets without a request (raises SecretError when one is missing)."""
    target = feed.target
    if isinstance(target, AntavoTarget):
        from pipeline.sinks import antavo_credentials

        antavo_credentials(feed)
    elif isinstance(target, CrmcomTarget):
        from pipeline.sinks.crmcom import Credentials

        Credentials.resolve(target, feed.resolve_path)


def probe_credentials(feed: Feed, *, rng: random.Random | None = None) -> None:
    """Prove the feed's target credentials with one cheap call (see the module docstring)."""
    target = feed.target
    if isinstance(target, AntavoTarget):
        attempt = _antavo_attempt(feed, target)
    elif isinstance(target, CrmcomTarget):
        attempt = _crmcom_attempt(feed, target)
    else:  # pragma: no cover - the config allows no other kind
        raise ConfigError(f"no credential check for target kind {target.kind!r}", key="target.kind")
    asyncio.run(_probe(feed, attempt, DeliveryPolicy.from_target(target), rng or random.Random()))


Attempt = Callable[[HttpClient], Awaitable["ProbeAnswer | None"]]  # None: the credentials are good


async def _probe(feed: Feed, attempt: Attempt, policy: DeliveryPolicy, rng: random.Random) -> None:
    client = HttpClient(timeout_seconds=policy.timeout_seconds, max_connections=1)
    answer: ProbeAnswer | None = None
    try:
        for number in range(1, policy.max_attempts + 1):
            answer = await attempt(client)
            if answer is None:
                log.info("%s: %s accepted our credentials", feed.name, feed.target.base_url)
                return
            if number < policy.max_attempts:
                delay = policy.backoff(number, answer.retry_after, rng)
                log.info("%s: credential check: %s; attempt %d of %d in %.2fs", feed.name, answer.reason,
                         number + 1, policy.max_attempts, delay)
                await asyncio.sleep(delay)
    finally:
        await client.aclose()
    assert answer is not None
    raise PlatformUnavailableError(
        f"{feed.target.base_url} cannot be reached: {answer.reason} "
        f"(credential check, {counted(policy.max_attempts, 'attempt')}); nothing was read or recorded: "
        "the next run tries again"
    )


async def _send(client: HttpClient, method: str, url: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes] | ProbeAnswer:
    try:
        reply = await client.request(method, url, headers=headers, body=body)
    except HttpTimeout as exc:
        return ProbeAnswer(None, f"no answer in time ({exc.kind})")
    except HttpError as exc:
        return ProbeAnswer(None, f"connection failed ({exc})")
    return reply.status, dict(reply.headers), reply.body


def _transient(status: int, headers: dict[str, str]) -> ProbeAnswer | None:
    from pipeline.sinks.delivery import parse_retry_after

    if status in (408, 425, 429) or status >= 500:
        retry_after = parse_retry_after(next((v for k, v in headers.items() if k.lower() == "retry-after"),
                                             None))
        return ProbeAnswer(status, f"HTTP {status}", retry_after)
    return None


def _antavo_attempt(feed: Feed, target: AntavoTarget) -> Attempt:
    from pipeline.sinks import antavo_credentials
    from pipeline.sinks.antavo import CONTENT_TYPE, USER_AGENT
    from pipeline.sinks.escher import EscherSigner, antavo_config

    api_key, secret = antavo_credentials(feed)
    url = target.base_url.rstrip("/") + PROBE_PATH
    names = {"key": f"target.api_key_env ({target.api_key_env})",
             "secret": "target.api_secret_file" if target.api_secret_file
             else f"target.api_secret_env ({target.api_secret_env})"}

    async def attempt(client: HttpClient) -> ProbeAnswer | None:
        headers = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT}
        if target.auth == "signed" and secret is not None:
            signer = EscherSigner(antavo_config(target.region), api_key, secret,
                                  clock=lambda: datetime.now(UTC), date_style=target.date_style)
            request_url, headers = url, dict(signer.sign("POST", url, PROBE_BODY, headers).headers)
        else:
            request_url = url + "?api_key=" + quote(api_key, safe="")
        answer = await _send(client, "POST", request_url, headers, PROBE_BODY)
        if isinstance(answer, ProbeAnswer):
            return answer
        status, reply_headers, body = answer
        if (transient := _transient(status, reply_headers)) is not None:
            return transient
        if status in (401, 403):
            code, message = _antavo_error(body)
            hint = next((h for needle, h in _ANTAVO_HINTS if needle in message.lower()),
                        "check the API key and secret")
            raise CredentialsRefusedError(
                f"{target.base_url} refused our credentials (HTTP {status}, code {code}: {message}): "
                + hint.format(**names), key="target")
        if status == 404:
            raise ConfigError(f"{target.base_url} answered 404 for {PROBE_PATH}: is the address right?",
                              key="target.base_url")
        return None

    return attempt


def _antavo_error(body: bytes) -> tuple[str, str]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "?", body[:200].decode("utf-8", "replace")
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        error = document if isinstance(document, dict) else {}
    return str(error.get("code", "?")), str(error.get("message", ""))


def _crmcom_attempt(feed: Feed, target: CrmcomTarget) -> Attempt:
    from pipeline.sinks.crmcom import AuthenticationFailed, Credentials, TokenProvider

    credentials = Credentials.resolve(target, feed.resolve_path)
    what = ("target.web_api_key_env / web_api_key_file" if target.auth == "web_api_key"
            else "target.username_env, password_env and organisation_env")

    async def attempt(client: HttpClient) -> ProbeAnswer | None:
        tokens = TokenProvider(target, credentials)
        try:
            await tokens.token(client)
        except AuthenticationFailed as exc:
            failure = exc.failure
            if failure.status is None or failure.status == 429 or failure.status >= 500:
                return ProbeAnswer(failure.status, failure.message, failure.retry_after)
            raise CredentialsRefusedError(
                f"{target.base_url} refused our credentials ({failure.code}: {failure.message}): "
                f"check {what}", key="target") from None
        finally:
            tokens.forget()  # the probe's token is not used again
        return None

    return attempt
