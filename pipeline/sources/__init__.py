"""File sources: where a feed's export files come from (a local folder or an SFTP server)."""

from __future__ import annotations

from pipeline.config import Feed
from pipeline.sources.base import FetchedFile, RemoteFile, Source

__all__ = ["FetchedFile", "RemoteFile", "Source", "open_source"]


def open_source(feed: Feed) -> Source:
    """The source of ``feed`` (``[source] kind``); the caller closes it."""
    if feed.source.kind == "sftp":
        from pipeline.sources.sftp import SftpSource

        return SftpSource(feed)
    from pipeline.sources.local import LocalSource

    return LocalSource(feed)
