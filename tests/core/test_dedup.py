"""Dedup cases: within a frame, across files and against known pairs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from pipeline.core.dedup import dedup
from pipeline.core.transform import transform_files
from tests.core.helpers import NOW, csv_text, feed, row, write


def checkouts(*pairs: tuple[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"transaction_id": [p[0] for p in pairs], "content_hash": [p[1] for p in pairs]})


def known(*pairs: tuple[str, str]) -> pl.DataFrame:
    return checkouts(*pairs)


def status(frame: pl.DataFrame) -> list[str]:
    return frame.get_column("dedup_status").to_list()


def test_all_new() -> None:
    assert status(dedup(checkouts(("a", "1"), ("b", "2")))) == ["new", "new"]


def test_exact_repeat_in_frame() -> None:
    assert status(dedup(checkouts(("a", "1"), ("b", "2"), ("a", "1")))) == ["new", "new", "duplicate"]


def test_different_content_in_frame_is_conflict_for_every_occurrence() -> None:
    got = dedup(checkouts(("a", "1"), ("a", "2"), ("a", "1"), ("b", "3")))
    assert status(got) == ["conflict", "conflict", "conflict", "new"]


def test_known_same_hash_is_duplicate() -> None:
    assert status(dedup(checkouts(("a", "1"), ("a", "1")), known(("a", "1")))) == ["duplicate", "duplicate"]


def test_known_other_hash_is_conflict() -> None:
    assert status(dedup(checkouts(("a", "2")), known(("a", "1")))) == ["conflict"]


def test_known_with_several_hashes() -> None:
    got = dedup(checkouts(("a", "1"), ("a", "3")), known(("a", "1"), ("a", "2")))
    assert status(got) == ["duplicate", "conflict"]


def test_idempotent() -> None:
    frame = checkouts(("a", "1"), ("a", "2"), ("b", "1"), ("b", "1"), ("c", "9"))
    once = dedup(frame, known(("c", "9")))
    assert_frame_equal(dedup(once, known(("c", "9"))), once)


def test_feeding_new_back_as_known_turns_them_into_duplicates() -> None:
    frame = checkouts(("a", "1"), ("b", "2"), ("b", "2"), ("c", "3"), ("c", "4"))
    once = dedup(frame)
    learned = once.filter(pl.col("dedup_status") == "new").select("transaction_id", "content_hash")
    again = dedup(frame, learned)
    assert status(again) == ["duplicate", "duplicate", "duplicate", "conflict", "conflict"]


def test_empty_frames() -> None:
    empty = checkouts()
    assert dedup(empty).height == 0
    assert dedup(empty, known(("a", "1"))).height == 0


def test_hourly_and_daily_files(tmp_path: Path) -> None:
    hourly = write(tmp_path, "pos_10.csv", csv_text([row(), row(transaction_id="T2")]))
    daily = write(
        tmp_path,
        "pos_daily.csv",
        csv_text(
            [
                row(unit_price="2.5", line_total="5"),  # same T1, other formatting
                row(transaction_id="T2", quantity="3", line_total="7.50"),  # T2 changed: conflict
                row(transaction_id="T3"),
            ]
        ),
    )
    result = transform_files([hourly, daily], feed(), now=NOW)
    got = result.checkouts.select("source_file", "transaction_id", "dedup_status").rows()
    assert got == [
        ("pos_10.csv", "T1", "new"),
        ("pos_10.csv", "T2", "conflict"),
        ("pos_daily.csv", "T1", "duplicate"),
        ("pos_daily.csv", "T2", "conflict"),
        ("pos_daily.csv", "T3", "new"),
    ]
    assert (result.summary["duplicates"], result.summary["conflicts"]) == (1, 2)


def test_known_from_an_earlier_run(tmp_path: Path) -> None:
    path = write(tmp_path, "pos.csv", csv_text([row(), row(transaction_id="T2")]))
    first = transform_files([path], feed(), now=NOW)
    pairs = first.checkouts.select("transaction_id", "content_hash")
    second = transform_files([path], feed(), now=NOW, known=pairs)
    assert status(second.checkouts) == ["duplicate", "duplicate"]
