"""Recover a run that was killed: finish it or undo it, by the decision of
:func:`patchflow.pipeline.decide_recovery` over its own step list and its journal.

Called with the lock held (by the lock step of the next apply or rollback). Ends on exactly the
old or exactly the new version; a recovery that is itself killed is recovered again the same way.
"""

from __future__ import annotations

from patchflow.apply import ApplyRun
from patchflow.context import Context
from patchflow.errors import PatchflowError, RollbackError
from patchflow.journal import Journal, append_history
from patchflow.pipeline import Decision, Step, decide_recovery, describe_failure, run_forward, run_undo
from patchflow.rollback import RollbackRun


def _run_of(ctx: Context, journal: Journal) -> tuple[list[Step], ApplyRun | RollbackRun]:
    if journal.action == "apply":
        apply_run = ApplyRun.resume(ctx, journal)
        return apply_run.steps(), apply_run
    if journal.action == "rollback":
        rollback_run = RollbackRun.resume(ctx, journal)
        return rollback_run.steps(), rollback_run
    raise PatchflowError(
        f"The journal {journal.path} records an unknown action {journal.action!r}.",
        "Check the install by hand and move the journal away.",
    )


def plan_recovery(ctx: Context, journal: Journal) -> Decision:
    """What recovering ``journal`` would do (no change made)."""
    steps, _ = _run_of(ctx, journal)
    return decide_recovery(journal.action, steps, journal.steps, journal.phase)


def recover_interrupted(ctx: Context, journal: Journal) -> Decision:
    """Finish or undo the run recorded in ``journal``; returns the decision it carried out.

    Raises:
        RollbackError: the recovery could not complete (the journal stays for the next attempt,
            and says which step failed).
    """
    steps, run = _run_of(ctx, journal)
    decision = decide_recovery(journal.action, steps, journal.steps, journal.phase)
    ctx.log(
        f"recovering an interrupted {journal.action} of {journal.version} "
        f"(last step: {journal.current_step or 'none'}, phase {journal.phase}): "
        f"{decision.kind} {', '.join(decision.steps) or '-'}"
    )
    kill_at = ctx.settings.test_kill_at
    try:
        if decision.kind == "finish":
            wanted = set(decision.steps)
            run_forward([s for s in steps if s.name in wanted], lambda: journal, log=ctx.log, kill_at=kill_at)
        elif decision.kind == "undo":
            run_undo(steps, decision.steps, journal, log=ctx.log, kill_at=kill_at)
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
    journal.clear()
    if decision.kind == "undo" and journal.action == "apply":
        append_history(
            ctx.paths.history,
            {
                "action": "apply",
                "run_id": journal.run_id,
                "from_version": journal.from_version or None,
                "to_version": journal.version,
                "started_at": journal.started_at,
                "result": "rolled_back" if journal.reached("stop") else "interrupted",
                "recovered": True,
                "backup": journal.backup,
            },
        )
    return decision
