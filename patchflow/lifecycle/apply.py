"""apply-patch's step list as data (APPLY_STEPS) and the run that executes it, undoing on failure.

The steps, in order: verify, plan, lock, stage, dump, stop, snapshot, backup, switch, migrate, start,
health, commit, dump-snapshot, cleanup (:data:`APPLY_STEPS`).

Each step carries its undo; when a step fails, or SIGINT/SIGTERM/SIGHUP arrives, the reached steps
are undone in reverse (:func:`patchflow.lifecycle.steps.run_undo`): services stopped, code and
database restored, the old version started and proven healthy. Every step is journaled, so a kill
at any instant is finished or undone by the next apply or rollback
(:mod:`patchflow.lifecycle.recovery`, which binds the same specs with :meth:`ApplyRun.resume`).
The steps themselves are in :mod:`patchflow.lifecycle.apply_prepare` (verify, plan, lock) and
:mod:`patchflow.lifecycle.apply_steps` (stage to cleanup).
"""

from __future__ import annotations

import time

from patchflow.backup import load_backup
from patchflow.context import Context
from patchflow.errors import ApplyError, PatchflowError, PreconditionError, RollbackError
from patchflow.files import remove_tree
from patchflow.leftovers import remove_leftovers
from patchflow.lifecycle.apply_prepare import PrepareSteps
from patchflow.lifecycle.apply_state import ApplyOptions, ApplyResult, ApplyState
from patchflow.lifecycle.apply_steps import ChangeSteps
from patchflow.lifecycle.journal import HistoryRecord, Journal, append_history, deactivate_reserve
from patchflow.lifecycle.steps import (
    Decision,
    Interrupted,
    Step,
    StepSpec,
    StopPipeline,
    bind,
    checked_specs,
    describe_failure,
    held_back,
    run_to_the_end,
    run_undo,
    undo_plan,
)
from patchflow.restore_in_place import kept_as
from patchflow.trash import delete_detached
from patchflow.version import parse_version

__all__ = ["APPLY_STEPS", "ApplyOptions", "ApplyResult", "ApplyRun", "ApplyState"]


class ApplyRun(PrepareSteps, ChangeSteps):
    """One apply: its state (:class:`ApplyState`), its steps bound from :data:`APPLY_STEPS`
    (:meth:`steps`), and the run that executes them and undoes them on failure."""

    def steps(self) -> list[Step]:
        """The apply, in order; each step with its undo (:data:`APPLY_STEPS` bound to this run)."""
        return bind(APPLY_STEPS, self)

    @classmethod
    def resume(cls, ctx: Context, journal: Journal) -> ApplyRun:
        """The run recorded in ``journal`` (killed), ready for recovery to finish or undo it.

        Raises:
            VersionError: the journal names an invalid version (a damaged journal).
        """
        run = cls(ctx, parse_version(journal.version), journal=journal, from_version=journal.from_version)
        run.started_at = journal.started_at
        run.resumed = True
        if journal.backup:
            run.backup = load_backup(ctx.paths.backups / journal.backup)
        run.applied = list(journal.notes.get("migrations", []))
        return run

    # -- running it -----------------------------------------------------------------------------
    def execute(self) -> ApplyResult:
        """Run the whole list (or, with ``dry_run``, verify and plan only).

        Raises:
            VerifyError, VersionError, LockError, ConfirmationRefused, DatabaseError, BackupError:
                refused before anything changed.
            ApplyError: the apply failed or was interrupted; ``rolled_back`` says whether the old
                version was restored (and proven healthy).
            RollbackError: the apply failed and the automatic rollback did not complete.
        """
        steps = self.steps()
        if self.options.dry_run:
            steps = steps[:2]
        try:
            run_to_the_end(
                steps,
                lambda: self.journal,
                log=self.ctx.log,
                faults=self.ctx.settings.faults,
                on_done=self._done,
                progress=self.ctx.progress,
                cleared_checkpoint="release",
            )
        except StopPipeline as stop:
            self._finish_quietly()
            self.ctx.log(str(stop))
            return ApplyResult(
                str(self.version),
                self.from_version or None,
                None,
                noop=True,
                recovered=self.recovered,
                recovery=self.recovery,
                cleaned=self.cleaned,
            )
        except BaseException as exc:
            # from here on a further signal (a second Ctrl+C, a repeated SIGTERM) must not cut the
            # automatic rollback short before run_undo holds signals back: removing a big staging
            # folder first takes long enough for one to land
            with held_back(self.ctx.log):
                if self.journal is None or not self.journal.done("commit"):
                    self._fail(steps, exc)
                # interrupted once committed: the apply is complete; what is left is clean-up
                self.ctx.log(f"   {describe_failure(exc)} after the commit: the apply is complete")
                self._complete_after_commit()
        finally:
            deactivate_reserve()
            if self.lock is not None:
                self.lock.release()
        if self.options.dry_run:
            return ApplyResult(str(self.version), self.from_version or None, self.plan, dry_run=True)
        backup = self._backup()
        return ApplyResult(
            str(self.version),
            self.from_version or None,
            self.plan,
            backup.name if backup else None,
            time.monotonic() - self.started,
            self.stopped_seconds,
            self.applied,
            recovered=self.recovered,
            cleanup=self._empty_trash,
            recovery=self.recovery,
            cleaned=self.cleaned,
            database_note=self.database_note,
        )

    def _complete_after_commit(self) -> None:
        with held_back(self.ctx.log):
            try:
                self.cleanup()
            except OSError:
                pass  # the staging folder is removed by the next run
            self._require_journal().clear()

    def _done(self, step: Step, seconds: float) -> None:
        self.step_seconds[step.name] = round(seconds, 3)  # the history's record of this apply's steps
        if step.name == "verify":  # journaled steps are logged with their duration by the pipeline
            self.ctx.log(f"   {step.name} done in {seconds:.1f} s")

    def _empty_trash(self) -> None:
        """Delete what the commit renamed aside, in a detached process: the command returns now."""
        self.ctx.settings.faults.checkpoint("empty-trash")
        delete_detached(self.trash, self.ctx.log, faults=self.ctx.settings.faults)

    def cleanup_after_recovery(self, decision: Decision) -> None:
        """After recovery finished or undid this run: no staging folder or trash is left."""
        remove_tree(self.staging)
        self._empty_trash()
        remove_leftovers(self.ctx.paths)

    def _finish_quietly(self) -> None:
        if self.journal is not None:
            self.journal.clear()
            self.journal = None

    def _record(
        self,
        result: str,
        *,
        error: str,
        rollback_error: str | None = None,
        stopped_seconds: float | None = None,
        old_version_unhealthy: str | None = None,
    ) -> None:
        """Append the history record of this apply's failure (``result`` failed, rolled_back or
        rollback_failed; ``error`` is ``step: failure``; seconds)."""
        record: HistoryRecord = {
            "action": "apply",
            "run_id": self.journal.run_id if self.journal else None,
            "from_version": self.from_version or None,
            "to_version": str(self.version),
            "started_at": self.started_at,
            "duration_seconds": round(time.monotonic() - self.started, 3),
            "result": result,
            "backup": self.journal.backup if self.journal else None,
            "error": error,
        }
        if rollback_error is not None:
            record["rollback_error"] = rollback_error
        if stopped_seconds is not None:
            record["stopped_seconds"] = stopped_seconds
        if old_version_unhealthy is not None:
            record["old_version_unhealthy"] = old_version_unhealthy
        append_history(self.ctx.paths.history, record)

    def _fail(self, steps: list[Step], exc: BaseException) -> None:
        """Undo what was reached and raise the error that says what happened."""
        if not isinstance(exc, (PatchflowError, Interrupted, KeyboardInterrupt, StopPipeline)):
            self.ctx.record_exception(exc)
        journal = self.journal
        failure = describe_failure(exc).rstrip(".")
        failed_step = journal.current_step if journal else None
        if journal is None:
            if isinstance(exc, PatchflowError):
                raise exc
            if isinstance(exc, (Interrupted, KeyboardInterrupt)):
                raise ApplyError(f"Apply of {self.version} {failure} before anything changed.", "") from None
            if isinstance(exc, OSError):
                raise ApplyError(f"Apply of {self.version} failed before anything changed: {failure}.", "") from None
            raise exc
        where = f"at {failed_step}" if failed_step else ""
        names = undo_plan(APPLY_STEPS, journal.steps)
        stopped = any(s.stopped and journal.reached(s.name) for s in steps)
        try:
            remove_tree(self.staging)  # room first (a run out of space): no undo needs the staged tree
        except OSError:
            pass
        if not stopped:
            try:
                run_undo(steps, names, journal, log=lambda line: None, faults=self.ctx.settings.faults)
            except Exception:  # noqa: S110 - the staging folder is cleaned by the next run
                pass
            journal.clear()
            self._record("failed", error=f"{failed_step}: {failure}")
            raise ApplyError(f"Apply of {self.version} failed {where}: {failure}", "Nothing was stopped or changed.")
        self.ctx.log(f"!! {failed_step} failed: {failure}")
        self.ctx.log("!! rolling back automatically")
        try:
            run_undo(
                steps, names, journal, log=self.ctx.log, faults=self.ctx.settings.faults, progress=self.ctx.progress
            )
        except Exception as undo_exc:
            if not isinstance(undo_exc, PatchflowError):
                self.ctx.record_exception(undo_exc)
            detail = describe_failure(undo_exc)
            self._record("rollback_failed", error=f"{failed_step}: {failure}", rollback_error=detail)
            hint = undo_exc.hint if isinstance(undo_exc, PatchflowError) else ""
            raise RollbackError(
                f"Apply of {self.version} failed {where} ({failure}) and the automatic rollback did not "
                f"complete: {detail}. {self._old_health_now()}",
                (hint + " " if hint else "") + "`inv patch-status` shows what is left. Fix the cause and run "
                f"`inv rollback-patch --version {self.version} --yes` to finish the rollback; "
                f"{self.ctx.services.logs_hint()}.",
            ) from None
        stopped_for = time.monotonic() - self.stopped_at if self.stopped_at else 0.0
        displaced = journal.notes.get("displaced_database")
        journal.clear()
        self._empty_trash()  # what the undo renamed aside, now that the old version is back
        kept = f" The database was restored; the one it replaced is kept as {kept_as(displaced)}." if displaced else ""
        if self.old_unhealthy:
            self._record(
                "rolled_back",
                error=f"{failed_step}: {failure}",
                stopped_seconds=round(stopped_for, 3),
                old_version_unhealthy=self.old_unhealthy,
            )
            old = self.from_version or "the previous version"
            raise ApplyError(
                f"Apply of {self.version} failed {where}: {failure}. It was rolled back automatically: code and "
                f"database are {old}'s again and its services were started and run, but {old} did NOT pass its "
                f"health check (judged by {self.old_health_used}): {self.old_unhealthy}.{kept}",
                f"Check {old} now (inv ps, inv logs; {self.ctx.services.logs_hint()}); if it serves elsewhere, fix "
                f"health_url (host setting, .patchflow/host.toml). Logs: {self.ctx.paths.operation_log}.",
                rolled_back=True,
            )
        self._record("rolled_back", error=f"{failed_step}: {failure}", stopped_seconds=round(stopped_for, 3))
        raise ApplyError(
            f"Apply of {self.version} failed {where}: {failure}. It was rolled back automatically: "
            f"{self.from_version or 'the previous version'} is running again and passed its health check.{kept}",
            (f"{exc.hint} " if isinstance(exc, PreconditionError) and exc.hint else "")
            + f"Logs: {self.ctx.paths.operation_log}; {self.ctx.services.logs_hint()}; history in "
            f"{self.ctx.paths.history}.",
            rolled_back=True,
        )


APPLY_STEPS: tuple[StepSpec, ...] = checked_specs(
    ApplyRun,
    (
        StepSpec("verify", "verify", journaled=False),
        StepSpec("plan", "make_plan", journaled=False),
        StepSpec("lock", "take_lock"),
        StepSpec("stage", "stage", undo="drop_staging", undo_name="drop-staging"),
        StepSpec("dump", "dump_before_stop", undo="drop_incomplete_backup", undo_name="drop-dump"),
        StepSpec("stop", "stop", undo="start_old", stopped=True, undo_name="start-old"),
        StepSpec("snapshot", "take_snapshot", undo="drop_snapshot", stopped=True, undo_name="drop-snapshot"),
        StepSpec("backup", "take_backup", undo="drop_incomplete_backup", stopped=True, undo_name="drop-backup"),
        StepSpec("switch", "switch", undo="restore_code", stopped=True, undo_name="restore-code"),
        StepSpec("migrate", "migrate", undo="restore_database", stopped=True, undo_name="restore-database"),
        StepSpec("start", "start", undo="stop_new", stopped=True, undo_name="stop-new"),
        StepSpec("health", "health", stopped=True),
        StepSpec("commit", "commit", no_return=True),
        StepSpec("dump-snapshot", "dump_snapshot"),
        StepSpec("cleanup", "cleanup"),
    ),
)
"""The apply's steps in order, as data (read by recovery, status and docs without a run)."""
