"""The operations the tasks call: apply a patch, roll one back.

Each builds its run (:class:`patchflow.lifecycle.apply.ApplyRun`, :class:`patchflow.lifecycle.rollback.RollbackRun`)
with the recovery of an interrupted run wired into its lock step, so apply and rollback never
import each other and recovery is written once (:mod:`patchflow.lifecycle.recovery`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from patchflow.context import Context
from patchflow.errors import ApplyError, PatchflowError, RollbackError
from patchflow.hooks import announce, post_hook
from patchflow.lifecycle.apply import ApplyOptions, ApplyResult, ApplyRun
from patchflow.lifecycle.decisions import Change, refuse_changes
from patchflow.lifecycle.journal import HistoryRecord, Journal, append_history, utc_now
from patchflow.lifecycle.planning import Plan
from patchflow.lifecycle.recovery import recover_interrupted
from patchflow.lifecycle.rollback import RollbackResult, RollbackRun
from patchflow.lifecycle.steps import Recovery
from patchflow.shared_database import clear_group_window
from patchflow.version import PatchVersion
from patchflow.watch import watch

RECOVERY = "inv patch-status on the host (it names the one command that finishes or undoes the run)"


def apply_patch(
    ctx: Context,
    version: PatchVersion,
    options: ApplyOptions,
    confirm: Callable[[Plan], None] = lambda plan: None,
    reconfirm: Callable[[Change], None] = refuse_changes,
) -> ApplyResult:
    """Apply patch ``version`` to the install of ``ctx`` (see :mod:`patchflow.lifecycle.apply`). ``confirm``
    sees the plan before the lock; ``reconfirm`` what changed when it is made again under the lock
    (default: refuse any change).

    Raises:
        VerifyError, VersionError, LockError, ConfirmationRefused, DatabaseError, BackupError:
            refused before anything changed (PlanChanged, a ConfirmationRefused: the plan changed
            while the run waited).
        ApplyError: the apply failed; ``rolled_back`` says whether the old version was restored.
        RollbackError: the apply failed and the automatic rollback did not complete.
    """

    def recover(journal: Journal) -> Recovery:
        return recover_interrupted(ctx, journal)

    run = ApplyRun(ctx, version, options, confirm=confirm, recover=recover, reconfirm=reconfirm)
    hook = {"action": "apply", "version": str(version)}
    try:
        result = run.execute()
    except ApplyError as exc:
        if exc.rolled_back:  # the old version's services run again: no group window holds them
            clear_group_window(ctx.paths)
        ended = "rolled_back" if exc.rolled_back else "failed"
        post_hook(ctx, "on-failure", **hook, previous=run.from_version, result=ended)
        announce(ctx, "apply", ended, str(version), run.from_version, detail=exc.message)
        raise
    except RollbackError as exc:
        post_hook(ctx, "on-failure", **hook, previous=run.from_version, result="rollback_failed")
        announce(ctx, "apply", "rollback_failed", str(version), run.from_version, detail=exc.message, recovery=RECOVERY)
        raise
    if not (result.dry_run or result.noop):
        clear_group_window(ctx.paths)  # its services run: deploy's group window (if any) is over here
        post_hook(ctx, "post-apply", **hook, previous=run.from_version, result="success")
        announce(ctx, "apply", "success", str(version), run.from_version, stopped_seconds=result.stopped_seconds)
        if ctx.settings.watch_seconds > 0:
            _watch(ctx, version, run.from_version)
    return result


def _watch(ctx: Context, version: PatchVersion, previous: str) -> None:
    """The watch window after a committed apply (:mod:`patchflow.watch`); a failure rolls back.

    Raises:
        ApplyError: the version failed its window and was rolled back (``rolled_back``).
        RollbackError, PreconditionError: that rollback did not complete, or was refused.
    """
    began, started_at = time.monotonic(), utc_now()
    outcome, why = watch(ctx, str(version), ctx.settings.watch_seconds, ctx.log)
    record: HistoryRecord = {
        "action": "watch",
        "to_version": str(version),
        "from_version": previous or None,
        "started_at": started_at,
        "result": outcome,
        "backup": None,
        "watch_seconds": round(time.monotonic() - began, 1),
    }
    if not why:
        append_history(ctx.paths.history, record)
        return
    record["error"] = why
    ctx.log(f"!! watch: {version} {why}: rolling it back")
    try:
        rolled = rollback_patch(ctx, version)
    except PatchflowError as exc:  # refused (a freeze, a hook, another client) or incomplete: said as it is
        record["result"] = "rollback_failed"
        record["rollback_error"] = exc.message
        append_history(ctx.paths.history, record)
        announce(
            ctx, "apply", "rollback_failed", str(version), previous, detail=f"{why}; {exc.message}", recovery=RECOVERY
        )
        raise
    append_history(ctx.paths.history, record)
    kept = f"; rows written meanwhile are kept in {rolled.displaced_database}" if rolled.displaced_database else ""
    message = f"{version} failed its watch window ({why}) and was rolled back to {rolled.to_version}{kept}."
    announce(ctx, "apply", "rolled_back", str(version), previous, detail=message)
    raise ApplyError(message, "Read the service logs (inv logs) from the window; fix the release.", rolled_back=True)


def rollback_patch(
    ctx: Context,
    version: PatchVersion,
    *,
    force: bool = False,
    break_lock: bool = False,
    backup_id: str | None = None,
    restore_database: bool | None = None,
    others_stopped: bool = False,
    confirm: Callable[[str], None] = lambda text: None,
    reconfirm: Callable[[Change], None] = refuse_changes,
) -> RollbackResult:
    """Roll ``version`` back: restore code (and, when it must, the database) and VERSION from the
    backup that the apply of ``version`` took (see :mod:`patchflow.lifecycle.rollback`). A restore of
    a database other clients still use after the stop is refused unless ``others_stopped``
    (:mod:`patchflow.shared_database`). An interrupted
    apply or rollback is finished or undone first. The backup is chosen again under the lock;
    ``reconfirm`` sees a choice that changed (default: refuse it).

    Raises:
        VersionError: the installed version is not ``version`` (without ``force``).
        RollbackError: a step failed (the journal stays; running it again finishes it).
        PreconditionError: the database would be restored under other clients (nothing changed).
        BackupError: no suitable backup, or its dump is corrupt.
        LockError: another operation holds the lock, or a stale lock without ``break_lock``.
        ConfirmationRefused: not confirmed (PlanChanged: the choice changed while it waited).
    """

    def recover(journal: Journal) -> Recovery:
        return recover_interrupted(ctx, journal)

    run = RollbackRun(
        ctx,
        version,
        backup_id=backup_id,
        force=force,
        break_lock=break_lock,
        restore_db=restore_database,
        others_stopped=others_stopped,
        confirm=confirm,
        recover=recover,
        reconfirm=reconfirm,
    )
    hook = {"action": "rollback", "version": str(version)}
    try:
        result = run.execute()
    except RollbackError as exc:
        before = str(run.current or "")
        post_hook(ctx, "on-failure", **hook, previous=before, result="rollback_failed")
        announce(ctx, "rollback", "rollback_failed", str(version), before, detail=exc.message, recovery=RECOVERY)
        raise
    before = str(run.current or "")
    clear_group_window(ctx.paths)
    post_hook(ctx, "post-rollback", **hook, previous=before, result="success")
    announce(ctx, "rollback", "success", str(version), before, stopped_seconds=result.stopped_seconds)
    return result
