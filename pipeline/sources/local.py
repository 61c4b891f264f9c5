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
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import BinaryIO, Literal

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
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone since the folder was read (an upload renamed into place)
                    if not stat.S_ISREG(info.st_mode):
                        self._irregular[entry.name] = irregular_kind(info.st_mode)
                        continue
                    yield RemoteFile(entry.name, info.st_size, info.st_mtime)
        except FileNotFoundError as exc:
            raise SourceFolderError(f"{self.folder}: folder does not exist", key="source.path") from exc
        except PermissionError as exc:
            raise SourceFolderError(f"{self.folder}: permission denied listing the folder",
                                    key="source.path") from exc
        except NotADirectoryError as exc:
            raise SourceFolderError(f"{self.folder}: not a folder", key="source.path") from exc
        except OSError as exc:  # an I/O error of the folder's disk: not the staging's, not ours
            raise SourceUnavailableError(
                f"listing {self.folder} failed: {exc.strerror or exc}; nothing was taken from it"
            ) from exc

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
        """Copy ``remote`` into ``staging_dir`` under a temporary name, hashing it, then rename.

        Only the regular file listed is read: a link, FIFO or folder now under its name, or a file
        whose size or mtime differs from the listing's (or changes while it is copied), raises
        SourceFileChangedError naming it; links are never followed and a FIFO never waited on.
        """
        reason = unsafe_name_reason(remote.name)
        if reason is not None:
            raise SourceUnavailableError(f"refusing file name {remote.name!r}: {reason}")
        staging_dir.mkdir(parents=True, exist_ok=True)
        source = self.folder / remote.name
        handle = open_listed(source, remote)
        temporary = staging_dir / f".fetch-{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with handle, temporary.open("wb") as out:
                while chunk := _read(handle, source):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
                after = os.fstat(handle.fileno())
            unchanged = (after.st_size, after.st_mtime) == (remote.size, remote.mtime) == (size, remote.mtime)
            if not (unchanged and _same_file(source, after)):
                raise SourceFileChangedError(
                    f"{source}: the file changed while it was being copied; not taken, the next run "
                    "reads it again"
                )
            final = staging_dir / remote.name
            os.replace(temporary, final)
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
            now = path.lstat()
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
        now = (self.folder / remote.name).lstat()
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


def open_listed(path: Path, remote: RemoteFile) -> BinaryIO:
    """Open the regular file ``path`` for reading, if it is still the one listed as ``remote``.

    Never follows a symbolic link (``O_NOFOLLOW``) nor waits on a FIFO (``O_NONBLOCK``); what was
    opened is checked with ``fstat``. Raises SourceFileGoneError when it is gone,
    SourceFileChangedError when something else is under its name, SourceUnavailableError (naming
    it) when it cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise SourceFileGoneError(f"{path}: vanished before it could be copied") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceFileChangedError(
                f"{path}: now a symbolic link, not read (links are never followed)"
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise SourceUnavailableError(f"{path}: permission denied reading the file") from exc
        raise SourceUnavailableError(f"{path}: cannot be opened: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceFileChangedError(
                f"{path}: now {irregular_kind(info.st_mode)}, not a regular file; not read"
            )
        if (info.st_size, info.st_mtime) != (remote.size, remote.mtime):
            raise SourceFileChangedError(
                f"{path}: changed since it was listed ({remote.size} bytes then, {info.st_size} "
                "now, or another modification time); not taken, the next run looks at it again"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read(handle: BinaryIO, path: Path) -> bytes:
    """The next chunk of the source file; a read error names the file (it is not the staging's)."""
    try:
        return handle.read(COPY_CHUNK)
    except OSError as exc:
        raise SourceUnavailableError(f"{path}: reading the file failed: {exc.strerror or exc}") from exc


def _same_file(path: Path, opened: os.stat_result) -> bool:
    """Whether ``path`` is still the file that was opened (not renamed over, not removed)."""
    try:
        now = path.lstat()
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
