"""Connections the sandbox will hold: past its limit a request gets 503 at once, idle ones close."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import httpx

from pipeline.sandbox.server import SandboxServer


def _half_sent(sandbox: SandboxServer) -> socket.socket:
    """A connection that sent part of a request's headers and then nothing more."""
    conn = socket.create_connection((sandbox.host, sandbox.port), timeout=5)
    conn.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/js")
    return conn


def test_past_the_connection_limit_a_request_gets_503_at_once() -> None:
    with SandboxServer(max_connections=4) as sandbox, ExitStack() as stack:
        for _ in range(12):
            stack.enter_context(_half_sent(sandbox))
        time.sleep(0.2)  # every one accepted
        started = time.monotonic()
        refused = httpx.get(sandbox.url + "/_sandbox/stats", timeout=5)
        assert refused.status_code == 503
        assert time.monotonic() - started < 2
        stack.close()
        deadline = time.monotonic() + 5
        while (answer := httpx.get(sandbox.url + "/_sandbox/stats", timeout=5)).status_code == 503:
            assert time.monotonic() < deadline, "the closed connections were never let go"
            time.sleep(0.05)
        assert answer.status_code == 200


def test_an_idle_keep_alive_connection_is_closed() -> None:
    with SandboxServer(keep_alive_seconds=1) as sandbox, \
            socket.create_connection((sandbox.host, sandbox.port), timeout=5) as conn:
        conn.sendall(b"GET /_sandbox/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        received = b""
        while chunk := conn.recv(65536):  # until the server closes the idle connection
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 3


def _read_until_closed(conn: socket.socket) -> bytes:
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def test_a_body_that_stalls_mid_way_gets_408_and_the_connection_closed() -> None:
    for path, shape in (("/events", b'"error"'), ("/crmapi/rest/v2/customer_events/purchases/create",
                                                  b'"REQUEST_TIMEOUT"')):
        with SandboxServer(body_timeout_seconds=0.3) as sandbox, \
                socket.create_connection((sandbox.host, sandbox.port), timeout=10) as conn:
            conn.sendall(b"POST " + path.encode() + b"?api_key=sandbox-key HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"events\": [")
            answer = _read_until_closed(conn)  # returns only once the sandbox closes the connection

            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"connection: close" in answer.lower()
            assert shape in answer  # in the platform's own error shape
            # the others are still served
            assert httpx.get(sandbox.url + "/_sandbox/stats", timeout=5).status_code == 200
            assert sandbox.state.stats["bad_requests"] == 1
