"""SFTP source: discover, fetch and archive export files in a folder on an SFTP server.

Connecting (host keys, credentials, timeouts, error translation) is
:mod:`pipeline.sources.sftp_connect`; streaming a file is :mod:`pipeline.sources.sftp_stream`.
Discovery rules (pattern, look-back, temp names, readiness, hostile names) are shared with the
local source in :mod:`pipeline.sources.discovery`.

A fetch streams into the staging folder under a temporary name, hashing on the way, checks the
size, fsyncs and renames atomically; a dropped connection reconnects and restarts the file, up to
``source.fetch_attempts`` times with backoff. Remote names are checked by
:func:`pipeline.sources.discovery.unsafe_name_reason` before they ever become a local name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
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
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR, CMD_STATUS

from pipeline.config import Feed
from pipeline.errors import SourceFolderError, SourceUnavailableError
from pipeline.sources.base import FetchedFile, RemoteFile, SourceFileChangedError, SourceFileGoneError
from pipeline.sources.discovery import discover_ready, irregular_kind, marker_names, unsafe_name_reason
from pipeline.sources.sftp_connect import CONNECTION_ERRORS, SftpEndpoint, describe, open_sftp
from pipeline.sources.sftp_stream import HashingWriter, PipelinedReader, WriterFailed

__all__ = ["SftpSource"]

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0


class SftpSource:
    """The folder ``source.path`` on the SFTP server ``source.host`` (see feeds/README.md)."""

    def __init__(self, feed: Feed, *, sleep: Callable[[float], None] = time.sleep):
        if feed.source.kind != "sftp":
            raise ValueError(f"feed {feed.name!r} is not an sftp feed")
        self.config = feed.source
        self.endpoint = SftpEndpoint.of(feed)
        self.folder = feed.source.path
        self._sleep = sleep
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        # the files the last discovery saw and did not take, with why (name, reason)
        self.skipped: list[tuple[str, str]] = []
        self._irregular: dict[str, str] = {}

    @property
    def address(self) -> str:
        """``sftp://user@host:port/path`` for messages (never a secret)."""
        return self.endpoint.address

    # ---- connection -------------------------------------------------------------------------

    def connect(self) -> paramiko.SFTPClient:
        """Open (or reuse) the SSH connection and its SFTP session."""
        if self._sftp is None:
            self._client, self._sftp = open_sftp(self.endpoint)
        return self._sftp

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
            for name, attrs in _listdir_attr(sftp, self.folder):
                mode = attrs.st_mode or 0
                if not stat.S_ISREG(mode):
                    self._irregular[name] = irregular_kind(mode)
                    continue
                yield RemoteFile(name, int(attrs.st_size or 0), float(attrs.st_mtime or 0))
        except FileNotFoundError as exc:
            raise SourceFolderError(f"{self.address}: folder does not exist", key="source.path") from exc
        except PermissionError as exc:
            raise SourceFolderError(f"{self.address}: permission denied listing the folder",
                                    key="source.path") from exc
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"listing {self.address} failed: {describe(exc)}") from exc

    def check(self) -> None:
        """Log in and make sure the folder exists, before anything else of the run happens."""
        sftp = self.connect()
        try:
            attrs = sftp.stat(self.folder)
        except FileNotFoundError as exc:
            raise SourceFolderError(f"{self.address}: folder does not exist", key="source.path") from exc
        except PermissionError as exc:
            raise SourceFolderError(f"{self.address}: permission denied", key="source.path") from exc
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"checking {self.address} failed: {describe(exc)}") from exc
        if not stat.S_ISDIR(attrs.st_mode or 0):
            raise SourceFolderError(f"{self.address}: not a folder", key="source.path")

    def discover(self, business_dates: list[date]) -> Iterator[RemoteFile]:
        """Yield the ready files matching the feed's pattern for these dates, oldest first; the
        matching files not taken (unsafe names, links, FIFOs, not ready yet) end in ``skipped``."""
        self.skipped, self._irregular = [], {}
        yield from discover_ready(
            self._list, self.config, business_dates, sleep=self._sleep, where=str(self.address),
            skipped=self.skipped, irregular=self._irregular,
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
        path = self._remote(remote.name)
        temporary = staging_dir / f".fetch-{uuid.uuid4().hex}.part"
        final = staging_dir / remote.name
        received = 0
        writer: HashingWriter | None = None
        try:
            self._still_listed(sftp.lstat(path), remote)  # never opens a link, FIFO or folder
            with sftp.open(path, "rb") as handle:
                self._still_listed(handle.stat(), remote)
                writer = HashingWriter(temporary)
                for chunk in PipelinedReader(sftp, handle, remote.size).blocks():
                    writer.write(chunk)
                    received += len(chunk)
                digest = writer.close()
                after = sftp.lstat(path)
            if not stat.S_ISREG(after.st_mode or 0) or _identity(after) != (remote.size, remote.mtime):
                raise SourceFileChangedError(
                    f"{remote.name} changed on {self.address} while it was being fetched (still being "
                    "written, or replaced); not taken: the next run looks at it again"
                )
            if received != remote.size:
                raise _RetryableFetch(f"received {received} of {remote.size} bytes")
            os.replace(temporary, final)
            _fsync_dir(staging_dir)
        except BaseException as exc:
            if writer is not None:
                writer.abandon()
            temporary.unlink(missing_ok=True)
            if isinstance(exc, WriterFailed):
                raise exc.error from None  # the staging disk, not the connection: not retried
            if isinstance(exc, FileNotFoundError) and exc.filename is None:
                raise SourceFileGoneError(f"{remote.name} vanished from {self.address}") from exc
            if isinstance(exc, PermissionError) and exc.filename is None:
                raise SourceUnavailableError(
                    f"{remote.name} on {self.address}: permission denied reading the file"
                ) from exc
            if isinstance(exc, CONNECTION_ERRORS) and not (
                isinstance(exc, OSError) and exc.filename is not None  # local disk problems
            ):
                raise _RetryableFetch(describe(exc)) from exc
            raise
        log.info("fetched %s (%d bytes) from %s", remote.name, received, self.address)
        return FetchedFile(name=remote.name, path=final, size=received, mtime=remote.mtime, sha256=digest)

    def _still_listed(self, attrs: paramiko.SFTPAttributes, remote: RemoteFile) -> None:
        """Raise SourceFileChangedError unless ``attrs`` are of a regular file with the size and
        mtime ``remote`` was listed with."""
        mode = attrs.st_mode or 0
        if not stat.S_ISREG(mode):
            raise SourceFileChangedError(
                f"{remote.name} on {self.address} is now {irregular_kind(mode)}, not a regular file; not read"
            )
        if _identity(attrs) != (remote.size, remote.mtime):
            raise SourceFileChangedError(
                f"{remote.name} changed on {self.address} since it was listed ({remote.size} bytes then, "
                f"{attrs.st_size} now, or another modification time); not taken: the next run looks at "
                "it again"
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
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"{action} of {remote.name} failed: {describe(exc)}") from exc
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
                    sftp.rename(self._remote(name), target)  # plain SFTP v3: every server has it
                log.info("archived %s into %s", remote.name, archive)
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"{action} of {remote.name} failed: {describe(exc)}") from exc

    def quarantine(self, remote: RemoteFile) -> str:
        """Rename an unreadable file (and its done-marker) into ``source.quarantine_path`` (default
        ``quarantine/`` inside the folder); returns where it went.

        ``remote`` carries the size and mtime the file had when it was fetched; a file that differs
        now (a new version under the same name) is left where it is for the next run to read, and
        SourceFileChangedError says so.
        """
        sftp = self.connect()
        configured = self.config.quarantine_path or "quarantine"
        folder = configured if configured.startswith("/") else posixpath.join(self.folder, configured)
        try:
            now = sftp.stat(self._remote(remote.name))
            if (int(now.st_size or 0), float(now.st_mtime or 0)) != (remote.size, remote.mtime):
                raise SourceFileChangedError(
                    f"{remote.name} changed on {self.address} since it was fetched: not moved into "
                    "quarantine, left where it is; the next run reads the new content"
                )
            self._makedirs(sftp, folder, key="source.quarantine_path")
            where = ""
            for name in [remote.name, *self._markers_of(sftp, remote.name)]:
                target = _free_name(sftp, folder, name)
                sftp.rename(self._remote(name), target)
                where = where or target
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"quarantine of {remote.name} failed: {describe(exc)}") from exc
        log.warning("quarantined %s into %s on %s", remote.name, folder, self.address)
        return where

    def release(self, location: str, name: str) -> None:
        """Rename a quarantined file back into the folder under ``name`` (never over another file)."""
        sftp = self.connect()
        target = self._remote(name)
        try:
            try:
                sftp.stat(target)
            except FileNotFoundError:
                if posixpath.basename(location) == name:  # its done-marker comes back with it
                    held = posixpath.dirname(location)
                    for marker in marker_names(name, self.config.marker_suffixes):
                        with contextlib.suppress(FileNotFoundError):
                            sftp.stat(posixpath.join(held, marker))
                            sftp.rename(posixpath.join(held, marker), self._remote(marker))
                sftp.rename(location, target)
            else:
                raise SourceUnavailableError(f"{target} exists on {self.address}: move it before releasing")
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise SourceUnavailableError(f"release of {name} failed: {describe(exc)}") from exc
        log.info("released %s back into %s on %s", name, self.folder, self.address)

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
        self._makedirs(sftp, folder, key="source.archive_path")
        return folder

    def _makedirs(self, sftp: paramiko.SFTPClient, folder: str, *, key: str) -> None:
        """Create ``folder`` (and the folders above it) on the server; a folder the account may
        not create is a configuration problem (SourceFolderError, exit 78) naming it."""
        try:
            _makedirs(sftp, folder)
        except PermissionError as exc:
            raise SourceFolderError(
                f"{self.address}: permission denied creating the folder {exc.filename or folder}",
                key=key,
            ) from exc


LIST_DEPTH = 16  # READDIR requests kept in flight while listing


def _listdir_attr(sftp: paramiko.SFTPClient, folder: str) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
    """The entries of ``folder`` (without ``.`` and ``..``) as (name, attributes), streamed.

    paramiko's ``listdir_iter``/``listdir_attr`` decode names strictly as UTF-8, so one name in
    another encoding fails the whole listing (paramiko issue #546), and it has no bytes variant.
    This reads the READDIR answers with the same request/response primitives as
    :class:`~pipeline.sources.sftp_stream.PipelinedReader` and decodes names with
    ``surrogateescape``, as ``os.listdir`` does: such a name still matches a pattern by its other
    characters, and :func:`~pipeline.sources.discovery.unsafe_name_reason` refuses it.
    """
    client: Any = sftp  # the request/response primitives are not in paramiko's stubs
    attributes: Any = paramiko.SFTPAttributes
    kind, msg = client._request(CMD_OPENDIR, client._adjust_cwd(folder))
    if kind != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    handle = msg.get_binary()
    answers = _Answers()
    pending: deque[int] = deque()
    try:
        while True:
            while len(pending) < LIST_DEPTH:
                pending.append(client._async_request(answers, CMD_READDIR, handle))
            num = pending.popleft()
            while num not in answers.got:
                client._read_response()
            kind, msg = answers.got.pop(num)
            if kind == CMD_STATUS:
                try:
                    client._convert_status(msg)
                except EOFError:
                    return
                raise paramiko.SFTPError("unexpected status listing a folder")
            if kind != CMD_NAME:
                raise paramiko.SFTPError(f"unexpected response {kind} listing a folder")
            for _ in range(msg.get_int()):
                name = msg.get_binary().decode("utf-8", "surrogateescape")
                msg.get_binary()  # the ls -l style long name
                attrs = attributes._from_msg(msg)
                if name not in {".", ".."}:
                    yield name, attrs
    finally:
        with contextlib.suppress(Exception):
            client._request(CMD_CLOSE, handle)  # the answers still in flight are dropped


class _Answers:
    """Collects the answers paramiko hands back for asynchronous requests."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, msg: Message, num: int) -> None:  # called by paramiko
        self.got[num] = (kind, msg)


class _RetryableFetch(Exception):
    """A fetch attempt failed in a way a fresh connection can fix."""


def _makedirs(sftp: paramiko.SFTPClient, folder: str) -> None:
    """``mkdir -p`` on the server. A refused ``mkdir`` raises its own error (PermissionError),
    naming the folder, not the "no such file" of the look that follows it."""
    if _is_dir(sftp, folder):
        return
    parent = posixpath.dirname(folder.rstrip("/"))
    if parent and parent != folder:
        _makedirs(sftp, parent)
    try:
        sftp.mkdir(folder)
    except OSError as exc:
        if not _is_dir(sftp, folder):  # not made meanwhile by another client
            raise type(exc)(exc.errno, exc.strerror or str(exc), folder) from exc


def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
    """Whether ``path`` is a folder on the server (False when it does not exist)."""
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
    except FileNotFoundError:
        return False


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


def _identity(attrs: paramiko.SFTPAttributes) -> tuple[int, float]:
    """(size, mtime) of a server's answer, as a listing gives them."""
    return int(attrs.st_size or 0), float(attrs.st_mtime or 0)


def _fsync_dir(folder: Path) -> None:
    """fsync a local folder; an error names it (an OSError without a file name is the connection's)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from exc
    finally:
        os.close(fd)
