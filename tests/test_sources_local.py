"""The local folder source: templated discovery, readiness, atomic hashed fetch, finishing."""

from __future__ import annotations

import hashlib
import os
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
