"""The sandbox HTTP server: every emulated platform plus the inspection endpoints.

* :func:`build_app` composes the platform routes (Antavo; CRM.COM when its module provides
  ``routes(state)``) with ``GET /_sandbox/stats``, ``GET /_sandbox/transactions[?platform=]``,
  ``GET /_sandbox/config`` (no secrets) and ``POST /_sandbox/reset``.
* :class:`SandboxServer` runs it with uvicorn in a background thread on a free loopback port
  (tests, demo, benchmarks); :func:`serve` runs it in the foreground (``posfeed sandbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pipeline.sandbox import antavo
from pipeline.sandbox.state import SandboxConfig, SandboxState

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


def build_app(state: SandboxState) -> Starlette:
    """The ASGI app of the sandbox over ``state``."""

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def transactions(request: Request) -> Response:
        platform = request.query_params.get("platform")
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

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        flusher = asyncio.create_task(_flush_forever(state)) if state.config.state_file else None
        try:
            yield
        finally:
            if flusher is not None:
                flusher.cancel()
            state.save_if_dirty()

    routes: list[BaseRoute] = [
        *_platform_routes(state),
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/transactions", transactions, methods=["GET"]),
        Route("/_sandbox/config", config, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _flush_forever(state: SandboxState, every: float = 0.5) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            state.save_if_dirty()
        except OSError as exc:
            logger.error("cannot save sandbox state: %s", exc)


def _uvicorn_config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          log_config=None, lifespan="on", timeout_graceful_shutdown=2)


def serve(state: SandboxState, *, host: str = "127.0.0.1", port: int = 8765,
          log_level: str = "warning") -> None:
    """Serve in the foreground until interrupted."""
    uvicorn.Server(_uvicorn_config(build_app(state), host, port, log_level)).run()


class SandboxServer:
    """A running sandbox in a background thread; ``with SandboxServer() as sandbox: sandbox.url``.

    Keyword arguments are :class:`SandboxConfig` fields (e.g. ``requests_per_minute=600``).
    """

    def __init__(self, state: SandboxState | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 **config: Any):
        self.state = state or SandboxState(SandboxConfig(**config))
        if state is not None:
            for key, value in config.items():
                setattr(self.state.config, key, value)
        self.host = host
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only when
        # the socket says it is TCP, and without it Nagle's algorithm and delayed ACKs hold each
        # answer back ~40 ms
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(build_app(self.state), host, self.port, "warning"))
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

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
