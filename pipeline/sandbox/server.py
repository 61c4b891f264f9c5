"""The sandbox HTTP server: every emulated platform plus the inspection endpoints.

* :func:`build_app` composes the platform routes (Antavo; CRM.COM when its module provides
  ``routes(state)``) with ``GET /_sandbox/stats``, ``GET /_sandbox/transactions[?platform=]``,
  ``GET /_sandbox/config`` (no secrets) and ``POST /_sandbox/reset``.
* :class:`SandboxServer` runs it with uvicorn in a background thread on a free loopback port
  (tests, demo, benchmarks); :func:`serve` runs it in the foreground (``posfeed sandbox``).

Every path refuses a declared ``Content-Length`` beyond ``max_body_bytes`` with 413 before
reading anything (in the platform's error shape); the platforms also count what they stream, and
answer a body that has not all arrived within ``body_timeout_seconds`` 408, closing the
connection (the server goes on serving the others). The body bytes all requests hold at once
are bounded by ``max_buffered_bytes``: past it a request is answered 503 with Retry-After. An
unknown path answers 404 and a wrong method 405, in the same shape (``/crmapi/...`` CRM.COM's
envelope with ``UNKNOWN_METHOD`` / ``HTTP_METHOD_NOT_ALLOWED``, the rest Antavo's with code 0);
``/path/`` is not redirected to ``/path``. A request no HTTP parser reads (a ``Content-Length``
too long to be a number or given twice, a bare CR in a header) answers 400 in the shape of the
platform its request line names (CRM.COM's ``INVALID_PARAMETERS`` under ``/crmapi/``, else Antavo's)
and the connection is closed.

Connections: with ``max_connections`` (:data:`MAX_CONNECTIONS`) open, uvicorn answers any further
request 503 at once, and closes a connection idle for ``keep_alive_seconds`` after an answer.
A request whose headers have not all arrived ``header_timeout_seconds``
(:data:`HEADER_TIMEOUT_SECONDS`) after its first byte is answered 408 in the same way (CRM.COM's
``REQUEST_TIMEOUT``) and its
connection closed (uvicorn itself would hold it until the client hangs up). A
state file that cannot be written answers 503 with Retry-After: the change was not kept, so it was
not accepted; one another process holds is not waited for (``state_busy_timeout_ms``, 0): the wait
would block the event loop, every client with it. For the same reason the file's checkpoints (and
their disk syncs) are made by a thread of the store, never by a change.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.sandbox import antavo
from pipeline.sandbox.limits import BodyRefused, query_once, read_body
from pipeline.sandbox.state import SandboxConfig, SandboxState
from pipeline.sandbox.store import StateFileError

__all__ = ["SandboxServer", "build_app", "serve"]

logger = logging.getLogger(__name__)


class _QuietDroppedResponses(logging.Filter):
    """Injected dropped connections are on purpose; uvicorn need not report each one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_QuietDroppedResponses())


def _platform_routes(state: SandboxState) -> list[BaseRoute]:
    routes = list(antavo.routes(state))
    try:
        crmcom: Any = importlib.import_module("pipeline.sandbox.crmcom")
    except ImportError:
        return routes
    if hasattr(crmcom, "routes"):
        routes.extend(crmcom.routes(state))
    return routes


_CRMCOM_PREFIX = "/crmapi/"


def _refusal(path: str, status: int, code: int | str, message: str, *, kind: str | None = None,
             headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error in the shape of the platform the path belongs to (Antavo's for the rest)."""
    if path.startswith(_CRMCOM_PREFIX):
        name = code if isinstance(code, str) else "INVALID_PARAMETERS"
        document: dict[str, Any] = {"status": {"code": name, "message": message, "description": ""},
                                    "data": None}
    else:
        kind = kind or ("ServerException" if status >= 500 else "BadRequestException")
        document = {"error": {"type": kind, "code": code if isinstance(code, int) else status,
                              "message": message}}
    return JSONResponse(document, status_code=status, headers=headers)


# (Antavo type, CRM.COM code) of the routing errors; Antavo's catalogue gives code 0 to 404. The
# CRM.COM codes are the sandbox's and differ from show's NOT_FOUND on purpose: a wrong URL must
# never read as "no such purchase"
_ROUTING_ERRORS = {404: ("NotFoundException", "UNKNOWN_METHOD"),
                   405: ("MethodNotAllowedException", "HTTP_METHOD_NOT_ALLOWED")}


class _DeclaredBodyLimit:
    """Refuses, on every path, a body whose declared length passes the limit, before reading it,
    and a request that gives both a length and chunks (400, the connection closed); closes the
    connection after a 408 (the rest of a stalled body must not be read as the next request)."""

    def __init__(self, app: ASGIApp, state: SandboxState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = _closing_after_408(send)
            limit = self.state.config.max_body_bytes
            names = {name for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                # read by its chunks here, by its length by a proxy in front: refused, and the
                # connection closed (RFC 9112 §6.1), so nothing after it is read as a request
                self.state.count("bad_requests")
                path = scope["path"]
                response = _refusal(path, 400, "INVALID_PARAMETERS" if path.startswith(_CRMCOM_PREFIX) else 0,
                                    "A request may not have both Content-Length and Transfer-Encoding",
                                    headers={"Connection": "close"})
                await response(scope, receive, send)
                return
            for name, value in scope["headers"]:
                if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                    self.state.count("bad_requests")
                    response = _refusal(scope["path"], 413, 0, f"Request body is larger than {limit} bytes")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class _BodyBudget:
    """Counts the body bytes every request holds, from its first byte until its answer, against
    ``max_buffered_bytes`` of all requests together: a request whose next bytes would pass it is
    refused 503 (:class:`BodyRefused` raised where its body is read; the platforms answer it in
    their shape, with Retry-After)."""

    def __init__(self, app: ASGIApp, state: SandboxState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = 0

        async def counted() -> Message:
            nonlocal held
            message = await receive()
            size = len(message.get("body", b""))
            if size:
                if not self.state.take_body_bytes(size):
                    raise BodyRefused(503, "The sandbox holds too many request bodies at once; try again")
                held += size
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            if held:
                self.state.give_back_body_bytes(held)


class _EchoingErrors:
    """With ``echo_requests``: every error answer's message quotes what the request carried (its
    Authorization header, query string and body), as some real platforms' messages do; a client
    must keep its secrets and the customers of the request out of what it stores and shows.
    Answers are held whole until the app is done (the echo changes their length). The body is
    read first, within ``max_body_bytes`` and ``body_timeout_seconds`` (413 / 408 otherwise, as
    the platforms answer)."""

    def __init__(self, app: ASGIApp, state: SandboxState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.state.config.echo_requests:
            await self.app(scope, receive, send)
            return
        config = self.state.config
        try:  # within the same limits as the platforms' own reading
            body = await read_body(Request(scope, receive), config.max_body_bytes,
                                   config.body_timeout_seconds)
        except BodyRefused as refused:
            self.state.count("bad_requests")
            path = scope["path"]
            crmcom = path.startswith(_CRMCOM_PREFIX)
            code: int | str = (("REQUEST_TIMEOUT" if refused.status == 408 else "INTERNAL_ERROR"
                                if refused.status == 503 else 0) if crmcom else 0)
            headers = {"Retry-After": "1"} if refused.status == 503 else None
            await _refusal(path, refused.status, code, refused.message, headers=headers)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        query = scope.get("query_string", b"").decode("latin-1")
        echo = (f" (request: Authorization: {auth} query: {query} body: "
                f"{body.decode('utf-8', 'replace')})")
        start: Message | None = None
        parts: list[bytes] = []

        async def echoing(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            data = _with_echo(b"".join(parts), echo)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data, "more_body": False})

        await self.app(scope, replay, echoing)


def _with_echo(data: bytes, echo: str) -> bytes:
    """An error document with ``echo`` appended to its message (Antavo's ``error.message``,
    CRM.COM's ``status.message`` when its code is not ``OK``, whatever the HTTP status); another
    body is left as it is."""
    try:
        document = json.loads(data)
    except ValueError:
        return data
    if not isinstance(document, dict):
        return data
    error, status = document.get("error"), document.get("status")
    inner = error if isinstance(error, dict) else (
        status if isinstance(status, dict) and status.get("code") not in (None, "OK") else None)
    if inner is None or not isinstance(inner.get("message"), str):
        return data
    inner["message"] += echo
    return json.dumps(document).encode()


def _closing_after_408(send: Send) -> Send:
    """``send`` that adds ``Connection: close`` to a 408 answer (the server then closes)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 408:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return sending


def build_app(state: SandboxState) -> Starlette:
    """The ASGI app of the sandbox over ``state``."""

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def transactions(request: Request) -> Response:
        try:
            platform = query_once(request).get("platform")
        except BodyRefused as refused:
            return _refusal(request.url.path, refused.status, 0, refused.message)
        listing = state.listing(platform)
        return JSONResponse({"count": len(listing), "transactions": listing})

    async def config(request: Request) -> Response:
        return JSONResponse(state.config.public())

    async def reset(request: Request) -> Response:
        state.reset()
        for platform in state.platforms.values():
            if hasattr(platform, "reset"):
                platform.reset()
        return JSONResponse({"reset": True})

    async def not_kept(request: Request, exc: Exception) -> Response:
        logger.error("%s", exc)
        path = request.url.path
        code: int | str = "INTERNAL_ERROR" if path.startswith(_CRMCOM_PREFIX) else 503
        return _refusal(path, 503, code, "The sandbox could not keep the change; try again",
                        headers={"Retry-After": "1"})

    async def not_routed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind, crmcom_code = _ROUTING_ERRORS[exc.status_code]
        path = request.url.path
        code: int | str = crmcom_code if path.startswith(_CRMCOM_PREFIX) else 0
        return _refusal(path, exc.status_code, code, f"{exc.detail}: {request.method} {path}",
                        kind=kind, headers=exc.headers)

    routes: list[BaseRoute] = [
        *_platform_routes(state),
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/transactions", transactions, methods=["GET"]),
        Route("/_sandbox/config", config, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={StateFileError: not_kept, 404: not_routed,
                                                       405: not_routed})
    # no redirect from "/path/" to "/path": its Location would be built from the client's Host
    app.router.redirect_slashes = False
    app.add_middleware(_EchoingErrors, state=state)
    app.add_middleware(_BodyBudget, state=state)
    app.add_middleware(_DeclaredBodyLimit, state=state)
    return app


class _ShapedBadRequests(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering a request it cannot parse at all (a Content-Length
    too long to be a number, two of them, a bare CR in a header, bytes that are no request line)
    400 instead of uvicorn's plain text, and closing the connection; and one whose headers have
    not all arrived ``header_timeout`` seconds after its first byte 408, closing it (uvicorn itself
    would wait for them for ever). Both in the shape of the platform whose path the request line
    names, as far as it arrived (CRM.COM's under ``/crmapi/``, else Antavo's)."""

    header_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None
    _head = b""  # the start of a request whose headers are not all in (to tell its path)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            if self._header_deadline is None:
                self._header_deadline = asyncio.get_running_loop().call_later(self.header_timeout,
                                                                              self._headers_too_slow)
            if len(self._head) < _HEAD_KEPT:
                self._head = (self._head + data)[:_HEAD_KEPT]
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._cancel_header_deadline()
            self._head = b""

    def _path(self) -> str:
        """The path of the request being read, as far as its request line tells (else "")."""
        line = self._head.split(b"\n", 1)[0].split(b" ")
        return urlsplit(line[1].decode("latin-1")).path if len(line) > 1 else ""

    def _answer(self, status: int, reason: bytes, code: str, message: str) -> bytes:
        """A closing answer in the shape of the platform the request's path belongs to."""
        body = _refusal(self._path(), status, code if self._path().startswith(_CRMCOM_PREFIX) else 0,
                        message).body
        return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        message = f"The request headers did not arrive within {self.header_timeout:g} s"
        # written as it is: h11 sends a response only to a request it has read
        self.transport.write(self._answer(408, b"Request Timeout", "REQUEST_TIMEOUT", message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # written as it is too: h11 may have refused the request before reading its start line
        self.transport.write(self._answer(400, b"Bad Request", "INVALID_PARAMETERS", msg))
        self.transport.close()


_HEAD_KEPT = 8192  # bytes of a request's start kept to tell its path by (its request line, cut there)
# open connections past which a request is answered 503 at once (well below the usual 1024
# file descriptors; posfeed opens at most 256 per feed)
MAX_CONNECTIONS = 512
# an idle connection is closed after this; longer than httpx's 5 s keep-alive expiry, so the
# sandbox never closes a connection a client is about to reuse
KEEP_ALIVE_SECONDS = 10
# a request's headers not all arrived this long after its first byte: 408 and the connection closed
HEADER_TIMEOUT_SECONDS = 10.0


def _protocol(header_timeout_seconds: float) -> type[_ShapedBadRequests]:
    """The sandbox's HTTP protocol with its header deadline."""
    return type("SandboxHttp", (_ShapedBadRequests,), {"header_timeout": header_timeout_seconds})


def _uvicorn_config(app: Starlette, host: str, port: int, log_level: str, *,
                    max_connections: int = MAX_CONNECTIONS,
                    keep_alive_seconds: int = KEEP_ALIVE_SECONDS,
                    header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          log_config=None, lifespan="on", timeout_graceful_shutdown=2,
                          http=_protocol(header_timeout_seconds),
                          limit_concurrency=max_connections, timeout_keep_alive=keep_alive_seconds)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free port, read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the socket says it is TCP, and without it Nagle's algorithm and delayed ACKs hold each
    # answer back ~40 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def base_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (the real port when 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def serve(state: SandboxState, *, host: str = "127.0.0.1", port: int = 8765,
          log_level: str = "warning", announce: Callable[[str], None] | None = None,
          max_connections: int = MAX_CONNECTIONS, keep_alive_seconds: int = KEEP_ALIVE_SECONDS) -> None:
    """Serve in the foreground until interrupted; ``announce`` gets the base URL once bound."""
    sock = bind(host, port)
    try:
        if announce is not None:
            announce(base_url(sock))
        uvicorn.Server(_uvicorn_config(build_app(state), host, sock.getsockname()[1], log_level,
                                       max_connections=max_connections,
                                       keep_alive_seconds=keep_alive_seconds)).run(sockets=[sock])
    finally:
        sock.close()


class SandboxServer:
    """A running sandbox in a background thread; ``with SandboxServer() as sandbox: sandbox.url``.

    Keyword arguments are :class:`SandboxConfig` fields (e.g. ``requests_per_minute=600``), besides
    the connection limits of :func:`serve`.
    """

    def __init__(self, state: SandboxState | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS, keep_alive_seconds: int = KEEP_ALIVE_SECONDS,
                 header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS, **config: Any):
        self.state = state or SandboxState(SandboxConfig(**config))
        if state is not None:
            for key, value in config.items():
                setattr(self.state.config, key, value)
        self.host = host
        self._owns_state = state is None
        self._socket = bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(build_app(self.state), host, self.port, "warning",
                                                      max_connections=max_connections,
                                                      keep_alive_seconds=keep_alive_seconds,
                                                      header_timeout_seconds=header_timeout_seconds))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> SandboxConfig:
        """The live configuration (change it while running to change behaviour)."""
        return self.state.config

    def start(self) -> SandboxServer:
        """Start serving; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=f"sandbox-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sandbox server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._socket.close()
        if self._owns_state:
            self.state.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
