"""Live lines for the running steps of an apply or rollback: the task layer's side of
:mod:`patchflow.progress`.

On a terminal, each journaled step (and each undo) gets a line while it runs, redrawn as it goes:
a spinner, the step's name, what it has done so far (``1,234/20,000 files switched``, ``12.3 MiB
dumped``, ``migration 2 of 5: 20250301090000_audit_log``) and the seconds since it began. Lines
printed meanwhile (the log) appear above it; the line disappears when the step ends, leaving the
step's ``done in N s`` line. Steps started inside a step (a recovery run by the lock step) get
their own line below it.

Without a terminal nothing is drawn (no ANSI codes): the pipeline's one line per step with its
duration says what happened.

The display runs only while a step runs, so a confirmation prompt (asked in the plan, before any
journaled step) never appears under a live line; a question asked in the middle of a step (a plan
that changed under the lock) is asked with the lines taken off the screen (:func:`pausing`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from patchflow.progress import QUIET, Reporter
from patchflow.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

T = TypeVar("T")
REDRAW_EVERY = 0.1  # seconds: counts are redrawn at most this often (20,000 files, 20,000 calls)


def describe_count(unit: str, done: int, total: int | None, detail: str) -> str:
    """What a step has done, for its live line: ``1,234/20,000 files switched``, ``12.3 MiB
    dumped``, ``migration 2 of 5: <name>`` (see :data:`patchflow.progress.UNITS`)."""
    if unit == "bytes":
        return f"{human_bytes(done)} {detail}".strip()
    if unit == "migrations":
        return f"migration {done} of {total if total is not None else '?'}" + (f": {detail}" if detail else "")
    of = f"/{total:,}" if total is not None else ""
    return f"{done:,}{of} {unit} {detail}".strip()


class StepView:
    """The live lines of one command (see the module docstring); :meth:`reporter` gives the
    callables the core reports to."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.running: list[tuple[str, TaskID]] = []
        self.drawn = 0.0
        self.broken = False

    def reporter(self) -> LiveReporter:
        """The callables for the core; a failure to draw turns the display off, never the step."""
        return LiveReporter(
            started=self._guarded(self.started),
            finished=self._guarded(self.finished),
            count=self._guarded(self.count),
            view=self,
        )

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Take the live lines off the screen for the block (a question asked in the middle of a
        step: a plan that changed under the lock), then draw them again."""
        if self.progress is None or self.broken:
            yield
            return
        self.progress.stop()
        try:
            yield
        finally:
            if self.progress is not None and self.running and not self.broken:
                try:
                    self.progress.start()
                except Exception:
                    self.broken = True

    def _guarded(self, method: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if self.broken:
                return
            try:
                method(*args)
            except Exception:  # a terminal that went away, a rendering error: the apply goes on
                self.broken = True
                try:
                    self.close()
                except Exception:  # noqa: S110 - nothing more to draw
                    pass

        return call

    def started(self, name: str) -> None:
        """Add a line for step ``name`` (starting the live display when no step was running)."""
        if self.progress is None:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[work]}"),
                TextColumn("{task.elapsed:.1f} s", style="progress.elapsed"),  # tasks start when added
                console=self.console,
                transient=True,
                refresh_per_second=4,
            )
            self.progress.start()
        self.running.append((name, self.progress.add_task(name, total=None, work="")))
        self._draw(force=True)

    def count(self, unit: str, done: int, total: int | None, detail: str) -> None:
        """Show how far the innermost running step is (redrawn at most every :data:`REDRAW_EVERY`
        seconds; its first and last count at once)."""
        if self.progress is None or not self.running:
            return
        task = self.running[-1][1]
        first = not self.progress.tasks[self._index(task)].fields.get("work")
        self.progress.update(task, work=describe_count(unit, done, total, detail))
        self._draw(force=first or done == total)  # the first count shows at once, the last one too

    def finished(self, name: str, seconds: float) -> None:
        """Remove the line of step ``name`` after drawing its last state (the display stops when
        no step runs: a prompt that follows is never under a live line)."""
        if self.progress is None:
            return
        for index in range(len(self.running) - 1, -1, -1):
            if self.running[index][0] == name:
                self._draw(force=True)  # its last count, as it ends
                self.progress.remove_task(self.running.pop(index)[1])
                break
        if not self.running:
            self.close()

    def _index(self, task: TaskID) -> int:
        assert self.progress is not None
        return next(index for index, item in enumerate(self.progress.tasks) if item.id == task)

    def close(self) -> None:
        """Stop drawing (the live lines are removed)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.running = []

    def _draw(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self.drawn >= REDRAW_EVERY):
            self.progress.refresh()
            self.drawn = now


@dataclass(frozen=True)
class LiveReporter(Reporter):
    """The :class:`Reporter` of a :class:`StepView` (its view is what :func:`pausing` pauses)."""

    view: StepView | None = None


def pausing(reporter: Reporter, ask: Callable[[T], None]) -> Callable[[T], None]:
    """``ask`` (a question the core may put in the middle of a step) with the live lines of
    ``reporter`` off the screen while it runs; ``ask`` itself when nothing is drawn."""
    view = reporter.view if isinstance(reporter, LiveReporter) else None
    if view is None:
        return ask

    def asking(value: T) -> None:
        with view.paused():
            ask(value)

    return asking


@contextmanager
def step_lines(console: Console) -> Iterator[Reporter]:
    """Yield the :class:`Reporter` for a command's core calls: live lines on a terminal
    (:class:`StepView`), nothing without one (rich's live display is not even imported)."""
    if not console.is_terminal:
        yield QUIET
        return
    view = StepView(console)
    try:
        yield view.reporter()
    finally:
        view.close()
