"""What every file source (local folder, SFTP) promises the fetch stage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal, Protocol

from pipeline.errors import SourceUnavailableError

__all__ = ["FetchedFile", "RemoteFile", "Source", "SourceFileChangedError", "SourceFileGoneError"]


@dataclass(frozen=True)
class RemoteFile:
    """A file the source offers, ready to be fetched."""

    name: str  # the remote base name (never used as a local path as is)
    size: int
    mtime: float  # seconds since the epoch


class SourceFileChangedError(SourceUnavailableError):
    """The file at the source is no longer the one fetched (another version under its name)."""


class SourceFileGoneError(SourceUnavailableError):
    """The file is no longer at the source (it vanished before or while it was read)."""


@dataclass(frozen=True)
class FetchedFile:
    """A file staged locally, with its identity."""

    name: str
    path: Path
    size: int
    mtime: float
    sha256: str


class Source(Protocol):
    """A folder of exports somewhere."""

    def discover(self, business_dates: list[date]) -> Iterator[RemoteFile]:
        """Yield the files matching the feed's pattern for these dates that are ready to fetch."""
        ...

    def fetch(self, remote: RemoteFile, staging_dir: Path) -> FetchedFile:
        """Download one file into ``staging_dir`` atomically, hashing it on the way; a file no
        longer there raises SourceFileGoneError."""
        ...

    def finish(self, remote: RemoteFile, action: Literal["keep", "archive", "delete"]) -> None:
        """Archive, delete or keep a remote file whose rows all reached a final state."""
        ...

    def quarantine(self, remote: RemoteFile) -> str:
        """Move an unreadable file out of the way (into ``source.quarantine_path``); returns where.

        Raises SourceFileChangedError, and moves nothing, when the file is no longer the one
        fetched (``remote`` carries its size and mtime then)."""
        ...

    def release(self, location: str, name: str) -> None:
        """Move a quarantined file back under ``name``."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
