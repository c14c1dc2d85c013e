"""Rollback: put an install back to what a backup holds (code, database, VERSION) and prove it.

:func:`restore_from_backup` is the one restore used by the automatic rollback of a failed apply,
by the recovery of an interrupted one, and by ``rollback-patch``. It stops the application
services, restores the code, restores the database exactly, starts the services (bounded
retries) and health-checks the restored version. A rollback is recorded as successful only when
the services are back and healthy (field failure C18); otherwise the journal stays, marked
``rolling_back`` with the failed step, and patch-status reports "rollback incomplete".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from patchflow.backup import Backup, latest_backup_for, list_backups, load_backup, restore_code, verify_dump
from patchflow.context import Context, run_step, start_with_retries
from patchflow.errors import BackupError, PatchflowError, RollbackError
from patchflow.health import wait_healthy
from patchflow.journal import Journal, append_history, utc_now
from patchflow.lock import install_lock
from patchflow.version import PatchVersion, read_version_file


@dataclass
class RollbackResult:
    """What a rollback did: backup used ("" when none was needed), version now installed,
    durations in seconds."""

    backup: str
    from_version: str
    to_version: str
    duration_seconds: float
    stopped_seconds: float


def installed_version(ctx: Context) -> str | None:
    """The version in ``VERSION`` (None when missing or unparsable)."""
    try:
        return str(read_version_file(ctx.paths.version_file))
    except PatchflowError:
        return None


def restore_from_backup(ctx: Context, journal: Journal, backup: Backup, *, code: bool, database: bool) -> float:
    """Restore ``backup`` into the install, journaled under phase ``rolling_back``.

    Args:
        code: restore the files (False when the apply never reached the switch).
        database: restore the database dump (False when migrations never ran).

    Returns:
        Seconds the application services were down during the restore.

    Raises:
        RollbackError: a step failed; the journal keeps the failed step for patch-status.
    """
    journal.phase = "rolling_back"
    journal.backup = backup.name
    journal.save()
    began = time.monotonic()
    step = "verify-backup"
    try:
        if database and backup.dump_path is not None and ctx.database is not None:
            # a dump that cannot be restored must be found before the live database is dropped
            with run_step(journal, step, ctx.log):
                verify_dump(backup)
        step = "stop"
        with run_step(journal, "stop", ctx.log):
            ctx.services.stop()
        if code:
            step = "restore-code"
            with run_step(journal, step, ctx.log):
                restore_code(backup, ctx.paths.root, ctx.paths.installed_manifest)
        dump = backup.dump_path
        if database and dump is not None and ctx.database is not None:
            step = "restore-database"
            with run_step(journal, step, ctx.log):
                ctx.database.wait_ready(ctx.settings.db_wait_timeout)
                ctx.database.restore(dump, dict(backup.data["database"].get("properties", {})))
        step = "start"
        with run_step(journal, step, ctx.log):
            # rebuild from the tree on disk: the apply built the new images (same tags) during
            # staging, so the old containers can only come back from a rebuild of the old tree
            start_with_retries(ctx.services, ctx.settings.start_retries, rebuild=True, log=ctx.log)
        step = "health"
        with run_step(journal, step, ctx.log):
            if ctx.services.app_services():
                wait_healthy(
                    ctx.settings.health_url,
                    timeout=ctx.settings.health_timeout,
                    expect_version=backup.restores_version or None,
                    version_field=ctx.settings.health_version_field,
                )
    except PatchflowError as exc:
        raise RollbackError(
            f"Rollback incomplete: step {step!r} failed: {exc.message}",
            f"The install may be down. Fix the cause and run `inv rollback-patch --version {backup.version} "
            f"--yes --break-lock` to finish it; {ctx.services.logs_hint()}.",
        ) from None
    return time.monotonic() - began


def choose_backup(ctx: Context, version: PatchVersion, backup_id: str | None) -> Backup:
    """The backup to restore for ``version``: the one named ``backup_id`` or the newest complete one.

    Raises:
        BackupError: none exists, or the named one is missing, incomplete or for another version.
    """
    if backup_id:
        if "/" in backup_id or backup_id in (".", "..") or not backup_id.startswith("pre-patch-"):
            raise BackupError(
                f"--backup takes the name of a backup folder in {ctx.paths.backups} (pre-patch-...), "
                f"not {backup_id!r}.",
                "Run `inv patch-status` to list backups; nothing was changed.",
            )
        backup = load_backup(ctx.paths.backups / backup_id)
        if backup is None or not backup.complete:
            raise BackupError(
                f"Backup {backup_id!r} does not exist in {ctx.paths.backups} or is incomplete.",
                "Run `inv patch-status` to list backups.",
            )
        if backup.version != str(version):
            raise BackupError(
                f"Backup {backup_id} was taken before {backup.version}, not {version}.",
                f"Pass --version {backup.version} or choose another backup.",
            )
        return backup
    backup = latest_backup_for(ctx.paths, version)
    if backup is None:
        known = sorted({b.version for b in list_backups(ctx.paths)})
        raise BackupError(
            f"No backup taken before {version.tag} exists in {ctx.paths.backups}.",
            f"Backups exist for: {', '.join(known) if known else 'no version'}; nothing was changed.",
        )
    return backup


def rollback_patch(
    ctx: Context,
    version: PatchVersion,
    *,
    force: bool = False,
    break_lock: bool = False,
    backup_id: str | None = None,
    confirm: Callable[[str], None] = lambda text: None,
) -> RollbackResult:
    """Roll ``version`` back: restore code, database and VERSION from the backup taken before it.

    An interrupted apply or rollback is finished or undone first; an interrupted apply of
    ``version`` killed before its backup was complete is undone without a backup (it had changed
    no code and no data) and the result's ``backup`` is then empty.

    Raises:
        RollbackError: the installed version is not ``version`` (without ``force``), or a step failed.
        BackupError: no suitable backup.
        LockError: another operation holds the lock, or a stale lock without ``break_lock``.
        ConfirmationRefused: not confirmed.
    """
    from patchflow.apply import recover_interrupted

    current = installed_version(ctx)
    pending = Journal.load(ctx.paths.journal)
    unfinished_same = pending is not None and pending.version == str(version)
    backup: Backup | None
    try:
        backup = choose_backup(ctx, version, backup_id)
    except BackupError:
        # an apply of this version killed before its backup was complete changed no file and no
        # data: recover_interrupted undoes it (starts the stopped services) without a backup
        if not (unfinished_same and not backup_id):
            raise
        backup = None
    if pending is not None and unfinished_same:
        confirm(
            f"Undo the interrupted {pending.action} of {version} (stops services, restores what it changed; "
            "if it had already committed, rolls it back from its backup)?"
        )
    elif backup is not None:
        if current != str(version) and not force:
            raise RollbackError(
                f"The installed version is {current or 'unknown'}, not {version}; rolling back {version} would "
                f"restore {backup.restores_version} over it.",
                (f"To undo the installed version run `inv rollback-patch --version {current}`; " if current else "")
                + "pass --force to restore this backup anyway. Nothing was changed.",
            )
        confirm(
            f"Roll back {version} to {backup.restores_version} from backup {backup.name} "
            "(stops services, restores code and database)?"
        )
    started = time.monotonic()
    started_at = utc_now()
    with install_lock(
        ctx.paths.lock, ctx.paths.lock_info, action="rollback", version=str(version), break_stale=break_lock
    ):
        if pending is not None:
            recover_interrupted(ctx, pending)
            restored = installed_version(ctx)
            if unfinished_same and restored != str(version):
                # the interrupted operation on this version was undone: the version before it is
                # back exactly; restoring an older backup of this version now would overwrite it
                used = load_backup(ctx.paths.backups / pending.backup) if pending.backup else None
                name = used.name if used is not None and used.complete else ""
                return RollbackResult(name, str(version), restored or "", time.monotonic() - started, 0.0)
        if backup is None:
            backup = choose_backup(ctx, version, backup_id)  # the interrupted apply was finished: no backup
        journal = Journal(ctx.paths.journal, "rollback", str(version), current or "", backup=backup.name)
        journal.save()
        try:
            stopped = restore_from_backup(ctx, journal, backup, code=True, database=True)
        except RollbackError as exc:
            append_history(
                ctx.paths.history,
                {
                    "action": "rollback",
                    "from_version": current,
                    "to_version": backup.restores_version,
                    "started_at": started_at,
                    "duration_seconds": round(time.monotonic() - started, 3),
                    "result": "failed",
                    "error": exc.message,
                    "backup": backup.name,
                },
            )
            raise
        journal.clear()
        duration = time.monotonic() - started
        append_history(
            ctx.paths.history,
            {
                "action": "rollback",
                "from_version": current,
                "to_version": backup.restores_version,
                "started_at": started_at,
                "duration_seconds": round(duration, 3),
                "stopped_seconds": round(stopped, 3),
                "result": "success",
                "backup": backup.name,
            },
        )
    return RollbackResult(backup.name, current or "", backup.restores_version, duration, stopped)
