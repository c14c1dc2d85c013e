"""rollback-patch as one list of steps: choose, lock, stop, restore-code, restore-database, start,
health, commit (see :meth:`RollbackRun.steps`).

The backup restored is the one recorded by the apply that installed the current version
(``.patchflow/installed.json``), or the one named with ``--backup``; never one picked by clock.
The database is restored only when the apply being undone ran migrations (or with
``--restore-database``); it is restored beside the live one and swapped in, the displaced
database being kept. A rollback is never undone: if a step fails, the journal stays and the next
rollback-patch finishes it (:mod:`patchflow.recovery`). It is recorded as successful only when
the services are back and healthy (field failure C18).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from patchflow.backup import Backup, latest_backup_for, list_backups, load_backup
from patchflow.context import Context
from patchflow.database import stamp_now
from patchflow.errors import BackupError, PatchflowError, RollbackError, VersionError
from patchflow.installed import installed_version, read_installed_record
from patchflow.journal import Journal, append_history, deactivate_reserve, take_reserve, utc_now
from patchflow.leftovers import remove_leftovers
from patchflow.lock import InstallLock
from patchflow.pipeline import (
    ROLLING_BACK,
    Recovery,
    Step,
    StopPipeline,
    checkpoint,
    describe_failure,
    held_back,
    interruptible,
    run_forward,
)
from patchflow.restore import restore_code, restore_database
from patchflow.services import health_now, start_with_retries, wait_services_healthy
from patchflow.space import Need, check_space
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


def choose_backup(ctx: Context, version: PatchVersion, backup_id: str | None) -> Backup:
    """The backup to restore for ``version``: the one named ``backup_id``; else the one recorded by
    the apply that installed ``version``; else the newest complete one (by sequence).

    Raises:
        BackupError: none exists, or the named one is missing, incomplete or for another version.
    """
    paths = ctx.paths
    if backup_id:
        if "/" in backup_id or backup_id in (".", "..") or not backup_id.startswith("pre-patch-"):
            raise BackupError(
                f"--backup takes the name of a backup folder in {paths.backups} (pre-patch-...), not {backup_id!r}.",
                "Run `inv patch-status` to list backups; nothing was changed.",
            )
        backup = load_backup(paths.backups / backup_id)
        if backup is None or not backup.complete:
            raise BackupError(
                f"Backup {backup_id!r} does not exist in {paths.backups} or is incomplete.",
                "Run `inv patch-status` to list backups.",
            )
        if backup.version != str(version):
            raise BackupError(
                f"Backup {backup_id} was taken before {backup.version}, not {version}.",
                f"Pass --version {backup.version} or choose another backup.",
            )
        return backup
    record = read_installed_record(paths)
    if record is not None and record.version == str(version) and record.backup:
        recorded = load_backup(paths.backups / record.backup)
        if recorded is not None and recorded.complete:
            return recorded
    backup = latest_backup_for(paths, version)
    if backup is None:
        known = sorted({b.version for b in list_backups(paths)})
        raise BackupError(
            f"No backup taken before {version.tag} exists in {paths.backups}.",
            f"Backups exist for: {', '.join(known) if known else 'no version'}; nothing was changed.",
        )
    return backup


@dataclass
class RollbackRun:
    """One rollback: its state and its step list (:meth:`steps`)."""

    ctx: Context
    version: PatchVersion
    backup_id: str | None = None
    force: bool = False
    break_lock: bool = False
    restore_db: bool | None = None
    confirm: Callable[[str], None] = lambda text: None
    recover: Callable[[Journal], Recovery | None] = lambda journal: None
    backup: Backup | None = None
    journal: Journal | None = None
    lock: InstallLock | None = None
    current: str = ""
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utc_now)
    stopped_at: float | None = None
    result: RollbackResult | None = None

    def steps(self) -> list[Step]:
        """The rollback, in order (no undo: a rollback that fails is finished, not undone)."""
        return [
            Step("choose", self.choose, journaled=False),
            Step("lock", self.take_lock),
            Step("stop", self.stop, stopped=True),
            Step("restore-code", self.restore_code, stopped=True),
            Step("restore-database", self.restore_database, stopped=True),
            Step("start", self.start, stopped=True),
            Step("health", self.health, stopped=True),
            Step("commit", self.commit, no_return=True),
        ]

    @classmethod
    def outline(cls, version: PatchVersion) -> list[Step]:
        """The step list of a rollback of ``version`` for decisions only (see
        :meth:`patchflow.apply.ApplyRun.outline`)."""
        return cls(cast(Context, None), version).steps()

    @classmethod
    def resume(cls, ctx: Context, journal: Journal) -> RollbackRun:
        """The rollback recorded in ``journal`` (killed or failed), ready to be finished.

        Raises:
            RollbackError: its backup is missing or incomplete.
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

    # -- the steps ------------------------------------------------------------------------------
    def _must_restore_database(self, backup: Backup) -> bool:
        if self.ctx.database is None or backup.database is None:
            return False
        if self.restore_db is not None:
            return self.restore_db
        applied = backup.migrations_applied
        return applied is None or bool(applied)  # unknown (older backups): restore to be exact

    def _check_installed(self, backup: Backup) -> None:
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

    def choose(self) -> None:
        """Choose the backup, check the installed version, prove the dump, ask for confirmation."""
        ctx = self.ctx
        self.current = installed_version(ctx.paths) or ""
        pending = Journal.load(ctx.paths.journal)
        if pending is not None and pending.version == str(self.version):
            if pending.action == "rollback":
                self.confirm(f"Finish the interrupted rollback of {self.version} (stops services, restores it)?")
            else:
                self.confirm(
                    f"Undo the interrupted apply of {self.version} (stops services, restores what it changed; if "
                    "it had already committed, rolls it back from its backup)?"
                )
            return
        backup = choose_backup(ctx, self.version, self.backup_id)
        self._check_installed(backup)
        self.backup = backup
        database = self._must_restore_database(backup)
        if database:
            assert ctx.database is not None
            dump = backup.dump_path
            assert dump is not None and backup.database is not None
            from patchflow.database import verify_recorded_dump

            verify_recorded_dump(ctx.database, dump, backup.database, backup.name)
            problems = ctx.database.restore_problems()
            if problems:
                raise BackupError(
                    f"The database cannot be restored: {'; '.join(problems)}.",
                    "Set PATCHFLOW_DATABASE_ADMIN_URL to a role that may (e.g. the PostgreSQL superuser). "
                    "Nothing was changed.",
                )
            server_folder = ctx.database.server_folder()
            if server_folder is not None:  # the copy is restored beside the live database
                size = int(ctx.database.properties()["size"])
                need = Need(server_folder, "a database restore beside the live one (database server)", size, 0)
                check_space([need], int(ctx.settings.free_space_margin), action="roll back")
            what = (
                f"restores code and database (rows written since {backup.created_at[:19]}Z are moved aside "
                f"with the current database, kept as {ctx.database.target.dbname}_before_rollback_<time>)"
            )
        else:
            what = "restores code; the database is kept as it is (the apply ran no migration)"
        self.confirm(
            f"Roll back {self.version} to {backup.restores_version} from backup {backup.name} (stops services, {what})?"
        )

    def take_lock(self) -> None:
        """Take the lock; an interrupted run is finished or undone first; start the journal."""
        ctx = self.ctx
        self.lock = InstallLock(ctx.paths.lock, ctx.paths.lock_info)
        self.lock.acquire(action="rollback", version=str(self.version), break_stale=self.break_lock)
        self.ctx.start_recording()
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
        checkpoint(ctx.settings.test_kill_at, "journal-opened", "before")  # lock not yet marked done

    def stop(self) -> None:
        self.stopped_at = time.monotonic()
        self.ctx.services.stop()

    def restore_code(self) -> None:
        restore_code(self._backup(), self.ctx.paths, log=self.ctx.log)

    def restore_database(self) -> None:
        """Restore the database beside the live one and swap, when this rollback must."""
        ctx = self.ctx
        journal = self._journal()
        if not journal.notes.get("restore_database") or ctx.database is None:
            ctx.log("   database kept as it is: the apply being rolled back ran no migration")
            return
        ctx.database.wait_ready(ctx.settings.db_wait_timeout)
        stamp = journal.notes.get("restore_stamp") or stamp_now()
        journal.note("restore_stamp", stamp)
        displaced = restore_database(ctx.database, self._backup(), stamp, ctx.paths, log=ctx.log)
        journal.note("displaced_database", displaced)

    def start(self) -> None:
        ctx = self.ctx
        # rebuild from the tree on disk: the apply built the new images (same tags) during staging
        start_with_retries(
            ctx.services,
            ctx.settings.start_retries,
            rebuild=True,
            urls=ctx.settings.health_url,
            ready_timeout=ctx.settings.health_timeout,
            log=ctx.log,
        )
        removed = self._backup().data.get("removed_services")
        if isinstance(removed, list) and removed:
            ctx.services.start([str(s) for s in removed], rebuild=True)  # the apply had removed them

    def health(self) -> None:
        """Prove the restored version healthy (its version when the body reports one)."""
        wait_services_healthy(
            self.ctx.services, self.ctx.settings, expect_version=self._backup().restores_version or None
        )

    def commit(self) -> None:
        """Record the rollback as done (services are back and healthy)."""
        journal = self._journal()
        backup = self._backup()
        if self.stopped_at is not None:
            stopped = time.monotonic() - self.stopped_at
        else:  # finished by a recovery: the window began in the killed rollback
            stopped = journal.seconds_since("stop", ROLLING_BACK) or 0.0
        displaced = str(journal.notes.get("displaced_database") or "")
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
            with interruptible():
                run_forward(
                    steps,
                    lambda: self.journal,
                    log=self.ctx.log,
                    kill_at=self.ctx.settings.test_kill_at,
                    on_done=lambda step, seconds: self.ctx.log(f"   {step.name} done in {seconds:.1f} s"),
                )
                if self.journal is not None:
                    self.journal.clear()
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
        assert self.result is not None
        return self.result

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
            f"Rollback incomplete: step {step!r} failed: {failure}. {health_now(self.ctx.services, self.ctx.settings)}",
            (hint + " " if hint else "") + "`inv patch-status` shows what is left. Fix the cause and run "
            f"`inv rollback-patch --version {self.version} --yes` again to finish it; "
            f"{self.ctx.services.logs_hint()}.",
        ) from None
