"""`posfeed bench fetch`: our SFTP fetch against OpenSSH's own `sftp` client, in the same run.

A loopback OpenSSH sshd (internal-sftp) serves one file of random bytes. Each round downloads
it once with :class:`pipeline.sources.sftp.SftpSource` (connect, stream, hash, fsync, rename) and
once with ``sftp -b`` (connect, get), alternating which goes first; both copies are checked
byte for byte. The best round of each is reported, with the ratio ours / sftp's and our
process's peak memory growth while fetching (streaming keeps it flat whatever the file size).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.benchmarks.meter import ResourceMeter, current_rss
from pipeline.config import Feed
from pipeline.sources.sftp import SftpSource
from pipeline.testing.sshd import OpenSshServer

__all__ = ["FetchBenchResult", "run_fetch_benchmark"]

log = logging.getLogger(__name__)

MIB = 1 << 20


@dataclass(frozen=True)
class FetchBenchResult:
    """Throughput of both clients on the same file, best round of each."""

    size_bytes: int
    rounds: int
    ours_seconds: float
    sftp_seconds: float
    ours_peak_rss_growth_bytes: int
    cipher: str

    @property
    def ours_mib_s(self) -> float:
        """Our throughput in MiB/s."""
        return self.size_bytes / MIB / self.ours_seconds

    @property
    def sftp_mib_s(self) -> float:
        """OpenSSH sftp's throughput in MiB/s."""
        return self.size_bytes / MIB / self.sftp_seconds

    @property
    def ratio(self) -> float:
        """Our throughput as a share of sftp's (the target is at least 0.5)."""
        return self.ours_mib_s / self.sftp_mib_s

    def to_dict(self) -> dict[str, Any]:
        """The `posfeed bench fetch --json` document."""
        return {
            "size_mib": round(self.size_bytes / MIB, 1),
            "rounds": self.rounds,
            "ours_seconds": round(self.ours_seconds, 3),
            "ours_mib_s": round(self.ours_mib_s, 1),
            "sftp_seconds": round(self.sftp_seconds, 3),
            "sftp_mib_s": round(self.sftp_mib_s, 1),
            "ratio": round(self.ratio, 2),
            "target_ratio": 0.5,
            "meets_target": self.ratio >= 0.5,
            "ours_peak_rss_growth_mib": round(self.ours_peak_rss_growth_bytes / MIB, 1),
            "cipher": self.cipher,
        }


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(4 * MIB)  # the content only has to defeat compression, not be unique
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            piece = hashlib.sha256(written.to_bytes(8, "big")).digest() + piece[32:]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_ours(feed: Feed, staging: Path) -> tuple[float, int, str, str]:
    """Connect, discover the one file and fetch it; (seconds, rss growth, sha256, cipher)."""
    baseline = current_rss()
    meter = ResourceMeter(interval_seconds=0.01)
    started = time.perf_counter()
    with meter, meter.stage("fetch"), SftpSource(feed) as source:
        (remote,) = list(source.discover([]))
        fetched = source.fetch(remote, staging)
        transport = source.connect().get_channel().get_transport()  # type: ignore[union-attr]
        cipher = str(transport.remote_cipher)
    seconds = time.perf_counter() - started
    growth = max(0, meter.stages["fetch"].peak_rss_bytes - baseline)
    return seconds, growth, fetched.sha256, cipher


def _fetch_sftp(server: OpenSshServer, remote: Path, local: Path, workdir: Path) -> float:
    """Download with OpenSSH's sftp client in batch mode; seconds."""
    batch = workdir / "sftp.batch"
    batch.write_text(f'get "{remote}" "{local}"\n')
    started = time.perf_counter()
    command = server.sftp_command()
    command[-1:-1] = ["-b", str(batch)]  # options go before the destination
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sftp failed: {done.stderr.decode(errors='replace').strip()}")
    return time.perf_counter() - started


def run_fetch_benchmark(
    size_mb: float = 200, *, rounds: int = 3, workdir: Path | None = None
) -> FetchBenchResult:
    """Serve a ``size_mb`` MiB file from a loopback sshd and time both clients ``rounds`` times."""
    if shutil.which("sftp") is None:
        raise RuntimeError("OpenSSH's sftp client is missing (Debian: apt-get install openssh-client)")
    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="posfeed-bench-fetch-")) if workdir is None else workdir
    try:
        with OpenSshServer(base / "sshd") as server:
            exports = server.root / "exports"
            exports.mkdir(parents=True, exist_ok=True)
            size = max(1, int(size_mb * MIB))
            remote = exports / "bench.bin"
            expected = _write_random(remote, size)
            feed = Feed.model_validate(
                {
                    "name": "bench_fetch",
                    "source": server.source_settings(str(exports), pattern="*.bin", readiness="none"),
                }
            )
            ours: list[float] = []
            theirs: list[float] = []
            growth = 0
            cipher = ""
            for round_no in range(rounds):
                order = ("ours", "sftp") if round_no % 2 == 0 else ("sftp", "ours")
                for who in order:
                    target = base / f"out-{who}"
                    shutil.rmtree(target, ignore_errors=True)
                    target.mkdir()
                    if who == "ours":
                        seconds, grew, digest, cipher = _fetch_ours(feed, target)
                        growth = max(growth, grew)
                        ours.append(seconds)
                    else:
                        seconds = _fetch_sftp(server, remote, target / "bench.bin", base)
                        digest = _sha256(target / "bench.bin")
                        theirs.append(seconds)
                    if digest != expected:
                        raise RuntimeError(f"{who}: downloaded content differs from the served file")
                    log.info("round %d %s: %.3fs", round_no + 1, who, seconds)
                    shutil.rmtree(target, ignore_errors=True)
            return FetchBenchResult(size, rounds, min(ours), min(theirs), growth, cipher)
    finally:
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
