"""Which backup a rollback restores, and what a rollback decided before its confirmation.

The backup is the one recorded by the apply that installed the version (``.patchflow/installed.json``),
or the one named with ``--backup``; never one picked by clock while a backup this user cannot read
exists. The decision (:class:`RollbackDecision`) is taken again under the lock and compared
(:meth:`patchflow.lifecycle.rollback.RollbackRun.decide_again`).
"""

from __future__ import annotations

from dataclasses import dataclass

from patchflow.backup import (
    Backup,
    latest_backup_for,
    list_backups,
    load_backup,
    unreadable_backups,
    unreadable_error,
)
from patchflow.context import Context
from patchflow.errors import BackupError
from patchflow.installed import read_installed_record
from patchflow.version import PatchVersion


def choose_backup(ctx: Context, version: PatchVersion, backup_id: str | None) -> Backup:
    """The backup to restore for ``version``: the one named ``backup_id``; else the one recorded by
    the apply that installed ``version``; else the newest complete one (by sequence).

    Raises:
        BackupError: none exists, or the named one is missing, incomplete or for another version,
            or backups exist that this user cannot read (named, with their owner).
    """
    paths = ctx.paths
    if backup_id:
        if "/" in backup_id or backup_id in (".", "..") or not backup_id.startswith("pre-patch-"):
            raise BackupError(
                f"--backup takes the name of a backup folder in {paths.backups} (pre-patch-...), not {backup_id!r}.",
                "Run `inv patch-status` to list backups; nothing was changed.",
            )
        backup = load_backup(paths.backups / backup_id)
        unreadable = unreadable_backups(paths, [paths.backups / backup_id]) if backup is None else []
        if unreadable:
            raise unreadable_error(paths, unreadable)
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
    # a backup this user cannot read may be the right one (or newer): never pick another instead
    unreadable = unreadable_backups(paths)
    if unreadable:
        raise unreadable_error(paths, unreadable)
    backup = latest_backup_for(paths, version)
    if backup is None:
        known = sorted({b.version for b in list_backups(paths)})
        raise BackupError(
            f"No backup taken before {version.tag} exists in {paths.backups}.",
            f"Backups exist for: {', '.join(known) if known else 'no version'}; nothing was changed.",
        )
    return backup


@dataclass(frozen=True)
class RollbackDecision:
    """What a rollback decided before its confirmation: the installed version, the interrupted run
    to finish first (``action``, ``version``, ``run_id``; None when there is none), the backup to
    restore ("" when an interrupted run is finished instead) and whether the database is restored."""

    current: str
    journal: tuple[str, str, str] | None
    backup: str
    database: bool
