"""Logging setup: text on a terminal, JSON lines for machines, secrets and customer ids masked.

Every record posfeed emits goes to stderr through one handler installed by :func:`setup_logging`.
The handler carries a :class:`MaskingFilter`, so whatever logger a record comes from (ours, httpx,
uvicorn, paramiko, apscheduler) its message, arguments, extra fields and traceback are redacted
before they are formatted:

* the values of secrets registered with :func:`register_secret` / :func:`register_feed_secrets`
  (every environment variable a feed names in an ``*_env`` key, and secret files);
* anything that looks like a credential: ``Authorization`` headers, ``Bearer`` tokens, request
  signatures and ``password=`` / ``token=`` / ``secret=`` / ``api_key=`` pairs.

Customer ids cannot be recognised in free text, so code that logs one passes it through
:func:`mask_customer_id` (``cust:<short sha256>``) with the feed's ``logging.hash_customer_ids``.

Structured lines (one per file, batch and run, with counts) are written with :func:`log_event`:
``event=run feed=acme run_id=... accepted=10`` as text, and a JSON object with the same fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import click
from pydantic import BaseModel

__all__ = [
    "NOISY_LOGGERS",
    "REDACTED",
    "JsonFormatter",
    "MaskingFilter",
    "TextFormatter",
    "counted",
    "customer_ids_pattern",
    "feed_secret_env_names",
    "forget_secret",
    "in_number",
    "json_logging_active",
    "keep_shown",
    "log_event",
    "mask_customer_id",
    "mask_quoted_customers",
    "masked_match",
    "redact",
    "register_feed_secrets",
    "register_secret",
    "say",
    "set_told_options",
    "setup_logging",
    "shown",
    "told",
]

REDACTED = "***"

# secrets shorter than this are not registered: masking "1" everywhere would destroy the logs
_MIN_SECRET_LENGTH = 4
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None

# a key that names a secret: api_key, target.api_secret, X-Auth-Token, sftp_password ...
_SECRET_KEY = r"[\w.-]*(?:password|passwd|passphrase|secret|token|api_?key|signature)[\w.-]*"

_CREDENTIAL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # HTTP headers, in "Name: value" or "'name': 'value'" form (httpx/uvicorn dumps, our own repr)
    (
        re.compile(
            r"(?i)(['\"]?\b(?:authorization|proxy-authorization|x-api-key|api-key|x-antavo-[a-z-]*"
            r"|x-auth-token|cookie|set-cookie)\b['\"]?\s*[:=]\s*)(['\"]?)[^'\"\n,}]+(\2)"
        ),
        r"\1\2" + REDACTED + r"\3",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    # Escher / AWS-style signature parameters inside an Authorization value
    (re.compile(r"(?i)\b(credential|signature)=[^,\s'\"]+"), r"\1=" + REDACTED),
    # key=value and "key": "value" pairs whose key names a secret; an unquoted "key: text" is
    # prose (a setting's name and what is wrong with it), not a value
    (
        re.compile(
            rf"(?i)((?:(['\"]){_SECRET_KEY}\2\s*[:=]|\b{_SECRET_KEY}\s*=)\s*)"
            r"(['\"]?)(?!\*\*\*)[^\s'\",&}]+(\3)"
        ),
        r"\1\3" + REDACTED + r"\4",
    ),
)


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is redacted from every log line from now on."""
    global _secret_pattern
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(_spellings(s) for s in ordered))


def forget_secret(value: str | None) -> None:
    """Stop redacting a secret that is no longer in use (a platform session token whose sink is
    closed): a long-lived process would otherwise match every log line against every token it
    ever held."""
    global _secret_pattern
    with _secrets_lock:
        if not value or value not in _secrets:
            return
        _secrets.discard(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(_spellings(s) for s in ordered)) if ordered else None


def _spellings(secret: str) -> str:
    """A pattern of ``secret`` as written and as an echo may spell it: each character but a
    letter or digit also percent-encoded (a URL's query), and ``/`` also as ``\\/`` (a JSON
    string as PHP writes it)."""
    parts = []
    for char in secret:
        if char.isascii() and char.isalnum():
            parts.append(re.escape(char))
            continue
        encoded = "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
        forms = [re.escape(char), "".join(f"[{c}{c.lower()}]" if c.isalpha() else c for c in encoded)]
        if char == "/":
            forms.append(re.escape("\\/"))
        parts.append("(?:" + "|".join(forms) + ")")
    return "".join(parts)


# ``*_env`` keys whose values are no secret: a user name masked would mask every word equal to it
# (a CRM.COM user called "posfeed" turned each "posfeed rerun ..." a message suggests into "*** rerun")
NOT_SECRET_ENV_KEYS = frozenset({"username_env"})


def _walk_env_names(value: Any, found: set[str], skip: frozenset[str] = frozenset()) -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            item = getattr(value, name)
            if name.endswith("_env") and isinstance(item, str) and item:
                if name not in skip:
                    found.add(item)
            else:
                _walk_env_names(item, found, skip)
    elif isinstance(value, Mapping):
        for item in value.values():
            _walk_env_names(item, found, skip)
    elif isinstance(value, list | tuple):
        for item in value:
            _walk_env_names(item, found, skip)


def feed_secret_env_names(feed: BaseModel) -> set[str]:
    """Every environment variable name a feed refers to through an ``*_env`` key."""
    found: set[str] = set()
    _walk_env_names(feed, found)
    return found


def _walk_secret_files(value: Any, found: set[str]) -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            item = getattr(value, name)
            if name.endswith("secret_file") and isinstance(item, str) and item:
                found.add(item)
            else:
                _walk_secret_files(item, found)


def register_feed_secrets(feeds: Iterable[BaseModel], environ: Mapping[str, str] | None = None) -> None:
    """Register the values of every ``*_env`` variable (a user name's aside) and ``*secret_file``
    the feeds name."""
    env = os.environ if environ is None else environ
    for feed in feeds:
        names: set[str] = set()
        _walk_env_names(feed, names, NOT_SECRET_ENV_KEYS)
        for name in names:
            register_secret(env.get(name))
        files: set[str] = set()
        _walk_secret_files(feed, files)
        resolve = getattr(feed, "resolve_path", None)
        for file in files:
            path = resolve(file) if callable(resolve) else Path(file).expanduser()
            try:
                register_secret(Path(path).read_text(encoding="utf-8").strip())
            except OSError:
                continue


def redact(text: str) -> str:
    """``text`` with registered secrets and credential-looking values replaced by ``***``."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for regex, replacement in _CREDENTIAL_PATTERNS:
        text = regex.sub(replacement, text)
    return text


MASK_PREFIX = "cust:"  # what every masked customer id starts with


def mask_customer_id(customer_id: str | None, *, enabled: bool = True) -> str:
    """A customer id as it may appear in logs: ``cust:<12 hex of sha256>`` when hashing is on.

    Empty ids (guest checkouts) are shown as ``guest``. The hash is stable, so one customer's
    lines can still be followed through a log without revealing who it is.
    """
    if customer_id is None or customer_id == "":
        return "guest"
    if not enabled:
        return customer_id
    digest = hashlib.sha256(customer_id.encode("utf-8")).hexdigest()
    return f"{MASK_PREFIX}{digest[:12]}"


def customer_ids_pattern(customer_ids: Iterable[str]) -> re.Pattern[str]:
    """Any of ``customer_ids`` standing on its own in a text (not inside a longer word or id);
    longest first, so a longer id is never masked as a shorter one and what follows it. For a
    platform message that quotes customers: ``pattern.sub(masked_match, message)``."""
    ids = sorted({c for c in customer_ids if c}, key=len, reverse=True)
    if not ids:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, ids)) + r")(?![A-Za-z0-9])")


def mask_quoted_customers(text: str, customers: Iterable[str]) -> str:
    """``text`` with each of ``customers`` it quotes (standing on its own) masked; fast for many
    ids and a short text (an error's): only the ids found in it make the pattern."""
    found = [c for c in set(customers) if c and not c.startswith(MASK_PREFIX) and c in text]
    return customer_ids_pattern(found).sub(masked_match, text) if found else text


def quoted_words(text: str) -> set[str]:
    """The pieces of ``text`` that may be an id it quotes: each run of characters between spaces,
    quotes, brackets and separators (``, ; = |``), and the same without the punctuation at its
    ends ("c-12:" -> "c-12"). To look for ids known only by their mask (:func:`mask_customer_id`)."""
    words = set()
    for found in _WORD.finditer(text):
        words.add(found.group(0))
        words.add(_ENDS.sub("", found.group(0)))
    words.discard("")
    return words


_WORD = re.compile(r"[^\s\"'`()\[\]{}<>,;=|]+")
_ENDS = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


_SHOWN = "_posfeed_shown"  # the attribute an error's masked text is kept in


def keep_shown(error: BaseException, text: str) -> None:
    """Remember ``text`` as what ``error`` may show wherever it is told (the run's summary, a
    problem, the exit's message): its own text with what it quoted masked."""
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        setattr(error, _SHOWN, text)


# the global options given on the command line, which every `posfeed ...` command posfeed tells a
# user to run carries (one process, one command line: set by the CLI before any command runs)
_told_options: tuple[str, ...] = ()
_TOLD = re.compile(r"`posfeed (?!--)")


def set_told_options(options: Sequence[str]) -> None:
    """The global options (``--state-dir DIR`` ...) the command line gave, for :func:`told`. Options
    from the environment (``POSFEED_STATE_DIR`` ...) are not given here: they carry themselves."""
    global _told_options
    _told_options = tuple(options)


def told(text: str) -> str:
    """``text`` with each `` `posfeed VERB ...` `` command it tells a user to run carrying the global
    options the command line gave, so that, copied as printed, it acts on the same state folder,
    feeds, reports and ledger."""
    if not _told_options:
        return text
    given = " ".join(shlex.quote(option) for option in _told_options)
    return _TOLD.sub(lambda _: f"`posfeed {given} ", text)


def counted(count: Any, word: str, plural: str | None = None) -> str:
    """``1 transaction``, ``0 transactions``, ``2 conflicts``: a count in words that agree with it
    (``plural``: for a word that does not take an ``s``)."""
    return f"{count} {in_number(count, word, plural)}"


def in_number(count: Any, word: str, plural: str | None = None) -> str:
    """The words of :func:`counted` without the count (``word`` for 1, else ``plural`` or
    ``word`` + ``s``): for a page that shows the count apart."""
    return word if count == 1 else plural or word + "s"


def shown(error: BaseException | None) -> str:
    """An error's text as posfeed may show it: as :func:`keep_shown` left it, else its own text
    with secrets redacted ("" for no error)."""
    if error is None:
        return ""
    kept = getattr(error, _SHOWN, None)
    return redact(kept if isinstance(kept, str) else str(error))


def masked_match(found: re.Match[str]) -> str:
    """The masked form of a customer id a :func:`customer_ids_pattern` found."""
    return mask_customer_id(found.group(0))


def same_customer(customer_id: str, stored: str) -> bool:
    """Whether ``stored`` (a customer id as the ledger holds it, masked once its transaction is
    settled) is ``customer_id``."""
    if customer_id == stored:
        return True
    return stored.startswith(MASK_PREFIX) and mask_customer_id(customer_id) == stored


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


# attributes every LogRecord has; everything else on a record came in through `extra=`
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class MaskingFilter(logging.Filter):
    """Redact secrets from a record's message, arguments, extra fields and traceback (in place)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(value))
        return True


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else json.dumps(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return str(value)


class TextFormatter(logging.Formatter):
    """``2026-11-20T02:05:00Z INFO pipeline.runner: message key=value ...`` (time and fields optional)."""

    def __init__(self, *, with_time: bool = True, with_fields: bool = True) -> None:
        super().__init__()
        self.with_time = with_time
        self.with_fields = with_fields

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record) if self.with_fields else {}
        fields = " ".join(f"{k}={_plain(v)}" for k, v in extras.items())
        line = record.getMessage() + (f" {fields}" if fields else "")
        if self.with_time:
            stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            line = f"{stamp} {record.levelname} {record.name}: {line}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


# third-party loggers: quiet unless asked, and never below INFO (debug dumps request headers)
NOISY_LOGGERS = ("httpx", "httpcore", "uvicorn", "uvicorn.access", "uvicorn.error", "paramiko",
          "apscheduler", "sqlalchemy", "hpack", "asyncio")
_HANDLER_MARK = "_posfeed_handler"


def _level_for(verbosity: int) -> int:
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def setup_logging(
    fmt: Literal["text", "json"] | str = "text",
    verbosity: int = 0,
    *,
    stream: IO[str] | None = None,
    rich_on_tty: bool = True,
) -> logging.Handler:
    """Send log records to stderr as text (rich on a terminal) or JSON lines, masked.

    ``verbosity`` 0 shows warnings, 1 info (one line per file, batch and run), 2 and more debug.
    Third-party libraries stay at WARNING below -vv and never go below INFO below -vvv, so HTTP
    client internals that dump request headers never reach the log. Calling it again replaces the
    previous handler (safe in tests and repeated CLI invocations).
    """
    target = stream if stream is not None else sys.stderr
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(target)
        handler.setFormatter(JsonFormatter())
    elif rich_on_tty and _isatty(target):
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=target, stderr=target is sys.stderr),
            show_path=False, markup=False, rich_tracebacks=False, log_time_format="%H:%M:%S",
        )
        # a person reads this: the message says it all, the key=value fields are for log files
        handler.setFormatter(TextFormatter(with_time=False, with_fields=False))
    else:
        handler = logging.StreamHandler(target)
        handler.setFormatter(TextFormatter())
    handler.addFilter(MaskingFilter())
    setattr(handler, _HANDLER_MARK, True)
    level = _level_for(verbosity)
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)
    third_party = logging.WARNING if verbosity < 2 else (logging.INFO if verbosity == 2 else logging.DEBUG)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(third_party)
    logging.captureWarnings(True)
    return handler


def json_logging_active() -> bool:
    """Whether :func:`setup_logging` sends JSON lines (fatal errors then go out as JSON too)."""
    return any(getattr(h, _HANDLER_MARK, False) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)


def say(message: str, /, *, event: str, level: int = logging.WARNING, **fields: Any) -> None:
    """A line a person must see whatever the verbosity (an exit's cause, an acknowledgement): plain
    text on stderr, or with JSON logs one JSON line (``event`` and ``fields`` as keys), masked."""
    handlers = [h for h in logging.getLogger().handlers if getattr(h, _HANDLER_MARK, False)]
    json_handlers = [h for h in handlers if isinstance(h.formatter, JsonFormatter)]
    if not json_handlers:
        click.echo(redact(message), err=True)
        return
    record = logging.getLogger("posfeed").makeRecord(
        "posfeed", level, "", 0, message, (), None, extra={"event": event, **fields})
    for handler in json_handlers:
        handler.handle(record)  # below the handler's level too: this line is always shown


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def log_event(
    logger: logging.Logger, event: str, message: str, /, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one structured line: ``message`` plus ``fields`` (text ``k=v``, JSON keys).

    ``event`` names the kind of line (``file``, ``batch``, ``run``, ``schedule`` ...) so that JSON
    consumers can filter on it.
    """
    logger.log(level, message, extra={"event": event, **fields})
