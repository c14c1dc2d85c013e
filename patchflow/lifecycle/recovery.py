"""Recovery of a killed run: the pure decision (finish or undo), carrying it out, patch-status's advice.

:func:`decide_recovery` is pure, over the step specs and the journal; :func:`recover_interrupted`
carries it out; :func:`recovery_advice` names the command that recovers the install.

Called with the lock held (by the lock step of the next apply or rollback). Ends on exactly the
old or exactly the new version; a recovery that is itself killed is recovered again the same way.

Before it changes anything, a recovery ends what the killed run left working: every command still
carrying the marker of a run recorded in the journal (an orphaned ``psql``, ``pg_restore``,
migrate command; see :mod:`patchflow.runner`) and the tool's database sessions. An undo frees the
staging folder first (a run killed for space gets its room back before the rollback writes).
"""

from __future__ import annotations

from collections.abc import Sequence

from patchflow.context import Context
from patchflow.errors import PatchflowError, RollbackError
from patchflow.files import remove_tree
from patchflow.lifecycle.apply import APPLY_STEPS, ApplyRun
from patchflow.lifecycle.journal import HistoryRecord, Journal, StepRecord, append_history
from patchflow.lifecycle.rollback import ROLLBACK_STEPS, RollbackRun
from patchflow.lifecycle.steps import (
    FORWARD,
    ROLLING_BACK,
    Decision,
    Recovery,
    Step,
    StepSpec,
    describe_failure,
    reached_steps,
    run_forward,
    run_undo,
    undo_plan,
)
from patchflow.runner import end_marked
from patchflow.status_schema import LockInfo, RecoveryAdvice
from patchflow.version import parse_version

DATABASE_STEPS = ("snapshot", "backup", "migrate", "restore-database", "drop-snapshot", "dump-snapshot")


def decide_recovery(action: str, steps: Sequence[StepSpec], records: Sequence[StepRecord], phase: str) -> Decision:
    """Decide how to end a run killed with the journal ``records`` (``phase`` its phase).

    * ``rollback``: always *finish* (a rollback is completed, never undone): run every journaled
      step from the first one not done (the first journaled step, lock, counts as done: it wrote
      the journal).
    * ``apply`` rolling back: *undo* the rest of the automatic rollback.
    * ``apply`` forward that reached a ``no_return`` step (commit): *finish* from the first step
      not done at or after it.
    * ``apply`` forward before that: *undo* the reached steps in reverse.

    ``steps`` are the specs (:data:`patchflow.lifecycle.apply.APPLY_STEPS`,
    :data:`patchflow.lifecycle.rollback.ROLLBACK_STEPS`); no run is needed. Pure: reads only its
    arguments. ``nothing`` when there is nothing to run.
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


def end_leftovers(ctx: Context, journal: Journal) -> None:
    """End the commands the killed runs of ``journal`` left running and the tool's database
    sessions, then record this run's marker in the journal (so a kill of this recovery is
    recovered the same way)."""
    runners = [m for m in journal.notes.get("runners", []) if isinstance(m, str)]
    for marker in runners:
        if marker == ctx.run_marker:
            continue
        ended = end_marked(marker)
        if ended:
            ctx.log(f"   ended {len(ended)} command(s) the killed run left running (pid {', '.join(map(str, ended))})")
    if ctx.database is not None and any(
        journal.reached(n, p) for n in DATABASE_STEPS for p in ("forward", "rolling_back")
    ):
        ctx.database.terminate_sessions()
    if ctx.run_marker and ctx.run_marker not in runners:
        journal.notes["runners"] = [*runners, ctx.run_marker]
        journal.save()


def _specs(journal: Journal) -> tuple[StepSpec, ...]:
    """The step specs of the action ``journal`` records.

    Raises:
        PatchflowError: the journal records an unknown action.
    """
    specs = {"apply": APPLY_STEPS, "rollback": ROLLBACK_STEPS}.get(journal.action)
    if specs is None:
        raise PatchflowError(
            f"The journal {journal.path} records an unknown action {journal.action!r}.",
            "Check the install by hand and move the journal away.",
        )
    # an apply's journal also holds the steps of the rollback that finishes it, and their undos
    known = {name for spec in (*APPLY_STEPS, *ROLLBACK_STEPS) for name in (spec.name, spec.undo_label)}
    unknown = sorted({step["name"] for step in journal.steps} - known)
    if unknown:
        raise PatchflowError(
            f"The journal {journal.path} of an interrupted {journal.action} of {journal.version} records steps this "
            f"patchflow does not know ({', '.join(unknown)}; written by {journal.written_by or 'an unknown version'}): "
            "finishing or undoing it would skip them. Nothing was changed.",
            "Recover it with the patchflow that wrote it (upgrade patchflow here), then run the command again.",
        )
    return specs


def _run_of(ctx: Context, journal: Journal) -> tuple[list[Step], ApplyRun | RollbackRun]:
    """The killed run of ``journal``, resumed, and its steps bound to it.

    Raises:
        PatchflowError: the journal records an unknown action (or, as ``resume``, a damaged one).
    """
    _specs(journal)
    if journal.action == "apply":
        apply_run = ApplyRun.resume(ctx, journal)
        return apply_run.steps(), apply_run
    rollback_run = RollbackRun.resume(ctx, journal)
    return rollback_run.steps(), rollback_run


def recover_interrupted(ctx: Context, journal: Journal) -> Recovery:
    """Finish or undo the run recorded in ``journal``; returns what it did.

    Raises:
        RollbackError: the recovery could not complete (the journal stays for the next attempt,
            and says which step failed).
    """
    steps, run = _run_of(ctx, journal)
    decision = decide_recovery(journal.action, _specs(journal), journal.steps, journal.phase)
    ctx.log(
        f"recovering an interrupted {journal.action} of {journal.version} "
        f"(last step: {journal.current_step or 'none'}, phase {journal.phase}): "
        f"{decision.kind} {', '.join(decision.steps) or '-'}"
    )
    try:
        end_leftovers(ctx, journal)
        if decision.kind == "finish":
            wanted = set(decision.steps)
            run_forward(
                [s for s in steps if s.name in wanted],
                lambda: journal,
                log=ctx.log,
                faults=ctx.settings.faults,
                progress=ctx.progress,
            )
        elif decision.kind == "undo":
            if isinstance(run, ApplyRun):
                remove_tree(run.staging)  # room first: the undos never need the staged tree
            run_undo(steps, decision.steps, journal, log=ctx.log, faults=ctx.settings.faults, progress=ctx.progress)
    except Exception as exc:
        hint = exc.hint if isinstance(exc, PatchflowError) else ""
        raise RollbackError(
            f"The interrupted {journal.action} of {journal.version} could not be "
            f"{'finished' if decision.kind == 'finish' else 'undone'}: {describe_failure(exc)}",
            (hint + " " if hint else "")
            + f"Fix the cause and run `inv rollback-patch --version {journal.version} --yes` again; "
            "`inv patch-status` shows what is left.",
        ) from None
    if isinstance(run, ApplyRun):
        run.cleanup_after_recovery(decision)
    stopped = journal.seconds_since("stop", "forward" if journal.action == "apply" else "rolling_back")
    journal.clear()
    if decision.kind == "undo" and journal.action == "apply":
        record: HistoryRecord = {
            "action": "apply",
            "run_id": journal.run_id,
            "from_version": journal.from_version or None,
            "to_version": journal.version,
            "started_at": journal.started_at,
            "result": "rolled_back" if journal.reached("stop") else "interrupted",
            "recovered": True,
            "backup": journal.backup,
        }
        if stopped is not None:
            record["stopped_seconds"] = round(stopped, 3)
        append_history(ctx.paths.history, record)
    recovery = Recovery(journal.action, journal.version, decision, stopped)
    ctx.log(f"   {recovery.describe()}")
    return recovery


def recovery_advice(
    journal: Journal | None,
    damaged: str | None,
    lock: LockInfo | None,
    installed: str | None,
    left: list[str],
) -> RecoveryAdvice | None:
    """The one command that recovers the install, for patch-status: ``{"command": "inv ...",
    "args": [task and options, without --root], "does": what it will do}``; ``command`` is None
    when no command can (a run is still active, the journal is damaged). None when nothing needs
    recovering.

    Args:
        journal: the interrupted run's journal (None when there is none).
        damaged: the error reading a damaged journal.
        lock: :func:`patchflow.lock.lock_status` (``state`` held, held-too-long or stale).
        installed: the installed version.
        left: leftover names in the state folder (:func:`patchflow.leftovers.leftovers`).
    """
    if lock is not None and lock["state"] != "stale":
        return {
            "command": None,
            "args": [],
            "does": f"an {lock['action']} of {lock['version']} is running (pid {lock['pid']} on {lock['host']}): "
            "wait for it, then run patch-status again",
        }
    if damaged:
        return {"command": None, "args": [], "does": damaged}
    breaking = ["--break-lock"] if lock is not None else []

    def advice(args: list[str], does: str) -> RecoveryAdvice:
        return {"command": "inv " + " ".join(args), "args": args, "does": does}

    if journal is not None:
        parse_version(journal.version)  # a damaged journal's version is refused here
        specs = ROLLBACK_STEPS if journal.action == "rollback" else APPLY_STEPS
        decision = decide_recovery(journal.action, specs, journal.steps, journal.phase)
        base = ["--version", journal.version, *breaking, "--yes"]
        if journal.action == "rollback":
            return advice(
                ["rollback-patch", *base],
                f"finishes the interrupted rollback of {journal.version} from backup {journal.backup or '?'}",
            )
        if decision.kind != "finish":  # undo, or nothing changed yet: back to where it was
            return advice(
                ["rollback-patch", *base],
                f"undoes the interrupted apply of {journal.version}: {journal.from_version or 'the previous version'} "
                "runs again, exactly as before it",
            )
        return advice(
            ["apply-patch", *base],
            f"finishes the interrupted apply of {journal.version} (it had committed)",
        )
    if installed is None and (lock is not None or left):
        return {
            "command": None,
            "args": [],
            "does": "a killed run left its lock or clean-up and the installed version is unknown: check that no "
            "apply or rollback runs, then remove .patchflow/apply.lock.json and the listed leftovers by hand",
        }
    if lock is not None:
        return advice(
            ["apply-patch", "--version", installed or "", "--break-lock", "--yes"],
            f"takes over the stale lock and removes what the killed run left ({', '.join(left) or 'nothing else'}); "
            f"{installed} stays installed",
        )
    if left:
        return advice(
            ["apply-patch", "--version", installed or "", "--yes"],
            f"removes what a killed run left ({', '.join(left)}); {installed} stays installed",
        )
    return None
