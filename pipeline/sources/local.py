"""A local folder as a file source (``[source] kind = "local"``).

Discovery, temp-name filtering and readiness are shared with every source
(:mod:`pipeline.sources.discovery`); this module only lists, copies and moves files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Literal

from pipeline.config import Feed
from pipeline.errors import SourceFolderError, SourceUnavailableError
from pipeline.sources.base import FetchedFile, RemoteFile, SourceFileChangedError, SourceFileGoneError
from pipeline.sources.discovery import discover_ready, irregular_kind, marker_names, unsafe_name_reason

__all__ = ["LocalSource"]

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


class LocalSource:
    """The folder ``source.path`` (relative paths are resolved against the feed file's folder)."""

    def __init__(self, feed: Feed, *, sleep: Callable[[float], None] = time.sleep):
        self.feed_name = feed.name
        self.config = feed.source
        self.folder = feed.resolve_path(feed.source.path)
        self._sleep = sleep
        # the files the last discovery saw and did not take, with why (name, reason)
        self.skipped: list[tuple[str, str]] = []
        self._irregular: dict[str, str] = {}

    def _list(self) -> Iterator[RemoteFile]:
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if not entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            mode = entry.stat(follow_symlinks=False).st_mode
                            self._irregular[entry.name] = irregular_kind(mode)
                        continue
                    info = entry.stat(follow_symlinks=False)
                    yield RemoteFile(entry.name, info.st_size, info.st_mtime)
        except FileNotFoundError as exc:
            raise SourceFolderError(f"{self.folder}: folder does not exist", key="source.path") from exc
        except PermissionError as exc:
            raise SourceFolderError(f"{self.folder}: permission denied listing the folder",
                                    key="source.path") from exc

    def check(self) -> None:
        """Make sure the folder exists, before anything else of the run happens."""
        if not self.folder.is_dir():
            what = "not a folder" if self.folder.exists() else "folder does not exist"
            raise SourceFolderError(f"{self.folder}: {what}", key="source.path")

    def discover(self, business_dates: list[date]) -> Iterator[RemoteFile]:
        """Yield the ready files matching the feed's pattern for these dates, oldest first; the
        matching files not taken (unsafe names, links, FIFOs, not ready yet) end in ``skipped``."""
        self.skipped, self._irregular = [], {}
        yield from discover_ready(
            self._list, self.config, business_dates, sleep=self._sleep, where=str(self.folder),
            skipped=self.skipped, irregular=self._irregular,
        )

    def fetch(self, remote: RemoteFile, staging_dir: Path) -> FetchedFile:
        """Copy ``remote`` into ``staging_dir`` under a temporary name, hashing it, then rename."""
        reason = unsafe_name_reason(remote.name)
        if reason is not None:
            raise SourceUnavailableError(f"refusing file name {remote.name!r}: {reason}")
        staging_dir.mkdir(parents=True, exist_ok=True)
        source = self.folder / remote.name
        temporary = staging_dir / f".fetch-{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as handle, temporary.open("wb") as out:
                before = os.fstat(handle.fileno())
                while chunk := handle.read(COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            after = source.stat()
            if (after.st_size, after.st_mtime) != (before.st_size, before.st_mtime) or size != after.st_size:
                raise SourceUnavailableError(f"{source}: the file changed while it was being copied")
            final = staging_dir / remote.name
            os.replace(temporary, final)
        except FileNotFoundError as exc:
            temporary.unlink(missing_ok=True)
            raise SourceFileGoneError(f"{source}: vanished before it could be copied") from exc
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        log.info("fetched %s (%d bytes) from %s", remote.name, size, self.folder)
        return FetchedFile(remote.name, final, size, after.st_mtime, digest.hexdigest())

    def finish(self, remote: RemoteFile, action: Literal["keep", "archive", "delete"]) -> None:
        """Archive (move into ``source.archive_path``), delete or keep a fully processed file;
        its done-marker follows it. A file that changed since it was seen is left alone."""
        if action == "keep":
            return
        path = self.folder / remote.name
        try:
            now = path.stat()
        except FileNotFoundError:
            log.warning("%s is gone from %s; nothing to %s", remote.name, self.folder, action)
            return
        if (now.st_size, now.st_mtime) != (remote.size, remote.mtime):
            log.warning("not going to %s %s: it changed since it was fetched", action, path)
            return
        names = [remote.name] + [
            m for m in marker_names(remote.name, self.config.marker_suffixes) if (self.folder / m).exists()
        ]
        if action == "delete":
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()
            log.info("deleted %s from %s", remote.name, self.folder)
            return
        archive = self._made_folder(self.config.archive_path or "archive", key="source.archive_path")
        for name in names:
            target = archive / name
            counter = 0
            while target.exists():
                counter += 1
                target = archive / f"{name}.{counter}"
            os.replace(self.folder / name, target)
        log.info("archived %s into %s", remote.name, archive)

    def quarantine(self, remote: RemoteFile) -> str:
        """Move an unreadable file (and its done-marker) into ``source.quarantine_path`` (default
        ``quarantine/`` inside the folder); returns where it went. A file that changed since it was
        fetched is left where it is (SourceFileChangedError)."""
        now = (self.folder / remote.name).stat()
        if (now.st_size, now.st_mtime) != (remote.size, remote.mtime):
            raise SourceFileChangedError(
                f"{remote.name} changed in {self.folder} since it was fetched: not moved into "
                "quarantine, left where it is; the next run reads the new content"
            )
        folder = self._made_folder(self.config.quarantine_path or "quarantine", key="source.quarantine_path")
        names = [remote.name] + [
            m for m in marker_names(remote.name, self.config.marker_suffixes) if (self.folder / m).exists()
        ]
        where = ""
        for name in names:
            target = folder / name
            counter = 0
            while target.exists():
                counter += 1
                target = folder / f"{name}.{counter}"
            os.replace(self.folder / name, target)
            where = where or str(target)
        log.warning("quarantined %s into %s", remote.name, folder)
        return where

    def _made_folder(self, configured: str, *, key: str) -> Path:
        """The folder ``configured`` (absolute, or inside the source folder), created when missing;
        a folder that may not be created is a configuration problem (SourceFolderError, exit 78)
        naming it."""
        folder = Path(configured)
        folder = folder if folder.is_absolute() else self.folder / folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
            raise SourceFolderError(f"{why} creating the folder {exc.filename or folder}", key=key) from exc
        return folder

    def release(self, location: str, name: str) -> None:
        """Move a quarantined file back into the folder under ``name`` (never over another file)."""
        target = self.folder / name
        if target.exists():
            raise SourceUnavailableError(f"{target} exists: move or rename it before releasing {location}")
        held = Path(location)
        if held.name == name:  # its done-marker comes back with it
            for marker in marker_names(name, self.config.marker_suffixes):
                if (held.parent / marker).exists() and not (self.folder / marker).exists():
                    os.replace(held.parent / marker, self.folder / marker)
        os.replace(held, target)
        log.info("released %s back into %s", name, self.folder)

    def close(self) -> None:
        """Nothing to release."""
