"""What a long step is doing, reported by the core as plain callables and drawn by the task layer.

The core never prints: a step calls ``ctx.progress`` (a :class:`Reporter`) and the task layer
decides what the operator sees (:mod:`patchflow.live`: a live line per running step on a terminal,
nothing extra without one, where the journaled steps' ``-> step`` and ``step done in N s`` lines
already say what happens). Every callable defaults to doing nothing, so library use and tests need
no renderer.

The pipeline (:mod:`patchflow.lifecycle.steps`) calls :attr:`Reporter.started` and
:attr:`Reporter.finished` around every journaled step and undo; the steps themselves call
:attr:`Reporter.count` with how far they are, in one of the :data:`UNITS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: ``files`` (n of N paths switched, backed up or restored), ``bytes`` (written so far, total
#: unknown: a dump), ``migrations`` (the n-th of m is running; its name is the detail).
UNITS = ("files", "bytes", "migrations")


def _nothing_started(name: str) -> None:
    return None


def _nothing_finished(name: str, seconds: float) -> None:
    return None


def _nothing_counted(unit: str, done: int, total: int | None, detail: str) -> None:
    return None


@dataclass(frozen=True)
class Reporter:
    """The callables a run reports its progress to.

    Attributes:
        started: ``started(step)``: a journaled step or an undo (``restore-code``) began.
        finished: ``finished(step, seconds)``: it ended (done or failed) after ``seconds``.
        count: ``count(unit, done, total, detail)``: how far the running step is: ``done`` of
            ``total`` (None: not known) in ``unit`` (one of :data:`UNITS`); ``detail`` says what
            is counted (``switched``, ``dumped``) or, for migrations, the running one's name.
    """

    started: Callable[[str], None] = field(default=_nothing_started)
    finished: Callable[[str, float], None] = field(default=_nothing_finished)
    count: Callable[[str, int, int | None, str], None] = field(default=_nothing_counted)

    def files(self, detail: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callable for a step that handles ``total`` paths one by one."""
        return lambda done, total: self.count("files", done, total, detail)

    def bytes(self, detail: str) -> Callable[[int], None]:
        """A ``(done)`` callable for a step that writes bytes whose total is not known."""
        return lambda done: self.count("bytes", done, None, detail)

    def migrations(self) -> Callable[[int, int, str], None]:
        """A ``(n, m, name)`` callable: the n-th of m migrations, ``name``, is running."""
        return lambda n, m, name: self.count("migrations", n, m, name)


QUIET = Reporter()
