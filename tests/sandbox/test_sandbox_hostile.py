"""A hostile client against a real sandbox over loopback: one client's big or slow request never
holds the others, and no body is buffered past the limit."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx

from pipeline.sandbox.server import SandboxServer

BULK_URL = "/events/bulk?api_key=sandbox-key"


def _checkouts(count: int) -> bytes:
    events = [{"action": "checkout", "customer": f"c{i}", "data": {"transaction_id": f"t{i}", "total": 1}}
              for i in range(count)]
    return json.dumps({"events": events}).encode()


def test_other_clients_are_served_while_a_huge_bulk_is_processed() -> None:
    count = 30000  # long enough to be under way when the other client is scheduled on a loaded machine
    with SandboxServer() as sandbox:
        answer: dict[str, httpx.Response] = {}

        def send_bulk() -> None:
            answer["bulk"] = httpx.post(sandbox.url + BULK_URL, content=_checkouts(count),
                                        headers={"content-type": "application/json"}, timeout=120)

        sender = threading.Thread(target=send_bulk)
        sender.start()
        seen: list[int] = []
        with httpx.Client(base_url=sandbox.url, timeout=120) as other:
            # asked only once the bulk is being stored (its upload and parsing can outlast many
            # answers on a loaded machine): a sandbox that stores it in one go answers after it
            while sender.is_alive() and not sandbox.state.stats["events_accepted"]:
                time.sleep(0.001)
            while sender.is_alive():
                seen.append(other.get("/_sandbox/stats").json()["events_accepted"])
        sender.join()

        assert answer["bulk"].status_code == 200
        assert sandbox.state.stats["events_accepted"] == count
        # the other client was answered while the bulk was under way, not only before or after it
        assert any(0 < accepted < count for accepted in seen), sorted(set(seen))


def _answer_to(conn: socket.socket) -> bytes:
    """The sandbox's answer: its head and ``Content-Length`` bytes of body, or what came before it
    closed the connection (or before 60 s of silence, which fails the test: no answer came)."""
    conn.settimeout(60)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
            head, blank, body = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if blank and length and len(body) >= int(length.group(1)):
                break
    except TimeoutError:
        pass
    return received


def test_with_echo_requests_a_chunked_body_past_the_limit_is_refused_before_it_ends() -> None:
    limit = 4096
    with SandboxServer(echo_requests=True, max_body_bytes=limit) as sandbox, \
            socket.create_connection((sandbox.host, sandbox.port), timeout=10) as conn:
        conn.sendall(b"POST " + BULK_URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 1024
        for _ in range(2 * limit // len(chunk)):  # twice the limit, and the body never ends
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = _answer_to(conn)

        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b'"error"' in answer  # Antavo's shape
        assert httpx.get(sandbox.url + "/_sandbox/stats", timeout=10).status_code == 200


def test_with_echo_requests_a_body_that_stalls_gets_408() -> None:
    with SandboxServer(echo_requests=True, body_timeout_seconds=0.3) as sandbox, \
            socket.create_connection((sandbox.host, sandbox.port), timeout=10) as conn:
        conn.sendall(b"POST " + BULK_URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"events\": [")
        answer = _answer_to(conn)

        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert b'"error"' in answer


def test_a_client_sending_one_byte_at_a_time_never_holds_the_others() -> None:
    request = (b"POST " + BULK_URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 40\r\n\r\n" + b'{"events": [{"action": "checkout"}]}    ')
    with SandboxServer() as sandbox, httpx.Client(base_url=sandbox.url, timeout=60) as other, \
            socket.create_connection((sandbox.host, sandbox.port), timeout=60) as slow:
        for position in range(len(request)):  # through its headers, then its body
            slow.send(request[position:position + 1])
            # between any two of its bytes, another client is answered in full
            assert other.get("/_sandbox/stats").status_code == 200
        answer = _answer_to(slow)

    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert sandbox.state.stats["requests"] == 1  # only the slow one reached a platform


def test_a_request_no_http_parser_reads_gets_400_in_the_platform_s_shape() -> None:
    # before: uvicorn's own "Invalid HTTP request received." in text/plain
    broken = {
        "gigantic Content-Length": b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30
                                   + b"\r\n\r\n",
        "two lengths": b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n"
                       b"{}",
        "bare CR in a header": b"GET /_sandbox/stats HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        "bytes that are no request line": b"\xff\xfe GET / HTTP/1.1\r\n\r\n",
    }
    with SandboxServer() as sandbox:
        for name, request in broken.items():
            with socket.create_connection((sandbox.host, sandbox.port), timeout=10) as conn:
                conn.sendall(request)
                answer = _answer_to(conn)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), (name, answer[:200])
            assert b"content-type: application/json" in head.lower(), (name, head)
            error = json.loads(body)["error"]
            assert error["type"] == "BadRequestException" and error["code"] == 0, (name, error)
            assert error["message"]
        assert httpx.get(sandbox.url + "/_sandbox/stats", timeout=10).status_code == 200


def test_bodies_read_at_once_are_bounded_in_all_past_it_a_request_gets_503() -> None:
    # before: each connection could hold max_body_bytes (512 connections: 2 GiB and more)
    def stalled(sandbox: SandboxServer, path: str, sent: int) -> socket.socket:
        conn = socket.create_connection((sandbox.host, sandbox.port), timeout=60)
        conn.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 3000\r\n\r\n" + b" " * sent)
        return conn

    crm = "/crmapi/rest/v2/customer_events/purchases/create"
    with SandboxServer(max_body_bytes=4096, max_buffered_bytes=1000) as sandbox:
        with stalled(sandbox, BULK_URL, 900) as first:
            while sandbox.state.buffered_bytes < 900:  # until the sandbox holds what was sent
                time.sleep(0.01)
            for path, shape in ((BULK_URL, b'"ServerException"'), (crm, b'"INTERNAL_ERROR"')):
                with stalled(sandbox, path, 200) as second:
                    answer = _answer_to(second)
                assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
                assert shape in answer and b"retry-after: 1" in answer.lower()
            first.close()
        while sandbox.state.buffered_bytes:  # the first one's bytes let go once it hung up
            time.sleep(0.01)
        accepted = httpx.post(sandbox.url + BULK_URL, content=_checkouts(3),
                              headers={"content-type": "application/json"}, timeout=60)
        assert accepted.status_code == 200
        while sandbox.state.buffered_bytes:  # let go once its answer is done
            time.sleep(0.01)


def test_a_request_whose_headers_never_finish_gets_408_and_the_connection_closed() -> None:
    # before: held until the client hung up (a slow client per connection kept every slot taken)
    with SandboxServer(header_timeout_seconds=0.3) as sandbox:
        with socket.create_connection((sandbox.host, sandbox.port), timeout=60) as slow:
            slow.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
            answer = _answer_to(slow)
            assert slow.recv(1) == b""  # closed by the sandbox

        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["type"] == "BadRequestException"
        # a request that is answered, then an idle keep-alive: not the same thing, still served
        with httpx.Client(base_url=sandbox.url, timeout=60) as client:
            assert client.get("/_sandbox/stats").status_code == 200
            assert client.get("/_sandbox/stats").status_code == 200
