"""Progress reporting for a run: rich bars on a terminal, nothing otherwise.

A run reports through the small :class:`Progress` interface: ``start(stage, total)``,
``advance(stage, n)`` and ``finish(stage)`` for the stages ``fetch`` (files), ``transform``
(files) and ``submit`` (transactions). Calls may come from several threads. :func:`make_progress`
picks rich bars when stderr is a terminal and the command does not print `--json`, and the silent
:class:`NullProgress` otherwise, so cron, systemd and pipes never see control characters.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

__all__ = [
    "STAGES",
    "NullProgress",
    "Progress",
    "RecordingProgress",
    "RichProgress",
    "make_progress",
]

STAGES = ("fetch", "transform", "submit")
_UNITS = {"fetch": "files", "transform": "files", "submit": "transactions"}


@runtime_checkable
class Progress(Protocol):
    """What a run calls to report progress (every method is cheap and thread-safe)."""

    def start(self, stage: str, total: int | None = None) -> None:
        """A stage begins; ``total`` units are expected (None: unknown)."""

    def advance(self, stage: str, amount: int = 1) -> None:
        """``amount`` more units of ``stage`` are done."""

    def finish(self, stage: str) -> None:
        """The stage is over (whatever its count says)."""


class NullProgress:
    """Reports nothing (not a terminal, `--json`, tests, the scheduler daemon)."""

    def start(self, stage: str, total: int | None = None) -> None:
        """Ignore."""

    def advance(self, stage: str, amount: int = 1) -> None:
        """Ignore."""

    def finish(self, stage: str) -> None:
        """Ignore."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class RecordingProgress:
    """Keeps every call, for tests and for code that wants the counts afterwards."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []
        self.done: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def start(self, stage: str, total: int | None = None) -> None:
        """Record the start and total of a stage."""
        with self._lock:
            self.events.append(("start", stage, total))
            self.totals[stage] = total
            self.done.setdefault(stage, 0)

    def advance(self, stage: str, amount: int = 1) -> None:
        """Add ``amount`` to the stage's count."""
        with self._lock:
            self.events.append(("advance", stage, amount))
            self.done[stage] = self.done.get(stage, 0) + amount

    def finish(self, stage: str) -> None:
        """Record the end of a stage."""
        with self._lock:
            self.events.append(("finish", stage, None))


class RichProgress:
    """rich progress bars on stderr, one per stage, sharing the log handler's console if any."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _RichProgress

        console = _log_console() or Console(file=stream or sys.stderr, stderr=stream is None)
        self._bars = _RichProgress(
            TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._started = False

    def _ensure(self, stage: str, total: int | None) -> TaskID:
        task = self._tasks.get(stage)
        if task is None:
            if not self._started:
                self._bars.start()
                self._started = True
            task = self._bars.add_task(stage, total=total, unit=_UNITS.get(stage, ""))
            self._tasks[stage] = task
        return task

    def start(self, stage: str, total: int | None = None) -> None:
        """Show (or reset the total of) the stage's bar."""
        with self._lock:
            task = self._ensure(stage, total)
            self._bars.update(task, total=total)

    def advance(self, stage: str, amount: int = 1) -> None:
        """Move the stage's bar on."""
        with self._lock:
            task = self._ensure(stage, None)
            self._bars.advance(task, amount)

    def finish(self, stage: str) -> None:
        """Fill the stage's bar to what was done (a stage can end short, e.g. on stop)."""
        with self._lock:
            task = self._tasks.get(stage)
            if task is not None:
                done = self._bars.tasks[self._bars.task_ids.index(task)].completed
                self._bars.update(task, total=done)

    def close(self) -> None:
        """Stop redrawing (leaves the final bars on screen)."""
        with self._lock:
            if self._started:
                self._bars.stop()
                self._started = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _log_console() -> Console | None:
    """The console of an installed rich log handler, so bars and log lines do not tear."""
    from rich.logging import RichHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, RichHandler):
            return handler.console
    return None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_progress(*, json_output: bool = False, enabled: bool | None = None,
                  stream: IO[str] | None = None) -> RichProgress | NullProgress:
    """Bars when ``stream`` (stderr) is a terminal and not ``json_output``; else silent.

    ``enabled`` forces the choice either way. Use it as a context manager so bars are closed.
    """
    target = stream or sys.stderr
    show = enabled if enabled is not None else (not json_output and _isatty(target))
    return RichProgress(stream) if show else NullProgress()
