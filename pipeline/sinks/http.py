"""The HTTP client the delivery engine sends through: one pooled httpx client per event loop.

Adapters and the engine see only :class:`HttpClient`, :class:`HttpReply` and the two failures
below, never httpx's own types, so timeouts, proxies, TLS and cookies are decided here once.
HTTP/1.1 with keep-alive: the platforms limit requests per minute (Antavo's shared stack 1,500),
far below what one pool of keep-alive connections carries (see docs/BENCHMARKS.md, "Submit").
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import certifi
import httpx

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
    named by the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) is
    used, read once when the client is built; ``~/.netrc`` is never read (httpx reads it only when
    asked to, and credentials come from the feed's secrets only). Redirects are not followed.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ):
        self._deadline = timeout_seconds
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(timeout_seconds),
            verify=tls or tls_context(),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # a jar that keeps none
            trust_env=True,
            follow_redirects=False,
        )

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes = b""
    ) -> HttpReply:
        """Send one request and read its whole response; raises :class:`HttpError` subclasses.

        ``timeout_seconds`` bounds each phase (connect, write, every read) and the request as a
        whole: an answer that trickles in a byte at a time, or never ends, is a timeout too.
        """
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._client.request(method, url, headers=dict(headers), content=body)
        except TimeoutError as exc:
            raise HttpTimeout("DeadlineExceeded", f"no whole answer within {self._deadline:g} s") from exc
        except httpx.TimeoutException as exc:
            raise HttpTimeout(type(exc).__name__, _without_query(str(exc), url)) from exc
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise HttpConnectionError(type(exc).__name__, _without_query(str(exc), url)) from exc
        return HttpReply(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()


def _without_query(text: str, url: str) -> str:
    """``text`` with ``url`` shown without its query (it may carry an API key), for messages."""
    return text.replace(url, url.split("?", 1)[0]) if "?" in url else text
