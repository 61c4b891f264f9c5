"""The delivery engine's HTTP client against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline.sinks.http import HttpClient, HttpConnectionError, HttpReply, HttpTimeout


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/trickle":  # an answer one byte at a time, far longer than any timeout
            self._trickle()
            return
        if self.path == "/cut":  # an answer closed before the length it announced
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"events":')
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path == "/drop":  # read the request, then hang up without an answer
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        answer = b'{"ok":true}'
        self.send_response(207)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "3")
        self.send_header("Set-Cookie", "session=abc; Path=/")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _trickle(self) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            for _ in range(600):  # 30 s at most, then the answer ends with the connection
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"{}")
        except OSError:
            pass  # the client gave up

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _send(url: str, *, timeout: float = 5.0, times: int = 1) -> list[HttpReply]:
    async def go() -> list[HttpReply]:
        client = HttpClient(timeout_seconds=timeout, max_connections=2)
        try:
            return [await client.request("POST", url, headers={"X-Signed": "yes"}, body=b"exact bytes")
                    for _ in range(times)]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_request_arrives_as_built_and_the_whole_reply_comes_back(server: str) -> None:
    (reply,) = _send(server + "/events?api_key=k")

    assert reply.status == 207
    assert reply.body == b'{"ok":true}'
    assert reply.headers.get("retry-after") == reply.headers.get("Retry-After") == "3"
    ((path, headers, body),) = _Handler.seen
    assert (path, headers["x-signed"], body) == ("/events?api_key=k", "yes", b"exact bytes")


def test_cookies_a_server_sets_are_never_sent_back(server: str) -> None:
    _send(server.replace("127.0.0.1", "localhost") + "/events", times=2)  # jars refuse IP hosts

    assert [("cookie" in headers) for _, headers, _ in _Handler.seen] == [False, False]


def test_no_answer_within_the_timeout_is_a_timeout(server: str) -> None:
    with pytest.raises(HttpTimeout):
        _send(server + "/slow", timeout=0.2)


def test_an_answer_that_trickles_in_a_byte_at_a_time_is_a_timeout(server: str) -> None:
    # each byte comes well within the per-read timeout; the whole answer never does
    with pytest.raises(HttpTimeout, match=r"no whole answer within 0\.3 s"):
        _send(server + "/trickle", timeout=0.3)

    assert [path for path, _, _ in _Handler.seen] == ["/trickle"]


def test_an_answer_cut_off_before_its_length_is_a_connection_error(server: str) -> None:
    with pytest.raises(HttpConnectionError):
        _send(server + "/cut")

    assert [path for path, _, _ in _Handler.seen] == ["/cut"]


def test_a_dropped_connection_is_a_connection_error_and_the_post_is_not_sent_again(server: str) -> None:
    with pytest.raises(HttpConnectionError):
        _send(server + "/drop")

    assert [path for path, _, _ in _Handler.seen] == ["/drop"]  # the engine decides about retries


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the request

    with pytest.raises(HttpConnectionError):
        _send(f"http://127.0.0.1:{port}/events")


def test_a_proxy_named_by_the_environment_carries_the_request(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", server)  # our server plays the proxy
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    (reply,) = _send("http://platform.invalid/events")

    assert reply.status == 207
    assert [path for path, _, _ in _Handler.seen] == ["http://platform.invalid/events"]


def test_no_proxy_hosts_are_reached_directly(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    (reply,) = _send(server + "/events")

    assert reply.status == 207


def test_a_failure_message_never_shows_the_query_of_the_url() -> None:
    with pytest.raises(HttpConnectionError) as failure:
        _send("http:///events?api_key=secret-key-123")  # a URL without a host names itself

    assert "secret-key-123" not in str(failure.value)


def test_a_netrc_file_is_never_read(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine localhost login someone password leaked\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))

    _send(server.replace("127.0.0.1", "localhost") + "/events")

    ((_, headers, _),) = _Handler.seen
    assert "authorization" not in headers


def test_a_request_does_not_search_for_the_async_library_again() -> None:
    """httpcore asks sniffio which async library runs, on every request; without sniffio installed
    each ask was a failed import that searched sys.path again (12,000 searches, 1.3 s of a 10 s
    submit stage of 30k line items)."""
    from httpcore._synchronization import current_async_library

    searched: list[str] = []

    class Counting:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            searched.append(name)

    async def ask() -> None:
        for _ in range(50):
            assert current_async_library() == "asyncio"

    finder = Counting()
    sys.meta_path.insert(0, finder)
    try:
        asyncio.run(ask())
    finally:
        sys.meta_path.remove(finder)
    assert searched.count("sniffio") <= 1
