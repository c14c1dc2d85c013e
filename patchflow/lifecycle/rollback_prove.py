"""What a rollback proves before it stops anything: the backup as written, and that its database
restore can be done (:func:`prove_restore`, called when the rollback chooses its backup and again
under the lock)."""

from __future__ import annotations

from patchflow.backup import Backup
from patchflow.backup_check import check_backup
from patchflow.context import Context
from patchflow.errors import BackupError
from patchflow.restore_in_place import BESIDE, IN_PLACE, restore_plan
from patchflow.snapshot import snapshot_problem, usable_snapshot
from patchflow.space import Need, check_space


def prove_restore(ctx: Context, backup: Backup, database: bool) -> None:
    """Check the backup as written (:func:`patchflow.backup_check.check_backup`) and prove that a
    restore is possible (when ``database``): by its snapshot while it exists, else by its dump.

    Raises:
        BackupError: the backup was changed or damaged, no snapshot left and no dump, the dump does not match
            its record, the role may not restore, or the database server lacks room for a restore beside it.
    """
    check_backup(backup, ctx.paths)
    if not database:
        return
    assert ctx.database is not None
    from patchflow.database import verify_recorded_dump

    snapshot = usable_snapshot(ctx.database, ctx.paths, backup)
    method = BESIDE
    if snapshot is not None:  # put back by a rename: the role may create databases and owns it
        problems = [problem for problem in [snapshot_problem(ctx.database)] if problem]
    elif backup.dump_path is None or backup.database is None:
        raise BackupError(
            f"Backup {backup.name} holds no database dump and its snapshot is gone from the server.",
            "Nothing was changed; restore by hand, or roll back the code alone without --restore-database.",
        )
    else:
        verify_recorded_dump(ctx.database, backup.dump_path, backup.database, backup.name)
        method, problems = restore_plan(ctx.database)
    if problems:
        raise BackupError(
            f"The database cannot be restored: {'; '.join(problems)}.",
            "Set PATCHFLOW_DATABASE_ADMIN_URL to a role that may (e.g. the PostgreSQL superuser). Nothing was changed.",
        )
    server_folder = ctx.database.server_folder() if snapshot is None else None
    in_place = snapshot is None and method == IN_PLACE  # the live database kept as a dump; a script
    if server_folder is None and not in_place:
        return
    size = int(ctx.database.properties()["size"])
    label = "an in-place restore" if in_place else "a database restore beside the live one"
    needs = [] if server_folder is None else [Need(server_folder, f"{label} (database server)", size, 0)]
    if in_place:
        needs.append(Need(backup.folder, "an in-place restore (a dump of the live database, a script)", 2 * size, 2))
    check_space(needs, int(ctx.settings.free_space_margin), action="roll back")
