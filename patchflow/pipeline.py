"""Steps as data, one runner for them, and the recovery decision after a kill.

A :class:`Step` is a name, a ``do``, an optional ``undo`` and flags. Apply and rollback are each
one ordered list of steps (:mod:`patchflow.apply`, :mod:`patchflow.rollback`); this module runs
such a list:

* :func:`run_forward` records each journaled step in the journal before and after it runs
  (``started`` / ``done``; ``failed`` with the error);
* :func:`run_undo` undoes the reached steps in reverse (each undo journaled under the phase
  ``rolling_back``), with interruptions held back so the undo itself is never cut short;
* :func:`decide_recovery` is the pure decision taken over the same list and a journal left by a
  killed process: *finish* it (a rollback, or an apply that reached its point of no return) or
  *undo* it (an apply before that point, or an automatic rollback in progress).

SIGTERM and SIGHUP do what SIGINT does (:func:`interruptible`): they raise :class:`Interrupted` in
the running step, so the reached steps are undone and the run ends with its documented exit code.
The test hook ``test_kill_at`` (``PATCHFLOW_TEST_KILL_AT=<step>[:after][=SIGNAL]``, or
``<undo name>``) sends this process a real signal (default SIGKILL) at a step boundary; a few
points inside steps take it too (``switch-file#<n>``, ``switch-file@<path>``, ``spawn-<service>:after``, ``release``,
``empty-trash``; see :func:`kill_point`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

from patchflow.errors import PatchflowError
from patchflow.journal import Journal, is_no_space

FORWARD = "forward"
ROLLING_BACK = "rolling_back"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) asked the run to stop; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopPipeline(Exception):
    """Raised by a step to end the run early without error (e.g. nothing to do)."""


@dataclass(frozen=True)
class Step:
    """One step of a pipeline.

    Attributes:
        name: the name journaled and shown (``stage``, ``switch``...).
        do: the work; raises to fail the step.
        undo: puts back what ``do`` changed, also after a partial ``do``; idempotent. None when
            there is nothing to undo.
        stopped: the step runs while the application services are stopped.
        journaled: False for the pure steps before the lock (verify, plan): they change nothing.
        no_return: once this step is reached, recovery finishes the run instead of undoing it.
        undo_name: what the undo is called in the journal, patch-status and the kill hook
            (``restore-code``); default ``undo-<name>``.
    """

    name: str
    do: Callable[[], None]
    undo: Callable[[], None] | None = None
    stopped: bool = False
    journaled: bool = True
    no_return: bool = False
    undo_name: str = ""

    @property
    def undo_label(self) -> str:
        """The journal name of this step's undo."""
        return self.undo_name or f"undo-{self.name}"


@dataclass(frozen=True)
class Decision:
    """What recovery does: ``finish`` runs ``steps`` forward in order, ``undo`` undoes ``steps``
    in the given (reverse) order, ``nothing`` leaves all as it is."""

    kind: Literal["finish", "undo", "nothing"]
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recovery:
    """What a recovery did: the interrupted ``action`` of ``version``, the ``decision`` carried
    out, and ``stopped_seconds``, the real time the services were down from the killed run's stop
    until now (None when it had not stopped them)."""

    action: str
    version: str
    decision: Decision
    stopped_seconds: float | None

    def describe(self) -> str:
        """One line for the operator: ``the interrupted apply of 2.3.0 was undone (...)``."""
        done = {"finish": "finished", "undo": "undone", "nothing": "closed (nothing was left to do)"}
        down = f"; services were down {self.stopped_seconds:.1f} s in all" if self.stopped_seconds else ""
        return f"the interrupted {self.action} of {self.version} was {done[self.decision.kind]}{down}"


def checkpoint(kill_at: str, step: str, when: str) -> None:
    """Test hook: send this process a signal at ``step`` ``before``/``after`` when ``kill_at``
    (``<step>[:after][=SIGNAL]``, e.g. ``migrate:after=SIGTERM``; default SIGKILL) asks."""
    if not kill_at:
        return
    where, _, signame = kill_at.partition("=")
    name, _, moment = where.partition(":")
    if name == step and (moment or "before") == when:
        os.kill(os.getpid(), signal.Signals[signame or "SIGKILL"])


def kill_point(kill_at: str, name: str) -> Callable[[str], None]:
    """Test hook inside a step: a callable whose ``n``-th call, with ``label``, does what
    :func:`checkpoint` does for ``<name>#<n>`` and for ``<name>@<label>`` (e.g.
    ``switch-file@public/a.js=SIGINT``: the switch is interrupted with the temporary copy of
    ``public/a.js`` written and not yet renamed). Does nothing when ``kill_at`` is empty."""
    count = 0

    def hit(label: str) -> None:
        nonlocal count
        count += 1
        checkpoint(kill_at, f"{name}#{count}", "before")
        checkpoint(kill_at, f"{name}@{label}", "before")

    return hit if kill_at else lambda label: None


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only)."""
    previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def held_back(log: Callable[[str], None]) -> Iterator[list[int]]:
    """Within the block those signals are noted, not acted on (an undo must not be cut short);
    yields the list of signals received."""
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        log(f"!! {signal.Signals(signum).name} received: finishing the rollback first")

    previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, note)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe_failure(exc: BaseException) -> str:
    """One line for the journal and history: a PatchflowError's message, the signal's name, or
    the exception's text."""
    if isinstance(exc, PatchflowError):
        return exc.message
    if is_no_space(exc):
        assert isinstance(exc, OSError)
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"the filesystem is full{where} (no space or no inodes left)"
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc.name}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return str(exc) or type(exc).__name__


def run_forward(
    steps: Sequence[Step],
    journal: Callable[[], Journal | None],
    *,
    log: Callable[[str], None],
    kill_at: str = "",
    on_done: Callable[[Step, float], None] | None = None,
) -> None:
    """Run ``steps`` in order. A journaled step is recorded started before and done after it runs
    (failed, with the error, when it raises); ``journal()`` gives the current journal (None before
    the lock step creates it). ``on_done(step, seconds)`` is called after each step.

    Raises:
        BaseException: whatever a step raised (recorded in the journal first).
    """
    with ExitStack() as after_no_return:
        for step in steps:
            _run_one(step, journal, log=log, kill_at=kill_at, on_done=on_done)
            if step.no_return:
                # past the point of no return the run is finished, whatever signal comes
                after_no_return.enter_context(held_back(log))


def _run_one(
    step: Step,
    journal: Callable[[], Journal | None],
    *,
    log: Callable[[str], None],
    kill_at: str,
    on_done: Callable[[Step, float], None] | None,
) -> None:
    checkpoint(kill_at, step.name, "before")
    current = journal() if step.journaled else None
    if current is not None:
        current.start(step.name)
        log(f"-> {step.name}")
    began = time.monotonic()
    try:
        step.do()
    except BaseException as exc:
        current = journal() if step.journaled else None
        if current is not None:
            current.fail(step.name, describe_failure(exc))
        raise
    current = journal() if step.journaled else None
    if current is not None:
        current.finish(step.name)
    if on_done is not None:
        on_done(step, time.monotonic() - began)
    checkpoint(kill_at, step.name, "after")


def run_undo(
    steps: Sequence[Step],
    names: Sequence[str],
    journal: Journal,
    *,
    log: Callable[[str], None],
    kill_at: str = "",
) -> None:
    """Undo the steps named in ``names``, in that order, each journaled under its
    :attr:`Step.undo_label` in phase ``rolling_back`` (also the kill hook's name). Signals are held
    back until it ends.

    Raises:
        PatchflowError: an undo failed (recorded in the journal, which stays for recovery).
    """
    by_name = {s.name: s for s in steps}
    journal.phase = ROLLING_BACK
    journal.save()
    with held_back(log):
        for name in names:
            step = by_name[name]
            if step.undo is None:
                continue
            label = step.undo_label
            checkpoint(kill_at, label, "before")
            journal.start(label)
            log(f"<- {label}")
            try:
                step.undo()
            except BaseException as exc:
                journal.fail(label, describe_failure(exc))
                raise
            journal.finish(label)
            checkpoint(kill_at, label, "after")


def reached_steps(steps: Sequence[Step], records: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the journaled steps started in the forward phase, in list order."""
    started = {r.get("name") for r in records if r.get("phase", FORWARD) == FORWARD}
    return [s.name for s in steps if s.journaled and s.name in started]


def undo_plan(steps: Sequence[Step], records: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The undos still to run for a run whose journal holds ``records``: every reached step with
    an undo, in reverse order, minus those whose undo is already done."""
    done_labels = {r.get("name") for r in records if r.get("phase") == ROLLING_BACK and r.get("state") == "done"}
    by_name = {s.name: s for s in steps}
    reached = reached_steps(steps, records)
    return tuple(
        n for n in reversed(reached) if by_name[n].undo is not None and by_name[n].undo_label not in done_labels
    )


def decide_recovery(action: str, steps: Sequence[Step], records: Sequence[dict[str, Any]], phase: str) -> Decision:
    """Decide how to end a run killed with the journal ``records`` (``phase`` its phase).

    * ``rollback``: always *finish* (a rollback is completed, never undone): run every journaled
      step from the first one not done (the first journaled step, lock, counts as done: it wrote
      the journal).
    * ``apply`` rolling back: *undo* the rest of the automatic rollback.
    * ``apply`` forward that reached a ``no_return`` step (commit): *finish* from the first step
      not done at or after it.
    * ``apply`` forward before that: *undo* the reached steps in reverse.

    Pure: reads only its arguments. ``nothing`` when there is nothing to run.
    """
    done = {
        r.get("name")
        for r in records
        if r.get("state") == "done" and (action == "rollback" or r.get("phase", FORWARD) == FORWARD)
    }
    journaled = [s for s in steps if s.journaled]
    if journaled:
        # the first journaled step (lock) writes the journal as its last act, so a journal means it
        # is done; it is never run again (the recovering run holds the lock itself)
        done.add(journaled[0].name)
    reached = set(reached_steps(steps, records))

    def finish_from(start: int) -> Decision:
        todo = tuple(s.name for s in journaled[start:] if s.name not in done)
        return Decision("finish", todo) if todo else Decision("nothing")

    if action == "rollback":
        return finish_from(0)
    if phase != ROLLING_BACK:
        for index, step in enumerate(journaled):
            if step.no_return and step.name in reached:
                return finish_from(index)
    todo = undo_plan(steps, records)
    return Decision("undo", todo) if todo else Decision("nothing")
