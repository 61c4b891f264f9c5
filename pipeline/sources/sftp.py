"""SFTP source: discover, fetch and archive export files on an SFTP server with paramiko.

The edge where paramiko and socket exceptions become :mod:`pipeline.errors`:

* host key unknown or changed, credentials refused -> :class:`SourceAuthError` (exit 78);
  trust-on-first-use only with ``source.trust_unknown_host = true``, which records the key;
* server unreachable, connection dropped, timeouts -> :class:`SourceUnavailableError` (exit 75).

A fetch streams into the staging folder under a temporary name, hashing on the way, checks the
size, fsyncs and renames atomically; a dropped connection reconnects and restarts the file, up to
``source.fetch_attempts`` times. Remote names are checked by
:func:`pipeline.sources.discovery.unsafe_name_reason` before they ever become a local name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import queue
import socket
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import paramiko
from paramiko.message import Message
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64
from paramiko.ssh_exception import IncompatiblePeer

from pipeline.config import Feed, resolve_secret
from pipeline.errors import SourceAuthError, SourceUnavailableError
from pipeline.sources.base import FetchedFile, RemoteFile
from pipeline.sources.discovery import find_ready, marker_names, unsafe_name_reason

__all__ = ["SftpSource", "host_key_line"]

log = logging.getLogger(__name__)

# Throughput knobs (see docs/BENCHMARKS.md, "Fetch"): few large requests and large SSH packets keep
# paramiko's per-packet Python work small; AEAD ciphers save the separate MAC pass.
READ_BLOCK = 255 * 1024  # bytes per read request: OpenSSH's maximum; servers that cap lower are
#                         answered with short reads, and the rest is requested again
READ_DEPTH = 16  # read requests kept in flight: 4 MiB, with the write queue the most a fetch buffers
WRITE_QUEUE = 8  # received blocks waiting to be hashed and written by the writer thread
WINDOW_SIZE = 1 << 24  # SSH channel window; large enough that the server never waits for us
MAX_PACKET_SIZE = 1 << 18  # SSH channel packet size we accept
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
_CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException)


def host_key_line(host: str, port: int, key: paramiko.PKey) -> str:
    """A known_hosts line for ``key`` of ``host:port`` (``[host]:port`` when the port is not 22)."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.get_name()} {key.get_base64()}"


def _prefer(available: tuple[str, ...], preferred: tuple[str, ...]) -> tuple[str, ...]:
    first = tuple(name for name in preferred if name in available)
    return first + tuple(name for name in available if name not in first)


def _fast_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport that offers the fastest algorithms first and takes large packets."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = _prefer(tuple(options.ciphers), PREFERRED_CIPHERS)
    options.digests = _prefer(tuple(options.digests), PREFERRED_MACS)
    transport.default_window_size = WINDOW_SIZE
    transport.default_max_packet_size = MAX_PACKET_SIZE
    return transport


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown hosts, or trust and record them on first use when the feed says so."""

    def __init__(self, source: SftpSource):
        self._source = source

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        s = self._source
        fingerprint = key.fingerprint
        if not s.config.trust_unknown_host:
            raise SourceAuthError(
                f"unknown host key {key.get_name()} {fingerprint} for {s.address}, not in "
                f"{s.known_hosts}; add it (ssh-keyscan -p {s.config.port} {s.config.host}) or set "
                "source.trust_unknown_host = true to trust it on first use",
                source=s.feed_name,
                key="source.known_hosts_file",
            )
        s.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with s.known_hosts.open("a", encoding="utf-8") as out:
            out.write(host_key_line(s.config.host or hostname, s.config.port, key) + "\n")
        with contextlib.suppress(OSError):
            s.known_hosts.chmod(0o600)
        log.warning(
            "trusting unknown host key %s %s of %s on first use; recorded in %s",
            key.get_name(), fingerprint, s.address, s.known_hosts,
        )


class SftpSource:
    """The folder ``source.path`` on the SFTP server ``source.host`` (see feeds/README.md)."""

    def __init__(self, feed: Feed, *, sleep: Callable[[float], None] = time.sleep):
        config = feed.source
        if config.kind != "sftp":
            raise ValueError(f"feed {feed.name!r} is not an sftp feed")
        if not config.host or not config.username:
            raise SourceAuthError(
                "an sftp source needs host and username", source=feed.name, key="source.host"
            )
        self.feed_name = feed.name
        self.config = config
        self.folder = config.path
        self.known_hosts = (
            feed.resolve_path(config.known_hosts_file)
            if config.known_hosts_file
            else Path("~/.ssh/known_hosts").expanduser()
        )
        self._private_key = feed.resolve_path(config.private_key_file) if config.private_key_file else None
        self._sleep = sleep
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def address(self) -> str:
        """``sftp://user@host:port/path`` for messages (never a secret)."""
        c = self.config
        folder = self.folder if self.folder.startswith("/") else "/" + self.folder
        return f"sftp://{c.username}@{c.host}:{c.port}{folder}"

    # ---- connection -------------------------------------------------------------------------

    def _credentials(self) -> tuple[paramiko.PKey | None, str | None]:
        c = self.config
        passphrase = (
            resolve_secret(env=c.private_key_passphrase_env, what="source.private_key_passphrase_env")
            if c.private_key_passphrase_env
            else None
        )
        pkey = None
        if self._private_key is not None:
            try:
                secret = passphrase.encode() if passphrase else None  # cryptography wants bytes
                pkey = paramiko.PKey.from_path(self._private_key, password=secret)  # type: ignore[arg-type]
            except FileNotFoundError as exc:
                raise SourceAuthError(
                    f"private key {self._private_key} does not exist",
                    source=self.feed_name, key="source.private_key_file",
                ) from exc
            except (paramiko.SSHException, ValueError, OSError) as exc:
                raise SourceAuthError(
                    f"cannot load private key {self._private_key}: {exc}"
                    + ("" if passphrase else " (encrypted? set source.private_key_passphrase_env)"),
                    source=self.feed_name, key="source.private_key_file",
                ) from exc
        password = (
            resolve_secret(env=c.password_env, what="source.password_env") if c.password_env else None
        )
        if pkey is None and password is None:
            raise SourceAuthError(
                "an sftp source needs private_key_file or password_env",
                source=self.feed_name, key="source.private_key_file",
            )
        return pkey, password

    def connect(self) -> paramiko.SFTPClient:
        """Open (or reuse) the SSH connection and its SFTP session."""
        if self._sftp is not None:
            return self._sftp
        c = self.config
        pkey, password = self._credentials()
        client = paramiko.SSHClient()
        try:
            if self.known_hosts.exists():
                client.load_host_keys(str(self.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise SourceAuthError(
                f"cannot read known hosts file {self.known_hosts}: {exc}",
                source=self.feed_name, key="source.known_hosts_file",
            ) from exc
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        try:
            client.connect(
                c.host or "",
                port=c.port,
                username=c.username,
                pkey=pkey,
                password=password,
                timeout=c.connect_timeout,
                banner_timeout=c.connect_timeout,
                auth_timeout=c.connect_timeout,
                channel_timeout=c.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
                transport_factory=_fast_transport,
            )
            transport = client.get_transport()
            assert transport is not None
            if c.keepalive_seconds:
                transport.set_keepalive(c.keepalive_seconds)
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise paramiko.SSHException("the server refused the sftp subsystem")
            sftp.get_channel().settimeout(c.read_timeout)  # type: ignore[union-attr]
        except SourceAuthError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SourceAuthError(
                f"host key of {self.address} CHANGED: got {exc.key.get_name()} {exc.key.fingerprint}, "
                f"{self.known_hosts} has {exc.expected_key.fingerprint}; refusing to connect "
                "(if the server's key really changed, update the known hosts file)",
                source=self.feed_name, key="source.known_hosts_file",
            ) from exc
        except IncompatiblePeer as exc:
            client.close()
            raise SourceAuthError(
                f"{self.address} offers no SSH algorithm we accept: {exc}", source=self.feed_name
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SourceAuthError(
                f"{self.address} refused our credentials ({'key' if pkey else 'password'}): {exc}",
                source=self.feed_name,
                key="source.private_key_file" if pkey else "source.password_env",
            ) from exc
        except _CONNECTION_ERRORS as exc:
            client.close()
            raise SourceUnavailableError(f"cannot reach {self.address}: {_describe(exc)}") from exc
        self._client, self._sftp = client, sftp
        log.info("connected to %s", self.address)
        return sftp

    def _drop_connection(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        for closer in (sftp, client):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()

    def close(self) -> None:
        """Close the SFTP session and the SSH connection."""
        self._drop_connection()

    def __enter__(self) -> SftpSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- discovery --------------------------------------------------------------------------

    def _remote(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def _list(self) -> Iterator[RemoteFile]:
        sftp = self.connect()
        try:
            for attrs in sftp.listdir_iter(self.folder):
                mode = attrs.st_mode or 0
                if not stat.S_ISREG(mode):
                    if stat.S_ISLNK(mode):
                        log.info("skipping symbolic link %r in %s", attrs.filename, self.address)
                    continue
                yield RemoteFile(attrs.filename, int(attrs.st_size or 0), float(attrs.st_mtime or 0))
        except FileNotFoundError as exc:
            raise SourceUnavailableError(f"{self.address}: folder does not exist") from exc
        except PermissionError as exc:
            raise SourceUnavailableError(f"{self.address}: permission denied listing the folder") from exc
        except _CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"listing {self.address} failed: {_describe(exc)}") from exc

    def discover(self, business_dates: list[date]) -> Iterator[RemoteFile]:
        """Yield the ready files matching the feed's pattern for these dates, oldest first."""
        yield from find_ready(
            self._list,
            self.config,
            business_dates,
            sleep=self._sleep,
            on_skip=lambda name, why: log.warning(
                "skipping remote file %r in %s: unsafe name (%s)", name, self.address, why
            ),
            on_not_ready=lambda f: log.info(
                "not taking %s yet: %s", f.name,
                "no done-marker" if self.config.readiness == "marker" else "still changing",
            ),
        )

    # ---- fetch ------------------------------------------------------------------------------

    def fetch(self, remote: RemoteFile, staging_dir: Path) -> FetchedFile:
        """Download ``remote`` into ``staging_dir`` atomically; reconnect and restart on drops."""
        reason = unsafe_name_reason(remote.name)
        if reason is not None:
            raise SourceUnavailableError(f"refusing remote name {remote.name!r}: {reason}")
        staging_dir.mkdir(parents=True, exist_ok=True)
        attempts = self.config.fetch_attempts
        for attempt in range(1, attempts + 1):
            try:
                fetched = self._fetch_once(remote, staging_dir)
            except _RetryableFetch as exc:
                self._drop_connection()
                if attempt == attempts:
                    raise SourceUnavailableError(
                        f"fetching {remote.name} from {self.address} failed {attempts} times; "
                        f"last: {exc}"
                    ) from exc
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
                log.warning(
                    "fetching %s failed (attempt %d of %d): %s; reconnecting in %.1fs",
                    remote.name, attempt, attempts, exc, delay,
                )
                self._sleep(delay)
                continue
            return fetched
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch_once(self, remote: RemoteFile, staging_dir: Path) -> FetchedFile:
        sftp = self.connect()  # auth errors are not retried
        temporary = staging_dir / f".fetch-{uuid.uuid4().hex}.part"
        final = staging_dir / remote.name
        received = 0
        writer: _HashingWriter | None = None
        try:
            with sftp.open(self._remote(remote.name), "rb") as handle:
                before = handle.stat()
                expected = int(before.st_size or 0)
                writer = _HashingWriter(temporary)
                for chunk in _PipelinedReader(sftp, handle, expected).blocks():
                    writer.write(chunk)
                    received += len(chunk)
                digest = writer.close()
                after = sftp.stat(self._remote(remote.name))
            if received != expected:
                raise _RetryableFetch(f"received {received} of {expected} bytes")
            if (after.st_size, after.st_mtime) != (before.st_size, before.st_mtime):
                raise _RetryableFetch("the file changed while it was being fetched")
            os.replace(temporary, final)
            _fsync_dir(staging_dir)
        except BaseException as exc:
            if writer is not None:
                writer.abandon()
            temporary.unlink(missing_ok=True)
            if isinstance(exc, _WriterFailed):
                raise exc.error from None  # the staging disk, not the connection: not retried
            if isinstance(exc, FileNotFoundError) and exc.filename is None:
                raise SourceUnavailableError(f"{remote.name} vanished from {self.address}") from exc
            if isinstance(exc, _CONNECTION_ERRORS) and not (
                isinstance(exc, OSError) and exc.filename is not None  # local disk problems
            ):
                raise _RetryableFetch(_describe(exc)) from exc
            raise
        log.info("fetched %s (%d bytes) from %s", remote.name, received, self.address)
        return FetchedFile(
            name=remote.name,
            path=final,
            size=received,
            mtime=float(after.st_mtime or remote.mtime),
            sha256=digest,
        )

    # ---- finish -----------------------------------------------------------------------------

    def finish(self, remote: RemoteFile, action: Literal["keep", "archive", "delete"]) -> None:
        """Archive (rename into ``source.archive_path``), delete or keep a fully processed file.

        ``remote`` carries the size and mtime the file had when it was fetched (the ledger's
        record); the file is left alone when the server's copy differs (a new version under the
        same name must be processed first). Its done-marker, if any, follows it.
        """
        if action == "keep":
            return
        sftp = self.connect()
        path = self._remote(remote.name)
        expected = (remote.size, remote.mtime)
        try:
            now = sftp.stat(path)
        except FileNotFoundError:
            log.warning("%s is gone from %s; nothing to %s", remote.name, self.address, action)
            return
        except _CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"{action} of {remote.name} failed: {_describe(exc)}") from exc
        if (int(now.st_size or 0), float(now.st_mtime or 0)) != expected:
            log.warning(
                "not going to %s %s: it changed on %s since it was fetched", action, remote.name, self.address
            )
            return
        names = [remote.name, *self._markers_of(sftp, remote.name)]
        try:
            if action == "delete":
                for name in names:
                    sftp.remove(self._remote(name))
                log.info("deleted %s from %s", remote.name, self.address)
            else:
                archive = self._archive_folder(sftp)
                for name in names:
                    target = _free_name(sftp, archive, name)
                    sftp.posix_rename(self._remote(name), target)
                log.info("archived %s into %s", remote.name, archive)
        except _CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"{action} of {remote.name} failed: {_describe(exc)}") from exc

    def _markers_of(self, sftp: paramiko.SFTPClient, name: str) -> list[str]:
        found = []
        for marker in marker_names(name, self.config.marker_suffixes):
            with contextlib.suppress(FileNotFoundError):
                sftp.stat(self._remote(marker))
                found.append(marker)
        return found

    def _archive_folder(self, sftp: paramiko.SFTPClient) -> str:
        configured = self.config.archive_path or "archive"
        folder = configured if configured.startswith("/") else posixpath.join(self.folder, configured)
        _makedirs(sftp, folder)
        return folder


class _PipelinedReader:
    """Reads a remote file front to back with ``READ_DEPTH`` requests in flight, in one thread.

    paramiko's own ``prefetch`` issues requests from a helper thread that busy-waits and, with a
    bound on requests in flight, can fall back to one request at a time; this keeps the pipe as
    full as OpenSSH's client does. It uses paramiko's request/response primitives (stable across
    paramiko 3 to 5) and takes responses in any order.
    """

    def __init__(self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, size: int):
        self._sftp: Any = sftp  # the request/response primitives are not in paramiko's stubs
        self._handle = handle.handle
        self._size = size
        self._next = 0
        self._responses: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, msg: Message, num: int) -> None:  # called by paramiko
        self._responses[num] = (kind, msg)

    def _request(self, offset: int, length: int) -> tuple[int, int, int]:
        num = self._sftp._async_request(self, CMD_READ, self._handle, int64(offset), int(length))
        return num, offset, length

    def _issue(self, pending: deque[tuple[int, int, int]]) -> None:
        while len(pending) < READ_DEPTH and self._next < self._size:
            length = min(READ_BLOCK, self._size - self._next)
            pending.append(self._request(self._next, length))
            self._next += length

    def blocks(self) -> Iterator[bytes]:
        """The file's bytes in order; stops early (short) if the file shrank."""
        pending: deque[tuple[int, int, int]] = deque()
        self._issue(pending)
        while pending:
            num, offset, length = pending.popleft()
            while num not in self._responses:
                self._sftp._read_response()
            kind, msg = self._responses.pop(num)
            if kind == CMD_STATUS:
                try:
                    self._sftp._convert_status(msg)
                except EOFError:
                    return  # the file is shorter than it was; the size check reports it
                raise paramiko.SFTPError(f"unexpected status for read at {offset}")
            if kind != CMD_DATA:
                raise paramiko.SFTPError(f"unexpected response {kind} for read at {offset}")
            data = msg.get_string()
            if not data:
                return
            if len(data) < length:  # the server capped the read: ask for the rest first
                pending.appendleft(self._request(offset + len(data), length - len(data)))
            self._issue(pending)  # refill the pipe before the caller hashes and writes
            yield data


class _HashingWriter:
    """Hashes and writes received blocks in a thread, so the network is read meanwhile.

    hashlib and file writes release the GIL; the queue bounds what waits in memory.
    """

    def __init__(self, path: Path):
        self._out = path.open("wb", buffering=1 << 20)
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=WRITE_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sftp-fetch-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                if self._error is None:
                    self._digest.update(chunk)
                    self._out.write(chunk)
        except BaseException as exc:  # handed to the fetching thread
            self._error = exc
            while self._queue.get() is not None:
                pass

    def write(self, chunk: bytes) -> None:
        """Queue one block (raises the writer's error, e.g. a full disk)."""
        if self._error is not None:
            raise _WriterFailed(self._error)
        self._queue.put(chunk)

    def close(self) -> str:
        """Wait for every block, fsync and close; the sha256 hex digest."""
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is not None:
                raise _WriterFailed(self._error)
            try:
                self._out.flush()
                os.fsync(self._out.fileno())
            except OSError as exc:
                raise _WriterFailed(exc) from exc
        finally:
            self._out.close()
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop after an error elsewhere; the file is incomplete."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("abandoned")
            self._queue.put(None)
            self._thread.join()
        self._out.close()


class _WriterFailed(Exception):
    """Writing the staged copy failed (a local problem, never retried)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _RetryableFetch(Exception):
    """A fetch attempt failed in a way a fresh connection can fix."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, paramiko.SSHException) else f"{type(exc).__name__}: {text}"


def _makedirs(sftp: paramiko.SFTPClient, folder: str) -> None:
    """``mkdir -p`` on the server."""
    try:
        if stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
            return
    except FileNotFoundError:
        pass
    parent = posixpath.dirname(folder.rstrip("/"))
    if parent and parent != folder:
        _makedirs(sftp, parent)
    try:
        sftp.mkdir(folder)
    except OSError:
        if not stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
            raise


def _free_name(sftp: paramiko.SFTPClient, folder: str, name: str) -> str:
    """``folder/name``, or ``folder/name.1``, ``.2``... when an earlier version is archived there."""
    candidate = posixpath.join(folder, name)
    counter = 0
    while True:
        try:
            sftp.stat(candidate)
        except FileNotFoundError:
            return candidate
        counter += 1
        candidate = posixpath.join(folder, f"{name}.{counter}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
