"""Unknown paths and wrong methods answer in the platform's JSON error shape; no slash redirects."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pipeline.sandbox.crmcom import PREFIX
from pipeline.sandbox.server import SandboxServer

HTTP = httpx.Client(trust_env=False, follow_redirects=False)



def routing_error(sandbox: SandboxServer, method: str, path: str, status: int) -> dict[str, Any]:
    """The JSON answer to a request no route takes (sent with a hostile Host header): its status,
    a JSON body and no redirect."""
    response = HTTP.request(method, sandbox.url + path, headers={"Host": "evil.example"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "location" not in response.headers
    document: dict[str, Any] = response.json()
    return document

@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/nope", 404),
        ("GET", "/events", 405),
        ("PUT", "/events", 405),
        ("DELETE", "/events/bulk", 405),
        ("POST", "/events/", 404),
        ("GET", "/customers/cust-1/transactions/", 404),
    ],
)
def test_antavo_paths_answer_antavo_errors(sandbox: SandboxServer, method: str, path: str,
                                          status: int) -> None:
    error = routing_error(sandbox, method, path, status)["error"]
    assert error["code"] == 0
    assert error["type"] == ("NotFoundException" if status == 404 else "MethodNotAllowedException")
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", f"{PREFIX}/nope", 404),
        ("DELETE", f"{PREFIX}/customer_events/purchases/create", 405),
        ("GET", f"{PREFIX}/customer_events/purchases/create", 405),
        ("POST", f"{PREFIX}/customer_events/purchases/create/", 404),
    ],
)
def test_crmcom_paths_answer_crmcom_envelopes(sandbox: SandboxServer, method: str, path: str,
                                              status: int) -> None:
    document = routing_error(sandbox, method, path, status)
    assert set(document) == {"status", "data"} and document["data"] is None
    # never show's NOT_FOUND: a client would take a wrong URL for "no such purchase"
    assert document["status"]["code"] == ("UNKNOWN_METHOD" if status == 404 else "HTTP_METHOD_NOT_ALLOWED")


def test_a_wrong_method_still_names_the_allowed_one(sandbox: SandboxServer) -> None:
    response = HTTP.get(sandbox.url + "/events")
    assert response.headers["allow"] == "POST"
