"""Per-stage wall time, CPU time and peak resident memory of the current process.

A background thread samples the resident set size (``/proc/self/statm``) every few milliseconds;
each open stage keeps the highest value seen while it was open, so stages may nest or overlap. CPU
time is the process's (every thread's) user + system time, as ``time.process_time`` reports it::

    meter = ResourceMeter()
    with meter:
        with meter.stage("transform"):
            ...
    meter.stages["transform"].wall_seconds

The process-wide peak (:func:`peak_rss`, the kernel's high-water mark) is exact; a stage's peak
is sampled, so a spike shorter than the interval can be missed. Given a ``round_trips`` counter
(e.g. :data:`pipeline.ledger.db.round_trips`), each stage also counts what it added.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["MeterProgress", "ResourceMeter", "StageMeasure", "current_rss", "peak_rss"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_STATM = Path("/proc/self/statm")
_STATUS = Path("/proc/self/status")


def current_rss() -> int:
    """Resident set size of this process now, in bytes (0 where /proc is missing)."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _rss_reader() -> Callable[[], int]:
    """A cheap repeated RSS read: one open file descriptor, re-read from offset 0."""
    try:
        fd = os.open(_STATM, os.O_RDONLY)
    except OSError:
        return current_rss

    def read() -> int:
        try:
            return int(os.pread(fd, 128, 0).split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return 0

    return read


def peak_rss() -> int:
    """The highest resident set size this process has had, in bytes.

    ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over an exec, so a process started
    by a big parent would report the parent's size.
    """
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class StageMeasure:
    """What one stage cost (summed over every time it was entered)."""

    name: str
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    entries: int = 0
    round_trips: int = 0
    _started_wall: float = field(default=0.0, repr=False)
    _started_cpu: float = field(default=0.0, repr=False)
    _started_trips: int = field(default=0, repr=False)

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain numbers for JSON."""
        return {
            "wall_seconds": round(self.wall_seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 4),
            "peak_rss_bytes": self.peak_rss_bytes,
            "round_trips": self.round_trips,
        }


class ResourceMeter:
    """Measures named stages of the running process (see the module docstring)."""

    def __init__(self, interval_seconds: float = 0.01, *,
                 round_trips: Callable[[], int] = lambda: 0) -> None:
        self.interval_seconds = interval_seconds
        self._round_trips = round_trips
        self.stages: dict[str, StageMeasure] = {}
        self._open: dict[str, StageMeasure] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ResourceMeter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start sampling."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and close any stage left open."""
        for name in list(self._open):
            self.leave(name)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def enter(self, name: str) -> None:
        """A stage starts (callback style; see :meth:`stage`)."""
        with self._lock:
            if name in self._open:
                return
            measure = self.stages.setdefault(name, StageMeasure(name))
            measure._started_wall = time.perf_counter()
            measure._started_cpu = time.process_time()
            measure._started_trips = self._round_trips()
            measure.peak_rss_bytes = max(measure.peak_rss_bytes, current_rss())
            measure.entries += 1
            self._open[name] = measure

    def leave(self, name: str) -> None:
        """A stage ends."""
        with self._lock:
            measure = self._open.pop(name, None)
            if measure is None:
                return
            measure.wall_seconds += time.perf_counter() - measure._started_wall
            measure.cpu_seconds += time.process_time() - measure._started_cpu
            measure.round_trips += self._round_trips() - measure._started_trips
            measure.peak_rss_bytes = max(measure.peak_rss_bytes, current_rss())

    @contextmanager
    def stage(self, name: str) -> Iterator[StageMeasure]:
        """Measure the body as stage ``name``."""
        self.enter(name)
        try:
            yield self.stages[name]
        finally:
            self.leave(name)

    def _sample(self) -> None:
        read = _rss_reader()
        while not self._stop.wait(self.interval_seconds):
            rss = read()
            with self._lock:
                for measure in self._open.values():
                    if rss > measure.peak_rss_bytes:
                        measure.peak_rss_bytes = rss


class MeterProgress:
    """A run's progress interface (:class:`pipeline.progress.Progress`) that measures each stage.

    ``start(stage)`` opens the stage on the meter, ``finish(stage)`` closes it; ``advance`` counts
    units (files, transactions) per stage in :attr:`done`.
    """

    def __init__(self, meter: ResourceMeter) -> None:
        self.meter = meter
        self.done: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, stage: str, total: int | None = None) -> None:
        """The stage begins."""
        self.meter.enter(stage)

    def advance(self, stage: str, amount: int = 1) -> None:
        """Count units done."""
        with self._lock:
            self.done[stage] = self.done.get(stage, 0) + amount

    def finish(self, stage: str) -> None:
        """The stage ends."""
        self.meter.leave(stage)
