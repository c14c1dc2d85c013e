"""rollback-patch's steps as data (:data:`ROLLBACK_STEPS`: choose, lock, stop, restore-code,
restore-database, start, health, commit) and the run that executes them (never undone).

The backup restored is the one recorded by the apply that installed the current version
(``.patchflow/installed.json``), or the one named with ``--backup``; never one picked by clock
(:mod:`patchflow.lifecycle.rollback_choice`). It is chosen before the confirmation and again under
the lock: when another run changed things meanwhile, the rollback asks again or refuses
(:mod:`patchflow.lifecycle.decisions`), so one backup is never restored twice (field failure R01).
The database is restored only when the apply being undone ran migrations (or with
``--restore-database``), and never under other clients (:mod:`patchflow.shared_database`); the
displaced database is kept. A failed step leaves the journal and the next rollback-patch finishes
it (:mod:`patchflow.lifecycle.recovery`). Successful only when the services are back and healthy (C18).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from patchflow.backup import Backup, load_backup
from patchflow.context import Context
from patchflow.errors import BackupError, PatchflowError, PreconditionError, RollbackError, VersionError
from patchflow.freeze import refuse_when_frozen
from patchflow.hooks import pre_hook
from patchflow.installed import HealthRecord, installed_version, read_installed_record
from patchflow.leftovers import remove_leftovers
from patchflow.lifecycle.decisions import (
    Change,
    as_reason,
    describe_run,
    journal_change,
    refuse_changes,
    runs_since,
    version_change,
)
from patchflow.lifecycle.journal import (
    HistoryRecord,
    Journal,
    append_history,
    deactivate_reserve,
    read_history,
    take_reserve,
    utc_now,
)
from patchflow.lifecycle.rollback_choice import RollbackDecision, choose_backup
from patchflow.lifecycle.rollback_prove import prove_restore
from patchflow.lifecycle.steps import (
    ROLLING_BACK,
    Recovery,
    Step,
    StepSpec,
    StopPipeline,
    bind,
    checked_specs,
    describe_failure,
    held_back,
    run_to_the_end,
)
from patchflow.lock import InstallLock
from patchflow.maintenance_page import page_off, page_on
from patchflow.preconditions import check_rollback_access
from patchflow.proving import OldHealth, old_version_health, prove_old_version, start_kept_images
from patchflow.restore import restore_code, restore_database_journaled
from patchflow.restore_in_place import IN_PLACE, restore_method
from patchflow.services import NotServing, health_now, start_with_retries
from patchflow.shared_database import restore_alone
from patchflow.snapshot import snapshot_of
from patchflow.stopped_window import step_record
from patchflow.trash import delete_detached
from patchflow.version import PatchVersion, parse_version


@dataclass
class RollbackResult:
    """What a rollback did: backup used ("" when none was needed), versions, durations (seconds),
    and where the displaced database is kept (empty when the database was not restored)."""

    backup: str
    from_version: str
    to_version: str
    duration_seconds: float
    stopped_seconds: float
    database_restored: bool = False
    displaced_database: str = ""
    undone_interrupted: bool = False


@dataclass
class RollbackRun:
    """One rollback: its state and its step list (:meth:`steps`). ``reconfirm`` sees what came out
    differently when the choice is made again under the lock (it asks again, or raises
    :class:`patchflow.errors.PlanChanged`)."""

    ctx: Context
    version: PatchVersion
    backup_id: str | None = None
    force: bool = False
    break_lock: bool = False
    restore_db: bool | None = None
    others_stopped: bool = False  # every other client of the database is stopped (deploy's group window)
    confirm: Callable[[str], None] = lambda text: None
    recover: Callable[[Journal], Recovery | None] = lambda journal: None
    reconfirm: Callable[[Change], None] = refuse_changes
    decision: RollbackDecision | None = None
    chosen_at: str = ""  # when the confirmed choice was made (UTC, utc_now format)
    chosen_journal: Journal | None = None  # the interrupted run the confirmed choice finishes first
    backup: Backup | None = None
    journal: Journal | None = None
    lock: InstallLock | None = None
    current: str = ""
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utc_now)
    stopped_at: float | None = None
    result: RollbackResult | None = None
    proven: HealthRecord | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    trash: list[Path] = field(default_factory=list)  # folders the restore renamed aside, deleted at the end

    def steps(self) -> list[Step]:
        """The rollback, in order (:data:`ROLLBACK_STEPS` bound to this run; never undone: finished)."""
        return bind(ROLLBACK_STEPS, self)

    @classmethod
    def resume(cls, ctx: Context, journal: Journal) -> RollbackRun:
        """The rollback recorded in ``journal`` (killed or failed), ready to be finished.

        Raises: RollbackError: its backup is missing or incomplete.
        """
        run = cls(ctx, parse_version(journal.version), journal=journal, current=journal.from_version)
        run.started_at = journal.started_at
        run.restore_db = bool(journal.notes.get("restore_database", True))
        backup = load_backup(ctx.paths.backups / journal.backup) if journal.backup else None
        if backup is None or not backup.complete:
            raise RollbackError(
                f"The interrupted rollback of {journal.version} cannot be finished: its backup "
                f"{journal.backup or '(none)'} is missing or incomplete.",
                "Restore by hand from the newest complete backup (inv patch-status lists them).",
            )
        run.backup = backup
        return run

    def _must_restore_database(self, backup: Backup) -> bool:
        if self.ctx.database is None or (backup.database is None and snapshot_of(backup) is None):
            return False
        if self.restore_db is not None:
            return self.restore_db
        applied = backup.migrations_applied
        return applied is None or bool(applied)  # unknown (older backups): restore to be exact

    def _check_installed(self, backup: Backup) -> None:
        if self.current != str(self.version) and not self.force and self.current == backup.restores_version:
            last = read_history(self.ctx.paths.history, 1)
            if last and str(self.version) in (last[-1].get("from_version"), last[-1].get("to_version")):
                # another operator's recovery or rollback of this version ended first: the install
                # is already what this rollback would restore (never --force a second restore)
                raise VersionError(
                    f"The installed version is {self.current}, not {self.version}: the last run on "
                    f"{self.version} ({describe_run(cast(HistoryRecord, last[-1]))}) left {self.current} "
                    f"installed, which is what rolling back {self.version} would restore.",
                    "Nothing to do; `inv patch-status` shows the install. Nothing was changed.",
                )
        if self.current != str(self.version) and not self.force:
            raise VersionError(
                f"The installed version is {self.current or 'unknown'}, not {self.version}; rolling back "
                f"{self.version} would restore {backup.restores_version} over it.",
                (
                    f"To undo the installed version run `inv rollback-patch --version {self.current}`; "
                    if self.current
                    else ""
                )
                + "pass --force to restore this backup anyway. Nothing was changed.",
            )

    def _decide(self) -> tuple[RollbackDecision, str, Backup | None]:
        """``(decision, question, backup)``: what this rollback does now, the question that asks for
        it, and the backup chosen (None when an interrupted rollback or apply of this version is
        finished or undone instead). Reads only; the installed version is not checked here
        (:meth:`_check_installed`).

        Raises:
            BackupError: no suitable backup (:func:`choose_backup`).
        """
        ctx = self.ctx
        current = installed_version(ctx.paths) or ""
        pending = Journal.load(ctx.paths.journal)
        key = (pending.action, pending.version, pending.run_id) if pending is not None else None
        if pending is not None and pending.version == str(self.version):
            if pending.action == "rollback":
                question = f"Finish the interrupted rollback of {self.version} (stops services, restores it)?"
            else:
                question = (
                    f"Undo the interrupted apply of {self.version} (stops services, restores what it changed; if "
                    "it had already committed, rolls it back from its backup)?"
                )
            return RollbackDecision(current, key, "", False), question, None
        backup = choose_backup(ctx, self.version, self.backup_id)
        database = self._must_restore_database(backup)
        check_rollback_access(ctx, backup, database)
        if database:
            assert ctx.database is not None
            kept = f"kept as {ctx.database.target.dbname}_before_rollback_<time>"
            if restore_method(ctx.database) == IN_PLACE:
                kept = f"kept as a dump in {backup.folder}; the database is restored in place, in one transaction"
            what = (
                f"restores code and database (rows written since {backup.created_at[:19]}Z are moved aside "
                f"with the current database, {kept})"
            )
        else:
            what = "restores code; the database is kept as it is (the apply ran no migration)"
        question = (
            f"Roll back {self.version} to {backup.restores_version} from backup {backup.name} (stops services, {what})?"
        )
        return RollbackDecision(current, key, backup.name, database), question, backup

    def choose(self) -> None:
        """Choose the backup, check the installed version, prove the dump, ask for confirmation (a
        frozen install refuses first)."""
        refuse_when_frozen(self.ctx.paths.state, "rollback")
        self.chosen_at = utc_now()
        self.chosen_journal = Journal.load(self.ctx.paths.journal)
        decision, question, backup = self._decide()
        self.current = decision.current
        self.decision = decision
        if backup is not None:
            self._check_installed(backup)
            prove_restore(self.ctx, backup, decision.database)
        self.backup = backup
        self.confirm(question)

    def decide_again(self) -> None:
        """Under the lock, choose again (installed version, interrupted run, backup, database) and
        compare with what was confirmed; when it differs, prove the new backup and hand the change
        to :attr:`reconfirm` (asks again, or refuses). A rollback whose version another run rolled
        back already, or whose backup another run restored meanwhile (the history says), is refused
        even with ``--force``: never a second restore of one backup for one confirmation.

        Raises:
            PlanChanged: the choice changed and was not confirmed again, or the new one cannot be
                carried out (nothing changed).
            BackupError: no suitable backup any more, or the new one does not prove.
        """
        assert self.decision is not None
        before = self.decision
        decision, question, backup = self._decide()
        paths = self.ctx.paths
        reasons = []
        if decision.current != before.current:
            was, now = before.current or None, decision.current or None
            reasons.append(version_change(paths.history, self.chosen_at, was, now))
        if decision.journal != before.journal:
            pending = Journal.load(paths.journal)
            reasons.append(journal_change(self.chosen_journal, pending, paths.history, self.chosen_at))
        if decision.backup != before.backup and decision.backup and before.backup:
            reasons.append(f"the backup to restore is now {decision.backup} (was {before.backup})")
        if decision.database != before.database and decision.backup == before.backup:
            reasons.append("the database " + ("is restored now" if decision.database else "is no longer restored"))
        restored = [
            r
            for r in runs_since(paths.history, self.chosen_at)
            if r.get("action") == "rollback" and r.get("result") == "success" and r.get("backup") == decision.backup
        ]
        if restored and decision.backup:
            reasons.append(f"backup {decision.backup} was restored by another run ({describe_run(restored[-1])})")
        if not reasons:
            return
        self.current = decision.current
        change = Change(f"rollback of {self.version}", reasons, question=question)
        if restored and decision.backup:
            change.question = ""
            change.hint = (
                "Run the command again if it should be restored once more (`inv patch-status` shows the install)."
            )
        elif backup is not None:
            try:
                self._check_installed(backup)
            except VersionError as exc:
                change.question = ""
                change.hint = exc.hint.replace(" Nothing was changed.", "")
                change.reasons.append(as_reason(exc.message))
            if change.question:
                prove_restore(self.ctx, backup, decision.database)
        self.reconfirm(change)
        if not change.question:
            raise change.refusal()
        self.decision, self.backup = decision, backup

    def take_lock(self) -> None:
        """Take the lock; choose again under it (:meth:`decide_again`); an interrupted run is
        finished or undone first; start the journal.

        Raises:
            PlanChanged: the choice changed while this run waited and was not confirmed again.
        """
        ctx = self.ctx
        pre_hook(ctx, "pre-rollback", action="rollback", version=str(self.version), previous=str(self.current or ""))
        self.lock = InstallLock(ctx.paths.lock, ctx.paths.lock_info)
        self.lock.acquire(action="rollback", version=str(self.version), break_stale=self.break_lock)
        self.ctx.start_recording()
        self.decide_again()
        pending = Journal.load(ctx.paths.journal)
        take_reserve(ctx.paths.space_reserve, required=pending is None, log=ctx.log)
        recovery = self.recover(pending) if pending is not None else None
        # after any recovery (which ends the killed run's commands first) and before any early stop:
        # what killed runs left in the state folder (staging, trash, temporary files of atomic writes)
        remove_leftovers(ctx.paths)
        if pending is not None:
            same = pending.version == str(self.version)
            restored = installed_version(ctx.paths) or ""
            if same and restored != str(self.version):
                # the interrupted operation on this version was undone: the version before it is
                # back exactly; restoring an older backup of this version now would overwrite it
                used = load_backup(ctx.paths.backups / pending.backup) if pending.backup else None
                name = used.name if used is not None and used.complete else ""
                down = recovery.stopped_seconds if recovery is not None else None
                self.result = RollbackResult(
                    name,
                    str(self.version),
                    restored,
                    time.monotonic() - self.started,
                    down or 0.0,
                    undone_interrupted=True,
                )
                raise StopPipeline(f"the interrupted {pending.action} of {self.version} was undone")
            self.current = restored
            if self.backup is None:
                self.backup = choose_backup(ctx, self.version, self.backup_id)
            self._check_installed(self.backup)
        backup = self._backup()
        self.journal = Journal(ctx.paths.journal, "rollback", str(self.version), self.current, backup=backup.name)
        if ctx.run_marker:
            self.journal.notes["runners"] = [ctx.run_marker]
        self.journal.phase = ROLLING_BACK
        self.journal.notes["restore_database"] = self._must_restore_database(backup)
        self.journal.start("lock")
        ctx.settings.faults.checkpoint("journal-opened")  # lock not yet marked done

    def stop(self) -> None:
        """Stop the application services; :func:`patchflow.shared_database.restore_alone` may refuse."""
        self.stopped_at = time.monotonic()
        self.ctx.services.stop()
        try:
            restore_alone(self.ctx, self._journal(), others_stopped=self.others_stopped)
        except PreconditionError:
            self.journal = None  # refused: the services run again, the journal is cleared, nothing changed
            raise
        settings = self.ctx.settings
        page_on(settings.maintenance_ports, settings.maintenance_page, self.ctx.paths.root, self.ctx.log)

    def restore_code(self) -> None:
        """Put the code back; folders the apply added whole go to a trash folder deleted at the end."""
        ctx = self.ctx
        self.trash.append(trash := ctx.paths.trash(f"restore-{self._journal().run_id}"))
        restore_code(self._backup(), ctx.paths, log=ctx.log, progress=ctx.progress.files("restored"), trash=trash)

    def restore_database(self) -> None:
        """Restore the database (beside the live one and swap, or in place: :func:`restore_database`)
        when this rollback must; the method is noted first, so a recovery restores the same way."""
        ctx = self.ctx
        journal = self._journal()
        if not journal.notes.get("restore_database") or ctx.database is None:
            ctx.log("   database kept as it is: the apply being rolled back ran no migration")
            return
        database = ctx.database

        def choose() -> str:  # a restarting server is waited for (and said so) before its rights are read
            database.wait_ready(ctx.settings.db_wait_timeout, ctx.log)
            return restore_method(database)

        restore_database_journaled(
            database,
            self._backup(),
            journal,
            ctx.paths,
            choose,
            log=ctx.log,
            wait=ctx.settings.db_wait_timeout,
            faults=ctx.settings.faults,
        )

    def _old_health(self) -> OldHealth:
        """The health settings judging the restored version (:func:`patchflow.proving.old_version_health`)."""
        backup = self._backup()
        return old_version_health(self.ctx, backup.restores_version, backup.data.get("restores_health"))

    def start(self) -> None:
        """Start the restored version; services that run but do not serve the health URLs are
        kept running (the health step judges them)."""
        ctx = self.ctx
        page_off(ctx.log)  # before the restored version binds its ports
        health = self._old_health()
        ctx.log(f"   judging {self._backup().restores_version} by {health.describe()}")
        settings = health.settings(ctx.settings)
        # the images kept for the restored version before the apply's build: nothing is built
        rebuild = start_kept_images(ctx, self._backup().restores_version)
        try:
            start_with_retries(
                ctx.services,
                ctx.settings.start_retries,
                rebuild=rebuild,
                urls=settings.health_url,
                ready_timeout=settings.health_timeout,
                log=ctx.log,
                keep_running=True,
            )
        except NotServing as exc:
            ctx.log(f"   {exc.message}: the health step judges them")
        removed = self._backup().data.get("removed_services")
        if isinstance(removed, list) and removed:
            ctx.services.start([str(s) for s in removed], rebuild=rebuild)  # the apply had removed them

    def health(self) -> None:
        """Prove the restored version healthy (its version when the body reports one), with the
        settings it was proven healthy with (:func:`patchflow.proving.prove_old_version`)."""
        self.proven = prove_old_version(self.ctx, self._backup().restores_version, self._old_health()).record

    def commit(self) -> None:
        """Record the rollback as done (services are back and healthy)."""
        journal = self._journal()
        backup = self._backup()
        if self.stopped_at is not None:
            stopped = time.monotonic() - self.stopped_at
        else:  # finished by a recovery: the window began in the killed rollback
            stopped = journal.seconds_since("stop", ROLLING_BACK) or 0.0
        displaced = str(journal.notes.get("displaced_database") or "")
        record = read_installed_record(self.ctx.paths)
        if record is not None and record.version == backup.restores_version:  # proven healthy now, with these
            proven = self.proven or self._old_health().record
            replace(record, health=replace(proven, proven_at=utc_now())).save(self.ctx.paths)
        append_history(
            self.ctx.paths.history,
            {
                "action": "rollback",
                "run_id": journal.run_id,
                "from_version": journal.from_version or None,
                "to_version": backup.restores_version,
                "started_at": journal.started_at,
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "stopped_seconds": round(stopped, 3),
                **cast(HistoryRecord, step_record(self.step_seconds, None)),
                "result": "success",
                "backup": backup.name,
                "database_restored": bool(journal.notes.get("restore_database")),
                "displaced_database": displaced or None,
            },
        )
        self.result = RollbackResult(
            backup.name,
            journal.from_version,
            backup.restores_version,
            time.monotonic() - self.started,
            stopped,
            bool(journal.notes.get("restore_database")),
            displaced,
        )

    # -- helpers --------------------------------------------------------------------------------
    def _done(self, step: Step, seconds: float) -> None:
        self.step_seconds[step.name] = round(seconds, 3)  # the history's record of this rollback's steps
        if not step.journaled:  # journaled steps are logged with their duration by the pipeline
            self.ctx.log(f"   {step.name} done in {seconds:.1f} s")

    def _backup(self) -> Backup:
        if self.backup is None:
            raise BackupError("No backup was chosen for this rollback.", "Pass --backup NAME.")
        return self.backup

    def _journal(self) -> Journal:
        assert self.journal is not None, "journal expected after the lock step"
        return self.journal

    def execute(self) -> RollbackResult:
        """Run the rollback.

        Raises:
            RollbackError: the installed version is another (exit 1), or a step failed (exit 4;
                the journal stays and patch-status reports "rollback incomplete").
            BackupError: no suitable backup, or its dump is corrupt (nothing changed).
            LockError: another operation holds the lock, or a stale lock without ``break_lock``.
            ConfirmationRefused: not confirmed.
        """
        steps = self.steps()
        try:
            run_to_the_end(
                steps,
                lambda: self.journal,
                log=self.ctx.log,
                faults=self.ctx.settings.faults,
                on_done=self._done,
                progress=self.ctx.progress,
            )
        except StopPipeline:
            assert self.result is not None
            return self.result
        except BaseException as exc:
            with held_back(self.ctx.log):  # a further signal must not cut the failure's record short
                if self.journal is None or not self.journal.done("commit", ROLLING_BACK) or self.result is None:
                    self._fail(exc)
                    raise
                self.journal.clear()  # interrupted once committed: the rollback is complete
        finally:
            deactivate_reserve()
            if self.lock is not None:
                self.lock.release()
        delete_detached(self.trash, self.ctx.log, faults=self.ctx.settings.faults)  # the services are back
        assert self.result is not None
        return self.result

    def _health_now(self) -> str:
        settings = self._old_health().settings(self.ctx.settings) if self.backup is not None else self.ctx.settings
        return health_now(self.ctx.services, settings)

    def _fail(self, exc: BaseException) -> None:
        journal = self.journal
        if journal is None:
            if isinstance(exc, PatchflowError):
                raise exc
            raise PatchflowError(
                f"Rollback of {self.version} {describe_failure(exc)} before anything changed."
            ) from None
        step = journal.current_step
        failure = describe_failure(exc)
        backup = self.backup
        append_history(
            self.ctx.paths.history,
            {
                "action": "rollback",
                "run_id": journal.run_id,
                "from_version": journal.from_version or None,
                "to_version": backup.restores_version if backup else None,
                "started_at": journal.started_at,
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "result": "failed",
                "error": f"{step}: {failure}",
                "backup": backup.name if backup else None,
            },
        )
        hint = exc.hint if isinstance(exc, PatchflowError) else ""
        raise RollbackError(
            f"Rollback incomplete: step {step!r} failed: {failure}. {self._health_now()}",
            (hint + " " if hint else "") + "`inv patch-status` shows what is left. Fix the cause and run "
            f"`inv rollback-patch --version {self.version} --yes` again to finish it; "
            f"{self.ctx.services.logs_hint()}.",
        ) from None


ROLLBACK_STEPS: tuple[StepSpec, ...] = checked_specs(
    RollbackRun,
    (
        StepSpec("choose", "choose", journaled=False),
        StepSpec("lock", "take_lock"),
        StepSpec("stop", "stop", stopped=True),
        StepSpec("restore-code", "restore_code", stopped=True),
        StepSpec("restore-database", "restore_database", stopped=True),
        StepSpec("start", "start", stopped=True),
        StepSpec("health", "health", stopped=True),
        StepSpec("commit", "commit", no_return=True),
    ),
)
"""The rollback's steps in order, as data (read by recovery, status and docs without a run)."""
