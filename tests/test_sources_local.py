"""The local folder source: templated discovery, readiness, atomic hashed fetch, finishing."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from pipeline.config import Feed
from pipeline.errors import SourceFolderError, SourceUnavailableError
from pipeline.sources import open_source
from pipeline.sources.base import RemoteFile, SourceFileChangedError
from pipeline.sources.local import LocalSource


def _feed(folder: Path, **source: object) -> Feed:
    return Feed.model_validate({
        "name": "local", "source": {"kind": "local", "path": str(folder),
                                    "pattern": "pos_{business_date:%Y%m%d}_*.csv", **source}})


def _old(path: Path) -> None:
    past = time.time() - 3600
    os.utime(path, (past, past))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in ("pos_20261120_a.csv", "pos_20261119_b.csv", "pos_20261120_c.csv.part", "other.csv",
                 "pos_20261118_d.csv"):
        (drop / name).write_text(f"content of {name}\n", encoding="utf-8")
        _old(drop / name)
    return drop


def test_discovery_templates_dates_and_ignores_temp_names(folder: Path) -> None:
    source = open_source(_feed(folder, readiness="none"))
    assert isinstance(source, LocalSource)
    names = [f.name for f in source.discover([date(2026, 11, 19), date(2026, 11, 20)])]
    assert sorted(names) == ["pos_20261119_b.csv", "pos_20261120_a.csv"]


def test_stable_readiness_waits_for_a_file_still_growing(folder: Path) -> None:
    growing = folder / "pos_20261120_e.csv"
    growing.write_text("x", encoding="utf-8")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        with growing.open("a", encoding="utf-8") as handle:
            handle.write("more")

    source = LocalSource(_feed(folder, readiness="stable", stable_seconds=0.5), sleep=sleep)
    names = [f.name for f in source.discover([date(2026, 11, 20)])]
    assert sleeps == [0.5]
    assert names == ["pos_20261120_a.csv"]


def test_marker_readiness(folder: Path) -> None:
    source = LocalSource(_feed(folder, readiness="marker"))
    assert list(source.discover([date(2026, 11, 20)])) == []
    (folder / "pos_20261120_a.csv.done").write_text("", encoding="utf-8")
    assert [f.name for f in source.discover([date(2026, 11, 20)])] == ["pos_20261120_a.csv"]


def test_fetch_is_atomic_and_hashed(folder: Path, tmp_path: Path) -> None:
    source = LocalSource(_feed(folder, readiness="none"))
    (remote,) = source.discover([date(2026, 11, 20)])
    fetched = source.fetch(remote, tmp_path / "staging")
    data = (folder / remote.name).read_bytes()
    assert fetched.sha256 == hashlib.sha256(data).hexdigest() and fetched.size == len(data)
    assert fetched.path.read_bytes() == data
    assert [p.name for p in (tmp_path / "staging").iterdir()] == [remote.name]
    with pytest.raises(SourceUnavailableError):
        source.fetch(RemoteFile("gone.csv", 1, 1.0), tmp_path / "staging")
    with pytest.raises(SourceUnavailableError, match="refusing"):
        source.fetch(RemoteFile("../escape.csv", 1, 1.0), tmp_path / "staging")


def test_finish_archives_with_marker_or_deletes(folder: Path) -> None:
    (folder / "pos_20261120_a.csv.done").write_text("", encoding="utf-8")
    source = LocalSource(_feed(folder, readiness="marker", archive_path="archive"))
    (remote,) = source.discover([date(2026, 11, 20)])
    source.finish(remote, "keep")
    assert (folder / remote.name).exists()
    source.finish(remote, "archive")
    assert sorted(p.name for p in (folder / "archive").iterdir()) == ["pos_20261120_a.csv",
                                                                       "pos_20261120_a.csv.done"]
    other = LocalSource(_feed(folder, readiness="none"))
    (remote_b,) = other.discover([date(2026, 11, 19)])
    other.finish(remote_b, "delete")
    assert not (folder / remote_b.name).exists()
    other.finish(remote_b, "delete")  # already gone: nothing to do


def test_a_file_changed_since_fetch_is_left_alone(folder: Path) -> None:
    source = LocalSource(_feed(folder, readiness="none"))
    (remote,) = source.discover([date(2026, 11, 20)])
    (folder / remote.name).write_text("a new version\n", encoding="utf-8")
    source.finish(remote, "delete")
    assert (folder / remote.name).exists()


def test_missing_folder_is_configuration(tmp_path: Path) -> None:
    source = LocalSource(_feed(tmp_path / "nowhere", readiness="none"))
    with pytest.raises(SourceFolderError):
        list(source.discover([date(2026, 11, 20)]))
    with pytest.raises(SourceFolderError, match="folder does not exist"):
        source.check()


def test_a_file_replaced_since_fetch_is_not_quarantined(folder: Path, tmp_path: Path) -> None:
    path = folder / "pos_20261120_a.csv"
    source = LocalSource(_feed(folder))
    fetched = source.fetch(next(f for f in source.discover([date(2026, 11, 20)]) if f.name == path.name),
                           tmp_path / "staging")
    path.write_text("the complete export\n", encoding="utf-8")
    with pytest.raises(SourceFileChangedError, match="since it was fetched"):
        source.quarantine(RemoteFile(fetched.name, fetched.size, fetched.mtime))
    assert path.read_text(encoding="utf-8") == "the complete export\n"
    assert not (folder / "quarantine").exists()
    assert source.quarantine(RemoteFile(path.name, path.stat().st_size, path.stat().st_mtime))
    assert (folder / "quarantine" / path.name).exists()


# ---- a file replaced between listing and fetch --------------------------------------------


def _listed(folder: Path, name: str = "pos_20261120_a.csv") -> tuple[LocalSource, RemoteFile]:
    source = LocalSource(_feed(folder, readiness="none"))
    (remote,) = (f for f in source.discover([date(2026, 11, 20)]) if f.name == name)
    return source, remote


def _staged(staging: Path) -> list[str]:
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


@pytest.mark.parametrize("target", ["/etc/passwd", "outside"])
def test_a_file_replaced_by_a_symlink_after_listing_is_not_read_through(
    folder: Path, tmp_path: Path, target: str
) -> None:
    source, remote = _listed(folder)
    pointed = Path(target) if target.startswith("/") else tmp_path / "secret.csv"
    if not target.startswith("/"):
        pointed.write_text("not for the feed\n", encoding="utf-8")
    (folder / remote.name).unlink()
    (folder / remote.name).symlink_to(pointed)
    with pytest.raises(SourceUnavailableError, match=rf"{remote.name}.*symbolic link"):
        source.fetch(remote, tmp_path / "staging")
    assert _staged(tmp_path / "staging") == []


def test_a_file_replaced_by_a_fifo_after_listing_is_never_read(folder: Path, tmp_path: Path) -> None:
    source, remote = _listed(folder)
    fifo = folder / remote.name
    fifo.unlink()
    os.mkfifo(fifo)
    written: list[BaseException] = []

    def writer() -> None:  # a peer writing into the FIFO as soon as someone opens it to read
        try:
            with fifo.open("wb") as out:
                out.write(b"transaction_id\nEVIL\n")
        except OSError as exc:  # the reader went away without reading: as it should
            written.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pytest.raises(SourceUnavailableError, match=rf"{remote.name}.*FIFO"):
            source.fetch(remote, tmp_path / "staging")
    finally:
        held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open return
        thread.join()
        os.close(held)
    assert _staged(tmp_path / "staging") == []


def test_a_file_replaced_by_a_directory_after_listing_is_refused(folder: Path, tmp_path: Path) -> None:
    source, remote = _listed(folder)
    (folder / remote.name).unlink()
    (folder / remote.name).mkdir()
    with pytest.raises(SourceUnavailableError, match=rf"{remote.name}.*directory"):
        source.fetch(remote, tmp_path / "staging")
    assert _staged(tmp_path / "staging") == []


def test_a_file_rewritten_after_listing_is_not_fetched_as_listed(folder: Path, tmp_path: Path) -> None:
    source, remote = _listed(folder)
    (folder / remote.name).write_text("the till started writing again", encoding="utf-8")
    with pytest.raises(SourceFileChangedError, match=rf"{remote.name}.*changed since it was listed"):
        source.fetch(remote, tmp_path / "staging")
    assert _staged(tmp_path / "staging") == []


def test_a_symlink_at_listing_time_is_skipped_and_reported(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.csv").write_text("not for the feed\n", encoding="utf-8")
    (folder / "pos_20261120_link.csv").symlink_to(tmp_path / "secret.csv")
    source = LocalSource(_feed(folder, readiness="none"))
    assert [f.name for f in source.discover([date(2026, 11, 20)])] == ["pos_20261120_a.csv"]
    assert source.skipped == [("pos_20261120_link.csv", "a symbolic link, not a regular file")]


def test_a_file_vanishing_while_the_folder_is_listed_is_not_a_missing_folder(
    folder: Path, tmp_path: Path
) -> None:
    for n in range(50):
        (folder / f"pos_20261120_n{n:02}.csv.part").write_text("x", encoding="utf-8")
    source = LocalSource(_feed(folder, readiness="none"))
    listing = source._list()
    first = next(listing)
    for path in folder.iterdir():  # the uploads are renamed away while the listing goes on
        if path.name != first.name and path.is_file():
            path.unlink()
    assert [f.name for f in listing] == []


def test_a_source_path_that_became_a_file_is_named_when_listing(tmp_path: Path) -> None:
    (tmp_path / "drop").write_text("not a folder", encoding="utf-8")  # e.g. swapped after check()
    source = LocalSource(_feed(tmp_path / "drop", readiness="none"))
    with pytest.raises(SourceFolderError, match=r"drop: not a folder"):
        list(source.discover([date(2026, 11, 20)]))


def test_hostile_names_are_skipped_with_why_and_the_rest_is_taken(folder: Path) -> None:
    for name in ("pos_20261120_bad\nname.csv", "pos_20261120_\x1b[31mred.csv", "pos_20261120_..csv"):
        (folder / name).write_text("x\n", encoding="utf-8")
    (folder / "..pos_20261120_x.csv").write_text("x\n", encoding="utf-8")
    source = LocalSource(_feed(folder, readiness="none", pattern="*pos_{business_date:%Y%m%d}_*.csv"))
    names = sorted(f.name for f in source.discover([date(2026, 11, 20)]))
    assert names == ["pos_20261120_..csv", "pos_20261120_a.csv"]  # '..' inside a name is harmless
    assert sorted(source.skipped) == [
        ("..pos_20261120_x.csv", "unsafe name: starts with '..'"),
        ("pos_20261120_\x1b[31mred.csv", "unsafe name: contains control characters"),
        ("pos_20261120_bad\nname.csv", "unsafe name: contains control characters"),
    ]
