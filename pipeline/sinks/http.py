"""The HTTP client the delivery engine sends through: one pooled aiohttp session per event loop.

Sending is the submit stage's hot path (one request per guest checkout, one per bulk of members),
so the client is the one with the least work per request: aiohttp's C parser and connection pool
cost about a fifth of the CPU per request that httpx does on the same loopback server (see
docs/BENCHMARKS.md). Adapters and the engine see only :class:`HttpClient`, :class:`HttpReply` and
the two failures below, never aiohttp's own types.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import certifi

__all__ = ["HttpClient", "HttpConnectionError", "HttpError", "HttpReply", "HttpTimeout", "tls_context"]


class HttpError(Exception):
    """No response arrived; ``kind`` names the library's exception (for messages)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class HttpTimeout(HttpError):
    """The server did not answer within the timeout (the request may have reached it)."""


class HttpConnectionError(HttpError):
    """The connection failed or broke before a whole response was read."""


@dataclass(frozen=True)
class HttpReply:
    """A whole response: status, headers (looked up case-insensitively) and body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def tls_context() -> ssl.SSLContext:
    """Certificate checks against certifi's CA bundle (loading it is slow: build it once)."""
    return ssl.create_default_context(cafile=certifi.where())


class HttpClient:
    """Connection-reusing client of at most ``max_connections`` connections.

    Must be created and closed on the event loop that uses it. Cookies are never kept. A proxy
    named by the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) is used, looked up
    once per host rather than per request; ``~/.netrc`` is never read (credentials come from the
    feed's secrets only).
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ):
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=tls or tls_context()),
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            trust_env=False,  # per request it would read ~/.netrc and the proxy settings again
        )
        self._proxies: dict[tuple[str, str], str | None] = {}

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes = b""
    ) -> HttpReply:
        """Send one request and read its whole response; raises :class:`HttpError` subclasses."""
        try:
            async with self._session.request(
                method, url, headers=dict(headers), data=body, proxy=self._proxy_for(url)
            ) as response:
                content = await response.read()
                return HttpReply(response.status, response.headers, content)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError too
            raise HttpTimeout(type(exc).__name__, _without_query(str(exc), url)) from exc
        except aiohttp.ClientError as exc:
            raise HttpConnectionError(type(exc).__name__, _without_query(str(exc), url)) from exc

    def _proxy_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            proxy = getproxies().get(parts.scheme)
            self._proxies[key] = None if proxy is None or proxy_bypass(key[1]) else proxy
        return self._proxies[key]

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._session.close()


def _without_query(text: str, url: str) -> str:
    """``text`` with ``url`` shown without its query (it may carry an API key), for messages."""
    return text.replace(url, url.split("?", 1)[0]) if "?" in url else text
