"""CPU per request of the sender's HTTP client (aiohttp) against httpx, side by side.

    python bench/http_clients.py                  # 6,000 requests per client, 3 rounds
    python bench/http_clients.py --requests 50 --rounds 1 --json   # the smoke run of the tests

Both clients POST the same signed-size body to one local uvicorn/starlette server (its own
process), 8 requests in flight over one keep-alive pool, in alternating rounds (ours, httpx, ours,
httpx, ...) so the machine's drift falls on both. Reported: this process's CPU (user + system)
per request, and the ratio. Results are in docs/BENCHMARKS.md ("Submit").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from pipeline.sinks.http import HttpClient

IN_FLIGHT = 8
BODY = b'{"events":[' + b",".join([b'{"action":"checkout","data":{"total":12.5}}'] * 4) + b"]}"
HEADERS = {"Content-Type": "application/json", "X-Ems-Date": "20261201T000000Z",
           "X-Ems-Auth": "EMS-HMAC-SHA256 Credential=key/20261201/eu/antavo_request, "
                         "SignedHeaders=host;x-ems-date, Signature=" + "0" * 64}
SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def events(request):
    await request.body()
    return Response(b'{"events":[{"id":"e1"}]}', media_type="application/json")
app = Starlette(routes=[Route("/events", events, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(send: Callable[[], Awaitable[int]], requests: int) -> dict[str, float]:
    for _ in range(20):  # connections open, code paths warm
        await send()
    left = requests
    statuses: list[int] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            statuses.append(await send())

    started, cpu = time.perf_counter(), _cpu()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    cpu, wall = _cpu() - cpu, time.perf_counter() - started
    if statuses.count(200) != requests:
        raise RuntimeError(f"not every request was answered 200: {sorted(set(statuses))}")
    return {"cpu_us_per_request": cpu / requests * 1e6, "wall_us_per_request": wall / requests * 1e6}


async def _ours(url: str, requests: int) -> dict[str, float]:
    client = HttpClient(timeout_seconds=30, max_connections=IN_FLIGHT)
    try:
        async def send() -> int:
            return (await client.request("POST", url, headers=HEADERS, body=BODY)).status
        return await _drive(send, requests)
    finally:
        await client.aclose()


async def _httpx(url: str, requests: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def send() -> int:
            response = await client.request("POST", url, headers=HEADERS, content=BODY)
            response.content  # noqa: B018 - the whole body is read, as the sender does
            return response.status_code
        return await _drive(send, requests)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start listening")


def run(requests: int, rounds: int) -> dict[str, Any]:
    """Alternating rounds of both clients against one server; medians per client and the ratio."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        _wait_until_listening(port, server)
        url = f"http://127.0.0.1:{port}/events"
        runs: dict[str, list[dict[str, float]]] = {"aiohttp (ours)": [], "httpx": []}
        for _ in range(rounds):
            runs["aiohttp (ours)"].append(asyncio.run(_ours(url, requests)))
            runs["httpx"].append(asyncio.run(_httpx(url, requests)))
    finally:
        server.terminate()
        server.wait(timeout=10)

    def median(name: str) -> float:
        values = sorted(r["cpu_us_per_request"] for r in runs[name])
        return values[len(values) // 2]

    ours, theirs = median("aiohttp (ours)"), median("httpx")
    return {"requests": requests, "rounds": rounds, "in_flight": IN_FLIGHT, "runs": runs,
            "median_cpu_us_per_request": {"aiohttp (ours)": ours, "httpx": theirs},
            "ours_over_httpx": ours / theirs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    options = parser.parse_args(argv)
    report = run(options.requests, options.rounds)
    if options.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, values in report["runs"].items():
        cells = ", ".join(f"{v['cpu_us_per_request']:.0f}" for v in values)
        print(f"{name:15s} CPU µs per request by round: {cells}")
    print(f"ours / httpx (medians): {report['ours_over_httpx']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
