"""A hostile client against a real sandbox over loopback: one client's big or slow request never
holds the others, and no body is buffered past the limit."""

from __future__ import annotations

import json
import threading

import httpx

from pipeline.sandbox.server import SandboxServer

BULK_URL = "/events/bulk?api_key=sandbox-key"


def _checkouts(count: int) -> bytes:
    events = [{"action": "checkout", "customer": f"c{i}", "data": {"transaction_id": f"t{i}", "total": 1}}
              for i in range(count)]
    return json.dumps({"events": events}).encode()


def test_other_clients_are_served_while_a_huge_bulk_is_processed() -> None:
    count = 8000
    with SandboxServer() as sandbox:
        answer: dict[str, httpx.Response] = {}

        def send_bulk() -> None:
            answer["bulk"] = httpx.post(sandbox.url + BULK_URL, content=_checkouts(count),
                                        headers={"content-type": "application/json"}, timeout=120)

        sender = threading.Thread(target=send_bulk)
        sender.start()
        seen: list[int] = []
        with httpx.Client(base_url=sandbox.url, timeout=120) as other:
            while sender.is_alive():
                seen.append(other.get("/_sandbox/stats").json()["events_accepted"])
        sender.join()

        assert answer["bulk"].status_code == 200
        assert sandbox.state.stats["events_accepted"] == count
        # the other client was answered while the bulk was under way, not only before or after it
        assert any(0 < accepted < count for accepted in seen), sorted(set(seen))
