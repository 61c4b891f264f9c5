"""Progress: rich bars on a terminal only, silent otherwise; the recording double for run tests."""

from __future__ import annotations

import io
import re
import threading

from pipeline.progress import NullProgress, Progress, RecordingProgress, RichProgress, make_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_unless_a_terminal_and_not_json() -> None:
    assert isinstance(make_progress(stream=io.StringIO()), NullProgress)
    assert isinstance(make_progress(stream=FakeTerminal(), json_output=True), NullProgress)
    bars = make_progress(stream=FakeTerminal())
    assert isinstance(bars, RichProgress)
    bars.close()
    assert isinstance(make_progress(stream=io.StringIO(), enabled=True), RichProgress)


def test_every_implementation_satisfies_the_interface() -> None:
    for progress in (NullProgress(), RecordingProgress(), RichProgress(io.StringIO())):
        assert isinstance(progress, Progress)


def test_rich_bars_show_each_stage_with_its_unit() -> None:
    screen = FakeTerminal()
    with RichProgress(screen) as bars:
        bars.start("fetch", 3)
        bars.advance("fetch", 3)
        bars.finish("fetch")
        bars.start("transform", 3)
        bars.advance("transform", 2)
        bars.finish("transform")  # a stage may end short (a stop): the bar shows what was done
        bars.start("submit", None)
        workers = [threading.Thread(target=lambda: [bars.advance("submit") for _ in range(50)])
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        bars.finish("submit")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # colours and cursor moves
    assert "3/3 files" in text
    assert "2/2 files" in text
    assert "200/200 transactions" in text


def test_recording_progress_counts_per_stage() -> None:
    progress = RecordingProgress()
    progress.start("submit", 10)
    progress.advance("submit", 4)
    progress.advance("submit", 6)
    progress.finish("submit")
    assert progress.done == {"submit": 10} and progress.totals == {"submit": 10}
    assert progress.events[-1] == ("finish", "submit", None)
