"""Streaming a remote file over SFTP: pipelined reads in, hashing and writing in a thread.

:class:`PipelinedReader` keeps ``READ_DEPTH`` read requests of ``READ_BLOCK`` bytes in flight on
one SFTP handle, in the calling thread, as OpenSSH's own client does; :class:`HashingWriter`
hashes (sha256) and writes the blocks in a second thread, so the network is read meanwhile
(hashlib and file writes release the GIL). Together they buffer at most a few MiB whatever the
file size. Tuning notes and figures: docs/BENCHMARKS.md, "Fetch".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
from paramiko.message import Message
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64

__all__ = ["READ_BLOCK", "READ_DEPTH", "WRITE_QUEUE", "HashingWriter", "PipelinedReader", "WriterFailed"]

READ_BLOCK = 255 * 1024  # bytes per read request: OpenSSH's maximum; servers that cap lower answer
#                         with short reads, and the rest is requested again
READ_DEPTH = 16  # read requests kept in flight (4 MiB)
WRITE_QUEUE = 8  # received blocks waiting for the writer thread


class PipelinedReader:
    """Reads a remote file front to back with ``READ_DEPTH`` requests in flight, in one thread.

    paramiko's own ``prefetch`` issues requests from a helper thread that busy-waits and can fall
    back to one request at a time; this keeps the pipe as full as OpenSSH's client does. It uses
    paramiko's request/response primitives (the same in paramiko 3 to 5) and takes responses in
    any order.
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


class HashingWriter:
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
            raise WriterFailed(self._error)
        self._queue.put(chunk)

    def close(self) -> str:
        """Wait for every block, fsync and close; the sha256 hex digest.

        Any failure to write the local copy (e.g. a full disk, which a file smaller than the write
        buffer meets only at the final flush) raises WriterFailed with the first error.
        """
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            self._discard()
            raise WriterFailed(self._error)
        try:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
        except OSError as exc:
            self._discard()
            raise WriterFailed(exc) from exc
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop after an error elsewhere; the file is incomplete."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("abandoned")
            self._queue.put(None)
            self._thread.join()
        self._discard()

    def _discard(self) -> None:
        """Close the incomplete file; what is still buffered is lost, and so is a second error
        flushing it (closing retries the flush that just failed)."""
        with contextlib.suppress(OSError):
            self._out.close()


class WriterFailed(Exception):
    """Writing the local copy failed (a local problem such as a full disk; ``error`` says which)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error
