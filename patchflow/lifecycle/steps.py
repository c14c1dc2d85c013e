"""The step runner: step specs as data, bound to a run's methods; running, undoing; signals.

A :class:`StepSpec` is data: a name, the names of the run's ``do`` and ``undo`` methods and flags.
Apply and rollback each declare one tuple of specs at module level
(:data:`patchflow.lifecycle.apply.APPLY_STEPS`, :data:`patchflow.lifecycle.rollback.ROLLBACK_STEPS`,
:data:`patchflow.lifecycle.create.CREATE_STEPS`), checked against their run class when the module
is imported (:func:`checked_specs`: a spec naming a missing method fails the import), so status,
recovery and docs read a lifecycle without building a run. :func:`bind` turns the specs into
:class:`Step` objects for one run, and this module runs them:

* :func:`run_forward` records each journaled step in the journal before and after it runs
  (``started`` / ``done``; ``failed`` with the error);
* :func:`run_undo` undoes the reached steps in reverse (each undo journaled under the phase
  ``rolling_back``), with interruptions held back so the undo itself is never cut short;
* :func:`undo_plan` says which undos a journal still needs (the recovery decision over the same
  specs is :func:`patchflow.lifecycle.recovery.decide_recovery`).

SIGTERM and SIGHUP do what SIGINT does (:func:`interruptible`): they raise :class:`Interrupted` in
the running step, so the reached steps are undone and the run ends with its documented exit code.
The fault hooks (:mod:`patchflow.faults`, tests only) send this process a real signal at a step or
undo boundary; a few points inside steps take them too.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Literal

from patchflow.errors import PatchflowError, describe_os_error
from patchflow.faults import NO_FAULTS, FaultHooks
from patchflow.lifecycle.journal import Journal, StepRecord
from patchflow.progress import QUIET, Reporter

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
class StepSpec:
    """One step of a lifecycle, as data (no callables: readable without a run).

    Attributes:
        name: the name journaled and shown (``stage``, ``switch``...).
        do: the name of the run's method doing the work (raises to fail the step).
        undo: the name of the run's method putting back what ``do`` changed, also after a partial
            ``do`` (idempotent); "" when there is nothing to undo.
        stopped: the step runs while the application services are stopped.
        journaled: False for the pure steps before the lock (verify, plan): they change nothing.
        no_return: once this step is reached, recovery finishes the run instead of undoing it.
        undo_name: what the undo is called in the journal, patch-status and the kill hook
            (``restore-code``); default ``undo-<name>``.
    """

    name: str
    do: str
    undo: str = ""
    stopped: bool = False
    journaled: bool = True
    no_return: bool = False
    undo_name: str = ""

    @property
    def undo_label(self) -> str:
        """The journal name of this step's undo."""
        return self.undo_name or f"undo-{self.name}"


def checked_specs(owner: type, specs: Sequence[StepSpec]) -> tuple[StepSpec, ...]:
    """``specs`` as a tuple, once checked against the run class ``owner``: every ``do`` and
    ``undo`` names a method of ``owner`` and no two steps share a name. Called at module level, so
    a spec naming a missing method fails the import of the module declaring it.

    Raises:
        TypeError: a spec names a method ``owner`` lacks (or an attribute that is not callable),
            or a step name is repeated.
    """
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise TypeError(f"{owner.__name__}: step {spec.name!r} is declared twice")
        seen.add(spec.name)
        for role, method in (("do", spec.do), ("undo", spec.undo)):
            if role == "undo" and not method:
                continue
            if not callable(getattr(owner, method, None)):
                raise TypeError(
                    f"{owner.__name__}: step {spec.name!r} names {role}={method!r}, which is not a method of "
                    f"{owner.__name__}"
                )
    return tuple(specs)


@dataclass(frozen=True)
class Step:
    """A :class:`StepSpec` bound to one run's methods (:func:`bind`)."""

    spec: StepSpec
    do: Callable[[], None]
    undo: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def journaled(self) -> bool:
        return self.spec.journaled

    @property
    def stopped(self) -> bool:
        return self.spec.stopped

    @property
    def no_return(self) -> bool:
        return self.spec.no_return

    @property
    def undo_label(self) -> str:
        return self.spec.undo_label


def bind(specs: Sequence[StepSpec], run: object) -> list[Step]:
    """The steps of ``specs`` with their ``do`` and ``undo`` taken from ``run``'s methods."""
    return [Step(spec, getattr(run, spec.do), getattr(run, spec.undo) if spec.undo else None) for spec in specs]


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
    """One line for the journal and history: a PatchflowError's message, the signal's name, a
    system call's failure (:func:`patchflow.files.describe_os_error`), or the exception's text."""
    if isinstance(exc, PatchflowError):
        return exc.message
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc.name}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc)
    return str(exc) or type(exc).__name__


def run_forward(
    steps: Sequence[Step],
    journal: Callable[[], Journal | None] | None,
    *,
    log: Callable[[str], None],
    faults: FaultHooks = NO_FAULTS,
    on_done: Callable[[Step, float], None] | None = None,
    progress: Reporter = QUIET,
) -> None:
    """Run ``steps`` in order. A journaled step is recorded started before and done after it runs
    (failed, with the error, when it raises); ``journal()`` gives the current journal (None before
    the lock step creates it). A journaled step is reported to ``progress`` (started, finished)
    and logged: ``-> switch`` when it starts (once there is a journal) and, once done, with its
    duration (``   switch done in 13.2 s``: one line per step, also without a terminal).
    ``journal`` None: a run that keeps no journal (create-patch): its journaled steps are logged
    and reported the same way, each ``-> step`` line before the step. ``on_done(step, seconds)``
    is called after each step.

    Raises:
        BaseException: whatever a step raised (recorded in the journal first).
    """
    with ExitStack() as after_no_return:
        for step in steps:
            _run_one(step, journal, log=log, faults=faults, on_done=on_done, progress=progress)
            if step.no_return:
                # past the point of no return the run is finished, whatever signal comes
                after_no_return.enter_context(held_back(log))


def run_to_the_end(
    steps: Sequence[Step],
    journal: Callable[[], Journal | None],
    *,
    log: Callable[[str], None],
    faults: FaultHooks = NO_FAULTS,
    on_done: Callable[[Step, float], None] | None = None,
    progress: Reporter = QUIET,
    cleared_checkpoint: str | None = None,
) -> None:
    """:func:`run_forward` under :func:`interruptible` (SIGTERM and SIGHUP raise :class:`Interrupted`
    like Ctrl+C), then clear the journal: the run finished, nothing is left to recover. The fault
    hook ``cleared_checkpoint`` (when given) fires right after the clear.

    Raises:
        BaseException: whatever a step raised, or :class:`Interrupted`; the journal is then kept.
    """
    with interruptible():
        run_forward(steps, journal, log=log, faults=faults, on_done=on_done, progress=progress)
        current = journal()
        if current is not None:
            current.clear()
            if cleared_checkpoint:
                faults.checkpoint(cleared_checkpoint)


def _run_one(
    step: Step,
    journal: Callable[[], Journal | None] | None,
    *,
    log: Callable[[str], None],
    faults: FaultHooks,
    on_done: Callable[[Step, float], None] | None,
    progress: Reporter,
) -> None:
    faults.checkpoint(step.name, "before")
    current = journal() if step.journaled and journal is not None else None
    if current is not None:
        current.start(step.name)
    if current is not None or (step.journaled and journal is None):
        log(f"-> {step.name}")
    if step.journaled:
        progress.started(step.name)
    began = time.monotonic()
    try:
        step.do()
    except BaseException as exc:
        if step.journaled:
            progress.finished(step.name, time.monotonic() - began)
        current = journal() if step.journaled and journal is not None else None
        if current is not None:
            current.fail(step.name, describe_failure(exc))
        raise
    seconds = time.monotonic() - began
    if step.journaled:
        progress.finished(step.name, seconds)
    current = journal() if step.journaled and journal is not None else None
    if current is not None:
        current.finish(step.name)
    if step.journaled:
        log(f"   {step.name} done in {seconds:.1f} s")
    if on_done is not None:
        on_done(step, seconds)
    faults.checkpoint(step.name, "after")


def run_undo(
    steps: Sequence[Step],
    names: Sequence[str],
    journal: Journal,
    *,
    log: Callable[[str], None],
    faults: FaultHooks = NO_FAULTS,
    progress: Reporter = QUIET,
) -> None:
    """Undo the steps named in ``names``, in that order, each journaled under its
    :attr:`Step.undo_label` in phase ``rolling_back`` (also the kill hook's name), reported to
    ``progress`` and logged with its duration like a step. Signals are held back until it ends.

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
            faults.checkpoint(label, "before")
            journal.start(label)
            log(f"<- {label}")
            progress.started(label)
            began = time.monotonic()
            try:
                step.undo()
            except BaseException as exc:
                progress.finished(label, time.monotonic() - began)
                journal.fail(label, describe_failure(exc))
                raise
            seconds = time.monotonic() - began
            progress.finished(label, seconds)
            journal.finish(label)
            log(f"   {label} done in {seconds:.1f} s")
            faults.checkpoint(label, "after")


def reached_steps(steps: Sequence[StepSpec], records: Sequence[StepRecord]) -> list[str]:
    """Names of the journaled steps started in the forward phase, in list order."""
    started = {r.get("name") for r in records if r.get("phase", FORWARD) == FORWARD}
    return [s.name for s in steps if s.journaled and s.name in started]


def undo_plan(steps: Sequence[StepSpec], records: Sequence[StepRecord]) -> tuple[str, ...]:
    """The undos still to run for a run whose journal holds ``records``: every reached step with
    an undo, in reverse order, minus those whose undo is already done."""
    done_labels = {r.get("name") for r in records if r.get("phase") == ROLLING_BACK and r.get("state") == "done"}
    by_name = {s.name: s for s in steps}
    reached = reached_steps(steps, records)
    return tuple(n for n in reversed(reached) if by_name[n].undo and by_name[n].undo_label not in done_labels)
