"""What any request body must pass before a platform looks at it: size, JSON depth, numbers, text.

Every platform reads its body with :func:`read_body` (streamed, refused as soon as it passes the
limit, whatever ``Content-Length`` says) and parses JSON with :func:`parse_json`, which refuses,
with :class:`BodyRefused` (an HTTP status and a message the platform wraps in its own error
shape):

* an object that gives one key twice (``{"total": 1, "total": 1000}``);
* nesting deeper than :data:`MAX_DEPTH` (checked on the raw text before parsing, so no parser
  recursion happens at all);
* ``NaN`` / ``Infinity`` literals, numbers written with more than :data:`MAX_NUMBER_CHARS`
  characters, and numbers whose magnitude is beyond 10^:data:`MAX_EXPONENT` (``1e5000``);
* strings with a lone surrogate (``"\\ud800"``: not text, cannot be stored or answered as UTF-8)
  or a NUL character.

A query parameter given twice is refused the same way (:func:`query_once`).

Numbers come back as ``int`` or :class:`~decimal.Decimal`, never ``float``. The platforms still
check the meaning of each field (a total must be a number of sensible size, an id a string).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from typing import Any

from starlette.requests import ClientDisconnect, Request

__all__ = [
    "EXACT",
    "MAX_AMOUNT",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "MAX_NUMBER_CHARS",
    "BodyRefused",
    "check_text",
    "in_range",
    "parse_json",
    "plain_number",
    "query_once",
    "read_body",
]

MAX_DEPTH = 32
MAX_NUMBER_CHARS = 40
MAX_EXPONENT = 30
MAX_AMOUNT = Decimal("1e12")  # the sandbox's bound on any amount, quantity or timestamp it is given


# Every number in_range admits has at most 12 digits before the point and 30 after (42 digits),
# so sums of up to 10^18 of them need at most 60: money computed in this context is exact, and an
# inexact result would raise rather than round
EXACT = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")


def plain_number(text: str) -> bool:
    """Whether an amount sent as a string is written as a JSON number is (ASCII digits, an optional
    sign, fraction and exponent): Python's Decimal also takes ``"1_000"``, ``" 1 "`` and other
    scripts' digits, which no platform reads as a number."""
    return _PLAIN_NUMBER.match(text) is not None


def in_range(number: Decimal) -> bool:
    """Finite, below :data:`MAX_AMOUNT` in magnitude, and written with a sane exponent."""
    return (number.is_finite() and abs(number) < MAX_AMOUNT
            and abs(int(number.as_tuple().exponent)) <= MAX_EXPONENT)


class BodyRefused(ValueError):
    """A body no platform processes: the HTTP status to answer and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The whole body, read chunk by chunk; refused (413) once it passes ``limit`` bytes.

    A declared ``Content-Length`` beyond the limit is refused before anything is read; a body
    sent in chunks is refused as soon as the running total passes the limit. A client that
    hangs up mid-body gets 400 (a truncated body is never processed); one whose body has not
    all arrived within ``timeout`` seconds gets 408 (and the server closes the connection: see
    :mod:`pipeline.sandbox.server`).
    """
    if timeout is None:
        return await _read_body(request, limit)
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError as exc:
        raise BodyRefused(408, f"The request body did not arrive within {timeout:g} s") from exc


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = BodyRefused(413, f"Request body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise BodyRefused(400, "The request body was not received in full") from exc
    return b"".join(chunks)


# ---- depth ---------------------------------------------------------------------------------------

# a string runs to its closing quote, or to the end of an unterminated body: the pattern always
# matches where it starts, so stripping strings is linear whatever the body holds
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_NORMALISE = bytes.maketrans(b"[]{}", b"()()")


def _too_deep(body: bytes, max_depth: int) -> bool:
    """Whether the JSON text nests deeper than ``max_depth`` (brackets in strings ignored).

    Each pass removes the innermost ``()`` pairs, so after ``max_depth`` passes a text of
    acceptable depth has no brackets left; what is left is too deep or does not balance (the
    parser would refuse it anyway). Linear in the body times ``max_depth`` at most, in C.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    shape = _STRING.sub(b"", body).translate(_NORMALISE, _NOT_BRACKETS)
    for _ in range(max_depth):
        inner = shape.replace(b"()", b"")
        if len(inner) == len(shape):  # nothing left to remove: empty, or no pair closes
            break
        shape = inner
    return bool(shape)


# ---- numbers and strings -------------------------------------------------------------------------


def _number_parser(kind: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(literal: str) -> Any:
        if len(literal) > MAX_NUMBER_CHARS:
            raise BodyRefused(400, f"Number {literal[:20]}… is too long (at most {MAX_NUMBER_CHARS} "
                                   "characters)")
        try:
            value = convert(literal)
        except (InvalidOperation, ValueError) as exc:
            raise BodyRefused(400, f"Invalid {kind} {literal}") from exc
        if isinstance(value, Decimal) and (abs(int(value.as_tuple().exponent)) > MAX_EXPONENT
                                           or abs(value.adjusted()) > MAX_EXPONENT):
            raise BodyRefused(400, f"Number {literal} is out of range")
        return value

    return parse


_PARSE_FLOAT = _number_parser("number", Decimal)
_PARSE_INT = _number_parser("integer", int)


def _refuse_constant(name: str) -> Any:
    raise BodyRefused(400, f"{name} is not a number JSON allows")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: a key given twice is refused (parsers disagree on
    which value wins, so the platform and the sender could read two different requests)."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise BodyRefused(400, f"Malformed JSON: the key {json.dumps(key)[:80]} is given twice "
                                   "in one object")
        document[key] = value
    return document


_BAD_CHARACTER = re.compile("[\ud800-\udfff\x00]")


def check_text(value: Any) -> None:
    """Refuse lone surrogates and NUL characters in any string of a parsed document (keys too)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _BAD_CHARACTER.search(node):
                raise BodyRefused(400, "Strings must be valid Unicode text without NUL characters")
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def query_once(request: Request) -> dict[str, str]:
    """The query's parameters, each given once; :class:`BodyRefused` (400) for one given twice
    (``?platform=a&platform=b``: which one is meant is anybody's guess)."""
    params = request.query_params
    for name in params:
        if len(params.getlist(name)) > 1:
            raise BodyRefused(400, f"Query parameter {name[:40]!r} is given twice")
    return dict(params)


def parse_json(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON body within the limits above; :class:`BodyRefused` (400) otherwise."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if _too_deep(raw, max_depth):
        raise BodyRefused(400, f"JSON nests deeper than {max_depth} levels "
                               "(or its brackets do not balance)")
    try:
        text = body if isinstance(body, str) else body.decode("utf-8")
        document = json.loads(text, parse_float=_PARSE_FLOAT, parse_int=_PARSE_INT,
                              parse_constant=_refuse_constant, object_pairs_hook=_object_without_duplicates)
    except BodyRefused:
        raise
    except UnicodeDecodeError as exc:
        raise BodyRefused(400, f"The body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:  # cannot happen after the depth check; kept as a guard
        raise BodyRefused(400, f"JSON nests deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise BodyRefused(400, f"Malformed JSON: {exc}") from exc
    if "\\u" in text:  # lone surrogates and NUL only come from escapes (UTF-8 has neither)
        check_text(document)
    return document
