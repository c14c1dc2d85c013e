"""The live lines of patchflow.live with rich's real Console: what a line says, that a step's last
count is drawn as it ends, nothing without a terminal, and that a display that fails to draw
never fails the step. (The lines on a real pseudo-terminal during a real apply are in
tests/integration/test_say_what_happens.py.)"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from patchflow.live import StepView, describe_count, pausing, step_lines
from patchflow.progress import QUIET


@pytest.mark.parametrize(
    ("unit", "done", "total", "detail", "text"),
    [
        ("files", 1234, 20000, "switched", "1,234/20,000 files switched"),
        ("bytes", 3 * 1024 * 1024, None, "dumped", "3.0 MiB dumped"),
        ("migrations", 2, 5, "20250301090000_audit_log", "migration 2 of 5: 20250301090000_audit_log"),
    ],
)
def test_what_a_live_line_says(unit: str, done: int, total: int | None, detail: str, text: str) -> None:
    assert describe_count(unit, done, total, detail) == text


def test_a_step_is_drawn_with_its_counts_and_its_elapsed_time_and_removed_at_its_end() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    view = StepView(console)
    report = view.reporter()
    report.started("switch")
    count = report.files("switched")
    for done in range(1, 6):
        count(done, 5)
    report.finished("switch", 0.5)
    assert view.progress is None  # no step runs: no live display
    text = out.getvalue()
    assert "switch" in text and "1/5 files switched" in text and "5/5 files switched" in text
    assert " s" in text and "\x1b[" in text


def test_nothing_is_drawn_without_a_terminal() -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    with step_lines(console) as report:
        assert report is QUIET


class _GoneTerminal(io.StringIO):
    """A terminal whose writes fail, as one that went away (a stand-in: a closed pty cannot be made
    to fail only on write here)."""

    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")

    def isatty(self) -> bool:
        return True


def test_a_display_that_cannot_draw_never_fails_the_step() -> None:
    view = StepView(Console(file=_GoneTerminal(), force_terminal=True))
    report = view.reporter()
    report.started("switch")
    report.files("switched")(1, 2)
    report.finished("switch", 0.1)
    assert view.broken


def test_a_question_in_the_middle_of_a_step_is_asked_with_the_live_lines_off_the_screen() -> None:
    """A plan that changed under the lock is asked about in the lock step: while the question is
    asked no live display runs; after it, the step's line is drawn again."""
    view = StepView(Console(file=io.StringIO(), force_terminal=True, width=100))
    report = view.reporter()
    report.started("lock")
    seen: list[bool] = []

    def ask(change: str) -> None:
        assert view.progress is not None
        seen.append(view.progress.live.is_started)

    pausing(report, ask)("the plan changed")
    assert seen == [False]
    assert view.progress is not None and view.progress.live.is_started
    report.finished("lock", 0.1)
    assert pausing(QUIET, ask) is ask  # nothing drawn: the question as it is
