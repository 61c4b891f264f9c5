"""Gzip-compressed exports (``*.csv.gz``, ``*.jsonl.gz``, ``*.xml.gz``...): decompressed as they
are read, never written out whole.

A file is taken as gzip by its name (:func:`is_gzip_name`), so a ``.csv`` holding gzip stays
refused as binary. The file as stored (compressed) is what the ledger knows it by: its size and
sha256 are those of the ``.gz``. Reading it decompresses in pieces of :data:`CHUNK` bytes and
stops, the file unreadable, once more than ``format.max_decompressed_bytes`` came out (a gzip bomb:
a few kilobytes that would decompress to gigabytes). A file cut short (still being written when it
was fetched, or cut in transfer) or corrupt is unreadable with a reason saying which. A file of
several gzip members one after the other (written by appending) is read whole.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import IO

from pipeline.errors import UnreadableFileError

__all__ = ["CHUNK", "GzipReader", "gunzip", "is_gzip_name", "read_size"]

CHUNK = 1 << 20  # bytes decompressed at a time


def is_gzip_name(name: str) -> bool:
    """Whether a file is read as gzip-compressed: its name ends with ``.gz`` (any case)."""
    return name.lower().endswith(".gz")


class GzipReader(gzip.GzipFile):
    """A gzip stream over ``fileobj`` whose failures are :class:`UnreadableFileError` naming the
    file: cut short, corrupt, not gzip at all, or more than ``limit`` bytes decompressed."""

    def __init__(self, fileobj: IO[bytes], *, name: str, limit: int):
        super().__init__(fileobj=fileobj, mode="rb")
        self._source_name = name
        self._limit = limit

    def read(self, size: int | None = -1) -> bytes:
        at = self.tell()
        try:
            data = super().read(size)
        except EOFError as exc:
            raise UnreadableFileError(
                self._source_name, "the gzip data ends before its end (cut short: still being written "
                "when it was fetched, or cut in transfer)") from exc
        except (OSError, zlib.error) as exc:
            raise self._corrupt(exc, at) from exc
        if self.tell() > self._limit:
            raise UnreadableFileError(
                self._source_name, f"decompresses to more than {self._limit} bytes "
                "(format.max_decompressed_bytes): a gzip bomb, or a day larger than allowed")
        return data

    def _corrupt(self, exc: BaseException, at: int) -> UnreadableFileError:
        text = " ".join(str(exc).split())
        if at == 0 and text.startswith("Not a gzipped file"):
            return UnreadableFileError(self._source_name, "named .gz but not gzip-compressed")
        return UnreadableFileError(self._source_name, f"the gzip data is corrupt ({text[:80]})")


def gunzip(stream: IO[bytes], *, name: str, limit: int) -> bytes:
    """The decompressed content of the gzip ``stream`` (see :class:`GzipReader`)."""
    pieces: list[bytes] = []
    with GzipReader(stream, name=name, limit=limit) as reader:
        while piece := reader.read(CHUNK):
            pieces.append(piece)
    return b"".join(pieces)


def read_size(path: Path, name: str) -> int:
    """About how many bytes reading the stored file ``path`` (named ``name``) takes: its size, or
    for a gzip file the size its trailer gives (that of its last member, modulo 4 GiB: a size
    to plan by, never trusted; reading stops at ``format.max_decompressed_bytes``)."""
    stored = path.stat().st_size
    if not is_gzip_name(name) or stored < 18:  # a gzip header and trailer take 18 bytes
        return stored
    with path.open("rb") as handle:
        handle.seek(-4, 2)
        return max(stored, int.from_bytes(handle.read(4), "little"))
