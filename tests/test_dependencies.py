"""`pip install -e .` pulls one HTTP client: httpx, and no other one through any dependency."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, requires

OTHER_HTTP_CLIENTS = {"aiohttp", "requests", "urllib3", "pycurl", "treq"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def runtime_closure(package: str) -> set[str]:
    """Every distribution ``package`` needs at run time (no extras), installed ones followed."""
    seen: set[str] = set()
    todo = [package]
    while todo:
        current = todo.pop()
        try:
            needed = requires(current) or []
        except PackageNotFoundError:
            continue
        for requirement in needed:
            if "extra ==" in requirement:
                continue
            name = _name(requirement)
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_the_only_http_client_is_httpx() -> None:
    closure = runtime_closure("posfeed")
    assert "httpx" in closure
    assert not closure & OTHER_HTTP_CLIENTS, closure & OTHER_HTTP_CLIENTS
