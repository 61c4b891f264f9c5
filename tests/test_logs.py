"""Logging: text and JSON lines on stderr, secrets and customer ids masked whatever the logger."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipeline.config import CrmcomTarget, Feed
from pipeline.logs import (
    REDACTED,
    feed_secret_env_names,
    log_event,
    mask_customer_id,
    redact,
    register_feed_secrets,
    register_secret,
    setup_logging,
)
from pipeline.sinks.crmcom import Credentials


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    setup_logging("text", 0, stream=io.StringIO())  # detach from the buffer


def test_text_lines_carry_level_logger_message_and_fields(stream: io.StringIO) -> None:
    setup_logging("text", 1, stream=stream)
    log_event(logging.getLogger("pipeline.runner"), "file", "file pos_1.csv read",
              file="pos_1.csv", rows=12, rejected=1)
    logging.getLogger("pipeline.runner").debug("hidden at -v")
    line = stream.getvalue().strip()
    assert "INFO pipeline.runner: file pos_1.csv read" in line
    assert "event=file file=pos_1.csv rows=12 rejected=1" in line
    assert "hidden" not in line


def test_json_lines_are_one_object_per_record(stream: io.StringIO) -> None:
    setup_logging("json", 2, stream=stream)
    log_event(logging.getLogger("pipeline.runner"), "run", "run finished", feed="acme", accepted=10)
    logging.getLogger("pipeline.x").debug("debug %s", "shown")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "run" and first["accepted"] == 10 and first["feed"] == "acme"
    assert first["level"] == "info" and first["logger"] == "pipeline.runner"
    assert first["msg"] == "run finished" and first["ts"].endswith("+00:00")
    assert second["msg"] == "debug shown"


def test_default_verbosity_shows_warnings_only(stream: io.StringIO) -> None:
    setup_logging("text", 0, stream=stream)
    logging.getLogger("pipeline.a").info("info line")
    logging.getLogger("pipeline.a").warning("warning line")
    assert "info line" not in stream.getvalue() and "warning line" in stream.getvalue()


def test_setup_twice_keeps_one_handler(stream: io.StringIO) -> None:
    setup_logging("text", 1, stream=stream)
    setup_logging("text", 1, stream=stream)
    logging.getLogger("pipeline.a").info("once")
    assert stream.getvalue().count("once") == 1


def test_registered_secrets_are_masked_in_message_args_extras_and_tracebacks(stream: io.StringIO) -> None:
    register_secret("hunter2-sftp-password")
    setup_logging("json", 2, stream=stream)
    log = logging.getLogger("pipeline.sources.sftp")
    log.info("login with %s", "hunter2-sftp-password")
    log.info("connect", extra={"detail": {"password": "hunter2-sftp-password"}})
    try:
        raise RuntimeError("auth failed for hunter2-sftp-password")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    assert "hunter2-sftp-password" not in text
    assert text.count(REDACTED) >= 3


@pytest.mark.parametrize(
    "raw",
    [
        "headers={'Authorization': 'EMS-HMAC-SHA256 Credential=key/20261120/eu/ems_request, "
        "SignedHeaders=host;x-ems-date, Signature=abcdef0123456789'}",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "POST https://api.example.com/events?api_key=k-123456&token=t-abcdef",
        '{"password": "pa55word!", "username": "ops"}',
        "sftp password=pa55word! user=ops",
        "x-api-key: abcd-efgh-ijkl",
    ],
)
def test_credential_shapes_are_masked_without_registration(raw: str) -> None:
    masked = redact(raw)
    for secret in ("abcdef0123456789", "eyJhbGciOiJIUzI1NiJ9", "k-123456", "t-abcdef", "pa55word!",
                   "abcd-efgh-ijkl"):
        assert secret not in masked
    assert REDACTED in masked


def test_ordinary_text_is_left_alone() -> None:
    text = "file pos_LON01_20261120_09.csv: 120 rows, 2 rejected (R002_BAD_NUMBER), amount 1234.50"
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "target.api_secret: environment variable ANTAVO_API_SECRET is not set",
        "feeds/acme.toml: target.api_key_env: environment variable ANTAVO_API_KEY is not set",
        "source.password_env: sftp://ops@sftp.example.com:22/out refused our credentials (password)",
        "source.private_key_passphrase_env: no environment variable or file configured",
    ],
)
def test_a_settings_name_and_its_error_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_feed_secrets_come_from_every_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    feed = Feed.model_validate({
        "name": "f",
        "source": {"kind": "sftp", "host": "h", "username": "u", "password_env": "T_SFTP_PASSWORD"},
        "target": {"kind": "antavo", "api_key_env": "T_ANTAVO_KEY", "api_secret_env": "T_ANTAVO_SECRET"},
        "alerts": {"webhook_url_env": "T_HOOK"},
    })
    assert {"T_SFTP_PASSWORD", "T_ANTAVO_KEY", "T_ANTAVO_SECRET", "T_HOOK"} <= feed_secret_env_names(feed)
    monkeypatch.setenv("T_SFTP_PASSWORD", "sftp-pw-7781")
    monkeypatch.setenv("T_ANTAVO_SECRET", "antavo-secret-9912")
    register_feed_secrets([feed])
    assert redact("a sftp-pw-7781 b antavo-secret-9912 c") == f"a {REDACTED} b {REDACTED} c"


def test_mask_customer_id() -> None:
    masked = mask_customer_id("LOY-0001234")
    assert masked.startswith("cust:") and len(masked) == 17
    assert masked == mask_customer_id("LOY-0001234")  # stable: lines of one customer can be followed
    assert masked != mask_customer_id("LOY-0001235")
    assert "0001234" not in masked
    assert mask_customer_id("LOY-0001234", enabled=False) == "LOY-0001234"
    assert mask_customer_id(None) == "guest" and mask_customer_id("") == "guest"


def test_http_client_loggers_stay_quiet_below_debug(stream: io.StringIO) -> None:
    setup_logging("text", 1, stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST http://x")
    logging.getLogger("httpcore.http11").debug("send_request_headers.started")
    assert stream.getvalue() == ""
    setup_logging("text", 2, stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST http://x")
    logging.getLogger("httpcore.http11").debug("send_request_headers.started")
    assert "HTTP Request" in stream.getvalue() and "send_request_headers" not in stream.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_readable_lines_still_masked() -> None:
    from rich.logging import RichHandler

    screen = FakeTerminal()
    handler = setup_logging("text", 1, stream=screen)
    assert isinstance(handler, RichHandler)
    register_secret("terminal-secret-2231")
    log_event(logging.getLogger("pipeline.runner"), "run", "run finished with terminal-secret-2231",
              feed="acme", accepted=10)
    text = screen.getvalue()
    assert "run finished with ***" in text
    assert "terminal-secret-2231" not in text
    assert "accepted=10" not in text  # fields are for log files; the message speaks to people


def test_a_user_name_is_no_secret_and_never_masks_words_it_equals(monkeypatch: pytest.MonkeyPatch) -> None:
    # a CRM.COM service user called "posfeed": masked, every "posfeed rerun ..." a message suggests
    # read "*** rerun ..."; its password stays masked
    feed = Feed.model_validate({
        "name": "f",
        "target": {"kind": "crmcom", "username_env": "T_CRM_USER", "password_env": "T_CRM_PASSWORD"},
    })
    monkeypatch.setenv("T_CRM_USER", "posfeed")
    monkeypatch.setenv("T_CRM_PASSWORD", "crm-pw-55102")
    monkeypatch.setenv("T_CRM_ORG", "org-7731")
    register_feed_secrets([feed])
    text = "run `posfeed rerun --feed f` (login crm-pw-55102)"
    assert redact(text) == f"run `posfeed rerun --feed f` (login {REDACTED})"
    # nor when the CRM.COM sink reads its credentials
    target = feed.target.model_copy(update={"organisation_env": "T_CRM_ORG"})
    assert isinstance(target, CrmcomTarget)
    assert Credentials.resolve(target).username == "posfeed"
    assert redact(text) == f"run `posfeed rerun --feed f` (login {REDACTED})"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_said_whatever_the_verbosity_is_masked_in_text_and_json(
        fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.logs import say

    register_secret("said-secret-5e1f0a")
    setup_logging(fmt, 0, rich_on_tty=False)
    say("the platform answered: key said-secret-5e1f0a, password=hunter22 is wrong", event="exit")
    said = capsys.readouterr().err
    assert "the platform answered" in said
    assert "said-secret-5e1f0a" not in said and "hunter22" not in said


def test_a_secret_is_masked_in_the_spellings_a_platform_may_echo_it_in() -> None:
    """A base64 key echoed from a URL's query (percent-encoded) or inside a JSON string (a PHP
    platform writes '/' as '\\/') is the same secret."""
    secret = "Zm9v+YmFy/ZWNobw=="
    register_secret(secret)
    for spelling in ("Zm9v%2BYmFy%2FZWNobw%3D%3D", "Zm9v+YmFy%2FZWNobw%3D%3D", "Zm9v%2bYmFy%2fZWNobw%3d%3d",
                     "Zm9v+YmFy\\/ZWNobw=="):
        masked = redact(f"Invalid key {spelling} for this account")
        assert masked == f"Invalid key {REDACTED} for this account", spelling
