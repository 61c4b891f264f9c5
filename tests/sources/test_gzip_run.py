"""`posfeed run` on gzipped exports (``*.csv.gz``) as tills write them: fetched over real SFTP from
a real OpenSSH sshd and sent to the sandbox; known by the file as stored; a half-written one
set aside, nothing of it sent, and read whole once the till has finished it."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import time
from pathlib import Path

from pipeline.errors import EXIT_DATA
from pipeline.sandbox.server import SandboxServer
from tests.runner_helpers import SAMPLE_ACME, delivered_ids
from tests.sftp_fixtures import SftpServer
from tests.sources.test_sftp_run import FILES, ledger_files, posfeed_run, sftp_feed, write_feed_file

BOTH = "pos_LON01_{business_date:%Y%m%d}_??.csv*"  # plain and gzipped exports


def with_broken_timestamp(text: str) -> tuple[str, str]:
    """``text`` (an export) with its first line's timestamp written on two lines (a quoted line
    break), and that line's transaction id."""
    rows = list(csv.reader(io.StringIO(text)))
    column = rows[0].index("timestamp")
    rows[1][column] = rows[1][column].replace(" ", "\n")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue(), rows[1][0]


def finished_earlier(path: Path, data: bytes) -> None:
    """``data`` written to ``path`` by a till that finished it an hour ago (a file modified in the
    seconds before the run is read, but left in place rather than archived: the fetch stage's
    racily-clean rule)."""
    path.write_bytes(data)
    earlier = time.time() - 3600
    os.utime(path, (earlier, earlier))


def rejects_of(summary: dict[str, object]) -> list[dict[str, str]]:
    with (Path(str(summary["reports_path"])) / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_gzipped_export_is_read_known_by_its_stored_bytes_and_its_rejects_reported(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    text, broken = with_broken_timestamp((SAMPLE_ACME / FILES[0]).read_text(encoding="utf-8"))
    packed = gzip.compress(text.encode())
    name = FILES[0] + ".gz"
    finished_earlier(sftp_dir / name, packed)
    finished_earlier(sftp_dir / FILES[1], (SAMPLE_ACME / FILES[1]).read_bytes())
    feed_file = write_feed_file(sftp_feed(sftp_server, sftp_dir, sandbox, pattern=BOTH),
                                tmp_path / "gz.toml")

    first = posfeed_run(feed_file, tmp_path, sandbox)
    assert first.returncode == EXIT_DATA, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert sorted(summary["files_new"]) == sorted([name, FILES[1]])
    assert summary["balanced"] is True and summary["accepted"] > 0
    sent = set(delivered_ids(sandbox))
    of_gz = {row.split(",", 1)[0] for row in text.splitlines()[1:]} - {broken}
    assert broken not in sent and of_gz & sent
    # the line whose timestamp holds a line break: a reject naming the .gz file, the line, the field
    (reject,) = [r for r in rejects_of(summary) if r["reject_code"] == "R036_LINE_BREAK_IN_FIELD"]
    assert (reject["source_file"], reject["source_line"], reject["reject_field"]) == (name, "2", "timestamp")
    assert reject["transaction_id"] == broken and "\n" not in reject["reject_reason"]
    # known by the file as stored: the compressed bytes' sha256 and size; archived as it came
    (record,) = [f for f in ledger_files(tmp_path) if f.name == name]
    assert (record.sha256, record.size) == (hashlib.sha256(packed).hexdigest(), len(packed))
    assert (sftp_dir / "archive" / name).read_bytes() == packed

    # the same .gz dropped again under another name: recognised by its content, not read again
    (sftp_dir / ("pos_LON01_20261120_13.csv.gz")).write_bytes(packed)
    second = posfeed_run(feed_file, tmp_path, sandbox)
    again = json.loads(second.stdout)
    assert again["files_new"] == [] and again["accepted"] == 0, second.stderr[-3000:]


def test_a_pattern_of_csv_files_does_not_take_gzipped_ones(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    (sftp_dir / (FILES[0] + ".gz")).write_bytes(gzip.compress((SAMPLE_ACME / FILES[0]).read_bytes()))
    (sftp_dir / FILES[1]).write_bytes((SAMPLE_ACME / FILES[1]).read_bytes())
    feed_file = write_feed_file(sftp_feed(sftp_server, sftp_dir, sandbox), tmp_path / "csv.toml")
    done = posfeed_run(feed_file, tmp_path, sandbox)
    assert json.loads(done.stdout)["files_new"] == [FILES[1]], done.stderr[-3000:]
    assert (sftp_dir / (FILES[0] + ".gz")).exists()


def test_a_half_written_gzip_is_set_aside_with_nothing_sent_then_read_whole_once_finished(
    sftp_server: SftpServer, sftp_dir: Path, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Taken while the till was still writing it (no readiness check here), a .gz is cut short:
    unreadable, quarantined, nothing of it sent; the finished file under its name is read whole."""
    whole = gzip.compress((SAMPLE_ACME / FILES[0]).read_bytes())
    name = FILES[0] + ".gz"
    (sftp_dir / name).write_bytes(whole[: len(whole) * 2 // 3])
    feed_file = write_feed_file(
        sftp_feed(sftp_server, sftp_dir, sandbox, pattern=BOTH, after_success="keep"), tmp_path / "half.toml")

    first = posfeed_run(feed_file, tmp_path, sandbox)
    assert first.returncode == EXIT_DATA, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    (unreadable,) = summary["unreadable_files"]
    assert unreadable["file"] == name and "cut short" in unreadable["reason"]
    assert summary["accepted"] == 0 and delivered_ids(sandbox) == []

    (sftp_dir / name).write_bytes(whole)  # the till finishes writing it
    second = posfeed_run(feed_file, tmp_path, sandbox)
    again = json.loads(second.stdout)
    assert again["files_new"] == [name] and again["accepted"] > 0, second.stderr[-3000:]
    assert again["unreadable_files"] == []
