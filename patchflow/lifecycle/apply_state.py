"""An apply's state: its options and result, the run's fields, and the helpers its steps share.

:class:`ApplyState` holds what one apply knows (the plan, the journal, the backup, times); the
steps are methods of its subclasses (:mod:`patchflow.lifecycle.apply_prepare` before anything
changes, :mod:`patchflow.lifecycle.apply_steps` once it changes the install) and the run that
puts them in order is :class:`patchflow.lifecycle.apply.ApplyRun`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from patchflow.backup import Backup, load_backup
from patchflow.context import Context
from patchflow.errors import BackupError
from patchflow.lifecycle.decisions import Change, FolderStamp, refuse_changes
from patchflow.lifecycle.journal import Journal, utc_now
from patchflow.lifecycle.planning import Plan
from patchflow.lifecycle.steps import Recovery
from patchflow.lock import InstallLock
from patchflow.proving import old_version_health
from patchflow.services import health_now, wait_services_healthy
from patchflow.verify import VerifyReport
from patchflow.version import PatchVersion


@dataclass
class ApplyOptions:
    """Flags of apply-patch."""

    force: bool = False
    allow_downgrade: bool = False
    dry_run: bool = False
    break_lock: bool = False
    remove_unowned: bool = False
    # deploy's group window: every other client of the database is stopped (patchflow.shared_database)
    others_stopped: bool = False
    # deploy's group window: the database was backed up once, by the apply named here; none is taken here
    database_backup_on: str = ""


@dataclass
class ApplyResult:
    """Outcome of a successful apply (``noop`` when the version was already installed).
    Durations are seconds; ``cleanup`` deletes what was renamed aside after the commit (call it
    after printing the result)."""

    version: str
    from_version: str | None
    plan: Plan | None
    backup: str | None = None
    duration_seconds: float = 0.0
    stopped_seconds: float = 0.0
    migrations_applied: list[str] = field(default_factory=list)
    noop: bool = False
    dry_run: bool = False
    recovered: bool = False
    cleanup: Callable[[], None] = field(default=lambda: None, repr=False)
    recovery: Recovery | None = None
    cleaned: list[str] = field(default_factory=list)
    database_note: str = ""  # what became of the snapshot and its dump (taken after the commit)


@dataclass
class ApplyState:
    """One apply's state (the steps work on it; see :class:`patchflow.lifecycle.apply.ApplyRun`).

    ``recover`` finishes or undoes an interrupted run found when the lock is taken (given by
    :mod:`patchflow.operations`); ``confirm`` sees the plan before anything changes; ``reconfirm``
    sees what came out differently when the decisions are taken again under the lock: it asks
    again, or raises :class:`patchflow.errors.PlanChanged`.
    """

    ctx: Context
    version: PatchVersion
    options: ApplyOptions = field(default_factory=ApplyOptions)
    confirm: Callable[[Plan], None] = lambda plan: None
    recover: Callable[[Journal], Recovery | None] = lambda journal: None
    reconfirm: Callable[[Change], None] = refuse_changes
    report: VerifyReport | None = None
    plan: Plan | None = None
    planned_at: str = ""  # when the confirmed plan was made (UTC, utc_now format)
    patch_stamp: FolderStamp = ()  # the patch folder as verified
    planned_journal: Journal | None = None  # the interrupted run the confirmed plan expected to be finished first
    journal: Journal | None = None
    lock: InstallLock | None = None
    backup: Backup | None = None
    from_version: str = ""
    applied: list[str] = field(default_factory=list)
    recovered: bool = False
    recovery: Recovery | None = None
    cleaned: list[str] = field(default_factory=list)
    resumed: bool = False
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utc_now)
    stopped_at: float | None = None
    stopped_wall: float | None = None
    stopped_seconds: float = 0.0
    trash: list[Path] = field(default_factory=list)
    old_unhealthy: str | None = None  # why the old version, started again, failed its health check
    old_health_used: str = ""  # the health settings that judged it, and where they came from
    step_seconds: dict[str, float] = field(default_factory=dict)
    database_note: str = ""  # the dump-snapshot step's outcome, for the result

    @property
    def staging(self) -> Path:
        """The folder the patch is extracted and built in, beside the tree."""
        return self.ctx.paths.staging(self.version)

    def _tree_records(self, journal: Journal | None) -> list[Path]:
        """Where a delta's base tree may be recorded: the install's record, then the copy of it in
        this run's backup (or the backup of the interrupted run ``journal``)."""
        backup = self.backup
        if backup is None and journal is not None and journal.backup:
            backup = load_backup(self.ctx.paths.backups / journal.backup)
        return [self.ctx.paths.installed_manifest] + ([backup.paths.installed_manifest] if backup else [])

    def _wait_healthy(self, expect: str | None, since: float | None = None) -> None:
        took = wait_services_healthy(self.ctx.services, self.ctx.settings, expect_version=expect, since=since)
        if took >= 1.0:
            self.ctx.log(f"   healthy after {took:.1f} s")

    def _backup(self) -> Backup | None:
        if self.backup is None and self.journal is not None and self.journal.backup:
            self.backup = load_backup(self.ctx.paths.backups / self.journal.backup)
        return self.backup

    def _require_backup(self) -> Backup:
        backup = self._backup()
        if backup is None or not backup.complete:
            name = self.journal.backup if self.journal else None
            raise BackupError(
                f"The backup {name or '(none)'} of this apply is missing or incomplete.",
                "Restore by hand from the newest complete backup (inv patch-status lists them).",
            )
        return backup

    def _require_journal(self) -> Journal:
        assert self.journal is not None, "journal expected after the lock step"
        return self.journal

    def _old_health_now(self) -> str:
        """:func:`patchflow.services.health_now` with the settings that judge the old version."""
        notes = self.journal.notes if self.journal else {}
        health = old_version_health(self.ctx, self.from_version, notes.get("old_health"))
        return health_now(self.ctx.services, health.settings(self.ctx.settings))
